# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Walk a registry over its HTTP API the way a client pulls, and report what cannot be fetched.

Pure Python with no Ansible import; the HTTP client (auth, redirects, bounded reads, the
deadline) is _registry_http. The walk goes level by level so that a bounded thread pool never
waits on itself: catalog -> tag lists -> manifests by tag -> manifests by digest (then index
children, nested indexes) -> configs and layers, each fetched once per repository. Each
manifest is parsed once.
"""

import fnmatch
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote, urlencode

from ansible_collections.regwarden.registry.plugins.module_utils._manifest import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    MANIFEST_MAX_BYTES,
    OCI_INDEX,
    OCI_MANIFEST,
    InvalidManifest,
    load_json,
    parse_document,
)
from ansible_collections.regwarden.registry.plugins.module_utils._registry_http import (
    DEFAULT_DEADLINE_SECONDS,
    Fetch,
    ProbeError,
    RegistryHTTP,
    registry_error,
)

# Without these a 2.8 registry answers 404 for OCI content, or rewrites a list to one platform.
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))

KIND_CATALOG = "catalog"
KIND_TAG_LIST = "tag_list"
KIND_MANIFEST = "manifest"
KIND_INDEX_CHILD = "index_child"
KIND_CONFIG = "config"
KIND_LAYER = "layer"

DEFAULT_PAGE_SIZE = 100
DEFAULT_CONCURRENCY = 4
MAX_CONCURRENCY = 64
# Entries kept from one listing (the catalog, a repository's tags); a hostile registry can page forever.
DEFAULT_MAX_ENTRIES = 100000
# Bounds on loops a broken or hostile server could make endless.
MAX_PAGES = 10000
MAX_INDEX_DEPTH = 4
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}\Z")
_GLOB_CHARS = frozenset("*?[")


class _Skipped(Exception):
    """A pool call not made because an earlier one failed (never reaches the caller)."""


def tag_matcher(patterns):
    """Shell-style globs matched against the whole tag, case-sensitively; None matches all."""
    if not patterns:
        return lambda tag: True
    compiled = [re.compile(fnmatch.translate(p)) for p in patterns]
    return lambda tag: any(c.match(tag) for c in compiled)


def literal_tags(patterns):
    """Patterns without glob characters: exact tags a client would pull by name."""
    return sorted(p for p in (patterns or ()) if not _GLOB_CHARS & set(p))


def _status_problem(fetch):
    if fetch.status is None:
        return "request failed: %s" % fetch.error
    if fetch.status == 200:
        return None
    detail = registry_error(fetch.error_body)
    if fetch.status == 404:
        text = "not found"
    elif fetch.status >= 500:
        text = "server error %d" % fetch.status
    else:
        text = "HTTP %d" % fetch.status
    return "%s (%s)" % (text, detail) if detail else text


def _body_problem(fetch):
    if fetch.error:
        return "body broke off after %d of %s bytes: %s" % (
            fetch.received, fetch.announced if fetch.announced is not None else "?", fetch.error)
    if fetch.announced is not None and fetch.received < fetch.announced:
        return "short body: %d of %d announced bytes received" % (fetch.received, fetch.announced)
    return None


def inspect_manifest(fetch, expected_digest):
    """(problem, Manifest, descriptor sizes) of a manifest GET, the body parsed once.

    ``problem`` says why a client got no usable manifest (None when it did).
    """
    problem = _status_problem(fetch)
    if problem:
        return problem, None, None
    if fetch.too_large:
        return "invalid manifest: larger than %d bytes" % MANIFEST_MAX_BYTES, None, None
    problem = _body_problem(fetch)
    if problem:
        return problem, None, None
    if expected_digest and fetch.served_digest and fetch.served_digest != expected_digest:
        return "registry served %s instead" % fetch.served_digest, None, None
    if expected_digest and fetch.actual_digest != expected_digest:
        if fetch.received == 0:
            return "empty body", None, None
        return "content hashes to %s" % fetch.actual_digest, None, None
    try:
        if not fetch.body:
            raise InvalidManifest("manifest blob is empty")
        doc = load_json(fetch.body)
        manifest = parse_document(doc)
    except InvalidManifest as exc:
        return "invalid manifest: %s" % exc, None, None
    return None, manifest, _descriptor_sizes(doc)


def manifest_problem(fetch, expected_digest):
    """Why a manifest GET did not give a client a usable manifest, or None."""
    return inspect_manifest(fetch, expected_digest)[0]


def blob_problem(fetch, digest, size):
    """Why a blob GET (or HEAD, without a body) would not give a client the blob, or None."""
    problem = _status_problem(fetch)
    if problem:
        return problem
    if fetch.served_digest and fetch.served_digest != digest:
        return "registry served %s instead" % fetch.served_digest
    if fetch.method == "HEAD":
        if size is not None and fetch.announced is not None and fetch.announced != size:
            return "HEAD announces %d bytes, the descriptor says %d" % (fetch.announced, size)
        return None
    problem = _body_problem(fetch)
    if problem:
        return problem
    if fetch.actual_digest != digest:
        return "empty body" if fetch.received == 0 else "content hashes to %s" % fetch.actual_digest
    if size is not None and fetch.received != size:
        return "%d bytes received, the descriptor says %d" % (fetch.received, size)
    return None


# -- the walk -----------------------------------------------------------------------------


class _Node:
    """A manifest (by digest) or a blob in one repository, and who references it."""

    __slots__ = ("attestation", "digest", "doc", "fetch", "kind", "parents", "platform", "problem", "repo", "size",
                 "sizes", "tags")

    def __init__(self, repo, digest, kind, size=None, platform=None, attestation=None):
        self.repo = repo
        self.digest = digest
        self.kind = kind
        self.size = size
        self.platform = platform
        self.attestation = attestation
        self.parents = set()
        self.tags = set()
        self.fetch = None
        self.problem = None
        self.doc = None  # parsed manifest (_manifest.Manifest) when usable
        self.sizes = None  # digest -> size of its config and layer descriptors


class RegistryProbe:
    """One probe run; :meth:`run` returns the result dict (see the registry_probe module)."""

    def __init__(self, transport, url, username=None, password=None, repositories=None, tags=None,
                 verify_blobs=False, concurrency=DEFAULT_CONCURRENCY, page_size=DEFAULT_PAGE_SIZE,
                 max_entries=DEFAULT_MAX_ENTRIES, deadline=DEFAULT_DEADLINE_SECONDS):
        if not 1 <= int(concurrency) <= MAX_CONCURRENCY:
            raise ProbeError("concurrency must be between 1 and %d, not %s" % (MAX_CONCURRENCY, concurrency))
        if int(page_size) < 1:
            raise ProbeError("page_size must be at least 1, not %s" % page_size)
        if int(max_entries) < 1:
            raise ProbeError("max_entries must be at least 1, not %s" % max_entries)
        if password and not username:
            raise ProbeError("password given without username")
        self.http = RegistryHTTP(transport, url, username, password, deadline_seconds=deadline)
        self.max_entries = int(max_entries)
        self.repositories = sorted(set(repositories)) if repositories else None
        self.tag_patterns = list(tags or [])
        self.matches = tag_matcher(self.tag_patterns)
        self.verify_blobs = verify_blobs
        self.concurrency = int(concurrency)
        self.page_size = int(page_size)
        self.findings = []

    # -- helpers ---------------------------------------------------------------------

    @staticmethod
    def _map(func, items, pool):
        """``func`` over ``items`` in the pool, results in order. The first error propagates, and
        once a call has failed no further call does any work (an auth refusal stops the walk
        at once, however far the workers had run ahead of the results read so far)."""
        failed = threading.Event()

        def guarded(item):
            if failed.is_set():
                raise _Skipped()
            try:
                return func(item)
            except BaseException:
                failed.set()
                raise

        futures = [pool.submit(guarded, item) for item in items]
        try:
            return [future.result() for future in futures]
        except _Skipped:
            # A worker may dequeue a call, lose the CPU and start it after a later call failed:
            # the failure that set the flag is then further on. Skipped calls end at once.
            for future in futures:
                error = future.exception()
                if error is not None and not isinstance(error, _Skipped):
                    raise error from None
            raise
        finally:
            for future in futures:
                future.cancel()

    def _finding(self, repo, tag, digest, kind, fetch, reason, **extra):
        status = fetch.status if fetch and fetch.status is not None else (fetch.error if fetch else None)
        finding = {
            "repo": repo,
            "tag": tag,
            "digest": digest,
            "kind": kind,
            "status": status,
            "bytes_announced": fetch.announced if fetch else None,
            "bytes_received": fetch.received if fetch else None,
            "reason": reason,
        }
        finding.update(extra)
        self.findings.append(finding)

    # -- listing ---------------------------------------------------------------------

    def _pages(self, path, key, scope):
        """The entries of a paginated listing: ``(names, status, error)``; error None when complete.

        Asks for ``page_size`` entries a page and follows ``Link: <...>; rel="next"``, keeping at
        most ``max_entries`` (a listing cut there says so in ``error``). A 2.8 registry refuses
        ``n`` above its ``catalog.maxentries`` (400 PAGINATION_NUMBER_INVALID): then the first
        page is asked again without ``n`` (the registry picks its maximum).
        """
        names = []
        url = "%s?%s" % (path, urlencode({"n": self.page_size}))
        seen = set()
        for page in range(MAX_PAGES):
            status, doc, error, nxt = self.http.get_json(url, scope)
            if page == 0 and status == 400 and "PAGINATION_NUMBER_INVALID" in (error or ""):
                status, doc, error, nxt = self.http.get_json(path, scope)
            entries = _json_list(doc, key)
            if error or entries is None:
                return names, status, error or "no %s list in the answer" % key
            names += entries
            if len(names) > self.max_entries:
                return names[:self.max_entries], status, "more than %d entries: listing stopped (max_entries)" % (
                    self.max_entries)
            if not nxt or nxt in seen:
                return names, status, None
            seen.add(nxt)
            url = nxt
        return names, None, "more than %d pages" % MAX_PAGES

    def _catalog(self):
        """(repositories, reachable): a catalog cut at max_entries was reachable, and says so."""
        repos, status, error = self._pages("/v2/_catalog", "repositories", "registry:catalog:*")
        if error:
            self._finding(None, None, None, KIND_CATALOG, _listing_fetch(status, error), "catalog: %s" % error)
        return sorted(set(repos)), error is None or error.endswith("(max_entries)")

    def _tags(self, repo):
        """Tags of ``repo`` to probe (listed and matching, plus literal ones asked for by name),
        and the listing failure (status, error) or None."""
        listed, status, error = self._pages("/v2/%s/tags/list" % quote(repo, safe="/"), "tags", _repo_scope(repo))
        failure = None
        if error and status != 404:  # 404: no tags (2.8's NAME_UNKNOWN for a repo without a tags dir)
            failure = (status, error)
        wanted = {t for t in listed if self.matches(t)}
        if self.repositories is not None:
            wanted |= set(literal_tags(self.tag_patterns))
        return sorted(wanted), failure

    # -- manifests -------------------------------------------------------------------

    def _get_manifest(self, repo, reference):
        return self.http.fetch("GET", "/v2/%s/manifests/%s" % (quote(repo, safe="/"), quote(reference, safe=":")),
                               _repo_scope(repo), accept=MANIFEST_ACCEPT, keep_body=True,
                               limit=MANIFEST_MAX_BYTES + 1)

    def _walk_repo_manifests(self, pool, tag_refs):
        """Manifests by tag, then by digest, then index children, level by level."""
        tag_fetches = self._map(lambda ref: self._get_manifest(*ref), tag_refs, pool)
        nodes = {}  # (repo, digest) -> _Node
        level = []
        for (repo, tag), fetch in zip(tag_refs, tag_fetches):
            expected = fetch.served_digest or fetch.actual_digest
            problem = inspect_manifest(fetch, fetch.served_digest)[0]
            if problem:
                digest = fetch.served_digest if fetch.served_digest and _DIGEST.match(fetch.served_digest) else None
                self._finding(repo, tag, digest, KIND_MANIFEST, fetch, problem, tags=[tag])
                continue
            node = nodes.get((repo, expected))
            if node is None:
                node = nodes[(repo, expected)] = _Node(repo, expected, KIND_MANIFEST)
                level.append(node)
            node.kind = KIND_MANIFEST
            node.tags.add(tag)
        depth = 0
        while level:
            if depth > MAX_INDEX_DEPTH:
                for node in level:
                    node.problem = "index nesting deeper than %d levels (not followed)" % MAX_INDEX_DEPTH
                break
            fetches = self._map(lambda n: self._get_manifest(n.repo, n.digest), level, pool)
            next_level = []
            for node, fetch in zip(level, fetches):
                node.fetch = fetch
                node.problem, node.doc, node.sizes = inspect_manifest(fetch, node.digest)
                fetch.body = None  # parsed: the bytes are not needed any more
                if node.problem or not node.doc.is_index:
                    continue
                for hex_digest, platform, attestation in node.doc.children:
                    child_digest = "sha256:" + hex_digest
                    child = nodes.get((node.repo, child_digest))
                    if child is None:
                        child = _Node(node.repo, child_digest, KIND_INDEX_CHILD, platform=platform,
                                      attestation=attestation)
                        nodes[(node.repo, child_digest)] = child
                        next_level.append(child)
                    child.parents.add(node.digest)
            level = next_level
            depth += 1
        return nodes

    # -- blobs -----------------------------------------------------------------------

    def _get_blob(self, node):
        path = "/v2/%s/blobs/%s" % (quote(node.repo, safe="/"), node.digest)
        if self.verify_blobs:
            # Never more than the descriptor's size + 1: a server sending more is caught, not believed.
            limit = node.size + 1 if node.size is not None else None
            return self.http.fetch("GET", path, _repo_scope(node.repo), limit=limit)
        return self.http.fetch("HEAD", path, _repo_scope(node.repo))

    def _blobs_of(self, manifests):
        blobs = {}
        for node in manifests:
            if node.doc is None or node.doc.is_index:
                continue
            sizes = node.sizes or {}
            for hex_digest, kind in node.doc.blobs:
                digest = "sha256:" + hex_digest
                blob = blobs.get((node.repo, digest))
                if blob is None:
                    blob = blobs[(node.repo, digest)] = _Node(node.repo, digest, kind, size=sizes.get(digest))
                blob.parents.add(node.digest)
                blob.tags |= node.tags
        return blobs

    # -- run -------------------------------------------------------------------------

    def run(self):
        started = time.monotonic()
        self.http.ping()
        catalog_reachable = None
        if self.repositories is None:
            repositories, catalog_reachable = self._catalog()
        else:
            repositories = self.repositories
        pool = ThreadPoolExecutor(max_workers=self.concurrency)
        try:
            tag_lists = self._map(self._tags, repositories, pool)
            tag_refs = []
            for repo, (tags, failure) in zip(repositories, tag_lists):
                if failure:
                    self._finding(repo, None, None, KIND_TAG_LIST, _listing_fetch(*failure),
                                  "tag list: %s" % failure[1])
                tag_refs += [(repo, tag) for tag in tags]
            nodes = self._walk_repo_manifests(pool, tag_refs)
            manifests = [nodes[key] for key in sorted(nodes)]
            _propagate_tags(nodes)
            blobs = self._blobs_of(manifests)
            blob_nodes = [blobs[key] for key in sorted(blobs)]
            fetches = self._map(self._get_blob, blob_nodes, pool)
        finally:
            pool.shutdown(wait=True)
        for node in manifests:
            if node.problem:
                self._finding(node.repo, None, node.digest, node.kind, node.fetch, node.problem,
                              tags=sorted(node.tags), parents=sorted(node.parents), platform=node.platform,
                              attestation=node.attestation)
        for node, fetch in zip(blob_nodes, fetches):
            problem = blob_problem(fetch, node.digest, node.size)
            if problem:
                self._finding(node.repo, None, node.digest, node.kind, fetch, problem,
                              tags=sorted(node.tags), parents=sorted(node.parents))
        for finding in self.findings:
            finding.setdefault("tags", [])
            finding.setdefault("parents", [])
            finding.setdefault("platform", None)
            finding.setdefault("attestation", None)
        self.findings.sort(key=lambda f: (f["repo"] or "", f["tag"] or "", f["digest"] or "", f["kind"]))
        return {
            "url": self.http.url,
            "registries": [self.http.url],
            "catalog_reachable": catalog_reachable,
            "verify_blobs": bool(self.verify_blobs),
            "unfetchable": self.findings,
            "counts": {
                "repositories": len(repositories),
                "tags": len(tag_refs),
                "manifests": len(manifests),
                "blobs": len(blob_nodes),
                "requests": self.http.requests,
                "bytes_received": self.http.bytes_received,
                "findings": len(self.findings),
            },
            "duration_seconds": round(time.monotonic() - started, 3),
            "changed": False,
        }


def _repo_scope(repo):
    return "repository:%s:pull" % repo


def _json_list(doc, key):
    """The strings of ``doc[key]`` (null counts as empty), or None when the answer is malformed."""
    if not isinstance(doc, dict):
        return None
    values = doc.get(key)
    if values is None:
        return []
    if not isinstance(values, list):
        return None
    return [v for v in values if isinstance(v, str)]


def _listing_fetch(status, error):
    fetch = Fetch()
    fetch.status = status
    fetch.error = error
    return fetch


def _propagate_tags(nodes):
    """Tags pulling each manifest: a child inherits the tags of every index that lists it."""
    children = {}
    for (repo, digest), node in nodes.items():
        for parent in node.parents:
            children.setdefault((repo, parent), []).append((repo, digest))
    for key in sorted(nodes):
        root = nodes[key]
        if not root.tags:
            continue
        stack, seen = [key], {key}
        while stack:
            for child_key in children.get(stack.pop(), ()):
                if child_key not in seen:
                    seen.add(child_key)
                    nodes[child_key].tags |= root.tags
                    stack.append(child_key)


def _descriptor_sizes(doc):
    """digest -> size from a manifest's config and layer descriptors (the Manifest keeps no sizes)."""
    sizes = {}
    if not isinstance(doc, dict):
        return sizes
    layers = doc.get("layers")
    for desc in [doc.get("config")] + (layers if isinstance(layers, list) else []):
        size = desc.get("size") if isinstance(desc, dict) else None
        if isinstance(size, int) and not isinstance(size, bool) and 0 <= size < 1 << 62 \
                and isinstance(desc.get("digest"), str):
            sizes.setdefault(desc["digest"], size)
    return sizes


def probe_registry(transport, url, **options):
    """Walk the registry at ``url`` through ``transport``; see :class:`RegistryProbe`."""
    return RegistryProbe(transport, url, **options).run()


def count_findings(result):
    return len(result["unfetchable"])
