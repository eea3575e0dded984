"""`regwarden probe` (the VM's probe timer): exit codes and the .prom textfile, against a real registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import damage
from tests.support.auth import write_htpasswd
from tests.support.oci import RegistryClient, make_multiarch
from tests.support.registry import Registry

REPO_ROOT = Path(__file__).resolve().parents[2]


def probe(prom: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT / ".collections"))
    return subprocess.run(
        [sys.executable, "-m", "ansible_collections.regwarden.registry.plugins.module_utils._cli", "probe",
         "--url", url, "--verify-blobs", "--timeout", "5", "--prom", str(prom), *extra],
        env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)


def gauges(prom: Path) -> dict[str, float]:
    return {family.name: family.samples[0].value for family in text_string_to_metric_families(prom.read_text())}


@pytest.fixture
def registry(tmp_path):
    reg = Registry("private", tmp_path / "data", tmp_path / "work")
    reg.start()
    yield reg
    reg.stop()


def test_probe_textfile_tracks_findings_reachability_and_last_success(registry, tmp_path):
    image = make_multiarch("cli-probe", attestations=False)
    RegistryClient(registry.url).push("team/app", image, "v1")
    prom = tmp_path / "textfile" / "regwarden_probe.prom"
    report = tmp_path / "probe.json"

    clean = probe(prom, registry.url, "--report", str(report))
    assert clean.returncode == 0, clean.stderr
    first = gauges(prom)
    assert first["regwarden_probe_success"] == 1 and first["regwarden_probe_findings"] == 0
    assert first["regwarden_probe_catalog_reachable"] == 1
    last_run = first["regwarden_probe_last_run_timestamp_seconds"]
    assert first["regwarden_probe_last_success_timestamp_seconds"] == last_run
    assert json.loads(report.read_text())["counts"]["tags"] == 1

    # Warm cache: the blob's data is gone but the registry still answers 200 with 0 bytes.
    damage.remove_blob_data(registry, image.children[0].layers[-1].digest)
    broken = probe(prom, registry.url)
    assert broken.returncode == 1, broken.stderr
    assert gauges(prom)["regwarden_probe_findings"] == 1

    registry.stop()
    down = probe(prom, registry.url)
    assert down.returncode == 2
    assert down.stderr.startswith("regwarden probe: ") and "Traceback" not in down.stderr
    last = gauges(prom)
    assert last["regwarden_probe_success"] == 0
    assert "regwarden_probe_findings" not in last  # no stale count from a probe that did not run
    # The last success stays what it was, so a "probe stale" alert can fire.
    assert last["regwarden_probe_last_success_timestamp_seconds"] <= last["regwarden_probe_last_run_timestamp_seconds"]
    assert last["regwarden_probe_last_success_timestamp_seconds"] >= first["regwarden_probe_last_run_timestamp_seconds"]


def test_password_comes_from_a_file_and_a_missing_file_is_a_clear_error(registry, tmp_path):
    result = probe(tmp_path / "p.prom", registry.url, "--username", "ci", "--password-file", str(tmp_path / "none"))
    assert result.returncode == 2
    assert "cannot read the password file" in result.stderr


def test_credentials_come_from_root_only_files_with_nothing_to_quote(tmp_path):
    """The VM's probe unit passes --username-file and --password-file: a user name systemd would
    expand (%, $, quotes, spaces) reaches the registry exactly as written."""
    user, password = 'ci%h$USER"\'x y', "p@ss word%i"
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {user: password})
    reg = Registry("private", tmp_path / "data", tmp_path / "work", htpasswd=htpasswd)
    reg.start()
    try:
        (tmp_path / "user").write_text(user + "\n")
        (tmp_path / "password").write_text(password + "\n")
        os.chmod(tmp_path / "user", 0o600)
        os.chmod(tmp_path / "password", 0o600)
        ok = probe(tmp_path / "p.prom", reg.url, "--username-file", str(tmp_path / "user"),
                   "--password-file", str(tmp_path / "password"))
        assert ok.returncode == 0, ok.stderr
        os.mkfifo(tmp_path / "fifo")
        fifo = probe(tmp_path / "p.prom", reg.url, "--username-file", str(tmp_path / "fifo"))
        assert fifo.returncode == 2 and "cannot read the user name file" in fifo.stderr
    finally:
        reg.stop()
