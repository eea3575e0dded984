# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A size bound for a pull-through cache: evict the least recently used repositories.

distribution 2.8's caches never expire anything with ``storage.delete`` off (as the role runs them)
and only grow. ``evict_cache`` brings one cache's blob data under ``max_size`` bytes the way the
issue of that name describes: it reads what every repository links and the size of every blob,
ranks the repositories by their last use (the newest of their last pull in the pull records and
their newest tag's time, which the cache rewrites whenever it serves a tag from upstream), and
from the least recently used on removes every tag of a repository, its revision links and its
``_layers`` links, until the blob data that nothing links any more brings the cache under the
bound. A plain ``garbage-collect`` then deletes that data, and the orphan-link removal
(registry_blob_scan ``remove_orphans``) clears links of other repositories to blobs it swept.

Nothing used (written or pulled) within ``grace_period`` is evicted, so a bound smaller than what
is in use leaves the cache over it (``over_bound`` in the result) rather than evicting what a
client is pulling. Eviction loses nothing published: the cache fetches an evicted image from its
upstream again on the next pull. Run it with the cache stopped (the role's GC script does).
"""

import time

from ansible_collections.regwarden.registry.plugins.module_utils import _driver, _pull_records
from ansible_collections.regwarden.registry.plugins.module_utils._blob_scan import BlobScanner
from ansible_collections.regwarden.registry.plugins.module_utils._blob_scan import new_result as _blob_result
from ansible_collections.regwarden.registry.plugins.module_utils._repository import walk_registry
from ansible_collections.regwarden.registry.plugins.module_utils._storage import LINK_OK, ScanError
from ansible_collections.regwarden.registry.plugins.module_utils._tag_cleanup import (
    DEFAULT_GRACE_PERIOD,
    Policy,
    TagCleaner,
    finish_result,
    new_result,
    writer_setup,
)


def _iso(seconds):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds)) if seconds is not None else None


class _Survey(BlobScanner):
    """What each repository links (the capacity walk of the blob scan) and when it was last used."""

    def __init__(self, name, blobs, errors, records, max_size, cutoff):
        super().__init__(name, blobs, errors, _blob_result(), capacity=True)
        self.records = records
        self.max_size = max_size
        self.cutoff = cutoff
        self.plan = ([], 0, 0)  # set by finish(), while the blob store is open
        self.last_used = {}  # repository -> newest tag time or last pull, None when neither is known
        self.unreadable = set()

    def add_repository(self, repo_name, repo):
        super().add_repository(repo_name, repo)
        tags = repo.read_tags(with_updated=True)
        if repo.tags_unreadable or any(link.state != LINK_OK for link in tags.values()):
            self.unreadable.add(repo_name)  # the eviction would skip it whole: count it as staying
        if not tags and not self.capacity.repos[repo_name].linked:
            return  # nothing left to evict (evicted before, emptied by GC): not a candidate
        times = [link.updated for link in tags.values() if link.updated is not None]
        if self.records is not None:
            times.append(self.records.repository_pulled(repo_name))
        times = [when for when in times if when is not None]
        self.last_used[repo_name] = max(times) if times else None

    def _plan(self, max_size, cutoff):
        """(repositories to evict least recently used first, bytes now, bytes projected after GC)."""
        capacity = self.capacity
        owners = capacity.owners()
        sizes = capacity.sizes(owners)
        total = sum(size for size in capacity.sizes(bytes.fromhex(h) for h in self.blobs.iter_all()).values())
        # Blobs no repository links go at the next GC whatever is evicted.
        projected = sum(sizes.values())
        evicted = []
        order = sorted(self.last_used, key=lambda repo: (self.last_used[repo] or 0, repo))
        for repo in order:
            if projected <= max_size:
                break
            used = self.last_used[repo]
            if repo in self.unreadable or (used is not None and used > cutoff):
                continue
            freed = 0
            for key in capacity.repos[repo].linked:
                owners[key] -= 1
                if owners[key] == 0:
                    freed += sizes.get(key, 0)
            projected -= freed
            evicted.append({"repo": repo, "last_used": _iso(used), "freed_bytes": freed})
        return evicted, total, projected

    def finish(self):
        # Nothing of its own to report (the eviction's result does); the plan needs every blob's size.
        if self.capacity is not None:
            self.plan = self._plan(self.max_size, self.cutoff)


class _Evictor(TagCleaner):
    """Every tag of the evicted repositories goes (but what was written within the grace period), and
    with them every revision and _layers link nothing kept there reaches; other repositories are untouched."""

    def __init__(self, name, blobs, errors, result, writer, cutoff, now, evicted):
        super().__init__(name, blobs, errors, result, writer, Policy(1), [], True, cutoff, now)
        self.evicted = evicted

    def add_repository(self, repo_name, repo):
        if repo_name in self.evicted:
            super().add_repository(repo_name, repo)

    def _doomed_tags(self, repo, tags, policy):
        self._check_tags(repo, tags)
        return sorted(tag for tag, link in tags.items() if link.updated <= self.cutoff)


def evict_cache(storage, registry, max_size, pull_records=None, check_mode=False, grace_period=DEFAULT_GRACE_PERIOD,
                now=None, allow_incomplete=False):
    """Bring the blob data of the cache ``registry`` of ``storage`` under ``max_size`` bytes (see above).

    ``pull_records``: the directory of the pull records (None: by tag times alone). The result is the
    tag cleanup's (``removed_tags``, ``removed_revisions``, ``removed_layer_links``...) with
    ``eviction``: {registry: {max_size, blob_bytes, projected_bytes, over_bound, evicted_repositories}}.
    """
    if not isinstance(max_size, int) or isinstance(max_size, bool) or max_size < 0:
        raise ScanError("max_size must be a whole number of bytes, 0 or more (got %r)" % (max_size,))
    storage, mode, now, cutoff = writer_setup(storage, check_mode, grace_period, now)

    def work(name, location, _active):
        result = new_result()
        records = _pull_records.load(pull_records, name) if pull_records else None
        with _driver.registry_writer(mode, storage, name, location, cutoff) as writer:
            surveys = []

            def survey(blobs, errors):
                surveys.append(_Survey(name, blobs, errors, records, max_size, cutoff))
                return surveys

            walk_registry(storage, name, location, survey)
            evicted, total, projected = surveys[0].plan
            names = {entry["repo"] for entry in evicted}
            walk_registry(storage, name, location, lambda blobs, errors: [
                _Evictor(name, blobs, errors, result, writer, cutoff, now, names)])
        result["eviction"] = {name: {
            "max_size": max_size, "blob_bytes": total, "projected_bytes": projected,
            "over_bound": projected > max_size, "evicted_repositories": evicted,
            "pull_records_complete_since": _iso(records.complete_since) if records is not None else None,
        }}
        return [result]

    def finish(result):
        result.setdefault("eviction", {})
        return finish_result(result, mode)

    def fresh():
        return dict(new_result(), eviction={})

    analysis = _driver.Analysis("cache_eviction", fresh, finish)
    return _driver.run_analyses(storage, [(analysis, [registry])], work, None, allow_incomplete)[0]
