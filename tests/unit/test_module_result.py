"""exit_with_facts: results at top level and under ansible_facts.<module name>."""

import pytest

from ansible_collections.regwarden.registry.plugins.module_utils._module_result import exit_with_facts


class ModuleExit(Exception):
    pass


class RecordingModule:
    """Stands in for AnsibleModule: records the call, then stops like the real one does."""

    def __init__(self):
        self.calls = []

    def exit_json(self, **kwargs):
        self.calls.append(("exit_json", kwargs))
        raise ModuleExit

    def fail_json(self, **kwargs):
        self.calls.append(("fail_json", kwargs))
        raise ModuleExit


def scan_result(orphans=1):
    return {
        "orphan_layer_links": [{"registry": "private", "repo": "app", "digest": "sha256:" + "a" * 64}] * orphans,
        "removed_links": [],
        "summary": {"private": {"orphan_layer_links": orphans}},
        "registries": ["private"],
        "changed": False,
    }


def call(result, findings, fail_on_findings, diff=None):
    module = RecordingModule()
    with pytest.raises(ModuleExit):
        exit_with_facts(module, "registry_blob_scan", result, findings, fail_on_findings, diff)
    assert len(module.calls) == 1
    return module.calls[0]


def test_facts_duplicated_under_the_module_name():
    result = scan_result()
    method, kwargs = call(result, 1, False)
    assert method == "exit_json"
    assert kwargs["changed"] is False
    assert kwargs["findings"] == 1
    facts = kwargs["ansible_facts"]["registry_blob_scan"]
    for key in ("orphan_layer_links", "removed_links", "summary", "registries"):
        assert kwargs[key] == facts[key] == result[key]
    assert "changed" not in facts
    assert set(kwargs["ansible_facts"]) == {"registry_blob_scan"}
    assert "diff" not in kwargs
    # A copy, not the same objects: a callback mutating one cannot alter the other.
    assert facts["summary"] is not kwargs["summary"]
    assert result["changed"] is False  # the caller's dict is left as it was


def test_changed_and_diff_are_passed_on():
    result = dict(scan_result(), changed=True, removed_links=["/x/link"])
    diff = {"before": "/x/link\n", "after": ""}
    method, kwargs = call(result, 1, False, diff)
    assert method == "exit_json"
    assert kwargs["changed"] is True
    assert kwargs["diff"] == diff
    assert kwargs["ansible_facts"]["registry_blob_scan"]["removed_links"] == ["/x/link"]


def test_fail_on_findings_fails_and_keeps_the_findings():
    result = scan_result(orphans=2)
    method, kwargs = call(result, 2, True)
    assert method == "fail_json"
    assert kwargs["msg"] == "2 finding(s) in private; see the result lists"
    assert kwargs["findings"] == 2
    assert kwargs["changed"] is False
    assert kwargs["orphan_layer_links"] == result["orphan_layer_links"]
    assert kwargs["ansible_facts"]["registry_blob_scan"]["orphan_layer_links"] == result["orphan_layer_links"]


def test_fail_on_findings_passes_when_clean():
    method, kwargs = call(scan_result(orphans=0), 0, True)
    assert method == "exit_json"
    assert kwargs["findings"] == 0


def test_fail_on_findings_keeps_changed_after_a_removal():
    result = dict(scan_result(), changed=True, removed_links=["/x/link"], restart_required=True)
    method, kwargs = call(result, 1, True)
    assert method == "fail_json"
    assert kwargs["changed"] is True  # the removal did happen: the handler must still restart
    assert kwargs["restart_required"] is True
