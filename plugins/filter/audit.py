# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters of playbooks/audit.yml: the audit's summary and its failure message, as plain Python.

Findings keys come from the scanners themselves, so a new finding kind cannot be missed here.
"""

from __future__ import annotations

from ansible_collections.regwarden.registry.plugins.module_utils._blob_scan import FINDING_KEYS as BLOB_KEYS
from ansible_collections.regwarden.registry.plugins.module_utils._index_audit import FINDING_KEYS as INDEX_KEYS


def failing_registries(value):
    """A list of names, or a string with names one per line or comma-separated (an AWX survey)."""
    if isinstance(value, str):
        return value.replace(",", " ").split()
    return [str(name) for name in (value or [])]


def _failing(result, keys, registries):
    found = {}
    for key in (*keys, "scan_errors"):
        items = [item for item in (result or {}).get(key, []) if item.get("registry") in registries]
        if items:
            found[key] = items
    return found


def registry_audit_summary(blob_scan, index_audit, failing, data_dir, probe=None, probe_url="", probe_error=None):
    """The job's summary: status, the failing registries' findings by check and kind, the counts."""
    registries = failing_registries(failing)
    blob_failing = _failing(blob_scan, BLOB_KEYS, registries)
    index_failing = _failing(index_audit, INDEX_KEYS, registries)
    unfetchable = list((probe or {}).get("unfetchable") or [])
    findings = {}
    if blob_failing:
        findings["registry_blob_scan"] = blob_failing
    if index_failing:
        findings["registry_index_audit"] = index_failing
    if unfetchable:
        findings["registry_probe"] = {"unfetchable": unfetchable}
    count = sum(len(items) for kinds in findings.values() for items in kinds.values())
    if probe and "counts" in probe:
        probe_summary = {"url": probe_url, "findings": probe.get("findings"), "counts": probe["counts"],
                         "catalog_reachable": probe.get("catalog_reachable")}
    elif probe_error is not None:
        probe_summary = {"url": probe_url, "error": probe_error}
    else:
        probe_summary = None
    return {
        "status": "failed" if count or probe_error is not None else "clean",
        "data_dir": data_dir,
        "failing_registries": registries,
        "failing_findings": count,
        "findings": findings,
        "blob_scan": {"findings": blob_scan.get("findings"), "summary": blob_scan.get("summary")},
        "index_audit": {"findings": index_audit.get("findings"), "summary": index_audit.get("summary")},
        "probe": probe_summary,
    }


def registry_audit_message(summary, host, limit=50, probe_error=None):
    """The failure message: a headline, then one line per finding (check, kind, where, why), cut at ``limit``."""
    registries = ", ".join(summary["failing_registries"])
    headline = "%d finding(s) in %s on %s" % (summary["failing_findings"], registries, host)
    if probe_error is not None:
        headline += "; the probe failed: %s" % probe_error
    lines = [headline]
    listed = 0
    for check, kinds in summary["findings"].items():
        for kind, items in kinds.items():
            for item in items:
                listed += 1
                if listed > int(limit):
                    continue
                ref = next((item.get(k) for k in ("tag", "child_digest", "digest", "path") if item.get(k)), "")
                where = " ".join(str(part) for part in (item.get("registry"), item.get("repo"), ref) if part)
                why = next((str(item.get(k)) for k in ("reason", "error", "status") if item.get(k)), "")
                lines.append("- %s %s: %s (%s)" % (check, kind, where, why))
    if listed > int(limit):
        lines.append("... and %d more in the job's artifacts (registry_audit)" % (listed - int(limit)))
    return "\n".join(lines)


class FilterModule:
    """The audit playbook's filters."""

    def filters(self):
        return {
            "registry_audit_summary": registry_audit_summary,
            "registry_audit_message": registry_audit_message,
            "registry_failing_registries": failing_registries,
        }
