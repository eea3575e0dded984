"""The audit playbook's filters (plugins/filter/audit.py) as plain functions."""

from ansible_collections.regwarden.registry.plugins.filter import audit


def blob(**lists):
    return dict({"findings": sum(len(v) for v in lists.values()), "summary": {"private": {}}}, **lists)


def test_only_the_failing_registries_fail_and_every_kind_is_kept():
    blob_scan = blob(orphan_layer_links=[{"registry": "private", "repo": "a", "digest": "sha256:1", "reason": "gone"},
                                         {"registry": "dockerhub", "repo": "b", "digest": "sha256:2"}],
                     scan_errors=[{"registry": "private", "path": "/x", "error": "cannot open"}])
    index_audit = blob(orphan_index_children=[{"registry": "private", "repo": "a", "child_digest": "sha256:3",
                                               "reason": "no revision link"}])
    summary = audit.registry_audit_summary(blob_scan, index_audit, "private,\nghcr", "/data")
    assert summary["status"] == "failed"
    assert summary["failing_registries"] == ["private", "ghcr"]
    assert summary["failing_findings"] == 3
    assert set(summary["findings"]["registry_blob_scan"]) == {"orphan_layer_links", "scan_errors"}
    message = audit.registry_audit_message(summary, "vm", limit=2)
    assert message.splitlines() == [
        "3 finding(s) in private, ghcr on vm",
        "- registry_blob_scan orphan_layer_links: private a sha256:1 (gone)",
        "- registry_blob_scan scan_errors: private /x (cannot open)",
        "... and 1 more in the job's artifacts (registry_audit)",
    ]


def test_clean_unless_the_probe_failed():
    clean = audit.registry_audit_summary(blob(), blob(), ["private"], "/data")
    assert (clean["status"], clean["probe"], clean["findings"]) == ("clean", None, {})
    failed = audit.registry_audit_summary(blob(), blob(), ["private"], "/data", probe_url="https://r",
                                          probe_error="401")
    assert failed["status"] == "failed" and failed["probe"] == {"url": "https://r", "error": "401"}
    assert audit.registry_audit_message(failed, "vm", probe_error="401") == \
        "0 finding(s) in private on vm; the probe failed: 401"


def test_probe_findings_count():
    probe = {"unfetchable": [{"repo": "a", "digest": "sha256:9", "status": 404}], "findings": 1,
             "counts": {"tags": 1}, "catalog_reachable": True}
    summary = audit.registry_audit_summary(blob(), blob(), ["private"], "/d", probe=probe, probe_url="u")
    assert summary["failing_findings"] == 1
    assert summary["probe"] == {"url": "u", "findings": 1, "counts": {"tags": 1}, "catalog_reachable": True}
    assert "- registry_probe unfetchable: a sha256:9 (404)" in audit.registry_audit_message(summary, "vm")


def test_the_filters_are_registered():
    assert set(audit.FilterModule().filters()) == {
        "registry_audit_summary", "registry_audit_message", "registry_failing_registries"}
