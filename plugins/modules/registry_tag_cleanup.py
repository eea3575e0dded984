#!/usr/bin/python
# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Documentation (options, examples, return values): registry_tag_cleanup.yml next to this file.

from ansible_collections.regwarden.registry.plugins.module_utils import _module_result as common
from ansible_collections.regwarden.registry.plugins.module_utils._tag_cleanup import (
    DEFAULT_GRACE_PERIOD,
    DEFAULT_REGISTRIES,
    cleanup_tags,
)


def _diff(result):
    removed = ["%s/%s:%s" % (f["registry"], f["repo"], f["tag"]) for f in result["removed_tags"]]
    removed += ["%s/%s@%s" % (f["registry"], f["repo"], f["digest"]) for f in result["removed_revisions"]]
    return common.lines_diff("tags and manifests", removed=removed)


def main():
    module = common.storage_module(
        fail_on_findings=False,
        registries=dict(type="list", elements="str", default=list(DEFAULT_REGISTRIES)),
        keep=dict(type="int", default=10),
        include=dict(type="str"),
        exclude=dict(type="str"),
        rules=dict(type="list", elements="dict", options=dict(
            repository=dict(type="str", required=True),
            keep=dict(type="int"),
            pushed_within=dict(type="int"),
            pulled_within=dict(type="int"),
            keep_last_pulled=dict(type="int"),
            include=dict(type="str"),
            exclude=dict(type="str"),
        )),
        pushed_within=dict(type="int"),
        pulled_within=dict(type="int"),
        keep_last_pulled=dict(type="int"),
        pull_records=dict(type="path"),
        delete_untagged=dict(type="bool", default=False),
        grace_period=dict(type="int", default=DEFAULT_GRACE_PERIOD),
    )
    params = module.params
    # Suboptions come back with None for what a rule does not set: let the defaults apply.
    rules = [{key: value for key, value in rule.items() if value is not None} for rule in params["rules"] or []]
    common.run_and_exit(
        module, "registry_tag_cleanup",
        lambda: cleanup_tags(common.storage_of(params), params["keep"], include=params["include"],
                             exclude=params["exclude"], rules=rules, registries=params["registries"],
                             delete_untagged=params["delete_untagged"], grace_period=params["grace_period"],
                             pushed_within=params["pushed_within"], pulled_within=params["pulled_within"],
                             keep_last_pulled=params["keep_last_pulled"], pull_records=params["pull_records"],
                             **common.scan_options(module)),
        diff=_diff)


if __name__ == "__main__":
    main()
