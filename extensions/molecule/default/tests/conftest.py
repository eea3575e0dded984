"""Fixtures for the registry VM tests: everything runs inside the VM, through testinfra's `host`.

The scenario's settings are read from converge.yml (over the role defaults), so the tests and
the converge cannot drift apart. HTTP goes through registry_client.py, copied into the VM.
"""

import base64
import json
import pathlib
import uuid
from dataclasses import dataclass

import pytest
import yaml
from vm_shell import VMShell

TESTS_DIR = pathlib.Path(__file__).resolve().parent
SCENARIO_DIR = TESTS_DIR.parent
ROLE_DEFAULTS = SCENARIO_DIR.parents[2] / "roles" / "docker_registry" / "defaults" / "main.yml"
CLIENT_PATH = "/root/regwarden-tests/registry_client.py"
STACK_UNIT = "regwarden-registry.service"
GC_UNIT = "regwarden-registry-gc"
SCAN_UNIT = "regwarden-registry-scan"
UPSTREAM_CONTAINER = "regwarden-test-upstream"
UPSTREAM_URL = "http://127.0.0.1:5999"


def _scenario_vars():
    settings = yaml.safe_load(ROLE_DEFAULTS.read_text())
    plays = yaml.safe_load((SCENARIO_DIR / "converge.yml").read_text())
    converge = next(play for play in plays if play.get("roles"))
    settings.update(converge["vars"])
    return settings


@dataclass(frozen=True)
class Scenario:
    settings: dict

    @property
    def private_name(self):
        return self.settings["docker_registry_private_name"]

    @property
    def private_url(self):
        return "https://127.0.0.1:%d" % self.settings["docker_registry_private_port"]

    @property
    def user(self):
        return self.settings["docker_registry_private_users"][0]["username"]

    @property
    def password(self):
        return self.settings["docker_registry_private_users"][0]["password"]

    @property
    def cafile(self):
        return "%s/nginx/tls/%s.crt" % (self.settings["docker_registry_base_dir"], self.private_name)

    @property
    def caches(self):
        return self.settings["docker_registry_caches"]

    def cache(self, name):
        return next(cache for cache in self.caches if cache["name"] == name)

    def cache_url(self, name):
        scheme = "https" if self.cache(name).get("tls") else "http"
        return "%s://127.0.0.1:%d" % (scheme, self.cache(name)["port"])

    def cache_credentials(self, name):
        """(user, password) of a cache with users of its own."""
        user = self.cache(name)["users"][0]
        return user["username"], user["password"]

    @property
    def registry_names(self):
        return [self.private_name] + [cache["name"] for cache in self.caches]

    @property
    def ports(self):
        """nginx port and debug port of every registry, by name."""
        ports = {self.private_name: (self.settings["docker_registry_private_port"],
                                     self.settings["docker_registry_private_debug_port"])}
        for cache in self.caches:
            ports[cache["name"]] = (cache["port"], cache.get("debug_port", cache["port"] + 100))
        return ports

    @property
    def data_dir(self):
        return self.settings["docker_registry_data_dir"]

    @property
    def project(self):
        return self.settings["docker_registry_compose_project"]


@pytest.fixture(scope="session")
def scenario():
    return Scenario(_scenario_vars())


def unique(prefix):
    """Fresh names and seeds per run, so a re-run of verify never meets a previous run's cache."""
    return "%s-%s" % (prefix, uuid.uuid4().hex[:12])


class VM(VMShell):
    def __init__(self, host, scenario):
        super().__init__(host, scenario.project)
        self.scenario = scenario

    # --- commands ---------------------------------------------------------------------------
    def client(self, *args, auth=False):
        """Runs registry_client.py; the password travels in the environment, not in argv.

        ``auth``: True for the private registry's user, or a (user, password) pair.
        """
        command = ["python3", CLIENT_PATH, *[str(arg) for arg in args]]
        if auth:
            user, password = (self.scenario.user, self.scenario.password) if auth is True else auth
            command = ["env", "REGISTRY_PASSWORD=" + password, *command, "--user", user]
        if any(str(arg).startswith("https://") for arg in args):
            command += ["--cafile", self.scenario.cafile]
        result = self.host.run(" ".join(["%s"] * len(command)), *command)
        assert result.rc == 0, "registry client failed (%d): %s" % (result.rc, result.stderr)
        return json.loads(result.stdout)

    def request(self, url, method="GET", auth=False, headers=()):
        args = ["request", "--url", url, "--method", method]
        for header in headers:
            args += ["--header", header]
        return self.client(*args, auth=auth)

    # --- containers -------------------------------------------------------------------------
    def inspect(self, container, template):
        return self.check("docker inspect --format %s %s", template, container).strip()

    def services(self):
        return ["registry-%s" % name for name in self.scenario.registry_names] + ["nginx"]

    # --- waiting ----------------------------------------------------------------------------
    def stack_healthy(self):
        for service in self.services():
            state = self.run(
                "docker inspect --format '{{.State.Status}} {{.State.Health.Status}}' $(docker ps -aq "
                "--filter label=com.docker.compose.project=%s --filter label=com.docker.compose.service=%s)",
                self.scenario.project, service,
            )
            if state.rc != 0 or state.stdout.strip() != "running healthy":
                return False
        # nginx resolves the registries by name every 10 s: after a restart, wait for real answers.
        for name in self.scenario.registry_names:
            port = self.scenario.ports[name][0]
            tls = name == self.scenario.private_name or self.scenario.cache(name).get("tls")
            scheme = "https" if tls else "http"
            status = self.run("curl -sk -o /dev/null -w '%%{http_code}' %s://127.0.0.1:%s/v2/", scheme, port)
            if status.stdout.strip() not in ("200", "401"):
                return False
        return True

    def wait_stack_healthy(self, timeout=240):
        self.wait_until("every registry container and nginx to be healthy", self.stack_healthy, timeout)

    def wait_upstream(self, timeout=60):
        self.wait_until(
            "the test upstream registry",
            lambda: self.run("curl -s -o /dev/null -w '%%{http_code}' %s/v2/", UPSTREAM_URL).stdout == "200",
            timeout, interval=1,
        )


@pytest.fixture(scope="module")
def vm(host, scenario):
    source = (TESTS_DIR / "registry_client.py").read_bytes()
    host.run("mkdir -p %s", str(pathlib.PurePosixPath(CLIENT_PATH).parent))
    copy = host.run("echo %s | base64 -d > %s", base64.b64encode(source).decode(), CLIENT_PATH)
    assert copy.rc == 0, copy.stderr
    machine = VM(host, scenario)
    machine.wait_stack_healthy()
    return machine
