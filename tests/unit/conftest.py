"""Fixtures for the unit tests: a scan `path` in tmp_path and registries built inside it.

The tree builder is tests/support/tree.py, the paths it writes come from tests/support/storage.py.
"""

import pytest

from tests.support.tree import RegistryTree


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
