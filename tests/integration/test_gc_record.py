"""The GC record from a real ``garbage-collect`` run: the blobs it counts as deleted are exactly the
blob directories that disappeared, and the bytes the GC script measures (blob data before and
after) are exactly theirs."""

from __future__ import annotations

import io
import json
import sys

import pytest

from ansible_collections.regwarden.registry.plugins.module_utils import _cli
from tests.support.oci import RegistryClient, make_image
from tests.support.registry import Registry

# Registry and storage behaviour, no Ansible code: once, not again per ansible-core (pyproject markers).
pytestmark = pytest.mark.no_ansible


def blob_sizes(registry: Registry) -> dict[str, int]:
    root = registry.v2 / "blobs" / "sha256"
    return {data.parent.name: data.stat().st_size for data in root.glob("*/*/data")}


def test_the_record_of_a_real_gc_matches_what_it_deleted(tmp_path, monkeypatch):
    with Registry("private", tmp_path / "data", tmp_path) as registry:
        client = RegistryClient(registry.url)
        kept = make_image("gc-kept", layers=2, layer_size=4096)
        dropped = make_image("gc-dropped", layers=3, layer_size=8192)
        client.push("team/app", kept, "kept")
        client.push("team/app", dropped, "dropped")
        client.delete_manifest("team/app", dropped.digest)
        registry.stop()
        before = blob_sizes(registry)
        run = registry.garbage_collect()
    after = blob_sizes(registry)
    gone = set(before) - set(after)
    assert gone == {blob.digest[7:] for blob in dropped.blobs} | {dropped.digest[7:]}
    freed = sum(before.values()) - sum(after.values())

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO((run.stdout + run.stderr).encode())))
    assert _cli.main(["gc-record", "--registry", "private", "--success", "1", "--duration", "1",
                      "--bytes-freed", str(freed), "--state-dir", str(tmp_path / "state"),
                      "--prom", str(tmp_path / "gc.prom")]) == _cli.EXIT_CLEAN
    state = json.loads((tmp_path / "state" / "private.json").read_text())
    assert state["blobs_deleted"] == len(gone)
    assert state["blobs_marked"] == len(after)
    assert state["bytes_freed"] == freed == sum(before[hex_digest] for hex_digest in gone)
    assert 'regwarden_gc_blobs_deleted{registry="private"} %d' % len(gone) in (tmp_path / "gc.prom").read_text()
