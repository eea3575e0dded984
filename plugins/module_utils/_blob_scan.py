# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Blob-level storage scan: orphan layer links, invalid link files, zero-byte and corrupt blobs.

Used by the registry_blob_scan module and by the scanner CLI on the registry VM.
"""

import hashlib
import os
import stat

from ansible_collections.regwarden.registry.plugins.module_utils._storage import (
    BLOB_GONE_STATES,
    BLOB_UNREADABLE,
    EMPTY_SHA256,
    LINK_INVALID,
    LINK_MISSING,
    ScanErrors,
    classify_link_content,
    close_fd,
    digest_of,
    is_hex_digest,
    iter_link_dirs,
    iter_repositories,
    open_subdir,
    read_link_at,
    registry_storage,
    remove_link_dir_at,
    select_registries,
)

# (kind, path of the link directories inside a repository)
LINK_KINDS = (
    ("layer", ("_layers", "sha256")),
    ("revision", ("_manifests", "revisions", "sha256")),
)
HASH_CHUNK = 1 << 20


def scan_blobs(path, registries=None, remove_orphans=False, verify_digests=False, check_mode=False):
    """Scan the registries under ``path``; see the registry_blob_scan module for the result."""
    result = {
        "orphan_layer_links": [],
        "invalid_link_files": [],
        "zero_byte_blobs": [],
        "corrupt_blobs": [],
        "removed_links": [],
        "scan_errors": [],
        "summary": {},
    }
    selected = select_registries(path, registries)
    for name, v2_root in selected:
        _scan_registry(name, v2_root, result, remove_orphans, verify_digests, check_mode)
    result["registries"] = [name for name, _v2_root in selected]
    result["orphan_layer_links"].sort(key=lambda f: (f["registry"], f["repo"], f["digest"]))
    result["invalid_link_files"].sort(key=lambda f: (f["registry"], f["repo"], f["path"]))
    result["zero_byte_blobs"].sort(key=lambda f: (f["registry"], f["digest"]))
    result["corrupt_blobs"].sort(key=lambda f: (f["registry"], f["digest"]))
    result["removed_links"].sort()
    result["scan_errors"].sort(key=lambda f: (f["registry"], f["path"], f["error"]))
    result["changed"] = bool(result["removed_links"])
    result["restart_required"] = bool(result["removed_links"]) and not check_mode
    return result


def count_findings(result):
    return sum(len(result[key]) for key in ("orphan_layer_links", "invalid_link_files", "zero_byte_blobs",
                                            "corrupt_blobs"))


def _scan_registry(name, v2_root, result, remove_orphans, verify_digests, check_mode):
    errors = ScanErrors(name)
    counts = {
        "repositories": 0,
        "layer_links": 0,
        "revision_links": 0,
        "empty_link_dirs": 0,
        "blobs_checked": 0,
        "orphan_layer_links": 0,
        "invalid_link_files": 0,
        "zero_byte_blobs": 0,
        "corrupt_blobs": 0,
        "removed_links": 0,
    }
    zero_byte = {}
    with registry_storage(name, v2_root, errors) as (v2_fd, blobs):
        for repo, repo_path, repo_fd in iter_repositories(v2_fd, v2_root, errors):
            counts["repositories"] += 1
            for kind, parts in LINK_KINDS:
                links_fd = open_subdir(repo_fd, parts, repo_path, errors)
                if links_fd is None:
                    continue
                try:
                    _scan_link_kind(name, repo, os.path.join(repo_path, *parts), links_fd, kind, blobs, result,
                                    counts, zero_byte, errors, remove_orphans, check_mode)
                finally:
                    close_fd(links_fd)
        for hex_digest in sorted(zero_byte):
            result["zero_byte_blobs"].append({
                "registry": name,
                "digest": digest_of(hex_digest),
                "path": blobs.data_path(hex_digest),
                "repos": sorted(zero_byte[hex_digest]),
            })
        counts["zero_byte_blobs"] = len(zero_byte)
        if verify_digests:
            counts["corrupt_blobs"] = _verify_digests(name, blobs, result, errors)
        counts["blobs_checked"] = blobs.checked_count()
    result["summary"][name] = counts
    result["scan_errors"].extend(errors.items)


def _scan_link_kind(name, repo, links_dir, dir_fd, kind, blobs, result, counts, zero_byte, errors,
                    remove_orphans, check_mode):
    for entry, is_dir, is_link in iter_link_dirs(dir_fd):
        link_path = os.path.join(links_dir, entry, "link")
        if is_link or not is_dir:
            _invalid(result, counts, name, repo, kind, None, os.path.join(links_dir, entry),
                     "symlink, not followed" if is_link else "not a directory")
            continue
        if not is_hex_digest(entry):
            _invalid(result, counts, name, repo, kind, None, os.path.join(links_dir, entry),
                     "directory name is not a sha256 digest")
            continue
        state, _target, reason = read_link_at(dir_fd, entry + "/link", entry)
        if state == LINK_MISSING:
            counts["empty_link_dirs"] += 1
            continue
        if state == LINK_INVALID:
            _invalid(result, counts, name, repo, kind, entry, link_path, reason)
            continue
        counts[kind + "_links"] += 1
        size = blobs.size(entry)
        if size == 0 and entry != EMPTY_SHA256:
            zero_byte.setdefault(entry, set()).add(repo)
        elif size == BLOB_UNREADABLE:
            errors.add(blobs.data_path(entry), "blob data unreadable; link not judged")
        elif size in BLOB_GONE_STATES and kind == "layer":
            counts["orphan_layer_links"] += 1
            result["orphan_layer_links"].append({
                "registry": name,
                "repo": repo,
                "digest": digest_of(entry),
                "path": link_path,
                "blob_path": blobs.data_path(entry),
                "reason": blobs.reason(entry),
            })
            if remove_orphans:
                _remove_orphan(dir_fd, entry, link_path, blobs, result, counts, errors, check_mode)


def _invalid(result, counts, name, repo, kind, hex_digest, path, reason):
    counts["invalid_link_files"] += 1
    result["invalid_link_files"].append({
        "registry": name,
        "repo": repo,
        "digest": digest_of(hex_digest) if hex_digest else None,
        "path": path,
        "kind": kind,
        "reason": reason,
    })


def _remove_orphan(dir_fd, hex_digest, link_path, blobs, result, counts, errors, check_mode):
    """Remove one orphan layer link after checking again that it is still an orphan.

    Only the link file and its (then empty) digest directory go; blob data is never touched.
    Everything is relative to the already-open _layers/sha256 descriptor, so a symlink
    swapped in meanwhile cannot redirect the removal outside the tree.
    """
    try:
        st = os.stat(hex_digest, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            return
        link_fd = os.open(hex_digest + "/link", os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
        try:
            content = os.read(link_fd, 256)
        finally:
            os.close(link_fd)
        state, _target, _reason = classify_link_content(content, hex_digest)
        if state != "present" or blobs.fresh_size(hex_digest) not in BLOB_GONE_STATES:
            return  # repaired or changed since the scan: leave it
        if not check_mode and not remove_link_dir_at(dir_fd, hex_digest):
            return
    except (FileNotFoundError, NotADirectoryError):
        return  # vanished meanwhile: nothing to remove
    except OSError as exc:
        errors.add(link_path, "cannot remove orphan link: %s" % (exc.strerror or exc))
        return
    counts["removed_links"] += 1
    result["removed_links"].append(link_path)


def _verify_digests(name, blobs, result, errors):
    """Hash every blob's data against its name; returns the number of corrupt blobs."""
    corrupt = 0
    for hex_digest in blobs.iter_all():
        size = blobs.size(hex_digest)
        if size in BLOB_GONE_STATES:
            continue
        data_path = blobs.data_path(hex_digest)
        if size == BLOB_UNREADABLE:
            errors.add(data_path, "blob data unreadable")
            continue
        try:
            actual = _sha256_file(blobs, hex_digest)
        except FileNotFoundError:
            continue
        except OSError as exc:
            errors.add(data_path, "cannot read blob data: %s" % (exc.strerror or exc))
            continue
        if actual != hex_digest:
            corrupt += 1
            result["corrupt_blobs"].append({
                "registry": name,
                "digest": digest_of(hex_digest),
                "path": data_path,
                "actual_digest": digest_of(actual),
            })
    return corrupt


def _sha256_file(blobs, hex_digest):
    fd = blobs.open_data(hex_digest)
    try:
        digest = hashlib.sha256()
        while True:
            chunk = os.read(fd, HASH_CHUNK)
            if not chunk:
                break
            digest.update(chunk)
        return digest.hexdigest()
    finally:
        os.close(fd)
