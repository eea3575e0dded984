# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Decide from disk what a distribution 2.8 registry would serve, per repository.

Rules (measured on 2.8.2, see DESIGN.md): a manifest is served by digest when its
revision link exists, or -- only when no revision link file exists -- its _layers link
exists (the 2.8 linkPathFns fallback); an unreadable or garbage link answers 500; the
blob data must exist. A blob is served when the repository's _layers link and the data
exist.
"""


import functools

from ansible_collections.regwarden.registry.plugins.module_utils._index_repair import REPAIRED, repair_children
from ansible_collections.regwarden.registry.plugins.module_utils._manifest import (
    InvalidManifest,
)
from ansible_collections.regwarden.registry.plugins.module_utils._parallel import map_registries, merge_results
from ansible_collections.regwarden.registry.plugins.module_utils._repository import (
    ManifestCache,
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
    digest_of,
    select_registries,
)

FINDING_KEYS = ("orphan_index_children", "broken_tags", "unservable_blobs", "invalid_manifests")
DEFAULT_REGISTRIES = ("private",)


def audit_indexes(path, registries=DEFAULT_REGISTRIES, repair=False, check_mode=False, processes=None):
    """Audit the registries under ``path``; see the registry_index_audit module for the result.

    With ``repair``, orphan index children whose content is intact are relinked (in check
    mode only planned); every orphan-child finding says whether it is repairable.
    ``processes``: registries audited at once (default: the usable CPUs, see _parallel).
    """
    mode = ("check" if check_mode else "apply") if repair else "report"
    result = new_result()
    audit = functools.partial(_audit_registry, mode=mode)
    for part in map_registries(audit, select_registries(path, registries), processes):
        merge_results(result, part)
    return finish_result(result, mode)


def _audit_registry(name, v2_root, mode="report"):
    """One registry's audit, as a result of its own (merged by the caller)."""
    result = new_result()
    walk_registry(name, v2_root, lambda blobs, errors: [IndexAuditor(name, blobs, errors, result, mode)])
    return result


def new_result():
    result = {key: [] for key in FINDING_KEYS}
    result["scan_errors"] = []
    result["repaired_links"] = []
    result["summary"] = {}
    result["registries"] = []
    return result


def finish_result(result, mode="report"):
    """Sort the findings of every registry audited into ``result``; set changed/restart_required."""
    result["registries"].sort()
    result["repaired_links"].sort()
    result["changed"] = bool(result["repaired_links"])
    result["restart_required"] = mode == "apply" and bool(result["repaired_links"])
    result["orphan_index_children"].sort(key=lambda f: (f["registry"], f["repo"], f["index_digest"],
                                                        f["child_digest"]))
    result["broken_tags"].sort(key=lambda f: (f["registry"], f["repo"], f["tag"]))
    result["unservable_blobs"].sort(key=lambda f: (f["registry"], f["repo"], f["digest"]))
    result["invalid_manifests"].sort(key=lambda f: (f["registry"], f["repo"], f["digest"]))
    result["scan_errors"].sort(key=lambda f: (f["registry"], f["path"], f["error"]))
    return result


def count_findings(result):
    """Findings still standing (a child repaired in this run no longer counts)."""
    repaired = sum(1 for finding in result["orphan_index_children"] if finding.get("repair") == REPAIRED)
    return sum(len(result[key]) for key in FINDING_KEYS) - repaired


class _Servability:
    """Why a manifest is (not) served by digest in one repository."""

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
    else:
        layer_state, layer_reason = repo.layer_state(hex_digest)
        linked = layer_state == LINK_OK
        if layer_state == LINK_INVALID:
            link_reason = "no revision link and the _layers link is invalid: %s" % layer_reason
        elif not linked:
            link_reason = "manifest has no revision link in the repository"
    manifest = cache.get(hex_digest)
    blob_data = "gone" if manifest is ManifestCache.GONE else "present"
    if not linked:
        reason = link_reason
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

    ``mode``: "report", "check" (plan repairs) or "apply". Each manifest of the registry is
    read and parsed once, whichever repositories reference it.
    """

    def __init__(self, name, blobs, errors, result, mode="report"):
        self.name = name
        self.blobs = blobs
        self.errors = errors
        self.result = result
        self.mode = mode
        self.cache = ManifestCache(blobs)
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
        _audit_repository(self.name, repo_name, repo, self.cache, self.blobs, self.result, self.counts,
                          self.errors, self.mode, self.platforms)

    def finish(self):
        """Add this registry's summary and scan errors to the result."""
        self.result["summary"][self.name] = self.counts
        self.result["registries"].append(self.name)
        self.result["scan_errors"].extend(self.errors.items)


def _audit_repository(name, repo_name, repo, cache, blobs, result, counts, errors, mode, platforms):
    repo.load_revisions()
    tags = repo.read_tags()
    counts["tags"] += len(tags)
    servability = {}

    def servable(hex_digest):
        known = servability.get(hex_digest)
        if known is None:
            known = _manifest_servability(repo, cache, hex_digest)
            servability[hex_digest] = known
        return known

    tags_by_target = {}
    for tag, link in tags.items():
        if link.state == LINK_OK:
            tags_by_target.setdefault(link.target, set()).add(tag)

    # Broken tags: a listed tag whose manifest the registry would not serve.
    for tag in sorted(tags):
        state, target, reason, link_path, _updated = tags[tag]
        if state == LINK_MISSING:
            reason = "tag has no current link"
        elif state == LINK_OK:
            reason = servable(target).reason
        if reason is not None:
            result["broken_tags"].append({
                "registry": name,
                "repo": repo_name,
                "tag": tag,
                "digest": digest_of(target) if target else None,
                "path": link_path,
                "reason": reason,
            })
            counts["broken_tags"] += 1

    # Every index with a revision (tagged or not) and every tagged index.
    candidates = {hex_digest for hex_digest, (state, _r) in repo.revisions.items() if state == LINK_OK}
    counts["manifests"] += len(candidates)
    candidates.update(tags_by_target)
    invalid = set()
    orphans = []
    for hex_digest in sorted(candidates):
        status = servable(hex_digest)
        if status.manifest is None:
            if status.blob_data == "present" and isinstance(cache.get(hex_digest), InvalidManifest):
                invalid.add(hex_digest)
            continue
        if not status.manifest.is_index:
            continue
        counts["indexes"] += 1
        index_tags = sorted(tags_by_target.get(hex_digest, ()))
        index_digest = digest_of(hex_digest)
        for child_hex, platform, attestation in status.manifest.children:
            child = servable(child_hex)
            if child.servable:
                continue
            if child.blob_data == "present" and isinstance(cache.get(child_hex), InvalidManifest):
                invalid.add(child_hex)
            orphans.append({
                "registry": name,
                "repo": repo_name,
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
            counts["orphan_index_children"] += 1
    result["orphan_index_children"].extend(orphans)

    for hex_digest in sorted(invalid):
        result["invalid_manifests"].append({
            "registry": name,
            "repo": repo_name,
            "digest": digest_of(hex_digest),
            "path": blobs.data_path(hex_digest),
            "reason": str(cache.get(hex_digest)),
        })
        counts["invalid_manifests"] += 1

    _audit_blobs(name, repo_name, repo, blobs, tags_by_target, servable, result, counts, errors)
    # Last, so every finding above describes the storage as it was found.
    if orphans:
        result["repaired_links"].extend(repair_children(repo, cache, blobs, orphans, mode))


def _audit_blobs(name, repo_name, repo, blobs, tags_by_target, servable, result, counts, errors):
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
            status = servable(hex_digest)
            if not status.servable:
                continue
            reached.setdefault(hex_digest, set()).update(tags)
            if status.manifest.is_index:
                stack.extend(status.manifest.child_digests)

    broken = {}
    for manifest_hex in sorted(reached):
        manifest = servable(manifest_hex).manifest
        if manifest.is_index:
            continue
        for blob_hex, kind in manifest.blobs:
            entry = broken.get(blob_hex)
            if entry is None:
                link_state, _reason = repo.layer_state(blob_hex)
                data_state = blobs.data_state(blob_hex)
                if data_state == DATA_PRESENT or (data_state == DATA_EMPTY and blob_hex == EMPTY_SHA256):
                    blob_data = "present"
                elif data_state == DATA_EMPTY:
                    blob_data = "empty"
                elif data_state == BLOB_UNREADABLE:
                    errors.add(blobs.data_path(blob_hex), "blob data unreadable; not judged")
                    broken[blob_hex] = False
                    continue
                else:
                    blob_data = "gone"
                if link_state == LINK_OK and blob_data == "present":
                    broken[blob_hex] = False
                    continue
                entry = {
                    "registry": name,
                    "repo": repo_name,
                    "digest": digest_of(blob_hex),
                    "kind": kind,
                    "manifests": set(),
                    "tags": set(),
                    "layer_link": link_state,
                    "blob_data": blob_data,
                    "path": repo.layer_path(blob_hex),
                }
                broken[blob_hex] = entry
            elif entry is False:
                continue
            entry["manifests"].add(digest_of(manifest_hex))
            entry["tags"].update(reached[manifest_hex])
    for blob_hex in sorted(broken):
        entry = broken[blob_hex]
        if entry is False:
            continue
        entry["manifests"] = sorted(entry["manifests"])
        entry["tags"] = sorted(entry["tags"])
        result["unservable_blobs"].append(entry)
        counts["unservable_blobs"] += 1
