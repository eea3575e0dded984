"""Pull-through caches behind nginx: blobs cached by digest, manifests and errors never.

The "upstream" cache fronts a plain registry on the VM's host network (converge.yml starts it);
each test pushes fresh content there, so no earlier run's cache entry can answer for it.
"""

import json

import pytest
from conftest import UPSTREAM_CONTAINER, UPSTREAM_URL, unique

MANIFEST_ACCEPT = "Accept: application/vnd.oci.image.manifest.v1+json"


@pytest.fixture(scope="module")
def cache_url(scenario):
    return scenario.cache_url("upstream")


def seed_upstream(vm, dry_run=False):
    repo = unique("library/seeded")
    args = ["push-image", "--registry", UPSTREAM_URL, "--repo", repo, "--tag", "v1", "--seed", unique("seed")]
    image = vm.client(*args, *(["--dry-run"] if dry_run else []))
    return {"repo": repo, "tag": "v1", "args": args, **image}


def blob_url(base, image, digest):
    return "%s/v2/%s/blobs/%s" % (base, image["repo"], digest)


def test_cache_fetches_from_upstream_then_serves_hits(vm, cache_url):
    image = seed_upstream(vm)
    layer = image["layers"][0]
    first = vm.request(blob_url(cache_url, image, layer))
    assert first["status"] == 200
    assert first["body_digest"] == layer, "the cache did not return the upstream's bytes"
    assert first["headers"]["x-cache-status"] == "MISS"
    second = vm.request(blob_url(cache_url, image, layer))
    assert second["status"] == 200
    assert second["body_digest"] == layer
    assert second["headers"]["x-cache-status"] == "HIT"
    # The registry behind nginx stored it too (the layout the scanners read).
    assert vm.host.file("/opt/registry/data/upstream/docker/registry/v2/blobs/sha256/%s/%s/data"
                        % (layer[7:9], layer[7:])).exists


def test_manifests_are_never_cached(vm, cache_url):
    image = seed_upstream(vm)
    for reference in (image["tag"], image["manifest_digest"], image["tag"]):
        for method in ("GET", "HEAD", "GET"):
            answer = vm.request("%s/v2/%s/manifests/%s" % (cache_url, image["repo"], reference),
                                method=method, headers=[MANIFEST_ACCEPT])
            assert answer["status"] == 200, (reference, method)
            assert answer["headers"].get("x-cache-status") in (None, "BYPASS"), (reference, method, answer["headers"])
            if method == "GET":
                assert answer["body_digest"] == image["manifest_digest"]


def test_upstream_error_is_not_cached(vm, cache_url):
    planned = seed_upstream(vm, dry_run=True)
    layer = planned["layers"][0]
    # Upstream down: the cache cannot answer...
    vm.check("docker stop %s", UPSTREAM_CONTAINER)
    try:
        down = vm.request(blob_url(cache_url, planned, layer))
    finally:
        vm.check("docker start %s", UPSTREAM_CONTAINER)
        vm.wait_upstream()
    assert down["status"] != 200
    assert down["headers"].get("x-cache-status") in ("MISS", None)
    # ...upstream back but without the blob: still an error...
    missing = vm.request(blob_url(cache_url, planned, layer))
    assert missing["status"] == 404
    assert missing["headers"]["x-cache-status"] == "MISS"
    # ...and once upstream has it, the error was not remembered: a fresh fetch, then a hit.
    vm.client(*planned["args"])
    fetched = vm.request(blob_url(cache_url, planned, layer))
    assert fetched["status"] == 200
    assert fetched["body_digest"] == layer
    assert fetched["headers"]["x-cache-status"] == "MISS"
    assert vm.request(blob_url(cache_url, planned, layer))["headers"]["x-cache-status"] == "HIT"


def test_registry_5xx_is_intercepted_and_not_cached(vm, cache_url):
    image = seed_upstream(vm)
    layer = image["layers"][1]
    registry = vm.container("registry-upstream")
    vm.check("docker stop %s", registry)
    try:
        unavailable = vm.request(blob_url(cache_url, image, layer))
    finally:
        vm.check("docker start %s", registry)
    # nginx answered for the dead registry (502 from the proxy) with its own short error.
    assert unavailable["status"] == 503
    assert unavailable["headers"]["retry-after"] == "10"
    assert json.loads(unavailable["body_text"])["errors"][0]["code"] == "UNAVAILABLE"
    vm.wait_stack_healthy()
    fetched = vm.request(blob_url(cache_url, image, layer))
    assert fetched["status"] == 200
    assert fetched["body_digest"] == layer
    assert fetched["headers"]["x-cache-status"] == "MISS"


def test_range_request_is_answered_from_a_complete_cached_copy(vm, cache_url):
    image = seed_upstream(vm)
    layer = image["layers"][0]
    ranged = vm.request(blob_url(cache_url, image, layer), headers=["Range: bytes=0-99"])
    assert ranged["status"] in (200, 206)
    # The partial answer did not poison the cache: a full GET is a hit with every byte.
    full = vm.request(blob_url(cache_url, image, layer))
    assert full["status"] == 200
    assert full["body_digest"] == layer
    assert full["headers"]["x-cache-status"] == "HIT"


def test_cache_with_upstream_credentials_serves_and_keeps_them_private(vm, scenario):
    """"mirror" has upstream credentials in its config; it still pulls (with its own users, over
    TLS), and only root reads them."""
    mirror = scenario.cache("mirror")
    config = vm.host.file("%s/config/mirror/config.yml" % scenario.settings["docker_registry_base_dir"])
    assert config.mode == 0o600 and config.user == "root" and config.group == "root"
    assert "username: %s" % mirror["username"] in config.content_string
    image = seed_upstream(vm)
    pulled = vm.client("pull-image", "--registry", scenario.cache_url("mirror"), "--repo", image["repo"],
                       "--ref", image["tag"], auth=scenario.cache_credentials("mirror"))
    assert pulled["manifest_digest"] == image["manifest_digest"]
    assert {digest: blob["digest"] for digest, blob in pulled["blobs"].items()} == {
        digest: digest for digest in image["blob_sizes"]}


def test_nginx_blob_cache_rules(vm):
    """The rendered nginx config, as nginx itself parses it."""
    config = vm.check("docker exec %s nginx -T", vm.container("nginx"))
    for directive in (
        "proxy_cache_lock on;",
        "proxy_cache_lock_timeout 5m;",
        "proxy_cache_valid 200 ",
        "proxy_ignore_headers Cache-Control Expires",
        "error_page 502 503 504 = @registry_unavailable;",
        "proxy_set_header Host $http_host;",
        "client_max_body_size 0;",
        "add_header X-Cache-Status $upstream_cache_status always;",
    ):
        assert directive in config, directive
    assert "proxy_cache_valid any" not in config
