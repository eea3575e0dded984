"""Fixtures for the integration tests: real registries, damaged for real, modules run by ansible.

Two independent copies of the same deterministic tree (:mod:`tests.support.scenario`):

- ``restarted_tree``: damaged while serving, then both registries restarted as plain registries
  (the cache without its upstream, so it serves its disk only): the HTTP truth every
  read-only module run is compared with.
- ``warm_tree``: damaged while serving and left running with warm descriptor caches, for the
  ``remove_orphans`` test (which changes the tree, hence its own copy).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # pyproject's pytest pythonpath normally does this
    sys.path.insert(0, str(REPO_ROOT))

from tests.support import storage, truth  # noqa: E402
from tests.support.ansible_run import ModuleRun, run_module  # noqa: E402
from tests.support.oci import RegistryClient  # noqa: E402
from tests.support.scenario import Scenario, build_damaged_tree  # noqa: E402


@pytest.fixture(scope="session")
def warm_tree(tmp_path_factory) -> Scenario:
    scenario = build_damaged_tree(tmp_path_factory.mktemp("warm"))
    yield scenario
    scenario.stop()


@dataclass
class RestartedTree:
    scenario: Scenario
    truth: dict[str, truth.RegistryTruth]
    snapshot_before_scans: dict
    snapshot_after_scans: dict | None = None
    runs: dict[str, ModuleRun] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.scenario.data_dir

    def v2(self, name: str) -> Path:
        return self.scenario.data_dir / name / "docker" / "registry" / "v2"


@pytest.fixture(scope="session")
def restarted_tree(tmp_path_factory) -> RestartedTree:
    scenario = build_damaged_tree(tmp_path_factory.mktemp("restarted"))
    try:
        scenario.private.restart()
        # Without its upstream the cache serves exactly what its storage holds.
        scenario.cache.restart(proxy_remote=None)
        truths = {r.name: truth.survey(RegistryClient(r.url), r.v2, r.name) for r in scenario.registries}
        yield RestartedTree(scenario, truths, storage.snapshot(scenario.data_dir))
    finally:
        scenario.stop()


@pytest.fixture(scope="session")
def scans(restarted_tree) -> RestartedTree:
    """Every read-only module run over the restarted tree, made once and shared by the tests."""
    tree = restarted_tree
    path = str(tree.data_dir)
    tree.runs["blob_scan"] = run_module("regwarden.registry.registry_blob_scan", {"path": path})
    tree.runs["blob_scan_verify"] = run_module(
        "regwarden.registry.registry_blob_scan", {"path": path, "verify_digests": True})
    tree.runs["index_audit"] = run_module("regwarden.registry.registry_index_audit", {"path": path})
    # The short name, as an operator types it ad hoc; the cache included explicitly.
    tree.runs["index_audit_all"] = run_module(
        "registry_index_audit", {"path": path, "registries": ["private", "dockerhub"]})
    tree.snapshot_after_scans = storage.snapshot(tree.data_dir)
    return tree
