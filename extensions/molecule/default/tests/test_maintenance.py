"""Maintenance timers: GC (registry stopped while it runs, never --delete-untagged), then the scan."""

import json
import time

import pytest
from conftest import GC_UNIT, SCAN_UNIT, unique

REPORT = "/var/lib/regwarden/scan.json"
PROM = "/var/lib/node_exporter/textfile_collector/regwarden_scan.prom"
GC_SCRIPT = "/usr/local/sbin/regwarden-registry-gc"
GC_PROM = "/var/lib/node_exporter/textfile_collector/regwarden_gc.prom"
CLEANUP_UNIT = "regwarden-registry-tag-cleanup.service"
CLEANUP_REPORT = "/var/lib/regwarden/tag-cleanup.json"
PROBE_UNIT = "regwarden-registry-probe"
PROBE_PROM = "/var/lib/node_exporter/textfile_collector/regwarden_probe.prom"
PROBE_PASSWORD = "/etc/regwarden/probe.password"
RULES_FILE = "regwarden-registry.rules.yml"




def test_timers_carry_the_configured_schedules(vm, scenario):
    schedules = {GC_UNIT: scenario.settings["docker_registry_gc_schedule"],
                 SCAN_UNIT: scenario.settings["docker_registry_scan_schedule"]}
    for unit, schedule in schedules.items():
        timer = vm.host.service(unit + ".timer")
        assert timer.is_enabled and timer.is_running, unit
        assert "OnCalendar=%s" % schedule in vm.unit_property(unit + ".timer", "TimersCalendar")
        assert vm.unit_property(unit + ".timer", "Unit") == unit + ".service"


def test_a_scan_always_follows_a_gc_and_gc_follows_tag_cleanup(vm):
    gc = GC_UNIT + ".service"
    scan = SCAN_UNIT + ".service"
    assert scan in vm.unit_property(gc, "Wants").split()
    assert scan in vm.unit_property(gc, "Before").split()
    assert gc in vm.unit_property(scan, "After").split()
    # The slot the tag-cleanup step plugs into: GC is ordered after it.
    assert "regwarden-registry-tag-cleanup.service" in vm.unit_property(gc, "After").split()
    assert "regwarden-registry.service" in vm.unit_property(gc, "Requires").split()


def prom_values(text):
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def test_tag_cleanup_runs_first_when_enabled(vm):
    gc = GC_UNIT + ".service"
    assert CLEANUP_UNIT in vm.unit_property(gc, "Wants").split()
    assert gc in vm.unit_property(CLEANUP_UNIT, "Wants").split()
    assert gc in vm.unit_property(CLEANUP_UNIT, "Before").split()
    script = vm.check("cat /usr/local/sbin/regwarden-registry-tag-cleanup")
    commands = [line for line in script.splitlines() if not line.lstrip().startswith("#")]
    assert commands and not any("rmtree" in line or "rm " in line for line in commands)


def test_htpasswd_hashes_use_the_configured_bcrypt_cost(vm, scenario):
    rounds = scenario.settings["docker_registry_private_bcrypt_rounds"]
    lines = vm.check("cat %s/auth/%s/htpasswd", scenario.settings["docker_registry_base_dir"],
                     scenario.private_name).split()
    assert lines and all(line.split(":", 1)[1].split("$")[2] == "%02d" % rounds for line in lines)


def test_gc_command_never_deletes_untagged(vm):
    assert "path=%s " % GC_SCRIPT in vm.unit_property(GC_UNIT + ".service", "ExecStart")
    script = vm.check("cat %s", GC_SCRIPT)
    commands = [line for line in script.splitlines() if "garbage-collect" in line and not line.lstrip().startswith("#")]
    assert commands, "no garbage-collect invocation in the GC script"
    assert not any("--delete-untagged" in line for line in commands)


@pytest.fixture(scope="module")
def multiarch(vm, scenario):
    """A multi-arch image in the private registry whose children are not tagged themselves."""
    repo = unique("gc/multiarch")
    return {"repo": repo, **vm.client("push-index", "--registry", scenario.private_url, "--repo", repo,
                                      "--tag", "v1", "--seed", unique("seed"), auth=True)}


def test_gc_restarts_each_registry_keeps_index_children_and_triggers_the_scan(vm, scenario, multiarch):
    private = vm.container("registry-private")
    empty = [name for name in scenario.registry_names
             if not vm.host.file("%s/%s/docker/registry/v2/repositories" % (scenario.data_dir, name)).exists]
    started_before = vm.inspect(private, "{{.State.StartedAt}}")
    since = vm.check("date '+%Y-%m-%d %H:%M:%S'").strip()
    time.sleep(1)  # the report's generated_at has one-second resolution
    report_before = vm.check("sh -c %s", "stat -c %%Y %s 2>/dev/null || echo 0" % REPORT).strip()

    result, outcome = vm.start_and_wait(GC_UNIT + ".service")
    log = vm.check("journalctl --no-pager -o cat -u %s --since %s", GC_UNIT + ".service", since)
    assert result.rc == 0 and outcome == "success", log

    # Stopped for its GC and started again: no descriptor cache outlives the sweep.
    assert vm.inspect(private, "{{.State.StartedAt}}") != started_before
    assert "%s: stopping registry-%s" % (scenario.private_name, scenario.private_name) in log
    assert "blobs marked" in log
    # A registry nothing went through yet is clean, not failed.
    for name in empty:
        assert "%s: empty registry, nothing to collect" % name in log

    vm.wait_stack_healthy()
    base = "%s/v2/%s" % (scenario.private_url, multiarch["repo"])
    assert vm.request(base + "/manifests/v1", auth=True,
                      headers=["Accept: application/vnd.oci.image.index.v1+json"])["status"] == 200
    for child in multiarch["children"]:
        answer = vm.request("%s/manifests/%s" % (base, child["manifest_digest"]), auth=True,
                            headers=["Accept: application/vnd.oci.image.manifest.v1+json"])
        assert answer["status"] == 200, "GC removed the untagged child %s" % child["arch"]
        for layer in child["layers"]:
            assert vm.request("%s/blobs/%s" % (base, layer), auth=True)["body_digest"] == layer

    # Every registry's run is recorded; bytes freed are measured on the filesystem.
    gc = prom_values(vm.check("cat %s", GC_PROM))
    for name in scenario.registry_names:
        assert gc['regwarden_gc_success{registry="%s"}' % name] == 1, name
    assert 'regwarden_gc_bytes_freed{registry="%s"}' % scenario.private_name in gc
    assert gc['regwarden_gc_last_run_timestamp_seconds{registry="%s"}' % scenario.private_name] >= int(report_before)

    # The scan ran right after the GC.
    scan_log = vm.check("journalctl --no-pager -o cat -u %s --since %s", SCAN_UNIT + ".service", since)
    assert scan_log.strip(), "the scan did not run after the GC"
    assert int(vm.check("stat -c %%Y %s", REPORT)) > int(report_before)


def test_tag_cleanup_then_gc_then_scan_keeps_the_newest_multiarch_tag_whole(vm, scenario):
    repo = unique("cleanup/multiarch")
    old = vm.client("push-index", "--registry", scenario.private_url, "--repo", repo, "--tag", "old",
                    "--seed", unique("seed"), auth=True)
    time.sleep(1.2)  # newest is by the tag link's mtime
    kept = vm.client("push-index", "--registry", scenario.private_url, "--repo", repo, "--tag", "new",
                     "--seed", unique("seed"), auth=True)
    blobs_dir = "%s/%s/docker/registry/v2/blobs/sha256" % (scenario.data_dir, scenario.private_name)
    old_layer = old["children"][0]["layers"][0]
    assert vm.host.file("%s/%s/%s/data" % (blobs_dir, old_layer[7:9], old_layer[7:])).exists
    since = vm.check("date '+%Y-%m-%d %H:%M:%S'").strip()
    time.sleep(1)

    # The GC timer's unit pulls the cleanup in first; the scan follows the GC.
    result, outcome = vm.start_and_wait(GC_UNIT + ".service")
    journal = "journalctl --no-pager -o short-iso-precise -u %s -u %s -u %s --since %s"
    log = vm.check(journal, CLEANUP_UNIT, GC_UNIT + ".service", SCAN_UNIT + ".service", since)
    assert result.rc == 0 and outcome == "success", log
    assert vm.unit_property(CLEANUP_UNIT, "Result") == "success", log

    # Order: cleanup finished before GC started, GC finished before the scan (queued by GC) started.
    def timestamp(unit, name):
        return int(vm.unit_property(unit, name + "TimestampMonotonic") or 0)
    gc = GC_UNIT + ".service"
    scan_unit = SCAN_UNIT + ".service"
    assert 0 < timestamp(CLEANUP_UNIT, "InactiveEnter") <= timestamp(gc, "ExecMainStart")
    vm.wait_until("the scan GC queued", lambda: timestamp(scan_unit, "ExecMainStart") >= timestamp(gc, "InactiveEnter")
                  and vm.unit_property(scan_unit, "ActiveState") in ("inactive", "failed"), timeout=300)
    assert vm.unit_property(scan_unit, "Result") == "success"

    report = json.loads(vm.check("cat %s", CLEANUP_REPORT))
    assert report["summary"], report
    vm.wait_stack_healthy()
    base = "%s/v2/%s" % (scenario.private_url, repo)
    index_accept = ["Accept: application/vnd.oci.image.index.v1+json"]
    assert vm.request(base + "/manifests/old", auth=True, headers=index_accept)["status"] == 404
    assert vm.request(base + "/manifests/new", auth=True, headers=index_accept)["status"] == 200
    for child in kept["children"]:
        pulled = vm.client("pull-image", "--registry", scenario.private_url, "--repo", repo,
                           "--ref", child["manifest_digest"], auth=True)
        assert pulled["manifest_digest"] == child["manifest_digest"]
        assert set(pulled["blobs"]) == {child["config_digest"], *child["layers"]}
        for digest, blob in pulled["blobs"].items():
            assert blob["status"] == 200 and blob["digest"] == digest, (child["arch"], digest)
    # Plain GC freed what only the removed tag used.
    assert not vm.host.file("%s/%s/%s/data" % (blobs_dir, old_layer[7:9], old_layer[7:])).exists

    scan = json.loads(vm.check("cat %s", REPORT))
    for section in (scan["blob_scan"], scan["index_audit"]):
        for key, findings in section.items():
            if isinstance(findings, list):
                assert not [f for f in findings if isinstance(f, dict) and f.get("repo") == repo], key


def test_probe_timer_and_service_write_the_probe_metrics(vm, scenario):
    timer = vm.host.service(PROBE_UNIT + ".timer")
    assert timer.is_enabled and timer.is_running
    calendar = vm.unit_property(PROBE_UNIT + ".timer", "TimersCalendar")
    assert "OnCalendar=*-*-* *:00/15:00" in calendar, calendar
    password = vm.host.file(PROBE_PASSWORD)
    assert password.mode == 0o600 and password.user == "root"
    assert scenario.password not in vm.unit_property(PROBE_UNIT + ".service", "ExecStart")

    started = int(vm.check("date +%s"))
    result, outcome = vm.start_and_wait(PROBE_UNIT + ".service")
    assert result.rc == 0 and outcome == "success", vm.check("journalctl --no-pager -o cat -u %s -n 30",
                                                              PROBE_UNIT + ".service")
    values = prom_values(vm.check("cat %s", PROBE_PROM))
    assert values["regwarden_probe_success"] == 1
    assert values["regwarden_probe_catalog_reachable"] == 1
    assert values["regwarden_probe_last_success_timestamp_seconds"] >= started
    assert "regwarden_probe_findings" in values


def test_alert_rules_installed_where_the_option_says(vm, scenario):
    path = "%s/%s" % (scenario.settings["docker_registry_prometheus_rules_dir"], RULES_FILE)
    rules = vm.host.file(path)
    assert rules.exists and rules.mode == 0o644
    assert "RegistryProbeStale" in rules.content_string
    dashboard = vm.host.file("%s/regwarden-registry-dashboard.json"
                             % scenario.settings["docker_registry_grafana_dashboards_dir"])
    assert dashboard.exists and dashboard.mode == 0o644
    assert json.loads(dashboard.content_string)["uid"] == "regwarden-registry"


def test_scan_service_reports_damage_planted_in_private_storage(vm, scenario):
    private_url = scenario.private_url
    storage = "%s/%s/docker/registry/v2" % (scenario.data_dir, scenario.private_name)

    # Damage 1: an orphan layer link (the blob's data is gone, its link stays).
    broken = vm.client("push-image", "--registry", private_url, "--repo", unique("scan/broken"), "--tag", "v1",
                       "--seed", unique("seed"), auth=True)
    lost = broken["layers"][0]
    vm.check("rm %s/blobs/sha256/%s/%s/data", storage, lost[7:9], lost[7:])

    # Damage 2: an image index whose child was deleted through the API (its revision link goes).
    index_repo = unique("scan/multiarch")
    index = vm.client("push-index", "--registry", private_url, "--repo", index_repo, "--tag", "v1",
                      "--seed", unique("seed"), auth=True)
    orphan_child = index["children"][1]["manifest_digest"]
    deleted = vm.request("%s/v2/%s/manifests/%s" % (private_url, index_repo, orphan_child), method="DELETE", auth=True)
    assert deleted["status"] == 202

    started = int(vm.check("date +%s"))
    result, outcome = vm.start_and_wait(SCAN_UNIT + ".service")
    # Findings are exit 1, which the unit accepts (docker_registry_scan_fail_on_findings: false).
    assert result.rc == 0 and outcome == "success"
    assert vm.unit_property(SCAN_UNIT + ".service", "ExecMainStatus") == "1"

    report = json.loads(vm.check("cat %s", REPORT))
    orphan_links = {(f["registry"], f["repo"], f["digest"]) for f in report["blob_scan"]["orphan_layer_links"]}
    assert (scenario.private_name, broken["repo"], lost) in orphan_links
    children = {(f["registry"], f["repo"], f["child_digest"]) for f in report["index_audit"]["orphan_index_children"]}
    assert (scenario.private_name, index_repo, orphan_child) in children
    # The scanner never repairs on its own.
    assert vm.host.file("%s/repositories/%s/_layers/sha256/%s/link" % (storage, broken["repo"], lost[7:])).exists

    metrics = vm.check("cat %s", PROM)
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
              for line in metrics.splitlines() if line and not line.startswith("#")}
    assert values['regwarden_scan_findings{registry="%s",kind="orphan_layer_links"}' % scenario.private_name] >= 1
    assert values['regwarden_scan_findings{registry="%s",kind="orphan_index_children"}' % scenario.private_name] >= 1
    assert values["regwarden_scan_success"] == 1
    assert values["regwarden_scan_last_run_timestamp_seconds"] >= started


def test_gc_skips_a_registry_whose_lock_another_writer_holds(vm, scenario):
    """The GC script takes the lock every regwarden writer takes (flock on the registry directory)."""
    locked = "%s/%s" % (scenario.data_dir, scenario.private_name)
    # One process holds the lock (the subshell execs sleep with the locked descriptor): its PID ends it.
    holder = vm.check("sh -c %s", "(exec 9<%s; flock --nonblock 9 && exec sleep 120) >/dev/null 2>&1 & echo $!"
                      % locked).strip()
    try:
        vm.wait_until("the lock to be held", lambda: vm.run("flock --nonblock %s true", locked).rc != 0,
                      timeout=20, interval=1)
        since = vm.check("date '+%Y-%m-%d %H:%M:%S'").strip()
        time.sleep(1)
        _result, outcome = vm.start_and_wait(GC_UNIT + ".service")
        log = vm.check("journalctl --no-pager -o cat -u %s --since %s", GC_UNIT + ".service", since)
        assert outcome != "success", log
        assert "%s: its lock (flock on %s) is held" % (scenario.private_name, locked) in log
        assert "%s: stopping registry-%s" % (scenario.private_name, scenario.private_name) not in log
        # The other registries were collected all the same.
        assert "garbage collection failed for: %s" % scenario.private_name in log
        gc = prom_values(vm.check("cat %s", GC_PROM))
        assert gc['regwarden_gc_success{registry="%s"}' % scenario.private_name] == 0
    finally:
        vm.run("kill %s", holder)
    vm.wait_until("the lock to be free", lambda: vm.run("flock --nonblock %s true", locked).rc == 0,
                  timeout=20, interval=1)
    vm.wait_stack_healthy()


def test_scan_of_a_registry_that_is_not_there_fails_the_unit(vm, scenario):
    """An unmounted or vanished registry reads as nothing: exit 2, registry_scanned 0, never clean."""
    name = scenario.caches[-1]["name"]
    path = "%s/%s" % (scenario.data_dir, name)
    vm.check("mv %s %s.away", path, path)
    try:
        _result, outcome = vm.start_and_wait(SCAN_UNIT + ".service")
        assert outcome != "success"
        assert vm.unit_property(SCAN_UNIT + ".service", "ExecMainStatus") == "2"
        values = prom_values(vm.check("cat %s", PROM))
        assert values["regwarden_scan_success"] == 0
        assert values['regwarden_scan_registry_scanned{registry="%s"}' % name] == 0
        report = json.loads(vm.check("cat %s", REPORT))
        assert name in report["incomplete_registries"]
    finally:
        vm.check("mv %s.away %s", path, path)
    _result, outcome = vm.start_and_wait(SCAN_UNIT + ".service")
    assert outcome == "success"
    assert vm.unit_property(SCAN_UNIT + ".service", "ExecMainStatus") in ("0", "1")
