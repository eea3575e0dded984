"""Cache eviction logic (the real-registry proof is tests/integration/test_cache_eviction.py): what is
in use is never evicted, check mode changes nothing, and a bound it cannot reach is said."""

import os

import pytest

from ansible_collections.regwarden.registry.plugins.module_utils._cache_eviction import evict_cache
from ansible_collections.regwarden.registry.plugins.module_utils._storage import ScanError
from tests.support.tree import snapshot

NOW = 1_800_000_000
DAY = 86400


def age_repository(tree, repo, age):
    for link in tree.repo_dir(repo).rglob("link"):
        os.utime(link, (NOW - age, NOW - age))


@pytest.fixture
def cache(make_registry):
    tree = make_registry("dockerhub")
    for position, repo in enumerate(["lib/a", "lib/b", "lib/c"]):
        tree.push_image(repo, "evict-unit-" + repo, tags=["latest"])
        age_repository(tree, repo, (10 - position) * DAY)  # lib/a least recently used
    return tree


def test_check_mode_plans_and_changes_nothing(cache, storage):
    before = snapshot(storage)
    result = evict_cache(str(storage), "dockerhub", 1, check_mode=True, now=NOW)
    eviction = result["eviction"]["dockerhub"]
    # A bound of one byte: everything old enough goes, least recently used first.
    assert [entry["repo"] for entry in eviction["evicted_repositories"]] == ["lib/a", "lib/b", "lib/c"]
    assert eviction["projected_bytes"] == 0 and not eviction["over_bound"]
    assert len(result["removed_tags"]) == 3 and not result["restart_required"]
    assert snapshot(storage) == before


def test_what_was_used_within_the_grace_period_stays_and_the_bound_is_reported_missed(cache, storage):
    age_repository(cache, "lib/a", 60)  # pulled a minute ago
    result = evict_cache(str(storage), "dockerhub", 1, now=NOW, grace_period=3600)
    eviction = result["eviction"]["dockerhub"]
    assert [entry["repo"] for entry in eviction["evicted_repositories"]] == ["lib/b", "lib/c"]
    assert eviction["over_bound"] and eviction["projected_bytes"] > 1
    assert (cache.repo_dir("lib/a") / "_manifests" / "tags" / "latest").is_dir()
    assert not (cache.repo_dir("lib/b") / "_manifests" / "tags" / "latest").exists()


def test_a_bound_already_met_evicts_nothing(cache, storage):
    result = evict_cache(str(storage), "dockerhub", 10 ** 9, now=NOW)
    assert result["eviction"]["dockerhub"]["evicted_repositories"] == [] and not result["changed"]


def test_a_repository_with_an_unreadable_tag_is_never_evicted(cache, storage, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, cache.repo_dir("lib/a") / "_manifests" / "tags" / "evil")
    result = evict_cache(str(storage), "dockerhub", 1, now=NOW, allow_incomplete=True)
    assert "lib/a" not in [entry["repo"] for entry in result["eviction"]["dockerhub"]["evicted_repositories"]]
    assert (cache.repo_dir("lib/a") / "_manifests" / "tags" / "latest").is_dir()


@pytest.mark.parametrize("bad", [-1, "10g", True, None])
def test_bad_bounds_are_errors(cache, storage, bad):
    with pytest.raises(ScanError, match="max_size must be a whole number of bytes"):
        evict_cache(str(storage), "dockerhub", bad)


def test_named_records_that_are_missing_fail_the_registry_and_change_nothing(cache, storage, tmp_path):
    before = snapshot(storage)
    result = evict_cache(str(storage), "dockerhub", 1, pull_records=str(tmp_path / "none"), now=NOW,
                         allow_incomplete=True)
    assert result["incomplete_registries"] == ["dockerhub"]
    assert "no pull records for registry dockerhub" in result["scan_errors"][0]["error"]
    assert snapshot(storage) == before


def test_a_repository_evicted_before_is_no_candidate_again(cache, storage):
    evict_cache(str(storage), "dockerhub", 1, now=NOW, grace_period=0)
    cache.push_image("lib/d", "evict-unit-d", tags=["latest"])
    age_repository(cache, "lib/d", 60)  # in use: keeps the cache over the bound
    again = evict_cache(str(storage), "dockerhub", 1, now=NOW, grace_period=3600)
    # The emptied repositories link nothing and have no tags: no eviction (of nothing) is reported.
    assert again["eviction"]["dockerhub"]["evicted_repositories"] == [] and not again["changed"]
    assert again["eviction"]["dockerhub"]["over_bound"]
