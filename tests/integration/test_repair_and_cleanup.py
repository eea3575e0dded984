"""Repair of orphan index children and tag cleanup, proven on a real 2.8 registry over HTTP.

- repair: after ``garbage-collect --delete-untagged`` (2.8 drops the children's revision links)
  and a blob eviction, ``registry_index_audit repair=true`` + restart makes every repairable
  child pull again with verified digests, leaves the rest reported as ``rebuild_required``, and
  changes nothing on disk but the links it writes.
- cleanup: ``registry_tag_cleanup`` + plain ``garbage-collect`` + restart: every kept tag pulls
  completely, the removed images' blobs are freed, and the scanners find nothing.
"""

from __future__ import annotations

import os

import pytest

from tests.support import damage, storage
from tests.support.ansible_run import run_module
from tests.support.oci import RegistryClient, make_image, make_index, make_layer, make_multiarch
from tests.support.registry import Registry


@pytest.fixture
def registry(tmp_path):
    reg = Registry("private", tmp_path / "data", tmp_path / "work")
    reg.start()
    yield reg
    reg.stop()


def blob_digests(v2) -> set[str]:
    root = v2 / "blobs" / "sha256"
    return {"sha256:" + d.name for prefix in root.iterdir() for d in prefix.iterdir() if (d / "data").is_file()}


def everything(manifest) -> set[str]:
    """Digests a pull of ``manifest`` needs: itself, children, configs, layers."""
    return {m.digest for m in manifest.walk()} | {b.digest for m in manifest.walk() for b in m.blobs}


def changed_paths(before: dict, after: dict) -> set[str]:
    return {path for path in set(before) | set(after) if before.get(path) != after.get(path)}


def test_repair_after_gc_delete_untagged_makes_repairable_children_pull_again(registry):
    client = RegistryClient(registry.url)
    base = [make_layer("base-layer")]
    # v1: a manifest list whose per-arch images are also tagged in mirror/app (blobs stay marked).
    images_v1 = [make_image("v1-" + p, flavor="docker", platform=p, base_layers=base)
                 for p in ("linux/amd64", "linux/arm64/v8")]
    v1 = make_index(images_v1, flavor="docker")
    # v3: the same, but one arm64 layer gets evicted afterwards: only a rebuild fixes it.
    images_v3 = [make_image("v3-" + p, platform=p, base_layers=base) for p in ("linux/amd64", "linux/arm64/v8")]
    v3 = make_index(images_v3)
    # tool: children nobody else references: GC sweeps their layers.
    tool = make_multiarch("tool", attestations=True)
    client.push("team/app", v1, "v1")
    client.push("team/app", v3, "v3")
    client.push("team/tool", tool, "1")
    for image in images_v1 + images_v3:
        client.push("mirror/app", image, image.digest[7:19])

    gc = damage.gc_delete_untagged(registry)
    assert gc.returncode == 0, gc.stderr
    evicted = images_v3[1].layers[-1].digest
    damage.remove_blob_data(registry, evicted)
    registry.restart()
    assert not client.pull("team/app", "v1").ok and not client.pull("team/tool", "1").ok

    before = storage.snapshot(registry.data_dir)
    run = run_module("regwarden.registry.registry_index_audit",
                     {"path": str(registry.data_dir), "repair": True}, diff=True)
    assert not run.failed, run.result
    result = run.result
    by_child = {f["child_digest"]: f for f in result["orphan_index_children"]}
    repairable = {m.digest for m in images_v1} | {images_v3[0].digest}
    rebuild = {images_v3[1].digest} | {child.digest for child in tool.children}
    assert set(by_child) == repairable | rebuild
    assert {d for d, f in by_child.items() if f["repair"] == "repaired"} == repairable
    assert {d for d, f in by_child.items() if f["rebuild_required"]} == rebuild
    assert result["changed"] is True and result["restart_required"] is True
    # Only revision links were missing: GC never removes _layers links.
    assert sorted(result["repaired_links"]) == sorted(
        str(storage.revision_link(registry.v2, "team/app", d)) for d in repairable)
    assert result["diff"]["after"].splitlines() == result["repaired_links"]

    after = storage.snapshot(registry.data_dir)
    root = str(registry.data_dir) + os.sep
    written = {path[len(root):] for path in result["repaired_links"]}
    assert {p for p in changed_paths(before, after) if after.get(p, ("",))[0] != "dir"} == written
    assert all(after[p] == before[p] for p in before)  # nothing removed or rewritten

    registry.restart()
    report = client.pull("team/app", "v1")
    assert report.ok, report.problems
    assert not client.pull("team/app", "v3").ok  # the evicted layer: still broken, still reported
    assert not client.pull("team/tool", "1").ok
    for digest in repairable:
        assert client.pull("team/app", digest).ok
    rerun = run_module("regwarden.registry.registry_index_audit", {"path": str(registry.data_dir)})
    assert {f["child_digest"] for f in rerun.result["orphan_index_children"]} == rebuild
    assert rerun.result["changed"] is False


def test_tag_cleanup_then_gc_keeps_every_kept_tag_whole_and_frees_the_rest(registry):
    client = RegistryClient(registry.url)
    base = [make_layer("shared-base", size=4096)]
    releases = [make_multiarch("release-%d" % n, base_layers=base) for n in range(1, 5)]
    legacy = make_multiarch("legacy", flavor="docker", base_layers=base)
    for n, image in enumerate(releases, start=1):
        client.push("team/app", image, str(n))
    client.push("team/app", releases[-1], "latest")
    client.push("team/app", legacy, "legacy")
    # A second index reusing the amd64 child of release 2 (removed below): it must keep pulling.
    mixed = make_index([releases[1].children[0], releases[3].children[1]])
    client.push("team/app", mixed, "mixed")
    # Tag ages: pushes follow each other within a second; make the order explicit.
    for age, tag in enumerate(["1", "2", "legacy", "3", "mixed", "4", "latest"]):
        link = storage.tag_current_link(registry.v2, "team/app", tag)
        os.utime(link, (1_700_000_000 + age * 60,) * 2)

    args = {"path": str(registry.data_dir), "keep": 3, "exclude": "latest|legacy", "delete_untagged": True,
            "grace_period": 0}  # the pushes are seconds old
    before = storage.snapshot(registry.data_dir)
    check = run_module("regwarden.registry.registry_tag_cleanup", args, check=True, diff=True)
    assert not check.failed, check.result
    assert [f["tag"] for f in check.result["removed_tags"]] == ["1", "2"]
    assert storage.snapshot(registry.data_dir) == before

    run = run_module("regwarden.registry.registry_tag_cleanup", args)
    assert not run.failed, run.result
    assert [f["tag"] for f in run.result["removed_tags"]] == ["1", "2"]
    assert run.result["restart_required"] is True
    blobs_before = blob_digests(registry.v2)

    registry.stop()
    gc = registry.garbage_collect()
    assert gc.returncode == 0, gc.stderr
    registry.start()

    kept = {"3": releases[2], "4": releases[3], "latest": releases[3], "legacy": legacy, "mixed": mixed}
    for tag, image in kept.items():
        report = client.pull("team/app", tag)
        assert report.ok, (tag, report.problems)
        assert report.digest == image.digest
    assert sorted(client.tags("team/app")) == sorted(kept)
    needed = set().union(*(everything(image) for image in kept.values()))
    removed = (everything(releases[0]) | everything(releases[1])) - needed
    assert removed, "the removed releases must own blobs of their own"
    assert blob_digests(registry.v2) == blobs_before - removed

    scan = run_module("regwarden.registry.registry_blob_scan", {"path": str(registry.data_dir)})
    audit = run_module("regwarden.registry.registry_index_audit", {"path": str(registry.data_dir)})
    assert scan.result["findings"] == 0, scan.result
    assert audit.result["findings"] == 0, audit.result
    again = run_module("regwarden.registry.registry_tag_cleanup", args)
    assert again.result["changed"] is False


def test_cleanup_and_gc_never_free_the_children_of_a_kept_index_whose_blob_cannot_be_read(registry):
    """A kept tag's index blob truncated (a half-written file, a bad disk): its children must survive
    tag cleanup with delete_untagged and the real GC, and pull again once the blob is restored."""
    client = RegistryClient(registry.url)
    old = make_multiarch("old-release")
    kept = make_multiarch("kept-release", attestations=True)
    client.push("team/app", old, "old")
    client.push("team/app", kept, "kept")
    for age, tag in enumerate(["old", "kept"]):
        os.utime(storage.tag_current_link(registry.v2, "team/app", tag), (1_700_000_000 + age * 60,) * 2)
    index_data = storage.blob_data(registry.v2, kept.digest)
    content = index_data.read_bytes()
    index_data.write_bytes(content[: len(content) // 2])

    before = storage.snapshot(registry.data_dir)
    run = run_module("regwarden.registry.registry_tag_cleanup",
                     {"path": str(registry.data_dir), "keep": 1, "delete_untagged": True, "grace_period": 0})
    assert not run.failed, run.result
    assert run.result["changed"] is False
    [skipped] = run.result["skipped_repositories"]
    assert skipped["repo"] == "team/app" and kept.digest in skipped["reason"]
    assert storage.snapshot(registry.data_dir) == before  # the whole repository was left alone

    registry.stop()
    registry.garbage_collect(check=False)  # whatever GC makes of the truncated index, it runs for real
    index_data.write_bytes(content)
    registry.start()
    for tag, image in (("kept", kept), ("old", old)):
        report = client.pull("team/app", tag)
        assert report.ok, (tag, report.problems)
        assert report.manifests == 1 + len(image.children)
    for child in kept.children:
        assert client.pull("team/app", child.digest).ok
