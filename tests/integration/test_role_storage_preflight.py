"""The role's preflight on S3 storage and replicas, run through ansible-playbook on the controller
(``--tags docker_registry_preflight``: nothing but the checks): what it refuses, with which words,
and that the S3 secret key is in no output at any verbosity."""

from __future__ import annotations

import pytest

from tests.support.role_run import preflight_cases

SECRET = "preflight-secret-key-must-never-print-0123"
VALID_S3 = {
    "endpoint": "https://s3.example.test:8333",
    "bucket": "registries",
    "prefix": "site/a",
    "access_key": "regwarden-preflight",
    "secret_key": SECRET,
    "secure": True,
}
BASE_VARS = {
    "docker_registry_private_users": [{"username": "ci", "password": "preflight-password"}],
    "docker_registry_private_tls_enabled": False,
    "docker_registry_caches": [],
}


# Each refusal: (variables, the words of its message).
REFUSALS = [
    ({"docker_registry_private_replicas": 2}, "more than 1 needs the private registry on shared"),
    ({"docker_registry_storage": "s3", "docker_registry_s3": VALID_S3, "docker_registry_private_replicas": 0},
     "a whole number from 1 to 16"),
    ({"docker_registry_storage": "s3", "docker_registry_s3": {**VALID_S3, "endpoint": "http://10.0.0.5:8333"}},
     "with secure: false for http://"),
    ({"docker_registry_storage": "s3", "docker_registry_s3": {**VALID_S3, "bucket": ""}}, "bucket (an S3 bucket name"),
    ({"docker_registry_storage": "s3", "docker_registry_s3": {**VALID_S3, "prefix": "a/../b"}},
     "a prefix of plain path components"),
    ({"docker_registry_storage": "s3", "docker_registry_s3": {**VALID_S3, "access_key": ""}},
     "access_key and secret_key both or neither"),
    ({"docker_registry_config_overrides": {"storage": {"s3": {"bucket": "x"}}}},
     "may not set storage.s3"),
    ({"docker_registry_private_storage": "nfs"}, "must be 'filesystem' or 's3'"),
    ({"docker_registry_caches": [{"name": "hub", "remote_url": "https://registry-1.docker.io", "port": 5000,
                                  "storage": "gcs"}]}, "must be 'filesystem' or 's3'"),
    ({"docker_registry_storage": "s3", "docker_registry_s3": VALID_S3, "docker_registry_private_storage": "filesystem",
      "docker_registry_private_replicas": 2}, "more than 1 needs the private registry on shared"),
    ({"docker_registry_storage": "s3", "docker_registry_s3": VALID_S3,
      "docker_registry_maintenance_leader": "elsewhere"}, "is not a host of this play"),
]
PASSING = {
    "s3-with-replicas": {"docker_registry_storage": "s3", "docker_registry_s3": VALID_S3,
                         "docker_registry_private_replicas": 3},
    "private-alone-on-s3": {"docker_registry_private_storage": "s3", "docker_registry_s3": VALID_S3,
                            "docker_registry_private_replicas": 2},
}
UNKNOWN_STORAGE = {"docker_registry_storage": "nfs"}


@pytest.fixture(scope="module")
def preflight(tmp_path_factory):
    """Every case in one preflight run at -vvv (one inventory host each): {case: failure text or None}, output."""
    cases = {"refusal-%d" % position: extra for position, (extra, _words) in enumerate(REFUSALS)}
    cases.update(PASSING)
    cases["unknown-storage"] = UNKNOWN_STORAGE
    return preflight_cases(tmp_path_factory.mktemp("preflight"),
                           {name: {**BASE_VARS, **extra} for name, extra in cases.items()}, "-vvv")


@pytest.mark.parametrize("case", sorted(PASSING))
def test_valid_s3_settings_pass_and_never_print_the_secret(preflight, case):
    results, text = preflight
    assert results[case] is None, results[case]
    assert "Preflight | S3 settings are complete" in text
    assert SECRET not in text


@pytest.mark.parametrize("position", range(len(REFUSALS)), ids=[words for _extra, words in REFUSALS])
def test_preflight_refuses_with_a_clear_message_and_no_secret(preflight, position):
    results, text = preflight
    failure = results["refusal-%d" % position]
    assert failure is not None, "case %d passed preflight" % position
    assert REFUSALS[position][1] in failure, failure[-3000:]
    assert SECRET not in text


def test_an_unknown_storage_is_refused_by_the_argument_spec(preflight):
    results, _text = preflight
    assert results["unknown-storage"] is not None
    assert "docker_registry_storage" in results["unknown-storage"] and "nfs" in results["unknown-storage"]
