# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Decide from disk what a distribution 2.8 registry would serve, per repository.

Rules (measured on 2.8.2, see docs/design.md): a manifest is served by digest when its
revision link exists, or -- only when no revision link file exists -- its _layers link
exists (the 2.8 linkPathFns fallback); an unreadable or garbage link answers 500; the
blob data must exist. A blob is served when the repository's _layers link and the data
exist.
"""


from ansible_collections.regwarden.registry.plugins.module_utils import _driver
from ansible_collections.regwarden.registry.plugins.module_utils._index_repair import REPAIRED, repair_children
from ansible_collections.regwarden.registry.plugins.module_utils._manifest import InvalidManifest
from ansible_collections.regwarden.registry.plugins.module_utils._repository import (
    ManifestCache,
    UnreadableManifest,
    record_registry,
    walk_registry,
)
from ansible_collections.regwarden.registry.plugins.module_utils._storage import (
    BLOB_UNREADABLE,
    DATA_EMPTY,
    DATA_PRESENT,
    EMPTY_SHA256,
    LINK_INVALID,
    LINK_MISSING,
    LINK_OK,
    LINK_UNREADABLE,
    digest_of,
)

FINDING_KEYS = ("orphan_index_children", "broken_tags", "unservable_blobs", "invalid_manifests")
DEFAULT_REGISTRIES = ("private",)


def audit_indexes(storage, registries=DEFAULT_REGISTRIES, repair=False, check_mode=False, processes=None,
                  allow_incomplete=False, max_findings=_driver.DEFAULT_MAX_FINDINGS):
    """Audit the registries of ``storage`` (a filesystem path or a backend); see the registry_index_audit
    module for the result.

    With ``repair``, orphan index children whose content is intact are relinked (in check
    mode only planned); every orphan-child finding says whether it is repairable.
    ``processes``: registries audited at once (default: the usable CPUs, see _parallel).
    ``allow_incomplete`` False: IncompleteScan when a registry could not be audited whole.
    """
    mode = _driver.mode_of(repair, check_mode)
    storage = _driver.as_storage(storage)

    def work(name, location, _active):
        return [audit_registry(storage, name, location, mode)]

    return _driver.run_analyses(storage, [(analysis(mode), registries)], work, processes, allow_incomplete,
                                max_findings)[0]


def audit_registry(storage, name, location, mode=_driver.REPORT):
    """One registry's audit, as a result of its own (merged by the caller)."""
    result = new_result()
    with _driver.registry_writer(mode, storage, name, location) as writer:
        walk_registry(storage, name, location, lambda blobs, errors: [
            IndexAuditor(name, blobs, errors, result, writer)])
    return result


def new_result():
    result = {key: [] for key in FINDING_KEYS}
    result["scan_errors"] = []
    result["incomplete_registries"] = []
    result["repaired_links"] = []
    result["summary"] = {}
    result["registries"] = []
    return result


def finish_result(result, mode=_driver.REPORT):
    """Sort the findings of every registry audited into ``result``; set changed/restart_required."""
    result["registries"].sort()
    result["repaired_links"].sort()
    result["changed"] = bool(result["repaired_links"])
    result["restart_required"] = mode == _driver.APPLY and bool(result["repaired_links"])
    result["orphan_index_children"].sort(key=lambda f: (f["registry"], f["repo"], f["index_digest"],
                                                        f["child_digest"]))
    result["broken_tags"].sort(key=lambda f: (f["registry"], f["repo"], f["tag"]))
    result["unservable_blobs"].sort(key=lambda f: (f["registry"], f["repo"], f["digest"]))
    result["invalid_manifests"].sort(key=lambda f: (f["registry"], f["repo"], f["digest"]))
    result["scan_errors"].sort(key=lambda f: (f["registry"], f["path"], f["error"]))
    # Counted before the lists are capped: a child repaired in this run no longer counts.
    result["repaired_children"] = sum(1 for finding in result["orphan_index_children"]
                                      if finding.get("repair") == REPAIRED)
    return result


def analysis(mode=_driver.REPORT):
    return _driver.Analysis("index_audit", new_result, lambda result: finish_result(result, mode))


def count_findings(result, include_errors=True):
    """Findings still standing (a child repaired in this run no longer counts) and (``include_errors``)
    places that could not be read: true counts, whatever the cap."""
    repaired = result.get("repaired_children")
    if repaired is None:
        repaired = sum(1 for finding in result["orphan_index_children"] if finding.get("repair") == REPAIRED)
    keys = (*FINDING_KEYS, "scan_errors") if include_errors else FINDING_KEYS
    return sum(_driver.total(result, key) for key in keys) - repaired


class _Servability:
    """Why a manifest is (not) served by digest in one repository.

    ``servable`` None: not judged (a link or the manifest blob could not be read).
    """

    __slots__ = ("blob_data", "layer_link_fallback", "manifest", "reason", "revision_link", "servable")

    def __init__(self, servable, revision_link, layer_link_fallback, blob_data, manifest, reason):
        self.servable = servable
        self.revision_link = revision_link
        self.layer_link_fallback = layer_link_fallback
        self.blob_data = blob_data
        self.manifest = manifest
        self.reason = reason


def _manifest_servability(repo, cache, hex_digest):
    revision_state, revision_reason = repo.revision_state(hex_digest)
    layer_state = LINK_MISSING
    link_reason = None
    if revision_state == LINK_OK:
        linked = True
    elif revision_state == LINK_INVALID:
        linked = False
        link_reason = "revision link invalid: %s" % revision_reason
    elif revision_state == LINK_UNREADABLE:
        linked = None
    else:
        layer_state, layer_reason = repo.layer_state(hex_digest)
        linked = True if layer_state == LINK_OK else (None if layer_state == LINK_UNREADABLE else False)
        if layer_state == LINK_INVALID:
            link_reason = "no revision link and the _layers link is invalid: %s" % layer_reason
        elif linked is False:
            link_reason = "manifest has no revision link in the repository"
    manifest = cache.get(hex_digest)
    blob_data = "gone" if manifest is ManifestCache.GONE else "present"
    if linked is False:
        reason = link_reason
    elif linked is None or isinstance(manifest, UnreadableManifest):
        return _Servability(None, revision_state, False, blob_data, None, "not judged (unreadable)")
    elif blob_data == "gone":
        reason = "manifest blob data gone"
    elif isinstance(manifest, InvalidManifest):
        reason = "manifest content invalid: %s" % manifest
    else:
        reason = None
    return _Servability(reason is None, revision_state, layer_state == LINK_OK, blob_data,
                        manifest if reason is None else None, reason)


class IndexAuditor:
    """The index audit of one registry, fed one repository at a time.

    ``writer`` (given only when a repair was asked for) relinks repairable children; its
    ``apply`` says whether it really writes (check mode plans only). Each manifest of the
    registry is read and parsed once, whichever repositories reference it.
    """

    def __init__(self, name, blobs, errors, result, writer=None):
        self.name = name
        self.blobs = blobs
        self.errors = errors
        self.result = result
        self.writer = writer
        self.cache = ManifestCache.of(blobs)
        # One platform dict per distinct platform, shared by the findings (pull-through caches
        # can have tens of thousands of by-design orphan children).
        self.platforms = {}
        self.counts = {
            "repositories": 0,
            "manifests": 0,
            "indexes": 0,
            "tags": 0,
            "orphan_index_children": 0,
            "broken_tags": 0,
            "unservable_blobs": 0,
            "invalid_manifests": 0,
        }

    def add_repository(self, repo_name, repo):
        self.counts["repositories"] += 1
        _RepositoryAudit(self, repo_name, repo).run()

    def finish(self):
        """Add this registry's summary and scan errors to the result."""
        record_registry(self.result, self.name, self.counts, self.errors)


class _RepositoryAudit:
    """The audit of one repository, with the registry-wide state of its IndexAuditor."""

    def __init__(self, auditor, repo_name, repo):
        self.auditor = auditor
        self.name = auditor.name
        self.repo_name = repo_name
        self.repo = repo
        self.cache = auditor.cache
        self.result = auditor.result
        self.counts = auditor.counts
        self._servability = {}

    def servable(self, hex_digest):
        known = self._servability.get(hex_digest)
        if known is None:
            known = _manifest_servability(self.repo, self.cache, hex_digest)
            self._servability[hex_digest] = known
        return known

    def run(self):
        repo = self.repo
        repo.load_revisions()
        tags = repo.read_tags()
        self.counts["tags"] += len(tags)
        tags_by_target = {}
        for tag, link in tags.items():
            if link.state == LINK_OK:
                tags_by_target.setdefault(link.target, set()).add(tag)
        self._broken_tags(tags)
        orphans, invalid = self._index_children(tags_by_target)
        for hex_digest in sorted(invalid):
            self.result["invalid_manifests"].append({
                "registry": self.name,
                "repo": self.repo_name,
                "digest": digest_of(hex_digest),
                "path": self.auditor.blobs.data_path(hex_digest),
                "reason": str(self.cache.get(hex_digest)),
            })
            self.counts["invalid_manifests"] += 1
        self._unservable_blobs(tags_by_target)
        # Last, so every finding above describes the storage as it was found.
        if orphans:
            self.result["repaired_links"].extend(repair_children(repo, self.cache, self.auditor.blobs, orphans,
                                                                 self.auditor.writer))

    def _broken_tags(self, tags):
        """A listed tag whose manifest the registry would not serve (unreadable ones are not judged)."""
        for tag in sorted(tags):
            state, target, reason, link_path, _updated = tags[tag]
            if state == LINK_UNREADABLE:
                continue
            if state == LINK_MISSING:
                reason = "tag has no current link"
            elif state == LINK_OK:
                status = self.servable(target)
                if status.servable is None:
                    continue
                reason = status.reason
            if reason is not None:
                self.result["broken_tags"].append({
                    "registry": self.name,
                    "repo": self.repo_name,
                    "tag": tag,
                    "digest": digest_of(target) if target else None,
                    "path": link_path,
                    "reason": reason,
                })
                self.counts["broken_tags"] += 1

    def _index_children(self, tags_by_target):
        """Orphan-child findings of every index with a revision (tagged or not) and every tagged index,
        one per (index, child) however often the index lists the child; and the invalid manifests met."""
        repo, cache = self.repo, self.cache
        candidates = {hex_digest for hex_digest, (state, _r) in repo.revisions.items() if state == LINK_OK}
        self.counts["manifests"] += len(candidates)
        candidates.update(tags_by_target)
        invalid = set()
        orphans = []
        platforms = self.auditor.platforms
        for hex_digest in sorted(candidates):
            status = self.servable(hex_digest)
            if status.manifest is None:
                if status.servable is False and status.blob_data == "present" and \
                        isinstance(cache.get(hex_digest), InvalidManifest):
                    invalid.add(hex_digest)
                continue
            if not status.manifest.is_index:
                continue
            self.counts["indexes"] += 1
            index_tags = sorted(tags_by_target.get(hex_digest, ()))
            index_digest = digest_of(hex_digest)
            seen = set()
            for child_hex, platform, attestation in status.manifest.children:
                if child_hex in seen:
                    continue
                seen.add(child_hex)
                child = self.servable(child_hex)
                if child.servable is not False:
                    continue  # served, or not judged (unreadable: a scan error says where)
                if child.blob_data == "present" and isinstance(cache.get(child_hex), InvalidManifest):
                    invalid.add(child_hex)
                orphans.append({
                    "registry": self.name,
                    "repo": self.repo_name,
                    "index_digest": index_digest,
                    "index_media_type": status.manifest.media_type,
                    "tags": index_tags,
                    "child_digest": digest_of(child_hex),
                    "platform": platforms.setdefault(tuple(platform.items()), platform),
                    "attestation": attestation,
                    "revision_link": child.revision_link,
                    "layer_link_fallback": child.layer_link_fallback,
                    "blob_data": child.blob_data,
                    "reason": child.reason,
                    "path": repo.revision_path(child_hex),
                })
                self.counts["orphan_index_children"] += 1
        self.result["orphan_index_children"].extend(orphans)
        return orphans, invalid

    def _unservable_blobs(self, tags_by_target):
        """Configs and layers of what a tag pulls (directly or as a child of a tagged index)."""
        reached = {}  # manifest hex -> tags that pull it
        for target in sorted(tags_by_target):
            tags = tags_by_target[target]
            stack = [target]
            seen = set()
            while stack:
                hex_digest = stack.pop()
                if hex_digest in seen:
                    continue
                seen.add(hex_digest)
                status = self.servable(hex_digest)
                if not status.servable:
                    continue
                reached.setdefault(hex_digest, set()).update(tags)
                if status.manifest.is_index:
                    stack.extend(status.manifest.child_digests)

        broken = {}
        for manifest_hex in sorted(reached):
            manifest = self.servable(manifest_hex).manifest
            if manifest.is_index:
                continue
            for blob_hex, kind in manifest.blobs:
                entry = broken.get(blob_hex)
                if entry is None:
                    entry = self._blob_entry(blob_hex, kind)
                    broken[blob_hex] = entry
                if entry is False:
                    continue
                entry["manifests"].add(digest_of(manifest_hex))
                entry["tags"].update(reached[manifest_hex])
        for blob_hex in sorted(broken):
            entry = broken[blob_hex]
            if entry is False:
                continue
            entry["manifests"] = sorted(entry["manifests"])
            entry["tags"] = sorted(entry["tags"])
            self.result["unservable_blobs"].append(entry)
            self.counts["unservable_blobs"] += 1

    def _blob_entry(self, blob_hex, kind):
        """An unservable-blob finding to fill in, or False when the blob is served or not judged."""
        repo, blobs = self.repo, self.auditor.blobs
        link_state, _reason = repo.layer_state(blob_hex)
        if link_state == LINK_UNREADABLE:
            return False  # the scan error says where; not judged
        data_state = blobs.data_state(blob_hex)
        if data_state == DATA_PRESENT or (data_state == DATA_EMPTY and blob_hex == EMPTY_SHA256):
            blob_data = "present"
        elif data_state == DATA_EMPTY:
            blob_data = "empty"
        elif data_state == BLOB_UNREADABLE:
            return False  # the blob store reported why: not judged
        else:
            blob_data = "gone"
        if link_state == LINK_OK and blob_data == "present":
            return False
        return {
            "registry": self.name,
            "repo": self.repo_name,
            "digest": digest_of(blob_hex),
            "kind": kind,
            "manifests": set(),
            "tags": set(),
            "layer_link": link_state,
            "blob_data": blob_data,
            "path": repo.layer_path(blob_hex),
        }
