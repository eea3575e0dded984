"""The two scanner modules, run through ``ansible``, against what a client really gets.

The tree (:mod:`tests.support.scenario`) is damaged with the real tools while the registries
serve; they are then restarted and every tag, manifest, child and blob is fetched over HTTP
(:mod:`tests.support.truth`). Each finding class must equal, both ways, the set of failing
GETs it stands for: a scanner that misses a broken pull, or flags a working one, fails here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.support import storage, truth
from tests.support.ansible_run import run_module
from tests.support.oci import RegistryClient

BLOB_SCAN_LISTS = ("orphan_layer_links", "invalid_link_files", "zero_byte_blobs", "corrupt_blobs", "removed_links")
INDEX_AUDIT_LISTS = ("orphan_index_children", "broken_tags", "unservable_blobs", "invalid_manifests")


def findings(run, name, registry=None):
    items = run.result[name]
    return [f for f in items if registry is None or f["registry"] == registry]


def registry_content(data_dir: Path) -> dict:
    """Snapshot of the tree minus a cache's ``<name>/scheduler-state.json``: the running cache
    rewrites its TTL state on a timer, whatever the modules do."""
    return {k: v for k, v in storage.snapshot(data_dir).items()
            if not (k.endswith("/scheduler-state.json") and k.count("/") == 1)}


def platform_of(finding_platform: dict) -> dict:
    return {k: v for k, v in finding_platform.items() if v is not None}


# -- the tree really holds every damage class -----------------------------------------------


def test_tree_holds_every_damage_class(restarted_tree):
    private, cache = restarted_tree.truth["private"], restarted_tree.truth["dockerhub"]
    outcomes = {p.outcome for p in private.probes.values()}
    assert {truth.OK, truth.NOT_FOUND, truth.SERVER_ERROR, truth.EMPTY, truth.CORRUPT, truth.WRONG_BLOB} <= outcomes
    assert private.expected_orphan_layer_links() and cache.expected_orphan_layer_links()
    assert {k for *_, k in private.expected_invalid_link_files()} == {"layer", "revision"}
    assert private.expected_zero_byte_blobs()
    assert private.expected_broken_tags() and private.expected_invalid_manifests()
    assert private.expected_unservable_blobs() and cache.expected_unservable_blobs()
    assert private.expected_orphan_index_children() and cache.expected_orphan_index_children()
    # Healthy controls stay healthy: a Docker list and an OCI index with attestations.
    for repo, tag in (("team/app/web", "2.0"), ("team/app/api", "v2"), ("library/alpine", "latest")):
        assert private.tags[(repo, tag)].ok
    assert RegistryClient(restarted_tree.scenario.private.url).pull("team/app/api", "v2").ok
    # The shared child is reported under both indexes that list it.
    shared = restarted_tree.scenario.images["worker_shared"].digest
    assert len([c for c in private.expected_orphan_index_children() if c[2] == shared]) == 2


def test_descriptor_cache_hid_the_damage_until_restart(restarted_tree):
    """Before the restart a removed blob is a 200 with Content-Length and no body; after it,
    a 404 (or, for zero-byte data, an honest 200 with 0 bytes)."""
    tree = restarted_tree
    zero_byte_cut = {key for key, p in tree.scenario.warm.items()
                     if p.status == 200 and p.announced and p.received == 0}
    after = {}
    for name, registry_truth in tree.truth.items():
        after.update({(name, *key): p for key, p in registry_truth.layer_links.items()})
    assert zero_byte_cut, "the warm probes saw no 0-byte 200"
    orphans = {(n, *k) for n, t in tree.truth.items() for k in t.expected_orphan_layer_links()}
    zero_data = {(n, repo, digest) for n, t in tree.truth.items()
                 for digest, repos in t.expected_zero_byte_blobs().items() for repo in repos}
    assert zero_byte_cut == orphans | zero_data
    for key in zero_byte_cut:
        expected = truth.EMPTY if key in zero_data else truth.NOT_FOUND
        assert after[key].outcome == expected, key
    # Each removal mechanism left at least one: GC sweep, rm data, rm blob dir, data as dir, cache expiry.
    scenario = tree.scenario
    images = scenario.images
    for key in [("private", "library/alpine", images["alpine"].layers[-1].digest),
                ("private", "base/debian", images["debian"].layers[-1].digest),
                ("private", "base/debian", images["debian"].config.digest),
                ("private", "team/app/api", images["api_v1"].children[0].layers[-1].digest),
                ("dockerhub", "library/alpine", images["alpine"].layers[0].digest)]:
        assert key in zero_byte_cut, key


# -- registry_blob_scan ---------------------------------------------------------------------


def test_blob_scan_orphan_layer_links_equal_404s(scans):
    run = scans.runs["blob_scan"]
    assert not run.failed, run.result.get("msg")
    for name, registry_truth in scans.truth.items():
        v2 = scans.v2(name)
        got = findings(run, "orphan_layer_links", name)
        assert {(f["repo"], f["digest"]) for f in got} == registry_truth.expected_orphan_layer_links(), name
        assert len(got) == len(registry_truth.expected_orphan_layer_links())
        for f in got:
            assert f["path"] == str(storage.layer_link(v2, f["repo"], f["digest"]))
            assert f["blob_path"] == str(storage.blob_data(v2, f["digest"]))
            blob_dir = storage.blob_dir(v2, f["digest"])
            expected_reason = ("blob directory missing" if not blob_dir.exists()
                               else "blob data is not a regular file" if (blob_dir / "data").exists()
                               else "blob data missing")
            assert f["reason"] == expected_reason, f


def test_blob_scan_invalid_links_equal_500s_and_wrong_blobs(scans):
    run = scans.runs["blob_scan"]
    for name, registry_truth in scans.truth.items():
        v2 = scans.v2(name)
        got = findings(run, "invalid_link_files", name)
        assert {(f["repo"], f["digest"], f["kind"]) for f in got} == registry_truth.expected_invalid_link_files(), name
        for f in got:
            link = (storage.layer_link if f["kind"] == "layer" else storage.revision_link)(v2, f["repo"], f["digest"])
            assert f["path"] == str(link)
            assert f["reason"]


def test_blob_scan_zero_byte_blobs_equal_empty_200s(scans):
    run = scans.runs["blob_scan"]
    for name, registry_truth in scans.truth.items():
        got = findings(run, "zero_byte_blobs", name)
        assert {f["digest"]: f["repos"] for f in got} == registry_truth.expected_zero_byte_blobs(), name
        for f in got:
            assert f["path"] == str(storage.blob_data(scans.v2(name), f["digest"]))
    assert run.result["corrupt_blobs"] == []  # only with verify_digests


def test_blob_scan_verify_digests_equals_wrong_content(scans):
    run = scans.runs["blob_scan_verify"]
    assert not run.failed, run.result.get("msg")
    for name, registry_truth in scans.truth.items():
        got = findings(run, "corrupt_blobs", name)
        assert {f["digest"] for f in got} == registry_truth.expected_corrupt_blobs(), name
        for f in got:
            data = storage.blob_data(scans.v2(name), f["digest"])
            assert f["path"] == str(data)
            assert f["actual_digest"] == "sha256:" + hashlib.sha256(data.read_bytes()).hexdigest()
    # The other lists do not depend on verify_digests, and come in the same order (sorted).
    for name in ("orphan_layer_links", "invalid_link_files", "zero_byte_blobs"):
        assert run.result[name] == scans.runs["blob_scan"].result[name], name


def test_blob_scan_result_contract(scans):
    run = scans.runs["blob_scan"]
    result = run.result
    assert result["changed"] is False
    assert result["restart_required"] is False
    assert result["removed_links"] == []
    facts = result["ansible_facts"]["registry_blob_scan"]
    for name in (*BLOB_SCAN_LISTS, "summary"):
        assert facts[name] == result[name], name
    assert set(result["summary"]) == {"private", "dockerhub"}
    for name, counts in result["summary"].items():
        v2 = scans.v2(name)
        repos = storage.repositories(v2)
        assert counts["repositories"] == len(repos)
        for kind, lister in (("layer", storage.layer_links), ("revision", storage.revision_links)):
            link_files = sum(len(lister(v2, r)) for r in repos)
            invalid = len([f for f in findings(run, "invalid_link_files", name) if f["kind"] == kind])
            # Undocumented whether invalid link files count as links: either reading is accepted.
            assert counts[f"{kind}_links"] in (link_files, link_files - invalid), (name, kind)
        for kind in ("orphan_layer_links", "invalid_link_files", "zero_byte_blobs", "corrupt_blobs"):
            assert counts[kind] == len(findings(run, kind, name)), (name, kind)
    for kind in ("orphan_layer_links", "invalid_link_files"):
        keys = [(f["registry"], f["repo"], f["digest"] or "", f["path"]) for f in result[kind]]
        assert keys == sorted(keys), kind
    for f in result["zero_byte_blobs"]:
        assert f["repos"] == sorted(f["repos"])


# -- registry_index_audit -------------------------------------------------------------------


def check_index_audit(run, tree, name):
    registry_truth = tree.truth[name]
    v2 = tree.v2(name)

    children = findings(run, "orphan_index_children", name)
    assert {(f["repo"], f["index_digest"], f["child_digest"]) for f in children} \
        == registry_truth.expected_orphan_index_children(), name
    for f in children:
        index = registry_truth.indexes[(f["repo"], f["index_digest"])]
        child = next(c for c in index.children if c.digest == f["child_digest"])
        assert f["index_media_type"] == index.media_type
        assert f["tags"] == index.tags
        assert platform_of(f["platform"]) == child.platform
        assert f["attestation"] is child.attestation
        revision = storage.revision_link(v2, f["repo"], f["child_digest"])
        assert f["path"] == str(revision)
        assert f["revision_link"] == storage.link_state(revision, f["child_digest"])
        fallback = storage.link_state(storage.layer_link(v2, f["repo"], f["child_digest"]), f["child_digest"])
        assert f["layer_link_fallback"] is (fallback == "present")
        assert f["blob_data"] == ("present" if storage.blob_data_state(v2, f["child_digest"]) == "present" else "gone")

    tags = findings(run, "broken_tags", name)
    assert {(f["repo"], f["tag"]) for f in tags} == registry_truth.expected_broken_tags(), name
    for f in tags:
        current = storage.tag_current_link(v2, f["repo"], f["tag"])
        assert f["path"] == str(current)
        assert f["digest"] == storage.read_link(current)

    blobs = findings(run, "unservable_blobs", name)
    assert {(f["repo"], f["digest"], f["kind"]) for f in blobs} == registry_truth.expected_unservable_blobs(), name
    for f in blobs:
        expected = registry_truth.blobs[(f["repo"], f["digest"])]
        assert f["manifests"] == sorted(expected.manifests)
        assert f["tags"] == sorted(expected.tags)
        assert f["layer_link"] == storage.link_state(storage.layer_link(v2, f["repo"], f["digest"]), f["digest"])
        assert f["blob_data"] == storage.blob_data_state(v2, f["digest"])
        assert f["path"] in (str(storage.layer_link(v2, f["repo"], f["digest"])),
                             str(storage.blob_data(v2, f["digest"])))

    manifests = findings(run, "invalid_manifests", name)
    assert {(f["repo"], f["digest"]) for f in manifests} == registry_truth.expected_invalid_manifests(), name
    for f in manifests:
        assert f["path"] == str(storage.blob_data(v2, f["digest"]))
        assert f["reason"]

    summary = run.result["summary"][name]
    for kind in INDEX_AUDIT_LISTS:
        assert summary[kind] == len(findings(run, kind, name)), (name, kind)
    assert summary["repositories"] == len(storage.repositories(v2))
    assert summary["indexes"] >= len(registry_truth.indexes)


def test_index_audit_default_scope_is_the_private_registry(scans):
    run = scans.runs["index_audit"]
    assert not run.failed, run.result.get("msg")
    assert set(run.result["summary"]) == {"private"}
    for kind in INDEX_AUDIT_LISTS:
        assert {f["registry"] for f in run.result[kind]} <= {"private"}
    check_index_audit(run, scans, "private")
    facts = run.result["ansible_facts"]["registry_index_audit"]
    for name in (*INDEX_AUDIT_LISTS, "summary"):
        assert facts[name] == run.result[name], name
    assert run.result["changed"] is False


def test_index_audit_short_name_with_the_cache(scans):
    """The pull-through cache holds a partial index: arm64 and attestations never pulled."""
    run = scans.runs["index_audit_all"]
    assert not run.failed, run.result.get("msg")
    assert set(run.result["summary"]) == {"private", "dockerhub"}
    check_index_audit(run, scans, "dockerhub")
    check_index_audit(run, scans, "private")
    for kind in INDEX_AUDIT_LISTS:
        assert findings(run, kind, "private") == scans.runs["index_audit"].result[kind], kind
    partial = findings(run, "orphan_index_children", "dockerhub")
    assert {f["revision_link"] for f in partial} == {"missing"}
    assert sorted(f["attestation"] for f in partial) == [False, True, True]


# -- both ways, over every GET ---------------------------------------------------------------


def test_every_broken_pull_is_found_and_no_working_pull_is_flagged(scans):
    blob_scan = scans.runs["blob_scan_verify"].result
    audit = scans.runs["index_audit_all"].result
    for name, registry_truth in scans.truth.items():
        flagged_blobs = set()
        for kind in ("orphan_layer_links", "invalid_link_files"):
            flagged_blobs |= {(f["repo"], f["digest"]) for f in blob_scan[kind]
                              if f["registry"] == name and f.get("kind", "layer") == "layer"}
        flagged_blobs |= {(r, f["digest"]) for f in blob_scan["zero_byte_blobs"] if f["registry"] == name
                          for r in f["repos"]}
        corrupt = {f["digest"] for f in blob_scan["corrupt_blobs"] if f["registry"] == name}
        flagged_blobs |= {(f["repo"], f["digest"]) for f in audit["unservable_blobs"] if f["registry"] == name}
        flagged_manifests = {(f["repo"], f["child_digest"]) for f in audit["orphan_index_children"]
                             if f["registry"] == name}
        flagged_manifests |= {(f["repo"], f["digest"]) for f in blob_scan["invalid_link_files"]
                              if f["registry"] == name and f["kind"] == "revision"}
        flagged_manifests |= {(f["repo"], f["digest"]) for f in audit["invalid_manifests"] if f["registry"] == name}
        flagged_tags = {(f["repo"], f["tag"]) for f in audit["broken_tags"] if f["registry"] == name}

        for probe in registry_truth.probes.values():
            key = (probe.repo, probe.reference)
            if probe.kind == "blob":
                flagged = key in flagged_blobs or probe.reference in corrupt
            elif probe.reference.startswith("sha256:"):
                flagged = key in flagged_manifests or probe.reference in corrupt
            else:
                flagged = key in flagged_tags
            assert flagged is not probe.ok, (name, probe)
        # Nothing flagged that nobody could try to pull.
        probed = {(p.repo, p.reference) for p in registry_truth.probes.values()}
        assert flagged_blobs | flagged_manifests | flagged_tags <= probed, name


def test_read_only_runs_changed_nothing_on_disk(scans):
    assert scans.snapshot_after_scans == scans.snapshot_before_scans


# -- failure modes --------------------------------------------------------------------------


def test_fail_on_findings_fails_with_the_findings(scans):
    run = run_module("regwarden.registry.registry_index_audit", {"path": str(scans.data_dir), "fail_on_findings": True})
    assert run.rc != 0 and run.failed
    assert "Module failed" not in run.result["msg"]
    check_index_audit(run, scans, "private")


@pytest.mark.parametrize("module", ["registry_blob_scan", "registry_index_audit"])
def test_missing_path_is_a_clear_failure(tmp_path, module):
    missing = tmp_path / "no-such-dir"
    run = run_module(f"regwarden.registry.{module}", {"path": str(missing)})
    assert run.rc != 0 and run.failed
    msg = run.result["msg"]
    assert str(missing) in msg and "Module failed" not in msg, msg
    assert "Traceback" not in run.stdout + run.stderr
    assert "module_stderr" not in run.result


def test_unknown_registry_name_is_a_clear_failure(scans):
    run = run_module("regwarden.registry.registry_blob_scan",
                     {"path": str(scans.data_dir), "registries": ["private", "no-such-registry"]})
    assert run.failed
    assert "no-such-registry" in run.result["msg"] and "Module failed" not in run.result["msg"]


# -- remove_orphans on the warm tree ----------------------------------------------------------


def test_remove_orphans_then_restart_gives_clean_404s(warm_tree, restarted_tree):
    """Check mode and diff mode first, then the removal; then restart: every request that got
    a 0-byte 200 now gets a clean 404 (zero-byte data aside: that is a 200 with 0 bytes), and
    nothing but the orphan link files and their digest directories left the disk."""
    tree = warm_tree
    path = str(tree.data_dir)
    # Same seed, same tree: the restarted copy's HTTP truth names the orphans.
    expected = {(name, repo, digest) for name, t in restarted_tree.truth.items()
                for repo, digest in t.expected_orphan_layer_links()}
    v2 = {r.name: r.v2 for r in tree.registries}
    expected_links = sorted(str(storage.layer_link(v2[n], r, d)) for n, r, d in expected)
    before = registry_content(tree.data_dir)

    check = run_module("regwarden.registry.registry_blob_scan", {"path": path, "remove_orphans": True},
                       check=True, diff=True)
    assert not check.failed, check.result.get("msg")
    assert check.result["changed"] is True
    assert sorted(check.result["removed_links"]) == expected_links
    assert {(f["registry"], f["repo"], f["digest"]) for f in check.result["orphan_layer_links"]} == expected
    assert all(link in json.dumps(check.result["diff"]) for link in expected_links)
    assert registry_content(tree.data_dir) == before, "check mode changed the disk"

    removal = run_module("regwarden.registry.registry_blob_scan", {"path": path, "remove_orphans": True}, diff=True)
    assert not removal.failed, removal.result.get("msg")
    assert removal.result["changed"] is True
    assert removal.result["restart_required"] is True
    assert sorted(removal.result["removed_links"]) == expected_links
    assert removal.result["ansible_facts"]["registry_blob_scan"]["removed_links"] == removal.result["removed_links"]
    assert all(link in json.dumps(removal.result["diff"]) for link in expected_links)

    after = registry_content(tree.data_dir)
    gone = set(before) - set(after)
    expected_gone = set()
    for link in expected_links:
        relative = Path(link).relative_to(tree.data_dir)
        expected_gone |= {str(relative), str(relative.parent)}
    assert gone == expected_gone
    assert set(after) - set(before) == set()
    assert {k: after[k] for k in after} == {k: before[k] for k in after}, "a surviving file changed"

    # The cache restarts without its upstream: what its own disk serves is what is tested.
    tree.private.restart()
    tree.cache.restart(proxy_remote=None)
    cut_before = {key: p for key, p in tree.warm.items() if p.status == 200 and p.announced and p.received == 0}
    assert cut_before
    removed = {(n, r, d) for n, r, d in expected}
    clients = {r.name: RegistryClient(r.url) for r in tree.registries}
    for name, repo, digest in sorted(cut_before):
        now = truth.probe_blob(clients[name], repo, digest)
        if (name, repo, digest) in removed:
            assert (now.status, now.outcome) == (404, truth.NOT_FOUND), (name, repo, digest, now)
        else:
            assert storage.blob_data_state(v2[name], digest) == "empty", (name, repo, digest)
            assert (now.status, now.announced, now.received) == (200, 0, 0), (name, repo, digest, now)
    assert removed <= set(cut_before), "an orphan link that clients never saw cut short"

    again = run_module("regwarden.registry.registry_blob_scan", {"path": path, "remove_orphans": True})
    assert again.result["changed"] is False
    assert again.result["orphan_layer_links"] == [] and again.result["removed_links"] == []
    assert again.result["restart_required"] is False
