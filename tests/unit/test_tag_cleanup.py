"""registry_tag_cleanup logic: keep the newest tags, never break what is kept."""

import json
import os

import pytest

from ansible_collections.regwarden.registry.plugins.module_utils._index_audit import audit_indexes, count_findings
from ansible_collections.regwarden.registry.plugins.module_utils._storage import ScanError
from ansible_collections.regwarden.registry.plugins.module_utils._tag_cleanup import cleanup_tags
from tests.support.tree import digest, sha256_hex, snapshot


def age_tags(tree, repo, tags_oldest_first, start=1_700_000_000):
    """Give the tags' current links increasing mtimes: the last one is the newest push."""
    for offset, tag in enumerate(tags_oldest_first):
        os.utime(tree.tag_link_path(repo, tag), (start + offset * 60, start + offset * 60))


def remaining_tags(tree, repo):
    tags_dir = tree.repo_dir(repo) / "_manifests" / "tags"
    return sorted(path.name for path in tags_dir.iterdir()) if tags_dir.is_dir() else []


def test_keeps_the_newest_tags_by_last_push_not_by_name(private, storage):
    tags = ["b1", "a2", "c3", "a4"]  # push order; names deliberately unsorted
    for tag in tags:
        private.push_image("app", "img-" + tag, tags=[tag])
    age_tags(private, "app", tags)
    result = cleanup_tags(str(storage), keep=2, grace_period=0)
    assert remaining_tags(private, "app") == ["a4", "c3"]
    assert [f["tag"] for f in result["removed_tags"]] == ["a2", "b1"]
    assert result["removed_tags"][0]["updated"] == "2023-11-14T22:14:20Z"
    assert result["summary"]["private"] == {"repositories": 1, "tags": 4, "kept_tags": 2, "removed_tags": 2,
                                            "removed_revisions": 0, "removed_layer_links": 0}
    assert (result["changed"], result["restart_required"]) == (True, True)
    # Untagging alone leaves every manifest servable by digest.
    assert count_findings(audit_indexes(str(storage))) == 0


def test_include_exclude_and_first_matching_rule(private, storage):
    for repo in ("ci/cache", "team/app"):
        tags = ["latest", "v1.0.0", "build-1", "build-2", "build-3"]
        for tag in tags:
            private.push_image(repo, repo + tag, tags=[tag])
        age_tags(private, repo, tags)
    cleanup_tags(str(storage), keep=2, exclude=r"latest|v\d+\.\d+\.\d+",
                 rules=[{"repository": "ci/.*", "keep": 1, "include": "build-.*"}])
    # ci/cache: only build-* considered, keep 1; the rule's include replaces the default exclude's role.
    assert remaining_tags(private, "ci/cache") == ["build-3", "latest", "v1.0.0"]
    # team/app: release tags excluded, keep the 2 newest builds.
    assert remaining_tags(private, "team/app") == ["build-2", "build-3", "latest", "v1.0.0"]


def test_check_mode_reports_and_removes_nothing(private, storage):
    tags = ["1", "2", "3"]
    for tag in tags:
        private.push_multiarch("app", "m" + tag, tags=[tag])
    age_tags(private, "app", tags)
    before = snapshot(storage)
    result = cleanup_tags(str(storage), keep=1, delete_untagged=True, check_mode=True, grace_period=0)
    assert [f["tag"] for f in result["removed_tags"]] == ["1", "2"]
    assert len(result["removed_revisions"]) == 2 * 3  # two indexes and their two children each
    assert (result["changed"], result["restart_required"]) == (True, False)
    assert snapshot(storage) == before


def test_delete_untagged_never_touches_children_of_a_kept_index(private, storage):
    old, (old_amd, old_arm) = private.push_multiarch("app", "old", tags=["old"])
    new, (new_amd, new_arm) = private.push_multiarch("app", "new", tags=["new"])
    # A newer index reuses the old arm64 child: removing "old" must not unlink it.
    shared = private.push_index("app", [(old_arm, {"os": "linux", "architecture": "arm64", "variant": "v8"}),
                                        (new_amd, {"os": "linux", "architecture": "amd64"})], tags=["mixed"])
    loose = private.push_image("app", "pushed-by-digest")  # untagged, reached by nothing
    age_tags(private, "app", ["old", "new", "mixed"])
    result = cleanup_tags(str(storage), keep=2, delete_untagged=True, grace_period=0)
    assert remaining_tags(private, "app") == ["mixed", "new"]
    assert sorted(f["digest"] for f in result["removed_revisions"]) == sorted(
        [digest(old), digest(old_amd), digest(loose)])
    for kept in (new, new_amd, new_arm, shared, old_arm):
        assert private.revision_link_path("app", kept).is_file(), kept
    # The freed blobs are exactly those only the removed manifests used.
    old_amd_doc = json.loads(private.data_path(old_amd).read_bytes())
    loose_doc = json.loads(private.data_path(loose).read_bytes())
    freed = {d["digest"][7:] for doc in (old_amd_doc, loose_doc) for d in [doc["config"], *doc["layers"]]}
    assert result["removed_layer_links"] == sorted(str(private.layer_link_path("app", h)) for h in freed)
    # Every kept tag still pulls completely (nothing the audit can find).
    assert count_findings(audit_indexes(str(storage))) == 0


def test_blobs_still_used_by_a_kept_image_keep_their_links(private, storage):
    base = b"shared base layer"
    private.push_image("app", "one", layers=[base, b"one"], tags=["1"])
    private.push_image("app", "two", layers=[base, b"two"], tags=["2"])
    age_tags(private, "app", ["1", "2"])
    result = cleanup_tags(str(storage), keep=1, delete_untagged=True, grace_period=0)
    assert private.layer_link_path("app", sha256_hex(base)).is_file()
    assert str(private.layer_link_path("app", sha256_hex(b"one"))) in result["removed_layer_links"]
    assert count_findings(audit_indexes(str(storage))) == 0


def test_repository_with_an_unreadable_tag_is_left_alone_by_delete_untagged(private, storage):
    private.push_image("app", "tagged", tags=["good"])
    loose = private.push_image("app", "maybe-needed")
    private.tag("app", "broken", loose, content="garbage")
    result = cleanup_tags(str(storage), keep=5, delete_untagged=True, grace_period=0)
    assert result["removed_revisions"] == []
    assert result["skipped_repositories"] == [
        {"registry": "private", "repo": "app", "reason": "tags with an unreadable current link: broken"}]
    assert private.revision_link_path("app", loose).is_file()


def test_second_run_changes_nothing(private, storage):
    for tag in ("1", "2", "3"):
        private.push_multiarch("app", "m" + tag, tags=[tag])
    age_tags(private, "app", ["1", "2", "3"])
    cleanup_tags(str(storage), keep=1, delete_untagged=True, grace_period=0)
    before = snapshot(storage)
    again = cleanup_tags(str(storage), keep=1, delete_untagged=True, grace_period=0)
    assert again["changed"] is False
    assert snapshot(storage) == before


@pytest.mark.parametrize("kwargs, message", [
    ({"keep": 0}, "keep must be a whole number of at least 1"),
    ({"keep": 2, "include": "("}, "include is not a valid regular expression"),
    ({"keep": 2, "rules": [{"keep": 1}]}, "rules[0] needs a 'repository'"),
    ({"keep": 2, "rules": [{"repository": ".*", "kept": 1}]}, "rules[0] has unknown keys: kept"),
])
def test_bad_options_are_clear_errors(private, storage, kwargs, message):
    private.push_image("app", "x", tags=["1"])
    with pytest.raises(ScanError, match=message.replace("[", r"\[").replace("(", r"\(")):
        cleanup_tags(str(storage), **kwargs)


def test_cleanup_follows_no_symlinked_tag_directory(private, storage, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    private.push_image("app", "a", tags=["1"])
    private.push_image("app", "b", tags=["2"])
    age_tags(private, "app", ["1", "2"])
    os.symlink(outside, private.repo_dir("app") / "_manifests" / "tags" / "evil")
    before = snapshot(storage)
    result = cleanup_tags(str(storage), keep=1, grace_period=0)
    assert (outside / "precious").read_text() == "keep me"
    # The registry follows the symlink and serves "evil": what it protects is unknown, so the
    # repository is left whole (no tag removed either).
    assert result["removed_tags"] == []
    assert result["skipped_repositories"] == [
        {"registry": "private", "repo": "app", "reason": "tags with an unreadable current link: evil"}]
    assert any(e["error"] == "symlink not followed" for e in result["scan_errors"])
    assert snapshot(storage) == before


def test_blobs_of_a_kept_orphan_child_stay_linked_for_its_repair(private, storage):
    index, (_amd, arm) = private.push_multiarch("app", "multi", tags=["v1"])
    arm_doc = json.loads(private.data_path(arm).read_bytes())
    private.delete_revision("app", arm)  # the child lost its revision link: repairable later
    arm_layer = arm_doc["layers"][0]["digest"][7:]
    # An untagged image that shares the orphan child's layer: deleting it must keep that link.
    loose = private.put_manifest("app", dict(arm_doc, annotations={"loose": "yes"}))
    result = cleanup_tags(str(storage), keep=5, delete_untagged=True, grace_period=0)
    assert [f["digest"] for f in result["removed_revisions"]] == [digest(loose)]
    assert private.layer_link_path("app", arm_layer).is_file()
    [orphan] = audit_indexes(str(storage), repair=True)["orphan_index_children"]
    assert (orphan["index_digest"], orphan["repair"]) == (digest(index), "repaired")


def test_pushed_within_keeps_recent_pushes_besides_the_newest_keep(private, storage):
    now = 1_800_000_000
    day = 86400
    ages = {"old": 40 * day, "month": 20 * day, "week": 6 * day, "new": 1 * day}
    for tag, age in ages.items():
        private.push_multiarch("app", "idx-" + tag, tags=[tag])
        os.utime(private.tag_link_path("app", tag), (now - age, now - age))
    for tag, age in ages.items():
        private.push_image("other", "img-" + tag, tags=[tag])
        os.utime(private.tag_link_path("other", tag), (now - age, now - age))
    result = cleanup_tags(str(storage), keep=1, pushed_within=30 * day, grace_period=0, now=now,
                          delete_untagged=True,
                          rules=[{"repository": "other", "pushed_within": 7 * day}])
    # app: the newest one, and everything within 30 days; only the 40-day-old index goes, whole.
    assert remaining_tags(private, "app") == ["month", "new", "week"]
    # other (its own rule): within 7 days.
    assert remaining_tags(private, "other") == ["new", "week"]
    assert sorted((f["repo"], f["tag"]) for f in result["removed_tags"]) == [
        ("app", "old"), ("other", "month"), ("other", "old")]
    # Every kept index is still whole.
    assert count_findings(audit_indexes(str(storage))) == 0


def test_pushed_within_zero_is_keep_alone_and_bad_values_are_errors(private, storage):
    for tag in ("1", "2", "3"):
        private.push_image("app", "img" + tag, tags=[tag])
    age_tags(private, "app", ["1", "2", "3"])
    cleanup_tags(str(storage), keep=1, pushed_within=0, grace_period=0)
    assert remaining_tags(private, "app") == ["3"]
    for bad in (-1, "7d", True):
        with pytest.raises(ScanError, match="pushed_within must be a whole number of seconds"):
            cleanup_tags(str(storage), keep=1, pushed_within=bad)
    with pytest.raises(ScanError, match=r"rules\[0\]: pushed_within"):
        cleanup_tags(str(storage), keep=1, rules=[{"repository": "app", "pushed_within": -5}])


def write_pulls(tmp_path, registry, pulls, now):
    """Pull records as the role makes them: nginx's log lines, folded. ``pulls``: [(uri path, time)]."""
    from ansible_collections.regwarden.registry.plugins.module_utils import _pull_records

    logs = tmp_path / "pull-logs"
    logs.mkdir(exist_ok=True)
    with open(logs / (registry + ".log"), "a") as handle:
        for uri, when in pulls:
            handle.write(json.dumps({"t": "%.3f" % when, "m": "GET", "s": "200", "u": uri}) + "\n")
    state = tmp_path / "pull-state"
    _pull_records.fold(str(logs), str(state), registry, now=now)
    return str(state)


def test_pulled_within_keeps_what_was_pulled_by_tag_or_by_a_childs_digest(private, storage, tmp_path):
    now = 1_800_000_000
    day = 86400
    indexes = {}
    for offset, tag in enumerate(["by-tag", "by-child", "by-index-digest", "stale", "never", "newest"]):
        indexes[tag] = private.push_multiarch("app", "pull-" + tag, tags=[tag])
        os.utime(private.tag_link_path("app", tag), (now - 90 * day + offset, now - 90 * day + offset))
    arm_child = indexes["by-child"][1][1]
    records = write_pulls(tmp_path, "private", [
        ("/v2/app/manifests/by-tag", now - 2 * day),
        ("/v2/app/manifests/sha256:" + arm_child, now - 3 * day),  # one platform, by digest
        ("/v2/app/manifests/sha256:" + indexes["by-index-digest"][0], now - 4 * day),
        ("/v2/app/manifests/stale", now - 45 * day),
    ], now=now - 60 * day)  # recording began 60 days ago
    checked = cleanup_tags(str(storage), keep=1, pulled_within=30 * day, pull_records=records, grace_period=0,
                           now=now, delete_untagged=True, check_mode=True)
    assert sorted(f["tag"] for f in checked["removed_tags"]) == ["never", "stale"]
    assert remaining_tags(private, "app") == sorted(indexes)
    result = cleanup_tags(str(storage), keep=1, pulled_within=30 * day, pull_records=records, grace_period=0,
                          now=now, delete_untagged=True)
    assert remaining_tags(private, "app") == ["by-child", "by-index-digest", "by-tag", "newest"]
    assert result["pull_records"]["private"]["complete_since"] == "2026-11-16T08:00:00Z"
    # The index kept by one child's pull keeps both platforms.
    assert count_findings(audit_indexes(str(storage))) == 0
    for child in indexes["by-child"][1]:
        assert private.revision_link_path("app", child).is_file()


def test_pulled_within_removes_nothing_for_want_of_a_record_older_than_the_records(private, storage, tmp_path):
    now = 1_800_000_000
    day = 86400
    for offset, tag in enumerate(["a", "b", "c"]):
        private.push_image("app", "young-records-" + tag, tags=[tag])
        os.utime(private.tag_link_path("app", tag), (now - 90 * day + offset, now - 90 * day + offset))
    records = write_pulls(tmp_path, "private", [("/v2/app/manifests/a", now - day)], now=now - 5 * day)
    result = cleanup_tags(str(storage), keep=1, pulled_within=30 * day, pull_records=records, grace_period=0, now=now)
    # Recording began 5 days ago: b was maybe pulled 10 days ago. Nothing goes.
    assert remaining_tags(private, "app") == ["a", "b", "c"]
    assert result["summary"]["private"]["kept_for_want_of_records"] == 1
    # The 7-day window is covered: b has no pull in it and goes.
    cleanup_tags(str(storage), keep=1, pulled_within=2 * day, pull_records=records, grace_period=0, now=now)
    assert remaining_tags(private, "app") == ["a", "c"]


def test_keep_last_pulled_keeps_the_most_recently_pulled_in_a_rule(private, storage, tmp_path):
    now = 1_800_000_000
    for offset, tag in enumerate(["1", "2", "3", "4", "5"]):
        private.push_image("team/app", "klp-" + tag, tags=[tag])
        os.utime(private.tag_link_path("team/app", tag), (now - 1000 + offset, now - 1000 + offset))
        private.push_image("other", "klp-other-" + tag, tags=[tag])
    records = write_pulls(tmp_path, "private", [
        ("/v2/team/app/manifests/2", now - 10), ("/v2/team/app/manifests/1", now - 20),
        ("/v2/team/app/manifests/3", now - 30)], now=now - 100)
    cleanup_tags(str(storage), keep=1, pull_records=records, grace_period=0, now=now,
                 rules=[{"repository": "team/.*", "keep_last_pulled": 2}])
    # Newest push (5) and the two last pulled (2, 1); 3 was pulled, but earlier.
    assert remaining_tags(private, "team/app") == ["1", "2", "5"]
    # "other" has no pull rule: keep 1 alone.
    assert len(remaining_tags(private, "other")) == 1


def test_pull_rules_need_readable_records(private, storage, tmp_path):
    private.push_image("app", "norec", tags=["1"])
    with pytest.raises(ScanError, match="pulled_within and keep_last_pulled need pull_records"):
        cleanup_tags(str(storage), keep=1, pulled_within=10)
    with pytest.raises(ScanError, match="keep_last_pulled must be a whole number, 0 or more"):
        cleanup_tags(str(storage), keep=1, keep_last_pulled=-1, pull_records=str(tmp_path))
    result = cleanup_tags(str(storage), keep=1, pulled_within=10, pull_records=str(tmp_path / "none"),
                          allow_incomplete=True)
    assert result["incomplete_registries"] == ["private"]
    assert "no pull records for registry private" in result["scan_errors"][0]["error"]
    assert result["removed_tags"] == []
