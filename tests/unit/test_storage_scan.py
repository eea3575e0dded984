"""One walk for both scans (scan_storage): the same results as the two scans, each link read once."""

import collections
import os
import shutil
import sys

import pytest

from ansible_collections.regwarden.registry.plugins.module_utils import (
    _fs_view,
    _storage_scan,
)
from ansible_collections.regwarden.registry.plugins.module_utils._blob_scan import scan_blobs
from ansible_collections.regwarden.registry.plugins.module_utils._index_audit import audit_indexes
from ansible_collections.regwarden.registry.plugins.module_utils._storage import ScanError

BENCH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH_DIR)
import generate_tree  # noqa: E402  (the benchmark's seeded generator: every damage class, known findings)
import run_bench  # noqa: E402


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A small seeded tree of four registries with every damage class injected (damage.json knows where)."""
    out = tmp_path_factory.mktemp("generated")
    return generate_tree.generate(3000, 7, str(out / "tree"), workers=1, rate=0.005, log=lambda _msg: None)


def test_one_walk_gives_what_the_two_scans_give(generated):
    path = generated["path"]
    names = generated["registries"]
    blob, index = _storage_scan.scan_storage(path, index_registries=names)
    alone = scan_blobs(path)
    # The shared blob store also holds the blobs the audit looked up: blobs_checked may be higher.
    for name, counts in blob["summary"].items():
        assert counts.pop("blobs_checked") >= alone["summary"][name].pop("blobs_checked")
    assert blob == alone
    assert index == audit_indexes(path, registries=names)


def test_one_walk_finds_exactly_the_injected_damage(generated):
    path = generated["path"]
    blob, index = _storage_scan.scan_storage(path, index_registries=generated["registries"])
    found = run_bench.finding_keys(blob, index)
    for cls, expected in generated["expected"].items():
        if cls in found:
            assert sorted(found[cls]) == sorted(expected["keys"]), cls
    assert blob["scan_errors"] == index["scan_errors"] == []
    # Every class the scanners report was injected: the comparison above cannot pass on empty lists.
    assert all(found[cls] for cls in ("orphan_layer_links", "invalid_link_files", "zero_byte_blobs",
                                      "orphan_index_children", "broken_tags", "unservable_blobs",
                                      "invalid_manifests"))


@pytest.mark.parametrize("processes", [1, 2, 3])
def test_registries_in_parallel_processes_give_the_same_results(generated, processes):
    path = generated["path"]
    names = generated["registries"]
    reference_blob, reference_index = _storage_scan.scan_storage(path, index_registries=names, processes=1)
    assert _storage_scan.scan_storage(path, index_registries=names, processes=processes) == (
        reference_blob, reference_index)
    assert audit_indexes(path, registries=names, processes=processes) == audit_indexes(
        path, registries=names, processes=1) == reference_index
    assert scan_blobs(path, processes=processes) == scan_blobs(path, processes=1)


def test_a_registry_failing_in_a_worker_process_fails_the_scan_clearly(make_registry, storage):
    # Links but no blob store at all (an unmounted volume): a ScanError from that registry's process.
    healthy = make_registry("dockerhub")
    healthy.push_image("library/base", "image")
    broken = make_registry("private")
    broken.push_image("team/app", "image")
    shutil.rmtree(broken.v2 / "blobs")
    with pytest.raises(ScanError, match=r"registry private: the blob store .* is missing"):
        scan_blobs(str(storage), processes=2)
    with pytest.raises(ScanError, match=r"registry private: the blob store .* is missing"):
        _storage_scan.scan_storage(str(storage), processes=2)
    # Allowed to be incomplete, the healthy registry's results stand beside the broken one's error.
    result = scan_blobs(str(storage), processes=2, allow_incomplete=True)
    assert result["registries"] == ["dockerhub"]
    assert result["incomplete_registries"] == ["private"]
    assert [e["registry"] for e in result["scan_errors"]] == ["private"]


def test_default_scope_audits_only_the_private_registry(generated):
    blob, index = _storage_scan.scan_storage(generated["path"])
    assert blob["registries"] == sorted(generated["registries"])
    assert index["registries"] == ["private"]
    assert index == audit_indexes(generated["path"])


@pytest.mark.parametrize("capacity", [False, True], ids=["scans", "with-capacity"])
def test_each_link_read_and_each_blob_stated_once(generated, monkeypatch, capacity):
    """With capacity too, which reads every tag and the manifests tags reach: still once each, the
    audit in the same walk reads none of them again."""
    reads = collections.Counter()
    stats = collections.Counter()
    manifests = collections.Counter()
    original_read = _fs_view.read_link_at
    original_stat = _fs_view.BlobStore._stat
    original_blob_read = _fs_view.BlobStore.read

    def counting_blob_read(self, hex_digest, limit):
        manifests[(self.name, hex_digest)] += 1
        return original_blob_read(self, hex_digest, limit)

    def counting_read(dir_fd, rel_path, expected_hex):
        reads[os.path.join(os.readlink("/proc/self/fd/%d" % dir_fd), rel_path)] += 1
        return original_read(dir_fd, rel_path, expected_hex)

    def counting_stat(self, hex_digest):
        stats[(self.name, hex_digest)] += 1
        return original_stat(self, hex_digest)

    monkeypatch.setattr(_fs_view, "read_link_at", counting_read)
    monkeypatch.setattr(_fs_view.BlobStore, "_stat", counting_stat)
    monkeypatch.setattr(_fs_view.BlobStore, "read", counting_blob_read)
    # One process, so the counting wrappers see every call (each registry is one process's anyway).
    _storage_scan.scan_storage(generated["path"], index_registries=generated["registries"], processes=1,
                               capacity=capacity)
    assert len(reads) > 1000 and len(stats) > 500 and len(manifests) > 100
    assert max(reads.values()) == 1, reads.most_common(3)
    assert max(stats.values()) == 1, stats.most_common(3)
    assert max(manifests.values()) == 1, manifests.most_common(3)


def test_unknown_registry_is_a_clear_error(generated):
    with pytest.raises(ScanError, match="registry nope not found"):
        _storage_scan.scan_storage(generated["path"], index_registries=["nope"])
