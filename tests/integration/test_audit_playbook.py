"""``playbooks/audit.yml`` (the AWX scheduled audit) through ``ansible-playbook``, against real
registries, on an inventory with the group ``registry`` as AWX has it.

- A healthy private registry (and a cache with an orphan link, normal for a cache): the job
  passes, the set_stats summary is in the artifacts with the scanners' and the probe's counts.
- The shared damaged tree (:mod:`tests.support.scenario`, restarted): the job fails; the failure
  message and the artifacts list exactly the private registry's findings the modules report,
  and the probe's unfetchable references; the cache's findings are counted, not fatal.
- A probe that cannot reach the registry fails the job with its error in the artifacts.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.support.ansible_run import REPO_ROOT, PlaybookRun, run_module, run_playbook
from tests.support.registry import free_port
from tests.support.small_tree import build_small_tree

PLAYBOOK = REPO_ROOT / "playbooks" / "audit.yml"
HOST = "regvm"
# The json callback shows set_stats data only when asked to.
STATS_ENV = {"ANSIBLE_SHOW_CUSTOM_STATS": "1"}


def write_inventory(directory: Path) -> Path:
    """The AWX inventory shape: group ``registry``; here the host is this machine, no become."""
    inventory = directory / "inventory.yml"
    inventory.write_text(
        "registry:\n"
        "  hosts:\n"
        f"    {HOST}:\n"
        "      ansible_connection: local\n"
        "      ansible_become: false\n"
        f"      ansible_python_interpreter: {sys.executable}\n"
    )
    return inventory


def audit(tmp_path: Path, extra_vars: dict) -> PlaybookRun:
    return run_playbook(PLAYBOOK, extra_vars, inventory=write_inventory(tmp_path), env=STATS_ENV)


def artifacts(run: PlaybookRun) -> dict:
    return run.output["global_custom_stats"]["registry_audit"][HOST]


def failure_message(run: PlaybookRun) -> str:
    return run.task_result("Fail the job when a registry that must be clean has findings", HOST)["msg"]


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory):
    tree = build_small_tree(tmp_path_factory.mktemp("audit-small"))
    yield tree
    tree.stop()


def test_clean_private_registry_passes_and_publishes_the_summary(small_tree, tmp_path):
    run = audit(tmp_path, {"registry_audit_data_dir": str(small_tree.data_dir),
                           "registry_audit_probe_url": small_tree.private.url,
                           "registry_audit_probe_verify_blobs": True})
    assert run.rc == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert run.output["stats"][HOST]["failures"] == 0
    summary = artifacts(run)
    assert summary["status"] == "clean"
    assert summary["failing_findings"] == 0
    assert summary["findings"] == {}
    # The cache's orphan link is reported and counted, but caches lose blobs by design.
    assert summary["blob_scan"]["findings"] == 1
    assert summary["blob_scan"]["summary"]["dockerhub"]["orphan_layer_links"] == 1
    assert summary["blob_scan"]["summary"]["private"]["orphan_layer_links"] == 0
    assert summary["index_audit"]["findings"] == 0
    assert summary["index_audit"]["summary"]["private"]["indexes"] >= 1
    app = small_tree.images["app"]
    # Every manifest of the multi-arch image (index, children, attestations) and the Docker image
    # was fetched and every blob downloaded.
    assert summary["probe"]["findings"] == 0
    assert summary["probe"]["catalog_reachable"] is True
    assert summary["probe"]["counts"]["manifests"] >= 1 + len(app.children) + 1
    assert summary["probe"]["counts"]["blobs"] > 0


# A list from the inventory, or the text of an AWX survey textarea (one name per line).
@pytest.mark.parametrize("failing", [["private", "dockerhub"], "private\ndockerhub\n"], ids=["list", "survey-text"])
def test_cache_findings_fail_the_job_when_the_cache_must_be_clean(small_tree, tmp_path, failing):
    run = audit(tmp_path, {"registry_audit_data_dir": str(small_tree.data_dir),
                           "registry_audit_failing_registries": failing})
    assert run.rc != 0
    summary = artifacts(run)
    assert summary["status"] == "failed"
    assert summary["failing_findings"] == 1
    orphans = summary["findings"]["registry_blob_scan"]["orphan_layer_links"]
    assert [(f["registry"], f["repo"], f["digest"]) for f in orphans] == [
        ("dockerhub", "library/base", small_tree.cache_orphan_digest)]
    assert summary["failing_registries"] == ["private", "dockerhub"]
    assert summary["probe"] is None  # no URL: the probe did not run
    message = failure_message(run)
    assert f"registry_blob_scan orphan_layer_links: dockerhub library/base {small_tree.cache_orphan_digest}" in message


def test_unreachable_probe_fails_the_job_with_its_error(small_tree, tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"
    run = audit(tmp_path, {"registry_audit_data_dir": str(small_tree.data_dir),
                           "registry_audit_probe_url": closed, "registry_audit_probe_timeout": 5})
    assert run.rc != 0
    summary = artifacts(run)
    assert summary["status"] == "failed"
    assert summary["failing_findings"] == 0
    assert summary["probe"]["url"] == closed
    assert "127.0.0.1" in summary["probe"]["error"]
    assert "the probe failed" in failure_message(run)


def test_damaged_private_registry_fails_with_every_finding_listed(restarted_tree, tmp_path):
    tree = restarted_tree
    path = str(tree.data_dir)
    private_url = tree.scenario.private.url
    run = audit(tmp_path, {"registry_audit_data_dir": path, "registry_audit_probe_url": private_url,
                           "registry_audit_message_limit": 1000})
    assert run.rc != 0
    assert run.output["stats"][HOST]["failures"] == 1
    summary = artifacts(run)
    assert summary["status"] == "failed"

    # What the modules report on their own, restricted to the private registry: the audit lists
    # exactly that, kind by kind.
    blob = run_module("regwarden.registry.registry_blob_scan", {"path": path}).result
    index = run_module("regwarden.registry.registry_index_audit", {"path": path}).result
    probe = run_module("regwarden.registry.registry_probe", {"url": private_url}).result
    expected = {
        "registry_blob_scan": {key: [f for f in blob[key] if f["registry"] == "private"]
                               for key in ("orphan_layer_links", "invalid_link_files", "zero_byte_blobs",
                                           "corrupt_blobs", "scan_errors")},
        "registry_index_audit": {key: index[key] for key in ("orphan_index_children", "broken_tags",
                                                             "unservable_blobs", "invalid_manifests",
                                                             "scan_errors")},
        "registry_probe": {"unfetchable": probe["unfetchable"]},
    }
    expected = {check: {kind: items for kind, items in kinds.items() if items} for check, kinds in expected.items()}
    expected = {check: kinds for check, kinds in expected.items() if kinds}
    assert summary["findings"] == expected
    # The damaged tree breaks the private registry in every way the scanners know.
    assert set(expected["registry_blob_scan"]) >= {"orphan_layer_links", "invalid_link_files", "zero_byte_blobs"}
    assert set(expected["registry_index_audit"]) >= {"orphan_index_children", "broken_tags"}
    assert expected["registry_probe"]["unfetchable"]
    total = sum(len(items) for kinds in expected.values() for items in kinds.values())
    assert summary["failing_findings"] == total
    # The cache's damage is in the counts, not in the failing findings.
    private_blob_findings = sum(len(items) for kind, items in expected["registry_blob_scan"].items()
                                if kind != "scan_errors")
    assert summary["blob_scan"]["findings"] == blob["findings"] > private_blob_findings

    message = failure_message(run)
    assert message.startswith(f"{total} finding(s) in private on {HOST}")
    lines = [line for line in message.splitlines() if line.startswith("- ")]
    assert len(lines) == total
    for finding in expected["registry_blob_scan"].get("orphan_layer_links", []):
        assert f"- registry_blob_scan orphan_layer_links: private {finding['repo']} {finding['digest']}" in message
    for finding in expected["registry_index_audit"]["orphan_index_children"]:
        line = f"- registry_index_audit orphan_index_children: private {finding['repo']} {finding['child_digest']}"
        assert line in message
    for finding in expected["registry_index_audit"]["broken_tags"]:
        assert f"- registry_index_audit broken_tags: private {finding['repo']} {finding['tag']}" in message


def test_message_limit_keeps_the_failure_message_short(restarted_tree, tmp_path):
    run = audit(tmp_path, {"registry_audit_data_dir": str(restarted_tree.data_dir),
                           "registry_audit_message_limit": 2})
    assert run.rc != 0
    message = failure_message(run)
    total = artifacts(run)["failing_findings"]
    assert total > 2
    assert len([line for line in message.splitlines() if line.startswith("- ")]) == 2
    assert f"... and {total - 2} more in the job's artifacts (registry_audit)" in message
