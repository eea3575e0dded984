# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run analyses (blob scan, index audit, tag cleanup) over the registries of a storage backend.

One driver for every scanner: it selects the registries, runs each registry's work in its own
process (_parallel), turns a registry that fails into a registry-level scan error of that
registry alone, merges, sorts (the analysis's ``finish``), caps every list at ``max_findings``
with the true count in ``totals``, and escapes names that are not UTF-8. It raises
IncompleteScan (with the results) when a registry asked for could not be scanned, unless
``allow_incomplete``. It reads nothing and writes nothing itself.

Modes, the same word for every writer: "report" (no writer at all), "check" (a writer that
checks everything and changes nothing) and "apply".
"""

import contextlib

from ansible_collections.regwarden.registry.plugins.module_utils._fs_view import FilesystemStorage
from ansible_collections.regwarden.registry.plugins.module_utils._parallel import map_registries, merge_results
from ansible_collections.regwarden.registry.plugins.module_utils._storage import (
    IncompleteScan,
    ScanError,
    reportable,
)

REPORT = "report"
CHECK = "check"
APPLY = "apply"
MODES = (REPORT, CHECK, APPLY)
DEFAULT_MAX_FINDINGS = 10000
# Lists never capped: they name registries, not findings.
_UNCAPPED = frozenset(("registries", "incomplete_registries"))


def mode_of(change, check_mode):
    """The mode of a run: ``change`` (remove, repair, clean up) asked for, in check mode or not."""
    if not change:
        return REPORT
    return CHECK if check_mode else APPLY


def as_storage(storage):
    """A storage backend: a filesystem ``path`` (str) stands for FilesystemStorage(path)."""
    return FilesystemStorage(storage) if isinstance(storage, str) or storage is None else storage


@contextlib.contextmanager
def registry_writer(mode, storage, name, location, cutoff=None):
    """The writer a registry's work may use: None in report mode; the registry's lock held in apply mode."""
    if mode not in MODES:
        raise ScanError("mode must be one of %s, not %r" % (", ".join(MODES), mode))
    if mode == REPORT:
        yield None
        return
    with storage.lock(name, location, take=mode == APPLY):
        yield storage.writer(apply=mode == APPLY, cutoff=cutoff)


class Analysis:
    """What the driver needs of one analysis: an empty result and how to finish a merged one."""

    def __init__(self, name, new_result, finish_result):
        self.name = name
        self.new_result = new_result
        self.finish_result = finish_result


def run_analyses(storage, plan, work, processes=None, allow_incomplete=False, max_findings=DEFAULT_MAX_FINDINGS):
    """Results of ``plan`` ([(Analysis, wanted registry names or None for all)]) over ``storage``.

    ``work(name, location, active)`` does one registry: ``active`` says, per analysis of the
    plan, whether that registry is selected for it; it returns one result part per analysis
    (None where not active). ``processes``: registries at once (default: the usable CPUs).
    """
    if not isinstance(max_findings, int) or isinstance(max_findings, bool) or max_findings < 1:
        raise ScanError("max_findings must be a whole number of at least 1, not %r" % (max_findings,))
    selections = [storage.select(wanted) for _analysis, wanted in plan]
    path = storage.describe()
    results = [analysis.new_result() for analysis, _wanted in plan]
    roots = {}
    for (selected, missing), result in zip(selections, results):
        roots.update(selected)
        for name, reason in sorted(missing.items()):
            # "*": nothing at all under path (asked for every registry).
            registry = "" if name == "*" else name
            result["scan_errors"].append({"registry": registry, "path": path, "error": reason})
            result["incomplete_registries"].append(registry)
    chosen = [{name for name, _v2_root in selected} for selected, _missing in selections]
    registries = [(name, roots[name]) for name in sorted(roots)]

    def one_registry(name, location):
        active = tuple(name in names for names in chosen)
        return _guarded(name, location, active, plan, work)

    for parts in map_registries(one_registry, registries, processes):
        for part, result in zip(parts, results):
            if part is not None:
                merge_results(result, part)
    finished = []
    for (analysis, _wanted), result in zip(plan, results):
        analysis.finish_result(result)
        result["incomplete_registries"] = sorted(set(result["incomplete_registries"]))
        finished.append(reportable(cap_lists(result, max_findings)))
    incomplete = sorted({name for result in finished for name in result["incomplete_registries"]})
    if incomplete and not allow_incomplete:
        raise IncompleteScan(incomplete_message(finished), finished)
    return finished


def incomplete_message(results, shown=5):
    """What could not be scanned, for a failure message: the first scan errors of the incomplete registries."""
    incomplete = {name for result in results for name in result["incomplete_registries"]}
    texts = _unique(error["error"] if error["error"].startswith(("registry ", "no registry"))
                    else "%s: %s" % (error["path"], error["error"])
                    for result in results for error in result["scan_errors"] if error["registry"] in incomplete)
    more = " (and %d more, see scan_errors)" % (len(texts) - shown) if len(texts) > shown else ""
    names = ", ".join(name or "(none found)" for name in sorted(incomplete))
    return "not scanned completely: %s: %s%s" % (names, "; ".join(texts[:shown]), more)


def _unique(texts):
    seen = []
    for text in texts:
        if text not in seen:
            seen.append(text)
    return seen


def _guarded(name, v2_root, active, plan, work):
    """One registry's parts; its failure (ScanError, or anything no rule foresaw) becomes its parts."""
    try:
        return work(name, v2_root, active)
    except ScanError as exc:
        message = str(exc)
    except Exception as exc:  # the one place that turns the unforeseen into a report, not a traceback
        message = "registry %s: internal error while scanning (%s: %s); nothing of it is judged" % (
            name, type(exc).__name__, exc)
    parts = []
    for (analysis, _wanted), is_active in zip(plan, active):
        if not is_active:
            parts.append(None)
            continue
        failed = analysis.new_result()
        failed["scan_errors"].append({"registry": name, "path": v2_root or "", "error": message})
        failed["incomplete_registries"].append(name)
        parts.append(failed)
    return parts


def cap_lists(result, max_findings):
    """Keep the first ``max_findings`` entries of every (sorted) list; the true counts go to ``totals``."""
    totals = {}
    for key, value in list(result.items()):
        if isinstance(value, list) and key not in _UNCAPPED:
            totals[key] = len(value)
            if len(value) > max_findings:
                result[key] = value[:max_findings]
    result["totals"] = totals
    result["truncated"] = sorted(key for key, count in totals.items() if count > max_findings)
    return result


def total(result, key):
    """The true length of a result list (before capping)."""
    return result.get("totals", {}).get(key, len(result.get(key, ())))
