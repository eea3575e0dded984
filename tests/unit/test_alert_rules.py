"""The shipped Prometheus alert rules only use metrics the CLI writes, and promtool accepts both.

The metric names come from files the CLI itself produced (a scan of a small storage tree, the probe
renderer), so renaming a metric in _cli without updating the rules fails here.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ansible_collections.regwarden.registry.plugins.module_utils import _cli

RULES = Path(__file__).resolve().parents[2] / "roles" / "docker_registry" / "files" / "regwarden-registry.rules.yml"
METRIC_NAME = re.compile(r"\bregwarden_[a-z_]+\b")
EXPECTED_ALERTS = {
    "RegistryIntegrityFindings", "RegistryCacheIntegrityFindings", "RegistryScanFailed", "RegistryScanStale",
    "RegistryProbeStale", "RegistryProbeFailed", "RegistryProbeFindings", "RegistryCatalogUnreachable",
    "RegistryScanErrors", "RegistryNotScanned", "RegistryMaintenanceStuck",
    "RegistryGCFailed", "RegistryDiskFillingUp", "RegistryDiskAlmostFull", "RegistryServerErrors",
    "RegistryStorageSlow",
}
# Metrics the rules take from elsewhere: node_exporter's filesystem gauges, and the registry's own
# /metrics (tests/integration/test_registry_metrics.py checks a real registry exports these).
NODE_METRICS = {"node_filesystem_avail_bytes", "node_filesystem_size_bytes"}
REGISTRY_METRICS = {"registry_http_requests_total", "registry_storage_action_seconds_bucket"}
OTHER_METRIC = re.compile(r"\b(?:node|registry)_[a-z_]+\b")


def promtool():
    # scripts/lib.sh installs Debian's prometheus package for it: missing is a failure, not a skip.
    path = shutil.which("promtool")
    assert path, "promtool not found: install Debian's prometheus package (scripts/lib.sh APT_PACKAGES)"
    return path


@pytest.fixture
def prom_files(private, storage, tmp_path):
    """A scan textfile and probe textfiles (findings, clean, failed run) written by the CLI."""
    private.push_multiarch("app", "multi", tags=["v1"])
    scan_prom = tmp_path / "regwarden_scan.prom"
    assert _cli.main(["scan", "--path", str(storage), "--capacity", "--report", str(tmp_path / "scan.json"),
                      "--prom", str(scan_prom)]) == _cli.EXIT_CLEAN
    probes = {
        "probe_findings.prom": _cli.render_probe_prom(
            {"unfetchable": [{"repo": "app", "digest": "sha256:" + "0" * 64, "kind": "layer", "status": 404}],
             "catalog_reachable": True, "duration_seconds": 1.5}, None, 1700000000, 1700000000),
        "probe_failed.prom": _cli.render_probe_prom(None, "401 Unauthorized", 1700000900, 1700000000),
    }
    maintenance_prom = tmp_path / "regwarden_maintenance.prom"
    assert _cli.main(["maintenance", "--registry", "private", "--state", "on", "--state-dir",
                      str(tmp_path / "state"), "--prom", str(maintenance_prom)]) == _cli.EXIT_CLEAN
    gc_prom = tmp_path / "regwarden_gc.prom"
    gc_prom.write_text(_cli.render_gc_prom({"private": {
        "finished": 1700000000, "success": 1, "duration_seconds": 3.2, "blobs_marked": 10, "blobs_deleted": 2,
        "manifests_deleted": 0, "bytes_freed": 4096}}))
    files = [scan_prom, maintenance_prom, gc_prom]
    for name, text in probes.items():
        (tmp_path / name).write_text(text)
        files.append(tmp_path / name)
    return files


def written_metric_names(files):
    names = set()
    for path in files:
        for line in path.read_text().splitlines():
            if line and not line.startswith("#"):
                names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
    return names


def rules():
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_every_alert_expression_uses_only_metrics_the_cli_writes(prom_files):
    written = written_metric_names(prom_files)
    assert {"regwarden_scan_findings", "regwarden_scan_success", "regwarden_scan_last_run_timestamp_seconds",
            "regwarden_scan_errors", "regwarden_scan_registry_scanned",
            "regwarden_maintenance_in_progress", "regwarden_maintenance_started_timestamp_seconds",
            "regwarden_probe_success", "regwarden_probe_last_run_timestamp_seconds",
            "regwarden_probe_last_success_timestamp_seconds", "regwarden_probe_findings",
            "regwarden_probe_catalog_reachable", "regwarden_probe_duration_seconds",
            "regwarden_gc_last_run_timestamp_seconds", "regwarden_gc_success", "regwarden_gc_duration_seconds",
            "regwarden_gc_blobs_marked", "regwarden_gc_blobs_deleted", "regwarden_gc_manifests_deleted",
            "regwarden_gc_bytes_freed", "regwarden_capacity_blob_bytes", "regwarden_capacity_blobs",
            "regwarden_capacity_unlinked_bytes", "regwarden_capacity_unlinked_blobs", "regwarden_capacity_upload_bytes",
            "regwarden_capacity_uploads", "regwarden_capacity_repository_bytes",
            "regwarden_capacity_untagged_manifests", "regwarden_capacity_untagged_bytes"} == written
    alerts = {rule["alert"]: rule["expr"] for rule in rules()}
    assert set(alerts) == EXPECTED_ALERTS
    for alert, expr in alerts.items():
        used = set(METRIC_NAME.findall(expr))
        other = set(OTHER_METRIC.findall(expr))
        assert used or other, "%s uses no metric" % alert
        assert used <= written, "%s uses metrics the CLI never writes: %s" % (alert, used - written)
        assert other <= NODE_METRICS | REGISTRY_METRICS, "%s uses unknown metrics: %s" % (alert, other)
        # Disk alerts only for registry hosts: those that write the scan metrics.
        if other & NODE_METRICS:
            assert "regwarden_scan_last_run_timestamp_seconds" in used, alert


def test_promtool_accepts_the_rules_and_the_cli_textfiles(prom_files):
    checked = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for path in prom_files:
        checked = subprocess.run([promtool(), "check", "metrics"], input=path.read_text(), capture_output=True,
                                 text=True, timeout=60)
        assert checked.returncode == 0, "%s: %s%s" % (path.name, checked.stdout, checked.stderr)


def test_alerts_fire_on_the_series_they_are_meant_for(tmp_path):
    """promtool's rule unit tests: series shaped like the textfiles, alerts evaluated by Prometheus.

    The annotations (checked by `promtool check rules`) are dropped from the copy under test, so the
    expectations are about which alerts fire with which labels.
    """
    document = yaml.safe_load(RULES.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    rules_copy = tmp_path / "rules.yml"
    rules_copy.write_text(yaml.safe_dump(document))
    tests = {
        "rule_files": [str(rules_copy)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": 'regwarden_scan_findings{instance="vm",registry="private",kind="orphan_index_children"}',
                 "values": "0 2x20"},
                {"series": 'regwarden_scan_findings{instance="vm",registry="dockerhub",kind="orphan_layer_links"}',
                 "values": "5x90"},
                {"series": 'regwarden_probe_findings{instance="vm"}', "values": "0x20"},
                {"series": 'regwarden_probe_catalog_reachable{instance="vm"}', "values": "1 0x20"},
                # Last success at t=0 s, never again: stale after an hour.
                {"series": 'regwarden_probe_last_success_timestamp_seconds{instance="vm"}', "values": "0x90"},
                {"series": 'regwarden_probe_success{instance="vm"}', "values": "1x90"},
                {"series": 'regwarden_scan_errors{instance="vm",registry="private"}', "values": "0x5 3x20"},
                {"series": 'regwarden_scan_errors{instance="vm",registry="dockerhub"}', "values": "0x30"},
                {"series": 'regwarden_scan_registry_scanned{instance="vm",registry="private"}', "values": "1x30"},
                {"series": 'regwarden_scan_registry_scanned{instance="vm",registry="ghcr"}', "values": "0x30"},
                {"series": 'regwarden_gc_success{instance="vm",registry="private"}', "values": "1x30"},
                {"series": 'regwarden_gc_success{instance="vm",registry="quay"}', "values": "0x30"},
            ],
            "alert_rule_test": [
                {"eval_time": "10m", "alertname": "RegistryIntegrityFindings", "exp_alerts": [
                    {"exp_labels": {"severity": "critical", "instance": "vm", "registry": "private",
                                    "kind": "orphan_index_children"}}]},
                {"eval_time": "10m", "alertname": "RegistryProbeFindings", "exp_alerts": []},
                {"eval_time": "10m", "alertname": "RegistryCatalogUnreachable", "exp_alerts": [
                    {"exp_labels": {"severity": "critical", "instance": "vm"}}]},
                {"eval_time": "30m", "alertname": "RegistryProbeStale", "exp_alerts": []},
                {"eval_time": "70m", "alertname": "RegistryProbeStale", "exp_alerts": [
                    {"exp_labels": {"severity": "warning", "instance": "vm"}}]},
                {"eval_time": "70m", "alertname": "RegistryCacheIntegrityFindings", "exp_alerts": [
                    {"exp_labels": {"severity": "info", "instance": "vm", "registry": "dockerhub",
                                    "kind": "orphan_layer_links"}}]},
                {"eval_time": "70m", "alertname": "RegistryProbeFailed", "exp_alerts": []},
                {"eval_time": "4m", "alertname": "RegistryScanErrors", "exp_alerts": []},
                {"eval_time": "15m", "alertname": "RegistryScanErrors", "exp_alerts": [
                    {"exp_labels": {"severity": "warning", "instance": "vm", "registry": "private"}}]},
                {"eval_time": "10m", "alertname": "RegistryGCFailed", "exp_alerts": [
                    {"exp_labels": {"severity": "warning", "instance": "vm", "registry": "quay"}}]},
                {"eval_time": "15m", "alertname": "RegistryNotScanned", "exp_alerts": [
                    {"exp_labels": {"severity": "critical", "instance": "vm", "registry": "ghcr"}}]},
            ],
        }, {
            # The probe fails while GC has the private registry stopped (in maintenance): no alert;
            # once the maintenance is over the failure alerts; a maintenance that never ends alerts.
            "interval": "1m",
            "input_series": [
                {"series": 'regwarden_probe_success{instance="vm"}', "values": "0x600"},
                {"series": 'regwarden_probe_last_success_timestamp_seconds{instance="vm"}', "values": "0x600"},
                {"series": 'regwarden_maintenance_in_progress{instance="vm",registry="private"}',
                 "values": "1x100 0x500"},
                {"series": 'regwarden_maintenance_in_progress{instance="vm",registry="dockerhub"}', "values": "1x600"},
                {"series": 'regwarden_maintenance_started_timestamp_seconds{instance="vm",registry="dockerhub"}',
                 "values": "0x600"},
            ],
            "alert_rule_test": [
                {"eval_time": "90m", "alertname": "RegistryProbeFailed", "exp_alerts": []},
                {"eval_time": "90m", "alertname": "RegistryProbeStale", "exp_alerts": []},
                {"eval_time": "150m", "alertname": "RegistryProbeFailed", "exp_alerts": [
                    {"exp_labels": {"severity": "warning", "instance": "vm"}}]},
                {"eval_time": "150m", "alertname": "RegistryMaintenanceStuck", "exp_alerts": []},
                {"eval_time": "540m", "alertname": "RegistryMaintenanceStuck", "exp_alerts": [
                    {"exp_labels": {"severity": "warning", "instance": "vm", "registry": "dockerhub"}}]},
            ],
        }],
    }
    gib = 1024 ** 3
    storage_bucket = 'registry_storage_action_seconds_bucket{instance="vm",driver="s3aws",action="GetContent",le="%s"}'
    tests["tests"].append({
        # A 100 GiB disk at 20 GiB free losing 100 MiB a minute (empty in under 4 hours), a second disk
        # steady at 5% free, the same filling disk on a host that is no registry host; 10% of the
        # requests 500; storage reads taking 8 s.
        "interval": "1m",
        "input_series": [
            {"series": 'node_filesystem_avail_bytes{instance="vm",mountpoint="/opt",fstype="ext4"}',
             "values": "%d-%dx40" % (20 * gib, 100 * 1024 ** 2)},
            {"series": 'node_filesystem_size_bytes{instance="vm",mountpoint="/opt",fstype="ext4"}',
             "values": "%dx40" % (100 * gib)},
            {"series": 'node_filesystem_avail_bytes{instance="vm",mountpoint="/var",fstype="ext4"}',
             "values": "%dx40" % (5 * gib)},
            {"series": 'node_filesystem_size_bytes{instance="vm",mountpoint="/var",fstype="ext4"}',
             "values": "%dx40" % (100 * gib)},
            {"series": 'node_filesystem_avail_bytes{instance="db",mountpoint="/opt",fstype="ext4"}',
             "values": "%d-%dx40" % (20 * gib, 100 * 1024 ** 2)},
            {"series": 'node_filesystem_size_bytes{instance="db",mountpoint="/opt",fstype="ext4"}',
             "values": "%dx40" % (100 * gib)},
            {"series": 'regwarden_scan_last_run_timestamp_seconds{instance="vm"}', "values": "0x40"},
            {"series": 'registry_http_requests_total{instance="vm",code="200",handler="blob",method="get"}',
             "values": "0+90x40"},
            {"series": 'registry_http_requests_total{instance="vm",code="500",handler="blob",method="get"}',
             "values": "0+10x40"},
            {"series": storage_bucket % "5",
             "values": "0x40"},
            {"series": storage_bucket % "10",
             "values": "0+10x40"},
            {"series": storage_bucket % "+Inf",
             "values": "0+10x40"},
        ],
        "alert_rule_test": [
            {"eval_time": "20m", "alertname": "RegistryDiskFillingUp", "exp_alerts": []},
            {"eval_time": "35m", "alertname": "RegistryDiskFillingUp", "exp_alerts": [
                {"exp_labels": {"severity": "warning", "instance": "vm", "mountpoint": "/opt", "fstype": "ext4"}}]},
            {"eval_time": "15m", "alertname": "RegistryDiskAlmostFull", "exp_alerts": [
                {"exp_labels": {"severity": "critical", "instance": "vm", "mountpoint": "/var", "fstype": "ext4"}}]},
            {"eval_time": "25m", "alertname": "RegistryServerErrors", "exp_alerts": [
                {"exp_labels": {"severity": "warning", "instance": "vm"}}]},
            {"eval_time": "30m", "alertname": "RegistryStorageSlow", "exp_alerts": [
                {"exp_labels": {"severity": "warning", "instance": "vm", "driver": "s3aws", "action": "GetContent"}}]},
        ],
    })
    test_file = tmp_path / "rules_test.yml"
    test_file.write_text(yaml.safe_dump(tests))
    checked = subprocess.run([promtool(), "test", "rules", str(test_file)], capture_output=True, text=True,
                             timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
