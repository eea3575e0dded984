"""Break a registry's storage the way the field does, with the real mechanisms.

Each function acts on a :class:`tests.support.registry.Registry` (running or not) and returns
what it touched. None of them restarts the registry: a running one keeps its descriptor cache,
which is exactly how the damage hides in production until the next restart.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from . import storage
from .oci import RegistryClient
from .registry import Registry
from .s3path import S3Path


def _rmtree(path) -> None:
    if isinstance(path, S3Path):
        path.rmtree()
    else:
        shutil.rmtree(path)


def _truncate(path, keep: int) -> None:
    """Keep the first ``keep`` bytes (on S3: the object rewritten with them, as a cut copy leaves it)."""
    if isinstance(path, S3Path):
        path.write_bytes(path.read_bytes()[:keep])
    else:
        os.truncate(path, keep)


def rmtree_tag(registry: Registry, repo: str, tag: str) -> Path:
    """Delete a tag the way the old ``cleanup-tags.sh`` did: ``shutil.rmtree`` of its directory.

    The revision links stay; the manifest is now untagged (food for ``--delete-untagged``).
    """
    path = storage.tag_dir(registry.v2, repo, tag)
    _rmtree(path)
    return path


def api_delete_manifest(registry: Registry, repo: str, digest: str) -> None:
    """``DELETE /v2/<repo>/manifests/<digest>``: the registry drops the revision (and ``_layers``)
    link files and every tag pointing at the digest, without asking whether an index needs it."""
    RegistryClient(registry.url).delete_manifest(repo, digest)


def gc_delete_untagged(registry: Registry):
    """``docker-registry garbage-collect --delete-untagged`` (2.8: drops the revision link of
    every untagged index child and sweeps their configs and layers)."""
    return registry.garbage_collect(delete_untagged=True)


def remove_blob_data(registry: Registry, digest: str) -> Path:
    """``rm blobs/.../<hex>/data`` (what a cache expiry or a bad GC leaves behind)."""
    path = storage.blob_data(registry.v2, digest)
    path.unlink()
    return path


def remove_blob_dir(registry: Registry, digest: str) -> Path:
    """``rm -r blobs/sha256/<xx>/<hex>`` (the whole blob directory)."""
    path = storage.blob_dir(registry.v2, digest)
    _rmtree(path)
    return path


def replace_blob_data_with_dir(registry: Registry, digest: str) -> Path:
    """``data`` exists but is a directory (the registry treats the blob as unknown)."""
    path = storage.blob_data(registry.v2, digest)
    path.unlink()
    path.mkdir()
    return path


def zero_blob_data(registry: Registry, digest: str) -> Path:
    """Truncate the blob data to 0 bytes (a full disk during upload, a crashed copy)."""
    path = storage.blob_data(registry.v2, digest)
    _truncate(path, 0)
    return path


def truncate_blob_data(registry: Registry, digest: str, keep: int) -> Path:
    """Keep only the first ``keep`` bytes (a truncated manifest is invalid JSON)."""
    path = storage.blob_data(registry.v2, digest)
    _truncate(path, keep)
    return path


def corrupt_blob_data(registry: Registry, digest: str, offset: int = 0) -> Path:
    """Flip the bits of one byte: same size, wrong content (bit rot)."""
    path = storage.blob_data(registry.v2, digest)
    if isinstance(path, S3Path):
        data = bytearray(path.read_bytes())
        data[offset] ^= 0xFF
        path.write_bytes(bytes(data))
        return path
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))
    return path


def write_link(path: Path, content: str) -> Path:
    """Overwrite a link file (``""`` = empty, ``"garbage"``, or another digest)."""
    path = path if isinstance(path, S3Path) else Path(path)
    path.write_text(content)
    return path


def garbage_layer_link(registry: Registry, repo: str, digest: str, content: str = "garbage") -> Path:
    return write_link(storage.layer_link(registry.v2, repo, digest), content)


def garbage_revision_link(registry: Registry, repo: str, digest: str, content: str = "garbage") -> Path:
    return write_link(storage.revision_link(registry.v2, repo, digest), content)


def garbage_tag_link(registry: Registry, repo: str, tag: str, content: str = "garbage") -> Path:
    return write_link(storage.tag_current_link(registry.v2, repo, tag), content)
