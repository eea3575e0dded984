# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tag cleanup that cannot break what it keeps.

Per repository, the newest ``keep`` tags (by the mtime of the tag's current link, i.e. the
last push), and with ``pushed_within`` every tag pushed within that many seconds, among those
matching ``include`` and not ``exclude`` stay; older matching tags
are untagged the way the registry untags (the tag directory goes). Tags that do not match
are never touched, nor is any tag or revision written less than ``grace_period`` seconds
before the run started (a push in flight).

With ``delete_untagged``, revision links of manifests that no remaining tag reaches (directly
or as a child of a tagged index, at any depth) are removed, together with the repository's
_layers links of blobs only those manifests used. This is what 2.8's
``garbage-collect --delete-untagged`` gets wrong for indexes; a plain ``garbage-collect``
afterwards frees the data.

A repository where any tag cannot be read (a symlinked or unopenable tag directory, a
garbage current link), or -- with ``delete_untagged`` -- where anything reachable from a kept
tag or a recent revision cannot be read or parsed, is skipped whole and listed in
``skipped_repositories``: what it protects cannot be known, so nothing there is touched.
Every change goes through the writer (_writer), under the registry's lock.
"""

import os
import re
import time

from ansible_collections.regwarden.registry.plugins.module_utils import _driver, _pull_records
from ansible_collections.regwarden.registry.plugins.module_utils._manifest import InvalidManifest
from ansible_collections.regwarden.registry.plugins.module_utils._repository import (
    ManifestCache,
    UnreadableManifest,
    record_registry,
    walk_registry,
)
from ansible_collections.regwarden.registry.plugins.module_utils._storage import (
    LINK_OK,
    LINK_UNREADABLE,
    ScanError,
    digest_of,
)
from ansible_collections.regwarden.registry.plugins.module_utils._writer import Changed, WriteRefused, race_point

DEFAULT_REGISTRIES = ("private",)
DEFAULT_GRACE_PERIOD = 3600


class Policy:
    """keep / pushed_within / pulled_within / keep_last_pulled / include / exclude for the repositories a rule
    matches (regexes match whole names). A tag stays when any rule keeps it: among the newest ``keep``,
    pushed within ``pushed_within`` seconds, pulled within ``pulled_within`` seconds, or among the
    ``keep_last_pulled`` most recently pulled (None: that rule is off)."""

    def __init__(self, keep, include=None, exclude=None, repository=None, pushed_within=None, pulled_within=None,
                 keep_last_pulled=None):
        if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
            raise ScanError("keep must be a whole number of at least 1 (got %r); to remove every tag of a "
                            "repository delete the repository instead" % (keep,))
        for what, value in (("pushed_within", pushed_within), ("pulled_within", pulled_within),
                            ("keep_last_pulled", keep_last_pulled)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ScanError("%s must be a whole number%s, 0 or more (got %r)" % (
                    what, "" if what == "keep_last_pulled" else " of seconds", value))
        self.keep = keep
        self.pushed_within = pushed_within
        self.pulled_within = pulled_within
        self.keep_last_pulled = keep_last_pulled
        self.include = _compile(include, "include")
        self.exclude = _compile(exclude, "exclude")
        self.repository = _compile(repository, "repository")

    @property
    def uses_pulls(self):
        return self.pulled_within is not None or self.keep_last_pulled is not None

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


RULE_KEYS = ("repository", "keep", "include", "exclude", "pushed_within", "pulled_within", "keep_last_pulled")


def build_policies(keep, include=None, exclude=None, rules=None, pushed_within=None, pulled_within=None,
                   keep_last_pulled=None):
    """The default policy plus per-repository rules (first matching rule wins)."""
    default = Policy(keep, include, exclude, pushed_within=pushed_within, pulled_within=pulled_within,
                     keep_last_pulled=keep_last_pulled)
    policies = []
    for position, rule in enumerate(rules or []):
        if not isinstance(rule, dict) or not rule.get("repository"):
            raise ScanError("rules[%d] needs a 'repository' regular expression" % position)
        unknown = set(rule) - set(RULE_KEYS)
        if unknown:
            raise ScanError("rules[%d] has unknown keys: %s" % (position, ", ".join(sorted(unknown))))
        try:
            policies.append(Policy(rule.get("keep", keep), rule.get("include", include),
                                   rule.get("exclude", exclude), rule["repository"],
                                   rule.get("pushed_within", pushed_within),
                                   rule.get("pulled_within", pulled_within),
                                   rule.get("keep_last_pulled", keep_last_pulled)))
        except ScanError as exc:
            raise ScanError("rules[%d]: %s" % (position, exc)) from None
    return default, policies


def _policy_for(repo, default, policies):
    for policy in policies:
        if policy.repository.fullmatch(repo):
            return policy
    return default


def new_result():
    return {
        "removed_tags": [],
        "removed_revisions": [],
        "removed_layer_links": [],
        "skipped_repositories": [],
        "scan_errors": [],
        "incomplete_registries": [],
        "summary": {},
        "registries": [],
        "pull_records": {},
    }


def finish_result(result, mode):
    result["registries"].sort()
    result["removed_tags"].sort(key=lambda f: (f["registry"], f["repo"], f["tag"]))
    result["removed_revisions"].sort(key=lambda f: (f["registry"], f["repo"], f["digest"]))
    result["removed_layer_links"].sort()
    result["skipped_repositories"].sort(key=lambda f: (f["registry"], f["repo"]))
    result["scan_errors"].sort(key=lambda f: (f["registry"], f["path"], f["error"]))
    result["changed"] = bool(result["removed_tags"] or result["removed_revisions"] or result["removed_layer_links"])
    result["restart_required"] = result["changed"] and mode == _driver.APPLY
    return result


def writer_setup(storage, check_mode, grace_period, now=None):
    """(backend, mode, start of the run, cutoff) of a run that unlinks: nothing written after the cutoff
    (``grace_period`` seconds before the start, a push in flight) is removed."""
    if not isinstance(grace_period, int) or isinstance(grace_period, bool) or grace_period < 0:
        raise ScanError("grace_period must be a whole number of seconds, 0 or more (got %r)" % (grace_period,))
    now = time.time() if now is None else now
    return _driver.as_storage(storage), _driver.mode_of(True, check_mode), now, now - grace_period


def cleanup_tags(storage, keep, include=None, exclude=None, rules=None, registries=DEFAULT_REGISTRIES,
                 delete_untagged=False, check_mode=False, grace_period=DEFAULT_GRACE_PERIOD, processes=None,
                 allow_incomplete=False, max_findings=_driver.DEFAULT_MAX_FINDINGS, now=None, pushed_within=None,
                 pulled_within=None, keep_last_pulled=None, pull_records=None):
    """Clean up tags in the registries of ``storage`` (a filesystem path or a backend); see the
    registry_tag_cleanup module.

    ``grace_period``: seconds before the start of the run (``now``, default the clock) within
    which a tag, revision or layer link written is never removed. ``pushed_within``: seconds
    within which a tag pushed is kept besides the newest ``keep`` (None: no age rule); ``pulled_within``
    and ``keep_last_pulled`` the same by last pull, from the pull records under ``pull_records`` (a
    directory of _pull_records state files).
    """
    default, policies = build_policies(keep, include, exclude, rules, pushed_within, pulled_within,
                                       keep_last_pulled)
    uses_pulls = any(policy.uses_pulls for policy in [default, *policies])
    if uses_pulls and not pull_records:
        raise ScanError("pulled_within and keep_last_pulled need pull_records (the directory of the pull records "
                        "the role's nginx log is folded into)")
    storage, mode, now, cutoff = writer_setup(storage, check_mode, grace_period, now)

    def work(name, location, _active):
        result = new_result()
        # Before the lock: records that cannot be read fail this registry with their path, nothing changed.
        records = _pull_records.load(pull_records, name) if uses_pulls else None
        if records is not None:
            result["pull_records"][name] = {"complete_since": _iso(records.complete_since),
                                            "entries": records.entries()}
        with _driver.registry_writer(mode, storage, name, location, cutoff) as writer:
            walk_registry(storage, name, location, lambda blobs, errors: [
                TagCleaner(name, blobs, errors, result, writer, default, policies, delete_untagged, cutoff, now,
                           records)])
        return [result]

    analysis = _driver.Analysis("tag_cleanup", new_result, lambda result: finish_result(result, mode))
    return _driver.run_analyses(storage, [(analysis, registries)], work, processes, allow_incomplete,
                                max_findings)[0]


def _iso(seconds):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


class _Skip(Exception):
    """The repository cannot be cleaned up safely; the message says why."""


class TagCleaner:
    """The tag cleanup of one registry, fed one repository at a time by the shared walk."""

    def __init__(self, name, blobs, errors, result, writer, default, policies, delete_untagged, cutoff, now=None,
                 records=None):
        self.name = name
        self.records = records
        self.now = time.time() if now is None else now
        self.errors = errors
        self.result = result
        self.writer = writer
        self.default = default
        self.policies = policies
        self.delete_untagged = delete_untagged
        self.cutoff = cutoff
        self.cache = ManifestCache.of(blobs)
        self.counts = {"repositories": 0, "tags": 0, "kept_tags": 0, "removed_tags": 0, "removed_revisions": 0,
                       "removed_layer_links": 0}
        if records is not None:
            # Tags the pulled_within rule kept because the records do not reach back over its window.
            self.counts["kept_for_want_of_records"] = 0

    def finish(self):
        record_registry(self.result, self.name, self.counts, self.errors)

    def add_repository(self, repo_name, repo):
        self.counts["repositories"] += 1
        policy = _policy_for(repo_name, self.default, self.policies)
        tags = repo.read_tags(with_updated=True)
        self.counts["tags"] += len(tags)
        try:
            doomed = self._doomed_tags(repo, tags, policy)
            plan = self._plan_untagged(repo, tags, doomed) if self.delete_untagged else None
        except _Skip as exc:
            self.result["skipped_repositories"].append({"registry": self.name, "repo": repo_name, "reason": str(exc)})
            self.counts["kept_tags"] += len(tags)
            return
        removed = self._remove_tags(repo_name, repo, tags, doomed)
        self.counts["kept_tags"] += len(tags) - removed
        if plan is not None:
            self._remove_untagged(repo_name, repo, *plan)

    @staticmethod
    def _check_tags(repo, tags):
        """_Skip unless every tag of the repository can be read."""
        if repo.tags_unreadable:
            raise _Skip("the tags directory could not be read")
        unreadable = sorted(tag for tag, link in tags.items() if link.state != LINK_OK)
        if unreadable:
            # Such a tag may protect manifests we cannot see: never guess.
            raise _Skip("tags with an unreadable current link: %s" % ", ".join(unreadable))

    def _doomed_tags(self, repo, tags, policy):
        self._check_tags(repo, tags)
        candidates = sorted(
            (tag for tag, link in tags.items() if policy.applies(tag)),
            key=lambda tag: (tags[tag].updated, tag),
            reverse=True,
        )
        # Pushed within the age rule: kept too (the union with the newest ``keep``).
        recent_enough = self.now - policy.pushed_within if policy.pushed_within is not None else None
        doomed = [tag for tag in candidates[policy.keep:] if tags[tag].updated <= self.cutoff
                  and (recent_enough is None or tags[tag].updated < recent_enough)]
        if doomed and policy.uses_pulls:
            doomed = self._not_pulled(repo, tags, candidates, doomed, policy)
        return sorted(doomed)

    def _last_pull(self, repo, tag, link):
        """The last pull of a tag: by its name, by its manifest's digest or by the digest of any manifest
        its index reaches (a client pulling one platform asks for that child by digest)."""
        records = self.records
        times = [records.tag_pulled(repo.name, tag)]
        reached = self._reachable(repo, {link.target}, "of a tag whose pulls are counted")
        times.extend(records.digest_pulled(repo.name, hex_digest) for hex_digest in reached)
        times = [when for when in times if when is not None]
        return max(times) if times else None

    def _not_pulled(self, repo, tags, candidates, doomed, policy):
        """``doomed`` without the tags kept by the pull rules."""
        last_pull = {tag: self._last_pull(repo, tag, tags[tag]) for tag in candidates}
        kept = set()
        if policy.keep_last_pulled:
            pulled = sorted((tag for tag in candidates if last_pull[tag] is not None),
                            key=lambda tag: (last_pull[tag], tag), reverse=True)
            kept.update(pulled[:policy.keep_last_pulled])
        if policy.pulled_within is not None:
            window_start = self.now - policy.pulled_within
            kept.update(tag for tag in candidates if last_pull[tag] is not None and last_pull[tag] >= window_start)
            if self.records.complete_since > window_start:
                # The records do not reach back over the whole window: a tag without a record in it may
                # have been pulled before they began. Nothing is removed for want of a pull.
                self.counts["kept_for_want_of_records"] += sum(1 for tag in doomed if tag not in kept)
                return []
        return [tag for tag in doomed if tag not in kept]

    def _reachable(self, repo, roots, why):
        """Manifests reached from ``roots`` (index children at any depth); _Skip when one cannot be read.

        A child with neither a revision link nor blob data was never stored here (a cache fetches
        only what was pulled): nothing of it can be unlinked, it is no obstacle.
        """
        cache = self.cache
        reached = set()
        stack = [(root, True) for root in sorted(roots)]
        while stack:
            hex_digest, is_root = stack.pop()
            if hex_digest in reached:
                continue
            reached.add(hex_digest)
            manifest = cache.get(hex_digest)
            if manifest is ManifestCache.GONE:
                if is_root or repo.revision_state(hex_digest)[0] != "missing":
                    raise _Skip("manifest %s %s: its blob data is gone" % (digest_of(hex_digest), why))
                continue
            if isinstance(manifest, (InvalidManifest, UnreadableManifest)):
                raise _Skip("manifest %s %s cannot be read: %s" % (digest_of(hex_digest), why, manifest))
            if manifest.is_index:
                stack.extend((child, False) for child in manifest.child_digests)
        return reached

    def _plan_untagged(self, repo, tags, doomed):
        """(revisions to unlink, blobs whose _layers links to unlink), or _Skip."""
        repo.load_revisions()
        if repo.revisions_unreadable:
            raise _Skip("the revisions directory could not be read")
        unreadable = sorted(hex_digest for hex_digest, (state, _r) in repo.revisions.items()
                            if state == LINK_UNREADABLE)
        if unreadable:
            raise _Skip("revision links that cannot be read: %s" % ", ".join(digest_of(h) for h in unreadable))
        linked = {hex_digest for hex_digest, (state, _r) in repo.revisions.items() if state == LINK_OK}
        kept_targets = {tags[tag].target for tag in tags if tag not in doomed}
        keep = self._reachable(repo, kept_targets, "of a kept tag")
        recent = self._recent_revisions(repo, linked - keep)
        # A revision pushed within the grace period (an index with its children, perhaps) is kept whole.
        keep |= self._reachable(repo, recent, "of a recent push")
        untagged = sorted(linked - keep)
        if not untagged:
            return [], []
        # Kept manifests without a revision link (orphan children awaiting repair) keep their blobs too.
        remaining = (linked - set(untagged)) | keep
        still_used = self.cache.blobs_of(remaining) | remaining
        freed = (self.cache.blobs_of(untagged) | set(untagged)) - still_used
        return untagged, sorted(freed)

    def _recent_revisions(self, repo, candidates):
        """The revisions among ``candidates`` whose link was written after the cutoff (or whose time is unknown)."""
        if not candidates:
            return set()
        with repo.directory("revision") as revisions:
            if revisions is None:
                raise _Skip("the revisions directory could not be read")
            recent = set()
            for hex_digest in candidates:
                mtime = repo.revision_mtime(revisions, hex_digest)
                if mtime is None or mtime > self.cutoff:
                    recent.add(hex_digest)  # an unknown time counts as recent: never removed
        return recent

    def _remove_tags(self, repo_name, repo, tags, doomed):
        if not doomed:
            return 0
        removed = 0
        race_point("plan", "remove_tags", repo.tags_dir)
        with repo.directory("tags") as tags_handle:
            for tag in doomed:
                link = tags[tag]
                path = os.path.join(repo.tags_dir, tag)
                if not self._change(path, "tag not removed", self.writer.remove_tag, tags_handle, tag, link.target,
                                    path):
                    continue
                self.result["removed_tags"].append({
                    "registry": self.name,
                    "repo": repo_name,
                    "tag": tag,
                    "digest": digest_of(link.target),
                    "path": path,
                    "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(link.updated)),
                })
                self.counts["removed_tags"] += 1
                removed += 1
        return removed

    def _remove_untagged(self, repo_name, repo, untagged, freed):
        if untagged:
            race_point("plan", "remove_revisions", repo.revisions_dir)
            with repo.directory("revision") as revisions:
                for hex_digest in untagged:
                    path = repo.revision_path(hex_digest)
                    if self._change(path, "revision link not removed", self.writer.remove_link, revisions,
                                    hex_digest, path):
                        self.result["removed_revisions"].append({
                            "registry": self.name, "repo": repo_name, "digest": digest_of(hex_digest), "path": path,
                        })
                        self.counts["removed_revisions"] += 1
        freed = [hex_digest for hex_digest in freed if repo.layer_state(hex_digest)[0] == LINK_OK]
        if freed:
            race_point("plan", "remove_layer_links", repo.layers_dir)
            with repo.directory("layer") as layers:
                for hex_digest in freed:
                    path = repo.layer_path(hex_digest)
                    if self._change(path, "layer link not removed", self.writer.remove_link, layers, hex_digest,
                                    path):
                        self.result["removed_layer_links"].append(path)
                        self.counts["removed_layer_links"] += 1

    def _change(self, path, what, operation, *args):
        """Run one writer operation; True when done (or would be). Refusals and failures are scan errors."""
        try:
            operation(*args)
        except Changed:
            return False  # changed since the scan or too recent: left alone
        except WriteRefused as exc:
            self.errors.add(path, "%s: %s" % (what, exc))
            return False
        except OSError as exc:
            self.errors.add(path, "%s: %s" % (what, exc.strerror or exc))
            return False
        return True
