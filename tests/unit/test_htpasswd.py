"""registry_htpasswd's logic: exactly the users given, bcrypt at the cost given, hashes kept while valid."""

import bcrypt
import pytest

from ansible_collections.regwarden.registry.plugins.module_utils import _htpasswd

USERS = [{"username": "ci", "password": "s3cret"}, {"username": "bot", "password": "other"}]


def sync(path, users, rounds=4):
    lines, added, updated, removed = _htpasswd.plan(bcrypt, _htpasswd.read_entries(str(path)), users, rounds)
    if added or updated or removed:
        _htpasswd.write(str(path), lines)
    return added, updated, removed


def test_first_sync_adds_everyone_and_a_second_changes_nothing(tmp_path):
    path = tmp_path / "htpasswd"
    assert sync(path, USERS) == (["ci", "bot"], [], [])
    first = path.read_text()
    assert oct(path.stat().st_mode & 0o777) == "0o640"
    assert sync(path, USERS) == ([], [], [])
    assert path.read_text() == first  # salts kept: no change, no restart
    for line, user in zip(first.splitlines(), USERS):
        name, hashed = line.split(":", 1)
        assert name == user["username"] and bcrypt.checkpw(user["password"].encode(), hashed.encode())
        assert _htpasswd.hash_cost(hashed) == 4


@pytest.mark.parametrize("change, expected", [
    pytest.param(lambda users: [dict(users[0], password="new"), users[1]], ([], ["ci"], []), id="password"),
    pytest.param(lambda users: users[:1], ([], [], ["bot"]), id="user-removed"),
])
def test_only_what_changed_is_rehashed(tmp_path, change, expected):
    path = tmp_path / "htpasswd"
    sync(path, USERS)
    kept = path.read_text().splitlines()[0]
    assert sync(path, change(USERS)) == expected
    if expected[1] != ["ci"]:
        assert path.read_text().splitlines()[0] == kept


def test_a_new_cost_rehashes_every_user(tmp_path):
    path = tmp_path / "htpasswd"
    sync(path, USERS, rounds=4)
    assert sync(path, USERS, rounds=5) == ([], ["ci", "bot"], [])
    assert {_htpasswd.hash_cost(line.split(":", 1)[1]) for line in path.read_text().splitlines()} == {5}


@pytest.mark.parametrize("hashed, cost", [("$2b$10$" + "x" * 53, 10), ("$apr1$abc$def", None), ("plain", None)])
def test_hash_cost(hashed, cost):
    assert _htpasswd.hash_cost(hashed) == cost
