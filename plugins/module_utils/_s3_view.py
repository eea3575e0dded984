# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Registries in an S3-compatible bucket: the second storage backend (the first is _fs_view).

Layout, as distribution's s3 driver writes it: a registry whose ``rootdirectory`` is
``<prefix>/<name>`` keeps ``<prefix>/<name>/docker/registry/v2/...``; ``prefix`` is to a bucket
what ``path`` is to a filesystem (docs/design.md section 2).

Everything an analysis needs comes from one paged ListObjectsV2 of the registry (every key
with its size): a link file is valid only if it is 71 bytes (``sha256:`` + 64 hex), blob
data sizes say zero-byte blobs, orphan links are a set difference. GET only what must be
read: tag ``current`` links (their target), link files that are not 71 bytes (to say why),
manifests (parsed by the audit and the tag cleanup), and every link with ``verify_links``.
GETs run in parallel (a thread pool per registry). Manifests are kept in a local
content-addressed cache (a digest's content never changes; keyed by digest, size and ETag,
so a damaged object is read again), so a second scan GETs only manifests it has not seen.

boto3 does the S3 protocol (no hand-written signing); it is imported only when an S3 storage
is used, so filesystem scans never need it. Nothing here writes to the bucket: changes go
through _writer.S3Writer.
"""

import concurrent.futures
import errno
import json
import os
import re
import stat

from ansible_collections.regwarden.registry.plugins.module_utils._manifest import MANIFEST_MAX_BYTES
from ansible_collections.regwarden.registry.plugins.module_utils._storage import (
    BLOB_DIR_MISSING,
    BLOB_MISSING,
    BLOB_NOT_REGULAR,
    DATA_EMPTY,
    DATA_PRESENT,
    LINK_MISSING,
    LINK_OK,
    LINK_READ_BYTES,
    LINK_UNREADABLE,
    MAX_REPOSITORY_NAME,
    REPO_MARKERS,
    BlobTooLarge,
    ScanError,
    TagsReadOnce,
    classify_link_content,
    is_hex_digest,
)
from ansible_collections.regwarden.registry.plugins.module_utils._writer import S3Writer, ensure_private_dir, file_lock

LINK_SIZE = 71  # "sha256:" + 64 hex: the only size a valid link file has
LIST_PAGE_KEYS = 1000
DEFAULT_WORKERS = 16
MAX_WORKERS = 64
DEFAULT_REGION = "us-east-1"
ROOT_CACHE_DIR = "/var/cache/regwarden"
# Bucket names as S3 allows them (3-63 of lowercase letters, digits, dots, hyphens).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")
_REGISTRY_NAME = re.compile(r"[a-z0-9]([a-z0-9_-]*[a-z0-9])?\Z")
_PREFIX_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*\Z")
_SETTINGS = ("endpoint_url", "bucket", "prefix", "region", "access_key", "secret_key", "ca_bundle",
             "validate_certs", "verify_links", "cache_dir", "workers")
_LINK_OK_STATE = (LINK_OK, None)
_LINK_MISSING_STATE = (LINK_MISSING, None)
_BLOB_REASONS = {
    BLOB_MISSING: "blob data missing",
    BLOB_NOT_REGULAR: "blob data is not a regular file",
    BLOB_DIR_MISSING: "blob directory missing",
}
_CREDENTIAL_ERRORS = ("SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "403")
_OBJECT_AT_DIR = -5  # an object where a directory belongs (<hex> itself): like a file on disk there


def default_cache_dir():
    """Where manifests and the registries' lock files live: shared by every root run (the
    modules, the scanner CLI and the maintenance timers), per user otherwise."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return ROOT_CACHE_DIR
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "regwarden")


def s3_settings(options):
    """Validated S3 settings from the modules' ``s3`` option or the CLI's config file (a dict).

    Raises ScanError naming the setting for every bad value; never echoes a secret.
    """
    if not isinstance(options, dict):
        raise ScanError("s3 must be a dictionary of settings (endpoint_url, bucket, prefix, ...)")
    unknown = sorted(set(options) - set(_SETTINGS))
    if unknown:
        raise ScanError("unknown s3 setting(s): %s (known: %s)" % (", ".join(unknown), ", ".join(_SETTINGS)))
    settings = {key: options.get(key) for key in _SETTINGS}
    bucket = settings["bucket"]
    if not isinstance(bucket, str) or not _BUCKET.match(bucket) or ".." in bucket:
        raise ScanError("s3.bucket must be an S3 bucket name (3-63 lowercase letters, digits, dots, hyphens), not %r"
                        % (bucket,))
    endpoint = settings["endpoint_url"]
    if endpoint is not None:
        if not isinstance(endpoint, str) or not re.match(r"https?://[^/\s?#]+/?\Z", endpoint):
            raise ScanError("s3.endpoint_url must be http(s)://host[:port] with no path, not %r" % (endpoint,))
        settings["endpoint_url"] = endpoint.rstrip("/")
    settings["prefix"] = normalize_prefix(settings["prefix"])
    region = settings["region"] or DEFAULT_REGION
    if not isinstance(region, str) or not re.match(r"[a-z0-9-]{1,40}\Z", region):
        raise ScanError("s3.region must be a region name such as us-east-1, not %r" % (region,))
    settings["region"] = region
    access_key, secret_key = settings["access_key"], settings["secret_key"]
    if bool(access_key) != bool(secret_key):
        raise ScanError("s3.access_key and s3.secret_key go together: give both, or neither (boto3's own "
                        "credential chain: environment, instance profile)")
    for key in ("access_key", "secret_key"):
        if settings[key] is not None and not isinstance(settings[key], str):
            raise ScanError("s3.%s must be a string" % key)
    for key in ("validate_certs", "verify_links"):
        value = settings[key]
        if value is None:
            settings[key] = key == "validate_certs"
        elif not isinstance(value, bool):
            raise ScanError("s3.%s must be true or false, not %r" % (key, value))
    ca_bundle = settings["ca_bundle"]
    if ca_bundle is not None and (not isinstance(ca_bundle, str) or not os.path.isfile(ca_bundle)):
        raise ScanError("s3.ca_bundle %r is not a readable file" % (ca_bundle,))
    workers = settings["workers"]
    if workers is None:
        workers = DEFAULT_WORKERS
    if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= MAX_WORKERS:
        raise ScanError("s3.workers must be a whole number from 1 to %d, not %r" % (MAX_WORKERS, workers))
    settings["workers"] = workers
    cache_dir = settings["cache_dir"]
    if cache_dir is None:
        cache_dir = default_cache_dir()
    if not isinstance(cache_dir, str) or not cache_dir:
        raise ScanError("s3.cache_dir must be a directory path")
    settings["cache_dir"] = os.path.abspath(cache_dir)
    return settings


def normalize_prefix(prefix):
    """``a/b`` from "/a/b/", "" for none; refuses empty, dot and odd components (keys compose from it)."""
    if prefix is None:
        return ""
    if not isinstance(prefix, str):
        raise ScanError("s3.prefix must be a string, not %r" % (prefix,))
    stripped = prefix.strip("/")
    if not stripped:
        return ""
    parts = stripped.split("/")
    for part in parts:
        if not _PREFIX_PART.match(part):
            raise ScanError("s3.prefix %r: every component must be letters, digits, '.', '_' or '-' (not empty, "
                            "not starting with a dot)" % prefix)
    return "/".join(parts)


class S3Error(ScanError):
    """A request failed; the message names the key and S3's error code, never a credential."""


class S3Client:
    """The requests the scanners and the writer make, with counters; one boto3 client per process.

    A boto3 client must not cross a fork (its connection pool holds sockets), so it is made
    lazily by the process that uses it. boto3 clients are thread-safe: the GET pool shares it.
    """

    def __init__(self, settings):
        self.settings = settings
        self.bucket = settings["bucket"]
        self._client = None
        self._pid = None
        self.counts = {"list": 0, "get": 0, "head": 0, "put": 0, "delete": 0}

    def url(self, key):
        return "s3://%s/%s" % (self.bucket, key)

    @property
    def client(self):
        if self._client is None or self._pid != os.getpid():
            self._client = _make_client(self.settings)
            self._pid = os.getpid()
            self.counts = dict.fromkeys(self.counts, 0)
        return self._client

    def _fail(self, exc, what, key):
        return S3Error("%s %s: %s" % (what, self.url(key), _describe(exc)))

    def list_pages(self, prefix, delimiter=None, max_keys=LIST_PAGE_KEYS):
        """Yield (objects, common prefixes) per page; objects are (key, size, etag, mtime) in key order.

        The next page is asked for while the caller works on this one. Keys come in the server's
        order (SeaweedFS lists directory by directory, not byte order), so a listing that does not
        advance is told by a repeated continuation token or a page starting with a key already
        seen: an error, never a loop.
        """
        client = self.client
        kwargs = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": max_keys}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        tokens = set()
        first_keys = set()
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as ahead:
            pending = ahead.submit(self._list_page, client, kwargs, prefix)
            while pending is not None:
                page = pending.result()
                token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
                pending = None
                if token:
                    if token in tokens:
                        raise S3Error("listing %s repeats a continuation token: the server does not page "
                                      "correctly" % self.url(prefix))
                    tokens.add(token)
                    pending = ahead.submit(self._list_page, client, dict(kwargs, ContinuationToken=token), prefix)
                objects = []
                for item in page.get("Contents") or ():
                    key = item["Key"]
                    if not isinstance(key, str) or not key.startswith(prefix):
                        raise S3Error("listing %s returned %r, outside the prefix" % (self.url(prefix), key))
                    objects.append((key, int(item.get("Size") or 0), _etag(item.get("ETag")),
                                    _epoch(item.get("LastModified"))))
                if objects:
                    if objects[0][0] in first_keys:
                        raise S3Error("listing %s returns the same page again: the server does not page "
                                      "correctly" % self.url(prefix))
                    first_keys.add(objects[0][0])
                prefixes = [entry["Prefix"] for entry in page.get("CommonPrefixes") or ()
                            if entry.get("Prefix", "").startswith(prefix)]
                yield objects, prefixes

    def _list_page(self, client, kwargs, prefix):
        self.counts["list"] += 1
        try:
            return client.list_objects_v2(**kwargs)
        except Exception as exc:
            raise self._fail(exc, "cannot list", prefix) from None

    def get(self, key, max_bytes):
        """The object's first ``max_bytes`` + 1 bytes at most (a Range GET), or None when it is gone."""
        self.counts["get"] += 1
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key, Range="bytes=0-%d" % max_bytes)
        except Exception as exc:
            if _is_not_found(exc):
                return None
            if _error_code(exc) == "InvalidRange":
                return b""  # a zero-byte object has no byte 0
            raise self._fail(exc, "cannot read", key) from None
        body = response["Body"]
        try:
            # A server that ignores the Range still gives no more than this.
            return body.read(max_bytes + 1)
        except Exception as exc:
            raise self._fail(exc, "cannot read", key) from None
        finally:
            body.close()

    def stream(self, key, chunk_size):
        """Yield the object's content in chunks (for hashing); FileNotFoundError when it is gone."""
        self.counts["get"] += 1
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if _is_not_found(exc):
                raise FileNotFoundError(errno.ENOENT, "gone", self.url(key)) from None
            raise self._fail(exc, "cannot read", key) from None
        body = response["Body"]
        try:
            while True:
                chunk = body.read(chunk_size)
                if not chunk:
                    return
                yield chunk
        finally:
            body.close()

    def head(self, key):
        """(size, etag, mtime) of the object, or None when it is gone."""
        self.counts["head"] += 1
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if _is_not_found(exc):
                return None
            raise self._fail(exc, "cannot stat", key) from None
        return int(response.get("ContentLength") or 0), _etag(response.get("ETag")), \
            _epoch(response.get("LastModified"))

    def exists_under(self, prefix):
        """Whether any key starts with ``prefix`` (one LIST of one key)."""
        for objects, prefixes in self.list_pages(prefix, max_keys=1):
            return bool(objects or prefixes)
        return False

    def put(self, key, body):
        self.counts["put"] += 1
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body)
        except Exception as exc:
            raise self._fail(exc, "cannot write", key) from None

    def delete(self, key):
        self.counts["delete"] += 1
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if _is_not_found(exc):
                return
            raise self._fail(exc, "cannot delete", key) from None


def _make_client(settings):
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ScanError("storage s3 needs the Python library boto3 where the scan runs (Debian: apt install "
                        "python3-boto3; pip: boto3)") from None
    options = {
        "s3": {"addressing_style": "path"},
        "retries": {"max_attempts": 4, "mode": "standard"},
        "max_pool_connections": settings["workers"] + 2,
        "connect_timeout": 10,
        "read_timeout": 60,
        "user_agent_extra": "regwarden",
    }
    try:
        # botocore >= 1.36 adds checksums to every upload by default; S3-compatible stores may refuse them.
        config = Config(request_checksum_calculation="when_required", response_checksum_validation="when_required",
                        **options)
    except TypeError:
        config = Config(**options)
    verify = settings["ca_bundle"] or settings["validate_certs"]
    kwargs = {"region_name": settings["region"], "config": config, "verify": verify}
    if settings["endpoint_url"]:
        kwargs["endpoint_url"] = settings["endpoint_url"]
    if settings["access_key"]:
        kwargs["aws_access_key_id"] = settings["access_key"]
        kwargs["aws_secret_access_key"] = settings["secret_key"]
    try:
        return boto3.session.Session().client("s3", **kwargs)
    except Exception as exc:
        raise ScanError("cannot set up the S3 client for %s: %s" % (settings["endpoint_url"] or "AWS",
                                                                    _describe(exc))) from None


def _error_code(exc):
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str((response.get("Error") or {}).get("Code") or "")
    return ""


def _is_not_found(exc):
    return _error_code(exc) in ("404", "NoSuchKey", "NotFound")


def _describe(exc):
    """S3's error code and message, or the exception's type and text (botocore never puts a secret there)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error") or {}
        code = error.get("Code") or (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        message = error.get("Message") or ""
        if code == "NoSuchBucket":
            message = message or "the bucket does not exist"
        text = ("%s: %s" % (code, message)).rstrip(": ")
        if str(code) in _CREDENTIAL_ERRORS:
            text += " (check s3.access_key and s3.secret_key)"
        return text
    return "%s: %s" % (type(exc).__name__, exc)


def _etag(value):
    return (value or "").strip('"')


def _epoch(value):
    if value is None:
        return None
    try:
        return value.timestamp()
    except AttributeError:
        return None


# -- discovery ----------------------------------------------------------------------------


class S3Storage:
    """Registries under ``s3://bucket/prefix`` (the backend the drivers and analyses are given).

    ``location`` of a registry is the key prefix of its docker/registry/v2 (ending in "/").
    """

    kind = "s3"

    def __init__(self, settings):
        self.settings = s3_settings(settings)  # idempotent: validated settings pass again
        self.s3 = S3Client(self.settings)
        prefix = self.settings["prefix"]
        self.base = prefix + "/" if prefix else ""

    def describe(self):
        return self.s3.url(self.base)

    def location_of(self, name):
        return "%s%s/docker/registry/v2/" % (self.base, name)

    def select(self, wanted):
        """(selected, missing), as _discovery.select_registries gives them for a path.

        Names asked for are taken without a request (their listing says whether they exist,
        see open_registry); all registries (``wanted`` None) are the prefix's "directories".
        """
        if wanted is not None:
            selected, missing = [], {}
            for name in sorted(set(wanted)):
                if isinstance(name, str) and _REGISTRY_NAME.match(name):
                    selected.append((name, self.location_of(name)))
                else:
                    missing[name] = "registry %r cannot be scanned: not a registry name" % (name,)
            return selected, missing
        names = []
        for _objects, prefixes in self.s3.list_pages(self.base, delimiter="/"):
            names.extend(entry[len(self.base):].rstrip("/") for entry in prefixes)
        names = sorted(name for name in names if _REGISTRY_NAME.match(name))
        if not names:
            return [], {"*": "no registry under %s (wrong bucket or prefix?)" % self.describe()}
        return [(name, self.location_of(name)) for name in names], {}

    def open_registry(self, name, location, errors):
        return S3RegistryView(self, name, location, errors)

    def lock(self, name, location, take):
        return file_lock(name, self.lock_path(name), take)

    def _local_path(self, kind, name, suffix):
        """<cache_dir>/<kind>/<bucket>/<prefix>/<name><suffix>: a registry's file on this host."""
        parts = [self.settings["cache_dir"], kind, self.settings["bucket"]]
        if self.settings["prefix"]:
            parts.extend(self.settings["prefix"].split("/"))
        return os.path.join(*parts, name + suffix)

    def lock_path(self, name):
        """The local lock file of a registry (every writer on this host, and the maintenance timers, flock it)."""
        return self._local_path("locks", name, ".lock")

    def link_cache_path(self, name):
        """The tag links of a registry read last time."""
        return self._local_path("links", name, ".json")

    def writer(self, apply, cutoff):
        return S3Writer(self.s3, apply=apply, cutoff=cutoff)


# -- the view of one registry -------------------------------------------------------------


class S3RegistryView:
    """One registry in the bucket, read from its listing: its repositories and its blob store.

    A context manager like the filesystem's view; the listing is made when it is entered.
    """

    def __init__(self, storage, name, location, errors):
        self.storage = storage
        self.s3 = storage.s3
        self.name = name
        self.location = location
        self.errors = errors
        self.settings = storage.settings
        self.root = self.s3.url(location.rstrip("/"))
        self.blobs = None
        self._repos = {}
        self._pool = None
        self._tags_fetched = False
        self.link_cache_hits = 0

    def __enter__(self):
        self._read_listing()
        return self

    def __exit__(self, *exc_info):
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    @property
    def pool(self):
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=self.settings["workers"])
        return self._pool

    def statistics(self):
        counts = dict(self.s3.counts)
        if self.blobs is not None:
            counts.update(self.blobs.cache_counts)
        counts["link_cache_hits"] = self.link_cache_hits
        return counts

    def _read_listing(self):
        location = self.location
        cut = len(location)
        blobs = S3BlobStore(self)
        repos = self._repos
        seen_any = False
        for objects, _prefixes in self.s3.list_pages(location):
            for key, size, etag, mtime in objects:
                seen_any = True
                rest = key[cut:]
                if rest.startswith("blobs/"):
                    blobs.add_key(rest, size, etag)
                elif rest.startswith("repositories/"):
                    self._add_repository_key(repos, rest, key, size, mtime, etag)
        if not seen_any:
            registry_root = location[:-len("docker/registry/v2/")]
            if not self.s3.exists_under(registry_root):
                raise ScanError("registry %s not found under %s (no object under %s)" % (
                    self.name, self.storage.describe(), self.s3.url(registry_root)))
        self.blobs = blobs

    def _add_repository_key(self, repos, rest, key, size, mtime, etag):
        parts = rest.split("/")[1:]
        index = _marker_index(parts)
        if index is None:
            return  # an object among the repository directories, or below a "_" directory the walk skips
        if index < 0:
            self.errors.add(self.s3.url(key), "object key has an empty path component (no registry writes "
                                              "one): ignored")
            return
        name = "/".join(parts[:index])
        repo = repos.get(name)
        if repo is None:
            if len(name) > MAX_REPOSITORY_NAME:
                self.errors.add(self.s3.url(self.location + "repositories/" + name),
                                "nested deeper than a repository name can be (%d characters): not entered"
                                % MAX_REPOSITORY_NAME)
                return
            repo = repos[name] = S3Repository(self, name)
        repo.add_key(parts[index:], size, mtime, etag)

    def repositories(self):
        for name in sorted(self._repos):
            yield self._repos[name]

    # -- parallel GETs shared by the repositories ----------------------------------------

    def fetch_tags(self):
        """GET every tag's current link of the registry at once (the first read_tags asks for them)."""
        if self._tags_fetched:
            return
        self._tags_fetched = True
        wanted = [(repo, tag, self.location + repo.relative("_manifests/tags/%s/current/link" % tag),
                   repo.tag_etags.get(tag))
                  for repo in self._repos.values() for tag, info in repo.tag_entries.items() if info[0] is not None]
        cache = LinkCache(self.storage.link_cache_path(self.name))
        known = cache.load()
        missing = [item for item in wanted if not item[3] or known.get(item[2], (None,))[0] != item[3]]
        contents = dict(zip((item[2] for item in missing),
                            self.get_many([item[2] for item in missing], LINK_READ_BYTES)))
        self.link_cache_hits = len(wanted) - len(missing)
        kept = {}
        for repo, tag, key, etag in wanted:
            content = contents[key] if key in contents else known[key][1]
            repo.tag_contents[tag] = content
            if etag and isinstance(content, bytes):
                kept[key] = (etag, content)
        cache.save(kept)

    def get_many(self, keys, max_bytes):
        """[content or None (gone) or an S3Error] per key, fetched in parallel."""
        if not keys:
            return []
        if len(keys) == 1:
            return [self._get_or_error(keys[0], max_bytes)]
        return list(self.pool.map(lambda key: self._get_or_error(key, max_bytes), keys))

    def _get_or_error(self, key, max_bytes):
        try:
            return self.s3.get(key, max_bytes)
        except S3Error as exc:
            return exc

    def verify_links(self, repo, kind, names):
        """GET the links of ``names`` (one kind) in parallel: {name: content or None or an S3Error}."""
        keys = [self.location + repo.relative(repo.link_rel(kind, name)) for name in names]
        return dict(zip(names, self.get_many(keys, LINK_READ_BYTES)))


def _marker_index(parts):
    """Index of the first repository marker (_layers, _manifests, _uploads) in a key's components
    below repositories/; None when there is none (or a "_" directory comes first, which the
    filesystem walk never enters either, or it is the first component); -1 for an empty one."""
    for index, part in enumerate(parts):
        if not part:
            return -1
        if part in REPO_MARKERS:
            return index or None
        if part.startswith("_"):
            return None
    return None


class S3LinkListing:
    """The entries of one link directory of a repository (see _fs_view.LinkListing)."""

    unreadable = False

    def __init__(self, repo, kind):
        self.repo = repo
        self.kind = kind
        self.path = repo.link_dir_path(kind)
        # The writer's handle: the key prefix of the directory.
        self.handle = repo.view.location + repo.relative(repo.link_dir_rel(kind))
        self._links = repo.links[kind]

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return None

    def entries(self):
        """[(name, is_dir, is_symlink)] of the directory (None when it holds nothing)."""
        repo = self.repo
        names = repo.dirs[self.kind]
        objects = repo.objects[self.kind]
        if not names and not objects:
            return None
        entries = [(name, True, False) for name in names]
        entries.extend((name, False, False) for name in objects if name not in names)
        entries.sort()
        repo.verified(self.kind)  # with verify_links: every link's content, GET in parallel now
        return entries

    def read(self, name):
        """(state, reason) of <name>/link, which must name ``name``."""
        return self.repo.link_state(self.kind, name)


class S3Repository(TagsReadOnce):
    """Link state of one repository, all from the registry's listing (see _fs_view.FsRepository)."""

    revisions_unreadable = False
    layers_unreadable = False
    tags_unreadable = False

    def __init__(self, view, name):
        self.view = view
        self.name = name
        self.errors = view.errors
        self.path = view.root + "/repositories/" + name
        self.revisions_dir = self.link_dir_path("revision")
        self.layers_dir = self.link_dir_path("layer")
        # kind -> {name: (size, mtime)} of <dir>/<name>/link; names of "directories" (keys below
        # <name>/) and of objects at <dir>/<name> itself.
        self.links = {"layer": {}, "revision": {}}
        self.dirs = {"layer": set(), "revision": set()}
        self.objects = {"layer": set(), "revision": set()}
        self.tag_entries = {}  # tag -> (size, mtime) of current/link, or (None, None): a tag without one
        self.tag_etags = {}  # tag -> ETag of current/link (the link cache's key)
        self.tag_contents = {}
        self.uploads = 0
        self.upload_sessions = {}  # upload id -> [bytes of data, start time (startedat's LastModified)]
        self.revisions = {}
        self._states = {"layer": {}, "revision": {}}
        self._verified = {"layer": None, "revision": None}
        self._revisions_loaded = False

    def close(self):
        return None

    def relative(self, rel):
        return "repositories/%s/%s" % (self.name, rel)

    @staticmethod
    def link_dir_rel(kind):
        return "_layers/sha256/" if kind == "layer" else "_manifests/revisions/sha256/"

    def link_rel(self, kind, name):
        return self.link_dir_rel(kind) + name + "/link"

    def link_dir_path(self, kind):
        return self.path + "/" + self.link_dir_rel(kind).rstrip("/")

    def add_key(self, parts, size, mtime, etag=None):
        """One key of the listing, as its components from the repository's marker directory on."""
        marker = parts[0]
        if marker == "_uploads":
            self.uploads += 1
            if len(parts) == 3 and parts[2] in ("data", "startedat"):
                session = self.upload_sessions.setdefault(parts[1], [0, None])
                if parts[2] == "data":
                    session[0] = size
                else:
                    session[1] = mtime
            elif len(parts) > 2:
                self.upload_sessions.setdefault(parts[1], [0, None])
            return
        if marker == "_layers":
            kind, rest = "layer", parts[1:]
        elif marker == "_manifests" and len(parts) > 1 and parts[1] == "revisions":
            kind, rest = "revision", parts[2:]
        elif marker == "_manifests" and len(parts) > 2 and parts[1] == "tags":
            tag, rest = parts[2], parts[3:]
            if rest == ["current", "link"]:
                self.tag_entries[tag] = (size, mtime)
                self.tag_etags[tag] = etag
            elif rest:
                self.tag_entries.setdefault(tag, (None, None))
            return
        else:
            return
        if not rest or rest[0] != "sha256":
            return
        rest = rest[1:]
        if len(rest) == 1:
            self.objects[kind].add(rest[0])
        elif len(rest) >= 2:
            self.dirs[kind].add(rest[0])
            if len(rest) == 2 and rest[1] == "link":
                self.links[kind][rest[0]] = (size, mtime)

    # -- what the analyses and the writer work with (the names of FsRepository) -----------

    def open_links(self, kind):
        return S3LinkListing(self, kind)

    def directory(self, which):
        import contextlib

        @contextlib.contextmanager
        def handle():
            rel = "_manifests/tags/" if which == "tags" else self.link_dir_rel(which)
            yield self.view.location + self.relative(rel)
        return handle()

    @property
    def tags_dir(self):
        return self.path + "/_manifests/tags"

    @property
    def write_base(self):
        """Where the writer creates links: (key prefix of the repository, its s3:// path)."""
        return self.view.location + self.relative(""), self.path

    def revision_mtime(self, _handle, hex_digest):
        entry = self.links["revision"].get(hex_digest)
        return entry[1] if entry else None

    def verified(self, kind):
        """With verify_links: {name: content} of every link of ``kind``, fetched once, in parallel,
        on first use; otherwise None (links are judged by their size)."""
        if not self.view.settings["verify_links"]:
            return None
        contents = self._verified[kind]
        if contents is None:
            names = sorted(name for name in self.links[kind] if is_hex_digest(name))
            contents = self._verified[kind] = self.view.verify_links(self, kind, names)
        return contents

    def link_state(self, kind, name):
        """(state, reason) of a link from its size; its content is read when the size is wrong, and
        always with verify_links (a 71-byte link naming another digest has the right size)."""
        states = self._states[kind]
        state = states.get(name)
        if state is not None:
            return state
        entry = self.links[kind].get(name)
        verified = self.verified(kind) if entry is not None else None
        if entry is None:
            state = _LINK_MISSING_STATE
        elif verified is not None and name in verified:
            state = self._judge_content(kind, name, verified[name])
        elif entry[0] == LINK_SIZE:
            state = _LINK_OK_STATE
        else:
            content = self.view._get_or_error(self.view.location + self.relative(self.link_rel(kind, name)),
                                              LINK_READ_BYTES)
            state = self._judge_content(kind, name, content)
        states[name] = state
        return state

    def _judge_content(self, kind, name, content):
        path = self.link_path(kind, name)
        if isinstance(content, S3Error):
            self.errors.add(path, "link file unreadable: %s; not judged" % content)
            return LINK_UNREADABLE, "link file unreadable"
        if content is None:
            return _LINK_MISSING_STATE  # deleted since the listing
        state, _target, reason = classify_link_content(content[:LINK_READ_BYTES], name)
        return (state, reason) if state != LINK_OK else _LINK_OK_STATE

    def link_path(self, kind, name):
        return self.link_dir_path(kind) + "/" + name + "/link"

    def record_revisions(self, states, unreadable=False):
        self.revisions = states
        self._revisions_loaded = True

    def record_layer_links(self, states, unreadable=False):
        self._states["layer"].update(states)

    def load_revisions(self):
        if self._revisions_loaded:
            return
        self._revisions_loaded = True
        names = sorted(name for name in self.links["revision"] if is_hex_digest(name))
        for name in names:
            state = self.link_state("revision", name)
            if state[0] != LINK_MISSING:
                self.revisions[name] = state

    def revision_state(self, hex_digest):
        return self.revisions.get(hex_digest, _LINK_MISSING_STATE) if self._revisions_loaded \
            else self.link_state("revision", hex_digest)

    def layer_state(self, hex_digest):
        return self.link_state("layer", hex_digest)

    def mark_linked(self, kind, hex_digest):
        if kind == "revision":
            self.revisions[hex_digest] = _LINK_OK_STATE
        self._states[kind][hex_digest] = _LINK_OK_STATE

    def upload_entries(self):
        """[(bytes of data, start time or None)] of every upload session left in _uploads."""
        return [tuple(self.upload_sessions[name]) for name in sorted(self.upload_sessions)]

    def revision_path(self, hex_digest):
        return self.link_path("revision", hex_digest)

    def layer_path(self, hex_digest):
        return self.link_path("layer", hex_digest)

    def _read_tags(self, with_updated):
        """{tag: TagLink} for every tag of the repository (current links fetched for the whole registry)."""
        from ansible_collections.regwarden.registry.plugins.module_utils._fs_view import TagLink
        self.view.fetch_tags()
        tags = {}
        for tag, (size, mtime) in sorted(self.tag_entries.items()):
            link_path = "%s/%s/current/link" % (self.tags_dir, tag)
            if size is None:
                tags[tag] = TagLink(LINK_MISSING, None, "tag has no current link", link_path, None)
                continue
            content = self.tag_contents.get(tag)
            if isinstance(content, S3Error):
                self.errors.add(link_path, "link file unreadable: %s; not judged" % content)
                tags[tag] = TagLink(LINK_UNREADABLE, None, "link file unreadable", link_path, None)
                continue
            if content is None:
                tags[tag] = TagLink(LINK_MISSING, None, "tag has no current link", link_path, None)
                continue
            state, target, reason = classify_link_content(content[:LINK_READ_BYTES], None)
            tags[tag] = TagLink(state, target, reason, link_path, mtime if with_updated else None)
        return tags


# -- blob data ----------------------------------------------------------------------------


class S3BlobStore:
    """Blob data of one registry from the listing: sizes, and content read on demand (manifests
    through the local cache, prefetched in parallel the first time one is read)."""

    def __init__(self, view):
        self.manifest_cache = None  # the walk's ManifestCache (_repository.ManifestCache.of)
        self.view = view
        self.name = view.name
        self.errors = view.errors
        self.root = view.root + "/blobs/sha256"
        self._sizes = {}  # 32-byte digest -> size of <hex>/data
        self._etags = {}  # 32-byte digest -> ETag, for the manifest-sized ones
        self._other = {}  # 32-byte digest -> BLOB_NOT_REGULAR (data/ has keys below) or _OBJECT_AT_DIR
        self._checked = set()
        self._contents = None
        self.cache = ManifestFiles(view.settings["cache_dir"])
        self.cache_counts = {"manifest_cache_hits": 0, "manifest_cache_misses": 0}

    def add_key(self, rest, size, etag):
        parts = rest.split("/")
        if len(parts) < 4 or parts[1] != "sha256":
            return
        prefix, hex_digest = parts[2], parts[3]
        if not is_hex_digest(hex_digest) or not hex_digest.startswith(prefix):
            return
        key = bytes.fromhex(hex_digest)
        if len(parts) == 4:
            self._other.setdefault(key, _OBJECT_AT_DIR)
        elif len(parts) == 5 and parts[4] == "data":
            self._sizes[key] = size
            if size <= MANIFEST_MAX_BYTES:
                self._etags[key] = etag
        elif parts[4] == "data":
            self._other[key] = BLOB_NOT_REGULAR

    def data_path(self, hex_digest):
        return "%s/%s/%s/data" % (self.root, hex_digest[:2], hex_digest)

    def key_of(self, hex_digest):
        return "%sblobs/sha256/%s/%s/data" % (self.view.location, hex_digest[:2], hex_digest)

    def checked_count(self):
        return len(self._checked)

    def data_state(self, hex_digest):
        key = bytes.fromhex(hex_digest)
        self._checked.add(key)
        size = self._sizes.get(key)
        if size is not None:
            return DATA_PRESENT if size > 0 else DATA_EMPTY
        other = self._other.get(key)
        if other == BLOB_NOT_REGULAR:
            return BLOB_NOT_REGULAR
        if other == _OBJECT_AT_DIR:
            return BLOB_DIR_MISSING
        # A bucket has no empty directories: without its data key a blob is "data missing",
        # whether a disk would still hold its directory or not.
        return BLOB_MISSING

    def fresh_data_state(self, hex_digest):
        """HEAD again, bypassing the listing (right before a removal)."""
        info = self.view.s3.head(self.key_of(hex_digest))
        key = bytes.fromhex(hex_digest)
        if info is None:
            self._sizes.pop(key, None)
            if self.view.s3.exists_under(self.key_of(hex_digest) + "/"):
                return BLOB_NOT_REGULAR
            return BLOB_MISSING
        self._sizes[key] = info[0]
        return DATA_PRESENT if info[0] > 0 else DATA_EMPTY

    def reason(self, hex_digest):
        return _BLOB_REASONS.get(self.data_state(hex_digest), "blob data present")

    def read(self, hex_digest, limit):
        """The blob's content; BlobTooLarge when it is over ``limit``; FileNotFoundError when gone."""
        key = bytes.fromhex(hex_digest)
        size = self._sizes.get(key)
        if size is None:
            raise FileNotFoundError(errno.ENOENT, "blob data missing", self.data_path(hex_digest))
        if size > limit:
            raise BlobTooLarge(size)
        if self._contents is None:
            self._prefetch(limit)
        content = self._contents.pop(key, None)
        if content is None:
            content = self._load(hex_digest, limit)
        if isinstance(content, S3Error):
            raise OSError(errno.EIO, str(content), self.data_path(hex_digest))
        if content is False:
            raise FileNotFoundError(errno.ENOENT, "blob data missing", self.data_path(hex_digest))
        return content

    def _prefetch(self, limit):
        """Every manifest a revision link names, from the cache or GET in parallel (once per registry)."""
        self._contents = {}
        wanted = set()
        for repo in self.view._repos.values():
            for name, (size, _mtime) in repo.links["revision"].items():
                if size == LINK_SIZE and is_hex_digest(name):
                    key = bytes.fromhex(name)
                    if 0 < self._sizes.get(key, limit + 1) <= limit:
                        wanted.add(key)
        missing = []
        for key in sorted(wanted):
            content = self.cache.load(key.hex(), self._sizes[key], self._etags.get(key))
            if content is None:
                missing.append(key)
            else:
                self.cache_counts["manifest_cache_hits"] += 1
                self._contents[key] = content
        contents = self.view.get_many([self.key_of(key.hex()) for key in missing], limit)
        for key, content in zip(missing, contents):
            self._contents[key] = self._keep(key, content)

    def _load(self, hex_digest, limit):
        key = bytes.fromhex(hex_digest)
        content = self.cache.load(hex_digest, self._sizes[key], self._etags.get(key))
        if content is not None:
            self.cache_counts["manifest_cache_hits"] += 1
            return content
        return self._keep(key, self.view._get_or_error(self.key_of(hex_digest), limit))

    def _keep(self, key, content):
        self.cache_counts["manifest_cache_misses"] += 1
        if isinstance(content, S3Error):
            return content
        if content is None:
            return False  # deleted since the listing
        if len(content) == self._sizes[key]:
            self.cache.store(key.hex(), len(content), self._etags.get(key), content)
        return content

    def sha256(self, hex_digest):
        import hashlib
        digest = hashlib.sha256()
        for chunk in self.view.s3.stream(self.key_of(hex_digest), 1 << 20):
            digest.update(chunk)
        return digest.hexdigest()

    def iter_all(self):
        for key in sorted(self._sizes):
            yield key.hex()

    def keep_sizes(self):
        """Sizes come with the listing: nothing to remember."""

    def size(self, hex_digest):
        return self._sizes.get(bytes.fromhex(hex_digest))


class ManifestFiles:
    """The local content-addressed manifest cache: <cache_dir>/manifests/<xx>/<hex>.<size>.<etag>.

    Only this user may write it (the directory is made 0700, an existing one owned by someone
    else or writable by others is refused), files are opened without following symlinks, and
    one that is not exactly the expected size is ignored.
    """

    def __init__(self, cache_dir):
        self.root = os.path.join(cache_dir, "manifests")
        self._ready = None

    def _check(self):
        if self._ready is None:
            self._ready = True
            for path in (os.path.dirname(self.root), self.root):
                ensure_private_dir(path)
        return self._ready

    def _path(self, hex_digest, size, etag):
        tag = re.sub(r"[^A-Za-z0-9-]", "_", etag or "none")[:80]
        return os.path.join(self.root, hex_digest[:2], "%s.%d.%s" % (hex_digest, size, tag))

    def load(self, hex_digest, size, etag):
        self._check()
        content = _read_cache_file(self._path(hex_digest, size, etag), size)
        return content if content is not None and len(content) == size else None

    def store(self, hex_digest, size, etag, content):
        self._check()
        path = self._path(hex_digest, size, etag)
        try:
            try:
                os.mkdir(os.path.dirname(path), 0o700)
            except FileExistsError:
                pass
            _replace_cache_file(path, content)
        except OSError:
            return  # a cache that cannot be written only costs a GET next time


class LinkCache:
    """Tag ``current`` links read by the last scan of a registry, by key and ETag: an object whose
    ETag is unchanged holds the same bytes (S3 gives every write a new ETag), so a rescan GETs
    only the tags that moved. One JSON file per registry ({key: [etag, content]}), kept in a
    directory only this user may write, rewritten whole (temp file + rename) with the tags of
    this listing only; a file that cannot be read or parsed is an empty cache.
    """

    MAX_BYTES = 256 * 1024 * 1024

    def __init__(self, path):
        self.path = path

    def load(self):
        try:
            ensure_private_dir(os.path.dirname(self.path))
        except ScanError:
            return {}
        text = _read_cache_file(self.path, self.MAX_BYTES)
        try:
            data = json.loads(text.decode("utf-8")) if text is not None else None
        except (ValueError, UnicodeDecodeError):
            return {}
        if not isinstance(data, dict):
            return {}
        known = {}
        for key, value in data.items():
            if isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value):
                known[key] = (value[0], value[1].encode("latin-1", "replace"))
        return known

    def save(self, entries):
        data = {key: [etag, content.decode("latin-1")] for key, (etag, content) in entries.items()}
        try:
            ensure_private_dir(os.path.dirname(self.path))
            _replace_cache_file(self.path, json.dumps(data, sort_keys=True).encode("utf-8"))
        except (OSError, ScanError):
            return  # a cache that cannot be written only costs GETs next time


def _read_cache_file(path, max_bytes):
    """The bytes of a cache file: a regular file (never through a symlink, never blocking on a
    FIFO) of at most ``max_bytes``; None otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > max_bytes:
            return None
        chunks, left = [], max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        content = b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)
    return content if len(content) <= max_bytes else None


def _replace_cache_file(path, content):
    """Write ``content`` to ``path`` (0600) through a temp file and a rename: readers see the old
    file or the new one. Raises OSError."""
    tmp = "%s.tmp%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    os.replace(tmp, path)
