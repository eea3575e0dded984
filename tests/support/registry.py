"""Run Debian's ``docker-registry`` (CNCF distribution 2.8.2) on 127.0.0.1 for tests.

Layout: the storage ``rootdirectory`` is ``<data_dir>/<name>``, so the registry's content lands in
``<data_dir>/<name>/docker/registry/v2`` and the scanner modules, given ``path=<data_dir>``, see
one registry called ``<name>``. The config file and the log live in ``work_dir``, outside
``data_dir``, so they never look like registry content.

    with Registry("private", data_dir, work_dir) as registry:
        registry.url                      # http://127.0.0.1:<port>
        registry.restart()                # flushes the in-memory descriptor cache
        registry.garbage_collect(delete_untagged=True)

A registry created with ``proxy_remote=<url>`` is a pull-through cache of that URL (it refuses
pushes, like a real cache).

Options for the probe's tests (all off by default): ``tls=(cert, key)`` serves HTTPS (``url``
becomes ``https://``; :mod:`tests.support.auth` makes a self-signed pair), ``htpasswd=<file>``
turns on Basic auth (bcrypt users), ``token_auth={"realm", "service", "issuer",
"rootcertbundle"}`` turns on the Bearer token flow, ``catalog_max_entries`` caps catalog pages.

``metrics=True`` serves distribution's Prometheus metrics at ``http://127.0.0.1:<debug_port>/metrics``.
``delete_enabled=False`` leaves ``storage.delete`` off, as the role does for pull-through caches.

``s3=S3Target(server, bucket, prefix)`` (:mod:`tests.support.seaweed`) keeps the registry in a
bucket instead, with distribution's s3 driver: ``rootdirectory`` is ``<prefix>/<name>`` and
``v2`` is an :class:`tests.support.s3path.S3Path`, which the storage helpers take as a path.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from pathlib import Path

import requests

DOCKER_REGISTRY = "/usr/bin/docker-registry"
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
GC_TIMEOUT_S = 120.0

PR_SET_PDEATHSIG = 1
_UNCHANGED = object()


class RegistryError(RuntimeError):
    """The registry process did not start, stop or collect garbage as asked."""


def _die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In the child before exec: ``sig`` to it when the test process dies (even by SIGKILL), so a
    killed test run leaves no server behind. Linux only; elsewhere a no-op."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig)
    except (OSError, AttributeError):
        pass


def _killed_with_parent() -> None:
    """_die_with_parent with SIGKILL, for a server that takes its time over SIGTERM (weed)."""
    _die_with_parent(signal.SIGKILL)


def registry_environment() -> dict:
    """The environment of a registry process: without AWS_CA_BUNDLE, which some hosts set and which
    makes distribution 2.8.2's s3 driver fail (the role keeps it out of the container too)."""
    env = dict(os.environ)
    env.pop("AWS_CA_BUNDLE", None)
    return env


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` of a server's log, for an error message."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_process(process: subprocess.Popen | None, timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; nothing for a process that is gone or None."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Registry:
    """One ``docker-registry serve`` process with its own storage root, config and log."""

    def __init__(
        self,
        name: str,
        data_dir: str | os.PathLike,
        work_dir: str | os.PathLike,
        *,
        proxy_remote: str | None = None,
        binary: str = DOCKER_REGISTRY,
        tls: tuple[str | os.PathLike, str | os.PathLike] | None = None,
        htpasswd: str | os.PathLike | None = None,
        token_auth: dict | None = None,
        catalog_max_entries: int | None = None,
        s3=None,
        delete_enabled: bool = True,
        metrics: bool = False,
    ) -> None:
        self.name = name
        self.data_dir = Path(data_dir)
        self.s3 = s3
        if s3 is None:
            self.root = self.data_dir / name
            self.v2 = self.root / "docker" / "registry" / "v2"
        else:
            self.root = s3.path(name)
            self.v2 = self.root / "docker" / "registry" / "v2"
        self.work_dir = Path(work_dir)
        self.config_path = self.work_dir / f"{name}.registry.json"
        self.log_path = self.work_dir / f"{name}.registry.log"
        self.proxy_remote = proxy_remote
        self.binary = binary
        self.tls = (str(tls[0]), str(tls[1])) if tls else None
        self.htpasswd = str(htpasswd) if htpasswd else None
        self.token_auth = dict(token_auth) if token_auth else None
        self.catalog_max_entries = catalog_max_entries
        self.delete_enabled = delete_enabled
        self.metrics = metrics
        self.port: int | None = None
        self.debug_port: int | None = None
        self._process: subprocess.Popen | None = None
        # A fixed secret per instance: restarts keep upload state valid and the log quiet.
        self._http_secret = secrets.token_hex(16)

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.port is None:
            raise RegistryError(f"registry {self.name} was never started")
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running else None

    def config(self) -> dict:
        """The registry configuration (JSON is valid YAML, so it is written as JSON)."""
        if self.s3 is None:
            driver = {"filesystem": {"rootdirectory": str(self.root)}}
        else:
            driver = {"s3": self.s3.driver_config(self.name),
                      # Blob GETs answered by the registry, not redirected to the store.
                      "redirect": {"disable": True}}
        cfg = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text"},
            "storage": {
                **driver,
                "delete": {"enabled": self.delete_enabled},
                "cache": {"blobdescriptor": "inmemory"},
                # The upload purger would write to the tree behind the tests' back.
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": f"127.0.0.1:{self.port}", "secret": self._http_secret},
        }
        if self.metrics:
            cfg["http"]["debug"] = {"addr": f"127.0.0.1:{self.debug_port}",
                                    "prometheus": {"enabled": True, "path": "/metrics"}}
        if self.proxy_remote:
            cfg["proxy"] = {"remoteurl": self.proxy_remote}
        if self.tls:
            cfg["http"]["tls"] = {"certificate": self.tls[0], "key": self.tls[1]}
        if self.htpasswd:
            cfg["auth"] = {"htpasswd": {"realm": f"regwarden-test-{self.name}", "path": self.htpasswd}}
        if self.token_auth:
            cfg["auth"] = {"token": dict(self.token_auth)}
        if self.catalog_max_entries:
            cfg["catalog"] = {"maxentries": self.catalog_max_entries}
        return cfg

    def start(self) -> Registry:
        if self.running:
            return self
        if not os.access(self.binary, os.X_OK):
            raise RegistryError(f"{self.binary} not found: install the Debian package docker-registry")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if self.s3 is None:
            self.root.mkdir(parents=True, exist_ok=True)
        first_start = self.port is None
        # Another process may grab the free port before the registry binds it: retry with a
        # new port, but only on the first start (afterwards clients rely on the URL).
        attempts = 3 if first_start else 1
        last_error: RegistryError | None = None
        for _ in range(attempts):
            if first_start:
                self.port = free_port()
                self.debug_port = free_port() if self.metrics else None
            try:
                self._spawn_and_wait()
                return self
            except RegistryError as exc:
                last_error = exc
        raise last_error  # type: ignore[misc]

    def _spawn_and_wait(self) -> None:
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        with self.log_path.open("a") as log:
            log.write(f"\n==== start {self.name} on port {self.port} at {time.strftime('%H:%M:%S')}\n")
            log.flush()
            self._process = subprocess.Popen(
                [self.binary, "serve", str(self.config_path)],
                env=registry_environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                raise RegistryError(
                    f"registry {self.name} exited during start-up:\n{self.log_tail()}"
                )
            try:
                # 401: up, with auth on. The certificate is the CA of a self-signed TLS pair.
                verify = self.tls[0] if self.tls else True
                if requests.get(f"{self.url}/v2/", timeout=1, verify=verify).status_code in (200, 401):
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        self.stop()
        raise RegistryError(
            f"registry {self.name} did not answer on {self.url} within {READY_TIMEOUT_S}s:\n"
            f"{self.log_tail()}"
        )

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL). Safe to call twice or before start."""
        process, self._process = self._process, None
        stop_process(process, STOP_TIMEOUT_S)

    def restart(self, *, proxy_remote: str | object | None = _UNCHANGED) -> Registry:
        """Stop and start again on the same port; this empties the descriptor cache.

        ``proxy_remote=None`` turns a pull-through cache into a plain registry over the same
        storage (useful to see what its disk alone can serve); a URL makes it a cache.
        """
        self.stop()
        if proxy_remote is not _UNCHANGED:
            self.proxy_remote = proxy_remote  # type: ignore[assignment]
        return self.start()

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- maintenance -----------------------------------------------------------------------

    def garbage_collect(
        self, *, delete_untagged: bool = False, dry_run: bool = False, check: bool = True
    ) -> subprocess.CompletedProcess:
        """Run the real ``docker-registry garbage-collect`` on this registry's config.

        It may run while the registry serves (that is how the field breaks registries).
        The output is appended to the log; ``check`` raises on a non-zero exit.
        """
        if not self.config_path.exists():
            self.work_dir.mkdir(parents=True, exist_ok=True)
            self.config_path.write_text(json.dumps(self.config(), indent=2))
        cmd = [self.binary, "garbage-collect"]
        if delete_untagged:
            cmd.append("--delete-untagged")
        if dry_run:
            cmd.append("--dry-run")
        cmd.append(str(self.config_path))
        result = subprocess.run(
            cmd,
            env=registry_environment(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=GC_TIMEOUT_S,
            check=False,
        )
        with self.log_path.open("a") as log:
            log.write(f"\n==== {' '.join(cmd)} -> rc {result.returncode}\n")
            log.write(result.stdout)
            log.write(result.stderr)
        if check and result.returncode != 0:
            raise RegistryError(
                f"garbage-collect on {self.name} exited {result.returncode}:\n"
                f"{result.stdout[-2000:]}{result.stderr[-2000:]}"
            )
        return result

    # -- debugging -------------------------------------------------------------------------

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"Registry({self.name!r}, port={self.port}, root={str(self.root)!r}, {state})"
