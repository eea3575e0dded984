"""After the reboot (side_effect): every service is enabled and up, every port answers."""

import pytest
import yaml
from conftest import GC_UNIT, SCAN_UNIT, STACK_UNIT


@pytest.mark.parametrize("unit", ["docker.service", "containerd.service", STACK_UNIT,
                                  GC_UNIT + ".timer", SCAN_UNIT + ".timer"])
def test_unit_enabled_and_active_after_reboot(host, unit):
    service = host.service(unit)
    assert service.is_enabled, "%s is not enabled" % unit
    assert service.is_running, "%s is not active" % unit


def test_stack_came_up_with_this_boot(vm):
    """The containers were started after the VM booted, by the stack unit (not left over)."""
    # The VM's boot is its PID 1's start (a container shares the host's uptime).
    booted = int(vm.check("sh -c 'date -d \"$(ps -o lstart= -p 1)\" +%s'"))
    for service in vm.services():
        started = vm.inspect(vm.container(service), "{{.State.StartedAt}}")
        assert int(vm.check("date -d %s +%%s", started)) >= booted, "%s was started before this boot" % service


def test_every_registry_container_and_nginx_is_healthy(vm):
    for service in vm.services():
        container = vm.container(service)
        assert vm.inspect(container, "{{.State.Status}}") == "running", service
        assert vm.inspect(container, "{{.State.Health.Status}}") == "healthy", service
        assert vm.inspect(container, "{{.HostConfig.RestartPolicy.Name}}") == "unless-stopped", service


def test_every_nginx_port_answers_v2_and_healthz(vm, scenario):
    for name in scenario.registry_names:
        private = name == scenario.private_name
        has_users = private or "users" in scenario.cache(name)
        base = scenario.private_url if private else scenario.cache_url(name)
        healthz = vm.request(base + "/healthz")
        assert healthz["status"] == 200, (name, healthz)
        assert healthz["body_text"] == "ok\n"
        v2 = vm.request(base + "/v2/")
        assert v2["status"] == (401 if has_users else 200), (name, v2)
        assert v2["headers"]["docker-distribution-api-version"] == "registry/2.0"
        if has_users:
            credentials = True if private else scenario.cache_credentials(name)
            assert vm.client("request", "--url", base + "/v2/", auth=credentials)["status"] == 200


def test_debug_ports_listen_on_loopback_only(vm, scenario):
    listening = vm.check("ss -Hltn")
    for name, (_, debug_port) in scenario.ports.items():
        addresses = [line.split()[3] for line in listening.splitlines() if line.split()[3].endswith(":%d" % debug_port)]
        assert addresses == ["127.0.0.1:%d" % debug_port], (name, addresses)
        metrics = vm.request("http://127.0.0.1:%d/metrics" % debug_port)
        assert metrics["status"] == 200, name
    # ...while the nginx ports are published for clients.
    for name, (port, _) in scenario.ports.items():
        assert any(line.split()[3] in ("0.0.0.0:%d" % port, "*:%d" % port) for line in listening.splitlines()), name


def test_health_checks_use_ipv4_loopback_and_accept_401(vm):
    for service in vm.services():
        test = vm.inspect(vm.container(service), "{{json .Config.Healthcheck.Test}}")
        assert "127.0.0.1" in test and "localhost" not in test, (service, test)
    private = vm.inspect(vm.container("registry-private"), "{{json .Config.Healthcheck.Test}}")
    assert "401" in private


def test_rendered_configs_hold_no_keys_distribution_28_ignores(vm, scenario):
    base = scenario.settings["docker_registry_base_dir"]
    for name in scenario.registry_names:
        config = yaml.safe_load(vm.check("cat %s/config/%s/config.yml", base, name))
        assert "ttl" not in config.get("proxy", {}), name
        assert "maxsize" not in config["storage"].get("filesystem", {}), name
        assert config["storage"]["filesystem"]["rootdirectory"] == "/var/lib/registry"
        if name == scenario.private_name:
            assert config["storage"]["delete"]["enabled"] is True
            assert config["storage"]["maintenance"]["uploadpurging"]["enabled"] is True
            assert config["auth"]["htpasswd"]["path"] == "/auth/htpasswd"
        else:
            assert config["proxy"]["remoteurl"] == scenario.cache(name)["remote_url"]


def test_htpasswd_holds_bcrypt_hashes_only(vm, scenario):
    base = scenario.settings["docker_registry_base_dir"]
    users = {scenario.private_name: (scenario.user, scenario.password),
             "mirror": scenario.cache_credentials("mirror")}
    for name, (user, password) in users.items():
        lines = vm.check("cat %s/auth/%s/htpasswd", base, name).split()
        assert [line.split(":", 1)[0] for line in lines] == [user]
        assert all(line.split(":", 1)[1].startswith(("$2b$", "$2y$", "$2a$")) for line in lines)
        assert password not in "".join(lines)
    # Each registry sees its own users only: the mount is its own auth directory.
    mounts = vm.inspect(vm.container("registry-mirror"), "{{json .Mounts}}")
    assert '"Source":"%s/auth/mirror"' % base in mounts
    assert not vm.host.file("%s/auth/htpasswd" % base).exists


def test_registry_data_follows_the_scanner_layout(vm, scenario):
    for name in scenario.registry_names:
        assert vm.host.file("%s/%s" % (scenario.data_dir, name)).is_directory
        mounts = vm.inspect(vm.container("registry-%s" % name), "{{json .Mounts}}")
        assert '"Source":"%s/%s"' % (scenario.data_dir, name) in mounts
        assert '"Destination":"/var/lib/registry"' in mounts
