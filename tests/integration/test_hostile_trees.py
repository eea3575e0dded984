"""The modules through the real ``ansible`` CLI on hostile trees: every result reaches Ansible whole,
a scan that could not read a registry fails the task with the findings kept, and a held lock
stops a writer with a clear message.
"""

from __future__ import annotations

import fcntl
import json
import os

import pytest

from tests.support.ansible_run import run_module

FQCN = "regwarden.registry."


def make_registry(root, name):
    v2 = root / name / "docker" / "registry" / "v2"
    (v2 / "blobs" / "sha256").mkdir(parents=True)
    (v2 / "repositories").mkdir()
    return v2


def orphan_link(v2, repo_bytes, hex_digest):
    link_dir = os.fsencode(str(v2 / "repositories")) + b"/" + repo_bytes + b"/_layers/sha256/" + hex_digest.encode()
    os.makedirs(link_dir)
    with open(link_dir + b"/link", "wb") as handle:
        handle.write(b"sha256:" + hex_digest.encode())


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    orphan_link(make_registry(root, "private"), b"team/\xff-app", "a" * 64)
    orphan_link(make_registry(root, "dockerhub"), b"library/nginx", "b" * 64)
    return root


def test_a_name_that_is_not_utf8_reaches_ansible_escaped(data):
    run = run_module(FQCN + "registry_blob_scan", {"path": str(data)})
    assert not run.failed, run.result
    assert [f["repo"] for f in run.result["orphan_layer_links"]] == ["library/nginx", "team/\\xff-app"]
    assert any("not valid UTF-8" in error["error"] for error in run.result["scan_errors"])
    assert run.result["ansible_facts"]["registry_blob_scan"]["totals"]["orphan_layer_links"] == 2


def test_an_unreadable_registry_fails_the_task_and_keeps_the_rest(data, tmp_path):
    repositories = data / "dockerhub" / "docker" / "registry" / "v2" / "repositories"
    os.rename(repositories, tmp_path / "moved")
    repositories.symlink_to(tmp_path / "moved")
    run = run_module(FQCN + "registry_blob_scan", {"path": str(data)})
    assert run.failed
    assert "dockerhub" in run.result["msg"] and "allow_incomplete" in run.result["msg"]
    assert "Traceback" not in json.dumps(run.result)
    assert run.result["incomplete_registries"] == ["dockerhub"]
    assert [f["registry"] for f in run.result["orphan_layer_links"]] == ["private"]
    allowed = run_module(FQCN + "registry_blob_scan", {"path": str(data), "allow_incomplete": True})
    assert not allowed.failed and allowed.result["incomplete_registries"] == ["dockerhub"]
    # fail_on_findings counts the places that could not be read.
    strict = run_module(FQCN + "registry_blob_scan", {"path": str(data), "allow_incomplete": True,
                                                       "fail_on_findings": True})
    assert strict.failed and strict.result["findings"] == 1 + len(strict.result["scan_errors"])


def test_an_empty_data_directory_is_not_a_clean_scan(tmp_path):
    (tmp_path / "empty").mkdir()
    for module in ("registry_blob_scan", "registry_index_audit"):
        run = run_module(FQCN + module, {"path": str(tmp_path / "empty")})
        assert run.failed, (module, run.result)
        assert "is the data volume mounted" in run.result["msg"] or "not found" in run.result["msg"]


def test_a_held_lock_stops_the_writer_with_a_clear_message(data):
    fd = os.open(str(data / "dockerhub"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        run = run_module(FQCN + "registry_blob_scan", {"path": str(data), "registries": ["dockerhub"],
                                                       "remove_orphans": True})
        check = run_module(FQCN + "registry_blob_scan", {"path": str(data), "registries": ["dockerhub"],
                                                         "remove_orphans": True}, check=True)
    finally:
        os.close(fd)
    assert run.failed and "being changed by another run" in run.result["msg"]
    assert (data / "dockerhub" / "docker/registry/v2/repositories/library/nginx/_layers/sha256" / ("b" * 64)
            / "link").is_file()
    assert not check.failed and check.result["removed_links"]
