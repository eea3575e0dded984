"""The role's preflight on S3 storage and replicas, run through ansible-playbook on the controller
(``--tags docker_registry_preflight``: nothing but the checks): what it refuses, with which words,
and that the S3 secret key is in no output at any verbosity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.ansible_run import REPO_ROOT

SECRET = "preflight-secret-key-must-never-print-0123"
VALID_S3 = {
    "endpoint": "https://s3.example.test:8333",
    "bucket": "registries",
    "prefix": "site/a",
    "access_key": "regwarden-preflight",
    "secret_key": SECRET,
    "secure": True,
}
BASE_VARS = {
    "docker_registry_private_users": [{"username": "ci", "password": "preflight-password"}],
    "docker_registry_private_tls_enabled": False,
    "docker_registry_caches": [],
}


def run_preflight(tmp_path: Path, extra: dict, verbosity: str = "") -> subprocess.CompletedProcess:
    playbook = tmp_path / "preflight.yml"
    playbook.write_text("- hosts: all\n  gather_facts: true\n"
                        "  roles:\n    - role: regwarden.registry.docker_registry\n")
    variables = tmp_path / "vars.json"
    variables.write_text(json.dumps({**BASE_VARS, **extra}))
    command = [str(Path(sys.executable).parent / "ansible-playbook"), str(playbook), "-i", "localhost,",
               "-c", "local", "-e", "ansible_python_interpreter=%s" % sys.executable, "-e", "@%s" % variables,
               "--tags", "docker_registry_preflight"]
    if verbosity:
        command.append(verbosity)
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO_ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_DEPRECATION_WARNINGS="0")
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL, check=False)


def output(proc):
    return proc.stdout + proc.stderr


def test_a_complete_s3_setting_with_replicas_passes_and_never_prints_the_secret(tmp_path):
    proc = run_preflight(tmp_path, {"docker_registry_storage": "s3", "docker_registry_s3": VALID_S3,
                                    "docker_registry_private_replicas": 3}, "-vvv")
    assert proc.returncode == 0, output(proc)[-3000:]
    assert "Preflight | S3 settings are complete" in proc.stdout
    assert SECRET not in output(proc)


@pytest.mark.parametrize("extra, words", [
    ({"docker_registry_private_replicas": 2}, "more than 1 needs the private registry on shared"),
    ({"docker_registry_storage": "s3", "docker_registry_s3": VALID_S3, "docker_registry_private_replicas": 0},
     "a whole number from 1 to 16"),
    ({"docker_registry_storage": "s3", "docker_registry_s3": {**VALID_S3, "endpoint": "http://10.0.0.5:8333"}},
     "with secure: false for http://"),
    ({"docker_registry_storage": "s3", "docker_registry_s3": {**VALID_S3, "bucket": ""}}, "bucket (an S3 bucket name"),
    ({"docker_registry_storage": "s3", "docker_registry_s3": {**VALID_S3, "prefix": "a/../b"}},
     "a prefix of plain path components"),
    ({"docker_registry_storage": "s3", "docker_registry_s3": {**VALID_S3, "access_key": ""}},
     "access_key and secret_key both or neither"),
    ({"docker_registry_config_overrides": {"storage": {"s3": {"bucket": "x"}}}},
     "may not set storage.s3"),
    ({"docker_registry_private_storage": "nfs"}, "must be 'filesystem' or 's3'"),
    ({"docker_registry_caches": [{"name": "hub", "remote_url": "https://registry-1.docker.io", "port": 5000,
                                  "storage": "gcs"}]}, "must be 'filesystem' or 's3'"),
    ({"docker_registry_storage": "s3", "docker_registry_s3": VALID_S3, "docker_registry_private_storage": "filesystem",
      "docker_registry_private_replicas": 2}, "more than 1 needs the private registry on shared"),
    ({"docker_registry_storage": "s3", "docker_registry_s3": VALID_S3,
      "docker_registry_maintenance_leader": "elsewhere"}, "is not a host of this play"),
])
def test_preflight_refuses_with_a_clear_message_and_no_secret(tmp_path, extra, words):
    proc = run_preflight(tmp_path, extra, "-vvv")
    assert proc.returncode != 0, output(proc)[-3000:]
    text = " ".join(output(proc).split())
    assert words in text, text[-3000:]
    assert SECRET not in output(proc)


def test_the_private_registry_alone_on_s3_with_replicas_passes(tmp_path):
    proc = run_preflight(tmp_path, {"docker_registry_private_storage": "s3", "docker_registry_s3": VALID_S3,
                                    "docker_registry_private_replicas": 2})
    assert proc.returncode == 0, output(proc)[-3000:]


def test_an_unknown_storage_is_refused_by_the_argument_spec(tmp_path):
    proc = run_preflight(tmp_path, {"docker_registry_storage": "nfs"})
    assert proc.returncode != 0
    assert "docker_registry_storage" in output(proc) and "nfs" in output(proc)
