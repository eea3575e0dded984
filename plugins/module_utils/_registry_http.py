# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""An HTTP client for one registry's v2 API, safe against a hostile or misconfigured server.

Pure Python with no Ansible import. The HTTP layer is a *transport*, a callable
``transport(method, url, headers) -> Response`` that raises TransportError when no HTTP answer
came; the module builds one on ``ansible.module_utils.urls``, urllib_transport one on the
standard library (the VM's probe timer), unit tests a fake.

What a server can make it do, and no more:

- only http(s) URLs are ever requested: a ``file://`` (or any other) redirect ``Location`` or
  token ``realm`` is refused, and so is a redirect from https to http;
- credentials (Basic, or a token) go only to the registry's own scheme, host and port; Basic goes
  to a token server only when its realm is https or on the registry's own scheme and host name;
- every body is read to a bound (an error body, a JSON page, a manifest, a blob to its
  descriptor's size + 1), every header value parsed defensively, every JSON parse caught
  (however deeply nested), and the whole run ends at one ``deadline``.
"""

import base64
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
from urllib.parse import urlencode, urljoin, urlsplit

from ansible_collections.regwarden.registry.plugins.module_utils._manifest import MANIFEST_MAX_BYTES

MAX_REDIRECTS = 5
# An error body is read only to quote the registry's error code.
ERROR_BODY_BYTES = 64 * 1024
READ_CHUNK_BYTES = 1024 * 1024
# A blob whose size no descriptor and no Content-Length gives is read no further than this.
UNSIZED_BLOB_MAX_BYTES = 64 * 1024 * 1024 * 1024
# Token lifetime when the token server does not say (the distribution token spec's default).
DEFAULT_TOKEN_SECONDS = 60
TOKEN_REFRESH_MARGIN_S = 5
DEFAULT_DEADLINE_SECONDS = 3600
USER_AGENT = "regwarden-registry-probe"
REDIRECT_STATUSES = frozenset((301, 302, 303, 307, 308))
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}\Z")


class ProbeError(Exception):
    """The probe could not run (unreachable URL, bad options): a plain message for the operator."""


class AuthError(ProbeError):
    """The registry or its token server refused the credentials."""


class DeadlineExceeded(ProbeError):
    """The run took longer than its deadline."""


class TransportError(Exception):
    """No HTTP answer (connection refused, TLS failure, timeout), a refused URL, or a body that broke off."""


# -- transport ----------------------------------------------------------------------------


class Response:
    """One HTTP answer: status, lower-cased headers and a body read in chunks.

    ``body`` is anything with ``read(size)`` (and optionally ``close()``); a failure while
    reading surfaces as :class:`TransportError`.
    """

    def __init__(self, status, headers, body=None):
        self.status = status if isinstance(status, int) and not isinstance(status, bool) else None
        self.headers = {str(k).lower(): str(v) for k, v in (headers or {}).items()}
        self._body = body

    def header(self, name):
        return self.headers.get(name.lower())

    def read(self, size):
        """Up to ``size`` bytes, as soon as some arrived (one read of the connection where the body
        allows it): a server dripping bytes cannot keep one call busy past the deadline checks."""
        if self._body is None:
            return b""
        read = getattr(self._body, "read1", None) or self._body.read
        try:
            return read(size) or b""
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


def require_http_url(url):
    """The URL when it is http(s) with a host; TransportError otherwise (file://, ftp://, data:...)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise TransportError("refused to request %s: only http(s) URLs are followed" % _short_url(url))
    return url


def _short_url(url, limit=200):
    return url if len(url) <= limit else url[:limit] + "..."


def opener_transport(open_func):
    """A transport over a urllib-style ``open_func(method, url, headers)`` that raises
    ``HTTPError`` for non-2xx answers (as ``ansible.module_utils.urls.Request.open`` and
    ``urllib.request`` do) and must not follow redirects: the client follows them itself."""

    def transport(method, url, headers):
        require_http_url(url)
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
        return None  # urllib then raises HTTPError with the 3xx: the client follows it


def urllib_transport(validate_certs=True, ca_path=None, timeout=30.0):
    """A transport on the standard library alone (no Ansible), for a probe run from a script.

    The opener knows http and https only (no file, ftp or data handlers).
    """
    if validate_certs:
        context = ssl.create_default_context(cafile=ca_path)
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.HTTPHandler(),
                    urllib.request.HTTPSHandler(context=context), urllib.request.HTTPDefaultErrorHandler(),
                    urllib.request.HTTPErrorProcessor(), _NoRedirect()):
        opener.add_handler(handler)

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


def parse_json(body):
    """The JSON document in ``body``, or None when it is not JSON (or nested too deep to parse)."""
    try:
        return json.loads(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def registry_error(body):
    """``"CODE: message"`` from a registry's JSON error body, else None."""
    doc = parse_json(body)
    try:
        error = doc["errors"][0]
        code, message = error.get("code"), error.get("message")
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    return _text(": ".join(str(x) for x in (code, message) if x).encode("utf-8", "replace"), 300) or None


def content_length(response):
    """Content-Length as an int when it is plain digits (not "²", not 5000 digits), else None."""
    value = response.header("content-length")
    if value is None:
        return None
    value = value.strip()
    return int(value) if _CONTENT_LENGTH.match(value) else None


def _suffix(detail):
    return " (%s)" % detail if detail else ""


def _text(body, limit=200):
    return body[:limit].decode("utf-8", "replace").strip()


# -- fetch records ----------------------------------------------------------------------------


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
        self.too_large = False  # the body went past its bound (reading stopped there)


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

    def _realm(self):
        realm = self.bearer.get("realm")
        if not realm:
            raise ProbeError("%s asked for a Bearer token without a realm" % self.client.url)
        try:
            require_http_url(realm)
        except TransportError:
            raise ProbeError("%s names a token realm that is not an http(s) URL (%s): refused"
                             % (self.client.url, _short_url(realm))) from None
        return realm

    def _may_send_basic(self, realm):
        """Basic credentials go to an https realm, or to the registry's own scheme and host name (a token
        server on another port of the registry's host, which gets them over the same kind of link)."""
        parts = urlsplit(realm)
        return parts.scheme == "https" or (parts.scheme, parts.hostname) == (self.client.scheme, self.client.hostname)

    def _fetch_token(self, scope):
        realm = self._realm()
        query = {}
        if self.bearer.get("service"):
            query["service"] = self.bearer["service"]
        if scope:
            query["scope"] = scope
        headers = {"User-Agent": USER_AGENT}
        withheld = bool(self.username) and not self._may_send_basic(realm)
        if self.username and not withheld:
            query["account"] = self.username
            headers["Authorization"] = self._basic()
        url = realm + ("&" if "?" in realm else "?") + urlencode(sorted(query.items())) if query else realm
        self.client.check_deadline()
        try:
            response = self.client.transport("GET", url, headers)
        except TransportError as exc:
            raise ProbeError("token server %s for %s unreachable: %s" % (_short_url(realm), self.client.url, exc)) \
                from None
        self.client.count_request()
        try:
            body = self.client.read_limited(response, ERROR_BODY_BYTES)
        except TransportError as exc:
            raise ProbeError("token server %s for %s broke off: %s" % (_short_url(realm), self.client.url, exc)) \
                from None
        finally:
            response.close()
        if response.status in (401, 403):
            if withheld:
                raise AuthError("%s sends its clients to the token server %s, which is neither https nor on the "
                                "registry's own scheme and host: the credentials were not sent there"
                                % (self.client.url, _short_url(realm)))
            if not self.username:
                raise AuthError("%s requires authentication: the token server %s answered %d to an anonymous "
                                "request; set username and password"
                                % (self.client.url, _short_url(realm), response.status))
            raise AuthError("authentication failed for %s as %s: %d from the token server %s%s" % (
                self.client.url, self.username, response.status, _short_url(realm),
                _suffix(registry_error(body) or _text(body))))
        if response.status != 200:
            raise ProbeError("token server %s answered %s: %s" % (_short_url(realm), response.status or "no status",
                                                                  _text(body)))
        doc = parse_json(body)
        token = None
        lifetime = DEFAULT_TOKEN_SECONDS
        if isinstance(doc, dict):
            token = doc.get("token") or doc.get("access_token")
            expires = doc.get("expires_in")
            if isinstance(expires, int) and not isinstance(expires, bool) and 0 < expires < 10 ** 7:
                lifetime = expires
        if not token or not isinstance(token, str) or len(token) > ERROR_BODY_BYTES:
            raise ProbeError("token server %s answered without a token" % _short_url(realm))
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
            self.client.url, (response.header("www-authenticate") or "")[:200]))


# -- the HTTP client ----------------------------------------------------------------------


class RegistryHTTP:
    """Requests to one registry: auth, redirects (http(s) only, never downgraded, credentials only to
    the registry's own scheme and host), bounded reads, one deadline, request counting. Thread-safe."""

    def __init__(self, transport, url, username=None, password=None, deadline_seconds=DEFAULT_DEADLINE_SECONDS):
        url = (url or "").strip().rstrip("/")
        if url.endswith("/v2"):
            url = url[:-3]
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ProbeError("url must be http(s)://host[:port], not %r" % url)
        try:
            deadline_seconds = float(deadline_seconds)
        except (TypeError, ValueError):
            deadline_seconds = -1.0
        if not 0 < deadline_seconds < 10 ** 7:
            raise ProbeError("deadline must be a number of seconds above 0")
        self.url = url
        self.scheme = parts.scheme
        self.netloc = parts.netloc
        self.hostname = parts.hostname
        self.transport = transport
        self.auth = _Auth(self, username, password)
        self.requests = 0
        self.bytes_received = 0
        self.deadline_seconds = deadline_seconds
        self.deadline = time.monotonic() + deadline_seconds
        self._count_lock = threading.Lock()

    def check_deadline(self):
        if time.monotonic() > self.deadline:
            raise DeadlineExceeded("the probe of %s did not finish within its deadline of %g s"
                                   % (self.url, self.deadline_seconds))

    def count_request(self):
        with self._count_lock:
            self.requests += 1

    def count_bytes(self, count):
        with self._count_lock:
            self.bytes_received += count

    def _own(self, url):
        parts = urlsplit(url)
        return (parts.scheme, parts.netloc) == (self.scheme, self.netloc)

    def _send(self, method, url, headers):
        """One request, following redirects: http(s) only, never https -> http, and Authorization
        only to the registry's own scheme and host."""
        for _redirect in range(MAX_REDIRECTS + 1):
            self.check_deadline()
            require_http_url(url)
            sent = dict(headers)
            if not self._own(url):
                sent.pop("Authorization", None)
            self.count_request()
            response = self.transport(method, url, sent)
            location = response.header("location")
            if response.status not in REDIRECT_STATUSES or not location:
                return response
            response.close()
            target = urljoin(url, location)
            if urlsplit(url).scheme == "https" and urlsplit(target).scheme == "http":
                raise TransportError("refused a redirect from https to http (%s)" % _short_url(target))
            url = target
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
            response.error_body = self.read_limited(response, ERROR_BODY_BYTES) if method != "HEAD" else b""
            response.close()
            self.auth.handle_challenge(response, scope, sent=bool(authorization), retried=attempt > 0)
        raise AuthError("authentication failed for %s as %s: 401 after retrying" % (self.url, self.auth.username))

    def read_limited(self, response, limit):
        """At most ``limit`` bytes of the body, watching the deadline between chunks."""
        chunks, total = [], 0
        while total < limit:
            self.check_deadline()
            chunk = response.read(min(READ_CHUNK_BYTES, limit - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)

    def ping(self):
        """``GET /v2/``: reachable, a registry, and the credentials work."""
        try:
            response = self.request("GET", "/v2/", scope="")
            body = self.read_limited(response, ERROR_BODY_BYTES)
        except TransportError as exc:
            raise ProbeError("cannot reach %s: %s" % (self.url, exc)) from None
        response.close()
        if response.status != 200:
            raise ProbeError("%s/v2/ answered %s, not a registry API%s" % (
                self.url, response.status or "without a status", _suffix(registry_error(body) or _text(body))))

    def get_json(self, url, scope):
        """(status, doc or None, error text, next page URL)."""
        try:
            response = self.request("GET", url, scope)
        except TransportError as exc:
            return None, None, str(exc), None
        try:
            body = self.read_limited(response, MANIFEST_MAX_BYTES + 1)
        except TransportError as exc:
            response.close()
            return response.status, None, str(exc), None
        response.close()
        if response.status != 200:
            return response.status, None, registry_error(body) or _text(body), None
        if len(body) > MANIFEST_MAX_BYTES:
            return response.status, None, "answer larger than %d bytes" % MANIFEST_MAX_BYTES, None
        doc = parse_json(body)
        if doc is None:
            return response.status, None, "invalid JSON", None
        absolute = url if "://" in url else self.url + url
        try:
            nxt = next_link(response.header("link"), absolute)
        except ValueError:  # a Link a URL parser refuses
            nxt = None
        return response.status, doc, None, nxt

    def fetch(self, method, path, scope, accept=None, keep_body=False, limit=None):
        """Fetch and account: status, Content-Length, bytes, sha256 of the body.

        ``limit``: read at most this many bytes (a manifest: its bound + 1, kept as ``body``; a
        blob: its descriptor's size + 1). Past it reading stops and ``too_large`` is set.
        """
        fetch = Fetch(method)
        try:
            response = self.request(method, path, scope, accept)
        except TransportError as exc:
            fetch.error = str(exc)
            return fetch
        fetch.status = response.status
        fetch.served_digest = response.header("docker-content-digest")
        fetch.content_type = response.header("content-type")
        fetch.announced = content_length(response)
        try:
            if response.status != 200:
                fetch.error_body = self.read_limited(response, ERROR_BODY_BYTES) if method != "HEAD" else b""
                return fetch
            if method == "HEAD":
                return fetch
            if limit is None:
                limit = fetch.announced + 1 if fetch.announced is not None else UNSIZED_BLOB_MAX_BYTES
            digest = hashlib.sha256()
            chunks = [] if keep_body else None
            fetch.received = 0
            while fetch.received < limit:
                self.check_deadline()
                try:
                    chunk = response.read(min(READ_CHUNK_BYTES, limit - fetch.received))
                except TransportError as exc:
                    fetch.error = str(exc)
                    break
                if not chunk:
                    break
                fetch.received += len(chunk)
                digest.update(chunk)
                if chunks is not None:
                    chunks.append(chunk)
            fetch.too_large = fetch.received >= limit
            self.count_bytes(fetch.received)
            fetch.actual_digest = "sha256:" + digest.hexdigest()
            if chunks is not None:
                fetch.body = b"".join(chunks)
            return fetch
        finally:
            response.close()
