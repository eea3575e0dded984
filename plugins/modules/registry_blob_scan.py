#!/usr/bin/python
# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: registry_blob_scan
short_description: Find layer links whose blob data is gone, invalid link files and damaged blobs
version_added: 0.1.0
description:
  - Scans the filesystem storage of one or more CNCF distribution (Docker) registries on the
    target host and reports the damage that makes pulls fail.
  - C(orphan_layer_links) are C(_layers) links whose blob data is missing. While the registry's
    descriptor cache still knows the blob it answers 200 with a 0-byte body (clients report
    C(unexpected EOF)); after a restart it answers 404.
  - C(invalid_link_files) are link files that are empty, unreadable, symlinks, or not
    C(sha256:<hex>) matching their directory; the registry answers 500 for them.
  - C(zero_byte_blobs) are blobs whose data file is empty (served as 200 with an empty body).
    The digest of empty content is legitimate and never reported.
  - With O(verify_digests=true), every blob's data is hashed and compared with its name.
  - With O(remove_orphans=true), the orphan layer links are removed (only the link file and its
    digest directory, re-checked right before removal). Blob data is never removed. Restart
    the registry afterwards to flush its descriptor cache (RV(restart_required)).
  - Symlinks are never followed and nothing outside O(path) is touched.
author:
  - regwarden maintainers (!UNKNOWN)
options:
  registries:
    description:
      - Names of the registries to scan. Default is every registry with stored data under O(path).
      - A name that does not exist under O(path) fails the task (see O(allow_incomplete)).
    type: list
    elements: str
  remove_orphans:
    description:
      - Remove the orphan layer links found. Report only when V(false).
      - Each link is checked again right before it goes, through a descriptor of its own directory;
        the run holds the registry's lock (flock on C(<path>/<name>)), so it never overlaps the
        maintenance timers or another run, and fails at once when the lock is held.
    type: bool
    default: false
  verify_digests:
    description:
      - Hash every blob's data and report those whose content does not match their digest.
      - Reads all blob data, an expensive scrub.
    type: bool
    default: false
extends_documentation_fragment:
  - regwarden.registry.attributes
  - regwarden.registry.storage
  - regwarden.registry.storage.findings
attributes:
  check_mode:
    support: full
    details: Reports the links it would remove and removes nothing.
  diff_mode:
    support: full
    details: Lists the link files removed.
notes:
  - Run it on the registry host (it reads the storage directly), as a user that can read the
    storage; removal needs write access.
  - Registries are scanned in parallel, each whole by one forked process, up to the CPUs the task
    may use (its CPU affinity) and at most 4. Limit them with C(taskset) or a cgroup on a busy host.
seealso:
  - module: regwarden.registry.registry_index_audit
"""

EXAMPLES = r"""
- name: Report storage damage of every registry on the host
  regwarden.registry.registry_blob_scan:
    path: /opt/registry/data
  register: blob_scan

- name: Remove orphan layer links of the pull-through caches, then restart them
  regwarden.registry.registry_blob_scan:
    registries: [dockerhub, ghcr]
    remove_orphans: true
  register: repaired
  notify: Restart registries

- name: Full scrub of the private registry; fail the play on any damage
  regwarden.registry.registry_blob_scan:
    registries: [private]
    verify_digests: true
    fail_on_findings: true
"""

RETURN = r"""
registries:
  description: Names of the registries scanned.
  returned: success
  type: list
  elements: str
  sample: [dockerhub, private]
orphan_layer_links:
  description: C(_layers) link files whose blob data is missing.
  returned: success
  type: list
  elements: dict
  contains:
    registry: {description: Registry name., type: str}
    repo: {description: Repository name., type: str}
    digest: {description: Blob digest C(sha256:<hex>)., type: str}
    path: {description: Absolute path of the link file., type: str}
    blob_path: {description: Absolute path where the blob data should be., type: str}
    reason: {description: What is wrong with the blob data., type: str}
  sample:
    - registry: private
      repo: team/app
      digest: sha256:0b1c...
      path: /opt/registry/data/private/docker/registry/v2/repositories/team/app/_layers/sha256/0b1c.../link
      blob_path: /opt/registry/data/private/docker/registry/v2/blobs/sha256/0b/0b1c.../data
      reason: blob data missing
invalid_link_files:
  description: Link files (or link directories) the registry cannot read; it answers 500 for them.
  returned: success
  type: list
  elements: dict
  contains:
    registry: {description: Registry name., type: str}
    repo: {description: Repository name., type: str}
    digest: {description: "Digest named by the directory, or null when the name is not a digest.", type: str}
    path: {description: Absolute path of the link file or directory., type: str}
    kind: {description: C(layer) or C(revision)., type: str}
    reason: {description: What is wrong., type: str}
zero_byte_blobs:
  description: Blobs linked by a repository whose data file is empty.
  returned: success
  type: list
  elements: dict
  contains:
    registry: {description: Registry name., type: str}
    digest: {description: Blob digest., type: str}
    path: {description: Absolute path of the data file., type: str}
    repos: {description: Repositories linking the blob., type: list, elements: str}
corrupt_blobs:
  description: Blobs whose content does not hash to their digest (only with O(verify_digests)).
  returned: success
  type: list
  elements: dict
  contains:
    registry: {description: Registry name., type: str}
    digest: {description: Blob digest (its name)., type: str}
    path: {description: Absolute path of the data file., type: str}
    actual_digest: {description: Digest of the content found., type: str}
removed_links:
  description: Link files removed, or that would be removed in check mode.
  returned: success
  type: list
  elements: str
restart_required:
  description: Links were removed; restart the registry so its descriptor cache forgets them.
  returned: success
  type: bool
scan_errors:
  description: Places the scan could not read, so did not judge (permission denied, symlinks, FIFOs).
  returned: success
  type: list
  elements: dict
incomplete_registries:
  description: Registries the scan could not read whole (see O(allow_incomplete)).
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
    private: {repositories: 12, layer_links: 140, revision_links: 30, empty_link_dirs: 2,
              blobs_checked: 120, orphan_layer_links: 1, invalid_link_files: 0,
              zero_byte_blobs: 0, corrupt_blobs: 0, removed_links: 0}
ansible_facts:
  description: The same result under C(registry_blob_scan).
  returned: success
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.regwarden.registry.plugins.module_utils._blob_scan import (
    count_findings,
    scan_blobs,
)
from ansible_collections.regwarden.registry.plugins.module_utils._module_result import (
    lines_diff,
    run_storage_module,
    storage_argument_spec,
)


def main():
    module = AnsibleModule(
        argument_spec=storage_argument_spec(
            registries=dict(type="list", elements="str"),
            remove_orphans=dict(type="bool", default=False),
            verify_digests=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    params = module.params
    run_storage_module(
        module, "registry_blob_scan",
        lambda: scan_blobs(params["path"], registries=params["registries"], remove_orphans=params["remove_orphans"],
                           verify_digests=params["verify_digests"], check_mode=module.check_mode,
                           allow_incomplete=params["allow_incomplete"], max_findings=params["max_findings"]),
        count_findings, params["fail_on_findings"],
        lambda result: lines_diff("orphan layer links", removed=result["removed_links"]))


if __name__ == "__main__":
    main()
