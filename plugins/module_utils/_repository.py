# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the analyses share: one walk of a registry for several scanners, and its manifest cache.

Backend-neutral: both work through a storage view (the filesystem's is _fs_view), never ``os``.
"""

import hashlib

from ansible_collections.regwarden.registry.plugins.module_utils._manifest import (
    MANIFEST_MAX_BYTES,
    InvalidManifest,
    parse_manifest,
)
from ansible_collections.regwarden.registry.plugins.module_utils._storage import (
    BLOB_GONE_STATES,
    BLOB_UNREADABLE,
    BlobTooLarge,
    NotRegularFile,
    ScanErrors,
)


class UnreadableManifest:
    """A manifest blob that could not be read (permission denied, a symlink, a FIFO): not judged."""

    __slots__ = ("reason",)

    def __init__(self, reason):
        self.reason = reason

    def __str__(self):
        return self.reason


class ManifestCache:
    """Each manifest blob of a registry read and parsed at most once."""

    GONE = "gone"

    def __init__(self, blobs):
        self.blobs = blobs
        self._parsed = {}  # 32-byte digest -> Manifest / InvalidManifest / GONE

    @classmethod
    def of(cls, blobs):
        """The one cache of ``blobs`` (a registry's blob store, open for one walk), kept on it: every
        scanner of the walk reads and parses a manifest once between them."""
        if blobs is None:
            return cls(blobs)  # a registry that holds nothing: nothing is ever read
        if blobs.manifest_cache is None:
            blobs.manifest_cache = cls(blobs)
        return blobs.manifest_cache

    def blobs_of(self, manifests):
        """Hex digests of the configs and layers the readable ones of ``manifests`` reference."""
        used = set()
        for hex_digest in manifests:
            manifest = self.get(hex_digest)
            if hasattr(manifest, "blobs"):
                used.update(blob for blob, _kind in manifest.blobs)
        return used

    def get(self, hex_digest):
        """A Manifest, an InvalidManifest, or GONE when the blob data is not there."""
        key = bytes.fromhex(hex_digest)
        parsed = self._parsed.get(key)
        if parsed is None:
            parsed = self._load(hex_digest)
            self._parsed[key] = parsed
        return parsed

    def _load(self, hex_digest):
        state = self.blobs.data_state(hex_digest)
        if state in BLOB_GONE_STATES:
            return self.GONE
        if state == BLOB_UNREADABLE:
            return UnreadableManifest("manifest blob unreadable (see scan_errors)")
        try:
            content = self.blobs.read(hex_digest, MANIFEST_MAX_BYTES)
        except BlobTooLarge as exc:
            return InvalidManifest("manifest is larger than %d bytes (%d)" % (MANIFEST_MAX_BYTES, exc.size))
        except (FileNotFoundError, NotADirectoryError):
            return self.GONE
        except (NotRegularFile, OSError) as exc:
            self.blobs.errors.add(self.blobs.data_path(hex_digest), "cannot read manifest blob: %s; not judged"
                                  % (exc.strerror or exc))
            return UnreadableManifest("manifest blob unreadable: %s" % (exc.strerror or exc))
        # parse_manifest refuses content over the bound (read() returns one byte more then).
        try:
            manifest = parse_manifest(content)
        except InvalidManifest as exc:
            return exc
        # Hashing the few KB just read spares a repair from reading them again; a bool costs no memory.
        manifest.intact = hashlib.sha256(content).hexdigest() == hex_digest
        return manifest


def record_registry(result, name, counts, errors):
    """What every scanner's finish() adds for its registry: the summary, the scan errors, and
    whether the registry was read whole."""
    result["summary"][name] = counts
    result["registries"].append(name)
    result["scan_errors"].extend(errors.items)
    if errors.incomplete:
        result["incomplete_registries"].append(name)


def walk_registry(storage, name, location, make_scanners):
    """Walk one registry of ``storage`` once for every scanner that ``make_scanners(blobs, errors)`` returns.

    A scanner has ``add_repository(repo_name, repo)``, called in list order for each
    repository (so a blob scan placed first hands the links it read to an audit after it),
    and ``finish()``, called once the last repository is done. ``location`` None is a registry
    that holds nothing yet: no repository, every scanner finishes clean.
    """
    errors = ScanErrors(name)
    with storage.open_registry(name, location, errors) as view:
        scanners = make_scanners(view.blobs, errors)
        for repo in view.repositories():
            for scanner in scanners:
                scanner.add_repository(repo.name, repo)
        for scanner in scanners:
            scanner.finish()
        statistics = getattr(view, "statistics", None)
        if statistics is not None:
            # Requests a remote backend made for this walk (all its scanners together).
            requests = statistics()
            for scanner in scanners:
                scanner.counts["storage_requests"] = requests
