#!/usr/bin/python
# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: registry_tag_cleanup
short_description: Keep the newest tags per repository without ever breaking a kept image
version_added: 0.1.0
description:
  - Untags old images in the filesystem storage of distribution (Docker) registries on the target
    host, the way the registry itself untags (the tag directory is removed).
  - Per repository, the newest O(keep) tags among those matching O(include) and not matching
    O(exclude) stay. Newest means the last update of the tag on disk (the mtime of its current
    link, that is the last push). Tags that do not match are never touched.
  - With O(delete_untagged=true), the revision links of manifests that no remaining tag reaches
    (directly or as a child of a tagged image index, at any depth) are removed too, with the
    repository's C(_layers) links of blobs only those manifests used. A plain
    C(registry garbage-collect) afterwards frees their data. Unlike 2.8's
    C(garbage-collect --delete-untagged), a child of a kept index always keeps its revision link.
  - A repository where some tag cannot be read (a symlinked or unopenable tag directory, a
    garbage current link) is never touched, and with O(delete_untagged) neither is one where
    anything a kept tag reaches (an index, its children) cannot be read or parsed, since what it
    protects cannot be known. Such repositories are listed in RV(skipped_repositories).
  - Nothing written less than O(grace_period) seconds before the run started (a tag, a revision,
    a C(_layers) link) is removed, and every removal is checked again right before it happens;
    the run holds the registry's lock (flock on C(<path>/<name>)), which the maintenance timers
    take too.
  - Run it while the registry is read-only or stopped (a push in flight could reuse a blob whose
    link is being removed), then restart the registry (RV(restart_required)). The role's
    maintenance timer does exactly that.
author:
  - regwarden maintainers (!UNKNOWN)
options:
  registries:
    description:
      - Names of the registries to clean up. Pull-through caches manage their own content.
    type: list
    elements: str
    default: [private]
  keep:
    description:
      - How many of the matching tags to keep per repository, newest first. At least 1.
    type: int
    default: 10
  include:
    description:
      - Regular expression a tag must match as a whole to be considered for removal. Default all tags.
    type: str
  exclude:
    description:
      - Regular expression of tags never removed (matched as a whole), for example a release pattern.
    type: str
  rules:
    description:
      - Per-repository overrides; the first rule whose O(rules[].repository) matches the repository
        name as a whole applies, otherwise O(keep), O(include) and O(exclude).
    type: list
    elements: dict
    suboptions:
      repository:
        description: Regular expression of repository names.
        type: str
        required: true
      keep:
        description: Tags to keep in those repositories.
        type: int
      include:
        description: Tags considered for removal there.
        type: str
      exclude:
        description: Tags never removed there.
        type: str
  delete_untagged:
    description:
      - Also remove the revision links of manifests no remaining tag reaches (see above).
    type: bool
    default: false
  grace_period:
    description:
      - Seconds before the start of the run within which anything written (a push) is never removed.
    type: int
    default: 3600
extends_documentation_fragment:
  - regwarden.registry.attributes
  - regwarden.registry.storage
attributes:
  check_mode:
    support: full
    details: Reports what it would remove and removes nothing.
  diff_mode:
    support: full
    details: Lists removed tags and manifests.
seealso:
  - module: regwarden.registry.registry_index_audit
  - module: regwarden.registry.registry_blob_scan
"""

EXAMPLES = r"""
- name: Keep the 10 newest CI tags per repository, never release tags
  regwarden.registry.registry_tag_cleanup:
    keep: 10
    exclude: 'latest|v\d+\.\d+\.\d+'
  register: cleanup

- name: Keep fewer tags of the build caches and free what nothing uses any more
  regwarden.registry.registry_tag_cleanup:
    keep: 20
    rules:
      - repository: 'ci/.*-cache'
        keep: 3
    delete_untagged: true
  notify: Garbage-collect and restart the private registry
"""

RETURN = r"""
registries:
  description: Names of the registries cleaned up.
  returned: success
  type: list
  elements: str
removed_tags:
  description: Tags removed (or that would be, in check mode).
  returned: success
  type: list
  elements: dict
  contains:
    registry: {description: Registry name., type: str}
    repo: {description: Repository name., type: str}
    tag: {description: Tag name., type: str}
    digest: {description: Manifest the tag pointed at., type: str}
    path: {description: Absolute path of the removed tag directory., type: str}
    updated: {description: "Last update of the tag (UTC, ISO 8601).", type: str}
removed_revisions:
  description: Revision links removed by O(delete_untagged).
  returned: success
  type: list
  elements: dict
  contains:
    registry: {description: Registry name., type: str}
    repo: {description: Repository name., type: str}
    digest: {description: Manifest digest., type: str}
    path: {description: Absolute path of the removed link file., type: str}
removed_layer_links:
  description: C(_layers) link files removed by O(delete_untagged).
  returned: success
  type: list
  elements: str
skipped_repositories:
  description: Repositories O(delete_untagged) left alone, with the reason.
  returned: success
  type: list
  elements: dict
restart_required:
  description: Something was removed; restart the registry so its caches forget it.
  returned: success
  type: bool
scan_errors:
  description: Places the cleanup could not read, so did not judge (permission denied, symlinks, FIFOs).
  returned: success
  type: list
  elements: dict
incomplete_registries:
  description: Registries the cleanup could not read whole (see O(allow_incomplete)).
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
    private: {repositories: 4, tags: 40, kept_tags: 25, removed_tags: 15, removed_revisions: 30,
              removed_layer_links: 12}
ansible_facts:
  description: The same result under C(registry_tag_cleanup).
  returned: success
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.regwarden.registry.plugins.module_utils._module_result import (
    lines_diff,
    run_storage_module,
    storage_argument_spec,
)
from ansible_collections.regwarden.registry.plugins.module_utils._tag_cleanup import (
    DEFAULT_GRACE_PERIOD,
    DEFAULT_REGISTRIES,
    cleanup_tags,
)


def _diff(result):
    removed = ["%s/%s:%s" % (f["registry"], f["repo"], f["tag"]) for f in result["removed_tags"]]
    removed += ["%s/%s@%s" % (f["registry"], f["repo"], f["digest"]) for f in result["removed_revisions"]]
    return lines_diff("tags and manifests", removed=removed)


def main():
    module = AnsibleModule(
        argument_spec=storage_argument_spec(
            fail_on_findings=False,
            registries=dict(type="list", elements="str", default=list(DEFAULT_REGISTRIES)),
            keep=dict(type="int", default=10),
            include=dict(type="str"),
            exclude=dict(type="str"),
            rules=dict(type="list", elements="dict", options=dict(
                repository=dict(type="str", required=True),
                keep=dict(type="int"),
                include=dict(type="str"),
                exclude=dict(type="str"),
            )),
            delete_untagged=dict(type="bool", default=False),
            grace_period=dict(type="int", default=DEFAULT_GRACE_PERIOD),
        ),
        supports_check_mode=True,
    )
    params = module.params
    # Suboptions come back with None for what a rule does not set: let the defaults apply.
    rules = [{key: value for key, value in rule.items() if value is not None} for rule in params["rules"] or []]
    run_storage_module(
        module, "registry_tag_cleanup",
        lambda: cleanup_tags(params["path"], params["keep"], include=params["include"], exclude=params["exclude"],
                             rules=rules, registries=params["registries"], delete_untagged=params["delete_untagged"],
                             check_mode=module.check_mode, grace_period=params["grace_period"],
                             allow_incomplete=params["allow_incomplete"], max_findings=params["max_findings"]),
        diff=_diff)


if __name__ == "__main__":
    main()
