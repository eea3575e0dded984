"""Maintenance timers: GC (registry stopped while it runs, never --delete-untagged), then the scan."""

import json
import time

import pytest
from conftest import GC_UNIT, SCAN_UNIT, unique

REPORT = "/var/lib/regwarden/scan.json"
PROM = "/var/lib/node_exporter/textfile_collector/regwarden_scan.prom"
GC_SCRIPT = "/usr/local/sbin/regwarden-registry-gc"


def unit_property(vm, unit, name):
    return vm.check("systemctl show --property %s --value %s", name, unit).strip()


def start_and_wait(vm, unit, timeout=600):
    """`systemctl start` of a oneshot unit returns when it finished."""
    result = vm.run("timeout %s systemctl start %s", timeout, unit)
    return result, unit_property(vm, unit, "Result")


def test_timers_carry_the_configured_schedules(vm, scenario):
    schedules = {GC_UNIT: scenario.settings["docker_registry_gc_schedule"],
                 SCAN_UNIT: scenario.settings["docker_registry_scan_schedule"]}
    for unit, schedule in schedules.items():
        timer = vm.host.service(unit + ".timer")
        assert timer.is_enabled and timer.is_running, unit
        assert "OnCalendar=%s" % schedule in unit_property(vm, unit + ".timer", "TimersCalendar")
        assert unit_property(vm, unit + ".timer", "Unit") == unit + ".service"


def test_a_scan_always_follows_a_gc_and_gc_follows_tag_cleanup(vm):
    gc = GC_UNIT + ".service"
    scan = SCAN_UNIT + ".service"
    assert scan in unit_property(vm, gc, "Wants").split()
    assert scan in unit_property(vm, gc, "Before").split()
    assert gc in unit_property(vm, scan, "After").split()
    # The slot the tag-cleanup step plugs into: GC is ordered after it.
    assert "regwarden-registry-tag-cleanup.service" in unit_property(vm, gc, "After").split()
    assert "regwarden-registry.service" in unit_property(vm, gc, "Requires").split()


def test_gc_command_never_deletes_untagged(vm):
    assert "path=%s " % GC_SCRIPT in unit_property(vm, GC_UNIT + ".service", "ExecStart")
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

    result, outcome = start_and_wait(vm, GC_UNIT + ".service")
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

    # The scan ran right after the GC.
    scan_log = vm.check("journalctl --no-pager -o cat -u %s --since %s", SCAN_UNIT + ".service", since)
    assert scan_log.strip(), "the scan did not run after the GC"
    assert int(vm.check("stat -c %%Y %s", REPORT)) > int(report_before)


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
    result, outcome = start_and_wait(vm, SCAN_UNIT + ".service")
    # Findings are exit 1, which the unit accepts (docker_registry_scan_fail_on_findings: false).
    assert result.rc == 0 and outcome == "success"
    assert unit_property(vm, SCAN_UNIT + ".service", "ExecMainStatus") == "1"

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
