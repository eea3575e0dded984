"""The private registry on S3 with two replicas, Redis and nginx: pushes land in the bucket, a
stopped replica costs no request, maintenance makes the replicas read-only one at a time (pulls
go on) around one GC and a Redis flush, and the scan reads the bucket."""

import json
import os
import pathlib
import subprocess
import sys
import time

import yaml
from conftest import S3_SETTINGS, unique

GC_UNIT = "regwarden-registry-gc.service"
CLEANUP_UNIT = "regwarden-registry-tag-cleanup.service"
SCAN_UNIT = "regwarden-registry-scan.service"
PROBE_UNIT = "regwarden-registry-probe.service"
SCAN_REPORT = "/var/lib/regwarden/scan.json"
SCAN_PROM = "/var/lib/node_exporter/textfile_collector/regwarden_scan.prom"
PROBE_REPORT = "/var/lib/regwarden/probe.json"
MODE_SCRIPT = "/usr/local/sbin/regwarden-registry-mode"
CONFIG = "/opt/registry/config/private/config.yml"
# Pulls one tag over and over while maintenance runs; one status per line.
PULL_LOOP = """
import subprocess, sys, time
end = time.monotonic() + float(sys.argv[1])
with open(sys.argv[2], "w") as out:
    while time.monotonic() < end:
        r = subprocess.run(sys.argv[3:], capture_output=True, text=True)
        out.write("%d %s\\n" % (r.returncode, r.stderr.strip().replace("\\n", " ")[:200]))
        out.flush()
        time.sleep(0.2)
"""



def prom_values(text):
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def test_replicas_share_the_bucket_behind_nginx(vm):
    services = vm.check("docker ps --format '{{.Label \"com.docker.compose.service\"}}'").split()
    assert sorted(s for s in services if s) == sorted([*vm.replicas, "nginx", "redis"])
    config = yaml.safe_load(vm.check("cat %s", CONFIG))
    s3 = config["storage"]["s3"]
    assert s3["bucket"] == "registries" and s3["rootdirectory"] == "/vm/private" and s3["secure"] is False
    assert "filesystem" not in config["storage"]
    # Blob GETs are served by the registry, never redirected to the store.
    assert config["storage"]["redirect"] == {"disable": True}
    assert config["storage"]["cache"] == {"blobdescriptor": "redis"} and config["redis"]["addr"] == "redis:6379"
    for path in (CONFIG, "/opt/registry/config/private/config-readonly.yml", S3_SETTINGS):
        assert vm.host.file(path).mode == 0o600 and vm.host.file(path).user == "root", path
    readonly = yaml.safe_load(vm.check("cat /opt/registry/config/private/config-readonly.yml"))
    assert readonly["storage"]["maintenance"]["readonly"] == {"enabled": True}
    assert readonly["http"]["secret"] == config["http"]["secret"]
    # No data directory: nothing of the registry is on the VM's disk.
    assert not vm.host.file("/opt/registry/data/private").exists
    for service in vm.replicas:
        environment = vm.check("docker inspect --format '{{json .Config.Env}}' %s", vm.container(service))
        assert "AWS_" not in environment, (service, environment)
    nginx = vm.check("docker exec %s nginx -T", vm.container("nginx"))
    assert "proxy_next_upstream error timeout http_502 http_503;" in nginx


def test_a_push_lands_in_the_bucket_and_pulls_back(vm):
    repo = unique("s3/app")
    pushed = vm.push(repo, "v1", unique("seed"))
    keys = vm.bucket_keys("%s/repositories/%s/" % (vm.root, repo))
    assert keys["%s/repositories/%s/_manifests/tags/v1/current/link" % (vm.root, repo)] == 71
    blobs = vm.bucket_keys("%s/blobs/" % vm.root)
    for digest, size in pushed["blob_sizes"].items():
        assert blobs["%s/blobs/sha256/%s/%s/data" % (vm.root, digest[7:9], digest[7:])] == size
    pulled = vm.pull(repo, "v1")
    assert pulled["manifest_digest"] == pushed["manifest_digest"]
    assert all(blob["status"] == 200 and blob["digest"] == digest for digest, blob in pulled["blobs"].items())


def test_nginx_spreads_requests_over_both_replicas(vm):
    repo = unique("s3/spread")
    vm.push(repo, "v1", unique("seed"))
    since = vm.check("date -u +%Y-%m-%dT%H:%M:%SZ").strip()
    time.sleep(1)
    for _ in range(12):
        vm.pull(repo, "v1")
    for service in vm.replicas:
        log = vm.check("docker logs --since %s %s 2>&1", since, vm.container(service))
        assert "/v2/%s/manifests/v1" % repo in log, "%s served none of 12 pulls" % service


def test_a_stopped_replica_costs_no_pull_and_no_push(vm):
    repo = unique("s3/failover")
    pushed = vm.push(repo, "v1", unique("seed"))
    stopped = vm.replicas[-1]
    vm.check("docker stop %s", vm.container(stopped))
    try:
        # At once, while nginx may still hold the stopped replica's address: every request answered.
        for _ in range(10):
            assert vm.pull(repo, "v1")["manifest_digest"] == pushed["manifest_digest"]
        second = vm.push(repo, "v2", unique("seed"))
        assert vm.pull(repo, "v2")["manifest_digest"] == second["manifest_digest"]
    finally:
        vm.check("docker start %s", vm.container(stopped))
        vm.wait_healthy()


def test_read_only_replicas_serve_pulls_and_refuse_pushes(vm):
    repo = unique("s3/readonly")
    pushed = vm.push(repo, "v1", unique("seed"))
    vm.check("%s readonly", MODE_SCRIPT)
    try:
        for service in vm.replicas:
            assert "config-readonly.yml" in vm.check("docker inspect --format '{{json .Config.Cmd}}' %s",
                                                     vm.container(service))
        assert vm.pull(repo, "v1")["manifest_digest"] == pushed["manifest_digest"]
        assert vm.status("/v2/%s/blobs/uploads/" % repo, method="POST") == 405
    finally:
        vm.check("%s writable", MODE_SCRIPT)
    assert vm.status("/v2/%s/blobs/uploads/" % repo, method="POST") == 202
    # Switching to the mode a replica is already in recreates nothing.
    ids = [vm.check("docker inspect --format '{{.Id}}' %s", vm.container(s)) for s in vm.replicas]
    vm.check("%s writable", MODE_SCRIPT)
    assert ids == [vm.check("docker inspect --format '{{.Id}}' %s", vm.container(s)) for s in vm.replicas]


def test_maintenance_cycle_on_s3_keeps_pulls_going(vm):
    repo = unique("s3/cycle")
    old = vm.push(repo, "old", unique("seed"))
    time.sleep(1.1)  # the newest tag by link time is kept (keep 1)
    new = vm.push(repo, "new", unique("seed"))
    vm.check("docker exec %s redis-cli SET regwarden-molecule-marker 1", vm.container("redis"))
    pull_command = ["env", "REGISTRY_PASSWORD=" + vm.password, "python3", "/root/regwarden-tests/registry_client.py",
                    "pull-image", "--registry", vm.url, "--repo", repo, "--ref", "new", "--user", vm.user]
    loop_command = ["python3", "-c", PULL_LOOP, "240", "/root/regwarden-tests/pulls.log", *pull_command]
    loop = vm.host.run(" ".join(["%s"] * len(loop_command)) + " >/dev/null 2>&1 &", *loop_command)
    assert loop.rc == 0
    started = time.monotonic()
    # The GC unit pulls tag cleanup in first (read-only replicas), then GC, Redis flush, writable, scan.
    result = vm.run("timeout 900 systemctl start %s", GC_UNIT)
    log = vm.check("journalctl --no-pager -o cat -u %s -u %s -n 80", CLEANUP_UNIT, GC_UNIT)
    assert result.rc == 0 and vm.unit_property(GC_UNIT, "Result") == "success", log
    assert vm.unit_property(CLEANUP_UNIT, "Result") == "success", log
    assert "registry-private-2: readonly" in log and "registry-private-2: writable" in log, log
    cycle_seconds = time.monotonic() - started
    time.sleep(max(0, 3 - cycle_seconds))
    vm.run("pkill -f 'pulls.log' || true")
    statuses = vm.check("cat /root/regwarden-tests/pulls.log").splitlines()
    assert len(statuses) >= 5, statuses
    failed = [line for line in statuses if not line.startswith("0 ")]
    assert not failed, "%d of %d pulls failed during maintenance: %s" % (len(failed), len(statuses), failed[:5])

    # Tag cleanup removed the old tag, GC swept its blobs, Redis was flushed, the replicas write again.
    assert vm.status("/v2/%s/manifests/old" % repo) == 404
    assert vm.pull(repo, "new")["manifest_digest"] == new["manifest_digest"]
    blobs = vm.bucket_keys("%s/blobs/" % vm.root)
    for digest in old["layers"]:
        assert "%s/blobs/sha256/%s/%s/data" % (vm.root, digest[7:9], digest[7:]) not in blobs
    for digest in new["layers"]:
        assert "%s/blobs/sha256/%s/%s/data" % (vm.root, digest[7:9], digest[7:]) in blobs
    assert vm.check("docker exec %s redis-cli EXISTS regwarden-molecule-marker", vm.container("redis")).strip() == "0"
    for service in vm.replicas:
        assert "config-readonly" not in vm.check("docker inspect --format '{{json .Config.Cmd}}' %s",
                                                 vm.container(service))
    assert vm.push(repo, "after", unique("seed"))["manifest_digest"]
    # The run is recorded (bytes freed are only measured on a filesystem).
    gc = prom_values(vm.check("cat /var/lib/node_exporter/textfile_collector/regwarden_gc.prom"))
    assert gc['regwarden_gc_success{registry="private"}'] == 1
    assert gc['regwarden_gc_blobs_deleted{registry="private"}'] >= len(old["layers"]) + 1
    assert 'regwarden_gc_bytes_freed{registry="private"}' not in gc


def test_the_scan_reads_the_bucket_and_the_probe_is_clean(vm):
    vm.wait_until("the scan queued by GC", lambda: vm.unit_property(SCAN_UNIT, "ActiveState") in ("inactive", "failed")
                  and vm.unit_property(SCAN_UNIT, "ExecMainStartTimestampMonotonic") not in ("", "0"), timeout=300)
    assert vm.unit_property(SCAN_UNIT, "Result") == "success"
    assert "--s3-config %s --s3-registries private" % S3_SETTINGS in vm.unit_property(SCAN_UNIT, "ExecStart")
    result = vm.run("timeout 600 systemctl start %s", SCAN_UNIT)
    assert result.rc == 0 and vm.unit_property(SCAN_UNIT, "Result") == "success"
    report = json.loads(vm.check("cat %s", SCAN_REPORT))
    assert report["incomplete_registries"] == [] and report["scan_errors"] == []
    assert report["blob_scan"]["registries"] == ["private"]
    values = prom_values(vm.check("cat %s", SCAN_PROM))
    assert values["regwarden_scan_success"] == 1
    assert sum(v for k, v in values.items() if k.startswith("regwarden_scan_findings")) == 0, values
    # Where the bytes are, from the bucket listing.
    capacity = report["blob_scan"]["capacity"]["private"]
    assert capacity["blob_bytes"] > 0 and len(capacity["repositories"]) >= 5, capacity
    assert values['regwarden_capacity_blob_bytes{registry="private"}'] == capacity["blob_bytes"]

    result = vm.run("timeout 600 systemctl start %s", PROBE_UNIT)
    probe = json.loads(vm.check("cat %s", PROBE_REPORT))
    assert result.rc == 0 and vm.unit_property(PROBE_UNIT, "Result") == "success", probe
    assert probe["unfetchable"] == [] and probe["counts"]["findings"] == 0, probe
    assert probe["counts"]["repositories"] >= 5, probe


def test_the_s3_maintenance_playbook_runs_the_same_cycle(vm):
    """playbooks/s3_maintenance.yml (several hosts on one bucket) on this one host, through Molecule's
    inventory: read-only, tag cleanup + GC on the leader, every cache flushed, writable again."""
    inventory = os.environ.get("MOLECULE_INVENTORY_FILE")
    assert inventory and os.path.exists(inventory), "verify runs under molecule (MOLECULE_INVENTORY_FILE)"
    repo = unique("s3/playbook")
    old = vm.push(repo, "old", unique("seed"))
    time.sleep(1.1)
    new = vm.push(repo, "new", unique("seed"))
    vm.check("docker exec %s redis-cli SET regwarden-molecule-marker 1", vm.container("redis"))
    project = pathlib.Path(__file__).resolve().parents[4]
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_CONFIG=str(project / "ansible.cfg"))
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", str(project / ".collections"))
    proc = subprocess.run([str(pathlib.Path(sys.executable).parent / "ansible-playbook"), "-i", inventory,
                           str(project / "playbooks" / "s3_maintenance.yml")], cwd=project, env=env,
                          capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "failed=0" in proc.stdout
    assert vm.status("/v2/%s/manifests/old" % repo) == 404
    assert vm.pull(repo, "new")["manifest_digest"] == new["manifest_digest"]
    blobs = vm.bucket_keys("%s/blobs/" % vm.root)
    assert not [d for d in old["layers"] if "%s/blobs/sha256/%s/%s/data" % (vm.root, d[7:9], d[7:]) in blobs]
    assert vm.check("docker exec %s redis-cli EXISTS regwarden-molecule-marker", vm.container("redis")).strip() == "0"
    for service in vm.replicas:
        assert "config-readonly" not in vm.check("docker inspect --format '{{json .Config.Cmd}}' %s",
                                                 vm.container(service))
    # The manager's environment is back as it was: a later GC by hand is not told the bucket is read-only.
    assert "REGWARDEN_BUCKET_READ_ONLY" not in vm.check("systemctl show-environment")
