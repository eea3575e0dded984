#!/usr/bin/python
# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: registry_index_audit
short_description: Find image-index children, tags and blobs a distribution 2.8 registry can no longer serve
version_added: 0.1.0
description:
  - Reads the filesystem storage of distribution (Docker) registries on the target host and
    decides, per repository, what a 2.8 registry would serve, following its rules. A manifest is
    served by digest when its revision link exists (or, when no revision link file exists, a
    C(_layers) link for the digest) and its blob data exists; a garbage link answers 500.
  - C(orphan_index_children) are children of an image index (OCI index or Docker manifest list)
    that the registry would not serve (404 C(MANIFEST_UNKNOWN)) - multi-arch pulls fail. Every
    index with a revision in the repository is audited, tagged or not.
  - C(broken_tags) are tags whose current link names a manifest the registry would not serve.
  - C(unservable_blobs) are configs and layers of a manifest that a tag pulls (directly or as a
    child of a tagged index) whose C(_layers) link or data is missing; C(docker pull) fails after
    the manifest was fetched.
  - C(invalid_manifests) are manifests whose JSON is truncated, invalid, of an unknown media type
    or larger than 4 MiB.
  - Every orphan child says whether it is repairable. A child is repairable when its manifest
    blob is present and hashes to its digest, it is an image manifest, and its config and layers
    all have data. With O(repair=true) the missing links of repairable children (the child's
    revision link and the repository's C(_layers) links for its blobs) are written, so the
    registry serves the child again without a rebuild. Anything else is marked
    C(rebuild_required). Invalid link files are never overwritten.
  - Without O(repair) the module changes nothing. It never deletes anything. Removing or
    rebuilding a published image is an operator's decision.
author:
  - regwarden maintainers (!UNKNOWN)
options:
  registries:
    description:
      - Names of the registries to audit.
      - Pull-through caches hold partial indexes by design (only what was pulled), so the
        default is the private registry only.
      - A name that does not exist under O(path) fails the task (see O(allow_incomplete)).
    type: list
    elements: str
    default: [private]
  repair:
    description:
      - Relink repairable orphan index children (see above). Restart the registry afterwards
        (RV(restart_required)) so its descriptor cache sees the links.
      - Every link of a child is checked (no symlinked directory on the way, no invalid link file in
        the way) before the first is written; the run holds the registry's lock.
      - A child listed many times by one index is one finding (and one repair).
    type: bool
    default: false
extends_documentation_fragment:
  - regwarden.registry.attributes
  - regwarden.registry.storage
  - regwarden.registry.storage.findings
attributes:
  check_mode:
    support: full
    details: With O(repair=true), reports the links it would write and writes nothing.
  diff_mode:
    support: full
    details: Lists the link files written by a repair.
notes:
  - The registry's in-memory descriptor cache can hide on-disk damage until it restarts; this
    module reports what the registry will serve once it has restarted.
  - Registries are scanned in parallel, each whole by one forked process, up to the CPUs the task
    may use (its CPU affinity) and at most 4. Limit them with C(taskset) or a cgroup on a busy host.
seealso:
  - module: regwarden.registry.registry_blob_scan
"""

EXAMPLES = r"""
- name: Audit the private registry's image indexes
  regwarden.registry.registry_index_audit:
  register: audit

- name: Fail the job when any tag of the private registry cannot be pulled
  regwarden.registry.registry_index_audit:
    path: /opt/registry/data
    registries: [private]
    fail_on_findings: true

- name: Relink the children whose content is intact, then restart the private registry
  regwarden.registry.registry_index_audit:
    repair: true
  register: repaired
  notify: Restart registries

- name: Show the children to rebuild
  ansible.builtin.debug:
    msg: "{{ item.repo }}@{{ item.index_digest }} {{ item.platform.os }}/{{ item.platform.architecture }}"
  loop: "{{ ansible_facts.registry_index_audit.orphan_index_children | selectattr('rebuild_required') }}"
"""

RETURN = r"""
registries:
  description: Names of the registries audited.
  returned: success
  type: list
  elements: str
orphan_index_children:
  description: Children of an index that the registry would not serve.
  returned: success
  type: list
  elements: dict
  contains:
    registry: {description: Registry name., type: str}
    repo: {description: Repository name., type: str}
    index_digest: {description: Digest of the index., type: str}
    index_media_type: {description: Media type of the index., type: str}
    tags: {description: Tags whose current link points at the index., type: list, elements: str}
    child_digest: {description: Digest of the unservable child., type: str}
    platform: {description: "C(os), C(architecture), C(variant) of the child (null when absent).", type: dict}
    attestation: {description: "The child is a build attestation, not an image.", type: bool}
    revision_link: {description: "C(present), C(missing) or C(invalid).", type: str}
    layer_link_fallback: {description: A C(_layers) link exists for the child digest., type: bool}
    blob_data: {description: C(present) or C(gone)., type: str}
    reason: {description: Why the registry would not serve the child., type: str}
    path: {description: Absolute path of the child's revision link (present or not)., type: str}
    repair:
      description: C(repairable), C(would repair) (check mode), C(repaired) or C(not repaired).
      type: str
    rebuild_required: {description: Only a rebuild and push of the image can fix the child., type: bool}
    repair_reason: {description: Why the child is not repairable (null when it is)., type: str}
broken_tags:
  description: Tags the registry lists but cannot serve.
  returned: success
  type: list
  elements: dict
  contains:
    registry: {description: Registry name., type: str}
    repo: {description: Repository name., type: str}
    tag: {description: Tag name., type: str}
    digest: {description: "Digest the tag points at, null when the link is unreadable.", type: str}
    path: {description: Absolute path of the tag's current link., type: str}
    reason: {description: Why the tag cannot be pulled., type: str}
unservable_blobs:
  description: Configs and layers of pulled manifests whose link or data is missing.
  returned: success
  type: list
  elements: dict
  contains:
    registry: {description: Registry name., type: str}
    repo: {description: Repository name., type: str}
    digest: {description: Blob digest., type: str}
    kind: {description: C(config) or C(layer)., type: str}
    manifests: {description: Manifests referencing the blob., type: list, elements: str}
    tags: {description: Tags that pull the blob., type: list, elements: str}
    layer_link: {description: "C(present), C(missing) or C(invalid).", type: str}
    blob_data: {description: "C(present), C(gone) or C(empty).", type: str}
    path: {description: Absolute path of the repository's link for the blob., type: str}
invalid_manifests:
  description: Manifests whose content the registry cannot parse.
  returned: success
  type: list
  elements: dict
  contains:
    registry: {description: Registry name., type: str}
    repo: {description: Repository name., type: str}
    digest: {description: Manifest digest., type: str}
    path: {description: Absolute path of the manifest blob data., type: str}
    reason: {description: What is wrong with the content., type: str}
repaired_links:
  description: Link files written by O(repair) (or that would be, in check mode).
  returned: success
  type: list
  elements: str
restart_required:
  description: Links were written; restart the registry so its descriptor cache sees them.
  returned: success
  type: bool
scan_errors:
  description: Places the audit could not read, so did not judge (permission denied, symlinks, FIFOs).
  returned: success
  type: list
  elements: dict
incomplete_registries:
  description: Registries the audit could not read whole (see O(allow_incomplete)).
  returned: success
  type: list
  elements: str
totals: {description: "Entries of each result list before O(max_findings) cut it.", returned: success, type: dict}
truncated: {description: Result lists cut at O(max_findings) entries., returned: success, type: list, elements: str}
summary:
  description: Counts per registry.
  returned: success
  type: dict
  sample:
    private: {repositories: 12, manifests: 40, indexes: 6, tags: 20, orphan_index_children: 2,
              broken_tags: 0, unservable_blobs: 0, invalid_manifests: 0}
ansible_facts:
  description: The same result under C(registry_index_audit).
  returned: success
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.regwarden.registry.plugins.module_utils._index_audit import (
    DEFAULT_REGISTRIES,
    audit_indexes,
    count_findings,
)
from ansible_collections.regwarden.registry.plugins.module_utils._module_result import (
    lines_diff,
    run_storage_module,
    storage_argument_spec,
)


def main():
    module = AnsibleModule(
        argument_spec=storage_argument_spec(
            registries=dict(type="list", elements="str", default=list(DEFAULT_REGISTRIES)),
            repair=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    params = module.params
    run_storage_module(
        module, "registry_index_audit",
        lambda: audit_indexes(params["path"], registries=params["registries"], repair=params["repair"],
                              check_mode=module.check_mode, allow_incomplete=params["allow_incomplete"],
                              max_findings=params["max_findings"]),
        count_findings, params["fail_on_findings"],
        lambda result: lines_diff("index child links", added=result["repaired_links"]))


if __name__ == "__main__":
    main()
