"""Several hosts on one bucket: the role's GC and tag-cleanup scripts, rendered by Ansible from the
role's own defaults and vars for a two-host play, refuse to run unless every host's replicas are
read-only (what playbooks/s3_maintenance.yml arranges), the non-leader never collects, and the GC
timer stays off on both."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from ansible_collections.regwarden.registry.plugins.module_utils._s3_view import S3Storage
from tests.support.role_run import render as _render

# Extra vars: above the role files the play loads as vars_files.
SETTINGS = {
    "docker_registry_storage": "s3",
    "docker_registry_s3": {"bucket": "registries", "endpoint": "https://s3.example.test", "prefix": "site"},
    "docker_registry_private_replicas": 2,
    "docker_registry_tag_cleanup_enabled": True,
    "_docker_registry_compose_command": "docker compose",
}


def render(tmp_path, templates, settings=None, hosts="vm-a,vm-b"):
    return _render(tmp_path, templates, SETTINGS if settings is None else settings, hosts)


def config_checksums(*names):
    """What the Compose template reads from the role's stat of each config (its checksum label)."""
    return {"results": [{"docker_registry_registry_name": name, "stat": {"checksum": "0" * 64}} for name in names]}


def run_script(path: Path, **env):
    return subprocess.run(["bash", str(path)], env=dict(os.environ, PATH="/usr/bin:/bin", **env),
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)


def test_two_hosts_on_one_bucket_collect_only_through_the_playbook(tmp_path):
    out = render(tmp_path, ["regwarden-registry-gc.sh", "regwarden-registry-tag-cleanup.sh"])
    for host in ("vm-a", "vm-b"):
        units = {unit["unit"]: unit for unit in json.loads((out / ("%s-units.json" % host)).read_text())}
        assert units["regwarden-registry-gc.timer"]["enabled"] is False, host

    # The leader (first host) refuses while the other host's replicas may still accept pushes.
    for script in ("regwarden-registry-gc.sh", "regwarden-registry-tag-cleanup.sh"):
        leader = run_script(out / ("vm-a-%s" % script))
        assert leader.returncode == 1, (script, leader.stdout, leader.stderr)
        assert "run playbooks/s3_maintenance.yml" in leader.stderr, script

    # The other host never collects the shared bucket, whatever its environment says.
    other = run_script(out / "vm-b-regwarden-registry-gc.sh", REGWARDEN_BUCKET_READ_ONLY="1")
    assert other.returncode == 0, other.stderr
    assert "garbage collection runs on vm-a, not here" in other.stdout
    units_b = {unit["unit"]: unit for unit in json.loads((out / "vm-b-units.json").read_text())}
    assert units_b["regwarden-registry-tag-cleanup.service"]["installed"] is False
    assert units_b["regwarden-registry-scan.timer"]["enabled"] is False
    # The GC script flocks the same file the collection's S3 writers take for the registry.
    lock_dir = re.search(r"^LOCK_DIR=(\S+)$", (out / "vm-a-regwarden-registry-gc.sh").read_text(), re.M).group(1)
    storage = S3Storage({"bucket": "registries", "prefix": "site", "endpoint_url": "https://s3.example.test",
                         "cache_dir": "/var/cache/regwarden/s3"})
    assert storage.lock_path("private") == lock_dir + "/private.lock"
    units_a = {unit["unit"]: unit for unit in json.loads((out / "vm-a-units.json").read_text())}
    assert units_a["regwarden-registry-tag-cleanup.service"]["installed"] is True
    assert units_a["regwarden-registry-scan.timer"]["enabled"] is True


CA = "-----BEGIN CERTIFICATE-----\nMIIBregwardentest\n-----END CERTIFICATE-----\n"


def test_the_compose_file_of_replicas_on_s3_with_a_private_ca(tmp_path):
    import hashlib

    import yaml

    out = render(tmp_path, ["docker-compose.yml"], {
        **SETTINGS, "docker_registry_caches": [],
        "docker_registry_s3": {**SETTINGS["docker_registry_s3"], "ca_bundle": CA},
        "_docker_registry_config_stat": config_checksums("private"),
    }, hosts="vm-a")
    services = yaml.safe_load((out / "vm-a-docker-compose.yml").read_text())["services"]
    assert sorted(services) == ["nginx", "redis", "registry-private", "registry-private-2"]
    for name in ("registry-private", "registry-private-2"):
        service = services[name]
        # Only the CA variable: nothing of the host's AWS_* environment.
        assert service["environment"] == {"SSL_CERT_FILE": "/etc/regwarden/s3-ca.pem"}
        assert "/opt/registry/config/s3-ca.pem:/etc/regwarden/s3-ca.pem:ro" in service["volumes"]
        assert not [v for v in service["volumes"] if "/opt/registry/data" in v], "no data directory on S3"
        # A new CA recreates the replicas.
        assert service["labels"]["org.regwarden.s3-ca-sha256"] == hashlib.sha256(CA.encode()).hexdigest()
        assert service["networks"]["default"]["aliases"] == ["registry-private"]
        assert service["depends_on"] == ["redis"]
        assert service["command"] == ["/etc/docker/registry/${REGWARDEN_REGISTRY_CONFIG:-config.yml}"]
    assert services["registry-private"]["ports"] == ["127.0.0.1:5150:5001"]
    assert services["registry-private-2"]["ports"] == ["127.0.0.1:5151:5001"]
    assert services["nginx"]["depends_on"] == ["registry-private", "registry-private-2"]
    assert "--save" in services["redis"]["command"] and "ports" not in services["redis"]


def test_one_host_with_the_private_registry_on_s3_and_a_cache_on_disk(tmp_path):
    import yaml

    out = render(tmp_path, ["docker-compose.yml", "regwarden-registry-gc.sh", "regwarden-registry-scan.service"], {
        "docker_registry_private_storage": "s3",
        "docker_registry_s3": SETTINGS["docker_registry_s3"],
        "docker_registry_caches": [{"name": "dockerhub", "remote_url": "https://registry-1.docker.io", "port": 5000}],
        "_docker_registry_compose_command": "docker compose",
        "_docker_registry_config_stat": config_checksums("private", "dockerhub"),
    }, hosts="vm-a")
    services = yaml.safe_load((out / "vm-a-docker-compose.yml").read_text())["services"]
    private, cache = services["registry-private"], services["registry-dockerhub"]
    assert "command" in private and not [v for v in private["volumes"] if "/opt/registry/data" in v]
    assert "command" not in cache and "/opt/registry/data/dockerhub:/var/lib/registry" in cache["volumes"]
    gc = (out / "vm-a-regwarden-registry-gc.sh").read_text()
    assert 'S3_REGISTRIES=" private "' in gc and "REGISTRIES=(private dockerhub)" in gc
    assert "PRIVATE_ON_S3=1" in gc
    scan = (out / "vm-a-regwarden-registry-scan.service").read_text()
    assert "--path /opt/registry/data" in scan and "--s3-registries private" in scan
    assert "--expect-registries private,dockerhub" in scan
