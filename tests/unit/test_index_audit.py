"""registry_index_audit logic: what a 2.8 registry would serve, decided from disk (docs/design.md section 2)."""

import json
import os
import shutil
from collections import Counter

import pytest

from ansible_collections.regwarden.registry.plugins.module_utils import _index_audit, _repository
from ansible_collections.regwarden.registry.plugins.module_utils._fs_view import BlobStore
from ansible_collections.regwarden.registry.plugins.module_utils._index_audit import audit_indexes
from ansible_collections.regwarden.registry.plugins.module_utils._storage import ScanError
from tests.support.tree import (
    AMD64,
    ARM64,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    EMPTY_HEX,
    OCI_INDEX,
    deny_access,
    digest,
    sha256_hex,
    snapshot,
)

FINDING_LISTS = ("orphan_index_children", "broken_tags", "unservable_blobs", "invalid_manifests")
ATTESTATION = {"os": "unknown", "architecture": "unknown", "variant": None}


def findings(result):
    return {key: result[key] for key in FINDING_LISTS}


def no_findings():
    return {key: [] for key in FINDING_LISTS}


def platform(value):
    return {"os": value["os"], "architecture": value["architecture"], "variant": value.get("variant")}


REPAIR_KEYS = ("repair", "rebuild_required", "repair_reason")  # checked in test_index_repair.py


def without_reason(finding):
    assert finding["reason"], finding  # every finding says why, in words
    return {key: value for key, value in finding.items() if key != "reason" and key not in REPAIR_KEYS}


def orphan_child(tree, repo, index_hex, child_hex, child_platform, tags, revision_link="missing",
                 layer_link_fallback=False, blob_data="present", attestation=False, media_type=OCI_INDEX):
    return {
        "registry": tree.name,
        "repo": repo,
        "index_digest": digest(index_hex),
        "index_media_type": media_type,
        "tags": tags,
        "child_digest": digest(child_hex),
        "platform": platform(child_platform),
        "attestation": attestation,
        "revision_link": revision_link,
        "layer_link_fallback": layer_link_fallback,
        "blob_data": blob_data,
        "path": str(tree.revision_link_path(repo, child_hex)),
    }


def test_healthy_tree_has_no_findings(private, storage):
    private.push_image("app", "single", tags=["v1"])
    private.push_multiarch("team/app", "multi", tags=["latest", "1.0"], attestation=True)
    private.push_multiarch("team/legacy", "list", media_type=DOCKER_LIST, tags=["stable"])
    private.push_image("app", "schema2", media_type=DOCKER_MANIFEST, tags=["docker"])
    before = snapshot(storage)
    result = audit_indexes(str(storage))
    assert findings(result) == no_findings()
    assert result["scan_errors"] == []
    assert result["registries"] == ["private"]
    assert result["summary"]["private"] == {
        "repositories": 3,
        "manifests": 2 + 4 + 3,
        "indexes": 2,
        "tags": 5,
        "orphan_index_children": 0,
        "broken_tags": 0,
        "unservable_blobs": 0,
        "invalid_manifests": 0,
    }
    assert snapshot(storage) == before  # the audit never changes anything


# -- orphan index children -----------------------------------------------------------------

@pytest.mark.parametrize("media_type", [OCI_INDEX, DOCKER_LIST])
def test_orphan_child_revision_link_missing_without_fallback(private, storage, media_type):
    index, (_amd, arm) = private.push_multiarch("team/app", "multi", media_type=media_type, tags=["v1", "latest"])
    private.delete_revision("team/app", arm)  # API DELETE by digest: the index is not checked
    result = audit_indexes(str(storage))
    assert [without_reason(f) for f in result["orphan_index_children"]] == [
        orphan_child(private, "team/app", index, arm, ARM64, ["latest", "v1"], media_type=media_type)]
    assert "no revision link" in result["orphan_index_children"][0]["reason"]
    assert result["broken_tags"] == []  # the index itself is still served
    assert result["summary"]["private"]["orphan_index_children"] == 1


def test_child_served_through_layers_link_fallback_is_not_reported(private, storage):
    _index, (amd, _arm) = private.push_multiarch("app", "multi", tags=["v1"])
    private.delete_revision("app", amd)
    private.link_layer("app", amd)  # 2.8 linkPathFns: _layers is the fallback for manifests
    assert findings(audit_indexes(str(storage))) == no_findings()


def test_layers_link_fallback_needs_the_blob_data(private, storage):
    index, (amd, _arm) = private.push_multiarch("app", "multi", tags=["v1"])
    private.delete_revision("app", amd)
    private.link_layer("app", amd)
    private.remove_data(amd)
    result = audit_indexes(str(storage))
    assert [without_reason(f) for f in result["orphan_index_children"]] == [
        orphan_child(private, "app", index, amd, AMD64, ["v1"], layer_link_fallback=True, blob_data="gone")]


@pytest.mark.parametrize("damage", [
    pytest.param(lambda link: link.write_text("garbage"), id="garbage"),
    pytest.param(lambda link: link.write_bytes(b""), id="empty"),
    pytest.param(lambda link: (link.unlink(), link.mkdir()), id="link-is-a-directory"),
])
def test_invalid_revision_link_is_reported_even_with_a_layers_link(private, storage, damage):
    # 2.8 answers 500 on an unreadable revision link and does not fall back to _layers.
    index, (amd, _arm) = private.push_multiarch("app", "multi", tags=["v1"])
    damage(private.revision_link_path("app", amd))
    private.link_layer("app", amd)
    result = audit_indexes(str(storage))
    assert [without_reason(f) for f in result["orphan_index_children"]] == [
        orphan_child(private, "app", index, amd, AMD64, ["v1"], revision_link="invalid")]
    assert "revision link invalid" in result["orphan_index_children"][0]["reason"]


def test_invalid_layers_link_without_revision_link(private, storage):
    index, (amd, _arm) = private.push_multiarch("app", "multi", tags=["v1"])
    private.delete_revision("app", amd)
    private.link_layer("app", amd, "sha256:nope")
    result = audit_indexes(str(storage))
    assert [without_reason(f) for f in result["orphan_index_children"]] == [
        orphan_child(private, "app", index, amd, AMD64, ["v1"])]
    assert "_layers link is invalid" in result["orphan_index_children"][0]["reason"]


def test_child_blob_data_gone(private, storage):
    index, (amd, _arm) = private.push_multiarch("app", "multi", tags=["v1"])
    private.remove_blob_dir(amd)
    result = audit_indexes(str(storage))
    assert [without_reason(f) for f in result["orphan_index_children"]] == [
        orphan_child(private, "app", index, amd, AMD64, ["v1"], revision_link="present", blob_data="gone")]


def test_untagged_index_is_audited_too(private, storage):
    index, (amd, arm) = private.push_multiarch("app", "multi")
    private.delete_revision("app", amd)
    private.delete_revision("app", arm)
    assert not (private.repo_dir("app") / "_manifests" / "tags").exists()  # repo with no tags dir
    result = audit_indexes(str(storage))
    assert [without_reason(f) for f in result["orphan_index_children"]] == sorted([
        orphan_child(private, "app", index, amd, AMD64, []),
        orphan_child(private, "app", index, arm, ARM64, []),
    ], key=lambda f: f["child_digest"])
    assert result["broken_tags"] == result["unservable_blobs"] == []
    assert result["scan_errors"] == []


def test_attestation_child_is_marked(private, storage):
    index, (_amd, _arm, att) = private.push_multiarch("app", "multi", tags=["v1"], attestation=True)
    private.delete_revision("app", att)
    result = audit_indexes(str(storage))
    assert [without_reason(f) for f in result["orphan_index_children"]] == [
        orphan_child(private, "app", index, att, ATTESTATION, ["v1"], attestation=True)]


def test_child_shared_by_two_indexes_reported_per_index(private, storage):
    shared = private.push_image("app", "shared amd64")
    arm = private.push_image("app", "arm64", platform=ARM64)
    first = private.push_index("app", [(shared, AMD64), (arm, ARM64)], tags=["one"])
    second = private.push_index("app", [(shared, AMD64)], media_type=DOCKER_LIST, tags=["two"])
    private.delete_revision("app", shared)
    result = audit_indexes(str(storage))
    assert [without_reason(f) for f in result["orphan_index_children"]] == sorted([
        orphan_child(private, "app", first, shared, AMD64, ["one"]),
        orphan_child(private, "app", second, shared, AMD64, ["two"], media_type=DOCKER_LIST),
    ], key=lambda f: f["index_digest"])


def test_tagged_index_served_through_layers_fallback_is_audited(private, storage):
    index, (amd, _arm) = private.push_multiarch("app", "multi", tags=["v1"])
    private.delete_revision("app", amd)
    private.revision_link_path("app", index).unlink()
    private.link_layer("app", index)
    result = audit_indexes(str(storage))
    assert [f["child_digest"] for f in result["orphan_index_children"]] == [digest(amd)]
    assert result["broken_tags"] == []


def test_child_with_invalid_content_is_an_orphan_child_and_an_invalid_manifest(private, storage):
    index, (amd, _arm) = private.push_multiarch("app", "multi", tags=["v1"])
    private.truncate_data(amd, 40)
    result = audit_indexes(str(storage))
    assert [without_reason(f) for f in result["orphan_index_children"]] == [
        orphan_child(private, "app", index, amd, AMD64, ["v1"], revision_link="present")]
    assert [(f["digest"], f["path"]) for f in result["invalid_manifests"]] == [
        (digest(amd), str(private.data_path(amd)))]


# -- broken tags ---------------------------------------------------------------------------

def _revision_link_gone(tree, repo, manifest):
    tree.revision_link_path(repo, manifest).unlink()
    return digest(manifest), "manifest has no revision link in the repository"


def _revision_link_garbage(tree, repo, manifest):
    tree.link_revision(repo, manifest, "sha256:")
    return digest(manifest), "revision link invalid"


def _manifest_data_gone(tree, repo, manifest):
    tree.remove_data(manifest)
    return digest(manifest), "manifest blob data gone"


def _manifest_content_truncated(tree, repo, manifest):
    tree.truncate_data(manifest, 10)
    return digest(manifest), "manifest content invalid"


def _current_link_missing(tree, repo, manifest):
    tree.tag_link_path(repo, "v1").unlink()
    return None, "tag has no current link"


def _current_link_garbage(tree, repo, manifest):
    tree.tag_link_path(repo, "v1").write_text("latest\n")
    return None, "link file is not a sha256 digest"


def _current_link_names_unknown_manifest(tree, repo, manifest):
    unknown = sha256_hex(b"never pushed")
    tree.tag_link_path(repo, "v1").write_text(digest(unknown))
    return digest(unknown), "manifest has no revision link in the repository"


@pytest.mark.parametrize("damage", [
    _revision_link_gone,
    _revision_link_garbage,
    _manifest_data_gone,
    _manifest_content_truncated,
    _current_link_missing,
    _current_link_garbage,
    _current_link_names_unknown_manifest,
])
def test_broken_tag(private, storage, damage):
    manifest = private.push_image("team/app", "one", tags=["v1", "ok"])
    healthy = private.push_image("team/app", "two")
    private.tag("team/app", "ok", healthy)
    expected_digest, reason = damage(private, "team/app", manifest)
    result = audit_indexes(str(storage))
    assert len(result["broken_tags"]) == 1
    finding = result["broken_tags"][0]
    assert finding["reason"].startswith(reason)
    assert {k: v for k, v in finding.items() if k != "reason"} == {
        "registry": "private",
        "repo": "team/app",
        "tag": "v1",
        "digest": expected_digest,
        "path": str(private.tag_link_path("team/app", "v1")),
    }
    assert result["summary"]["private"]["broken_tags"] == 1


def test_tag_served_through_layers_fallback_is_not_broken(private, storage):
    manifest = private.push_image("app", "one", tags=["v1"])
    private.revision_link_path("app", manifest).unlink()
    private.link_layer("app", manifest)
    assert findings(audit_indexes(str(storage))) == no_findings()


def test_tagged_index_with_its_data_gone(private, storage):
    index, _children = private.push_multiarch("app", "multi", tags=["v1"])
    private.remove_data(index)
    result = audit_indexes(str(storage))
    assert [(f["tag"], f["digest"], f["reason"]) for f in result["broken_tags"]] == [
        ("v1", digest(index), "manifest blob data gone")]
    assert result["orphan_index_children"] == []


def test_symlinked_tag_dir_is_a_scan_error(private, storage, tmp_path):
    manifest = private.push_image("app", "one", tags=["v1"])
    outside = tmp_path / "outside-tag"
    (outside / "current").mkdir(parents=True)
    (outside / "current" / "link").write_text(digest(manifest))
    (private.repo_dir("app") / "_manifests" / "tags" / "evil").symlink_to(outside)
    result = audit_indexes(str(storage))
    assert findings(result) == no_findings()
    assert result["scan_errors"] == [{"registry": "private", "error": "symlink not followed",
                                      "path": str(private.tag_dir("app", "evil"))}]


# -- unservable blobs ----------------------------------------------------------------------

def _layer(tree, repo, doc):
    return doc["layers"][0]["digest"][7:], "layer"


def _config(tree, repo, doc):
    return doc["config"]["digest"][7:], "config"


@pytest.mark.parametrize("which", [_layer, _config])
@pytest.mark.parametrize("damage, layer_link, blob_data", [
    pytest.param(lambda t, r, h: t.layer_link_path(r, h).unlink(), "missing", "present", id="link-missing"),
    pytest.param(lambda t, r, h: t.link_layer(r, h, "sha256:" + h.upper()), "invalid", "present",
                 id="link-invalid"),
    pytest.param(lambda t, r, h: t.remove_data(h), "present", "gone", id="data-gone"),
    pytest.param(lambda t, r, h: t.remove_blob_dir(h), "present", "gone", id="blob-dir-gone"),
    pytest.param(lambda t, r, h: t.truncate_data(h), "present", "empty", id="zero-byte-data"),
])
def test_unservable_blob_of_a_tagged_image(private, storage, which, damage, layer_link, blob_data):
    doc = private.image_manifest("app", "one", layers=[b"layer one", b"layer two"])
    manifest = private.put_manifest("app", doc, tags=["v1", "latest"])
    blob_hex, kind = which(private, "app", doc)
    damage(private, "app", blob_hex)
    result = audit_indexes(str(storage))
    assert result["unservable_blobs"] == [{
        "registry": "private",
        "repo": "app",
        "digest": digest(blob_hex),
        "kind": kind,
        "manifests": [digest(manifest)],
        "tags": ["latest", "v1"],
        "layer_link": layer_link,
        "blob_data": blob_data,
        "path": str(private.layer_link_path("app", blob_hex)),
    }]
    assert result["broken_tags"] == []  # the manifest is served; the pull fails afterwards
    assert result["summary"]["private"]["unservable_blobs"] == 1


def test_unservable_blob_of_a_child_of_a_tagged_index(private, storage):
    _index, (_amd, arm) = private.push_multiarch("app", "multi", tags=["v2"])
    arm_doc = json.loads(private.data_path(arm).read_bytes())
    layer = arm_doc["layers"][0]["digest"][7:]
    private.remove_data(layer)
    also_tagged = private.put_manifest("app", arm_doc, tags=["arm-only"])
    assert also_tagged == arm
    result = audit_indexes(str(storage))
    assert [(f["digest"], f["kind"], f["manifests"], f["tags"], f["blob_data"]) for f in result["unservable_blobs"]] \
        == [(digest(layer), "layer", [digest(arm)], ["arm-only", "v2"], "gone")]


def test_blob_shared_by_two_tagged_images_is_one_finding(private, storage):
    base = b"shared base layer"
    first = private.push_image("app", "one", layers=[base, b"one"], tags=["one"])
    second = private.push_image("app", "two", layers=[base, b"two"], tags=["two"])
    private.remove_data(sha256_hex(base))
    result = audit_indexes(str(storage))
    assert [(f["digest"], f["manifests"], f["tags"]) for f in result["unservable_blobs"]] == [
        (digest(sha256_hex(base)), sorted([digest(first), digest(second)]), ["one", "two"])]


def test_untagged_images_blobs_are_not_audited(private, storage):
    doc = private.image_manifest("app", "untagged")
    private.put_manifest("app", doc)
    private.remove_data(doc["layers"][0]["digest"][7:])
    _index, (amd, _arm) = private.push_multiarch("app", "untagged index")
    amd_doc = json.loads(private.data_path(amd).read_bytes())
    private.layer_link_path("app", amd_doc["config"]["digest"][7:]).unlink()
    assert findings(audit_indexes(str(storage))) == no_findings()


def test_blobs_of_an_unservable_tagged_manifest_are_not_audited(private, storage):
    doc = private.image_manifest("app", "one")
    manifest = private.put_manifest("app", doc, tags=["v1"])
    private.revision_link_path("app", manifest).unlink()
    private.remove_data(doc["layers"][0]["digest"][7:])
    result = audit_indexes(str(storage))
    assert [f["tag"] for f in result["broken_tags"]] == ["v1"]
    assert result["unservable_blobs"] == []


def test_empty_content_layer_is_servable(private, storage):
    private.push_image("app", "with an empty layer", layers=[b"", b"real"], tags=["v1"])
    assert private.data_path(EMPTY_HEX).stat().st_size == 0
    assert findings(audit_indexes(str(storage))) == no_findings()


def test_schema1_image_layers_are_audited(private, storage):
    layer = private.push_blob("old", b"schema1 layer")
    private.put_manifest("old", {"schemaVersion": 1, "name": "old", "tag": "v0", "architecture": "amd64",
                                 "fsLayers": [{"blobSum": digest(layer)}], "history": [{"v1Compatibility": "{}"}]},
                         tags=["v0"])
    private.remove_data(layer)
    result = audit_indexes(str(storage))
    assert [(f["digest"], f["kind"], f["blob_data"]) for f in result["unservable_blobs"]] == [
        (digest(layer), "layer", "gone")]


# -- invalid manifests ---------------------------------------------------------------------

def test_truncated_and_oversized_manifests_are_findings(private, storage):
    truncated = private.push_image("app", "truncated later", tags=["v1"])
    private.truncate_data(truncated, 25)
    huge = private.put_manifest("app", b" " * (4 * 1024 * 1024 + 1) + b"{}")
    index, _children = private.push_multiarch("app", "multi")
    private.data_path(index).write_bytes(b'{"schemaVersion": 2, "mediaType": "' + OCI_INDEX.encode() + b'", "manif')
    result = audit_indexes(str(storage))
    by_digest = {f["digest"]: f for f in result["invalid_manifests"]}
    assert sorted(by_digest) == sorted(digest(h) for h in (truncated, huge, index))
    assert "not valid JSON" in by_digest[digest(truncated)]["reason"]
    assert "larger than 4194304 bytes" in by_digest[digest(huge)]["reason"]
    for hex_digest in (truncated, huge, index):
        finding = by_digest[digest(hex_digest)]
        assert (finding["registry"], finding["repo"], finding["path"]) == (
            "private", "app", str(private.data_path(hex_digest)))
    assert [f["tag"] for f in result["broken_tags"]] == ["v1"]
    assert result["summary"]["private"]["invalid_manifests"] == 3


def test_oversized_manifest_is_not_read_whole(private, storage, monkeypatch):
    huge = private.put_manifest("app", b"{" + b" " * (5 * 1024 * 1024) + b"}")
    read_bytes = {}
    original = os.read

    def recording_read(fd, length):
        data = original(fd, length)
        read_bytes[fd] = read_bytes.get(fd, 0) + len(data)
        return data

    monkeypatch.setattr(os, "read", recording_read)
    result = audit_indexes(str(storage))
    assert [f["digest"] for f in result["invalid_manifests"]] == [digest(huge)]
    assert "(%d)" % (5 * 1024 * 1024 + 2) in result["invalid_manifests"][0]["reason"]
    assert max(read_bytes.values()) < 1024 * 1024  # decided from fstat: the 5 MiB were never read


# -- permission denied, a tree changing under the audit -------------------------------------

@pytest.mark.parametrize("denied", [
    pytest.param(("_layers", "sha256"), id="layers-dir"),
    pytest.param(("_manifests", "revisions", "sha256"), id="revisions-dir"),
    pytest.param(("_manifests", "tags"), id="tags-dir"),
])
def test_unreadable_repo_dir_is_a_scan_error_not_a_traceback(private, storage, monkeypatch, denied):
    private.push_multiarch("locked", "multi", tags=["v1"])
    _index, (amd, _arm) = private.push_multiarch("open", "multi", tags=["v1"])
    private.delete_revision("open", amd)
    deny_access(monkeypatch, private.repo_dir("locked").joinpath(*denied))
    result = audit_indexes(str(storage))
    assert [f["repo"] for f in result["orphan_index_children"]] == ["open"]  # the rest is still audited
    assert [e["path"] for e in result["scan_errors"]] in (
        [str(private.repo_dir("locked"))], [str(private.repo_dir("locked").joinpath(*denied))])
    assert "Permission denied" in result["scan_errors"][0]["error"]


def test_unreadable_blob_store_is_a_clear_error_not_a_traceback(private, storage, monkeypatch):
    private.push_multiarch("app", "multi", tags=["v1"])
    deny_access(monkeypatch, private.v2 / "blobs" / "sha256")
    try:
        result = audit_indexes(str(storage))
    except ScanError as exc:
        assert "Permission denied" in str(exc)
    else:
        assert str(private.v2 / "blobs" / "sha256") in json.dumps(result["scan_errors"])


def test_symlinked_blob_store_is_reported_not_taken_for_missing_data(private, storage, tmp_path):
    private.push_multiarch("app", "multi", tags=["v1"])
    blobs_dir = private.v2 / "blobs" / "sha256"
    other_disk = tmp_path / "other-disk"
    os.rename(blobs_dir, other_disk)
    blobs_dir.symlink_to(other_disk)
    try:
        result = audit_indexes(str(storage))
    except ScanError as exc:
        assert str(blobs_dir) in str(exc)
    else:
        assert "blob data gone" not in json.dumps(findings(result))
        assert str(blobs_dir) in json.dumps(result["scan_errors"])


def test_repo_removed_while_audited(private, storage, monkeypatch):
    for repo in ("a", "b"):
        _index, (amd, _arm) = private.push_multiarch(repo, "multi", tags=["v1"])
        private.delete_revision(repo, amd)
    original = _index_audit.IndexAuditor.add_repository

    def remove_b_first(self, repo_name, repo):
        if repo_name == "b":
            shutil.rmtree(private.repo_dir("b"))
        return original(self, repo_name, repo)

    monkeypatch.setattr(_index_audit.IndexAuditor, "add_repository", remove_b_first)
    result = audit_indexes(str(storage))
    assert [f["repo"] for f in result["orphan_index_children"]] == ["a"]
    assert result["scan_errors"] == []


# -- scope, walk, determinism, cost --------------------------------------------------------

def test_default_scope_is_the_private_registry_only(make_registry, storage):
    cache = make_registry("dockerhub")
    _index, (amd, _arm) = cache.push_multiarch("library/nginx", "nginx", tags=["latest"])
    cache.delete_revision("library/nginx", amd)  # partial indexes are normal in a cache
    make_registry("private").push_image("app", "one", tags=["v1"])
    result = audit_indexes(str(storage))
    assert result["registries"] == ["private"]
    assert list(result["summary"]) == ["private"]
    assert findings(result) == no_findings()
    explicit = audit_indexes(str(storage), registries=["dockerhub", "private"])
    assert [(f["registry"], f["child_digest"]) for f in explicit["orphan_index_children"]] == [
        ("dockerhub", digest(amd))]


def test_default_scope_without_a_private_registry_is_a_scan_error(make_registry, storage):
    make_registry("dockerhub")
    with pytest.raises(ScanError, match="registry private not found"):
        audit_indexes(str(storage))


def test_single_registry_layout(private):
    _index, (amd, _arm) = private.push_multiarch("app", "multi", tags=["v1"])
    private.delete_revision("app", amd)
    result = audit_indexes(str(private.root))
    assert [(f["registry"], f["repo"]) for f in result["orphan_index_children"]] == [("private", "app")]


def test_nested_repos_and_symlinked_repo_dir(private, storage, tmp_path):
    for repo in ("team", "team/app/x", "team/sub"):
        _index, (amd, _arm) = private.push_multiarch(repo, repo.replace("/", "-"), tags=["v1"])
        private.delete_revision(repo, amd)
    outside = tmp_path / "outside-repo"
    shutil.copytree(private.repo_dir("team/sub"), outside)
    (private.repo_dir("team/app") / "linked").symlink_to(outside)
    result = audit_indexes(str(storage))
    assert [f["repo"] for f in result["orphan_index_children"]] == ["team", "team/app/x", "team/sub"]
    assert result["summary"]["private"]["repositories"] == 3
    assert result["scan_errors"] == [{"registry": "private", "error": "symlink not followed",
                                      "path": str(private.repo_dir("team/app/linked"))}]


def test_output_is_sorted_and_deterministic(private, storage):
    for repo in ("z", "a/b", "m", "a"):
        _index, children = private.push_multiarch(repo, "multi " + repo, tags=["t2", "t1"], attestation=True)
        for child in children:
            private.delete_revision(repo, child)
        doc = private.image_manifest(repo, "img " + repo, layers=[b"x " + repo.encode(), b"y " + repo.encode()])
        private.put_manifest(repo, doc, tags=["b", "a"])
        for layer in doc["layers"]:
            private.remove_data(layer["digest"][7:])
        private.tag(repo, "broken", sha256_hex(repo.encode()))
    first = audit_indexes(str(storage))
    second = audit_indexes(str(storage))
    assert json.dumps(first) == json.dumps(second)
    children = first["orphan_index_children"]
    assert len(children) == 12
    assert children == sorted(children, key=lambda f: (f["registry"], f["repo"], f["index_digest"],
                                                       f["child_digest"]))
    assert all(f["tags"] == ["t1", "t2"] for f in children)
    blobs = first["unservable_blobs"]
    assert len(blobs) == 8
    assert blobs == sorted(blobs, key=lambda f: (f["registry"], f["repo"], f["digest"]))
    assert all(f["tags"] == ["a", "b"] for f in blobs)
    tags = first["broken_tags"]
    assert [(f["repo"], f["tag"]) for f in tags] == [("a", "broken"), ("a/b", "broken"), ("m", "broken"),
                                                     ("z", "broken")]


def test_each_manifest_parsed_once_and_each_blob_stated_once(private, storage, monkeypatch):
    parsed = Counter()
    original_parse = _repository.parse_manifest

    def counting_parse(content):
        parsed[sha256_hex(content)] += 1
        return original_parse(content)

    stats = Counter()
    original_stat = BlobStore._stat

    def counting_stat(self, hex_digest):
        stats[hex_digest] += 1
        return original_stat(self, hex_digest)

    monkeypatch.setattr(_repository, "parse_manifest", counting_parse)
    monkeypatch.setattr(BlobStore, "_stat", counting_stat)
    # The same index (same content, same digests) pushed to several repos, tagged several times,
    # one child also tagged on its own: every manifest is still read and parsed once per registry.
    for n in range(6):
        index, children = private.push_multiarch("team/repo%d" % n, "same image", tags=["latest", "v1"])
        private.tag("team/repo%d" % n, "amd64", children[0])
    private.delete_revision("team/repo3", children[1])
    result = audit_indexes(str(storage))
    assert [f["repo"] for f in result["orphan_index_children"]] == ["team/repo3"]
    assert sorted(parsed) == sorted([index, *children])
    assert set(parsed.values()) == {1}
    assert set(stats.values()) == {1}
