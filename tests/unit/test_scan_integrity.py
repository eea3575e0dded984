"""Scans that cannot lie: every "failure that reads as success" of the safe-writers issue.

Each hostile tree must give a finding or a clear error naming the path, never a traceback and
never "clean"; the CLI must exit 2 with ``regwarden_scan_success 0`` when something could not
be read. A scan that could hang is run under an alarm, so a regression fails instead of hanging.
"""

import contextlib
import json
import os
import signal
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ansible_collections.regwarden.registry.plugins.module_utils import _cli, _index_audit
from ansible_collections.regwarden.registry.plugins.module_utils._blob_scan import scan_blobs
from ansible_collections.regwarden.registry.plugins.module_utils._index_audit import audit_indexes
from ansible_collections.regwarden.registry.plugins.module_utils._storage import ScanError
from ansible_collections.regwarden.registry.plugins.module_utils._storage_scan import scan_storage
from ansible_collections.regwarden.registry.plugins.module_utils._tag_cleanup import cleanup_tags
from tests.support.tree import deny_access, digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@contextlib.contextmanager
def deadline(seconds=20):
    def expired(signum, frame):
        raise AssertionError("the scan did not finish within %d s (it blocked)" % seconds)

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def prom_values(path):
    return {family.name: {tuple(sorted(s.labels.items())): s.value for s in family.samples}
            for family in text_string_to_metric_families(path.read_text())}


def cli_scan(tmp_path, *args):
    report, prom = tmp_path / "out" / "scan.json", tmp_path / "out" / "scan.prom"
    code = _cli.main(["scan", *args, "--report", str(report), "--prom", str(prom)])
    return code, json.loads(report.read_text()), prom_values(prom)


def is_reportable(value):
    """What Ansible and a JSON consumer need: serializable, and every string valid UTF-8."""
    json.dumps(value, ensure_ascii=False).encode("utf-8")
    return True


# -- manifests that used to raise ------------------------------------------------------------

def deep_manifest(private, depth):
    config = private.push_blob("app", b"{}")
    doc = ('{"schemaVersion":2,"mediaType":"%s","config":{"digest":"%s","size":2},"layers":[],'
           '"annotations":{"deep":"x"},"extra":%s%s}' % (OCI_MANIFEST, digest(config), "[" * depth, "]" * depth))
    return private.put_manifest("app", doc.encode(), tags=["deep"])


def test_a_manifest_nested_as_deep_as_the_registry_accepts_is_parsed(private, storage):
    deep_manifest(private, 5000)  # json.loads gives up far earlier; distribution takes up to 10000
    result = audit_indexes(str(storage))
    assert result["invalid_manifests"] == result["broken_tags"] == result["scan_errors"] == []


def test_a_manifest_nested_deeper_than_the_registry_accepts_is_invalid(private, storage):
    hex_digest = deep_manifest(private, 12000)
    result = audit_indexes(str(storage))
    assert [(f["digest"], f["reason"]) for f in result["invalid_manifests"]] == [
        (digest(hex_digest), "manifest nests JSON deeper than 10000 levels")]


@pytest.mark.parametrize("document, reason", [
    ({"schemaVersion": 1, "mediaType": ["list"], "fsLayers": []}, "mediaType is not a string"),
    ({"schemaVersion": 2, "mediaType": {"a": 1}}, "mediaType is not a string"),
    ({"schemaVersion": True, "mediaType": OCI_MANIFEST}, "unsupported schemaVersion"),
    ({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [{"digest": ["x"]}]}, "has no sha256 digest"),
    ({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [None]}, "is not a descriptor object"),
    ({"schemaVersion": [2]}, "unsupported schemaVersion"),
])
def test_odd_manifest_shapes_are_findings_not_tracebacks(private, storage, document, reason):
    hex_digest = private.put_manifest("app", json.dumps(document).encode(), tags=["odd"])
    [finding] = audit_indexes(str(storage))["invalid_manifests"]
    assert finding["digest"] == digest(hex_digest) and reason in finding["reason"]


def test_one_registry_failing_unforeseen_leaves_the_others_standing(make_registry, storage, monkeypatch):
    private = make_registry("private")
    private.push_multiarch("app", "multi", tags=["v1"])
    cache = make_registry("dockerhub")
    _index, (amd, _arm) = cache.push_multiarch("library/app", "multi", tags=["v1"])
    cache.delete_revision("library/app", amd)
    original = _index_audit._RepositoryAudit.run

    def explode_in_private(self):
        if self.name == "private":
            raise TypeError("a state no rule foresaw")
        return original(self)

    monkeypatch.setattr(_index_audit._RepositoryAudit, "run", explode_in_private)
    with pytest.raises(ScanError, match=r"registry private: internal error while scanning \(TypeError"):
        audit_indexes(str(storage), registries=["private", "dockerhub"], processes=1)
    result = audit_indexes(str(storage), registries=["private", "dockerhub"], processes=1, allow_incomplete=True)
    assert result["registries"] == ["dockerhub"]
    assert result["incomplete_registries"] == ["private"]
    assert [f["repo"] for f in result["orphan_index_children"]] == ["library/app"]


# -- tree shapes ---------------------------------------------------------------------------------

@pytest.fixture
def deep_tree(private):
    private.push_image("app", "one", tags=["v1"])
    fd = os.open(str(private.repo_dir("app")), os.O_RDONLY)
    try:
        for _level in range(1000):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
        os.mkdir("_layers", dir_fd=fd)
    finally:
        os.close(fd)
    yield
    # Python's own tree removal recurses (pytest's tmp_path cleanup would fail on it): rm does not.
    subprocess.run(["rm", "-rf", str(private.repo_dir("app") / "d")], check=True, timeout=120)


def test_repository_directories_nested_a_thousand_deep(private, storage, deep_tree):
    blob, index = scan_storage(str(storage), allow_incomplete=True)
    assert blob["registries"] == index["registries"] == ["private"]
    [error] = {e["error"] for e in blob["scan_errors"]}
    assert error.startswith("nested deeper than a repository name can be")
    assert index["broken_tags"] == []


def test_names_that_are_not_utf8_are_escaped_and_reported(private, storage):
    raw = os.fsencode(str(private.v2 / "repositories")) + b"/team-\xff\xfe"
    os.makedirs(raw + b"/_layers/sha256/" + b"a" * 64)
    with open(raw + b"/_layers/sha256/" + b"a" * 64 + b"/link", "wb") as handle:
        handle.write(b"sha256:" + b"a" * 64)  # an orphan link: data never existed
    tag_dir = os.fsencode(str(private.repo_dir("app") / "_manifests" / "tags")) + b"/v\xe9"
    private.push_image("app", "one", tags=["v1"])
    os.makedirs(tag_dir + b"/current")
    with open(tag_dir + b"/current/link", "wb") as handle:
        handle.write(b"sha256:" + b"b" * 64)
    blob, index = scan_storage(str(storage))
    assert is_reportable(blob) and is_reportable(index)
    assert [f["repo"] for f in blob["orphan_layer_links"]] == ["team-\\xff\\xfe"]
    assert [f["tag"] for f in index["broken_tags"]] == ["v\\xe9"]
    errors = {e["path"]: e["error"] for e in index["scan_errors"]}
    assert any(path.endswith("team-\\xff\\xfe") and "not valid UTF-8" in error for path, error in errors.items())
    assert any(path.endswith("tags/v\\xe9") and "not valid UTF-8" in error for path, error in errors.items())


@pytest.mark.parametrize("where", ["layer", "revision", "tag"])
def test_a_fifo_named_link_never_blocks_a_scan(private, storage, where):
    manifest = private.push_image("app", "one", tags=["v1"])
    layer = private.push_blob("app", b"layer")
    path = {"layer": private.layer_link_path("app", layer),
            "revision": private.revision_link_path("app", manifest),
            "tag": private.tag_link_path("app", "v1")}[where]
    path.unlink()
    os.mkfifo(path)
    with deadline():
        blob, index = scan_storage(str(storage))
        cleanup = cleanup_tags(str(storage), keep=1, delete_untagged=True, grace_period=0)
        repaired = audit_indexes(str(storage), repair=True)
    reasons = [f["reason"] for f in blob["invalid_link_files"]] + [f["reason"] for f in index["broken_tags"]]
    assert any("not a regular file" in reason for reason in reasons), (blob, index)
    assert os.path.exists(path) and not path.is_file()  # never removed, never replaced
    assert repaired["repaired_links"] == []
    if where == "tag":
        assert [s["repo"] for s in cleanup["skipped_repositories"]] == ["app"]


def test_an_unreadable_blob_prefix_is_not_judged_and_the_rest_is(private, storage, monkeypatch):
    orphans = [private.push_blob("app", b"orphan %d" % n) for n in range(40)]
    for hex_digest in orphans:
        private.remove_data(hex_digest)
    denied_prefix = orphans[0][:2]
    deny_access(monkeypatch, private.v2 / "blobs" / "sha256" / denied_prefix)
    result = scan_blobs(str(storage), remove_orphans=True)
    judged = {h for h in orphans if h[:2] != denied_prefix}
    assert {f["digest"][7:] for f in result["orphan_layer_links"]} == judged
    assert {r.rsplit("/", 2)[1] for r in result["removed_links"]} == judged
    assert [e["path"] for e in result["scan_errors"]] == [str(private.v2 / "blobs" / "sha256" / denied_prefix)]
    for hex_digest in orphans:
        assert private.layer_link_path("app", hex_digest).exists() is (hex_digest[:2] == denied_prefix)


def test_unreadable_layers_directory_gives_no_false_unservable_blobs(private, storage, monkeypatch):
    private.push_multiarch("app", "multi", tags=["v1"])
    layers = private.repo_dir("app") / "_layers" / "sha256"
    deny_access(monkeypatch, layers)
    for result in (audit_indexes(str(storage)), scan_storage(str(storage))[1]):
        assert result["unservable_blobs"] == result["orphan_index_children"] == []
        assert [e["path"] for e in result["scan_errors"]] == [str(layers)]


def test_an_index_listing_one_missing_child_45000_times_is_one_finding(private, storage):
    amd = private.push_image("app", "amd")
    missing = "c" * 64
    # Bare descriptors, so the index stays under the 4 MiB manifest bound.
    manifests = [{"digest": digest(amd), "platform": {"os": "linux", "architecture": "amd64"}}]
    manifests += [{"digest": digest(missing)}] * 45000
    index = private.put_manifest("app", json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests,
    }, separators=(",", ":")).encode(), tags=["v1"])
    result = audit_indexes(str(storage))
    assert [(f["index_digest"], f["child_digest"]) for f in result["orphan_index_children"]] == [
        (digest(index), digest(missing))]
    assert len(json.dumps(result)) < 100_000


def test_every_list_is_capped_with_its_true_count_beside_it(private, storage):
    for n in range(12):
        private.remove_data(private.push_blob("app", b"orphan %d" % n))
    full = scan_blobs(str(storage), remove_orphans=True, check_mode=True)
    capped = scan_blobs(str(storage), remove_orphans=True, check_mode=True, max_findings=5)
    assert capped["orphan_layer_links"] == full["orphan_layer_links"][:5]
    assert capped["removed_links"] == full["removed_links"][:5]
    assert capped["totals"]["orphan_layer_links"] == capped["totals"]["removed_links"] == 12
    assert capped["truncated"] == ["orphan_layer_links", "removed_links"]
    assert full["truncated"] == []
    with pytest.raises(ScanError, match="max_findings must be a whole number"):
        scan_blobs(str(storage), max_findings=0)


# -- a scan that read nothing is not clean -----------------------------------------------------

def _symlinked_repositories(private, tmp_path):
    os.rename(private.v2 / "repositories", tmp_path / "moved")
    (private.v2 / "repositories").symlink_to(tmp_path / "moved")


def _empty_data_directory(private, tmp_path):
    import shutil

    shutil.rmtree(private.root)


@pytest.mark.parametrize("break_it", [
    pytest.param(_symlinked_repositories, id="repositories-a-symlink"),
    pytest.param(_empty_data_directory, id="data-dir-empty-or-unmounted"),
])
def test_a_scan_that_read_nothing_fails(private, storage, tmp_path, break_it):
    private.remove_data(private.push_blob("app", b"orphan"))
    break_it(private, tmp_path)
    with pytest.raises(ScanError):
        scan_blobs(str(storage))
    code, report, metrics = cli_scan(tmp_path, "--path", str(storage), "--expect-registries", "private")
    assert code == _cli.EXIT_ERROR
    assert report["incomplete_registries"] == ["private"]
    assert metrics["regwarden_scan_success"] == {(): 0.0}
    assert metrics["regwarden_scan_registry_scanned"] == {(("registry", "private"),): 0.0}


def test_unreadable_repositories_directory_fails_the_scan(private, storage, tmp_path, monkeypatch):
    private.remove_data(private.push_blob("app", b"orphan"))
    deny_access(monkeypatch, private.v2 / "repositories")
    with pytest.raises(ScanError, match="repositories: cannot open directory: Permission denied"):
        audit_indexes(str(storage))
    code, _report, metrics = cli_scan(tmp_path, "--path", str(storage))
    assert code == _cli.EXIT_ERROR
    assert metrics["regwarden_scan_errors"] == {(("registry", "private"),): 1.0}


def test_an_expected_registry_that_is_absent_fails(make_registry, storage, tmp_path):
    make_registry("dockerhub").push_image("library/app", "one", tags=["v1"])
    code, report, metrics = cli_scan(tmp_path, "--path", str(storage), "--index-registries", "",
                                     "--expect-registries", "private,dockerhub")
    assert code == _cli.EXIT_ERROR
    assert "registry private not found" in json.dumps(report["scan_errors"])
    assert metrics["regwarden_scan_registry_scanned"] == {
        (("registry", "dockerhub"),): 1.0, (("registry", "private"),): 0.0}


def test_a_registry_nothing_was_stored_in_yet_is_clean(storage, tmp_path):
    (storage / "private").mkdir()  # what the role creates before the first push
    code, report, metrics = cli_scan(tmp_path, "--path", str(storage), "--expect-registries", "private")
    assert code == _cli.EXIT_CLEAN
    assert report["blob_scan"]["registries"] == report["index_audit"]["registries"] == ["private"]
    assert metrics["regwarden_scan_success"] == {(): 1.0}


def test_any_scan_error_makes_the_cli_exit_2(private, storage, tmp_path, monkeypatch):
    private.push_image("app", "one", tags=["v1"])
    deny_access(monkeypatch, private.tag_link_path("app", "v1"))
    code, report, metrics = cli_scan(tmp_path, "--path", str(storage))
    assert code == _cli.EXIT_ERROR
    assert report["findings"] == 0 and len(report["scan_errors"]) == 1
    assert metrics["regwarden_scan_success"] == {(): 0.0}
    assert metrics["regwarden_scan_registry_scanned"] == {(("registry", "private"),): 1.0}


@pytest.mark.parametrize("command", ["scan", "tag-cleanup"])
def test_a_crash_still_writes_the_report_and_the_metrics_and_exits_2(private, storage, tmp_path, monkeypatch,
                                                                     capsys, command):
    private.push_image("app", "one", tags=["v1"])

    def crash(*args, **kwargs):
        raise RuntimeError("boom")

    utils = "ansible_collections.regwarden.registry.plugins.module_utils."
    target = utils + ("_storage_scan.scan_storage" if command == "scan" else "_tag_cleanup.cleanup_tags")
    monkeypatch.setattr(target, crash)
    report, prom = tmp_path / "r.json", tmp_path / "m.prom"
    args = [command, "--path", str(storage), "--report", str(report)]
    if command == "scan":
        prom.write_text("regwarden_scan_success 1\n")
        args += ["--prom", str(prom)]
    assert _cli.main(args) == _cli.EXIT_ERROR
    assert "internal error: RuntimeError: boom" in json.loads(report.read_text())["error"]
    assert "regwarden %s: internal error: RuntimeError: boom" % command in capsys.readouterr().err
    if command == "scan":
        assert prom_values(prom)["regwarden_scan_success"] == {(): 0.0}
