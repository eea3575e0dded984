"""Nobody gets in where they don't belong, and nothing leaks: the VM as an attacker sees it.

Anonymous clients get 401 from the private registry and from every cache with users (the
catalog, a manifest and a blob nginx has cached); only the nginx ports listen on the listen
address; TLS below 1.2 is refused and plain HTTP on a TLS port gets a registry-style answer;
wrong logins are slowed while a correct client goes on; the registries keep their http.secret;
and no secret of the converge shows in a converge run at -vvv with --diff.
"""

import os
import pathlib
import re

import pytest
import yaml
from conftest import UPSTREAM_URL, unique

MANIFEST_ACCEPT = "Accept: application/vnd.oci.image.manifest.v1+json"


@pytest.fixture(scope="module")
def mirror_image(vm, scenario):
    """An image pulled through the mirror (with its users), so nginx holds its blobs."""
    repo = unique("library/exposed")
    image = vm.client("push-image", "--registry", UPSTREAM_URL, "--repo", repo, "--tag", "v1", "--seed", unique("s"))
    pulled = vm.client("pull-image", "--registry", scenario.cache_url("mirror"), "--repo", repo, "--ref", "v1",
                       auth=scenario.cache_credentials("mirror"))
    assert pulled["manifest_digest"] == image["manifest_digest"]
    return {"repo": repo, **image}


def test_anonymous_clients_get_401_from_every_registry_with_users(vm, scenario, mirror_image):
    private_repo = unique("exposure/app")
    private = vm.client("push-image", "--registry", scenario.private_url, "--repo", private_repo, "--tag", "v1",
                        "--seed", unique("s"), auth=True)
    cases = [
        (scenario.private_url, private_repo, private, True),
        (scenario.cache_url("mirror"), mirror_image["repo"], mirror_image, scenario.cache_credentials("mirror")),
    ]
    for base, repo, image, credentials in cases:
        layer = image["layers"][0]
        urls = ["%s/v2/_catalog" % base, "%s/v2/%s/manifests/v1" % (base, repo),
                "%s/v2/%s/blobs/%s" % (base, repo, layer)]
        for url in urls:
            anonymous = vm.request(url, headers=[MANIFEST_ACCEPT])
            assert anonymous["status"] == 401, (url, anonymous["status"])
            assert anonymous["headers"]["www-authenticate"].startswith("Basic realm=")
            wrong = vm.client("request", "--url", url, auth=(credentials[0] if credentials is not True
                                                               else scenario.user, "wrong-password"))
            assert wrong["status"] in (401, 429), (url, wrong["status"])
        allowed = vm.client("request", "--url", "%s/v2/%s/blobs/%s" % (base, repo, layer), auth=credentials)
        assert allowed["status"] == 200 and allowed["body_digest"] == layer
    # The blob above was in nginx's cache, and still it wanted credentials.
    cached = vm.client("request", "--url", "%s/v2/%s/blobs/%s" % (
        scenario.cache_url("mirror"), mirror_image["repo"], mirror_image["layers"][0]),
        auth=scenario.cache_credentials("mirror"))
    assert cached["headers"]["x-cache-status"] == "HIT"


def test_the_anonymous_cache_stays_open(vm, scenario):
    assert vm.request(scenario.cache_url("upstream") + "/v2/")["status"] == 200


def test_only_nginx_listens_on_the_listen_address(vm, scenario):
    published = {port for port, _debug in scenario.ports.values()}
    test_upstream = int(UPSTREAM_URL.rsplit(":", 1)[1])  # this scenario's fixture, not the role's
    for line in vm.check("ss -Hltn").splitlines():
        address = line.split()[3]
        host, _, port = address.rpartition(":")
        if host.strip("[]") in ("127.0.0.1", "::1", "127.0.0.11") or host.startswith("127."):
            continue
        assert int(port) in published or int(port) == test_upstream, "something else listens on %s" % address
    nginx = vm.container("nginx")
    bindings = vm.inspect(nginx, "{{json .HostConfig.PortBindings}}")
    for port in published:
        assert '"%d/tcp"' % port in bindings
    for name in scenario.registry_names:
        assert vm.inspect(vm.container("registry-%s" % name), "{{json .HostConfig.PortBindings}}").count(
            '"HostIp":"127.0.0.1"') == 1, name  # the debug port only, on loopback


@pytest.mark.parametrize("registry", ["private", "mirror"])
def test_tls_below_1_2_is_refused(vm, scenario, registry):
    url = scenario.private_url if registry == "private" else scenario.cache_url(registry)
    old = vm.client("tls-version", "--url", url, "--tls-max", "1.1")
    assert old["version"] is None, old
    assert re.search(r"PROTOCOL_VERSION|protocol version|unsupported protocol", old["error"], re.I), old
    assert vm.client("tls-version", "--url", url, "--tls-max", "1.2")["version"] == "TLSv1.2"


def test_plain_http_on_the_tls_port_says_to_use_https(vm, scenario):
    answer = vm.request(scenario.private_url.replace("https://", "http://") + "/v2/")
    assert answer["status"] == 400
    assert "HTTPS" in answer["body_text"] and '"code":"UNSUPPORTED"' in answer["body_text"]
    assert answer["headers"]["server"] == "nginx"  # server_tokens off: no version


def test_wrong_logins_are_slowed_while_a_correct_client_goes_on(vm, scenario):
    burst = scenario.settings["docker_registry_nginx_auth_failure_burst"]
    url = scenario.private_url + "/v2/"
    guessing = vm.client("hammer", "--url", url, "--count", burst * 4, auth=(scenario.user, "guess-%s" % unique("x")))
    assert guessing["statuses"].get("429", 0) >= burst, guessing
    assert set(guessing["statuses"]) <= {"401", "429"}, guessing
    # The refused burst costs the registry nothing; a client with the right password is not slowed.
    right = vm.client("hammer", "--url", url, "--count", 5, auth=True)
    assert right["statuses"] == {"200": 5}, right
    assert right["seconds"] < 10


def test_every_registry_keeps_one_http_secret(vm, scenario):
    base = scenario.settings["docker_registry_base_dir"]
    secrets = set()
    for name in scenario.registry_names:
        secret = vm.host.file("%s/secrets/%s.http-secret" % (base, name))
        assert secret.mode == 0o600 and secret.user == "root"
        config = yaml.safe_load(vm.check("cat %s/config/%s/config.yml", base, name))
        assert config["http"]["secret"] == secret.content_string.strip()
        assert len(config["http"]["secret"]) >= 32
        secrets.add(config["http"]["secret"])
    assert len(secrets) == len(scenario.registry_names)


def test_the_probe_unit_names_no_user_and_holds_no_password(vm, scenario):
    exec_start = vm.check("systemctl show --property ExecStart --value regwarden-registry-probe.service")
    assert scenario.user not in exec_start and scenario.password not in exec_start
    for path in ("/etc/regwarden/probe.username", "/etc/regwarden/probe.password"):
        credential = vm.host.file(path)
        assert credential.mode == 0o600 and credential.user == "root"


def test_no_secret_shows_in_a_converge_at_vvv_with_diff(vm, scenario):
    """side_effect.yml converged once more at -vvv --diff with a changed override secret (so the
    config templates did change); its whole output is in the scenario's ephemeral directory."""
    log = pathlib.Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "converge-vvv-diff.log"
    output = log.read_text()
    assert "TASK [regwarden.registry.docker_registry : Registries | Registry configs]" in output
    assert "changed=" in output and "failed=0" in output
    base = scenario.settings["docker_registry_base_dir"]
    secrets = {
        "private user's password": scenario.password,
        "mirror user's password": scenario.cache_credentials("mirror")[1],
        "mirror upstream password": scenario.cache("mirror")["password"],
        "override token, first": "override-only-token-first",
        "override token, second": "override-only-token-second",
    }
    for name in scenario.registry_names:
        secret = vm.host.file("%s/secrets/%s.http-secret" % (base, name))
        secrets["http.secret of %s" % name] = secret.content_string.strip()
    # The key's first base64 line holds the private scalar (the last ones the public key, which the
    # scenario's own certificate play prints, rightly).
    key_lines = vm.host.file("%s/nginx/tls/%s.key" % (base, scenario.private_name)).content_string.splitlines()
    secrets["TLS private key"] = next(line for line in key_lines if line and not line.startswith("-----"))
    for what, secret in secrets.items():
        assert secret and secret not in output, "%s appears in the -vvv --diff output" % what
