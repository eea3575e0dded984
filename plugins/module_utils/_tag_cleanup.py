# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tag cleanup that cannot break what it keeps.

Per repository, the newest ``keep`` tags (by the mtime of the tag's current link, i.e. the
last push) among those matching ``include`` and not ``exclude`` stay; older matching tags
are untagged the way the registry untags (the tag directory goes). Tags that do not match
are never touched.

With ``delete_untagged``, revision links of manifests that no remaining tag reaches (directly
or as a child of a tagged index, at any depth) are removed, together with the repository's
_layers links of blobs only those manifests used. This is what 2.8's
``garbage-collect --delete-untagged`` gets wrong for indexes; a plain ``garbage-collect``
afterwards frees the data. A repository where any tag cannot be read is left alone.
"""

import os
import re
import time

from ansible_collections.regwarden.registry.plugins.module_utils._repository import ManifestCache, iter_repository_links
from ansible_collections.regwarden.registry.plugins.module_utils._storage import (
    LINK_OK,
    ScanError,
    ScanErrors,
    close_fd,
    digest_of,
    open_subdir,
    registry_storage,
    remove_link_dir_at,
    rmtree_at,
    select_registries,
)

DEFAULT_REGISTRIES = ("private",)


class Policy:
    """keep / include / exclude for the repositories a rule matches (regexes match whole names)."""

    def __init__(self, keep, include=None, exclude=None, repository=None):
        if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
            raise ScanError("keep must be a whole number of at least 1 (got %r); to remove every tag of a "
                            "repository delete the repository instead" % (keep,))
        self.keep = keep
        self.include = _compile(include, "include")
        self.exclude = _compile(exclude, "exclude")
        self.repository = _compile(repository, "repository")

    def applies(self, tag):
        if self.include is not None and not self.include.fullmatch(tag):
            return False
        return self.exclude is None or not self.exclude.fullmatch(tag)


def _compile(pattern, what):
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ScanError("%s is not a valid regular expression (%r): %s" % (what, pattern, exc)) from None


def build_policies(keep, include=None, exclude=None, rules=None):
    """The default policy plus per-repository rules (first matching rule wins)."""
    default = Policy(keep, include, exclude)
    policies = []
    for position, rule in enumerate(rules or []):
        if not isinstance(rule, dict) or not rule.get("repository"):
            raise ScanError("rules[%d] needs a 'repository' regular expression" % position)
        unknown = set(rule) - {"repository", "keep", "include", "exclude"}
        if unknown:
            raise ScanError("rules[%d] has unknown keys: %s" % (position, ", ".join(sorted(unknown))))
        policies.append(Policy(rule.get("keep", keep), rule.get("include", include), rule.get("exclude", exclude),
                               rule["repository"]))
    return default, policies


def _policy_for(repo, default, policies):
    for policy in policies:
        if policy.repository.fullmatch(repo):
            return policy
    return default


def cleanup_tags(path, keep, include=None, exclude=None, rules=None, registries=DEFAULT_REGISTRIES,
                 delete_untagged=False, check_mode=False):
    """Clean up tags in the registries under ``path``; see the registry_tag_cleanup module."""
    default, policies = build_policies(keep, include, exclude, rules)
    result = {
        "removed_tags": [],
        "removed_revisions": [],
        "removed_layer_links": [],
        "skipped_repositories": [],
        "scan_errors": [],
        "summary": {},
    }
    selected = select_registries(path, registries)
    for name, v2_root in selected:
        _cleanup_registry(name, v2_root, default, policies, delete_untagged, check_mode, result)
    result["registries"] = [name for name, _v2_root in selected]
    result["removed_tags"].sort(key=lambda f: (f["registry"], f["repo"], f["tag"]))
    result["removed_revisions"].sort(key=lambda f: (f["registry"], f["repo"], f["digest"]))
    result["removed_layer_links"].sort()
    result["skipped_repositories"].sort(key=lambda f: (f["registry"], f["repo"]))
    result["scan_errors"].sort(key=lambda f: (f["registry"], f["path"], f["error"]))
    result["changed"] = bool(result["removed_tags"] or result["removed_revisions"] or result["removed_layer_links"])
    result["restart_required"] = result["changed"] and not check_mode
    return result


def _cleanup_registry(name, v2_root, default, policies, delete_untagged, check_mode, result):
    errors = ScanErrors(name)
    counts = {"repositories": 0, "tags": 0, "kept_tags": 0, "removed_tags": 0, "removed_revisions": 0,
              "removed_layer_links": 0}
    with registry_storage(name, v2_root, errors) as (v2_fd, blobs):
        cache = ManifestCache(blobs)
        for repo_name, repo in iter_repository_links(v2_fd, v2_root, errors):
            counts["repositories"] += 1
            policy = _policy_for(repo_name, default, policies)
            _cleanup_repository(name, repo_name, repo, policy, cache, delete_untagged, check_mode, result, counts)
    result["summary"][name] = counts
    result["scan_errors"].extend(errors.items)


def _cleanup_repository(name, repo_name, repo, policy, cache, delete_untagged, check_mode, result, counts):
    tags = repo.read_tags(with_updated=True)
    counts["tags"] += len(tags)
    candidates = sorted(
        (tag for tag, link in tags.items() if link.state == LINK_OK and policy.applies(tag)),
        key=lambda tag: (tags[tag].updated, tag),
        reverse=True,
    )
    doomed = candidates[policy.keep:]
    counts["kept_tags"] += len(tags) - len(doomed)
    if doomed:
        tags_fd = open_subdir(repo.fd, ("_manifests", "tags"), repo.path, repo.errors)
        try:
            for tag in sorted(doomed):
                link = tags[tag]
                if not check_mode:
                    rmtree_at(tags_fd, tag)
                result["removed_tags"].append({
                    "registry": name,
                    "repo": repo_name,
                    "tag": tag,
                    "digest": digest_of(link.target),
                    "path": os.path.dirname(os.path.dirname(link.path)),
                    "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(link.updated)),
                })
                counts["removed_tags"] += 1
        finally:
            close_fd(tags_fd)
    if not delete_untagged:
        return
    unreadable = sorted(tag for tag, link in tags.items() if link.state != LINK_OK)
    if unreadable:
        # Such a tag may protect manifests we cannot see: never guess.
        result["skipped_repositories"].append({
            "registry": name, "repo": repo_name,
            "reason": "tags with an unreadable current link: %s" % ", ".join(unreadable),
        })
        return
    kept_targets = {tags[tag].target for tag in tags if tag not in doomed}
    _delete_untagged(name, repo_name, repo, cache, kept_targets, check_mode, result, counts)


def _reachable(cache, roots):
    """Manifests reached from ``roots``: themselves and index children at any depth."""
    reached = set()
    stack = list(roots)
    while stack:
        hex_digest = stack.pop()
        if hex_digest in reached:
            continue
        reached.add(hex_digest)
        manifest = cache.get(hex_digest)
        if getattr(manifest, "is_index", False):
            stack.extend(manifest.child_digests)
    return reached


def _blobs_of(cache, manifests):
    used = set()
    for hex_digest in manifests:
        manifest = cache.get(hex_digest)
        if hasattr(manifest, "blobs"):
            used.update(blob for blob, _kind in manifest.blobs)
    return used


def _delete_untagged(name, repo_name, repo, cache, kept_targets, check_mode, result, counts):
    repo.load_revisions()
    linked = {hex_digest for hex_digest, (state, _r) in repo.revisions.items() if state == LINK_OK}
    keep = _reachable(cache, kept_targets)
    untagged = sorted(linked - keep)
    if not untagged:
        return
    # Kept manifests without a revision link (orphan children awaiting repair) keep their blobs too.
    remaining = (linked - set(untagged)) | keep
    still_used = _blobs_of(cache, remaining) | remaining
    freed = (_blobs_of(cache, untagged) | set(untagged)) - still_used
    revisions_fd = open_subdir(repo.fd, ("_manifests", "revisions", "sha256"), repo.path, repo.errors)
    try:
        for hex_digest in untagged:
            if check_mode or remove_link_dir_at(revisions_fd, hex_digest):
                result["removed_revisions"].append({
                    "registry": name, "repo": repo_name, "digest": digest_of(hex_digest),
                    "path": repo.revision_path(hex_digest),
                })
                counts["removed_revisions"] += 1
    finally:
        close_fd(revisions_fd)
    layers_fd = open_subdir(repo.fd, ("_layers", "sha256"), repo.path, repo.errors)
    if layers_fd is None:
        return
    try:
        for hex_digest in sorted(freed):
            if repo.layer_state(hex_digest)[0] != LINK_OK:
                continue
            if check_mode or remove_link_dir_at(layers_fd, hex_digest):
                result["removed_layer_links"].append(repo.layer_path(hex_digest))
                counts["removed_layer_links"] += 1
    finally:
        close_fd(layers_fd)
