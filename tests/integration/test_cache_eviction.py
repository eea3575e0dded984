"""A size bound for a pull-through cache, measured on the real registry.

An upstream registry holds four repositories (one a multi-arch image that shares a base layer with
another); a cache in front of it (the role's config: ``storage.delete`` off) pulls them all. The
cache's last use per repository comes from its tag times (the cache rewrites a tag whenever it
serves it from upstream) and from the pull records (a pull of one platform's child by digest).
With a bound below what it holds, the CLI's ``cache-evict`` (the GC script's step) evicts the
least recently used repositories, the real ``garbage-collect`` frees their data and
``remove-orphans`` clears what it left behind. Then: the blob data is under the bound, and with
the upstream gone every image still tagged pulls whole from the cache's own storage.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.support.oci import RegistryClient, make_image, make_layer, make_multiarch
from tests.support.registry import Registry

# The CLI and the registry, no Ansible code: once, not again per ansible-core (pyproject markers).
pytestmark = pytest.mark.no_ansible

DAY = 86400
WAIT_S = 30.0
CLI = "ansible_collections.regwarden.registry.plugins.module_utils._cli"


def wait_for(what, predicate, timeout=WAIT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError("timed out after %.0fs waiting for %s" % (timeout, what))


def blob_bytes(registry: Registry) -> int:
    """What ``du --apparent-size`` of the blob data counts."""
    blobs = registry.v2 / "blobs"
    return sum(path.stat().st_size for path in blobs.rglob("data")) if blobs.is_dir() else 0


def linked(registry: Registry, repo: str) -> set[str]:
    layers = registry.v2 / "repositories" / repo / "_layers" / "sha256"
    return {"sha256:" + link.parent.name for link in layers.glob("*/link")}


def cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(cwd / ".collections"), str(cwd)]))
    run = subprocess.run([sys.executable, "-m", CLI, *args], capture_output=True, text=True, env=env, timeout=120,
                         check=False)
    return run.returncode, run.stdout, run.stderr


def test_a_cache_over_its_bound_evicts_the_least_recently_used_and_keeps_the_rest_servable(tmp_path, pytestconfig):
    root = pytestconfig.rootpath
    base = make_layer("evict-shared-base", size=64 * 1024)
    images = {
        "team/oldest": make_image("evict-oldest", layers=2, layer_size=96 * 1024),
        "team/old": make_image("evict-old", layers=2, layer_size=96 * 1024, base_layers=[base]),
        "team/recent": make_multiarch("evict-recent", base_layers=[base]),
        "team/newest": make_image("evict-newest", layers=2, layer_size=96 * 1024),
    }
    now = time.time()
    # Tag times (the last pull by tag through the cache): oldest first.
    ages = {"team/oldest": 40 * DAY, "team/old": 30 * DAY, "team/recent": 20 * DAY, "team/newest": 10 * DAY}
    with Registry("upstream", tmp_path / "up", tmp_path) as upstream:
        for repo, image in images.items():
            RegistryClient(upstream.url).push(repo, image, "v1")
        with Registry("dockerhub", tmp_path / "data", tmp_path, proxy_remote=upstream.url,
                      delete_enabled=False) as cache:
            client = RegistryClient(cache.url)
            for repo in images:
                assert client.pull(repo, "v1").ok, repo
            for repo, image in images.items():
                wanted = {blob.digest for manifest in image.walk() for blob in manifest.blobs}
                wait_for("the cache to link %s's blobs" % repo, lambda w=wanted, r=repo: linked(cache, r) >= w)
            cache.stop()
            for repo, age in ages.items():
                # As if first fetched (and last pulled by tag) that long ago: every link of the repository.
                for link in (cache.v2 / "repositories" / repo).rglob("link"):
                    os.utime(link, (now - age, now - age))
            # team/oldest's amd64 child was pulled by digest yesterday: it is the most recently used.
            logs, records = tmp_path / "pull-logs", tmp_path / "pull-state"
            logs.mkdir()
            (logs / "dockerhub.log").write_text(json.dumps({
                "t": "%.3f" % (now - DAY), "m": "GET", "s": "200",
                "u": "/v2/team/oldest/manifests/" + images["team/oldest"].digest}) + "\n")
            code, out, err = cli("pull-record", "--registries", "dockerhub", "--log-dir", str(logs),
                                 "--state-dir", str(records), cwd=root)
            assert code == 0, err
            before = blob_bytes(cache)
            sizes = {repo: sum(blob.size for manifest in image.walk() for blob in manifest.blobs)
                     + sum(manifest.size for manifest in image.walk()) for repo, image in images.items()}
            # Room for team/oldest and team/newest alone: team/old and team/recent share the base layer, so
            # both must go before it is freed.
            bound = sizes["team/oldest"] + sizes["team/newest"] + 1024
            assert before > bound + base.size
            evict = ["cache-evict", "--path", str(tmp_path / "data"), "--registry", "dockerhub",
                     "--max-size", str(bound), "--pull-records", str(records), "--grace-period", "3600",
                     "--report", str(tmp_path / "evict.json")]
            code, out, err = cli(*evict, cwd=root)
            assert code == 0, err
            report = json.loads((tmp_path / "evict.json").read_text())
            eviction = report["eviction"]["dockerhub"]
            # Least recently used first: team/old (30 days), then team/recent (20); team/oldest was pulled yesterday.
            assert [entry["repo"] for entry in eviction["evicted_repositories"]] == ["team/old", "team/recent"]
            assert eviction["blob_bytes"] == before and not eviction["over_bound"]
            assert sorted((f["repo"], f["tag"]) for f in report["removed_tags"]) == [
                ("team/old", "v1"), ("team/recent", "v1")]

            cache.garbage_collect()
            code, out, err = cli("remove-orphans", "--path", str(tmp_path / "data"), "--registries", "dockerhub",
                                 cwd=root)
            assert code == 0, err
            # The eviction unlinked what GC swept: no other repository is left linking swept data.
            assert json.loads(out)["summary"]["dockerhub"]["orphan_layer_links"] == 0
            after = blob_bytes(cache)
            assert after <= bound < before, (after, bound, before)
            assert linked(cache, "team/old") == set() and linked(cache, "team/recent") == set()
            assert not (cache.v2 / "blobs" / "sha256" / base.digest[7:9] / base.digest[7:] / "data").exists()

            # Its storage alone (the same data served as a plain registry, no upstream to fall back on):
            # every image still tagged pulls whole, the evicted ones are gone.
            cache.restart(proxy_remote=None)
            for repo in ("team/oldest", "team/newest"):
                report = client.pull(repo, "v1")
                assert report.ok and report.digest == images[repo].digest, (repo, report.problems)
            assert not client.pull("team/old", "v1").ok
            # A cache again: an evicted image is fetched from upstream on the next pull.
            cache.restart(proxy_remote=upstream.url)
            report = client.pull("team/recent", "v1")
            assert report.ok and report.digest == images["team/recent"].digest, report.problems
