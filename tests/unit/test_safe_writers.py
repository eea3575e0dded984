"""Writers that cannot destroy: every write class of the safe-writers issue, on real trees.

Each test hashes a sentinel tree around ``path`` (and, where a relative path could land, the
working directory) before and after, and checks that nothing the registry serves was unlinked
and that the result says exactly what changed. Races are made deterministic with the writer's
RACE_HOOK, called between the listing and the change.
"""

import fcntl
import json
import os
import shutil
import subprocess

import pytest

from ansible_collections.regwarden.registry.plugins.module_utils import _writer
from ansible_collections.regwarden.registry.plugins.module_utils._blob_scan import scan_blobs
from ansible_collections.regwarden.registry.plugins.module_utils._index_audit import audit_indexes, count_findings
from ansible_collections.regwarden.registry.plugins.module_utils._storage import ScanError
from ansible_collections.regwarden.registry.plugins.module_utils._tag_cleanup import cleanup_tags
from tests.support.tree import deny_access, digest, sha256_hex, snapshot


@pytest.fixture
def sentinel(tmp_path):
    """A directory outside ``path`` holding what an attacker would want removed or overwritten."""
    outside = tmp_path / "outside"
    (outside / "etc").mkdir(parents=True)
    (outside / "etc" / "passwd").write_text("root:x:0:0\n")
    (outside / "link").write_text(digest(sha256_hex(b"x")))
    return outside


def age_tags(tree, repo, tags):
    for offset, tag in enumerate(tags):
        os.utime(tree.tag_link_path(repo, tag), (1_700_000_000 + offset * 60,) * 2)


def served_links(tree, repo):
    """Every link file of a repository (what the registry serves from), as a snapshot."""
    return {path: value for path, value in snapshot(tree.repo_dir(repo)).items() if value[0] == "file"}


def two_releases(private):
    old, old_children = private.push_multiarch("app", "old", tags=["old"])
    new, new_children = private.push_multiarch("app", "new", tags=["new"], attestation=True)
    age_tags(private, "app", ["old", "new"])
    return (old, old_children), (new, new_children)


# -- tag cleanup: what a kept tag reaches cannot be read --------------------------------------

def _truncate_index(tree, index, tmp_path):
    tree.truncate_data(index, 40)


def _index_data_gone(tree, index, tmp_path):
    tree.remove_data(index)


def _index_behind_a_symlink(tree, index, tmp_path):
    real = tmp_path / "elsewhere" / index
    shutil.copytree(tree.blob_dir(index), real)
    shutil.rmtree(tree.blob_dir(index))
    tree.blob_dir(index).symlink_to(real)


def _index_data_a_symlink(tree, index, tmp_path):
    real = tmp_path / "elsewhere-data"
    real.write_bytes(tree.data_path(index).read_bytes())
    tree.remove_data(index)
    tree.data_path(index).symlink_to(real)


def _index_data_a_fifo(tree, index, tmp_path):
    tree.remove_data(index)
    os.mkfifo(tree.data_path(index))


@pytest.mark.parametrize("damage, why", [
    pytest.param(_truncate_index, "cannot be read", id="index-blob-truncated"),
    pytest.param(_index_data_gone, "blob data is gone", id="index-blob-missing"),
    pytest.param(_index_behind_a_symlink, "cannot be read", id="index-blob-dir-a-symlink"),
    pytest.param(_index_data_a_symlink, "cannot be read", id="index-data-a-symlink"),
    pytest.param(_index_data_a_fifo, "cannot be read", id="index-data-a-fifo"),
])
def test_kept_index_that_cannot_be_read_protects_its_whole_repository(private, storage, tmp_path, damage, why):
    _old, (new, new_children) = two_releases(private)
    damage(private, new, tmp_path)
    before = snapshot(storage)
    result = cleanup_tags(str(storage), keep=1, delete_untagged=True, grace_period=0, allow_incomplete=True)
    assert snapshot(storage) == before  # not even the old tag goes
    assert result["changed"] is False
    [skipped] = result["skipped_repositories"]
    assert skipped["repo"] == "app"
    assert digest(new) in skipped["reason"] and why in skipped["reason"]
    for child in new_children:
        assert private.revision_link_path("app", child).is_file()


def test_unreadable_manifest_blob_protects_the_repository(private, storage, monkeypatch):
    _old, (new, _children) = two_releases(private)
    before = snapshot(storage)
    deny_access(monkeypatch, private.data_path(new))
    result = cleanup_tags(str(storage), keep=1, delete_untagged=True, grace_period=0, allow_incomplete=True)
    monkeypatch.undo()
    assert snapshot(storage) == before
    assert [s["repo"] for s in result["skipped_repositories"]] == ["app"]
    assert str(private.data_path(new)) in json.dumps(result["scan_errors"])


def test_nested_child_that_cannot_be_read_protects_the_repository(private, storage):
    inner, inner_children = private.push_multiarch("app", "inner")
    outer = private.push_index("app", [(inner, {"os": "linux", "architecture": "amd64"})], tags=["outer"])
    private.push_image("app", "old-image", tags=["old"])
    age_tags(private, "app", ["old", "outer"])
    private.truncate_data(inner, 10)
    before = snapshot(storage)
    result = cleanup_tags(str(storage), keep=1, delete_untagged=True, grace_period=0)
    assert snapshot(storage) == before
    [skipped] = result["skipped_repositories"]
    assert digest(inner) in skipped["reason"] and "kept tag" in skipped["reason"]
    assert all(private.revision_link_path("app", child).is_file() for child in inner_children)
    assert private.revision_link_path("app", outer).is_file()


def test_never_pulled_children_of_a_cache_index_are_no_obstacle(make_registry, storage):
    # A pull-through cache stores only what was pulled: a child with neither link nor data is absent,
    # not unreadable, and the cleanup of older tags goes on.
    cache = make_registry("dockerhub")
    old = cache.push_image("library/app", "old", tags=["old"])
    index, (amd, arm) = cache.push_multiarch("library/app", "new", tags=["new"])
    cache.delete_revision("library/app", arm)
    cache.remove_blob_dir(arm)
    age_tags(cache, "library/app", ["old", "new"])
    result = cleanup_tags(str(storage), keep=1, delete_untagged=True, grace_period=0, registries=["dockerhub"])
    assert result["skipped_repositories"] == []
    assert [f["tag"] for f in result["removed_tags"]] == ["old"]
    assert digest(old) in [f["digest"] for f in result["removed_revisions"]]
    assert cache.revision_link_path("library/app", amd).is_file()
    assert cache.revision_link_path("library/app", index).is_file()


@pytest.mark.parametrize("how", ["symlink", "unopenable"])
def test_tag_directory_that_cannot_be_opened_is_an_unreadable_tag(private, storage, tmp_path, monkeypatch, how,
                                                                  sentinel):
    two_releases(private)
    tag_dir = private.tag_dir("app", "served")
    if how == "symlink":
        # The registry follows it and serves "served" -> new; we cannot, so nothing may go.
        shutil.copytree(private.tag_dir("app", "new"), sentinel / "served")
        tag_dir.symlink_to(sentinel / "served")
    else:
        shutil.copytree(private.tag_dir("app", "new"), tag_dir)
    outside_before = snapshot(sentinel)
    before = snapshot(storage)
    if how == "unopenable":
        deny_access(monkeypatch, tag_dir / "current")
    result = cleanup_tags(str(storage), keep=1, delete_untagged=True, grace_period=0)
    monkeypatch.undo()
    assert snapshot(storage) == before
    assert snapshot(sentinel) == outside_before
    assert result["skipped_repositories"] == [
        {"registry": "private", "repo": "app", "reason": "tags with an unreadable current link: served"}]


# -- writers never act relative to the working directory, never outside path ------------------

@pytest.mark.parametrize("victim", ["tags", "revisions", "layers"])
@pytest.mark.parametrize("swap", ["vanishes", "becomes-a-symlink"])
def test_directory_swapped_between_listing_and_removal(private, storage, tmp_path, monkeypatch, sentinel,
                                                        victim, swap):
    two_releases(private)
    loose = private.push_image("app", "etc")  # untagged: its revision and layers would go
    # A pusher chose names that exist in the process's working directory (/ for the units).
    workdir = tmp_path / "cwd"
    for name in ("old", loose, "etc"):
        (workdir / name).mkdir(parents=True)
        (workdir / name / "link").write_text("precious")
    monkeypatch.chdir(workdir)
    targets = {
        "tags": private.repo_dir("app") / "_manifests" / "tags",
        "revisions": private.repo_dir("app") / "_manifests" / "revisions" / "sha256",
        "layers": private.repo_dir("app") / "_layers" / "sha256",
    }
    target = targets[victim]
    operation = {"tags": "remove_tags", "revisions": "remove_revisions", "layers": "remove_layer_links"}[victim]

    bait = tmp_path / "bait"  # what the symlink leads to: names the removal would look for
    for name in ("old", loose):
        (bait / name).mkdir(parents=True)
        (bait / name / "link").write_text(digest(loose))
    bait_before = snapshot(bait)

    def swap_it(stage, op, path):
        if stage == "plan" and op == operation:
            shutil.rmtree(target)
            if swap == "becomes-a-symlink":
                target.symlink_to(bait)

    monkeypatch.setattr(_writer, "RACE_HOOK", swap_it)
    workdir_before = snapshot(workdir)
    outside_before = snapshot(sentinel)
    result = cleanup_tags(str(storage), keep=1, delete_untagged=True, grace_period=0)
    assert snapshot(bait) == bait_before
    assert snapshot(workdir) == workdir_before
    assert snapshot(sentinel) == outside_before
    removed = {"tags": result["removed_tags"], "revisions": result["removed_revisions"],
               "layers": result["removed_layer_links"]}[victim]
    assert removed == []
    assert str(target) in json.dumps(result["scan_errors"])


def test_writer_refuses_a_missing_directory_descriptor():
    writer = _writer.StorageWriter(apply=True)
    for call in (lambda: writer.remove_link(None, "a" * 64, "/x/" + "a" * 64 + "/link"),
                 lambda: writer.remove_tag(None, "etc", "a" * 64, "/x/tags/etc"),
                 lambda: writer.write_link((None, "/x"), ("_layers", "sha256", "a" * 64), "a" * 64)):
        with pytest.raises(_writer.WriteRefused, match="no directory descriptor"):
            call()


def test_digest_dir_swapped_for_a_symlink_before_the_recheck_is_refused(private, storage, tmp_path, sentinel,
                                                                        monkeypatch):
    layer = private.push_blob("app", b"orphan")
    private.remove_data(layer)
    link_dir = private.layer_link_path("app", layer).parent
    (sentinel / layer).mkdir()
    (sentinel / layer / "link").write_text(digest(layer))

    def swap(stage, operation, path):
        if stage == "open" and operation == "remove_link":
            shutil.rmtree(link_dir)
            link_dir.symlink_to(sentinel / layer)

    monkeypatch.setattr(_writer, "RACE_HOOK", swap)
    outside_before = snapshot(sentinel)
    result = scan_blobs(str(storage), remove_orphans=True)
    assert snapshot(sentinel) == outside_before
    assert result["removed_links"] == []
    assert result["changed"] is False
    assert "symlink" in json.dumps(result["scan_errors"])


def test_digest_dir_swapped_after_the_recheck_is_not_followed(private, storage, tmp_path, sentinel, monkeypatch):
    layer = private.push_blob("app", b"orphan")
    private.remove_data(layer)
    link_dir = private.layer_link_path("app", layer).parent
    (sentinel / layer).mkdir()
    (sentinel / layer / "link").write_text(digest(layer))

    def swap(stage, operation, path):
        if stage == "change" and operation == "remove_link":
            os.rename(link_dir, str(link_dir) + ".moved")
            link_dir.symlink_to(sentinel / layer)

    monkeypatch.setattr(_writer, "RACE_HOOK", swap)
    outside_before = snapshot(sentinel)
    result = scan_blobs(str(storage), remove_orphans=True)
    assert snapshot(sentinel) == outside_before
    # The link that was checked (now under the moved name) is the one removed, inside the tree.
    assert not (link_dir.parent / (layer + ".moved") / "link").exists()
    assert result["removed_links"] == [str(private.layer_link_path("app", layer))]


# -- repair through a symlinked link directory --------------------------------------------------

def _orphan_child_with_symlinked_dir(private, sentinel, which):
    index, (amd, _arm) = private.push_multiarch("app", "multi", tags=["v1"])
    doc = json.loads(private.data_path(amd).read_bytes())
    private.delete_revision("app", amd)
    layer = doc["layers"][0]["digest"][7:]
    shutil.rmtree(private.layer_link_path("app", layer).parent)  # the child's layer link must be written too
    if which == "revision-dir":
        target = private.revision_link_path("app", amd).parent
    else:
        target = private.layer_link_path("app", layer).parent
    if target.exists():
        shutil.rmtree(target)
    (sentinel / "planted").mkdir()
    target.symlink_to(sentinel / "planted")
    return index, amd


@pytest.mark.parametrize("which", ["revision-dir", "layer-dir"])
def test_repair_through_a_symlinked_link_directory_is_refused_in_check_mode_and_for_real(private, storage,
                                                                                          sentinel, which):
    _index, amd = _orphan_child_with_symlinked_dir(private, sentinel, which)
    outside_before = snapshot(sentinel)
    before = snapshot(storage)
    check = audit_indexes(str(storage), repair=True, check_mode=True)
    real = audit_indexes(str(storage), repair=True)
    for result in (check, real):
        [finding] = [f for f in result["orphan_index_children"] if f["child_digest"] == digest(amd)]
        assert finding["repair"] == "not repaired"
        assert "symlink" in finding["repair_reason"]
        assert result["repaired_links"] == []
        assert result["changed"] is False
        assert str(private.revision_link_path("app", amd)) in json.dumps(result["scan_errors"])
    assert snapshot(storage) == before  # not one of the child's links was written
    assert snapshot(sentinel) == outside_before


def test_planted_hard_link_at_the_old_temp_name_is_never_written_through(private, storage, sentinel):
    _index, (amd, _arm) = private.push_multiarch("app", "multi", tags=["v1"])
    private.delete_revision("app", amd)  # leaves the empty <hex>/ directory
    victim = sentinel / "etc" / "passwd"
    revision_dir = private.revision_link_path("app", amd).parent
    for pid in range(os.getpid() - 5, os.getpid() + 50):
        os.link(victim, revision_dir / (".link.regwarden.%d" % pid))
    result = audit_indexes(str(storage), repair=True)
    assert victim.read_text() == "root:x:0:0\n"
    assert private.revision_link_path("app", amd).read_text() == digest(amd)
    assert str(private.revision_link_path("app", amd)) in result["repaired_links"]
    assert count_findings(audit_indexes(str(storage))) == 0


# -- mutual exclusion and the grace period ---------------------------------------------------------

@pytest.fixture
def held_lock(private):
    """The registry's lock as another writer (or `flock --nonblock <dir>` in the GC script) holds it."""
    fd = os.open(str(private.root), os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    yield
    os.close(fd)


@pytest.mark.parametrize("run", [
    pytest.param(lambda path: scan_blobs(path, remove_orphans=True), id="remove-orphans"),
    pytest.param(lambda path: audit_indexes(path, repair=True), id="repair"),
    pytest.param(lambda path: cleanup_tags(path, keep=1, delete_untagged=True, grace_period=0), id="tag-cleanup"),
])
def test_a_held_lock_stops_every_writer_with_a_clear_message(private, storage, held_lock, run):
    two_releases(private)
    private.remove_data(private.push_blob("app", b"orphan"))
    before = snapshot(storage)
    with pytest.raises(ScanError, match=r"registry private is being changed by another run: its lock \(flock on "):
        run(str(storage))
    assert snapshot(storage) == before


def test_check_mode_and_plain_scans_need_no_lock(private, storage, held_lock):
    two_releases(private)
    assert cleanup_tags(str(storage), keep=1, check_mode=True, grace_period=0)["removed_tags"]
    assert scan_blobs(str(storage))["registries"] == ["private"]


def test_the_lock_is_the_one_flock_1_takes(private, storage):
    """The GC script wraps garbage-collect in `flock --nonblock <registry dir>`: the same lock."""
    with _writer.registry_lock("private", str(private.v2)):
        busy = subprocess.run(["flock", "--nonblock", str(private.root), "true"], check=False, timeout=30)
    free = subprocess.run(["flock", "--nonblock", str(private.root), "true"], check=False, timeout=30)
    assert (busy.returncode, free.returncode) == (1, 0)


def test_a_push_landing_during_cleanup_is_not_unlinked(private, storage, monkeypatch):
    for tag in ("1", "2", "3"):
        private.push_image("app", "img" + tag, tags=[tag])
    age_tags(private, "app", ["1", "2", "3"])

    def repush(stage, operation, path):
        # "1" is pushed again (to new content) while the cleanup is about to remove it.
        if stage == "open" and operation == "remove_tag" and path.endswith("/1"):
            private.tag("app", "1", private.push_image("app", "img1-again"))

    monkeypatch.setattr(_writer, "RACE_HOOK", repush)
    result = cleanup_tags(str(storage), keep=1, grace_period=0)
    assert [f["tag"] for f in result["removed_tags"]] == ["2"]
    assert private.tag_link_path("app", "1").is_file()


def test_nothing_written_within_the_grace_period_is_removed(private, storage):
    old_index, old_children = private.push_multiarch("app", "old", tags=["old"])
    # An index pushed a minute ago whose children were pushed two hours ago, still untagged:
    # a build in flight. Neither it nor its children may go.
    recent_index, recent_children = private.push_multiarch("app", "recent")
    hours_ago = os.path.getmtime(private.revision_link_path("app", old_index)) - 7200
    for hex_digest in [old_index, *old_children, *recent_children]:
        os.utime(private.revision_link_path("app", hex_digest), (hours_ago, hours_ago))
    os.utime(private.tag_link_path("app", "old"), (hours_ago, hours_ago))
    private.push_image("app", "new", tags=["new"])  # a tag pushed right now
    age = os.path.getmtime(private.tag_link_path("app", "new"))
    os.utime(private.tag_link_path("app", "new"), (age, age))
    result = cleanup_tags(str(storage), keep=1, delete_untagged=True)  # default grace: one hour
    assert [f["tag"] for f in result["removed_tags"]] == ["old"]
    removed = {f["digest"] for f in result["removed_revisions"]}
    assert removed == {digest(h) for h in [old_index, *old_children]}
    for kept in [recent_index, *recent_children]:
        assert private.revision_link_path("app", kept).is_file()


def test_newest_tags_within_the_grace_period_are_kept_even_beyond_keep(private, storage):
    for tag in ("1", "2", "3"):
        private.push_image("app", "img" + tag, tags=[tag])
    result = cleanup_tags(str(storage), keep=1)  # all three pushed just now
    assert result["removed_tags"] == []


# -- one failing item never aborts the run ----------------------------------------------------------

def test_one_refused_item_is_reported_and_the_run_goes_on(private, storage, tmp_path, sentinel, monkeypatch):
    hexes = [private.push_blob("app", b"orphan %d" % n) for n in range(3)]
    for hex_digest in hexes:
        private.remove_data(hex_digest)
    middle = sorted(hexes)[1]
    link_dir = private.layer_link_path("app", middle).parent
    (sentinel / "planted").mkdir()

    def swap(stage, operation, path):
        if stage == "open" and middle in path:
            shutil.rmtree(link_dir)
            link_dir.symlink_to(sentinel / "planted")

    monkeypatch.setattr(_writer, "RACE_HOOK", swap)
    result = scan_blobs(str(storage), remove_orphans=True)
    assert result["removed_links"] == sorted(str(private.layer_link_path("app", h)) for h in hexes if h != middle)
    assert [e["path"] for e in result["scan_errors"]] == [str(private.layer_link_path("app", middle))]


def test_a_vanished_item_is_skipped_and_the_run_goes_on(private, storage, monkeypatch):
    for tag in ("1", "2", "3", "4"):
        private.push_image("app", "img" + tag, tags=[tag])
    age_tags(private, "app", ["1", "2", "3", "4"])

    def vanish(stage, operation, path):
        if stage == "open" and path.endswith("/2"):
            shutil.rmtree(path)  # someone else untagged it meanwhile

    monkeypatch.setattr(_writer, "RACE_HOOK", vanish)
    result = cleanup_tags(str(storage), keep=1, grace_period=0)
    assert [f["tag"] for f in result["removed_tags"]] == ["1", "3"]
    assert result["scan_errors"] == []
