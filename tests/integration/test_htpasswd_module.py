"""registry_htpasswd through the real ``ansible`` CLI, and a real registry that logs its users in."""

from __future__ import annotations

import requests

from tests.support.ansible_run import run_module
from tests.support.registry import Registry

USERS = [{"username": "ci", "password": "never-printed-password"}]


def test_check_mode_diff_then_write_then_nothing_and_the_registry_accepts_the_users(tmp_path):
    path = tmp_path / "auth" / "htpasswd"
    path.parent.mkdir()
    args = {"path": str(path), "users": USERS, "rounds": 4}
    check = run_module("regwarden.registry.registry_htpasswd", args, check=True, diff=True)
    assert check.result["changed"] is True and check.result["added"] == ["ci"]
    assert not path.exists()
    assert "ci" in check.result["diff"]["after"]
    written = run_module("regwarden.registry.registry_htpasswd", args)
    assert written.result["changed"] is True and path.is_file()
    again = run_module("regwarden.registry.registry_htpasswd", args)
    assert again.result["changed"] is False
    for run in (check, written, again):
        assert "never-printed-password" not in run.stdout + run.stderr

    registry = Registry("private", tmp_path / "data", tmp_path / "work", htpasswd=path)
    registry.start()
    try:
        assert requests.get(registry.url + "/v2/", timeout=10).status_code == 401
        assert requests.get(registry.url + "/v2/", auth=("ci", USERS[0]["password"]), timeout=10).status_code == 200
    finally:
        registry.stop()


def test_bad_users_are_a_clear_error(tmp_path):
    run = run_module("regwarden.registry.registry_htpasswd", {
        "path": str(tmp_path / "htpasswd"), "users": [{"username": "a:b", "password": "x"}]})
    assert run.failed and "no ':'" in run.result["msg"]
