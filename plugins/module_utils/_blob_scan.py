# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Blob-level storage scan: orphan layer links, invalid link files, zero-byte and corrupt blobs.

Used by the registry_blob_scan module and by the scanner CLI on the registry VM.
"""

import collections
import os
import time

from ansible_collections.regwarden.registry.plugins.module_utils import _driver, _pull_records
from ansible_collections.regwarden.registry.plugins.module_utils._fs_view import LINK_OK_STATE
from ansible_collections.regwarden.registry.plugins.module_utils._manifest import InvalidManifest
from ansible_collections.regwarden.registry.plugins.module_utils._repository import (
    ManifestCache,
    UnreadableManifest,
    record_registry,
    walk_registry,
)
from ansible_collections.regwarden.registry.plugins.module_utils._storage import (
    BLOB_GONE_STATES,
    BLOB_UNREADABLE,
    DATA_EMPTY,
    DATA_PRESENT,
    EMPTY_SHA256,
    LINK_INVALID,
    LINK_MISSING,
    LINK_OK,
    LINK_UNREADABLE,
    NotRegularFile,
    ScanError,
    digest_of,
    is_hex_digest,
)
from ansible_collections.regwarden.registry.plugins.module_utils._writer import Changed, WriteRefused

LINK_KINDS = ("layer", "revision")
FINDING_KEYS = ("orphan_layer_links", "invalid_link_files", "zero_byte_blobs", "corrupt_blobs")


def new_result():
    return {
        "orphan_layer_links": [],
        "invalid_link_files": [],
        "zero_byte_blobs": [],
        "corrupt_blobs": [],
        "removed_links": [],
        "scan_errors": [],
        "incomplete_registries": [],
        "summary": {},
        "registries": [],
        "capacity": {},
    }


def scan_blobs(storage, registries=None, remove_orphans=False, verify_digests=False, check_mode=False,
               processes=None, allow_incomplete=False, max_findings=_driver.DEFAULT_MAX_FINDINGS, capacity=False,
               pull_records=None):
    """Scan the registries of ``storage`` (a filesystem path or a backend); see the registry_blob_scan
    module for the result.

    ``processes``: registries scanned at once (default: the usable CPUs, see _parallel).
    ``allow_incomplete`` False: IncompleteScan when a registry could not be scanned whole.
    ``capacity``: also the capacity figures of every registry (result key ``capacity``), with each
    repository's last pull from the pull records under ``pull_records`` when given.
    """
    if pull_records and not capacity:
        raise ScanError("pull_records adds the last pulls to the capacity figures: it needs capacity")
    mode = _driver.mode_of(remove_orphans, check_mode)
    storage = _driver.as_storage(storage)

    def work(name, location, _active):
        return [scan_registry(storage, name, location, mode, verify_digests, capacity)]

    result = _driver.run_analyses(storage, [(analysis(mode), registries)], work, processes, allow_incomplete,
                                  max_findings)[0]
    if pull_records:
        _pull_records.annotate_capacity(result["capacity"], pull_records)
    return result


def scan_registry(storage, name, location, mode=_driver.REPORT, verify_digests=False, capacity=False):
    """One registry's blob scan, as a result of its own (merged by the caller)."""
    result = new_result()
    with _driver.registry_writer(mode, storage, name, location) as writer:
        walk_registry(storage, name, location, lambda blobs, errors: [
            BlobScanner(name, blobs, errors, result, writer, verify_digests, capacity)])
    return result


def finish_result(result, mode=_driver.REPORT):
    """Sort the findings of every registry scanned into ``result``; set changed/restart_required."""
    result["registries"].sort()
    result["orphan_layer_links"].sort(key=lambda f: (f["registry"], f["repo"], f["digest"]))
    result["invalid_link_files"].sort(key=lambda f: (f["registry"], f["repo"], f["path"]))
    result["zero_byte_blobs"].sort(key=lambda f: (f["registry"], f["digest"]))
    result["corrupt_blobs"].sort(key=lambda f: (f["registry"], f["digest"]))
    result["removed_links"].sort()
    result["scan_errors"].sort(key=lambda f: (f["registry"], f["path"], f["error"]))
    result["changed"] = bool(result["removed_links"])
    # A check-mode run removes nothing: only what was really removed asks for a restart.
    result["restart_required"] = bool(result["removed_links"]) and mode == _driver.APPLY
    return result


def analysis(mode=_driver.REPORT):
    return _driver.Analysis("blob_scan", new_result, lambda result: finish_result(result, mode))


def count_findings(result, include_errors=True):
    """Findings and (``include_errors``) places that could not be read: true counts, whatever the cap."""
    keys = (*FINDING_KEYS, "scan_errors") if include_errors else FINDING_KEYS
    return sum(_driver.total(result, key) for key in keys)


class BlobScanner:
    """The blob scan of one registry, fed one repository at a time.

    Every link it reads is handed to the repository object (RepositoryLinks.record_*), so an
    index audit of the same repository in the same walk reads none of them again. ``writer``
    (given only when orphan removal was asked for) removes orphan layer links.
    """

    def __init__(self, name, blobs, errors, result, writer=None, verify_digests=False, capacity=False):
        self.name = name
        self.blobs = blobs
        self.errors = errors
        self.result = result
        self.writer = writer
        self.verify_digests = verify_digests
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
        # Capacity figures, when asked for: repository -> the blobs it links (32-byte digests), its uploads.
        self.capacity = _Capacity(blobs) if capacity and blobs is not None else None

    def add_repository(self, repo_name, repo):
        self.counts["repositories"] += 1
        linked = set() if self.capacity is not None else None
        for kind in LINK_KINDS:
            states = {}
            with repo.open_links(kind) as links:
                entries = links.entries()
                if entries is not None:
                    self._scan_link_kind(repo_name, links, entries, kind, states)
                unreadable = links.unreadable
            if kind == "layer":
                repo.record_layer_links(states, unreadable=unreadable)
            else:
                repo.record_revisions(states, unreadable=unreadable)
            if linked is not None:
                linked.update(bytes.fromhex(entry) for entry, state in states.items() if state == LINK_OK_STATE)
        if linked is not None:
            self.capacity.add_repository(repo_name, linked, repo.upload_entries(), self.capacity.untagged_of(repo))

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
        if self.verify_digests and blobs is not None:
            counts["corrupt_blobs"] = _verify_digests(name, blobs, result, self.errors)
        counts["blobs_checked"] = blobs.checked_count() if blobs is not None else 0
        if self.capacity is not None:
            # After the count: the figures stat every blob, the scan's own checks do not.
            result["capacity"][name] = self.capacity.figures()
        record_registry(result, name, counts, self.errors)

    def _scan_link_kind(self, repo, links, entries, kind, states):
        """Judge every link of one kind (``links``: the listing of its directory)."""
        links_dir = links.path
        name, blobs, result, counts = self.name, self.blobs, self.result, self.counts
        read = links.read
        data_state = blobs.data_state
        link_count = 0
        for entry, is_dir, is_link in entries:
            if is_link or not is_dir:
                _invalid(result, counts, name, repo, kind, None, os.path.join(links_dir, entry),
                         "symlink, not followed" if is_link else "not a directory")
                continue
            if not is_hex_digest(entry):
                _invalid(result, counts, name, repo, kind, None, os.path.join(links_dir, entry),
                         "directory name is not a sha256 digest")
                continue
            state, reason = read(entry)
            if state == LINK_MISSING:
                counts["empty_link_dirs"] += 1
                continue
            if state == LINK_UNREADABLE:
                states[entry] = (state, reason)  # reported as a scan error by read_link: not judged
                continue
            if state == LINK_INVALID:
                states[entry] = (state, reason)
                _invalid(result, counts, name, repo, kind, entry, os.path.join(links_dir, entry, "link"), reason)
                continue
            states[entry] = LINK_OK_STATE
            link_count += 1
            state_of_data = data_state(entry)
            if state_of_data == DATA_EMPTY and entry != EMPTY_SHA256:
                self.zero_byte.setdefault(entry, set()).add(repo)
            elif state_of_data == BLOB_UNREADABLE:
                pass  # the blob store reported why: the link is not judged
            elif state_of_data in BLOB_GONE_STATES and kind == "layer":
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
                if self.writer is not None and self._remove_orphan(links.handle, entry, link_path) and \
                        self.writer.apply:
                    del states[entry]
        counts[kind + "_links"] += link_count

    def _remove_orphan(self, links_handle, hex_digest, link_path):
        """Remove one orphan layer link through the writer, after checking again that it is still an orphan.

        True if it was (or, in check mode, would be) removed. Only the link file and its (then
        empty) digest directory go; blob data is never touched.
        """
        blobs = self.blobs

        def still_wanted():
            if blobs.fresh_data_state(hex_digest) not in BLOB_GONE_STATES:
                return "the blob data of %s is back: the link stays" % link_path
            return None

        try:
            self.writer.remove_link(links_handle, hex_digest, link_path, still_wanted)
        except Changed:
            return False  # repaired or changed since the scan: leave it
        except WriteRefused as exc:
            self.errors.add(link_path, "orphan link not removed: %s" % exc)
            return False
        except OSError as exc:
            self.errors.add(link_path, "cannot remove orphan link: %s" % (exc.strerror or exc))
            return False
        self.counts["removed_links"] += 1
        self.result["removed_links"].append(link_path)
        return True


# What the capacity walk keeps of one repository: the 32-byte digests it links (layers and revisions),
# its unfinished uploads [(bytes, start time or None)], and (manifests no tag reaches, digests only they
# use there) or None when that is not known.
RepositoryCapacity = collections.namedtuple("RepositoryCapacity", "linked uploads untagged")


class _Capacity:
    """Where a registry's bytes are: blob data per repository (unique to it or shared), blobs no
    repository links (plain garbage-collect frees at least these), manifests no tag reaches (what
    tag cleanup's delete_untagged and a GC would free), and abandoned uploads."""

    def __init__(self, blobs):
        self.blobs = blobs
        blobs.keep_sizes()
        self.manifests = ManifestCache.of(blobs)
        self.repos = {}  # repository -> RepositoryCapacity

    def add_repository(self, repo_name, linked, uploads, untagged=None):
        self.repos[repo_name] = RepositoryCapacity(linked, uploads, untagged)

    def untagged_of(self, repo):
        """(manifests with a revision link that no tag reaches, directly or through an index at any depth;
        the blobs, manifests included, that only those use in the repository), or None when something a
        tag reaches cannot be read (what it protects is not known)."""
        tags = repo.read_tags()
        repo.load_revisions()
        if repo.tags_unreadable or repo.revisions_unreadable or any(
                link.state == LINK_UNREADABLE for link in tags.values()):
            return None
        linked = {hex_digest for hex_digest, (state, _reason) in repo.revisions.items() if state == LINK_OK}
        reached = self._reached({link.target for link in tags.values() if link.state == LINK_OK})
        if reached is None:
            return None
        untagged = linked - reached
        if not untagged:
            return 0, frozenset()
        # Everything a tag reaches keeps its blobs, children without a revision link (awaiting repair) too.
        still_used = self.manifests.blobs_of(reached) | reached
        freed = (self.manifests.blobs_of(untagged) | untagged) - still_used
        return len(untagged), frozenset(bytes.fromhex(hex_digest) for hex_digest in freed)

    def _reached(self, roots):
        reached = set()
        stack = sorted(roots)
        while stack:
            hex_digest = stack.pop()
            if hex_digest in reached:
                continue
            reached.add(hex_digest)
            manifest = self.manifests.get(hex_digest)
            if isinstance(manifest, (InvalidManifest, UnreadableManifest)):
                return None
            if manifest is not ManifestCache.GONE and manifest.is_index:
                stack.extend(manifest.child_digests)
        return reached

    def _size(self, hex_digest):
        """Bytes of a blob's data, None when it is not there (or could not be judged)."""
        if self.blobs.data_state(hex_digest) not in (DATA_PRESENT, DATA_EMPTY):
            return None
        return self.blobs.size(hex_digest)

    def owners(self):
        """{32-byte digest: how many repositories link it}."""
        owners = {}
        for linked, _uploads, _untagged in self.repos.values():
            for key in linked:
                owners[key] = owners.get(key, 0) + 1
        return owners

    def sizes(self, keys):
        """{32-byte digest: bytes of its data} for those of ``keys`` whose data is there."""
        sizes = {}
        for key in keys:
            size = self._size(key.hex())
            if size is not None:
                sizes[key] = size
        return sizes

    def figures(self, now=None):
        now = time.time() if now is None else now
        owners = self.owners()
        sizes = self.sizes(owners)
        repositories = {}
        for repo_name, (linked, uploads, untagged) in sorted(self.repos.items()):
            present = [key for key in linked if key in sizes]
            linked_bytes = sum(sizes[key] for key in present)
            unique_bytes = sum(sizes[key] for key in present if owners[key] == 1)
            repositories[repo_name] = {
                "linked_blobs": len(present),
                "linked_bytes": linked_bytes,
                "unique_bytes": unique_bytes,
                "shared_bytes": linked_bytes - unique_bytes,
                "uploads": len(uploads),
                "upload_bytes": sum(size for size, _started in uploads),
                # Freed by delete_untagged + GC: only what no other repository links either.
                "untagged_manifests": untagged[0] if untagged is not None else None,
                "untagged_bytes": sum(sizes.get(key, 0) for key in untagged[1] if owners.get(key) == 1)
                if untagged is not None else None,
            }
        blob_count = blob_bytes = unlinked_count = unlinked_bytes = 0
        for hex_digest in self.blobs.iter_all():
            size = self._size(hex_digest)
            if size is None:
                continue
            blob_count += 1
            blob_bytes += size
            if bytes.fromhex(hex_digest) not in owners:
                unlinked_count += 1
                unlinked_bytes += size
        uploads = [entry for repo in self.repos.values() for entry in repo.uploads]
        started = [when for _size, when in uploads if when is not None]
        known = [figures for figures in repositories.values() if figures["untagged_manifests"] is not None]
        return {
            "blobs": blob_count,
            "blob_bytes": blob_bytes,
            "untagged_manifests": sum(figures["untagged_manifests"] for figures in known),
            "untagged_bytes": sum(figures["untagged_bytes"] for figures in known),
            # Repositories whose untagged figures are not known (something a tag reaches unreadable).
            "untagged_unknown_repositories": len(repositories) - len(known),
            "unlinked_blobs": unlinked_count,
            "unlinked_bytes": unlinked_bytes,
            "uploads": len(uploads),
            "upload_bytes": sum(size for size, _when in uploads),
            "oldest_upload_age_seconds": int(max(0, now - min(started))) if started else None,
            "repositories": repositories,
        }


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


def _verify_digests(name, blobs, result, errors):
    """Hash every blob's data against its name; returns the number of corrupt blobs."""
    corrupt = 0
    for hex_digest in blobs.iter_all():
        data_state = blobs.data_state(hex_digest)
        if data_state in BLOB_GONE_STATES:
            continue
        data_path = blobs.data_path(hex_digest)
        if data_state == BLOB_UNREADABLE:
            continue  # the blob store reported why
        try:
            actual = blobs.sha256(hex_digest)
        except FileNotFoundError:
            continue
        except (NotRegularFile, OSError) as exc:
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
