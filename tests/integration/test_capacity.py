"""Capacity figures on the real registry, on a filesystem and in an S3 bucket: the bytes each
repository links equal a du-style count of what the registry serves for its tags (manifest, config
and layers, by HTTP), unique and shared split by who else links a blob; blobs of a removed
repository are unlinked; an unfinished upload is counted; both backends agree."""

from __future__ import annotations

import os
import shutil
import time

import pytest
import requests

from ansible_collections.regwarden.registry.plugins.module_utils import _cli
from ansible_collections.regwarden.registry.plugins.module_utils._blob_scan import scan_blobs
from ansible_collections.regwarden.registry.plugins.module_utils._s3_view import S3Storage
from tests.support.oci import RegistryClient, make_image, make_layer
from tests.support.registry import Registry
from tests.support.seaweed import S3Target, SeaweedS3

# Registry and storage behaviour, no Ansible code: once, not again per ansible-core (pyproject markers).
pytestmark = pytest.mark.no_ansible

UPLOAD_BYTES = 3000
BASE_LAYER = make_layer("capacity-base", size=5000)


def served(client: RegistryClient, repo: str, tags: list[str]) -> dict[str, int]:
    """{digest: bytes} of everything the registry serves for ``tags``: manifests, configs, layers."""
    found = {}
    for tag in tags:
        response = client.get_manifest(repo, tag)
        found[response.headers["Docker-Content-Digest"]] = len(response.content)
        document = response.json()
        for descriptor in [document["config"], *document["layers"]]:
            head = requests.head(client.url + "/v2/%s/blobs/%s" % (repo, descriptor["digest"]), timeout=15)
            assert head.status_code == 200
            found[descriptor["digest"]] = int(head.headers["Content-Length"])
    return found


def check(figures, expected, gone_blobs, *, upload_bytes):
    repos = figures["repositories"]
    assert sorted(repos) == ["team/a", "team/b"]
    for repo, blobs in expected.items():
        others = set().union(*(set(b) for r, b in expected.items() if r != repo))
        assert repos[repo]["linked_blobs"] == len(blobs), repo
        assert repos[repo]["linked_bytes"] == sum(blobs.values()), repo
        assert repos[repo]["unique_bytes"] == sum(size for d, size in blobs.items() if d not in others), repo
        assert repos[repo]["shared_bytes"] == sum(size for d, size in blobs.items() if d in others), repo
    # team/b shares exactly the base layer with team/a.
    assert repos["team/b"]["shared_bytes"] == len(BASE_LAYER.data) == expected["team/b"][BASE_LAYER.digest]
    every = {**expected["team/a"], **expected["team/b"], **gone_blobs}
    assert figures["blobs"] == len(every)
    assert figures["blob_bytes"] == sum(every.values())
    assert figures["unlinked_blobs"] == len(gone_blobs)
    assert figures["unlinked_bytes"] == sum(gone_blobs.values())
    assert figures["uploads"] == 1 and repos["team/a"]["uploads"] == 1
    assert figures["upload_bytes"] == upload_bytes == repos["team/a"]["upload_bytes"]
    assert 0 <= figures["oldest_upload_age_seconds"] < 600


def remove_repository(registry, repo):
    path = registry.v2 / "repositories" / repo
    if hasattr(path, "rmtree"):
        path.rmtree()
    else:
        import shutil

        shutil.rmtree(path)


@pytest.fixture(scope="module")
def filesystem_registry(tmp_path_factory):
    base = tmp_path_factory.mktemp("capacity-fs")
    with Registry("private", base / "data", base) as registry:
        yield registry, base / "data"


def test_capacity_on_a_filesystem_matches_what_the_registry_serves(filesystem_registry, tmp_path):
    registry, data = filesystem_registry
    expected, gone_blobs = build_and_remove(registry)
    result = scan_blobs(str(data), capacity=True)
    check(result["capacity"]["private"], expected, gone_blobs, upload_bytes=UPLOAD_BYTES)
    # du-style: the data files under blobs/ add up to the same bytes.
    on_disk = sum(path.stat().st_size for path in (registry.v2 / "blobs").rglob("data"))
    assert result["capacity"]["private"]["blob_bytes"] == on_disk
    # Without the option the result has no figures and the same findings and counts.
    plain = scan_blobs(str(data))
    assert plain["capacity"] == {} and plain["summary"] == result["summary"]

    # The VM's scan writes them as textfile metrics.
    prom = tmp_path / "scan.prom"
    records = tmp_path / "pulls"
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "private.log").write_text(
        '{"t":"1796300000.000","m":"GET","s":"200","u":"/v2/team/b/manifests/v1"}\n')
    assert _cli.main(["pull-record", "--registries", "private", "--log-dir", str(tmp_path / "logs"),
                      "--state-dir", str(records)]) == _cli.EXIT_CLEAN
    assert _cli.main(["scan", "--path", str(data), "--capacity", "--index-registries", "",
                      "--pull-records", str(records),
                      "--report", str(tmp_path / "scan.json"), "--prom", str(prom)]) == _cli.EXIT_CLEAN
    text = prom.read_text()
    assert ('regwarden_capacity_repository_last_pull_timestamp_seconds{registry="private",repository="team/b"} '
            '1796300000') in text
    assert 'repository="team/a"} ' not in text.split("regwarden_capacity_repository_last_pull")[-1]
    assert 'regwarden_capacity_unlinked_bytes{registry="private"} %d' % sum(gone_blobs.values()) in text
    assert 'regwarden_capacity_untagged_manifests{registry="private"} 0' in text
    assert ('regwarden_capacity_repository_bytes{registry="private",repository="team/b",sharing="shared"} %d'
            % len(BASE_LAYER.data)) in text


def build_and_remove(registry):
    expected, gone_blobs = build_content(registry)
    remove_repository(registry, "team/gone")
    return expected, gone_blobs


def build_content(registry):
    client = RegistryClient(registry.url)
    base = BASE_LAYER
    client.push("team/a", make_image("capacity-a", layers=2, base_layers=[base], layer_size=3000), "v1")
    client.push("team/a", make_image("capacity-a2", layers=1, base_layers=[base], layer_size=2000), "v2")
    client.push("team/b", make_image("capacity-b", layers=1, base_layers=[base], layer_size=4000), "v1")
    client.push("team/gone", make_image("capacity-gone", layers=2, layer_size=6000), "v1")
    start = requests.post(registry.url + "/v2/team/a/blobs/uploads/", timeout=15)
    assert start.status_code == 202
    patch = requests.patch(requests.compat.urljoin(registry.url, start.headers["Location"]),
                           data=os.urandom(UPLOAD_BYTES), headers={"Content-Type": "application/octet-stream"},
                           timeout=15)
    assert patch.status_code == 202
    expected = {"team/a": served(client, "team/a", ["v1", "v2"]), "team/b": served(client, "team/b", ["v1"])}
    return expected, served(client, "team/gone", ["v1"])


def test_capacity_in_a_bucket_matches_the_filesystem(tmp_path):
    with SeaweedS3(tmp_path / "seaweed") as server:
        server.create_bucket("registries")
        target = S3Target(server, "registries", "capacity")
        with Registry("private", tmp_path / "unused", tmp_path, s3=target) as registry:
            expected, gone_blobs = build_and_remove(registry)
            time.sleep(0.5)
        result = scan_blobs(S3Storage(target.settings(cache_dir=str(tmp_path / "cache"))), capacity=True)
    figures = result["capacity"]["private"]
    # The s3 driver keeps an unfinished upload's bytes in a multipart upload, which no listing shows:
    # the session is counted (its startedat), its bytes are not.
    check(figures, expected, gone_blobs, upload_bytes=0)


def test_untagged_figures_are_what_delete_untagged_and_gc_free(tmp_path):
    """A tag moved to a new push leaves the old image untagged; an index's children are reached through
    it. The figures say what tag cleanup's delete_untagged and then the real garbage-collect free: the
    bytes the blob data shrinks by are exactly ``untagged_bytes``."""
    from ansible_collections.regwarden.registry.plugins.module_utils._tag_cleanup import cleanup_tags
    from tests.support.oci import make_multiarch

    with Registry("private", tmp_path / "data", tmp_path) as registry:
        client = RegistryClient(registry.url)
        old = make_image("untagged-old", layers=2, base_layers=[BASE_LAYER])
        new = make_image("untagged-new", layers=1, base_layers=[BASE_LAYER])
        client.push("team/app", old, "latest")
        client.push("team/app", new, "latest")  # the old image: no tag reaches it any more
        index = make_multiarch("untagged-index")
        client.push("team/app", index, "multi")
        client.push("team/other", old, "kept")  # the old image is still tagged elsewhere

        figures = scan_blobs(str(tmp_path / "data"), capacity=True)["capacity"]["private"]
        app = figures["repositories"]["team/app"]
        # One manifest (the old image) no tag reaches; the index's children are reached through it.
        assert app["untagged_manifests"] == 1
        # team/other still links the old image's blobs: nothing of them would be freed.
        assert app["untagged_bytes"] == 0
        assert figures["repositories"]["team/other"]["untagged_manifests"] == 0

        # Without the other tag, the old image's own blobs (not the shared base) are what GC frees.
        registry.stop()
        shutil.rmtree(registry.v2 / "repositories" / "team" / "other")  # the repository deleted
        figures = scan_blobs(str(tmp_path / "data"), capacity=True)["capacity"]["private"]
        app = figures["repositories"]["team/app"]
        own = {blob.digest: blob.size for blob in old.blobs if blob.digest != BASE_LAYER.digest}
        own[old.digest] = old.size
        assert app["untagged_manifests"] == 1 and app["untagged_bytes"] == sum(own.values())
        assert figures["untagged_bytes"] == app["untagged_bytes"]

        cleanup_tags(str(tmp_path / "data"), keep=10, delete_untagged=True, grace_period=0)
        registry.garbage_collect()
        after = scan_blobs(str(tmp_path / "data"), capacity=True)["capacity"]["private"]
        assert figures["blob_bytes"] - after["blob_bytes"] == figures["untagged_bytes"] + figures["unlinked_bytes"]
        assert after["untagged_manifests"] == 0 and after["untagged_bytes"] == 0
        registry.start()
        for tag in ("latest", "multi"):
            assert client.pull("team/app", tag).ok
