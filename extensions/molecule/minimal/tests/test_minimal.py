"""The VM with the optional features off: plain HTTP, no cache, no tag cleanup, no alert rules.

Every check runs inside the VM through testinfra's ``host``.
"""

import json
import pathlib

import pytest
import yaml

SCENARIO = pathlib.Path(__file__).resolve().parents[1]
ROLE_DEFAULTS = SCENARIO.parents[2] / "roles" / "docker_registry" / "defaults" / "main.yml"


@pytest.fixture(scope="module")
def settings():
    values = yaml.safe_load(ROLE_DEFAULTS.read_text())
    values.update(yaml.safe_load((SCENARIO / "converge.yml").read_text())[0]["vars"])
    return values


def status(host, url, user=None):
    auth = "-u %s" % user if user else ""
    return host.check_output("curl -s -o /dev/null -w '%%{http_code}' %s %s" % (auth, url))


def test_only_the_private_registry_and_nginx_run(host, settings):
    names = host.check_output("docker ps --format '{{.Label \"com.docker.compose.service\"}}'").split()
    assert sorted(name for name in names if name) == ["nginx", "registry-private"]


def test_plain_http_with_htpasswd_users(host, settings):
    user = settings["docker_registry_private_users"][0]
    url = "http://127.0.0.1:%d/v2/" % settings["docker_registry_private_port"]
    assert status(host, url) == "401"
    assert status(host, url, "%s:%s" % (user["username"], user["password"])) == "200"
    config = host.check_output("docker exec $(docker ps -qf label=com.docker.compose.service=nginx) nginx -T")
    assert " ssl" not in config and "ssl_certificate" not in config


def test_switched_off_steps_leave_no_units_and_no_script(host):
    for path in ("/etc/systemd/system/regwarden-registry-tag-cleanup.service",
                 "/usr/local/sbin/regwarden-registry-tag-cleanup"):
        assert not host.file(path).exists, path
    for timer in ("regwarden-registry-gc.timer", "regwarden-registry-scan.timer", "regwarden-registry-probe.timer"):
        assert host.service(timer).is_enabled and host.service(timer).is_running, timer
    gc_unit = host.check_output("systemctl show --property Wants --value regwarden-registry-gc.service")
    assert "tag-cleanup" not in gc_unit


def test_the_probe_speaks_http_and_the_scan_and_gc_run_clean(host, settings):
    exec_start = host.check_output("systemctl show --property ExecStart --value regwarden-registry-probe.service")
    assert "--url http://127.0.0.1:%d" % settings["docker_registry_private_port"] in exec_start
    assert "--ca-path" not in exec_start
    for unit in ("regwarden-registry-probe.service", "regwarden-registry-gc.service"):
        host.run("timeout 600 systemctl start %s" % unit)
        assert host.check_output("systemctl show --property Result --value %s" % unit) == "success", unit
    host.run("timeout 300 sh -c 'while systemctl is-active -q regwarden-registry-scan.service; do sleep 1; done'")
    report = json.loads(host.check_output("cat /var/lib/regwarden/scan.json"))
    assert report["incomplete_registries"] == [] and report["scan_errors"] == []
    assert report["blob_scan"]["registries"] == ["private"]
    assert not host.file("/etc/prometheus/rules").exists
    assert not host.file("/var/lib/grafana/dashboards").exists
