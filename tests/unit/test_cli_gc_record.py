"""The GC script's record of each garbage collection: parsed from garbage-collect's output on stdin,
kept per registry across runs, rendered as one textfile promtool accepts."""

import io
import json
import shutil
import subprocess
import sys

import pytest

from ansible_collections.regwarden.registry.plugins.module_utils import _cli

OUTPUT = """app
app: marking manifest sha256:aaaa
app: marking blob sha256:bbbb
2 blobs marked, 3 blobs and 0 manifests eligible for deletion
blob eligible for deletion: sha256:cccc
time="2026-12-03T15:22:38Z" level=info msg="Deleting blob: /docker/registry/v2/blobs/sha256/cc/cccc" go.version=go1.19
blob eligible for deletion: sha256:dddd
time="2026-12-03T15:22:38Z" level=info msg="Deleting blob: /docker/registry/v2/blobs/sha256/dd/dddd" go.version=go1.19
blob eligible for deletion: sha256:eeee
time="2026-12-03T15:22:38Z" level=info msg="Deleting blob: /docker/registry/v2/blobs/sha256/ee/eeee" go.version=go1.19
"""


def record(monkeypatch, tmp_path, registry, success, duration, output, bytes_freed=None):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(output.encode())))
    argv = ["gc-record", "--registry", registry, "--success", success, "--duration", str(duration),
            "--state-dir", str(tmp_path / "state"), "--prom", str(tmp_path / "gc.prom")]
    if bytes_freed is not None:
        argv += ["--bytes-freed", str(bytes_freed)]
    return _cli.main(argv)


def values(tmp_path):
    found = {}
    for line in (tmp_path / "gc.prom").read_text().splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            found[key] = float(value)
    return found


def test_a_run_is_parsed_and_every_registry_keeps_its_last_run(monkeypatch, tmp_path):
    assert record(monkeypatch, tmp_path, "private", "1", 12, OUTPUT, bytes_freed=4096) == _cli.EXIT_CLEAN
    assert record(monkeypatch, tmp_path, "dockerhub", "0", 3.5, "panic: storage unreachable\n") == _cli.EXIT_CLEAN
    got = values(tmp_path)
    assert got['regwarden_gc_success{registry="private"}'] == 1
    assert got['regwarden_gc_blobs_deleted{registry="private"}'] == 3
    assert got['regwarden_gc_blobs_marked{registry="private"}'] == 2
    assert got['regwarden_gc_manifests_deleted{registry="private"}'] == 0
    assert got['regwarden_gc_bytes_freed{registry="private"}'] == 4096
    assert got['regwarden_gc_duration_seconds{registry="private"}'] == 12
    # A run that died before its summary: failed, nothing marked known, no bytes measured.
    assert got['regwarden_gc_success{registry="dockerhub"}'] == 0
    assert got['regwarden_gc_duration_seconds{registry="dockerhub"}'] == 3.5
    assert 'regwarden_gc_blobs_marked{registry="dockerhub"}' not in got
    assert 'regwarden_gc_bytes_freed{registry="dockerhub"}' not in got
    # The next run of one registry replaces only its own record.
    assert record(monkeypatch, tmp_path, "private", "1", 1, "0 blobs marked, 0 blobs and 0 manifests eligible for "
                  "deletion\n", bytes_freed=0) == _cli.EXIT_CLEAN
    got = values(tmp_path)
    assert got['regwarden_gc_blobs_deleted{registry="private"}'] == 0
    assert got['regwarden_gc_success{registry="dockerhub"}'] == 0
    state = json.loads((tmp_path / "state" / "private.json").read_text())
    assert state["bytes_freed"] == 0 and state["success"] == 1


def test_promtool_accepts_the_textfile(monkeypatch, tmp_path):
    record(monkeypatch, tmp_path, "private", "1", 2, OUTPUT, bytes_freed=10)
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: install Debian's prometheus package (scripts/lib.sh APT_PACKAGES)"
    checked = subprocess.run([promtool, "check", "metrics"], input=(tmp_path / "gc.prom").read_text(),
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("registry, extra", [("../etc", []), ("", []), (".hidden", []),
                                             ("private", ["--bytes-freed", "-1"])])
def test_bad_input_is_a_clear_error(monkeypatch, tmp_path, capsys, registry, extra):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    argv = ["gc-record", "--registry", registry, "--success", "1", "--duration", "1",
            "--state-dir", str(tmp_path / "state"), "--prom", str(tmp_path / "gc.prom"), *extra]
    assert _cli.main(argv) == _cli.EXIT_ERROR
    assert "regwarden gc-record:" in capsys.readouterr().err
    assert not (tmp_path / "gc.prom").exists()


def test_a_damaged_record_of_another_registry_is_left_out(monkeypatch, tmp_path):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "ghcr.json").write_text("{not json")
    assert record(monkeypatch, tmp_path, "private", "1", 1, OUTPUT) == _cli.EXIT_CLEAN
    assert not [key for key in values(tmp_path) if "ghcr" in key]


@pytest.mark.parametrize("command", ["gc-record", "maintenance"])
def test_a_fifo_or_symlink_in_the_state_directory_is_skipped_not_waited_on(monkeypatch, tmp_path, command):
    """A FIFO planted in the state directory once hung the record step (open() waits for a writer);
    a symlink would have been followed. Both are passed over; the other registries' records stay."""
    import os
    import threading

    state = tmp_path / "state"
    state.mkdir()
    os.mkfifo(state / ("planted.json" if command == "gc-record" else "planted"))
    (tmp_path / "secret").write_text("0\n")
    os.symlink(tmp_path / "secret", state / ("linked.json" if command == "gc-record" else "linked"))
    if command == "gc-record":
        def run():
            return record(monkeypatch, tmp_path, "private", "1", 1, OUTPUT)
    else:
        def run():
            return _cli.main(["maintenance", "--registry", "private", "--state", "on",
                              "--state-dir", str(state), "--prom", str(tmp_path / "gc.prom")])
    outcome = []
    worker = threading.Thread(target=lambda: outcome.append(run()), daemon=True)
    worker.start()
    worker.join(20)
    if worker.is_alive():
        # Unblock the open() so the test process can end, then fail.
        with open(state / ("planted.json" if command == "gc-record" else "planted"), "w"):
            pass
        pytest.fail("the command blocked on a FIFO in its state directory")
    assert outcome == [_cli.EXIT_CLEAN]
    text = (tmp_path / "gc.prom").read_text()
    assert 'registry="private"' in text
    assert "planted" not in text and "linked" not in text
