"""The probe against hostile or misconfigured registries: real HTTP(S) servers on 127.0.0.1.

No credential may reach a server other than the registry itself (or an https token realm), only
http(s) is ever requested, and every run ends within its deadline with a finding or a clear
error, never a traceback. The servers are tests/support/hostile_http.py, started and stopped by
each test; the probe talks to them through the real transports (the standard library's, which
the VM's timer uses, and the module's, through the ``ansible`` CLI).
"""

from __future__ import annotations

import base64
import json
import time

import pytest

from ansible_collections.regwarden.registry.plugins.module_utils._probe import probe_registry
from ansible_collections.regwarden.registry.plugins.module_utils._registry_http import (
    AuthError,
    DeadlineExceeded,
    ProbeError,
    urllib_transport,
)
from tests.support.ansible_run import run_module
from tests.support.auth import self_signed_pair
from tests.support.hostile_http import Answer, HostileServer, endless
from tests.support.oci import OCI_MANIFEST, make_image

USER, PASSWORD = "ci", "never-leaves-the-registry"
BASIC = "Basic " + base64.b64encode(("%s:%s" % (USER, PASSWORD)).encode()).decode()


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return self_signed_pair(tmp_path_factory.mktemp("tls"), "hostile")


def registry_app(image, override=None, auth=None):
    """A tiny registry serving one repository ``app`` with tag ``v1`` = ``image``.

    ``override(request)`` may answer first; ``auth`` is a WWW-Authenticate value sent to any
    request without the right Basic credentials.
    """
    blobs = {blob.digest: blob.data for blob in image.blobs}

    def app(request):
        if override is not None:
            answer = override(request)
            if answer is not None:
                return answer
        if auth and request.headers.get("authorization") not in (BASIC, "Bearer good-token"):
            return Answer(401, {"WWW-Authenticate": auth, "Content-Type": "application/json"},
                          b'{"errors":[{"code":"UNAUTHORIZED"}]}')
        path = request.path.split("?")[0]
        if path == "/v2/":
            return Answer(200, {"Content-Type": "application/json"}, b"{}")
        if path == "/v2/_catalog":
            return Answer(200, {"Content-Type": "application/json"}, b'{"repositories":["app"]}')
        if path == "/v2/app/tags/list":
            return Answer(200, {"Content-Type": "application/json"}, b'{"name":"app","tags":["v1"]}')
        if path in ("/v2/app/manifests/v1", "/v2/app/manifests/" + image.digest):
            return Answer(200, {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": image.digest}, image.payload)
        for digest, data in blobs.items():
            if path == "/v2/app/blobs/" + digest:
                return Answer(200, {"Docker-Content-Digest": digest, "Content-Type": "application/octet-stream"},
                              data)
        return Answer(404, {"Content-Type": "application/json"}, b'{"errors":[{"code":"NOT_FOUND"}]}')

    return app


def probe(url, deadline=20, ca=None, **options):
    transport = urllib_transport(ca_path=str(ca) if ca else None, timeout=5)
    started = time.monotonic()
    try:
        return probe_registry(transport, url, deadline=deadline, **options), time.monotonic() - started
    finally:
        assert time.monotonic() - started < deadline + 10, "the probe overran its deadline"


# -- credentials go nowhere else ---------------------------------------------------------------

def test_basic_credentials_never_go_to_a_plain_http_realm_on_another_host():
    image = make_image("realm-other-host")
    # The "token server" wants credentials (401): it gets an anonymous request, never the password.
    with HostileServer(lambda request: Answer(401, {}, b""), host="localhost") as thief:
        realm = 'Bearer realm="http://localhost:%d/token",service="x"' % thief.port
        with HostileServer(registry_app(image, auth=realm)) as registry, \
                pytest.raises(AuthError, match="the credentials were not sent there"):
            probe(registry.url, username=USER, password=PASSWORD)
    assert thief.requests, "the token server was asked (anonymously)"
    assert thief.authorizations() == []
    assert all(PASSWORD not in request.path for request in thief.requests)


def test_basic_credentials_go_to_an_https_realm(tls):
    image = make_image("realm-https")

    def token_server(request):
        granted = request.headers.get("authorization") == BASIC
        return Answer(200 if granted else 401, {"Content-Type": "application/json"},
                      b'{"token":"good-token","expires_in":300}' if granted else b"{}")

    with HostileServer(token_server, tls=tls) as tokens:
        realm = 'Bearer realm="%s/token",service="x"' % tokens.url
        with HostileServer(registry_app(image, auth=realm)) as registry:
            transport = urllib_transport(ca_path=str(tls[0]), timeout=5)
            result = probe_registry(transport, registry.url, username=USER, password=PASSWORD, deadline=20)
    assert result["unfetchable"] == []
    assert tokens.authorizations() and set(tokens.authorizations()) == {BASIC}
    assert BASIC not in registry.authorizations()  # the registry itself only ever saw the token


def test_a_redirect_from_https_to_http_is_refused_and_nothing_reaches_the_http_server(tls):
    image = make_image("downgrade")
    with HostileServer(registry_app(image)) as plain:
        def downgrade(request):
            if "/blobs/" in request.path:
                return Answer(307, {"Location": plain.url + request.path}, b"")
            return None

        with HostileServer(registry_app(image, override=downgrade, auth='Basic realm="r"'), tls=tls) as registry:
            result, _seconds = probe(registry.url, ca=tls[0], username=USER, password=PASSWORD, verify_blobs=True)
    assert plain.requests == []
    reasons = {finding["reason"] for finding in result["unfetchable"]}
    assert reasons and all("refused a redirect from https to http" in reason for reason in reasons)


def test_a_redirect_to_another_host_carries_no_credentials():
    image = make_image("other-host")
    with HostileServer(registry_app(image), host="localhost") as other:
        def elsewhere(request):
            if "/blobs/" in request.path:
                return Answer(307, {"Location": other.url + request.path}, b"")
            return None

        with HostileServer(registry_app(image, override=elsewhere, auth='Basic realm="r"')) as registry:
            result, _seconds = probe(registry.url, username=USER, password=PASSWORD, verify_blobs=True)
    assert result["unfetchable"] == []  # the blobs came from the other host, fine
    assert other.requests and other.authorizations() == []


@pytest.mark.parametrize("where", ["redirect", "realm"])
def test_file_urls_are_never_followed(tmp_path, where):
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$secret")
    image = make_image("file-url")
    if where == "redirect":
        def to_file(request):
            if "/blobs/" in request.path:
                return Answer(302, {"Location": "file://" + str(secret)}, b"")
            return None

        with HostileServer(registry_app(image, override=to_file)) as registry:
            result, _seconds = probe(registry.url, verify_blobs=True)
        reasons = {finding["reason"] for finding in result["unfetchable"]}
        assert reasons and all("only http(s) URLs are followed" in reason for reason in reasons)
    else:
        realm = 'Bearer realm="file://%s",service="x"' % secret
        with HostileServer(registry_app(image, auth=realm)) as registry, \
                pytest.raises(ProbeError, match=r"not an http\(s\) URL"):
            probe(registry.url, username=USER, password=PASSWORD)


def test_the_module_keeps_credentials_off_a_plain_http_realm_too():
    image = make_image("module-realm")
    with HostileServer(lambda request: Answer(401, {}, b""), host="localhost") as thief:
        realm = 'Bearer realm="http://localhost:%d/token"' % thief.port
        with HostileServer(registry_app(image, auth=realm)) as registry:
            run = run_module("regwarden.registry.registry_probe", {
                "url": registry.url, "username": USER, "password": PASSWORD, "deadline": 30})
    assert run.failed and "the credentials were not sent there" in run.result["msg"]
    assert thief.authorizations() == []
    assert PASSWORD not in run.stdout + run.stderr


# -- unbounded reads and endless loops end ----------------------------------------------------------

def test_an_endless_blob_body_is_read_to_the_descriptor_size_plus_one():
    image = make_image("endless-blob")
    layer = image.layers[0]

    def endless_layer(request):
        if request.path.endswith("/blobs/" + layer.digest):
            return Answer(200, {"Docker-Content-Digest": layer.digest}, endless())
        return None

    with HostileServer(registry_app(image, override=endless_layer)) as registry:
        result, seconds = probe(registry.url, verify_blobs=True)
    [finding] = result["unfetchable"]
    assert finding["digest"] == layer.digest
    assert finding["bytes_received"] == layer.size + 1
    assert result["counts"]["bytes_received"] < 10 * 1024 * 1024
    assert seconds < 15


def test_an_endless_manifest_and_error_body_are_bounded():
    image = make_image("endless-manifest")

    def endless_answers(request):
        if request.path.endswith("/manifests/v1"):
            return Answer(200, {"Content-Type": OCI_MANIFEST}, endless())
        if request.path.endswith("/tags/list"):
            return None
        if request.path.startswith("/v2/app/blobs/"):
            return Answer(500, {"Content-Type": "application/json"}, endless())
        return None

    with HostileServer(registry_app(image, override=endless_answers)) as registry:
        result, seconds = probe(registry.url)
    [finding] = result["unfetchable"]
    assert "larger than" in finding["reason"]
    assert result["counts"]["bytes_received"] <= 4 * 1024 * 1024 + 1
    assert seconds < 15


def test_endless_pagination_stops_at_max_entries():
    image = make_image("pages")

    def pages(request):
        if request.path.startswith("/v2/_catalog"):
            page = int(request.path.rsplit("page=", 1)[1]) if "page=" in request.path else 0
            names = ["repo-%d-%d" % (page, n) for n in range(100)]
            return Answer(200, {"Content-Type": "application/json",
                                "Link": '</v2/_catalog?n=100&page=%d>; rel="next"' % (page + 1)},
                          json.dumps({"repositories": names}).encode())
        if "/tags/list" in request.path and not request.path.startswith("/v2/app/"):
            return Answer(404, {}, b"{}")
        return None

    with HostileServer(registry_app(image, override=pages)) as registry:
        result, seconds = probe(registry.url, max_entries=1000)
    assert result["counts"]["repositories"] == 1000
    assert any("listing stopped (max_entries)" in f["reason"] for f in result["unfetchable"])
    assert result["catalog_reachable"] is True
    assert len(registry.requests) < 1200
    assert seconds < 30


def test_a_server_that_drips_forever_ends_at_the_deadline():
    image = make_image("drip")

    def drip(request):
        if request.path.endswith("/manifests/v1"):
            return Answer(200, {"Content-Type": OCI_MANIFEST, "Content-Length": "999999"},
                          endless(b"{", delay=0.2))
        return None

    with HostileServer(registry_app(image, override=drip)) as registry:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="did not finish within its deadline of 3 s"):
            probe(registry.url, deadline=3)
    assert time.monotonic() - started < 10


# -- broken headers and bodies are findings or clear errors ---------------------------------------------

@pytest.mark.parametrize("length", ["\u00b2", "9" * 5000, "-5", "12 34"])
def test_a_broken_content_length_is_no_traceback(length):
    image = make_image("length")
    layer = image.layers[0]

    def broken(request):
        if request.path.endswith("/blobs/" + layer.digest):
            return Answer(200, {"Docker-Content-Digest": layer.digest, "Content-Length": length}, layer.data)
        return None

    with HostileServer(registry_app(image, override=broken)) as registry:
        for verify in (False, True):
            result, _seconds = probe(registry.url, verify_blobs=verify)
            assert isinstance(result["unfetchable"], list)


def test_a_deeply_nested_json_error_body_is_no_traceback():
    image = make_image("nested-error")
    body = b'{"errors":' + b"[" * 100000 + b"]" * 100000 + b"}"

    def nested(request):
        if request.path.endswith("/manifests/v1"):
            return Answer(500, {"Content-Type": "application/json"}, body)
        if request.path.startswith("/v2/_catalog"):
            return Answer(200, {"Content-Type": "application/json"}, b'{"repositories":' + b"[" * 100000)
        return None

    with HostileServer(registry_app(image, override=nested)) as registry:
        result, _seconds = probe(registry.url)
        named, _seconds = probe(registry.url, repositories=["app"])
    assert any(f["kind"] == "catalog" for f in result["unfetchable"])
    assert [f["status"] for f in named["unfetchable"]] == [500]


@pytest.mark.parametrize("answer", [
    pytest.param(Answer(raw=b"HTTP/1.1 \r\n\r\n"), id="no-status-code"),
    pytest.param(Answer(raw=b"garbage\r\n\r\n"), id="no-status-line"),
    pytest.param(Answer(200, {"Content-Type": "application/json"}, b'{"expires_in":"soon"}'), id="no-token"),
    pytest.param(Answer(200, {"Content-Type": "application/json"}, b'{"token":' + b"[" * 50000), id="nested"),
])
def test_a_token_server_answering_nonsense_is_a_clear_error(tls, answer):
    image = make_image("token-nonsense")
    with HostileServer(lambda request: answer, tls=tls) as tokens:
        realm = 'Bearer realm="%s/token"' % tokens.url
        with HostileServer(registry_app(image, auth=realm)) as registry:
            transport = urllib_transport(ca_path=str(tls[0]), timeout=5)
            with pytest.raises(ProbeError, match="token server"):
                probe_registry(transport, registry.url, username=USER, password=PASSWORD, deadline=20)
