"""The private registry: htpasswd users over TLS only, and nginx never serves its content from a cache."""

import pytest
from conftest import unique

# Bigger than nginx's default client_max_body_size (1 MiB): the push proves the limit is off.
LAYER_SIZE = 3 * 1024 * 1024 // 2


@pytest.fixture(scope="module")
def pushed(vm, scenario):
    repo, tag = unique("team/app"), "v1"
    image = vm.client("push-image", "--registry", scenario.private_url, "--repo", repo, "--tag", tag,
                      "--seed", unique("seed"), "--layer-size", LAYER_SIZE, auth=True)
    return {"repo": repo, "tag": tag, **image}


def test_anonymous_pulls_and_pushes_are_refused(vm, scenario, pushed):
    repo, base = pushed["repo"], scenario.private_url
    layer = pushed["layers"][0]
    attempts = [
        ("GET", "/v2/"),
        ("GET", "/v2/_catalog"),
        ("GET", "/v2/%s/tags/list" % repo),
        ("GET", "/v2/%s/manifests/%s" % (repo, pushed["tag"])),
        ("HEAD", "/v2/%s/manifests/%s" % (repo, pushed["manifest_digest"])),
        ("GET", "/v2/%s/blobs/%s" % (repo, layer)),
        ("HEAD", "/v2/%s/blobs/%s" % (repo, layer)),
        ("POST", "/v2/%s/blobs/uploads/" % repo),
        ("POST", "/v2/%s/blobs/uploads/" % unique("anonymous/new")),
        ("PUT", "/v2/%s/manifests/anonymous" % repo),
        ("DELETE", "/v2/%s/manifests/%s" % (repo, pushed["manifest_digest"])),
    ]
    for method, path in attempts:
        answer = vm.request(base + path, method=method)
        assert answer["status"] == 401, (method, path, answer["status"])
        assert answer["headers"]["www-authenticate"].startswith("Basic ")
    # The refused DELETE really changed nothing.
    still_there = vm.request(base + "/v2/%s/manifests/%s" % (repo, pushed["tag"]), auth=True,
                             headers=["Accept: application/vnd.oci.image.manifest.v1+json"])
    assert still_there["status"] == 200


def test_wrong_password_is_refused(vm, scenario):
    answer = vm.host.run(
        "env REGISTRY_PASSWORD=not-the-password python3 /root/regwarden-tests/registry_client.py request "
        "--url %s --user %s --cafile %s", scenario.private_url + "/v2/", scenario.user, scenario.cafile)
    assert answer.rc == 0, answer.stderr
    assert '"status": 401' in answer.stdout


def test_configured_user_is_accepted_over_verified_tls(vm, scenario):
    # The client verifies the server certificate against the scenario's self-signed one.
    assert vm.request(scenario.private_url + "/v2/", auth=True)["status"] == 200
    served = vm.check(
        "python3 -c %s",
        "import ssl; print(ssl.get_server_certificate(('127.0.0.1', %d)))"
        % scenario.settings["docker_registry_private_port"],
    )
    assert served.split() == vm.check("cat %s", scenario.cafile).split()


def test_plain_http_is_refused_on_the_private_port(vm, scenario):
    plain = vm.request(scenario.private_url.replace("https://", "http://") + "/v2/", auth=True)
    assert plain["status"] == 400
    assert "docker-distribution-api-version" not in plain["headers"]


def test_pushed_image_pulls_back_byte_identical_through_nginx(vm, scenario, pushed):
    pulled = vm.client("pull-image", "--registry", scenario.private_url, "--repo", pushed["repo"],
                       "--ref", pushed["tag"], auth=True)
    assert pulled["manifest_digest"] == pushed["manifest_digest"]
    assert pulled["manifest_content_type"] == "application/vnd.oci.image.manifest.v1+json"
    assert set(pulled["blobs"]) == set(pushed["blob_sizes"])
    for digest, blob in pulled["blobs"].items():
        assert blob["status"] == 200, digest
        # Same SHA-256 and same length as the bytes pushed: byte-identical.
        assert blob["digest"] == digest
        assert blob["size"] == pushed["blob_sizes"][digest]


def test_blob_served_to_a_user_is_still_refused_anonymously(vm, scenario, pushed):
    url = "%s/v2/%s/blobs/%s" % (scenario.private_url, pushed["repo"], pushed["layers"][0])
    for _ in range(2):
        authorised = vm.request(url, auth=True)
        assert authorised["status"] == 200
        assert authorised["body_digest"] == pushed["layers"][0]
    for method in ("GET", "HEAD"):
        anonymous = vm.request(url, method=method)
        assert anonymous["status"] == 401, method
        assert anonymous["body_digest"] != pushed["layers"][0]
        assert anonymous["headers"].get("x-cache-status") != "HIT"
    # Another repository name with the same digest (a cache keyed by digest would match it).
    other = "%s/v2/%s/blobs/%s" % (scenario.private_url, unique("other/repo"), pushed["layers"][0])
    assert vm.request(other)["status"] == 401
