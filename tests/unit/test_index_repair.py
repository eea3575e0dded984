"""registry_index_audit's repair: relink intact orphan children, never touch anything else."""

import json
import shutil

from ansible_collections.regwarden.registry.plugins.module_utils._index_audit import audit_indexes, count_findings
from tests.support.tree import digest, snapshot


def gc_swept_child(tree, repo, hex_digest):
    """What 2.8 `garbage-collect --delete-untagged` leaves of an untagged child: its revision link
    and its layers' links gone from the repository, the blobs themselves kept when shared."""
    tree.delete_revision(repo, hex_digest)
    doc = json.loads(tree.data_path(hex_digest).read_bytes())
    for descriptor in [doc["config"], *doc["layers"]]:
        link_dir = tree.layer_link_path(repo, descriptor["digest"][7:]).parent
        shutil.rmtree(link_dir)
    return doc


def test_plain_audit_marks_repairable_children_and_writes_nothing(private, storage):
    _index, (_amd, arm) = private.push_multiarch("app", "multi", tags=["v1"])
    gc_swept_child(private, "app", arm)
    before = snapshot(storage)
    result = audit_indexes(str(storage))
    [finding] = result["orphan_index_children"]
    assert (finding["repair"], finding["rebuild_required"], finding["repair_reason"]) == ("repairable", False, None)
    assert result["repaired_links"] == []
    assert result["changed"] is False
    assert snapshot(storage) == before


def test_repair_relinks_child_and_its_blobs_then_the_audit_is_clean(private, storage):
    _index, (_amd, arm) = private.push_multiarch("app", "multi", tags=["v1"])
    doc = gc_swept_child(private, "app", arm)
    before = snapshot(storage)
    result = audit_indexes(str(storage), repair=True)
    blob_links = [str(private.layer_link_path("app", d["digest"][7:])) for d in [doc["config"], *doc["layers"]]]
    expected = sorted([str(private.revision_link_path("app", arm)), *blob_links])
    assert result["repaired_links"] == expected
    assert result["orphan_index_children"][0]["repair"] == "repaired"
    assert (result["changed"], result["restart_required"]) == (True, True)
    assert count_findings(result) == 0
    after = snapshot(storage)
    # Only the links were added (plus their digest directories); nothing else changed.
    added_files = {path for path in after if path not in before and after[path][0] == "file"}
    assert added_files == {path[len(str(storage)) + 1:] for path in expected}
    assert {path for path in before if before[path] != after.get(path)} == set()
    assert private.revision_link_path("app", arm).read_text() == digest(arm)
    again = audit_indexes(str(storage), repair=True)
    assert again["orphan_index_children"] == [] and again["repaired_links"] == []


def test_repair_in_check_mode_writes_nothing_and_says_what_it_would_write(private, storage):
    _index, (_amd, arm) = private.push_multiarch("app", "multi", tags=["v1"])
    gc_swept_child(private, "app", arm)
    before = snapshot(storage)
    result = audit_indexes(str(storage), repair=True, check_mode=True)
    assert str(private.revision_link_path("app", arm)) in result["repaired_links"]
    assert result["orphan_index_children"][0]["repair"] == "would repair"
    assert (result["changed"], result["restart_required"]) == (True, False)
    assert snapshot(storage) == before


def test_child_whose_layer_data_is_gone_is_marked_rebuild_required(private, storage):
    _index, (_amd, arm) = private.push_multiarch("app", "multi", tags=["v1"])
    doc = gc_swept_child(private, "app", arm)
    private.remove_data(doc["layers"][0]["digest"][7:])
    before = snapshot(storage)
    result = audit_indexes(str(storage), repair=True)
    [finding] = result["orphan_index_children"]
    assert (finding["repair"], finding["rebuild_required"]) == ("not repaired", True)
    assert "data gone" in finding["repair_reason"]
    assert result["repaired_links"] == [] and result["changed"] is False
    assert snapshot(storage) == before


def test_child_whose_manifest_does_not_hash_to_its_digest_is_not_relinked(private, storage):
    _index, (_amd, arm) = private.push_multiarch("app", "multi", tags=["v1"])
    gc_swept_child(private, "app", arm)
    data = private.data_path(arm)
    data.write_bytes(data.read_bytes() + b" ")  # still valid JSON, no longer its digest
    result = audit_indexes(str(storage), repair=True)
    [finding] = result["orphan_index_children"]
    assert (finding["repair"], finding["rebuild_required"]) == ("not repaired", True)
    assert "does not hash" in finding["repair_reason"]
    assert not private.revision_link_path("app", arm).exists()


def test_child_manifest_data_gone_is_rebuild_required(private, storage):
    _index, (_amd, arm) = private.push_multiarch("app", "multi", tags=["v1"])
    gc_swept_child(private, "app", arm)
    private.remove_data(arm)
    [finding] = audit_indexes(str(storage), repair=True)["orphan_index_children"]
    assert (finding["repair"], finding["rebuild_required"], finding["repair_reason"]) == (
        "not repaired", True, "manifest blob data gone")


def test_invalid_revision_link_is_never_overwritten(private, storage):
    _index, (_amd, arm) = private.push_multiarch("app", "multi", tags=["v1"])
    private.link_revision("app", arm, content="garbage")
    result = audit_indexes(str(storage), repair=True)
    [finding] = result["orphan_index_children"]
    assert (finding["repair"], finding["rebuild_required"]) == ("not repaired", False)
    assert private.revision_link_path("app", arm).read_text() == "garbage"


def test_child_shared_by_two_indexes_is_repaired_once(private, storage):
    index, (amd, arm) = private.push_multiarch("app", "multi", tags=["v1"])
    second = private.push_index("app", [(arm, {"os": "linux", "architecture": "arm64", "variant": "v8"})],
                                tags=["arm"])
    gc_swept_child(private, "app", arm)
    result = audit_indexes(str(storage), repair=True)
    assert sorted(f["index_digest"] for f in result["orphan_index_children"]) == sorted([digest(index),
                                                                                         digest(second)])
    assert {f["repair"] for f in result["orphan_index_children"]} == {"repaired"}
    assert len(result["repaired_links"]) == len(set(result["repaired_links"]))
    assert amd
