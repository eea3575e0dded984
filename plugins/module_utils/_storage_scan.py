# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Both read-only scans in one walk of each registry: what the scanner on the registry VM runs.

The results are those of scan_blobs() and audit_indexes() for the same registries, but each
link file is read and each blob's data stat'ed once for both scans, not once per scan.
"""

from ansible_collections.regwarden.registry.plugins.module_utils import _blob_scan, _driver, _index_audit
from ansible_collections.regwarden.registry.plugins.module_utils._repository import walk_registry


def scan_storage(storage, blob_registries=None, index_registries=_index_audit.DEFAULT_REGISTRIES,
                 verify_digests=False, processes=None, allow_incomplete=False,
                 max_findings=_driver.DEFAULT_MAX_FINDINGS, capacity=False):
    """Return (blob scan result, index audit result) for the registries of ``storage`` (a path or a backend).

    ``blob_registries``: names for the blob scan (None: all); ``index_registries``: names for
    the index audit; ``processes``: registries scanned at once (default: the usable CPUs);
    ``capacity``: the blob scan result also gets every registry's capacity figures.
    Nothing is changed. Scan errors met while walking a registry that both scans cover are
    reported in both results.
    """
    storage = _driver.as_storage(storage)

    def work(name, location, active):
        return scan_registry(storage, name, location, active[0], active[1], verify_digests, capacity)

    plan = [(_blob_scan.analysis(), blob_registries), (_index_audit.analysis(), index_registries)]
    blob, index = _driver.run_analyses(storage, plan, work, processes, allow_incomplete, max_findings)
    return blob, index


def scan_registry(storage, name, location, blob_scan, index_audit, verify_digests=False, capacity=False):
    """[blob scan part or None, index audit part or None] of one registry, in one walk."""
    blob_result = _blob_scan.new_result() if blob_scan else None
    index_result = _index_audit.new_result() if index_audit else None

    def scanners(blobs, errors):
        # The blob scan first: it hands every link it reads to the repository for the audit.
        made = []
        if blob_scan:
            made.append(_blob_scan.BlobScanner(name, blobs, errors, blob_result, verify_digests=verify_digests,
                                               capacity=capacity))
        if index_audit:
            made.append(_index_audit.IndexAuditor(name, blobs, errors, index_result))
        return made

    walk_registry(storage, name, location, scanners)
    return [blob_result, index_result]
