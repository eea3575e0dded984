"""Fixtures of the S3 scenario: everything runs inside the VM, through testinfra's ``host``.

The settings come from converge.yml over the role defaults; HTTP goes through the default
scenario's registry_client.py (one client for every scenario), copied into the VM.
"""

import base64
import json
import pathlib
import sys
import uuid

import pytest
import yaml

TESTS_DIR = pathlib.Path(__file__).resolve().parent
SCENARIO_DIR = TESTS_DIR.parent
ROLE_DEFAULTS = SCENARIO_DIR.parents[2] / "roles" / "docker_registry" / "defaults" / "main.yml"
DEFAULT_TESTS = SCENARIO_DIR.parent / "default" / "tests"
CLIENT_SOURCE = DEFAULT_TESTS / "registry_client.py"
sys.path.insert(0, str(DEFAULT_TESTS))  # vm_shell, shared with the default scenario's tests

from vm_shell import VMShell  # noqa: E402

CLIENT_PATH = "/root/regwarden-tests/registry_client.py"
S3_SETTINGS = "/etc/regwarden/s3.json"
# Lists the bucket with the scanner's own settings file and the role-installed boto3: {key: size}.
LIST_KEYS = """
import json, sys, boto3
from botocore.config import Config
s = json.load(open(%r))
client = boto3.session.Session().client("s3", endpoint_url=s["endpoint_url"], region_name=s["region"],
    aws_access_key_id=s["access_key"], aws_secret_access_key=s["secret_key"],
    config=Config(s3={"addressing_style": "path"}))
keys = {}
for page in client.get_paginator("list_objects_v2").paginate(Bucket=s["bucket"], Prefix=sys.argv[1]):
    for item in page.get("Contents") or ():
        keys[item["Key"]] = item["Size"]
json.dump(keys, sys.stdout)
""" % S3_SETTINGS


def scenario_settings():
    settings = yaml.safe_load(ROLE_DEFAULTS.read_text())
    plays = yaml.safe_load((SCENARIO_DIR / "converge.yml").read_text())
    settings.update(next(play for play in plays if play.get("roles"))["vars"])
    return settings


def unique(prefix):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:12])


class VM(VMShell):
    def __init__(self, host, settings):
        super().__init__(host, settings["docker_registry_compose_project"])
        self.settings = settings
        self.user = settings["docker_registry_private_users"][0]["username"]
        self.password = settings["docker_registry_private_users"][0]["password"]
        self.url = "http://127.0.0.1:%d" % settings["docker_registry_private_port"]
        name = settings["docker_registry_private_name"]
        self.replicas = ["registry-%s" % name] + ["registry-%s-%d" % (name, n)
                                                   for n in range(2, settings["docker_registry_private_replicas"] + 1)]
        self.root = "%s/%s/docker/registry/v2" % (settings["docker_registry_s3"]["prefix"], name)

    def client(self, *args, expect_ok=True):
        command = ["env", "REGISTRY_PASSWORD=" + self.password, "python3", CLIENT_PATH,
                   *[str(arg) for arg in args], "--user", self.user]
        result = self.host.run(" ".join(["%s"] * len(command)), *command)
        if expect_ok:
            assert result.rc == 0, "registry client failed (%d): %s" % (result.rc, result.stderr)
            return json.loads(result.stdout)
        return result

    def push(self, repo, tag, seed):
        return self.client("push-image", "--registry", self.url, "--repo", repo, "--tag", tag, "--seed", seed)

    def pull(self, repo, ref):
        return self.client("pull-image", "--registry", self.url, "--repo", repo, "--ref", ref)

    def status(self, path, method="GET"):
        return self.client("request", "--url", self.url + path, "--method", method)["status"]

    def bucket_keys(self, prefix):
        return json.loads(self.check("python3 -c %s %s", LIST_KEYS, prefix))

    def state(self, service):
        result = self.run("docker inspect --format '{{.State.Status}} {{.State.Health.Status}}' %s",
                          self.container(service))
        return result.stdout.strip() if result.rc == 0 else ""

    def wait_healthy(self, timeout=240):
        services = [*self.replicas, "redis", "nginx"]
        self.wait_until("the replicas, Redis and nginx to be healthy",
                        lambda: all(self.state(s) == "running healthy" for s in services)
                        and self.status("/v2/") == 200, timeout)


@pytest.fixture(scope="module")
def vm(host):
    host.run("mkdir -p %s", str(pathlib.PurePosixPath(CLIENT_PATH).parent))
    copy = host.run("echo %s | base64 -d > %s", base64.b64encode(CLIENT_SOURCE.read_bytes()).decode(), CLIENT_PATH)
    assert copy.rc == 0, copy.stderr
    machine = VM(host, scenario_settings())
    machine.wait_healthy()
    return machine
