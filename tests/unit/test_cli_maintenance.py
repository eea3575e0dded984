"""`regwarden maintenance`: the flag GC and tag cleanup set while a registry is stopped."""

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ansible_collections.regwarden.registry.plugins.module_utils import _cli


def values(prom):
    return {(family.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(prom.read_text()) for sample in family.samples}


def mark(tmp_path, registry, state):
    return _cli.main(["maintenance", "--registry", registry, "--state", state, "--state-dir",
                      str(tmp_path / "state"), "--prom", str(tmp_path / "out" / "maintenance.prom")])


def test_on_and_off_per_registry(tmp_path):
    prom = tmp_path / "out" / "maintenance.prom"
    assert mark(tmp_path, "private", "on") == _cli.EXIT_CLEAN
    assert mark(tmp_path, "dockerhub", "on") == _cli.EXIT_CLEAN
    assert mark(tmp_path, "private", "off") == _cli.EXIT_CLEAN
    got = values(prom)
    assert got[("regwarden_maintenance_in_progress", (("registry", "private"),))] == 0
    assert got[("regwarden_maintenance_in_progress", (("registry", "dockerhub"),))] == 1
    assert ("regwarden_maintenance_started_timestamp_seconds", (("registry", "private"),)) not in got
    assert got[("regwarden_maintenance_started_timestamp_seconds", (("registry", "dockerhub"),))] > 0


@pytest.mark.parametrize("name", ["../etc", ".hidden", ""])
def test_a_registry_name_that_is_a_path_is_refused(tmp_path, name, capsys):
    assert mark(tmp_path, name, "on") == _cli.EXIT_ERROR
    assert not (tmp_path / "etc").exists()
