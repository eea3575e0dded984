# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Walk a registry over its HTTP API the way a client pulls, and report what cannot be fetched.

Pure Python with no Ansible import: the HTTP layer is a *transport*, a callable
``transport(method, url, headers) -> Response`` that raises :class:`TransportError` when no HTTP
answer came. The module builds one on ``ansible.module_utils.urls``; :func:`urllib_transport`
builds one on the standard library (for a probe run without Ansible); unit tests use a fake.

The walk goes level by level so that a bounded thread pool never waits on itself:
catalog -> tag lists -> manifests by tag -> manifests by digest (then index children, nested
indexes) -> configs and layers, each fetched once per repository.
"""

import base64
import fnmatch
import hashlib
import http.client
import json
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote, urlencode, urljoin, urlsplit

from ansible_collections.regwarden.registry.plugins.module_utils._manifest import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    MANIFEST_MAX_BYTES,
    OCI_INDEX,
    OCI_MANIFEST,
    InvalidManifest,
    parse_manifest,
)

# Without these a 2.8 registry answers 404 for OCI content, or rewrites a list to one platform.
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))

KIND_CATALOG = "catalog"
KIND_TAG_LIST = "tag_list"
KIND_MANIFEST = "manifest"
KIND_INDEX_CHILD = "index_child"
KIND_CONFIG = "config"
KIND_LAYER = "layer"

DEFAULT_PAGE_SIZE = 100
DEFAULT_CONCURRENCY = 4
MAX_CONCURRENCY = 64
# Bounds on loops a broken or hostile server could make endless.
MAX_PAGES = 10000
MAX_REDIRECTS = 5
MAX_INDEX_DEPTH = 4
# An error body is read only to quote the registry's error code.
ERROR_BODY_BYTES = 64 * 1024
READ_CHUNK_BYTES = 1024 * 1024
# Token lifetime when the token server does not say (the distribution token spec's default).
DEFAULT_TOKEN_SECONDS = 60
TOKEN_REFRESH_MARGIN_S = 5
USER_AGENT = "regwarden-registry-probe"
REDIRECT_STATUSES = frozenset((301, 302, 303, 307, 308))
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}\Z")
_GLOB_CHARS = frozenset("*?[")


class ProbeError(Exception):
    """The probe could not run (unreachable URL, bad options): a plain message for the operator."""


class _Skipped(Exception):
    """A pool call not made because an earlier one failed (never reaches the caller)."""


class AuthError(ProbeError):
    """The registry or its token server refused the credentials."""


class TransportError(Exception):
    """No HTTP answer (connection refused, TLS failure, timeout) or the body broke off."""


# -- transport ----------------------------------------------------------------------------


class Response:
    """One HTTP answer: status, lower-cased headers and a body read in chunks.

    ``body`` is anything with ``read(size)`` (and optionally ``close()``); a failure while
    reading surfaces as :class:`TransportError`.
    """

    def __init__(self, status, headers, body=None):
        self.status = status
        self.headers = {str(k).lower(): v for k, v in (headers or {}).items()}
        self._body = body

    def header(self, name):
        return self.headers.get(name.lower())

    def read(self, size):
        if self._body is None:
            return b""
        try:
            return self._body.read(size) or b""
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise TransportError(describe_error(exc)) from None

    def close(self):
        close = getattr(self._body, "close", None)
        if close is not None:
            try:
                close()
            except (OSError, http.client.HTTPException):
                pass


def describe_error(exc):
    """A one-line reason for a network error (URLError hides the real one in ``reason``)."""
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        if not isinstance(exc.reason, BaseException):
            return str(exc.reason)
        exc = exc.reason
    if isinstance(exc, socket.timeout):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text if text.startswith(type(exc).__name__) else "%s: %s" % (type(exc).__name__, text)


def opener_transport(open_func):
    """A transport over a urllib-style ``open_func(method, url, headers)`` that raises
    ``HTTPError`` for non-2xx answers (as ``ansible.module_utils.urls.Request.open`` and
    ``urllib.request`` do) and must not follow redirects: the walker follows them itself."""

    def transport(method, url, headers):
        try:
            raw = open_func(method, url, headers)
        except urllib.error.HTTPError as exc:
            return Response(exc.code, exc.headers, exc)
        except (urllib.error.URLError, OSError, http.client.HTTPException, ssl.SSLError, ValueError) as exc:
            raise TransportError(describe_error(exc)) from None
        return Response(getattr(raw, "status", None) or raw.getcode(), raw.headers, raw)

    return transport


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises HTTPError with the 3xx: the walker follows it


def urllib_transport(validate_certs=True, ca_path=None, timeout=30.0):
    """A transport on the standard library alone (no Ansible), for a probe run from a script."""
    if validate_certs:
        context = ssl.create_default_context(cafile=ca_path)
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _NoRedirect())

    def open_func(method, url, headers):
        return opener.open(urllib.request.Request(url, headers=headers, method=method), timeout=timeout)

    return opener_transport(open_func)


# -- small parsers (unit-tested) ----------------------------------------------------------

_TOKEN = re.compile(r'\s*([!#$%&\'*+\-.^_`|~0-9A-Za-z]+)\s*')
_PARAM = re.compile(r'\s*([!#$%&\'*+\-.^_`|~0-9A-Za-z]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*')


def parse_challenges(header):
    """``WWW-Authenticate`` -> ``[(scheme lower-cased, {param: value})]``.

    Handles several challenges in one header, quoted values with commas, and escapes.
    """
    challenges = []
    text = header or ""
    pos = 0
    while pos < len(text):
        if text[pos] in ", ":
            pos += 1
            continue
        match = _TOKEN.match(text, pos)
        if not match:
            break
        scheme, pos = match.group(1).lower(), match.end()
        params = {}
        while pos < len(text):
            param = _PARAM.match(text, pos)
            if not param:
                break
            value = param.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            params[param.group(1).lower()] = value
            pos = param.end()
            if pos < len(text) and text[pos] == ",":
                pos += 1
        challenges.append((scheme, params))
    return challenges


def next_link(header, current_url):
    """The absolute URL of ``rel="next"`` in a ``Link`` header, or None."""
    for part in (header or "").split(","):
        match = re.match(r'\s*<([^>]*)>(.*)', part)
        if match and re.search(r';\s*rel="?next"?', match.group(2)):
            return urljoin(current_url, match.group(1))
    return None


def tag_matcher(patterns):
    """Shell-style globs matched against the whole tag, case-sensitively; None matches all."""
    if not patterns:
        return lambda tag: True
    compiled = [re.compile(fnmatch.translate(p)) for p in patterns]
    return lambda tag: any(c.match(tag) for c in compiled)


def literal_tags(patterns):
    """Patterns without glob characters: exact tags a client would pull by name."""
    return sorted(p for p in (patterns or ()) if not _GLOB_CHARS & set(p))


def registry_error(body):
    """``"CODE: message"`` from a registry's JSON error body, else None."""
    try:
        doc = json.loads(body.decode("utf-8", "replace"))
        error = doc["errors"][0]
        code, message = error.get("code"), error.get("message")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None
    return ": ".join(str(x) for x in (code, message) if x) or None


# -- fetch records and their classification --------------------------------------------------


class Fetch:
    """What one GET or HEAD gave: status (None when no HTTP answer), announced and received
    byte counts, the digest the registry claimed and the one the bytes hash to."""

    __slots__ = ("actual_digest", "announced", "body", "content_type", "error", "error_body", "method",
                 "received", "served_digest", "status", "too_large")

    def __init__(self, method="GET"):
        self.method = method
        self.status = None
        self.announced = None
        self.received = None
        self.served_digest = None
        self.actual_digest = None
        self.content_type = None
        self.error = None
        self.error_body = b""
        self.body = None  # kept for manifests only
        self.too_large = False  # a manifest body went past MANIFEST_MAX_BYTES (reading stopped)


def _status_problem(fetch):
    if fetch.status is None:
        return "request failed: %s" % fetch.error
    if fetch.status == 200:
        return None
    detail = registry_error(fetch.error_body)
    if fetch.status == 404:
        text = "not found"
    elif fetch.status >= 500:
        text = "server error %d" % fetch.status
    else:
        text = "HTTP %d" % fetch.status
    return "%s (%s)" % (text, detail) if detail else text


def _body_problem(fetch):
    if fetch.error:
        return "body broke off after %d of %s bytes: %s" % (
            fetch.received, fetch.announced if fetch.announced is not None else "?", fetch.error)
    if fetch.announced is not None and fetch.received < fetch.announced:
        return "short body: %d of %d announced bytes received" % (fetch.received, fetch.announced)
    return None


def manifest_problem(fetch, expected_digest):
    """Why a manifest GET did not give a client a usable manifest, or None."""
    problem = _status_problem(fetch)
    if problem:
        return problem
    if fetch.too_large:
        return "invalid manifest: larger than %d bytes" % MANIFEST_MAX_BYTES
    problem = _body_problem(fetch)
    if problem:
        return problem
    if expected_digest and fetch.served_digest and fetch.served_digest != expected_digest:
        return "registry served %s instead" % fetch.served_digest
    if expected_digest and fetch.actual_digest != expected_digest:
        if fetch.received == 0:
            return "empty body"
        return "content hashes to %s" % fetch.actual_digest
    try:
        parse_manifest(fetch.body or b"")
    except InvalidManifest as exc:
        return "invalid manifest: %s" % exc
    return None


def blob_problem(fetch, digest, size):
    """Why a blob GET (or HEAD, without a body) would not give a client the blob, or None."""
    problem = _status_problem(fetch)
    if problem:
        return problem
    if fetch.served_digest and fetch.served_digest != digest:
        return "registry served %s instead" % fetch.served_digest
    if fetch.method == "HEAD":
        if size is not None and fetch.announced is not None and fetch.announced != size:
            return "HEAD announces %d bytes, the descriptor says %d" % (fetch.announced, size)
        return None
    problem = _body_problem(fetch)
    if problem:
        return problem
    if fetch.actual_digest != digest:
        return "empty body" if fetch.received == 0 else "content hashes to %s" % fetch.actual_digest
    if size is not None and fetch.received != size:
        return "%d bytes received, the descriptor says %d" % (fetch.received, size)
    return None


# -- authentication -----------------------------------------------------------------------


class _Auth:
    """Basic auth or Bearer tokens, learnt from the registry's challenges; tokens cached per scope."""

    def __init__(self, client, username, password):
        self.client = client
        self.username = username
        self.password = password
        self.mode = None  # None (open registry), "basic" or "bearer"
        self.bearer = {}  # realm, service from the challenge
        self.tokens = {}  # scope -> (token, expires at, monotonic)
        self.lock = threading.Lock()

    def _basic(self):
        raw = ("%s:%s" % (self.username, self.password or "")).encode("utf-8")
        return "Basic " + base64.b64encode(raw).decode("ascii")

    def header_for(self, scope):
        if self.mode == "basic":
            return self._basic()
        if self.mode == "bearer":
            return "Bearer " + self.token(scope)
        return None

    def token(self, scope, challenge_scope=None, refresh=False):
        with self.lock:
            cached = self.tokens.get(scope)
            if cached and not refresh and cached[1] - TOKEN_REFRESH_MARGIN_S > time.monotonic():
                return cached[0]
            token, lifetime = self._fetch_token(challenge_scope if challenge_scope is not None else scope)
            self.tokens[scope] = (token, time.monotonic() + lifetime)
            return token

    def _fetch_token(self, scope):
        realm = self.bearer.get("realm")
        if not realm:
            raise ProbeError("%s asked for a Bearer token without a realm" % self.client.url)
        query = {}
        if self.bearer.get("service"):
            query["service"] = self.bearer["service"]
        if scope:
            query["scope"] = scope
        headers = {"User-Agent": USER_AGENT}
        if self.username:
            query["account"] = self.username
            headers["Authorization"] = self._basic()
        url = realm + ("&" if "?" in realm else "?") + urlencode(sorted(query.items())) if query else realm
        try:
            response = self.client.transport("GET", url, headers)
        except TransportError as exc:
            raise ProbeError("token server %s for %s unreachable: %s" % (realm, self.client.url, exc)) from None
        self.client.count_request()
        try:
            body = _read_limited(response, ERROR_BODY_BYTES)
        except TransportError as exc:
            raise ProbeError("token server %s for %s broke off: %s" % (realm, self.client.url, exc)) from None
        finally:
            response.close()
        if response.status in (401, 403):
            if not self.username:
                raise AuthError("%s requires authentication: the token server %s answered %d to an anonymous "
                                "request; set username and password" % (self.client.url, realm, response.status))
            raise AuthError("authentication failed for %s as %s: %d from the token server %s%s" % (
                self.client.url, self.username, response.status, realm,
                _suffix(registry_error(body) or _text(body))))
        if response.status != 200:
            raise ProbeError("token server %s answered %d: %s" % (realm, response.status, _text(body)))
        try:
            doc = json.loads(body.decode("utf-8"))
            token = doc.get("token") or doc.get("access_token")
            lifetime = int(doc.get("expires_in") or DEFAULT_TOKEN_SECONDS)
        except (ValueError, AttributeError, TypeError):
            token = None
        if not token or not isinstance(token, str):
            raise ProbeError("token server %s answered without a token" % realm)
        return token, max(lifetime, TOKEN_REFRESH_MARGIN_S + 1)

    def handle_challenge(self, response, scope, sent, retried):
        """Learn from a 401: return to retry the request, or raise AuthError.

        ``sent``: the refused request carried credentials; ``retried``: it was already a retry.
        """
        challenges = dict(parse_challenges(response.header("www-authenticate")))
        detail = registry_error(getattr(response, "error_body", b""))
        user = self.username or "(anonymous)"
        if "bearer" in challenges:
            # Without a username the token is asked for anonymously (public registries grant pull).
            params = challenges["bearer"]
            if sent and self.mode == "bearer":
                if params.get("error") == "insufficient_scope":
                    raise AuthError("%s as %s is not authorized for %s (401 insufficient_scope)" % (
                        self.client.url, user, params.get("scope") or scope or "the registry"))
                if retried:
                    raise AuthError("authentication failed for %s as %s: 401 with a fresh token%s" % (
                        self.client.url, user, _suffix(detail)))
            # First challenge, or a cached token expired early: fetch one for this scope.
            self.mode = "bearer"
            self.bearer = {"realm": params.get("realm"), "service": params.get("service")}
            self.token(scope, challenge_scope=params.get("scope", scope), refresh=True)
            return
        if not self.username:
            raise AuthError("%s requires authentication: 401%s; set username and password" % (
                self.client.url, _suffix(detail)))
        if "basic" in challenges:
            if sent and self.mode == "basic":
                raise AuthError("authentication failed for %s as %s: 401%s" % (
                    self.client.url, self.username, _suffix(detail)))
            self.mode = "basic"
            return
        raise AuthError("%s answered 401 with no Basic or Bearer challenge (%r)" % (
            self.client.url, response.header("www-authenticate")))


def _suffix(detail):
    return " (%s)" % detail if detail else ""


def _text(body, limit=200):
    return body[:limit].decode("utf-8", "replace").strip()


def _read_limited(response, limit):
    chunks, total = [], 0
    while total < limit:
        chunk = response.read(min(READ_CHUNK_BYTES, limit - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


# -- the HTTP client ----------------------------------------------------------------------


class RegistryHTTP:
    """Requests to one registry: auth, redirects (credentials never sent to another host),
    request counting. Thread-safe."""

    def __init__(self, transport, url, username=None, password=None):
        url = (url or "").strip().rstrip("/")
        if url.endswith("/v2"):
            url = url[:-3]
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ProbeError("url must be http(s)://host[:port], not %r" % url)
        self.url = url
        self.netloc = parts.netloc
        self.transport = transport
        self.auth = _Auth(self, username, password)
        self.requests = 0
        self.bytes_received = 0
        self._count_lock = threading.Lock()

    def count_request(self):
        with self._count_lock:
            self.requests += 1

    def count_bytes(self, count):
        with self._count_lock:
            self.bytes_received += count

    def _send(self, method, url, headers):
        """One request, following redirects; Authorization only to the registry's own host."""
        for _redirect in range(MAX_REDIRECTS + 1):
            sent = dict(headers)
            if urlsplit(url).netloc != self.netloc:
                sent.pop("Authorization", None)
            self.count_request()
            response = self.transport(method, url, sent)
            location = response.header("location")
            if response.status not in REDIRECT_STATUSES or not location:
                return response
            response.close()
            url = urljoin(url, location)
        raise TransportError("more than %d redirects" % MAX_REDIRECTS)

    def request(self, method, path_or_url, scope, accept=None):
        """A response with status; on 401 learn the challenge and retry (bounded)."""
        url = path_or_url if "://" in path_or_url else self.url + path_or_url
        for attempt in range(3):
            headers = {"User-Agent": USER_AGENT}
            if accept:
                headers["Accept"] = accept
            authorization = self.auth.header_for(scope)
            if authorization:
                headers["Authorization"] = authorization
            response = self._send(method, url, headers)
            if response.status != 401:
                return response
            response.error_body = _read_limited(response, ERROR_BODY_BYTES) if method != "HEAD" else b""
            response.close()
            self.auth.handle_challenge(response, scope, sent=bool(authorization), retried=attempt > 0)
        raise AuthError("authentication failed for %s as %s: 401 after retrying" % (self.url, self.auth.username))

    def ping(self):
        """``GET /v2/``: reachable, a registry, and the credentials work."""
        try:
            response = self.request("GET", "/v2/", scope="")
        except TransportError as exc:
            raise ProbeError("cannot reach %s: %s" % (self.url, exc)) from None
        body = _read_limited(response, ERROR_BODY_BYTES)
        response.close()
        if response.status != 200:
            raise ProbeError("%s/v2/ answered %d, not a registry API%s" % (
                self.url, response.status, _suffix(registry_error(body) or _text(body))))

    def get_json(self, url, scope):
        """(status, doc or None, error text, next page URL)."""
        try:
            response = self.request("GET", url, scope)
        except TransportError as exc:
            return None, None, str(exc), None
        try:
            body = _read_limited(response, MANIFEST_MAX_BYTES)
        except TransportError as exc:
            response.close()
            return response.status, None, str(exc), None
        response.close()
        if response.status != 200:
            return response.status, None, registry_error(body) or _text(body), None
        try:
            doc = json.loads(body.decode("utf-8"))
        except ValueError as exc:
            return response.status, None, "invalid JSON: %s" % exc, None
        absolute = url if "://" in url else self.url + url
        return response.status, doc, None, next_link(response.header("link"), absolute)

    def fetch(self, method, path, scope, accept=None, keep_body=False):
        """Fetch and account: status, Content-Length, bytes, sha256 of the body."""
        fetch = Fetch(method)
        try:
            response = self.request(method, path, scope, accept)
        except TransportError as exc:
            fetch.error = str(exc)
            return fetch
        fetch.status = response.status
        fetch.served_digest = response.header("docker-content-digest")
        fetch.content_type = response.header("content-type")
        length = response.header("content-length")
        fetch.announced = int(length) if length and length.strip().isdigit() else None
        try:
            if response.status != 200:
                fetch.error_body = _read_limited(response, ERROR_BODY_BYTES) if method != "HEAD" else b""
                return fetch
            if method == "HEAD":
                return fetch
            digest = hashlib.sha256()
            chunks = [] if keep_body else None
            fetch.received = 0
            limit = MANIFEST_MAX_BYTES + 1 if keep_body else None
            while limit is None or fetch.received < limit:
                try:
                    chunk = response.read(READ_CHUNK_BYTES)
                except TransportError as exc:
                    fetch.error = str(exc)
                    break
                if not chunk:
                    break
                fetch.received += len(chunk)
                digest.update(chunk)
                if chunks is not None:
                    chunks.append(chunk)
            fetch.too_large = limit is not None and fetch.received >= limit
            self.count_bytes(fetch.received)
            fetch.actual_digest = "sha256:" + digest.hexdigest()
            if chunks is not None:
                fetch.body = b"".join(chunks)
            return fetch
        finally:
            response.close()


# -- the walk -----------------------------------------------------------------------------


class _Node:
    """A manifest (by digest) or a blob in one repository, and who references it."""

    __slots__ = ("attestation", "digest", "doc", "fetch", "kind", "parents", "platform", "problem", "repo", "size",
                 "tags")

    def __init__(self, repo, digest, kind, size=None, platform=None, attestation=None):
        self.repo = repo
        self.digest = digest
        self.kind = kind
        self.size = size
        self.platform = platform
        self.attestation = attestation
        self.parents = set()
        self.tags = set()
        self.fetch = None
        self.problem = None
        self.doc = None  # parsed manifest (_manifest.Manifest) when usable


class RegistryProbe:
    """One probe run; :meth:`run` returns the result dict (see the registry_probe module)."""

    def __init__(self, transport, url, username=None, password=None, repositories=None, tags=None,
                 verify_blobs=False, concurrency=DEFAULT_CONCURRENCY, page_size=DEFAULT_PAGE_SIZE):
        if not 1 <= int(concurrency) <= MAX_CONCURRENCY:
            raise ProbeError("concurrency must be between 1 and %d, not %s" % (MAX_CONCURRENCY, concurrency))
        if int(page_size) < 1:
            raise ProbeError("page_size must be at least 1, not %s" % page_size)
        if password and not username:
            raise ProbeError("password given without username")
        self.http = RegistryHTTP(transport, url, username, password)
        self.repositories = sorted(set(repositories)) if repositories else None
        self.tag_patterns = list(tags or [])
        self.matches = tag_matcher(self.tag_patterns)
        self.verify_blobs = verify_blobs
        self.concurrency = int(concurrency)
        self.page_size = int(page_size)
        self.findings = []

    # -- helpers ---------------------------------------------------------------------

    @staticmethod
    def _map(func, items, pool):
        """``func`` over ``items`` in the pool, results in order. The first error propagates, and
        once a call has failed no further call does any work (an auth refusal stops the walk
        at once, however far the workers had run ahead of the results read so far)."""
        failed = threading.Event()

        def guarded(item):
            if failed.is_set():
                raise _Skipped()
            try:
                return func(item)
            except BaseException:
                failed.set()
                raise

        futures = [pool.submit(guarded, item) for item in items]
        try:
            return [future.result() for future in futures]
        except _Skipped:
            # A worker may dequeue a call, lose the CPU and start it after a later call failed:
            # the failure that set the flag is then further on. Skipped calls end at once.
            for future in futures:
                error = future.exception()
                if error is not None and not isinstance(error, _Skipped):
                    raise error from None
            raise
        finally:
            for future in futures:
                future.cancel()

    def _finding(self, repo, tag, digest, kind, fetch, reason, **extra):
        status = fetch.status if fetch and fetch.status is not None else (fetch.error if fetch else None)
        finding = {
            "repo": repo,
            "tag": tag,
            "digest": digest,
            "kind": kind,
            "status": status,
            "bytes_announced": fetch.announced if fetch else None,
            "bytes_received": fetch.received if fetch else None,
            "reason": reason,
        }
        finding.update(extra)
        self.findings.append(finding)

    # -- listing ---------------------------------------------------------------------

    def _pages(self, path, key, scope):
        """All entries of a paginated listing: ``(names, status, error)``; error None when complete.

        Asks for ``page_size`` entries a page and follows ``Link: <...>; rel="next"``. A 2.8
        registry refuses ``n`` above its ``catalog.maxentries`` (400 PAGINATION_NUMBER_INVALID):
        then the first page is asked again without ``n`` (the registry picks its maximum).
        """
        names = []
        url = "%s?%s" % (path, urlencode({"n": self.page_size}))
        seen = set()
        for page in range(MAX_PAGES):
            status, doc, error, nxt = self.http.get_json(url, scope)
            if page == 0 and status == 400 and "PAGINATION_NUMBER_INVALID" in (error or ""):
                status, doc, error, nxt = self.http.get_json(path, scope)
            entries = _json_list(doc, key)
            if error or entries is None:
                return names, status, error or "no %s list in the answer" % key
            names += entries
            if not nxt or nxt in seen:
                return names, status, None
            seen.add(nxt)
            url = nxt
        return names, None, "more than %d pages" % MAX_PAGES

    def _catalog(self):
        """(repositories, reachable)."""
        repos, status, error = self._pages("/v2/_catalog", "repositories", "registry:catalog:*")
        if error:
            self._finding(None, None, None, KIND_CATALOG, _listing_fetch(status, error), "catalog: %s" % error)
        return sorted(set(repos)), error is None

    def _tags(self, repo):
        """Tags of ``repo`` to probe (listed and matching, plus literal ones asked for by name),
        and the listing failure (status, error) or None."""
        listed, status, error = self._pages("/v2/%s/tags/list" % quote(repo, safe="/"), "tags", _repo_scope(repo))
        failure = None
        if error and status != 404:  # 404: no tags (2.8's NAME_UNKNOWN for a repo without a tags dir)
            failure = (status, error)
        wanted = {t for t in listed if self.matches(t)}
        if self.repositories is not None:
            wanted |= set(literal_tags(self.tag_patterns))
        return sorted(wanted), failure

    # -- manifests -------------------------------------------------------------------

    def _get_manifest(self, repo, reference):
        return self.http.fetch("GET", "/v2/%s/manifests/%s" % (quote(repo, safe="/"), quote(reference, safe=":")),
                               _repo_scope(repo), accept=MANIFEST_ACCEPT, keep_body=True)

    def _walk_repo_manifests(self, pool, tag_refs):
        """Manifests by tag, then by digest, then index children, level by level."""
        tag_fetches = self._map(lambda ref: self._get_manifest(*ref), tag_refs, pool)
        nodes = {}  # (repo, digest) -> _Node
        level = []
        for (repo, tag), fetch in zip(tag_refs, tag_fetches):
            expected = fetch.served_digest or fetch.actual_digest
            problem = manifest_problem(fetch, fetch.served_digest)
            if problem:
                digest = fetch.served_digest if fetch.served_digest and _DIGEST.match(fetch.served_digest) else None
                self._finding(repo, tag, digest, KIND_MANIFEST, fetch, problem, tags=[tag])
                continue
            node = nodes.get((repo, expected))
            if node is None:
                node = nodes[(repo, expected)] = _Node(repo, expected, KIND_MANIFEST)
                level.append(node)
            node.kind = KIND_MANIFEST
            node.tags.add(tag)
        depth = 0
        while level:
            if depth > MAX_INDEX_DEPTH:
                for node in level:
                    node.problem = "index nesting deeper than %d levels (not followed)" % MAX_INDEX_DEPTH
                break
            fetches = self._map(lambda n: self._get_manifest(n.repo, n.digest), level, pool)
            next_level = []
            for node, fetch in zip(level, fetches):
                node.fetch = fetch
                node.problem = manifest_problem(fetch, node.digest)
                if node.problem:
                    continue
                node.doc = parse_manifest(fetch.body)
                if not node.doc.is_index:
                    continue
                for hex_digest, platform, attestation in node.doc.children:
                    child_digest = "sha256:" + hex_digest
                    child = nodes.get((node.repo, child_digest))
                    if child is None:
                        child = _Node(node.repo, child_digest, KIND_INDEX_CHILD, platform=platform,
                                      attestation=attestation)
                        nodes[(node.repo, child_digest)] = child
                        next_level.append(child)
                    child.parents.add(node.digest)
            level = next_level
            depth += 1
        return nodes

    # -- blobs -----------------------------------------------------------------------

    def _get_blob(self, node):
        path = "/v2/%s/blobs/%s" % (quote(node.repo, safe="/"), node.digest)
        if self.verify_blobs:
            return self.http.fetch("GET", path, _repo_scope(node.repo))
        return self.http.fetch("HEAD", path, _repo_scope(node.repo))

    def _blobs_of(self, manifests):
        blobs = {}
        for node in manifests:
            if node.doc is None or node.doc.is_index:
                continue
            sizes = _descriptor_sizes(node.fetch.body)
            for hex_digest, kind in node.doc.blobs:
                digest = "sha256:" + hex_digest
                blob = blobs.get((node.repo, digest))
                if blob is None:
                    blob = blobs[(node.repo, digest)] = _Node(node.repo, digest, kind, size=sizes.get(digest))
                blob.parents.add(node.digest)
                blob.tags |= node.tags
        return blobs

    # -- run -------------------------------------------------------------------------

    def run(self):
        started = time.monotonic()
        self.http.ping()
        catalog_reachable = None
        if self.repositories is None:
            repositories, catalog_reachable = self._catalog()
        else:
            repositories = self.repositories
        pool = ThreadPoolExecutor(max_workers=self.concurrency)
        try:
            tag_lists = self._map(self._tags, repositories, pool)
            tag_refs = []
            for repo, (tags, failure) in zip(repositories, tag_lists):
                if failure:
                    self._finding(repo, None, None, KIND_TAG_LIST, _listing_fetch(*failure),
                                  "tag list: %s" % failure[1])
                tag_refs += [(repo, tag) for tag in tags]
            nodes = self._walk_repo_manifests(pool, tag_refs)
            manifests = [nodes[key] for key in sorted(nodes)]
            _propagate_tags(nodes)
            blobs = self._blobs_of(manifests)
            blob_nodes = [blobs[key] for key in sorted(blobs)]
            fetches = self._map(self._get_blob, blob_nodes, pool)
        finally:
            pool.shutdown(wait=True)
        for node in manifests:
            if node.problem:
                self._finding(node.repo, None, node.digest, node.kind, node.fetch, node.problem,
                              tags=sorted(node.tags), parents=sorted(node.parents), platform=node.platform,
                              attestation=node.attestation)
        for node, fetch in zip(blob_nodes, fetches):
            problem = blob_problem(fetch, node.digest, node.size)
            if problem:
                self._finding(node.repo, None, node.digest, node.kind, fetch, problem,
                              tags=sorted(node.tags), parents=sorted(node.parents))
        for finding in self.findings:
            finding.setdefault("tags", [])
            finding.setdefault("parents", [])
            finding.setdefault("platform", None)
            finding.setdefault("attestation", None)
        self.findings.sort(key=lambda f: (f["repo"] or "", f["tag"] or "", f["digest"] or "", f["kind"]))
        return {
            "url": self.http.url,
            "registries": [self.http.url],
            "catalog_reachable": catalog_reachable,
            "verify_blobs": bool(self.verify_blobs),
            "unfetchable": self.findings,
            "counts": {
                "repositories": len(repositories),
                "tags": len(tag_refs),
                "manifests": len(manifests),
                "blobs": len(blob_nodes),
                "requests": self.http.requests,
                "bytes_received": self.http.bytes_received,
                "findings": len(self.findings),
            },
            "duration_seconds": round(time.monotonic() - started, 3),
            "changed": False,
        }


def _repo_scope(repo):
    return "repository:%s:pull" % repo


def _json_list(doc, key):
    """The strings of ``doc[key]`` (null counts as empty), or None when the answer is malformed."""
    if not isinstance(doc, dict):
        return None
    values = doc.get(key)
    if values is None:
        return []
    if not isinstance(values, list):
        return None
    return [v for v in values if isinstance(v, str)]


def _listing_fetch(status, error):
    fetch = Fetch()
    fetch.status = status
    fetch.error = error
    return fetch


def _propagate_tags(nodes):
    """Tags pulling each manifest: a child inherits the tags of every index that lists it."""
    children = {}
    for (repo, digest), node in nodes.items():
        for parent in node.parents:
            children.setdefault((repo, parent), []).append((repo, digest))
    for key in sorted(nodes):
        root = nodes[key]
        if not root.tags:
            continue
        stack, seen = [key], {key}
        while stack:
            for child_key in children.get(stack.pop(), ()):
                if child_key not in seen:
                    seen.add(child_key)
                    nodes[child_key].tags |= root.tags
                    stack.append(child_key)


def _descriptor_sizes(body):
    """digest -> size from a manifest's config and layer descriptors (parse_manifest drops sizes)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return {}
    sizes = {}
    if not isinstance(doc, dict):
        return sizes
    layers = doc.get("layers")
    for desc in [doc.get("config")] + (layers if isinstance(layers, list) else []):
        if isinstance(desc, dict) and isinstance(desc.get("size"), int) and isinstance(desc.get("digest"), str):
            sizes.setdefault(desc["digest"], desc["size"])
    return sizes


def probe_registry(transport, url, **options):
    """Walk the registry at ``url`` through ``transport``; see :class:`RegistryProbe`."""
    return RegistryProbe(transport, url, **options).run()


def count_findings(result):
    return len(result["unfetchable"])
