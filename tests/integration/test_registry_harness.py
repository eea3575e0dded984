"""Self-tests of the harness, and the storage facts of docs/design.md section 2 on the real registry.

If one of these fails, the module tests' ground truth is wrong, not the modules.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import damage, storage, truth
from tests.support.oci import (
    DOCKER_LIST,
    OCI_INDEX,
    RegistryClient,
    RegistryHTTPError,
    make_image,
    make_multiarch,
    read_body,
)
from tests.support.registry import Registry
from tests.support.scenario import pull_through, wait_for_blobs

# The test harness itself (registries and SeaweedFS), no Ansible code: once, not again per ansible-core.
pytestmark = pytest.mark.no_ansible


@pytest.fixture
def registry(tmp_path):
    with Registry("private", tmp_path / "data", tmp_path / "work") as reg:
        yield reg


def test_push_pull_round_trip_every_shape(registry):
    client = RegistryClient(registry.url)
    oci_index = make_multiarch(1)
    docker_list = make_multiarch(2, flavor="docker")
    shared_child = oci_index.children[0]
    images = {
        ("team/app/x", "v1"): oci_index,
        ("team/app/x", "v1-copy"): make_multiarch(3, extra_children=[shared_child], platforms=("linux/arm64/v8",)),
        ("team/app/web", "1.0"): docker_list,
        ("library/alpine", "3.19"): make_image(4, flavor="docker"),
        ("tools/oci", "1"): make_image(5, flavor="oci", layers=3),
    }
    for index, ((repo, tag), manifest) in enumerate(images.items()):
        assert client.push(repo, manifest, tag, chunked=index % 2 == 1) == manifest.digest

    assert client.catalog() == sorted({repo for repo, _ in images})
    assert client.tags("team/app/x") == ["v1", "v1-copy"]
    for (repo, tag), manifest in images.items():
        report = client.pull(repo, tag)
        assert report.ok, report.problems
        assert report.digest == manifest.digest
        assert report.manifests == 1 + len(manifest.children)
        assert report.blobs == sum(len(m.blobs) for m in manifest.walk())
    assert client.pull("team/app/x", "v1").media_type == OCI_INDEX
    assert client.pull("team/app/web", "1.0").media_type == DOCKER_LIST

    # The layout the modules read: <data_dir>/<name>/docker/registry/v2, nested repo names.
    assert registry.v2 == registry.data_dir / "private" / "docker" / "registry" / "v2"
    assert storage.repositories(registry.v2) == sorted({repo for repo, _ in images})
    for child in oci_index.children:
        revision = storage.revision_link(registry.v2, "team/app/x", child.digest)
        assert storage.link_state(revision, child.digest) == "present"
        for blob in child.blobs:
            assert storage.layer_link(registry.v2, "team/app/x", blob.digest).read_text() == blob.digest
    attestations = [c for c in oci_index.children if c.is_attestation]
    assert len(attestations) == 2
    assert all(c.platform == {"os": "unknown", "architecture": "unknown"} for c in attestations)


def test_index_push_is_refused_without_its_children(registry):
    client = RegistryClient(registry.url)
    index = make_multiarch(6)
    for blob in index.children[0].blobs:
        client.upload_blob("team/app/x", blob)
    with pytest.raises(RegistryHTTPError) as refused:
        client.put_manifest("team/app/x", "v1", index.payload, index.media_type)
    assert refused.value.status == 400
    assert "MANIFEST_BLOB_UNKNOWN" in refused.value.body or "MANIFEST_INVALID" in refused.value.body


def test_removed_blob_is_a_zero_byte_200_until_restart(registry):
    client = RegistryClient(registry.url)
    image = make_image(7, flavor="docker")
    client.push("library/alpine", image, "3.19")
    layer = image.layers[0]
    damage.remove_blob_data(registry, layer.digest)

    warm = truth.probe_blob(client, "library/alpine", layer.digest)
    assert (warm.status, warm.announced, warm.received, warm.outcome) == (200, layer.size, 0, truth.SHORT)
    head = client.session.head(f"{registry.url}/v2/library/alpine/blobs/{layer.digest}")
    assert (head.status_code, int(head.headers["Content-Length"])) == (200, layer.size)

    registry.restart()
    cold = truth.probe_blob(client, "library/alpine", layer.digest)
    assert (cold.status, cold.outcome) == (404, truth.NOT_FOUND)
    # The link is still on disk: exactly what registry_blob_scan must find.
    assert storage.layer_link(registry.v2, "library/alpine", layer.digest).is_file()


def test_zero_byte_data_and_bad_links(registry):
    client = RegistryClient(registry.url)
    image = make_image(8, layers=3)
    client.push("tools/builder", image, "1")
    damage.zero_blob_data(registry, image.layers[0].digest)
    damage.garbage_layer_link(registry, "tools/builder", image.layers[1].digest, "garbage")
    damage.garbage_layer_link(registry, "tools/builder", image.layers[2].digest, image.config.digest)
    damage.corrupt_blob_data(registry, image.config.digest)
    registry.restart()

    zero = truth.probe_blob(client, "tools/builder", image.layers[0].digest)
    assert (zero.status, zero.announced, zero.received, zero.outcome) == (200, 0, 0, truth.EMPTY)
    assert truth.probe_blob(client, "tools/builder", image.layers[1].digest).outcome == truth.SERVER_ERROR
    # A link naming another blob whose own link is valid: that other blob is served.
    redirected = truth.probe_blob(client, "tools/builder", image.layers[2].digest)
    assert (redirected.outcome, redirected.served_digest) == (truth.WRONG_BLOB, image.config.digest)
    corrupt = truth.probe_blob(client, "tools/builder", image.config.digest)
    assert (corrupt.received, corrupt.outcome) == (image.config.size, truth.CORRUPT)


def test_gc_delete_untagged_breaks_tagged_indexes(registry):
    """Storage fact (docs/design.md section 2): 2.8's --delete-untagged drops every untagged child's revision, keeps the
    child manifest blobs, sweeps their configs and layers, and never removes _layers links."""
    client = RegistryClient(registry.url)
    index = make_multiarch(9)
    client.push("team/app/api", index, "v1")
    single = make_image(10)
    client.push("team/app/api", single, "single")
    damage.gc_delete_untagged(registry)
    registry.restart()

    assert client.pull("team/app/api", "single").ok
    report = client.pull("team/app/api", "v1")
    assert report.digest == index.digest
    assert len(report.problems) == len(index.children)
    v2 = registry.v2
    for child in index.children:
        assert storage.link_state(storage.revision_link(v2, "team/app/api", child.digest), child.digest) == "missing"
        assert storage.blob_data_state(v2, child.digest) == "present"
        for blob in child.blobs:
            assert storage.blob_data_state(v2, blob.digest) == "gone"
            assert storage.layer_link(v2, "team/app/api", blob.digest).is_file()
        assert truth.probe_manifest(client, "team/app/api", child.digest).outcome == truth.NOT_FOUND


def test_delete_by_digest_leaves_index_tagged(registry):
    client = RegistryClient(registry.url)
    index = make_multiarch(11)
    client.push("team/app/worker", index, "v1")
    arm64 = index.children[1]
    damage.api_delete_manifest(registry, "team/app/worker", arm64.digest)
    registry.restart()
    assert client.tags("team/app/worker") == ["v1"]
    assert truth.probe_manifest(client, "team/app/worker", "v1").ok
    assert truth.probe_manifest(client, "team/app/worker", arm64.digest).outcome == truth.NOT_FOUND
    revision_dir = storage.revision_link(registry.v2, "team/app/worker", arm64.digest).parent
    assert revision_dir.is_dir() and not (revision_dir / "link").exists()  # the empty dir stays


def test_pull_through_cache_holds_a_partial_index(tmp_path, registry):
    client = RegistryClient(registry.url)
    index = make_multiarch(12)
    client.push("team/app/api", index, "v1")
    with Registry("dockerhub", tmp_path / "data", tmp_path / "work", proxy_remote=registry.url) as cache:
        cache_client = RegistryClient(cache.url)
        with pytest.raises(RegistryHTTPError):
            cache_client.push("team/app/api", make_image(13), "pushed")  # a cache refuses pushes
        fetched = pull_through(cache_client, "team/app/api", "v1", platforms={"linux/amd64"})
        wait_for_blobs(cache, "team/app/api", fetched)
        assert sorted(fetched) == sorted(b.digest for b in index.children[0].blobs)
        # Served from the cache's own disk only: the other children were never pulled.
        cache.restart(proxy_remote=None)
        assert truth.probe_manifest(cache_client, "team/app/api", "v1").ok
        assert truth.probe_manifest(cache_client, "team/app/api", index.children[0].digest).ok
        for child in index.children[1:]:
            assert truth.probe_manifest(cache_client, "team/app/api", child.digest).outcome == truth.NOT_FOUND


def test_stop_is_idempotent_and_restart_keeps_the_port(tmp_path):
    reg = Registry("private", tmp_path / "data", tmp_path / "work")
    reg.stop()  # before start: no error
    reg.start()
    url, pid = reg.url, reg.pid
    reg.restart()
    assert reg.url == url and reg.pid != pid
    reg.stop()
    reg.stop()
    assert not reg.running
    assert "==== start private" in reg.log_path.read_text()


def test_read_body_reports_a_cut_body(registry):
    client = RegistryClient(registry.url)
    image = make_image(14)
    client.push("a/b", image, "1")
    damage.remove_blob_data(registry, image.config.digest)
    body, error = read_body(client.get_blob("a/b", image.config.digest))
    assert body == b"" and error and "IncompleteRead" in error


def test_gc_delete_untagged_aborts_on_a_repo_without_tags_and_on_an_empty_registry(registry):
    """Storage facts (docs/design.md section 2) the maintenance timers rely on: both exit 1, delete nothing."""
    empty = registry.garbage_collect(delete_untagged=True, check=False)
    assert empty.returncode == 1 and "Path not found" in empty.stderr + empty.stdout
    client = RegistryClient(registry.url)
    client.push("a/tagged", make_multiarch(15), "v1")
    client.push("b/notags", make_image(16))  # by digest only: revisions, no _manifests/tags
    before = storage.snapshot(registry.root)
    aborted = registry.garbage_collect(delete_untagged=True, check=False)
    assert aborted.returncode == 1 and "b/notags" in aborted.stderr + aborted.stdout
    assert storage.snapshot(registry.root) == before


@pytest.mark.parametrize("server", ["registry", "seaweed"])
def test_a_killed_test_process_leaves_no_server_behind(tmp_path, server):
    """SIGKILL the process that started a server (no teardown runs): the server goes with it."""
    starter = {
        "registry": "from tests.support.registry import Registry\n"
                    "r = Registry('private', %r, %r).start()\n" % (str(tmp_path / "data"), str(tmp_path)),
        "seaweed": "from tests.support.seaweed import SeaweedS3\n"
                   "r = SeaweedS3(%r).start()\n" % str(tmp_path),
    }[server]
    script = starter + "print(r.pid, flush=True)\nimport time\ntime.sleep(600)\n"
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=str(Path(__file__).resolve().parents[2]),
                            stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        child = int(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait(30)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        # A zombie until init reaps it: gone as far as any port is concerned.
        with open("/proc/%d/stat" % child) as stat:
            if stat.read().split(") ", 1)[1].startswith("Z"):
                return
        time.sleep(0.2)
    os.kill(child, signal.SIGKILL)
    raise AssertionError("the %s (pid %d) outlived the killed test process" % (server, child))
