#!/usr/bin/python
# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Documentation (options, examples, return values): registry_blob_scan.yml next to this file.

from ansible_collections.regwarden.registry.plugins.module_utils import _module_result as common
from ansible_collections.regwarden.registry.plugins.module_utils._blob_scan import (
    count_findings,
    scan_blobs,
)


def main():
    module = common.storage_module(
        registries=dict(type="list", elements="str"),
        remove_orphans=dict(type="bool", default=False),
        verify_digests=dict(type="bool", default=False),
        capacity=dict(type="bool", default=False),
        pull_records=dict(type="path"),
    )
    params = module.params
    common.run_and_exit(
        module, "registry_blob_scan",
        lambda: scan_blobs(common.storage_of(params), registries=params["registries"],
                           remove_orphans=params["remove_orphans"], verify_digests=params["verify_digests"],
                           capacity=params["capacity"], pull_records=params["pull_records"],
                           **common.scan_options(module)),
        count_findings, params["fail_on_findings"],
        lambda result: common.lines_diff("orphan layer links", removed=result["removed_links"]))


if __name__ == "__main__":
    main()
