"""The shipped Grafana dashboard queries only metrics the collection exports (the CLI's textfiles,
node_exporter's filesystem gauges, the registry's own /metrics), and promtool parses every query."""

import json
import re
import subprocess
from pathlib import Path

import yaml

from tests.unit.test_alert_rules import (  # noqa: F401 (prom_files is a fixture)
    METRIC_NAME,
    NODE_METRICS,
    OTHER_METRIC,
    REGISTRY_METRICS,
    prom_files,
    promtool,
    written_metric_names,
)

DASHBOARD = (Path(__file__).resolve().parents[2] / "roles" / "docker_registry" / "files"
             / "regwarden-registry-dashboard.json")


def dashboard():
    return json.loads(DASHBOARD.read_text())


def queries(document):
    found = []
    for panel in document["panels"]:
        for target in panel.get("targets", []):
            found.append((panel["title"], target["expr"]))
    for variable in document["templating"]["list"]:
        if variable["type"] == "query":
            found.append(("variable " + variable["name"], variable["definition"]))
    return found


def test_every_query_names_metrics_the_collection_exports(prom_files):  # noqa: F811
    written = written_metric_names(prom_files)
    document = dashboard()
    exprs = queries(document)
    assert len(exprs) >= 15
    for title, expr in exprs:
        ours = set(METRIC_NAME.findall(expr))
        others = set(OTHER_METRIC.findall(expr))
        assert ours or others, title
        assert ours <= written, "%s: %s are not written by the CLI" % (title, ours - written)
        assert others <= NODE_METRICS | REGISTRY_METRICS, "%s: unknown metrics %s" % (title, others)
    # The scan, the probe and GC each have panels.
    used = set().union(*(set(METRIC_NAME.findall(expr)) for _title, expr in exprs))
    for family in ("regwarden_scan_", "regwarden_probe_", "regwarden_gc_", "regwarden_maintenance_"):
        assert any(name.startswith(family) for name in used), family


def test_promtool_parses_every_query(tmp_path):
    document = dashboard()
    rules = [{"record": "regwarden_dashboard_query_%d" % index,
              # Grafana's variables, as Grafana would substitute them.
              "expr": expr.replace("$instance", ".*")}
             for index, (title, expr) in enumerate(queries(document)) if not title.startswith("variable ")]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_panels_have_unique_ids_and_fit_the_grid():
    panels = dashboard()["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
    assert re.match(r"^[a-z0-9-]+$", dashboard()["uid"])
