"""Read a registry's on-disk layout (distribution 2.8 filesystem driver), independently of the
modules under test: paths of blobs and link files, repos, tags, and whole-tree snapshots.

``v2`` arguments are a registry's ``<rootdirectory>/docker/registry/v2`` directory
(``Registry.v2`` in :mod:`tests.support.registry`), or the same prefix in a bucket (an
:class:`tests.support.s3path.S3Path`, for a registry on S3): every helper works on both.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path

from .s3path import S3Path

HEX64 = re.compile(r"[0-9a-f]{64}")
EMPTY_DIGEST = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
REPO_MARKERS = ("_layers", "_manifests", "_uploads")


def hex_of(digest: str) -> str:
    algorithm, _, hexpart = digest.partition(":")
    if algorithm != "sha256" or not HEX64.fullmatch(hexpart):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return hexpart


def _root(v2):
    return v2 if isinstance(v2, S3Path) else Path(v2)


def blob_dir(v2: Path, digest: str) -> Path:
    hexpart = hex_of(digest)
    return _root(v2) / "blobs" / "sha256" / hexpart[:2] / hexpart


def blob_data(v2: Path, digest: str) -> Path:
    return blob_dir(v2, digest) / "data"


def repo_dir(v2: Path, repo: str) -> Path:
    return _root(v2) / "repositories" / repo


def layer_link(v2: Path, repo: str, digest: str) -> Path:
    return repo_dir(v2, repo) / "_layers" / "sha256" / hex_of(digest) / "link"


def revision_link(v2: Path, repo: str, digest: str) -> Path:
    return repo_dir(v2, repo) / "_manifests" / "revisions" / "sha256" / hex_of(digest) / "link"


def tag_dir(v2: Path, repo: str, tag: str) -> Path:
    return repo_dir(v2, repo) / "_manifests" / "tags" / tag


def tag_current_link(v2: Path, repo: str, tag: str) -> Path:
    return tag_dir(v2, repo, tag) / "current" / "link"


def repositories(v2: Path) -> list[str]:
    """Repo names (nested ones included): directories holding ``_layers``/``_manifests``/``_uploads``."""
    if isinstance(v2, S3Path):
        return _s3_repositories(v2)
    top = Path(v2) / "repositories"
    repos = []
    for dirpath, dirnames, _ in os.walk(top):  # os.walk does not follow symlinks by default
        if any(marker in dirnames for marker in REPO_MARKERS):
            repos.append(os.path.relpath(dirpath, top))
        # Never descend into a repo's own bookkeeping dirs.
        dirnames[:] = [d for d in dirnames if not d.startswith("_")]
    return sorted(repos)


def _s3_repositories(v2: S3Path) -> list[str]:
    repos = set()
    for rel, _size in (v2 / "repositories").objects():
        parts = rel.split("/")
        for index, part in enumerate(parts):
            if part in REPO_MARKERS:
                repos.add("/".join(parts[:index]))
                break
            if part.startswith("_"):
                break
    return sorted(repos)


def _link_dirs(parent: Path) -> list[tuple[str, Path]]:
    """(directory name, link path) for every ``<name>/link`` regular file under ``parent``."""
    if isinstance(parent, S3Path):
        names = sorted({rel[:-len("/link")] for rel, _size in parent.objects()
                        if rel.endswith("/link") and rel.count("/") == 1})
        return [(name, parent / name / "link") for name in names]
    if not parent.is_dir():
        return []
    found = []
    for entry in sorted(os.scandir(parent), key=lambda e: e.name):
        link = Path(entry.path) / "link"
        if entry.is_dir(follow_symlinks=False) and link.is_file() and not link.is_symlink():
            found.append((entry.name, link))
    return found


def layer_links(v2: Path, repo: str) -> list[tuple[str, Path]]:
    """(``sha256:<name>``, link path) for every ``_layers`` link file of ``repo``."""
    return [(f"sha256:{name}", link)
            for name, link in _link_dirs(repo_dir(v2, repo) / "_layers" / "sha256")]


def revision_links(v2: Path, repo: str) -> list[tuple[str, Path]]:
    return [(f"sha256:{name}", link)
            for name, link in _link_dirs(repo_dir(v2, repo) / "_manifests" / "revisions" / "sha256")]


def tag_names(v2: Path, repo: str) -> list[str]:
    tags = repo_dir(v2, repo) / "_manifests" / "tags"
    if isinstance(tags, S3Path):
        return [name for name, is_dir in tags.children() if is_dir]
    return sorted(e.name for e in os.scandir(tags) if e.is_dir(follow_symlinks=False)) if tags.is_dir() else []


def read_link(path: Path) -> str | None:
    """A link file's digest, or None when it is missing, empty or not ``sha256:<hex>``."""
    try:
        content = (path if isinstance(path, S3Path) else Path(path)).read_text(errors="replace").strip()
    except Exception:  # OSError, or a key that is gone
        return None
    try:
        hex_of(content)
    except ValueError:
        return None
    return content


def link_state(path: Path, expected_digest: str) -> str:
    """``present`` (names ``expected_digest``), ``missing`` or ``invalid``."""
    if not (path if isinstance(path, S3Path) else Path(path)).is_file():
        return "missing"
    return "present" if read_link(path) == expected_digest else "invalid"


def blob_data_state(v2: Path, digest: str) -> str:
    """``present``, ``empty`` (0 bytes) or ``gone`` (missing, or not a regular file)."""
    if isinstance(v2, S3Path):
        size = blob_data(v2, digest).size()
        if size is None:
            return "gone"
        return "empty" if size == 0 and digest != EMPTY_DIGEST else "present"
    try:
        info = os.lstat(blob_data(v2, digest))
    except FileNotFoundError:
        return "gone"
    if not stat.S_ISREG(info.st_mode):
        return "gone"
    return "empty" if info.st_size == 0 and digest != EMPTY_DIGEST else "present"


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root`` (relative path -> kind, size, sha256 of file content).

    Symlinks are recorded, never followed. Two snapshots compare equal only if no file or
    directory was added, removed or modified.
    """
    root = Path(root)
    entries: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            info = os.lstat(full)
            if stat.S_ISLNK(info.st_mode):
                entries[rel] = ("symlink", os.readlink(full))
            elif stat.S_ISDIR(info.st_mode):
                entries[rel] = ("dir",)
            elif not stat.S_ISREG(info.st_mode):
                entries[rel] = ("special", stat.S_IFMT(info.st_mode))  # a FIFO: never opened
            else:
                with open(full, "rb") as handle:
                    entries[rel] = ("file", info.st_size, hashlib.sha256(handle.read()).hexdigest())
    return entries
