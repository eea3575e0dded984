#!/usr/bin/python
# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Documentation (options, examples, return values): registry_index_audit.yml next to this file.

from ansible_collections.regwarden.registry.plugins.module_utils import _module_result as common
from ansible_collections.regwarden.registry.plugins.module_utils._index_audit import (
    DEFAULT_REGISTRIES,
    audit_indexes,
    count_findings,
)


def main():
    module = common.storage_module(
        registries=dict(type="list", elements="str", default=list(DEFAULT_REGISTRIES)),
        repair=dict(type="bool", default=False),
    )
    params = module.params
    common.run_and_exit(
        module, "registry_index_audit",
        lambda: audit_indexes(common.storage_of(params), registries=params["registries"], repair=params["repair"],
                              **common.scan_options(module)),
        count_findings, params["fail_on_findings"],
        lambda result: common.lines_diff("index child links", added=result["repaired_links"]))


if __name__ == "__main__":
    main()
