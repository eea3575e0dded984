"""The scheduled scanner CLI: exit codes, JSON report and Prometheus textfile, written atomically."""

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ansible_collections.regwarden.registry.plugins.module_utils import _cli
from tests.support.tree import digest

COLLECTIONS_DIR = Path(__file__).resolve().parents[2] / ".collections"
BLOB_KINDS = ("orphan_layer_links", "invalid_link_files", "zero_byte_blobs", "corrupt_blobs")
INDEX_KINDS = ("orphan_index_children", "broken_tags", "unservable_blobs", "invalid_manifests")


def metrics(prom_path):
    """{family name: {(labels...): value}}, parsed by the Prometheus client's own parser."""
    families = {}
    for family in text_string_to_metric_families(prom_path.read_text()):
        assert family.type == "gauge", family
        families[family.name] = {tuple(sorted(sample.labels.items())): sample.value for sample in family.samples}
    return families


def findings_metric(families):
    return {(dict(labels)["registry"], dict(labels)["kind"]): value
            for labels, value in families["regwarden_scan_findings"].items()}


def run(tmp_path, *args):
    report = tmp_path / "out" / "scan.json"
    prom = tmp_path / "out" / "regwarden_scan.prom"
    code = _cli.main(["scan", *args, "--report", str(report), "--prom", str(prom)])
    return code, report, prom


def test_clean_tree_exits_0(private, storage, tmp_path, capsys):
    private.push_multiarch("app", "multi", tags=["v1"])
    before = int(time.time())
    code, report, prom = run(tmp_path, "--path", str(storage))
    assert code == _cli.EXIT_CLEAN == 0

    data = json.loads(report.read_text())
    assert {"generated_at", "blob_scan", "index_audit"} <= set(data)
    assert time.strptime(data["generated_at"], "%Y-%m-%dT%H:%M:%SZ")
    assert data["findings"] == 0
    assert data["blob_scan"]["registries"] == data["index_audit"]["registries"] == ["private"]

    families = metrics(prom)
    assert findings_metric(families) == {("private", kind): 0.0 for kind in BLOB_KINDS + INDEX_KINDS}
    assert families["regwarden_scan_success"] == {(): 1.0}
    assert before <= families["regwarden_scan_last_run_timestamp_seconds"][()] <= time.time()

    printed = json.loads(capsys.readouterr().out)
    assert printed["findings"] == 0
    assert set(printed["summary"]) == {"blob_scan", "index_audit"}


def test_findings_exit_1_with_counts_per_registry_and_kind(make_registry, storage, tmp_path):
    private = make_registry("private")
    _index, (amd, _arm) = private.push_multiarch("app", "multi", tags=["v1"])
    private.delete_revision("app", amd)
    cache = make_registry("dockerhub")
    cache.remove_data(cache.push_blob("library/nginx", b"expired by the cache"))
    cache.remove_data(cache.push_blob("library/redis", b"expired too"))
    _index, (amd, _arm) = cache.push_multiarch("library/nginx", "nginx", tags=["latest"])
    cache.delete_revision("library/nginx", amd)  # normal in a cache: not audited by default

    code, report, prom = run(tmp_path, "--path", str(storage))
    assert code == _cli.EXIT_FINDINGS == 1
    data = json.loads(report.read_text())
    assert data["findings"] == 3
    assert data["index_audit"]["registries"] == ["private"]
    assert [f["registry"] for f in data["index_audit"]["orphan_index_children"]] == ["private"]

    expected = {("dockerhub", kind): 0.0 for kind in BLOB_KINDS}
    expected.update({("private", kind): 0.0 for kind in BLOB_KINDS + INDEX_KINDS})
    expected[("dockerhub", "orphan_layer_links")] = 2.0
    expected[("private", "orphan_index_children")] = 1.0
    families = metrics(prom)
    assert findings_metric(families) == expected
    assert families["regwarden_scan_success"] == {(): 1.0}


def test_registry_options(make_registry, storage, tmp_path):
    cache = make_registry("dockerhub")
    _index, (amd, _arm) = cache.push_multiarch("library/nginx", "nginx", tags=["latest"])
    cache.delete_revision("library/nginx", amd)
    layer = make_registry("ghcr").push_blob("org/tool", b"rotten")
    make_registry("ghcr").data_path(layer).write_bytes(b"bit rot")

    # No private registry here: the default index scope names it, so the scan read less than
    # asked and says so (exit 2, registry_scanned 0), never "clean".
    code, report, prom = run(tmp_path, "--path", str(storage))
    assert code == 2
    data = json.loads(report.read_text())
    assert data["index_audit"]["registries"] == []
    assert data["incomplete_registries"] == ["private"]
    assert metrics(prom)["regwarden_scan_registry_scanned"][(("registry", "private"),)] == 0.0
    assert metrics(prom)["regwarden_scan_success"] == {(): 0.0}

    code, report, _prom = run(tmp_path, "--path", str(storage), "--index-registries", "dockerhub")
    assert code == 1
    assert json.loads(report.read_text())["index_audit"]["registries"] == ["dockerhub"]

    code, report, _prom = run(tmp_path, "--path", str(storage), "--index-registries", "",
                              "--registries", "ghcr", "--verify-digests")
    assert code == 1
    data = json.loads(report.read_text())
    assert data["blob_scan"]["registries"] == ["ghcr"]
    assert [f["digest"] for f in data["blob_scan"]["corrupt_blobs"]] == [digest(layer)]


@pytest.mark.parametrize("args, message", [
    pytest.param(["--path", "{tmp}/nowhere"], "path {tmp}/nowhere does not exist", id="missing-path"),
])
def test_scan_that_cannot_run_exits_2(private, tmp_path, capsys, args, message):
    args = [arg.format(tmp=tmp_path) for arg in args]
    code, report, prom = run(tmp_path, *args)
    assert code == _cli.EXIT_ERROR == 2
    err = capsys.readouterr().err
    assert err.startswith("regwarden scan: " + message.format(tmp=tmp_path))
    assert "Traceback" not in err
    assert message.format(tmp=tmp_path) in json.loads(report.read_text())["error"]
    families = metrics(prom)
    assert families["regwarden_scan_success"] == {(): 0.0}
    assert families["regwarden_scan_findings"] == {}
    assert families["regwarden_scan_last_run_timestamp_seconds"][()] > 0


def test_label_values_are_escaped(make_registry, storage, tmp_path):
    odd = 'we"ird\\name'
    make_registry(odd)
    code, _report, prom = run(tmp_path, "--path", str(storage), "--index-registries", "")
    assert code == 0
    assert {registry for registry, _kind in findings_metric(metrics(prom))} == {odd}


def test_outputs_replace_old_files_atomically(private, storage, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    report, prom = out / "scan.json", out / "regwarden_scan.prom"
    report.write_text("old report")
    prom.write_text("old metrics")
    replaced = []
    original_replace = os.replace

    def checking_replace(src, dst):
        # Right before the swap the reader still sees the old file, and the new one is complete.
        replaced.append(Path(dst).name)
        assert Path(src).parent == Path(dst).parent  # same filesystem: rename(2) is atomic
        assert Path(dst).read_text().startswith("old ")
        new = Path(src).read_text()
        assert new.endswith("\n")
        if Path(dst).name.endswith(".json"):
            json.loads(new)
        return original_replace(src, dst)

    monkeypatch.setattr(os, "replace", checking_replace)
    code = _cli.main(["scan", "--path", str(storage), "--report", str(report), "--prom", str(prom)])
    assert code == 0
    assert replaced == ["scan.json", "regwarden_scan.prom"]
    assert sorted(p.name for p in out.iterdir()) == ["regwarden_scan.prom", "scan.json"]  # no temp left
    for path in (report, prom):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644  # node_exporter runs as another user


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "scan.json"
    target.write_text("old")

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        _cli.write_atomically(str(target), "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["scan.json"]


def test_runs_as_a_module_with_only_pythonpath(private, storage, tmp_path):
    private.remove_data(private.push_blob("app", b"orphan"))
    prom = tmp_path / "textfile" / "regwarden_scan.prom"
    env = dict(os.environ, PYTHONPATH=str(COLLECTIONS_DIR))
    proc = subprocess.run(
        [sys.executable, "-m", "ansible_collections.regwarden.registry.plugins.module_utils._cli",
         "scan", "--path", str(storage), "--prom", str(prom)],
        env=env, capture_output=True, text=True, timeout=60, check=False, cwd=str(tmp_path),
    )
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["findings"] == 1
    assert findings_metric(metrics(prom))[("private", "orphan_layer_links")] == 1.0
