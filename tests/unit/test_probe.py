"""The probe's walker, auth and classification, over an in-memory fake transport.

The fake speaks just enough of the registry v2 API (catalog and tag pagination, manifests with
Accept, blobs, Basic and Bearer challenges, a token endpoint, redirects) to pin the walker's
behaviour down request by request. Whether the real registry answers like this is the
integration suite's business (tests/integration/test_probe.py, real docker-registry).
"""

import base64
import io
import json
import re
import threading
import time
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from ansible_collections.regwarden.registry.plugins.module_utils import _probe
from ansible_collections.regwarden.registry.plugins.module_utils import _registry_http as _probe_http
from ansible_collections.regwarden.registry.plugins.module_utils._manifest import MANIFEST_MAX_BYTES
from ansible_collections.regwarden.registry.plugins.module_utils._probe import (
    blob_problem,
    literal_tags,
    manifest_problem,
    probe_registry,
    tag_matcher,
)
from ansible_collections.regwarden.registry.plugins.module_utils._registry_http import (
    AuthError,
    Fetch,
    ProbeError,
    Response,
    TransportError,
    next_link,
    parse_challenges,
    registry_error,
)
from tests.support.oci import make_image, make_multiarch, sha256_digest

BASE = "https://reg.test"
REALM = "https://auth.test/token"


def error_body(code, message):
    return json.dumps({"errors": [{"code": code, "message": message}]}).encode()


class FakeRegistry:
    """A registry v2 API in memory, callable as a probe transport."""

    def __init__(self, *, auth=None, user="ci", password="s3cret", page_limit=None, token_seconds=300):
        self.repos = {}  # repo -> {"tags": {}, "manifests": {digest: (media type, bytes)}, "blobs": {}}
        self.damage = {}  # (repo, digest) -> dict(status=, body=, announced=, served=)
        self.auth = auth  # None, "basic" or "bearer"
        self.user, self.password = user, password
        self.readable = None  # repositories the token server grants (None: all)
        self.page_limit = page_limit  # like catalog.maxentries: 400 above it
        self.token_seconds = token_seconds
        self.anonymous_tokens = False  # grant pull tokens without credentials (public registries)
        self.tokens = {}  # token -> granted scopes
        self.requests = []  # (method, url, headers)
        self.token_requests = []  # query dicts
        self.redirect_blobs_to = None  # another base URL serving blobs
        self.in_flight = 0
        self.max_in_flight = 0
        self.delay = 0.0
        self.lock = threading.Lock()

    # -- content ------------------------------------------------------------------

    def repo(self, name):
        return self.repos.setdefault(name, {"tags": {}, "manifests": {}, "blobs": {}})

    def push(self, name, manifest, tag=None):
        repo = self.repo(name)
        for child in manifest.children:
            self.push(name, child)
        for blob in manifest.blobs:
            repo["blobs"][blob.digest] = blob.data
        repo["manifests"][manifest.digest] = (manifest.media_type, manifest.payload)
        if tag:
            repo["tags"][tag] = manifest.digest
        return manifest.digest

    # -- transport ----------------------------------------------------------------

    def __call__(self, method, url, headers):
        with self.lock:
            self.requests.append((method, url, dict(headers)))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                time.sleep(self.delay)
            return self.serve(method, url, headers)
        finally:
            with self.lock:
                self.in_flight -= 1

    def serve(self, method, url, headers):
        parts = urlsplit(url)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if url.startswith(REALM):
            return self.token_endpoint(query, headers)
        if parts.netloc == "blobs.test":
            data = self.find_blob(parts.path.lstrip("/"))
            return self.answer(method, 200, data, {"Content-Length": str(len(data))})
        scope = self.scope_of(parts.path)
        denied = self.check_auth(headers, scope)
        if denied:
            return denied
        if parts.path == "/v2/":
            return self.answer(method, 200, b"{}")
        if parts.path == "/v2/_catalog":
            return self.listing(method, parts.path, sorted(self.repos), query, "repositories")
        match = re.match(r"/v2/(.+)/tags/list\Z", parts.path)
        if match:
            if match.group(1) not in self.repos:
                return self.answer(method, 404, error_body("NAME_UNKNOWN", "repository name not known"))
            tags = sorted(self.repos[match.group(1)]["tags"])
            return self.listing(method, parts.path, tags, query, "tags", name=match.group(1))
        match = re.match(r"/v2/(.+)/(manifests|blobs)/([^/]+)\Z", parts.path)
        if not match:
            return self.answer(method, 404, error_body("NOT_FOUND", "no route"))
        name, what, ref = match.groups()
        repo = self.repos.get(name, {"tags": {}, "manifests": {}, "blobs": {}})
        if what == "manifests":
            digest = repo["tags"].get(ref, ref)
            if digest not in repo["manifests"]:
                return self.answer(method, 404, error_body("MANIFEST_UNKNOWN", "manifest unknown"))
            media_type, payload = repo["manifests"][digest]
            return self.damaged(method, name, digest, payload, {"Content-Type": media_type})
        if ref not in repo["blobs"]:
            return self.answer(method, 404, error_body("BLOB_UNKNOWN", "blob unknown to registry"))
        if self.redirect_blobs_to:
            return Response(307, {"Location": "%s/%s" % (self.redirect_blobs_to, ref)}, io.BytesIO())
        return self.damaged(method, name, ref, repo["blobs"][ref], {"Content-Type": "application/octet-stream"})

    def find_blob(self, digest):
        for repo in self.repos.values():
            if digest in repo["blobs"]:
                return repo["blobs"][digest]
        return b""

    def damaged(self, method, name, digest, body, headers):
        spec = self.damage.get((name, digest), {})
        status = spec.get("status", 200)
        data = spec.get("body", body)
        if status != 200:
            return self.answer(method, status, error_body("UNKNOWN", "unknown error"))
        headers = dict(headers, **{"Docker-Content-Digest": spec.get("served", digest),
                                   "Content-Length": str(spec.get("announced", len(data)))})
        return self.answer(method, 200, data, headers)

    @staticmethod
    def answer(method, status, body, headers=None):
        headers = dict(headers or {})
        headers.setdefault("Content-Length", str(len(body)))
        return Response(status, headers, io.BytesIO(b"" if method == "HEAD" else body))

    def listing(self, method, path, names, query, key, name=None):
        n = int(query["n"]) if "n" in query else (self.page_limit or len(names) or 1)
        if self.page_limit and n > self.page_limit:
            return self.answer(method, 400, error_body("PAGINATION_NUMBER_INVALID", "invalid number of results"))
        rest = [x for x in names if "last" not in query or x > query["last"]]
        page = rest[:n]
        headers = {}
        if len(rest) > n:
            headers["Link"] = '<%s?%s>; rel="next"' % (path, urlencode({"last": page[-1], "n": n}))
        doc = {key: page} if name is None else {"name": name, key: page}
        return self.answer(method, 200, json.dumps(doc).encode(), headers)

    # -- auth -----------------------------------------------------------------------

    @staticmethod
    def scope_of(path):
        if path == "/v2/":
            return ""
        if path == "/v2/_catalog":
            return "registry:catalog:*"
        match = re.match(r"/v2/(.+)/(tags/list|manifests/[^/]+|blobs/[^/]+)\Z", path)
        return "repository:%s:pull" % match.group(1) if match else ""

    def basic(self, user=None, password=None):
        raw = "%s:%s" % (user or self.user, password or self.password)
        return "Basic " + base64.b64encode(raw.encode()).decode()

    def check_auth(self, headers, scope):
        given = headers.get("Authorization")
        if self.auth == "basic":
            if given == self.basic():
                return None
            return self.answer("GET", 401, error_body("UNAUTHORIZED", "authentication required"),
                               {"WWW-Authenticate": 'Basic realm="fake"'})
        if self.auth == "bearer":
            granted = self.tokens.get((given or "")[len("Bearer "):]) if (given or "").startswith("Bearer ") else None
            if granted is not None and (not scope or scope in granted):
                return None
            challenge = 'Bearer realm="%s",service="fake"' % REALM
            if scope:
                challenge += ',scope="%s"' % scope
            if granted is not None:
                challenge += ',error="insufficient_scope"'
            return self.answer("GET", 401, error_body("UNAUTHORIZED", "authentication required"),
                               {"WWW-Authenticate": challenge})
        return None

    def token_endpoint(self, query, headers):
        self.token_requests.append(query)
        anonymous = self.anonymous_tokens and "Authorization" not in headers
        if headers.get("Authorization") != self.basic() and not anonymous:
            return self.answer("GET", 401, error_body("UNAUTHORIZED", "bad credentials"))
        scope = query.get("scope", "")
        repo = scope.split(":")[1] if scope.startswith("repository:") else None
        granted = set() if repo and self.readable is not None and repo not in self.readable else {scope}
        token = "tok-%d" % len(self.token_requests)
        self.tokens[token] = granted
        return self.answer("GET", 200, json.dumps({"token": token, "expires_in": self.token_seconds}).encode())

    # -- what was asked ---------------------------------------------------------------

    def paths(self, method=None):
        return [urlsplit(url).path for m, url, _ in self.requests if method in (None, m)]


def run(fake, **options):
    return probe_registry(fake, BASE, **options)


def keys(result):
    return sorted((f["repo"], f["tag"], f["digest"], f["kind"]) for f in result["unfetchable"])


@pytest.fixture
def fake():
    return FakeRegistry()


# -- parsers ----------------------------------------------------------------------------------


def test_parse_challenges_bearer_with_quoted_commas_and_several_challenges():
    header = ('Bearer realm="https://auth.example/token",service="registry.example",'
              'scope="repository:team/app:pull,push",error="insufficient_scope", Basic realm="x, y"')
    assert parse_challenges(header) == [
        ("bearer", {"realm": "https://auth.example/token", "service": "registry.example",
                    "scope": "repository:team/app:pull,push", "error": "insufficient_scope"}),
        ("basic", {"realm": "x, y"}),
    ]


def test_parse_challenges_escapes_case_and_empty():
    assert parse_challenges('BASIC realm="say \\"hi\\""') == [("basic", {"realm": 'say "hi"'})]
    assert parse_challenges("Bearer realm=https://a/t, service=s") == [
        ("bearer", {"realm": "https://a/t", "service": "s"})]
    assert parse_challenges(None) == [] and parse_challenges("") == []


def test_next_link_resolves_relative_and_needs_rel_next():
    current = "https://reg.test/v2/_catalog?n=2"
    assert next_link('</v2/_catalog?last=b%2Fc&n=2>; rel="next"', current) == \
        "https://reg.test/v2/_catalog?last=b%2Fc&n=2"
    assert next_link('<https://other/x>; rel="prev", <https://other/y>; rel=next', current) == "https://other/y"
    assert next_link('</v2/_catalog?last=a>; rel="prev"', current) is None
    assert next_link(None, current) is None


def test_tag_globs_match_whole_names_case_sensitively():
    matches = tag_matcher(["v1.*", "latest"])
    assert [t for t in ["v1.2", "v1.", "xv1.2", "V1.2", "v12", "latest", "latest2"] if matches(t)] == \
        ["v1.2", "v1.", "latest"]
    assert tag_matcher(None)("anything") and tag_matcher([])("x")
    assert literal_tags(["v1.*", "1.0", "rc?", "[ab]", "main"]) == ["1.0", "main"]


def test_registry_error_quotes_the_code_and_message():
    assert registry_error(error_body("BLOB_UNKNOWN", "blob unknown")) == "BLOB_UNKNOWN: blob unknown"
    assert registry_error(b"<html>bad gateway</html>") is None
    assert registry_error(b'{"errors": []}') is None


def test_network_errors_read_as_one_line():
    import socket
    import urllib.error

    assert _probe_http.describe_error(urllib.error.URLError("no host")) == "no host"
    assert _probe_http.describe_error(urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))) == \
        "ConnectionRefusedError: [Errno 111] Connection refused"
    assert _probe_http.describe_error(urllib.error.URLError(socket.timeout("timed out"))) == "timed out"


# -- classification ---------------------------------------------------------------------------


def fetch_of(method="GET", status=200, body=b"", announced=None, served=None, error=None, error_body=b""):
    fetch = Fetch(method)
    fetch.status = status
    fetch.announced = len(body) if announced is None and status == 200 else announced
    fetch.received = None if method == "HEAD" or status != 200 else len(body)
    fetch.served_digest = served
    fetch.actual_digest = sha256_digest(body) if method == "GET" and status == 200 else None
    fetch.error = error
    fetch.error_body = error_body
    fetch.body = body
    return fetch


def test_blob_classification():
    data = b"layer bytes"
    digest = sha256_digest(data)
    assert blob_problem(fetch_of(body=data, served=digest), digest, len(data)) is None
    assert blob_problem(fetch_of(status=404, error_body=error_body("BLOB_UNKNOWN", "gone")), digest, 11) == \
        "not found (BLOB_UNKNOWN: gone)"
    assert blob_problem(fetch_of(status=500), digest, 11) == "server error 500"
    assert blob_problem(fetch_of(status=403), digest, 11) == "HTTP 403"
    # The warm descriptor cache: full Content-Length, no body.
    assert blob_problem(fetch_of(body=b"", announced=11, served=digest), digest, 11) == \
        "short body: 0 of 11 announced bytes received"
    assert blob_problem(fetch_of(body=b"", served=digest), digest, 11) == "empty body"
    assert blob_problem(fetch_of(body=b"layer bytez", served=digest), digest, 11) == \
        "content hashes to %s" % sha256_digest(b"layer bytez")
    assert blob_problem(fetch_of(body=data, served="sha256:" + "0" * 64), digest, 11) == \
        "registry served sha256:%s instead" % ("0" * 64)
    assert blob_problem(fetch_of(body=data, served=digest), digest, 99) == "11 bytes received, the descriptor says 99"
    cut = fetch_of(body=b"lay", announced=11, served=digest, error="ConnectionResetError: reset")
    assert blob_problem(cut, digest, 11) == "body broke off after 3 of 11 bytes: ConnectionResetError: reset"
    failed = Fetch("GET")
    failed.error = "timed out"
    assert blob_problem(failed, digest, 11) == "request failed: timed out"


def test_head_classification_sees_status_length_and_digest_only():
    digest = sha256_digest(b"x" * 11)
    assert blob_problem(fetch_of("HEAD", announced=11, served=digest), digest, 11) is None
    assert blob_problem(fetch_of("HEAD", announced=0, served=digest), digest, 11) == \
        "HEAD announces 0 bytes, the descriptor says 11"
    assert blob_problem(fetch_of("HEAD", status=404), digest, 11) == "not found"


def test_manifest_classification():
    image = make_image(1)
    ok = fetch_of(body=image.payload, served=image.digest)
    assert manifest_problem(ok, image.digest) is None
    assert manifest_problem(ok, None) is None
    assert manifest_problem(fetch_of(body=image.payload[:40], served=image.digest), image.digest) == \
        "content hashes to %s" % sha256_digest(image.payload[:40])
    assert manifest_problem(fetch_of(body=image.payload[:40]), None).startswith(
        "invalid manifest: manifest is not valid JSON")
    garbage = b'{"schemaVersion": 2, "mediaType": "application/x-nope"}'
    assert manifest_problem(fetch_of(body=garbage), sha256_digest(garbage)) == \
        "invalid manifest: unrecognized manifest media type application/x-nope"
    huge = fetch_of(body=b"{" * 10)
    huge.too_large = True
    assert manifest_problem(huge, None) == "invalid manifest: larger than %d bytes" % MANIFEST_MAX_BYTES


# -- the walk ---------------------------------------------------------------------------------


def test_catalog_and_tags_are_paginated_through_the_link_header(fake):
    image = make_image(1)
    for repo in ("a", "b/c", "d", "e", "f"):
        for tag in ("t1", "t2", "t3"):
            fake.push(repo, image, tag)
    result = run(fake, page_size=2)
    assert result["catalog_reachable"] is True
    assert result["counts"]["repositories"] == 5 and result["counts"]["tags"] == 15
    catalog = [url for m, url, _ in fake.requests if "/_catalog" in url]
    assert catalog == [BASE + "/v2/_catalog?n=2", BASE + "/v2/_catalog?last=b%2Fc&n=2",
                       BASE + "/v2/_catalog?last=e&n=2"]
    assert [url for _, url, _ in fake.requests if url.startswith(BASE + "/v2/a/tags/list")] == [
        BASE + "/v2/a/tags/list?n=2", BASE + "/v2/a/tags/list?last=t2&n=2"]


def test_page_size_above_the_registry_limit_falls_back_to_its_default(fake):
    fake.page_limit = 2
    for repo in ("a", "b", "c"):
        fake.push(repo, make_image(1), "t")
    result = run(fake, page_size=100)
    assert result["catalog_reachable"] is True and result["counts"]["repositories"] == 3
    assert result["unfetchable"] == []


def test_every_reference_is_fetched_and_failures_are_reported_with_their_context(fake):
    app = make_multiarch(1)  # OCI index: amd64, arm64, two attestations
    fake.push("team/app", app, "v1")
    fake.push("team/app", app, "latest")
    lib = make_image(2, flavor="docker")
    fake.push("lib", lib, "1")
    amd64, arm64 = app.children[0], app.children[1]
    del fake.repos["team/app"]["manifests"][arm64.digest]
    fake.damage[("team/app", amd64.layers[0].digest)] = {"body": b"", "announced": amd64.layers[0].size}
    fake.damage[("lib", lib.config.digest)] = {"status": 500}

    result = run(fake, verify_blobs=True)
    assert keys(result) == sorted([
        ("lib", None, lib.config.digest, "config"),
        ("team/app", None, amd64.layers[0].digest, "layer"),
        ("team/app", None, arm64.digest, "index_child"),
    ])
    child, = [f for f in result["unfetchable"] if f["kind"] == "index_child"]
    assert child == {
        "repo": "team/app", "tag": None, "digest": arm64.digest, "kind": "index_child", "status": 404,
        "bytes_announced": child["bytes_announced"], "bytes_received": None,
        "reason": "not found (MANIFEST_UNKNOWN: manifest unknown)", "tags": ["latest", "v1"],
        "parents": [app.digest], "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"},
        "attestation": False,
    }
    layer, = [f for f in result["unfetchable"] if f["kind"] == "layer"]
    assert (layer["status"], layer["bytes_announced"], layer["bytes_received"]) == (200, amd64.layers[0].size, 0)
    assert layer["parents"] == [amd64.digest] and layer["tags"] == ["latest", "v1"]
    assert layer["reason"] == "short body: 0 of %d announced bytes received" % amd64.layers[0].size
    # Two tags, one index: each manifest fetched once by tag and once by digest; each blob once.
    manifest_gets = [p for p in fake.paths("GET") if "/manifests/" in p]
    assert sorted(manifest_gets) == sorted(
        ["/v2/team/app/manifests/v1", "/v2/team/app/manifests/latest", "/v2/lib/manifests/1"]
        + ["/v2/team/app/manifests/" + m.digest for m in app.walk()] + ["/v2/lib/manifests/" + lib.digest])
    blob_gets = [p for p in fake.paths("GET") if "/blobs/" in p]
    assert len(blob_gets) == len(set(blob_gets)) == result["counts"]["blobs"]
    expected_blobs = {b.digest for m in app.walk() if m is not arm64 for b in m.blobs} | {b.digest for b in lib.blobs}
    assert {p.rsplit("/", 1)[1] for p in blob_gets} == expected_blobs
    assert result["counts"]["findings"] == 3 == len(result["unfetchable"])
    assert result["counts"]["manifests"] == len(list(app.walk())) + 1


def test_a_blob_shared_by_repositories_is_fetched_once_in_each(fake):
    image = make_image(3)
    fake.push("a", image, "1")
    fake.push("a", image, "2")
    fake.push("b", image, "1")
    run(fake, verify_blobs=True)
    blob_gets = [p for p in fake.paths("GET") if "/blobs/" in p]
    assert len(blob_gets) == 2 * len(image.blobs) and len(set(blob_gets)) == len(blob_gets)


def test_without_verify_blobs_blobs_get_a_head_only(fake):
    image = make_image(4)
    fake.push("a", image, "1")
    fake.damage[("a", image.layers[0].digest)] = {"body": b"", "announced": image.layers[0].size}
    fake.damage[("a", image.layers[1].digest)] = {"body": b""}  # zero-byte data after a restart
    result = run(fake)
    assert not [p for p in fake.paths("GET") if "/blobs/" in p]
    assert len([p for p in fake.paths("HEAD") if "/blobs/" in p]) == len(image.blobs)
    # HEAD cannot see a body that is not sent; it sees a Content-Length of 0.
    assert keys(result) == [("a", None, image.layers[1].digest, "layer")]
    assert result["verify_blobs"] is False


def test_tag_filter_and_literal_tags_for_named_repositories(fake):
    image = make_image(5)
    for tag in ("v1.0", "v1.1", "v2.0", "latest"):
        fake.push("app", image, tag)
    fake.push("other", image, "v1.0")
    result = run(fake, tags=["v1.*"])
    assert result["counts"]["tags"] == 3 and result["unfetchable"] == []
    # A tag asked for by name in a named repository is fetched even when not listed: a client
    # pulling app:v9 gets a 404, so the probe reports it. Over the whole catalog it is not.
    result = run(fake, repositories=["app"], tags=["v9", "latest"])
    assert keys(result) == [("app", "v9", None, "manifest")]
    assert result["unfetchable"][0]["status"] == 404 and result["catalog_reachable"] is None
    assert not [u for _, u, _ in fake.requests if "_catalog" in u][1:]
    assert run(fake, tags=["v9"])["unfetchable"] == []


def test_named_repository_that_does_not_exist_reports_the_tag(fake):
    fake.push("app", make_image(6), "1")
    result = run(fake, repositories=["nope"], tags=["1"])
    assert keys(result) == [("nope", "1", None, "manifest")]
    assert result["unfetchable"][0]["reason"] == "not found (MANIFEST_UNKNOWN: manifest unknown)"


def test_listing_failures_are_findings_not_crashes(fake):
    fake.push("app", make_image(7), "1")
    original = fake.serve

    def serve(method, url, headers):
        if "/tags/list" in url:
            return fake.answer(method, 500, b"oops")
        return original(method, url, headers)

    fake.serve = serve
    result = run(fake)
    assert keys(result) == [("app", None, None, "tag_list")]
    assert result["unfetchable"][0]["status"] == 500 and result["catalog_reachable"] is True

    def serve_catalog_down(method, url, headers):
        if "/_catalog" in url:
            return fake.answer(method, 503, b"")
        return original(method, url, headers)

    fake.serve = serve_catalog_down
    result = run(fake)
    assert result["catalog_reachable"] is False
    assert keys(result) == [(None, None, None, "catalog")]


def test_self_referencing_and_deeply_nested_indexes_end(fake):
    from tests.support.oci import make_index

    image = make_image(8)
    nested = image
    for _ in range(_probe.MAX_INDEX_DEPTH + 2):
        nested = make_index([nested])
    fake.push("deep", nested, "1")
    result = run(fake)
    assert [f["reason"] for f in result["unfetchable"]] == [
        "index nesting deeper than %d levels (not followed)" % _probe.MAX_INDEX_DEPTH]
    # An index listing itself cannot be built by hash; a registry could still serve one that
    # lists its own digest under another tag: the per-repository cache stops the loop.
    loop_payload = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                               "manifests": []}).encode()
    fake.repo("loop")["manifests"][sha256_digest(loop_payload)] = (
        "application/vnd.oci.image.index.v1+json", loop_payload)
    fake.repo("loop")["tags"]["1"] = sha256_digest(loop_payload)
    assert run(fake, repositories=["loop"])["unfetchable"] == []


def test_results_are_sorted_and_repeatable(fake):
    for n, repo in enumerate(("z", "a/b", "m")):
        image = make_multiarch(n)
        fake.push(repo, image, "1")
        fake.damage[(repo, image.children[0].layers[0].digest)] = {"status": 404}
        fake.damage[(repo, image.children[1].digest)] = {"status": 500}
    first, second = run(fake, concurrency=8), run(fake, concurrency=1)
    for result in (first, second):
        result.pop("duration_seconds")
    assert first == second
    assert keys(first) == sorted(keys(first)) and [f["repo"] for f in first["unfetchable"]] == sorted(
        f["repo"] for f in first["unfetchable"])
    assert all(re.match(r"sha256:[0-9a-f]{64}\Z", f["digest"]) for f in first["unfetchable"])


def test_concurrency_is_bounded(fake):
    for n in range(6):
        fake.push("r%d" % n, make_image(n, layers=4), "1")
    fake.delay = 0.02
    run(fake, concurrency=3, verify_blobs=True)
    assert 1 < fake.max_in_flight <= 3


def test_bad_options_fail_clearly(fake):
    with pytest.raises(ProbeError, match="concurrency must be between 1 and 64"):
        run(fake, concurrency=0)
    with pytest.raises(ProbeError, match="page_size"):
        run(fake, page_size=0)
    with pytest.raises(ProbeError, match="url must be"):
        probe_registry(fake, "reg.test:5000")
    with pytest.raises(ProbeError, match="password given without username"):
        run(fake, password="x")


def test_unreachable_and_not_a_registry_are_clear_failures(fake):
    def refused(method, url, headers):
        raise TransportError("ConnectionRefusedError: [Errno 111] Connection refused")

    with pytest.raises(ProbeError, match=r"cannot reach https://reg.test: ConnectionRefusedError"):
        probe_registry(refused, BASE)

    def html(method, url, headers):
        return Response(404, {}, io.BytesIO(b"<html>nginx</html>"))

    with pytest.raises(ProbeError, match=r"https://reg.test/v2/ answered 404, not a registry API"):
        probe_registry(html, BASE + "/v2/")


def test_a_redirect_keeps_credentials_on_the_registry_host_only(fake):
    fake.auth = "basic"
    image = make_image(9)
    fake.push("a", image, "1")
    fake.redirect_blobs_to = "https://blobs.test"
    result = run(fake, username="ci", password="s3cret", verify_blobs=True)
    assert result["unfetchable"] == []
    outside = [h for _, url, h in fake.requests if url.startswith("https://blobs.test/")]
    assert len(outside) == len(image.blobs) and not any("Authorization" in h for h in outside)
    inside = [h for _, url, h in fake.requests if "/blobs/" in url and url.startswith(BASE)]
    assert all(h["Authorization"] == fake.basic() for h in inside)


# -- authentication ---------------------------------------------------------------------------


def test_basic_auth_after_the_challenge_then_preemptively(fake):
    fake.auth = "basic"
    fake.push("a", make_image(10), "1")
    result = run(fake, username="ci", password="s3cret", verify_blobs=True)
    assert result["unfetchable"] == []
    first, second = fake.requests[:2]
    assert "Authorization" not in first[2] and second[2]["Authorization"] == fake.basic()
    assert all(h.get("Authorization") == fake.basic() for _, _, h in fake.requests[1:])
    # One 401 in the whole run.
    assert result["counts"]["requests"] == len(fake.requests)


def test_wrong_or_missing_basic_credentials_are_an_auth_error(fake):
    fake.auth = "basic"
    fake.push("a", make_image(11), "1")
    with pytest.raises(AuthError) as caught:
        run(fake, username="ci", password="wrong")
    assert str(caught.value) == \
        "authentication failed for https://reg.test as ci: 401 (UNAUTHORIZED: authentication required)"
    assert "wrong" not in str(caught.value)
    with pytest.raises(AuthError, match=r"https://reg\.test requires authentication: 401"):
        run(fake)


def test_bearer_tokens_are_fetched_with_basic_credentials_and_cached_per_scope(fake):
    fake.auth = "bearer"
    for repo in ("a", "b"):
        fake.push(repo, make_multiarch(12), "1")
        fake.push(repo, make_multiarch(12), "2")
    result = run(fake, username="ci", password="s3cret", verify_blobs=True, concurrency=4)
    assert result["unfetchable"] == [] and result["counts"]["tags"] == 4
    scopes = [q.get("scope", "") for q in fake.token_requests]
    assert sorted(scopes) == ["", "registry:catalog:*", "repository:a:pull", "repository:b:pull"]
    assert all(q["service"] == "fake" and q["account"] == "ci" for q in fake.token_requests)
    # Only the first request of the run was refused.
    refused = [r for r in fake.requests if "Authorization" not in r[2] and not r[1].startswith(REALM)]
    assert len(refused) == 1


def test_bearer_tokens_are_renewed_when_they_expire(fake, monkeypatch):
    fake.auth = "bearer"
    fake.token_seconds = 10
    fake.push("a", make_image(13), "1")
    clock = [1000.0]
    monkeypatch.setattr(_probe.time, "monotonic", lambda: clock[0])
    probe = _probe.RegistryProbe(fake, BASE, username="ci", password="s3cret", repositories=["a"])
    probe.run()
    count = len(fake.token_requests)
    assert probe.http.auth.header_for("repository:a:pull") == probe.http.auth.header_for("repository:a:pull")
    assert len(fake.token_requests) == count
    clock[0] += 60
    probe.http.auth.header_for("repository:a:pull")
    assert len(fake.token_requests) == count + 1


def test_bearer_bad_password_and_missing_scope_are_auth_errors(fake):
    fake.auth = "bearer"
    fake.push("a", make_image(14), "1")
    fake.push("secret", make_image(15), "1")
    with pytest.raises(AuthError) as caught:
        run(fake, username="ci", password="wrong")
    assert str(caught.value) == ("authentication failed for https://reg.test as ci: 401 from the token "
                                 "server https://auth.test/token (UNAUTHORIZED: bad credentials)")
    fake.readable = {"a"}
    assert run(fake, username="ci", password="s3cret", repositories=["a"])["unfetchable"] == []
    with pytest.raises(AuthError, match=r"as ci is not authorized for repository:secret:pull"):
        run(fake, username="ci", password="s3cret", repositories=["a", "secret"])


def test_bearer_without_credentials_asks_for_anonymous_tokens(fake):
    fake.auth = "bearer"
    fake.push("public/app", make_image(16), "1")
    with pytest.raises(AuthError) as caught:
        run(fake)
    assert str(caught.value) == ("https://reg.test requires authentication: the token server "
                                 "https://auth.test/token answered 401 to an anonymous request; "
                                 "set username and password")
    fake.anonymous_tokens = True
    fake.token_requests.clear()
    assert run(fake, verify_blobs=True)["unfetchable"] == []
    assert fake.token_requests and all("account" not in q for q in fake.token_requests)
    assert not [r for r in fake.requests if r[1].startswith(REALM) and "Authorization" in r[2]]


def test_an_auth_error_stops_the_pool_quickly(fake):
    fake.auth = "bearer"
    for n in range(20):
        fake.push("r%02d" % n, make_image(n), "1")
    fake.readable = {"r00"}
    with pytest.raises(AuthError):
        run(fake, username="ci", password="s3cret", concurrency=2)
    # Tag lists of most repositories were never asked for once the first refusal came.
    assert len([p for p in fake.paths() if p.endswith("/tags/list")]) < 20
