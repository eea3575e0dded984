"""`regwarden tag-cleanup`: the maintenance timer's cleanup step, the module's own code."""

import json
import os

import pytest

from ansible_collections.regwarden.registry.plugins.module_utils import _cli


def push_aged(tree, repo, tags):
    for age, tag in enumerate(tags):
        tree.push_image(repo, repo + tag, tags=[tag])
        os.utime(tree.tag_link_path(repo, tag), (1_700_000_000 + age,) * 2)


def test_cleanup_keeps_newest_and_writes_a_report(private, storage, tmp_path, capsys):
    push_aged(private, "app", ["1", "2", "3", "latest"])
    push_aged(private, "ci/cache", ["a", "b", "c"])
    report = tmp_path / "cleanup.json"
    code = _cli.main(["tag-cleanup", "--path", str(storage), "--keep", "2", "--exclude", "latest",
                      "--rules", json.dumps([{"repository": "ci/.*", "keep": 1}]), "--delete-untagged",
                      "--grace-period", "0",
                      "--report", str(report)])
    assert code == _cli.EXIT_CLEAN
    result = json.loads(report.read_text())
    assert sorted((f["repo"], f["tag"]) for f in result["removed_tags"]) == [
        ("app", "1"), ("ci/cache", "a"), ("ci/cache", "b")]
    assert len(result["removed_revisions"]) == 3
    assert json.loads(capsys.readouterr().out)["restart_required"] is True


@pytest.mark.parametrize("args, message", [
    (["--keep", "0"], "keep must be a whole number of at least 1"),
    (["--rules", "{not json"], "--rules is not valid JSON"),
    (["--rules", "{}"], "--rules must be a JSON list"),
    (["--registries", "nowhere"], "could not read or change everything"),
])
def test_bad_input_exits_2_with_a_message(private, storage, capsys, args, message):
    push_aged(private, "app", ["1"])
    assert _cli.main(["tag-cleanup", "--path", str(storage), *args]) == _cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("regwarden tag-cleanup: ") and message in err
    assert "Traceback" not in err
