"""TLS and authentication for test registries, made with the real tools.

- :func:`self_signed_pair`: an RSA key and a self-signed certificate for ``127.0.0.1`` (``openssl``);
  the certificate is its own CA (pass it as ``ca_path`` / ``verify``).
- :func:`write_htpasswd`: a bcrypt htpasswd file (``htpasswd -B`` from Debian's ``apache2-utils``),
  the format distribution's ``auth.htpasswd`` reads.
- :class:`TokenServer`: a minimal Docker token server (the ``auth.token`` flow of distribution):
  Basic credentials in, an RS256 JWT out, signed with ``openssl`` and identified by the libtrust
  key ID the registry derives from ``rootcertbundle``. It grants ``pull`` on the repositories a
  user may read and ``*`` on the catalog, and records every request so tests can count them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

OPENSSL_TIMEOUT_S = 30


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    if not shutil.which(cmd[0]):
        raise RuntimeError(f"{cmd[0]} not found: install it (scripts/lib.sh APT_PACKAGES)")
    return subprocess.run(cmd, check=True, capture_output=True, timeout=OPENSSL_TIMEOUT_S,
                          stdin=subprocess.DEVNULL if "input" not in kwargs else None, **kwargs)


def self_signed_pair(directory: Path, name: str = "registry") -> tuple[Path, Path]:
    """(certificate, key) for CN/SAN 127.0.0.1 and localhost, valid two days."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
          "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
          "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
    return cert, key


def write_htpasswd(path: Path, users: dict[str, str]) -> Path:
    """bcrypt entries (cost 4: the minimum, fast enough for tests) for ``users``."""
    lines = []
    for user, password in users.items():
        result = _run(["htpasswd", "-nbB", "-C", "4", user, password], text=True)
        lines.append(result.stdout.strip())
    path.write_text("\n".join(lines) + "\n")
    return path


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def libtrust_key_id(cert: Path) -> str:
    """The key ID distribution computes for a certificate's public key (libtrust): sha256 of
    the DER SubjectPublicKeyInfo, first 30 bytes, base32, in groups of four joined by ':'."""
    pem = _run(["openssl", "x509", "-in", str(cert), "-noout", "-pubkey"]).stdout
    der = _run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pem).stdout
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode("ascii").rstrip("=")
    return ":".join(encoded[i:i + 4] for i in range(0, len(encoded), 4))


class TokenServer:
    """``GET /token?service=&scope=&account=`` with Basic auth -> ``{"token": <JWT>}``."""

    def __init__(self, directory: Path, users: dict[str, str], *, readable: dict[str, list[str]] | None = None,
                 service: str = "regwarden-test", issuer: str = "regwarden-test-issuer",
                 expires_in: int = 300) -> None:
        self.users = dict(users)
        # user -> repositories it may pull (None: all).
        self.readable = readable or {}
        self.service = service
        self.issuer = issuer
        self.expires_in = expires_in
        self.cert, self.key = self_signed_pair(Path(directory), "token-signer")
        self.key_id = libtrust_key_id(self.cert)
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def realm(self) -> str:
        assert self._server is not None, "token server not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}/token"

    def registry_config(self) -> dict:
        """The ``auth.token`` section for :class:`tests.support.registry.Registry`."""
        return {"realm": self.realm, "service": self.service, "issuer": self.issuer,
                "rootcertbundle": str(self.cert)}

    def sign(self, claims: dict) -> str:
        header = {"typ": "JWT", "alg": "RS256", "kid": self.key_id}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = _run(["openssl", "dgst", "-sha256", "-sign", str(self.key)],
                         input=signing_input.encode()).stdout
        return f"{signing_input}.{_b64url(signature)}"

    def grant(self, user: str, scopes: list[str]) -> list[dict]:
        allowed = self.readable.get(user)
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind == "registry" and name == "catalog":
                access.append({"type": "registry", "name": "catalog", "actions": ["*"]})
            elif kind == "repository" and "pull" in actions.split(",") and (allowed is None or name in allowed):
                access.append({"type": "repository", "name": name, "actions": ["pull"]})
        return access

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        query = parse_qs(urlsplit(handler.path).query)
        scopes = query.get("scope", [])
        user = password = None
        header = handler.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        with self._lock:
            self.requests.append({"user": user, "scopes": scopes, "service": query.get("service", [None])[0],
                                  "account": query.get("account", [None])[0]})
        if user is None or self.users.get(user) != password:
            body = json.dumps({"errors": [{"code": "UNAUTHORIZED", "message": "invalid credentials"}]}).encode()
            handler.send_response(401)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
            return
        now = int(time.time())
        token = self.sign({"iss": self.issuer, "sub": user, "aud": self.service, "exp": now + self.expires_in,
                           "nbf": now - 10, "iat": now, "jti": secrets.token_hex(8),
                           "access": self.grant(user, scopes)})
        body = json.dumps({"token": token, "expires_in": self.expires_in}).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def start(self) -> TokenServer:
        server_self = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # http.server dispatches on this name
                server_self._handle(self)

            def log_message(self, *args):  # keep pytest output clean
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def scopes_requested(self) -> list[str]:
        with self._lock:
            return [" ".join(r["scopes"]) for r in self.requests]

    def __enter__(self) -> TokenServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
