"""The role's side of pull records, retention by last pull and cache bounds, on the controller: what
preflight refuses (with which words), and the scripts and units the role renders from its own
defaults and vars for them (the VM runs them in the Molecule default scenario)."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.support.role_run import preflight_cases, render, run_preflight

BASE = {
    "docker_registry_private_users": [{"username": "ci", "password": "preflight-password"}],
    "docker_registry_private_tls_enabled": False,
    "docker_registry_caches": [],
    "docker_registry_tag_cleanup_enabled": True,
}
CACHE = {"name": "hub", "remote_url": "https://registry-1.docker.io", "port": 5000}
S3 = {"bucket": "registries", "endpoint": "https://s3.example.test", "prefix": "site"}


def output(proc):
    return proc.stdout + proc.stderr


PASSING = {**BASE, "docker_registry_tag_cleanup_pulled_within": 2592000,
           "docker_registry_tag_cleanup_rules": [{"repository": "ci/.*", "keep": 2, "keep_last_pulled": 3}],
           "docker_registry_caches": [{**CACHE, "max_size": "200g"}]}
# Each refusal: (variables, the words of its message).
REFUSALS = [
    ({"docker_registry_caches": [{**CACHE, "max_size": "lots"}]}, "max_size is a byte count or a size such as 200g"),
    ({"docker_registry_caches": [{**CACHE, "max_size": 0}]}, "max_size is a byte count or a size such as 200g"),
    ({"docker_registry_caches": [{**CACHE, "max_size": "10g"}], "docker_registry_gc_enabled": False},
     "Eviction runs in the GC service, so it needs docker_registry_gc_enabled"),
    ({"docker_registry_tag_cleanup_pulled_within": 86400, "docker_registry_pull_records_enabled": False},
     "so it needs docker_registry_pull_records_enabled"),
    ({"docker_registry_tag_cleanup_rules": [{"repository": "a", "keep_last_pulled": -2}]},
     "are whole numbers, 0 = off"),
]


@pytest.fixture(scope="module")
def preflight(tmp_path_factory):
    """Every case in one preflight run (one inventory host each)."""
    cases = {"refusal-%d" % position: {**BASE, **extra} for position, (extra, _words) in enumerate(REFUSALS)}
    cases["passing"] = PASSING
    return preflight_cases(tmp_path_factory.mktemp("preflight"), cases)


def test_pull_rules_and_a_cache_bound_pass(preflight):
    results, text = preflight
    assert results["passing"] is None, results["passing"]
    assert "Cache size bounds are sizes the GC can enforce" in text


@pytest.mark.parametrize("position", range(len(REFUSALS)), ids=[words for _extra, words in REFUSALS])
def test_preflight_refuses(preflight, position):
    results, _text = preflight
    failure = results["refusal-%d" % position]
    assert failure is not None, "case %d passed preflight" % position
    assert REFUSALS[position][1] in failure, failure[-3000:]


def test_pull_rules_are_refused_when_several_hosts_serve_the_bucket(tmp_path):
    """Each host's records see only its own pulls: a tag pulled through the other host would go."""
    proc = run_preflight(tmp_path, {**BASE, "docker_registry_storage": "s3", "docker_registry_s3": S3,
                                    "docker_registry_private_replicas": 2,
                                    "docker_registry_tag_cleanup_keep_last_pulled": 2},
                         hosts="vm-a,vm-b")
    assert proc.returncode != 0
    assert "each host's records see only its own pulls" in " ".join(output(proc).split()), output(proc)[-3000:]


def test_the_scripts_fold_pulls_first_and_the_gc_evicts_a_bounded_cache(tmp_path):
    settings = {**BASE, "docker_registry_tag_cleanup_keep_last_pulled": 2,
                "docker_registry_caches": [{**CACHE, "max_size": "200k"}, {**CACHE, "name": "quay", "port": 5010}],
                "_docker_registry_compose_command": "docker compose"}
    out = render(tmp_path, ["regwarden-registry-gc.sh", "regwarden-registry-tag-cleanup.sh",
                            "regwarden-registry-pull-record.sh", "nginx-registry.conf"], settings, hosts="vm")
    gc = (out / "vm-regwarden-registry-gc.sh").read_text()
    cleanup = (out / "vm-regwarden-registry-tag-cleanup.sh").read_text()
    fold = (out / "vm-regwarden-registry-pull-record.sh").read_text()
    for script in (gc, cleanup, fold):
        checked = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, check=False)
        assert checked.returncode == 0, checked.stderr
    # Only the bounded cache, in bytes.
    assert "declare -A MAX_SIZE=([hub]=204800 )" in gc
    assert "cache-evict" in gc and "remove-orphans" in gc
    assert "--keep-last-pulled 2" in cleanup and "--pull-records /var/lib/regwarden/pulls" in cleanup
    # The fold before the cleanup reads the records.
    assert cleanup.index("regwarden-registry-pull-record") < cleanup.index("tag-cleanup \\")
    assert "--registries private,hub,quay" in fold and "kill -s SIGUSR1 nginx" in fold
    nginx = (out / "vm-nginx-registry.conf").read_text()
    for name in ("private", "hub", "quay"):
        assert "access_log /var/log/regwarden/pulls/%s.log regwarden_pulls if=$regwarden_manifest_pull;" % name in nginx
    assert nginx.count("access_log /var/log/nginx/access.log combined;") == 3
    units = {unit["unit"]: unit for unit in json.loads((out / "vm-units.json").read_text())}
    assert units["regwarden-registry-pull-record.timer"]["enabled"]

    # Records off: no pull log, no fold unit; the GC has no bounded cache without a max_size.
    off = tmp_path / "off"
    off.mkdir()
    out = render(off, ["nginx-registry.conf", "regwarden-registry-gc.sh"],
                 {**settings, "docker_registry_pull_records_enabled": False,
                  "docker_registry_tag_cleanup_keep_last_pulled": 0, "docker_registry_caches": [CACHE]}, hosts="vm")
    assert "regwarden_pulls" not in (out / "vm-nginx-registry.conf").read_text()
    assert "declare -A MAX_SIZE=()" in (out / "vm-regwarden-registry-gc.sh").read_text()
    units = {unit["unit"]: unit for unit in json.loads((out / "vm-units.json").read_text())}
    assert not units["regwarden-registry-pull-record.timer"]["installed"]
