# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Blob-level storage scan: orphan layer links, invalid link files, zero-byte and corrupt blobs.

Used by the registry_blob_scan module and by the scanner CLI on the registry VM.
"""

import functools
import hashlib
import os
import stat

from ansible_collections.regwarden.registry.plugins.module_utils._parallel import map_registries, merge_results
from ansible_collections.regwarden.registry.plugins.module_utils._repository import (
    LINK_OK_STATE,
    walk_registry,
)
from ansible_collections.regwarden.registry.plugins.module_utils._storage import (
    BLOB_GONE_STATES,
    BLOB_UNREADABLE,
    DATA_EMPTY,
    EMPTY_SHA256,
    LINK_INVALID,
    LINK_MISSING,
    classify_link_content,
    close_fd,
    digest_of,
    is_hex_digest,
    iter_link_dirs,
    open_subdir,
    read_link_at,
    remove_link_dir_at,
    select_registries,
)

# (kind, path of the link directories inside a repository)
LINK_KINDS = (
    ("layer", ("_layers", "sha256")),
    ("revision", ("_manifests", "revisions", "sha256")),
)
HASH_CHUNK = 1 << 20


def new_result():
    return {
        "orphan_layer_links": [],
        "invalid_link_files": [],
        "zero_byte_blobs": [],
        "corrupt_blobs": [],
        "removed_links": [],
        "scan_errors": [],
        "summary": {},
        "registries": [],
    }


def scan_blobs(path, registries=None, remove_orphans=False, verify_digests=False, check_mode=False,
               processes=None):
    """Scan the registries under ``path``; see the registry_blob_scan module for the result.

    ``processes``: registries scanned at once (default: the usable CPUs, see _parallel).
    """
    scan = functools.partial(_scan_registry, remove_orphans=remove_orphans, verify_digests=verify_digests,
                             check_mode=check_mode)
    result = new_result()
    for part in map_registries(scan, select_registries(path, registries), processes):
        merge_results(result, part)
    return finish_result(result, check_mode)


def _scan_registry(name, v2_root, remove_orphans=False, verify_digests=False, check_mode=False):
    """One registry's blob scan, as a result of its own (merged by the caller)."""
    result = new_result()
    walk_registry(name, v2_root, lambda blobs, errors: [
        BlobScanner(name, blobs, errors, result, remove_orphans, verify_digests, check_mode)])
    return result


def finish_result(result, check_mode=False):
    """Sort the findings of every registry scanned into ``result``; set changed/restart_required."""
    result["registries"].sort()
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


class BlobScanner:
    """The blob scan of one registry, fed one repository at a time.

    Every link it reads is handed to the repository object (RepositoryLinks.record_*), so an
    index audit of the same repository in the same walk reads none of them again.
    """

    def __init__(self, name, blobs, errors, result, remove_orphans=False, verify_digests=False, check_mode=False):
        self.name = name
        self.blobs = blobs
        self.errors = errors
        self.result = result
        self.remove_orphans = remove_orphans
        self.verify_digests = verify_digests
        self.check_mode = check_mode
        self.counts = {
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
        self.zero_byte = {}

    def add_repository(self, repo_name, repo):
        self.counts["repositories"] += 1
        for kind, parts in LINK_KINDS:
            states = {}
            links_fd = open_subdir(repo.fd, parts, repo.path, self.errors)
            if links_fd is not None:
                try:
                    self._scan_link_kind(repo_name, os.path.join(repo.path, *parts), links_fd, kind, states)
                finally:
                    close_fd(links_fd)
            if kind == "layer":
                repo.record_layer_links(states)
            else:
                repo.record_revisions(states)

    def finish(self):
        """Add this registry's zero-byte blobs, digest scrub, summary and scan errors to the result."""
        name, blobs, result, counts = self.name, self.blobs, self.result, self.counts
        for hex_digest in sorted(self.zero_byte):
            result["zero_byte_blobs"].append({
                "registry": name,
                "digest": digest_of(hex_digest),
                "path": blobs.data_path(hex_digest),
                "repos": sorted(self.zero_byte[hex_digest]),
            })
        counts["zero_byte_blobs"] = len(self.zero_byte)
        if self.verify_digests:
            counts["corrupt_blobs"] = _verify_digests(name, blobs, result, self.errors)
        counts["blobs_checked"] = blobs.checked_count()
        result["summary"][name] = counts
        result["registries"].append(name)
        result["scan_errors"].extend(self.errors.items)

    def _scan_link_kind(self, repo, links_dir, dir_fd, kind, states):
        name, blobs, result, counts, errors = self.name, self.blobs, self.result, self.counts, self.errors
        link_count = 0
        for entry, is_dir, is_link in iter_link_dirs(dir_fd):
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
                states[entry] = (state, reason)
                _invalid(result, counts, name, repo, kind, entry, os.path.join(links_dir, entry, "link"), reason)
                continue
            states[entry] = LINK_OK_STATE
            link_count += 1
            data_state = blobs.data_state(entry)
            if data_state == DATA_EMPTY and entry != EMPTY_SHA256:
                self.zero_byte.setdefault(entry, set()).add(repo)
            elif data_state == BLOB_UNREADABLE:
                errors.add(blobs.data_path(entry), "blob data unreadable; link not judged")
            elif data_state in BLOB_GONE_STATES and kind == "layer":
                link_path = os.path.join(links_dir, entry, "link")
                counts["orphan_layer_links"] += 1
                result["orphan_layer_links"].append({
                    "registry": name,
                    "repo": repo,
                    "digest": digest_of(entry),
                    "path": link_path,
                    "blob_path": blobs.data_path(entry),
                    "reason": blobs.reason(entry),
                })
                if self.remove_orphans and _remove_orphan(dir_fd, entry, link_path, blobs, result, counts,
                                                          errors, self.check_mode) and not self.check_mode:
                    del states[entry]
        counts[kind + "_links"] += link_count


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
    """Remove one orphan layer link after checking again that it is still an orphan; True if (would be) removed.

    Only the link file and its (then empty) digest directory go; blob data is never touched.
    Everything is relative to the already-open _layers/sha256 descriptor, so a symlink
    swapped in meanwhile cannot redirect the removal outside the tree.
    """
    try:
        st = os.stat(hex_digest, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            return False
        link_fd = os.open(hex_digest + "/link", os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
        try:
            content = os.read(link_fd, 256)
        finally:
            os.close(link_fd)
        state, _target, _reason = classify_link_content(content, hex_digest)
        if state != "present" or blobs.fresh_data_state(hex_digest) not in BLOB_GONE_STATES:
            return False  # repaired or changed since the scan: leave it
        if not check_mode and not remove_link_dir_at(dir_fd, hex_digest):
            return False
    except (FileNotFoundError, NotADirectoryError):
        return False  # vanished meanwhile: nothing to remove
    except OSError as exc:
        errors.add(link_path, "cannot remove orphan link: %s" % (exc.strerror or exc))
        return False
    counts["removed_links"] += 1
    result["removed_links"].append(link_path)
    return True


def _verify_digests(name, blobs, result, errors):
    """Hash every blob's data against its name; returns the number of corrupt blobs."""
    corrupt = 0
    for hex_digest in blobs.iter_all():
        data_state = blobs.data_state(hex_digest)
        if data_state in BLOB_GONE_STATES:
            continue
        data_path = blobs.data_path(hex_digest)
        if data_state == BLOB_UNREADABLE:
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
