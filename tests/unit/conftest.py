"""Fixtures for the unit tests: a scan `path` in tmp_path and registries built inside it.

The tree builder lives in storage_tree.py (importable because pytest puts this rootdir-less
directory on sys.path); a distinct name keeps it clear of tests/integration/conftest.py.
"""

import pytest
from storage_tree import RegistryTree


@pytest.fixture
def storage(tmp_path):
    """The ``path`` the scanners read: one directory per registry."""
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def make_registry(storage):
    def make(name="private"):
        return RegistryTree(storage / name)

    return make


@pytest.fixture
def private(make_registry):
    return make_registry("private")
