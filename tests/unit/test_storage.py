"""Where the scanners look: registry discovery, selection and bad `path` input (both scanners)."""

import os

import pytest

from ansible_collections.regwarden.registry.plugins.module_utils._blob_scan import scan_blobs
from ansible_collections.regwarden.registry.plugins.module_utils._discovery import find_registries, select_registries
from ansible_collections.regwarden.registry.plugins.module_utils._index_audit import audit_indexes
from ansible_collections.regwarden.registry.plugins.module_utils._storage import ScanError

SCANNERS = [pytest.param(scan_blobs, id="blob_scan"), pytest.param(audit_indexes, id="index_audit")]


@pytest.mark.parametrize("scan", SCANNERS)
def test_missing_path_is_a_clear_scan_error(tmp_path, scan):
    missing = tmp_path / "nowhere"
    with pytest.raises(ScanError, match=r"path .*nowhere does not exist"):
        scan(str(missing))


@pytest.mark.parametrize("scan", SCANNERS)
def test_path_that_is_a_file_is_a_clear_scan_error(tmp_path, scan):
    a_file = tmp_path / "data"
    a_file.write_text("not a directory")
    with pytest.raises(ScanError, match=r"path .*data is not a directory"):
        scan(str(a_file))


@pytest.mark.parametrize("scan", SCANNERS)
def test_path_that_is_a_symlink_is_refused_not_followed(make_registry, tmp_path, scan):
    make_registry("private")
    link = tmp_path / "data-link"
    link.symlink_to(tmp_path / "data")
    with pytest.raises(ScanError, match=r"path .*data-link is a symlink"):
        scan(str(link))


@pytest.mark.parametrize("bad", ["", None, 42])
def test_path_not_a_non_empty_string(bad):
    with pytest.raises(ScanError, match="non-empty string"):
        find_registries(bad)


def test_registries_found_sorted_by_name(make_registry, storage):
    for name in ("quay", "dockerhub", "private"):
        make_registry(name)
    (storage / "notes").mkdir()  # a directory without docker/registry/v2 is not a registry
    (storage / "README").write_text("x")
    found = find_registries(str(storage))
    assert [name for name, _ in found] == ["dockerhub", "private", "quay"]
    assert found[1][1] == str(storage / "private" / "docker" / "registry" / "v2")


def test_symlinked_registry_dir_is_not_a_registry(make_registry, storage, tmp_path):
    outside = tmp_path / "elsewhere"
    make_registry("private")
    (outside / "docker" / "registry" / "v2").mkdir(parents=True)
    (storage / "ghcr").symlink_to(outside)
    assert [name for name, _ in find_registries(str(storage))] == ["private"]


def test_single_registry_layout_is_named_after_the_directory(storage):
    single = storage / "private"
    (single / "docker" / "registry" / "v2" / "repositories").mkdir(parents=True)
    found = find_registries(str(single) + os.sep)
    assert found == [("private", str(single / "docker" / "registry" / "v2"))]


@pytest.mark.parametrize("scan", SCANNERS)
def test_unknown_registry_name_is_a_scan_error_naming_what_exists(make_registry, storage, scan):
    make_registry("dockerhub")
    with pytest.raises(ScanError) as raised:
        scan(str(storage), registries=["private", "ghcr"])
    message = str(raised.value)
    assert "registry ghcr not found" in message and "registry private not found" in message
    assert "registries there: dockerhub" in message
    # Allowed to be incomplete: both named as incomplete, the scan of what exists stands.
    result = scan(str(storage), registries=["private", "ghcr", "dockerhub"], allow_incomplete=True)
    assert result["registries"] == ["dockerhub"]
    assert result["incomplete_registries"] == ["ghcr", "private"]


def test_selection_is_sorted_and_deduplicated(make_registry, storage):
    for name in ("a", "b", "c"):
        make_registry(name)
    assert [name for name, _ in select_registries(str(storage), ["c", "a", "c"])[0]] == ["a", "c"]
    assert [name for name, _ in select_registries(str(storage), None)[0]] == ["a", "b", "c"]
