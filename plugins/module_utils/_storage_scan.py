# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Both read-only scans in one walk of each registry: what the scanner on the registry VM runs.

The results are those of scan_blobs() and audit_indexes() for the same registries, but each
link file is read and each blob's data stat'ed once for both scans, not once per scan.
"""

import functools

from ansible_collections.regwarden.registry.plugins.module_utils import _blob_scan, _index_audit
from ansible_collections.regwarden.registry.plugins.module_utils._parallel import map_registries, merge_results
from ansible_collections.regwarden.registry.plugins.module_utils._repository import walk_registry
from ansible_collections.regwarden.registry.plugins.module_utils._storage import select_registries


def scan_storage(path, blob_registries=None, index_registries=_index_audit.DEFAULT_REGISTRIES,
                 verify_digests=False, processes=None):
    """Return (blob scan result, index audit result) for the registries under ``path``.

    ``blob_registries``: names for the blob scan (None: all); ``index_registries``: names for
    the index audit; ``processes``: registries scanned at once (default: the usable CPUs).
    Nothing is changed. Scan errors met while walking a registry that both scans cover are
    reported in both results.
    """
    blob_selected = dict(select_registries(path, blob_registries))
    index_selected = dict(select_registries(path, index_registries))
    registries = [(name, blob_selected.get(name) or index_selected[name])
                  for name in sorted(set(blob_selected) | set(index_selected))]
    scan = functools.partial(_scan_registry, blob_names=frozenset(blob_selected),
                             index_names=frozenset(index_selected), verify_digests=verify_digests)
    blob_result = _blob_scan.new_result()
    index_result = _index_audit.new_result()
    for blob_part, index_part in map_registries(scan, registries, processes):
        merge_results(blob_result, blob_part)
        merge_results(index_result, index_part)
    return _blob_scan.finish_result(blob_result), _index_audit.finish_result(index_result)


def _scan_registry(name, v2_root, blob_names, index_names, verify_digests=False):
    blob_result = _blob_scan.new_result()
    index_result = _index_audit.new_result()

    def scanners(blobs, errors):
        # The blob scan first: it hands every link it reads to the repository for the audit.
        made = []
        if name in blob_names:
            made.append(_blob_scan.BlobScanner(name, blobs, errors, blob_result, verify_digests=verify_digests))
        if name in index_names:
            made.append(_index_audit.IndexAuditor(name, blobs, errors, index_result))
        return made

    walk_registry(name, v2_root, scanners)
    return blob_result, index_result
