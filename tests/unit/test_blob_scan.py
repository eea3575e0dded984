"""registry_blob_scan logic: one test per finding class and per bad input, on tmp trees."""

import contextlib
import json
import os
import shutil
from collections import Counter

import pytest

from ansible_collections.regwarden.registry.plugins.module_utils import _blob_scan, _fs_view, _writer
from ansible_collections.regwarden.registry.plugins.module_utils._blob_scan import count_findings, scan_blobs
from ansible_collections.regwarden.registry.plugins.module_utils._fs_view import BlobStore
from ansible_collections.regwarden.registry.plugins.module_utils._storage import (
    ScanError,
    ScanErrors,
    open_dir,
)
from tests.support.tree import EMPTY_HEX, deny_access, digest, sha256_hex, snapshot

FINDING_LISTS = ("orphan_layer_links", "invalid_link_files", "zero_byte_blobs", "corrupt_blobs")


def findings(result):
    return {key: result[key] for key in FINDING_LISTS}


def no_findings():
    return {key: [] for key in FINDING_LISTS}


def test_healthy_tree_has_no_findings(private, storage):
    private.push_image("app", "one", tags=["v1"])
    private.push_multiarch("team/app", "two", tags=["latest"], attestation=True)
    result = scan_blobs(str(storage))
    assert findings(result) == no_findings()
    assert result["scan_errors"] == []
    assert result["removed_links"] == []
    assert result["changed"] is False
    assert result["restart_required"] is False
    assert result["registries"] == ["private"]
    summary = result["summary"]["private"]
    assert summary["repositories"] == 2
    # app: config + 1 layer; team/app: 3 images x (config + layer)
    assert summary["layer_links"] == 2 + 6
    assert summary["revision_links"] == 1 + 4
    assert summary["blobs_checked"] == 8 + 5


# -- orphan layer links -------------------------------------------------------------------

def _data_gone(tree, hex_digest, tmp_path):
    tree.remove_data(hex_digest)


def _blob_dir_gone(tree, hex_digest, tmp_path):
    tree.remove_blob_dir(hex_digest)


def _data_is_a_directory(tree, hex_digest, tmp_path):
    tree.remove_data(hex_digest)
    tree.data_path(hex_digest).mkdir()


def _data_is_a_symlink(tree, hex_digest, tmp_path):
    # The symlink points at real content with the right hash: it must still not be followed.
    real = tmp_path / "outside-data"
    real.write_bytes(tree.data_path(hex_digest).read_bytes())
    tree.remove_data(hex_digest)
    tree.data_path(hex_digest).symlink_to(real)


@pytest.mark.parametrize("damage, reason", [
    pytest.param(_data_gone, "blob data missing", id="data-file-gone"),
    pytest.param(_blob_dir_gone, "blob directory missing", id="blob-dir-gone"),
    pytest.param(_data_is_a_directory, "blob data is not a regular file", id="data-is-a-directory"),
])
def test_orphan_layer_link(private, storage, tmp_path, damage, reason):
    private.push_image("app", "one", tags=["v1"])
    layer = private.push_blob("app", b"the orphan layer")
    damage(private, layer, tmp_path)
    result = scan_blobs(str(storage))
    assert result["orphan_layer_links"] == [{
        "registry": "private",
        "repo": "app",
        "digest": digest(layer),
        "path": str(private.layer_link_path("app", layer)),
        "blob_path": str(private.data_path(layer)),
        "reason": reason,
    }]
    assert result["invalid_link_files"] == result["zero_byte_blobs"] == []
    assert result["summary"]["private"]["orphan_layer_links"] == 1
    assert result["changed"] is False
    assert private.layer_link_path("app", layer).is_file()  # report only by default


@pytest.mark.parametrize("damage", [
    pytest.param(_data_is_a_symlink, id="data-is-a-symlink"),
    pytest.param(lambda tree, hex_digest, tmp_path: (tree.remove_data(hex_digest),
                                                     os.mkfifo(tree.data_path(hex_digest))), id="data-is-a-fifo"),
])
def test_blob_data_the_registry_might_serve_is_not_judged_never_removed(private, storage, tmp_path, damage):
    # The registry follows a symlinked data file (and would serve it): unreadable to us is "not
    # judged", a scan error, never an orphan whose link remove_orphans would delete.
    private.push_image("app", "one", tags=["v1"])
    layer = private.push_blob("app", b"served through a symlink")
    damage(private, layer, tmp_path)
    result = scan_blobs(str(storage), remove_orphans=True, allow_incomplete=True)
    assert result["orphan_layer_links"] == result["removed_links"] == []
    assert [e["path"] for e in result["scan_errors"]] == [str(private.data_path(layer))]
    assert private.layer_link_path("app", layer).is_file()
    assert count_findings(result) == 1  # the scan error counts for fail_on_findings


def test_revision_link_with_data_gone_is_not_an_orphan_layer_link(private, storage):
    # The blob scan is about _layers links; unservable manifests are the index audit's job.
    manifest = private.push_image("app", "one")
    private.remove_data(manifest)
    assert scan_blobs(str(storage))["orphan_layer_links"] == []


# -- invalid link files --------------------------------------------------------------------

def _write(content):
    def damage(link_path, other_hex, tmp_path):
        link_path.write_bytes(content(link_path, other_hex) if callable(content) else content)
    return damage


def _link_is_a_directory(link_path, other_hex, tmp_path):
    link_path.unlink()
    link_path.mkdir()


def _link_is_a_symlink(link_path, other_hex, tmp_path):
    # The target holds exactly the right content: following it would make it look valid.
    target = tmp_path / "outside-link"
    target.write_bytes(link_path.read_bytes())
    link_path.unlink()
    link_path.symlink_to(target)


INVALID_LINKS = [
    pytest.param(_write(b""), "link file is empty", id="empty"),
    pytest.param(_write(b"\x00\xffgarbage"), "link file is not a sha256 digest", id="garbage"),
    pytest.param(_write(lambda p, o: p.read_bytes() + b"\n"), "link file is not a sha256 digest",
                 id="trailing-newline"),
    pytest.param(_write(lambda p, o: p.read_bytes().upper().replace(b"SHA256:", b"sha256:")),
                 "link file is not a sha256 digest", id="uppercase-hex"),
    pytest.param(_write(lambda p, o: digest(o).encode()), "link file names sha256:", id="digest-of-another-dir"),
    pytest.param(_write(lambda p, o: b"sha512:" + p.read_bytes()[7:]), "link file is not a sha256 digest",
                 id="other-algorithm"),
    pytest.param(_write(lambda p, o: p.read_bytes() * 4), "link file is not a sha256 digest", id="oversized"),
    pytest.param(_link_is_a_directory, "link is a directory", id="link-is-a-directory"),
    pytest.param(_link_is_a_symlink, "link file is a symlink", id="link-is-a-symlink"),
]


@pytest.mark.parametrize("damage, reason", INVALID_LINKS)
def test_invalid_layer_link_file(private, storage, tmp_path, damage, reason):
    layer = private.push_blob("app", b"a layer")
    other = private.push_blob("app", b"another layer")
    link_path = private.layer_link_path("app", layer)
    damage(link_path, other, tmp_path)
    result = scan_blobs(str(storage), remove_orphans=True)
    assert len(result["invalid_link_files"]) == 1
    finding = result["invalid_link_files"][0]
    assert finding["reason"].startswith(reason)
    assert {k: v for k, v in finding.items() if k != "reason"} == {
        "registry": "private",
        "repo": "app",
        "digest": digest(layer),
        "path": str(link_path),
        "kind": "layer",
    }
    assert result["orphan_layer_links"] == []
    assert result["removed_links"] == []  # invalid links are reported, never removed
    assert os.path.lexists(link_path)
    assert result["summary"]["private"]["invalid_link_files"] == 1
    assert result["summary"]["private"]["layer_links"] == 1  # only the healthy one


def test_invalid_revision_link_file(private, storage):
    manifest = private.push_image("app", "one")
    private.link_revision("app", manifest, "sha256:" + "0" * 63)
    result = scan_blobs(str(storage))
    assert [(f["kind"], f["digest"], f["path"], f["reason"]) for f in result["invalid_link_files"]] == [
        ("revision", digest(manifest), str(private.revision_link_path("app", manifest)),
         "link file is not a sha256 digest")]


def test_directory_name_not_a_digest_is_reported_never_deleted(private, storage):
    private.push_blob("app", b"a layer")
    bad_dirs = [
        private.repo_dir("app") / "_layers" / "sha256" / "not-a-digest",
        private.repo_dir("app") / "_layers" / "sha256" / ("A" * 64),
        private.repo_dir("app") / "_manifests" / "revisions" / "sha256" / ("ab" * 31),
    ]
    for bad in bad_dirs:
        bad.mkdir(parents=True)
        (bad / "link").write_text("sha256:" + "0" * 64)  # an orphan if it were addressable
    stray_file = private.repo_dir("app") / "_layers" / "sha256" / "stray-file"
    stray_file.write_text("x")
    before = snapshot(storage)
    result = scan_blobs(str(storage), remove_orphans=True)
    reported = {(f["path"], f["kind"], f["digest"], f["reason"]) for f in result["invalid_link_files"]}
    assert reported == {
        (str(bad_dirs[0]), "layer", None, "directory name is not a sha256 digest"),
        (str(bad_dirs[1]), "layer", None, "directory name is not a sha256 digest"),
        (str(bad_dirs[2]), "revision", None, "directory name is not a sha256 digest"),
        (str(stray_file), "layer", None, "not a directory"),
    }
    assert result["orphan_layer_links"] == []
    assert result["removed_links"] == []
    assert snapshot(storage) == before


def test_symlinked_digest_dir_is_reported_not_followed(private, storage, tmp_path):
    hex_digest = sha256_hex(b"gone")
    outside = tmp_path / "outside" / hex_digest
    outside.mkdir(parents=True)
    (outside / "link").write_text(digest(hex_digest))  # an orphan link, if it were followed
    layers_dir = private.repo_dir("app") / "_layers" / "sha256"
    layers_dir.mkdir(parents=True)
    (layers_dir / hex_digest).symlink_to(outside)
    result = scan_blobs(str(storage), remove_orphans=True)
    assert [(f["path"], f["reason"]) for f in result["invalid_link_files"]] == [
        (str(layers_dir / hex_digest), "symlink, not followed")]
    assert result["orphan_layer_links"] == []
    assert result["removed_links"] == []
    assert (outside / "link").read_text() == digest(hex_digest)


# -- zero-byte and corrupt blobs -----------------------------------------------------------

def test_zero_byte_blob_reported_once_with_every_repo(private, storage):
    layer = private.push_blob("b/app", b"truncated later")
    private.link_layer("a", layer)
    private.truncate_data(layer)
    result = scan_blobs(str(storage))
    assert result["zero_byte_blobs"] == [{
        "registry": "private",
        "digest": digest(layer),
        "path": str(private.data_path(layer)),
        "repos": ["a", "b/app"],
    }]
    assert result["orphan_layer_links"] == []  # the data file exists: not an orphan
    assert result["summary"]["private"]["zero_byte_blobs"] == 1


def test_empty_content_digest_is_a_legit_zero_byte_blob(private, storage):
    assert private.push_blob("app", b"") == EMPTY_HEX
    result = scan_blobs(str(storage), verify_digests=True)
    assert findings(result) == no_findings()


def test_zero_byte_manifest_blob_is_reported(private, storage):
    manifest = private.push_image("app", "one")
    private.truncate_data(manifest)
    assert [f["digest"] for f in scan_blobs(str(storage))["zero_byte_blobs"]] == [digest(manifest)]


def test_verify_digests_finds_content_that_does_not_hash_to_its_name(private, storage):
    good = private.push_blob("app", b"good layer")
    bad = private.push_blob("app", b"bad layer")
    private.data_path(bad).write_bytes(b"bit rot")
    unlinked = private.put_blob(b"no repo links me")
    private.data_path(unlinked).write_bytes(b"also rotten")

    default = scan_blobs(str(storage))
    assert default["corrupt_blobs"] == []  # the expensive scrub is off by default
    assert default["summary"]["private"]["corrupt_blobs"] == 0

    result = scan_blobs(str(storage), verify_digests=True)
    assert result["corrupt_blobs"] == sorted([
        {"registry": "private", "digest": digest(bad), "path": str(private.data_path(bad)),
         "actual_digest": digest(sha256_hex(b"bit rot"))},
        {"registry": "private", "digest": digest(unlinked), "path": str(private.data_path(unlinked)),
         "actual_digest": digest(sha256_hex(b"also rotten"))},
    ], key=lambda f: f["digest"])
    assert good not in json.dumps(result["corrupt_blobs"])
    assert result["summary"]["private"]["corrupt_blobs"] == 2


def test_verify_digests_skips_symlinked_and_missing_data(private, storage, tmp_path):
    outside = tmp_path / "outside"
    outside.write_bytes(b"not the content")
    layer = private.push_blob("app", b"layer")
    private.remove_data(layer)
    private.data_path(layer).symlink_to(outside)
    gone = private.push_blob("app", b"gone")
    private.remove_data(gone)
    result = scan_blobs(str(storage), verify_digests=True)
    assert result["corrupt_blobs"] == []
    assert [f["digest"] for f in result["orphan_layer_links"]] == [digest(gone)]
    assert {e["path"] for e in result["scan_errors"]} == {str(private.data_path(layer))}


# -- remove_orphans ------------------------------------------------------------------------

def _damaged_tree(private, tmp_path):
    """A tree holding every damage class next to healthy content; returns the orphan links."""
    private.push_image("app", "healthy", tags=["v1"])
    orphan_gone = private.push_blob("app", b"orphan: data gone")
    private.remove_data(orphan_gone)
    orphan_dir_gone = private.push_blob("team/app", b"orphan: blob dir gone")
    private.remove_blob_dir(orphan_dir_gone)
    orphan_not_regular = private.push_blob("team/app", b"orphan: data is a directory")
    _data_is_a_directory(private, orphan_not_regular, tmp_path)
    shared = private.push_blob("app", b"shared, still present")
    private.link_layer("team/app", shared)
    zero = private.push_blob("app", b"zero byte")
    private.truncate_data(zero)
    invalid = private.push_blob("app", b"garbage link")
    private.link_layer("app", invalid, "garbage")
    manifest_gone = private.push_image("app", "manifest data gone")
    private.remove_data(manifest_gone)
    (private.repo_dir("app") / "_layers" / "sha256" / ("f" * 64)).mkdir()  # empty leftover
    (private.repo_dir("app") / "_layers" / "sha256" / "not-a-digest").mkdir()
    (private.repo_dir("app") / "_uploads" / "some-session").mkdir(parents=True)
    return [
        ("app", orphan_gone),
        ("team/app", orphan_dir_gone),
        ("team/app", orphan_not_regular),
    ]


def test_remove_orphans_removes_only_the_orphan_link_dirs(private, storage, tmp_path):
    orphans = _damaged_tree(private, tmp_path)
    before = snapshot(storage)
    result = scan_blobs(str(storage), remove_orphans=True)

    expected_links = sorted(str(private.layer_link_path(repo, h)) for repo, h in orphans)
    assert result["removed_links"] == expected_links
    assert [f["path"] for f in result["orphan_layer_links"]] == [
        str(private.layer_link_path(repo, h)) for repo, h in sorted(orphans)]
    assert result["changed"] is True
    assert result["restart_required"] is True
    assert result["summary"]["private"]["removed_links"] == 3
    # Other findings are still reported, and left alone.
    assert len(result["zero_byte_blobs"]) == 1
    assert len(result["invalid_link_files"]) == 2

    removed = set()
    for repo, hex_digest in orphans:
        link = private.layer_link_path(repo, hex_digest)
        removed |= {str(link.relative_to(storage)), str(link.parent.relative_to(storage))}
    after = snapshot(storage)
    assert set(before) - set(after) == removed
    assert {k: v for k, v in before.items() if k not in removed} == after  # blob data untouched

    again = scan_blobs(str(storage), remove_orphans=True)
    assert again["orphan_layer_links"] == again["removed_links"] == []
    assert again["changed"] is False
    assert again["restart_required"] is False


def test_check_mode_removes_nothing_but_reports_removed_links(private, storage, tmp_path):
    orphans = _damaged_tree(private, tmp_path)
    before = snapshot(storage)
    result = scan_blobs(str(storage), remove_orphans=True, check_mode=True)
    assert result["removed_links"] == sorted(str(private.layer_link_path(r, h)) for r, h in orphans)
    assert result["changed"] is True
    assert result["restart_required"] is False  # nothing was really removed
    assert snapshot(storage) == before


def test_without_remove_orphans_nothing_changes(private, storage, tmp_path):
    _damaged_tree(private, tmp_path)
    before = snapshot(storage)
    result = scan_blobs(str(storage), verify_digests=True)
    assert len(result["orphan_layer_links"]) == 3
    assert result["removed_links"] == []
    assert result["changed"] is False
    assert result["restart_required"] is False
    assert snapshot(storage) == before


def test_restart_not_required_when_nothing_to_remove(private, storage):
    private.push_image("app", "one", tags=["v1"])
    result = scan_blobs(str(storage), remove_orphans=True)
    assert result["removed_links"] == []
    assert result["changed"] is False
    assert result["restart_required"] is False


def test_orphan_repaired_between_scan_and_removal_is_left_alone(private, storage, monkeypatch):
    layer = private.push_blob("app", b"comes back")
    content = private.data_path(layer).read_bytes()
    private.remove_data(layer)

    def restore_before_removal(stage, operation, path):
        if stage == "open":
            private.data_path(layer).write_bytes(content)  # e.g. a push re-uploaded the blob meanwhile

    monkeypatch.setattr(_writer, "RACE_HOOK", restore_before_removal)
    result = scan_blobs(str(storage), remove_orphans=True)
    assert [f["digest"] for f in result["orphan_layer_links"]] == [digest(layer)]
    assert result["removed_links"] == []
    assert result["changed"] is False
    assert result["restart_required"] is False
    assert private.layer_link_path("app", layer).is_file()


@pytest.mark.parametrize("repair, removed", [
    pytest.param(None, True, id="still-orphan-removed"),
    pytest.param("data", False, id="data-restored"),
    pytest.param("relinked", False, id="link-now-names-another-digest"),
    pytest.param("gone", False, id="link-already-gone"),
])
def test_remove_orphan_checks_again_right_before_removing(private, repair, removed):
    layer = private.push_blob("app", b"orphan")
    content = private.data_path(layer).read_bytes()
    private.remove_data(layer)
    layers_dir = private.repo_dir("app") / "_layers" / "sha256"
    link_path = private.layer_link_path("app", layer)
    errors = ScanErrors("private")
    v2_fd = open_dir(str(private.v2))
    blobs = BlobStore("private", v2_fd, str(private.v2), errors)
    assert blobs.data_state(layer) < 0  # the scan saw an orphan; the cache remembers it
    if repair == "data":
        private.data_path(layer).write_bytes(content)
    elif repair == "relinked":
        link_path.write_text(digest(sha256_hex(b"other")))
    elif repair == "gone":
        shutil.rmtree(link_path.parent)
    result = _blob_scan.new_result()
    scanner = _blob_scan.BlobScanner("private", blobs, errors, result, _writer.StorageWriter(apply=True))
    dir_fd = open_dir(str(layers_dir))
    try:
        scanner._remove_orphan(dir_fd, layer, str(link_path))
    finally:
        os.close(dir_fd)
        blobs.close()
        os.close(v2_fd)
    assert result["removed_links"] == ([str(link_path)] if removed else [])
    assert link_path.parent.exists() is (repair != "gone" and not removed)
    assert errors.items == []
    assert private.blob_dir(layer).is_dir()  # blob side never touched


def test_empty_leftover_link_dirs_are_counted_not_reported(private, storage):
    manifest = private.push_image("app", "one", tags=["v1"])
    private.delete_revision("app", manifest)  # leaves the empty <hex>/ revision dir
    (private.repo_dir("app") / "_layers" / "sha256" / ("0" * 64)).mkdir()
    before = snapshot(storage)
    result = scan_blobs(str(storage), remove_orphans=True)
    assert findings(result) == no_findings()
    assert result["summary"]["private"]["empty_link_dirs"] == 2
    assert result["removed_links"] == []
    assert snapshot(storage) == before


# -- repository walk -----------------------------------------------------------------------

def test_nested_repo_names(private, storage):
    orphan_hexes = {}
    for repo in ("team", "team/app/x", "team/sub", "zeta"):
        hex_digest = private.push_blob(repo, b"orphan in " + repo.encode())
        private.remove_data(hex_digest)
        orphan_hexes[repo] = hex_digest
    (private.repo_dir("team/app/empty-dir")).mkdir(parents=True)  # not a repo: no marker dir
    result = scan_blobs(str(storage))
    assert [(f["repo"], f["digest"]) for f in result["orphan_layer_links"]] == [
        (repo, digest(orphan_hexes[repo])) for repo in ("team", "team/app/x", "team/sub", "zeta")]
    assert result["summary"]["private"]["repositories"] == 4


def test_uploads_only_dir_is_a_repo(private, storage):
    (private.repo_dir("pushing") / "_uploads" / "session").mkdir(parents=True)
    result = scan_blobs(str(storage))
    assert result["summary"]["private"]["repositories"] == 1
    assert findings(result) == no_findings()


def test_symlinked_repo_dir_is_reported_and_not_followed(private, storage, tmp_path):
    private.push_blob("app", b"healthy")
    outside = tmp_path / "outside-repo"
    hex_digest = sha256_hex(b"orphan outside")
    link = outside / "_layers" / "sha256" / hex_digest / "link"
    link.parent.mkdir(parents=True)
    link.write_text(digest(hex_digest))
    (private.repo_dir("team")).mkdir()
    (private.repo_dir("team") / "evil").symlink_to(outside)
    result = scan_blobs(str(storage), remove_orphans=True)
    assert result["scan_errors"] == [{"registry": "private", "path": str(private.repo_dir("team/evil")),
                                      "error": "symlink not followed"}]
    assert findings(result) == no_findings()
    assert result["removed_links"] == []
    assert link.is_file()


def _symlinked_layers_dir(private, outside):
    (private.repo_dir("evil") / "_manifests").mkdir(parents=True)
    (private.repo_dir("evil") / "_layers").symlink_to(outside / "_layers")
    return private.repo_dir("evil") / "_layers"


def _symlinked_repositories_dir(private, outside):
    shutil.rmtree(private.v2 / "repositories")
    (outside / "repositories" / "app").mkdir(parents=True)
    os.rename(outside / "_layers", outside / "repositories" / "app" / "_layers")
    (private.v2 / "repositories").symlink_to(outside / "repositories")
    return private.v2 / "repositories"


@pytest.mark.parametrize("make_symlink", [
    pytest.param(_symlinked_layers_dir, id="repo-_layers-is-a-symlink"),
    pytest.param(_symlinked_repositories_dir, id="v2-repositories-is-a-symlink"),
])
def test_remove_orphans_never_follows_a_symlinked_directory_out_of_path(private, storage, tmp_path, make_symlink):
    # docs/design.md section 4: nothing outside `path` is ever touched; symlinks are never followed.
    outside = tmp_path / "outside"
    hex_digest = sha256_hex(b"orphan outside the tree")
    outside_link = outside / "_layers" / "sha256" / hex_digest / "link"
    outside_link.parent.mkdir(parents=True)
    outside_link.write_text(digest(hex_digest))
    symlink = make_symlink(private, outside)
    outside_before = snapshot(outside)
    # A symlinked repositories/ is a registry-level error: without allow_incomplete the scan fails.
    with pytest.raises(ScanError) if symlink.name == "repositories" else contextlib.nullcontext():
        scan_blobs(str(storage), remove_orphans=True)
    result = scan_blobs(str(storage), remove_orphans=True, allow_incomplete=True)
    assert snapshot(outside) == outside_before
    assert result["incomplete_registries"] == (["private"] if symlink.name == "repositories" else [])
    assert result["removed_links"] == []
    assert result["orphan_layer_links"] == []
    assert str(symlink) in json.dumps(result["scan_errors"])


def test_symlinked_link_kind_dir_is_reported(private, storage, tmp_path):
    # `_layers/sha256` itself a symlink: not followed, and not silently ignored either.
    outside = tmp_path / "outside-sha256"
    hex_digest = sha256_hex(b"orphan outside")
    (outside / hex_digest).mkdir(parents=True)
    (outside / hex_digest / "link").write_text(digest(hex_digest))
    (private.repo_dir("app") / "_layers").mkdir(parents=True)
    (private.repo_dir("app") / "_layers" / "sha256").symlink_to(outside)
    result = scan_blobs(str(storage), remove_orphans=True)
    assert (outside / hex_digest / "link").is_file()
    assert result["removed_links"] == []
    assert str(private.repo_dir("app") / "_layers" / "sha256") in json.dumps(
        result["scan_errors"] + result["invalid_link_files"])


def test_symlinked_blob_store_is_reported_and_no_link_is_removed(private, storage, tmp_path):
    # blobs/sha256 moved to another disk and symlinked: the registry serves every blob, so the
    # scanner (which never follows symlinks) cannot call them missing, let alone remove links.
    private.push_multiarch("app", "multi", tags=["v1"])
    blobs_dir = private.v2 / "blobs" / "sha256"
    other_disk = tmp_path / "other-disk"
    os.rename(blobs_dir, other_disk)
    blobs_dir.symlink_to(other_disk)
    before = snapshot(storage)
    try:
        result = scan_blobs(str(storage), remove_orphans=True)
    except ScanError as exc:
        assert str(blobs_dir) in str(exc)
    else:
        assert result["removed_links"] == []
        assert result["orphan_layer_links"] == []
        assert str(blobs_dir) in json.dumps(result["scan_errors"])
    assert snapshot(storage) == before


def test_repo_without_tags_dir_is_scanned(private, storage):
    layer = private.push_blob("untagged", b"layer")
    private.remove_data(layer)
    private.push_image("untagged", "image")
    assert not (private.repo_dir("untagged") / "_manifests" / "tags").exists()
    result = scan_blobs(str(storage))
    assert [f["digest"] for f in result["orphan_layer_links"]] == [digest(layer)]
    assert result["scan_errors"] == []


def test_repositories_dir_missing_is_an_empty_registry(storage):
    (storage / "private" / "docker" / "registry" / "v2").mkdir(parents=True)
    result = scan_blobs(str(storage))
    assert findings(result) == no_findings()
    assert result["summary"]["private"]["repositories"] == 0


# -- permission denied, a tree changing under the scan --------------------------------------

def test_unlistable_repo_dir_is_a_scan_error(private, storage, monkeypatch):
    private.remove_data(private.push_blob("locked/app", b"orphan in a locked dir"))
    private.remove_data(private.push_blob("open", b"orphan"))
    deny_access(monkeypatch, private.repo_dir("locked"))
    result = scan_blobs(str(storage))
    assert result["scan_errors"] == [{"registry": "private", "path": str(private.repo_dir("locked")),
                                      "error": "cannot open directory: Permission denied"}]
    assert [f["repo"] for f in result["orphan_layer_links"]] == ["open"]


def test_unreadable_links_dir_is_a_scan_error(private, storage, monkeypatch):
    private.remove_data(private.push_blob("app", b"orphan"))
    layers_dir = private.repo_dir("app") / "_layers" / "sha256"
    deny_access(monkeypatch, layers_dir)
    result = scan_blobs(str(storage), remove_orphans=True)
    assert result["scan_errors"] == [{"registry": "private", "path": str(layers_dir),
                                      "error": "cannot open directory: Permission denied"}]
    assert result["orphan_layer_links"] == result["removed_links"] == []


def test_unreadable_link_file_is_a_scan_error_not_damage(private, storage, monkeypatch):
    layer = private.push_blob("app", b"layer")
    private.remove_data(layer)  # an orphan, if the link could be read
    deny_access(monkeypatch, private.layer_link_path("app", layer))
    result = scan_blobs(str(storage), remove_orphans=True)
    assert result["invalid_link_files"] == result["orphan_layer_links"] == result["removed_links"] == []
    assert result["scan_errors"] == [{"registry": "private", "path": str(private.layer_link_path("app", layer)),
                                      "error": "link file unreadable: Permission denied; not judged"}]


def test_unreadable_blob_store_is_a_clear_error_not_a_traceback(private, storage, monkeypatch):
    # `blobs/sha256` denied: the scan must end in a ScanError or a scan_errors entry.
    private.push_blob("app", b"layer")
    deny_access(monkeypatch, private.v2 / "blobs" / "sha256")
    try:
        result = scan_blobs(str(storage), remove_orphans=True)
    except ScanError as exc:
        assert "Permission denied" in str(exc)
    else:
        assert str(private.v2 / "blobs" / "sha256") in json.dumps(result["scan_errors"])
        assert result["removed_links"] == []  # unreadable is not missing: nothing may be removed


def test_repo_removed_while_scanned(private, storage, monkeypatch):
    private.remove_data(private.push_blob("a", b"orphan a"))
    private.remove_data(private.push_blob("b", b"orphan b"))
    original = _blob_scan.BlobScanner._scan_link_kind

    def remove_b_first(self, repo, links_dir, *args):
        if repo == "b":
            shutil.rmtree(private.repo_dir("b"), ignore_errors=True)
        return original(self, repo, links_dir, *args)

    monkeypatch.setattr(_blob_scan.BlobScanner, "_scan_link_kind", remove_b_first)
    result = scan_blobs(str(storage), remove_orphans=True)
    assert [f["repo"] for f in result["orphan_layer_links"]] == ["a"]
    assert result["removed_links"] == [str(private.layer_link_path("a", sha256_hex(b"orphan a")))]
    assert result["scan_errors"] == []


def test_link_removed_between_listing_and_reading(private, storage, monkeypatch):
    layer = private.push_blob("app", b"layer")
    private.remove_data(layer)
    original = _fs_view.read_link_at

    def vanish_then_read(dir_fd, rel_path, expected_hex):
        shutil.rmtree(private.layer_link_path("app", layer).parent)
        return original(dir_fd, rel_path, expected_hex)

    monkeypatch.setattr(_fs_view, "read_link_at", vanish_then_read)
    result = scan_blobs(str(storage), remove_orphans=True)
    assert findings(result) == no_findings()
    assert result["scan_errors"] == []


# -- registries, layout, determinism, cost -------------------------------------------------

def test_registries_filter(make_registry, storage):
    for name in ("dockerhub", "private", "quay"):
        tree = make_registry(name)
        tree.remove_data(tree.push_blob("library/app", b"orphan in " + name.encode()))
    result = scan_blobs(str(storage), registries=["quay", "dockerhub"])
    assert result["registries"] == ["dockerhub", "quay"]
    assert sorted(result["summary"]) == ["dockerhub", "quay"]
    assert [f["registry"] for f in result["orphan_layer_links"]] == ["dockerhub", "quay"]
    assert len(scan_blobs(str(storage))["orphan_layer_links"]) == 3


def test_single_registry_layout(private, storage):
    private.remove_data(private.push_blob("app", b"orphan"))
    result = scan_blobs(str(private.root))
    assert result["registries"] == ["private"]
    assert [(f["registry"], f["repo"]) for f in result["orphan_layer_links"]] == [("private", "app")]


def test_output_is_sorted_and_deterministic(make_registry, storage, tmp_path):
    for name in ("zed", "alpha"):
        tree = make_registry(name)
        for repo in ("z/app", "a", "m/n/o", "b"):
            for n in range(3):
                hex_digest = tree.push_blob(repo, ("%s %s %d" % (name, repo, n)).encode())
                if n == 0:
                    tree.remove_data(hex_digest)
                elif n == 1:
                    tree.truncate_data(hex_digest)
                else:
                    tree.link_layer(repo, hex_digest, "junk")
    first = scan_blobs(str(storage), verify_digests=True, remove_orphans=True, check_mode=True)
    second = scan_blobs(str(storage), verify_digests=True, remove_orphans=True, check_mode=True)
    assert json.dumps(first) == json.dumps(second)
    orphans = first["orphan_layer_links"]
    assert len(orphans) == 8
    assert orphans == sorted(orphans, key=lambda f: (f["registry"], f["repo"], f["digest"]))
    invalid = first["invalid_link_files"]
    assert invalid == sorted(invalid, key=lambda f: (f["registry"], f["repo"], f["path"]))
    zero = first["zero_byte_blobs"]
    assert zero == sorted(zero, key=lambda f: (f["registry"], f["digest"]))
    assert first["removed_links"] == sorted(first["removed_links"])
    assert list(first["summary"]) == ["alpha", "zed"]


def _count_stats(monkeypatch):
    """Count blob-data lookups: the cached scan's (_stat) and the re-checks before removal (_stat_fresh)."""
    stats = Counter()
    for name in ("_stat", "_stat_fresh"):
        original = getattr(BlobStore, name)

        def counting(self, hex_digest, original=original):
            stats[(self.root, hex_digest)] += 1
            return original(self, hex_digest)

        monkeypatch.setattr(BlobStore, name, counting)
    return stats


def _shared_blobs(tree, repos):
    """A base layer and an orphan linked from every repo; returns (base, orphan) hex digests."""
    base = tree.put_blob(b"base layer shared by every repo")
    gone = tree.put_blob(b"shared orphan")
    tree.remove_data(gone)
    for n in range(repos):
        tree.link_layer("team/repo%d" % n, base)
        tree.link_layer("team/repo%d" % n, gone)
    return base, gone


def test_each_blob_is_stated_once_per_registry_however_many_repos_link_it(make_registry, storage, monkeypatch):
    stats = _count_stats(monkeypatch)
    for name in ("dockerhub", "private"):
        tree = make_registry(name)
        _shared_blobs(tree, 20)
        tree.push_image("team/repo0", "image")
    # One process, so the counting wrapper sees every stat (each registry is one process's anyway).
    result = scan_blobs(str(storage), verify_digests=True, processes=1)
    assert len(result["orphan_layer_links"]) == 40
    assert len(stats) == 2 * 5  # per registry: base, orphan, config, layer, manifest
    assert set(stats.values()) == {1}
    assert result["summary"]["private"]["blobs_checked"] == 5


def test_removal_stats_again_only_the_orphan_it_is_about_to_remove(private, storage, monkeypatch):
    stats = _count_stats(monkeypatch)
    base, gone = _shared_blobs(private, 15)
    result = scan_blobs(str(storage), remove_orphans=True)
    assert len(result["removed_links"]) == 15
    blobs_root = str(private.v2 / "blobs" / "sha256")
    # One stat for the scan, then the re-check right before each removal.
    assert stats == {(blobs_root, base): 1, (blobs_root, gone): 1 + 15}
