"""Pull records and what reads them, on the VM: nginx logs manifest pulls, the timer's fold keeps
last-pull times across log rotation, tag cleanup keeps the last pulled tag, and a cache over its
max_size shrinks under it in the GC cycle while what it keeps still pulls."""

import json
import time

from conftest import GC_UNIT, SCAN_UNIT, UPSTREAM_CONTAINER, UPSTREAM_URL, unique

RECORDS_DIR = "/var/lib/regwarden/pulls"
LOG_DIR = "/var/log/regwarden/pulls"
PULL_UNIT = "regwarden-registry-pull-record"
MANIFEST_ACCEPT = "Accept: application/vnd.oci.image.manifest.v1+json"
INDEX_ACCEPT = "Accept: application/vnd.oci.image.index.v1+json"
BOUNDED = "bounded"


def fold(vm):
    result, outcome = vm.start_and_wait(PULL_UNIT + ".service", timeout=120)
    assert result.rc == 0 and outcome == "success", vm.run("journalctl --no-pager -o cat -n 30 -u %s.service",
                                                           PULL_UNIT).stdout
    return result


def records(vm, registry):
    return json.loads(vm.check("cat %s/%s.json", RECORDS_DIR, registry))


def inode(vm, path):
    result = vm.run("stat -c %%i %s", path)
    return result.stdout.strip() if result.rc == 0 else None


def test_the_fold_runs_on_its_timer(vm, scenario):
    timer = vm.host.service(PULL_UNIT + ".timer")
    assert timer.is_enabled and timer.is_running
    assert vm.unit_property(PULL_UNIT + ".timer", "Unit") == PULL_UNIT + ".service"


def test_pulls_through_nginx_become_records_across_log_rotation(vm, scenario):
    private, url = scenario.private_name, scenario.private_url
    repo = unique("records/app")
    pushed = vm.client("push-image", "--registry", url, "--repo", repo, "--tag", "v1", "--seed", unique("seed"),
                       auth=True)
    fold(vm)  # the first fold starts the records (complete from then on)
    started = time.time()
    vm.client("pull-image", "--registry", url, "--repo", repo, "--ref", "v1", auth=True)
    by_digest = vm.request("%s/v2/%s/manifests/%s" % (url, repo, pushed["manifest_digest"]), method="HEAD",
                           auth=True, headers=[MANIFEST_ACCEPT])
    assert by_digest["status"] == 200
    missing = vm.request("%s/v2/%s/manifests/nope" % (url, repo), auth=True, headers=[MANIFEST_ACCEPT])
    assert missing["status"] == 404
    fold(vm)
    got = records(vm, private)
    assert got["tags"][repo]["v1"] >= started - 1
    assert got["digests"][repo][pushed["manifest_digest"][7:]] >= started - 1
    assert "nope" not in got["tags"][repo]  # a 404 is no pull
    assert got["complete_since"] <= started

    # Past 4096 bytes (the scenario's docker_registry_pull_log_rotate_bytes) the fold renames the log and
    # has nginx reopen it: the pulls after that land in a new file and are recorded too.
    log = "%s/%s.log" % (LOG_DIR, private)
    before = inode(vm, log)
    for _ in range(60):  # about 95 bytes a line
        assert vm.request("%s/v2/%s/manifests/v1" % (url, repo), method="HEAD", auth=True,
                          headers=[MANIFEST_ACCEPT])["status"] == 200
    fold(vm)
    assert inode(vm, log + ".1") == before  # renamed by the fold
    vm.wait_until("nginx to reopen its pull log", lambda: inode(vm, log) not in (None, before), timeout=30, interval=1)
    late = time.time() - 1
    vm.client("pull-image", "--registry", url, "--repo", repo, "--ref", "v1", auth=True)
    fold(vm)
    assert int(vm.check("stat -c %%s %s", log)) > 0, "nginx did not write to the reopened log"
    after = records(vm, private)
    assert after["tags"][repo]["v1"] >= late
    assert after["complete_since"] == got["complete_since"]  # nothing lost to the rotation


def blob_bytes(vm, scenario, registry):
    """Bytes of the registry's blob data files (what max_size bounds)."""
    sizes = vm.check("find %s -name data -type f -printf '%%s\\n'",
                     "%s/%s/docker/registry/v2/blobs" % (scenario.data_dir, registry))
    return sum(int(size) for size in sizes.split())


def test_one_gc_cycle_keeps_the_last_pulled_tag_and_brings_a_cache_under_its_bound(vm, scenario):
    # Retention by last pull in the private registry (rule pulled/.*: keep 1, keep_last_pulled 1).
    url = scenario.private_url
    repo = unique("pulled/app")
    pushed = {}
    for tag in ("pulled", "forgotten", "newest"):
        pushed[tag] = vm.client("push-image", "--registry", url, "--repo", repo, "--tag", tag,
                                "--seed", unique("seed"), auth=True)
        time.sleep(1.2)  # newest is by the tag link's mtime
    pulled_at = time.time()
    vm.client("pull-image", "--registry", url, "--repo", repo, "--ref", "pulled", auth=True)
    scanned_private = scenario.private_name

    # The bounded cache (max_size 200k) pulls three images of about 130 kB each, one after the other; then
    # the first one's manifest by digest: the most recently used by the pull records alone (its tag's
    # time, which the cache rewrites when it fetches a tag from upstream, says it is the oldest).
    cache_url = scenario.cache_url(BOUNDED)
    repos = [unique("library/bounded-%d" % n) for n in range(3)]
    images = {}
    data = "%s/%s/docker/registry/v2" % (scenario.data_dir, BOUNDED)
    for cached in repos:
        images[cached] = vm.client("push-image", "--registry", UPSTREAM_URL, "--repo", cached, "--tag", "v1",
                                   "--seed", unique("seed"))
        pulled = vm.client("pull-image", "--registry", cache_url, "--repo", cached, "--ref", "v1")
        assert pulled["manifest_digest"] == images[cached]["manifest_digest"]
        layer = images[cached]["layers"][-1]
        vm.wait_until("the cache to store %s" % cached, lambda lay=layer, rep=cached: vm.run(
            "test -f %s/repositories/%s/_layers/sha256/%s/link", data, rep, lay[7:]).rc == 0, timeout=60, interval=1)
        time.sleep(1.1)
    kept = images[repos[0]]
    again = vm.request("%s/v2/%s/manifests/%s" % (cache_url, repos[0], kept["manifest_digest"]),
                       headers=[MANIFEST_ACCEPT])
    assert again["status"] == 200
    assert blob_bytes(vm, scenario, BOUNDED) > 204800

    result, outcome = vm.start_and_wait(GC_UNIT + ".service")
    log = vm.run("journalctl --no-pager -o cat -n 80 -u %s.service -u regwarden-registry-tag-cleanup.service",
                 GC_UNIT).stdout
    assert result.rc == 0 and outcome == "success", log
    vm.wait_stack_healthy()

    # The private registry: the pulled tag and the newest push stay, the other goes.
    tags = vm.request("%s/v2/%s/tags/list" % (url, repo), auth=True)
    assert sorted(json.loads(tags["body_text"])["tags"]) == ["newest", "pulled"], tags
    for tag in ("pulled", "newest"):
        assert vm.client("pull-image", "--registry", url, "--repo", repo, "--ref", tag,
                         auth=True)["manifest_digest"] == pushed[tag]["manifest_digest"]

    # The cache: under its bound, the two least recently used evicted, the one pulled last kept in its own storage.
    assert blob_bytes(vm, scenario, BOUNDED) <= 204800, log
    report = json.loads(vm.check("cat /var/lib/regwarden/cache-evict-%s.json", BOUNDED))
    evicted = [entry["repo"] for entry in report["eviction"][BOUNDED]["evicted_repositories"]]
    # (A re-run of verify finds the previous run's image too: used earlier, it goes first.)
    assert evicted[-2:] == repos[1:] and repos[0] not in evicted, report
    for digest in (kept["config_digest"], *kept["layers"]):
        assert vm.run("test -f %s/blobs/sha256/%s/%s/data", data, digest[7:9], digest[7:]).rc == 0, digest
    # With the upstream stopped, the kept image still pulls (from the cache's own storage).
    vm.check("docker stop %s", UPSTREAM_CONTAINER)
    try:
        pulled = vm.client("pull-image", "--registry", cache_url, "--repo", repos[0], "--ref", "v1")
    finally:
        vm.check("docker start %s", UPSTREAM_CONTAINER)
        vm.wait_upstream()
    assert pulled["manifest_digest"] == kept["manifest_digest"]
    assert all(blob["status"] == 200 and blob["digest"] == digest for digest, blob in pulled["blobs"].items())

    # The scan the GC queued reads the pull records too: each repository's last pull in the capacity figures.
    def stamp(unit, name):
        return int(vm.unit_property(unit, name + "TimestampMonotonic") or 0)
    scan = SCAN_UNIT + ".service"
    gc_done = stamp(GC_UNIT + ".service", "InactiveEnter")
    vm.wait_until("the scan GC queued", lambda: stamp(scan, "ExecMainStart") >= gc_done
                  and vm.unit_property(scan, "ActiveState") in ("inactive", "failed"), timeout=300)
    capacity = json.loads(vm.check("cat /var/lib/regwarden/scan.json"))["blob_scan"]["capacity"]
    assert capacity[scanned_private]["repositories"][repo]["last_pulled"] >= pulled_at - 1
    assert capacity[scanned_private]["pull_records_complete_since"] is not None
