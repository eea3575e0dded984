# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One registry's manifests and one repository's links, each read at most once.

Shared by the blob scan, the index audit, its repair and the tag cleanup.
"""

import collections
import hashlib
import os

from ansible_collections.regwarden.registry.plugins.module_utils._manifest import (
    MANIFEST_MAX_BYTES,
    InvalidManifest,
    parse_manifest,
)
from ansible_collections.regwarden.registry.plugins.module_utils._storage import (
    BLOB_GONE_STATES,
    BLOB_UNREADABLE,
    LINK_MISSING,
    LINK_OK,
    LINK_UNREADABLE,
    BlobTooLarge,
    NotRegularFile,
    ScanErrors,
    close_fd,
    is_hex_digest,
    is_utf8,
    iter_link_dirs,
    iter_repositories,
    open_subdir_checked,
    read_link_at,
    registry_storage,
)

# A tag's current link: state/target/reason as read_link_at gives them, the link's path and
# its mtime (when the tag was last pushed; None when there is no link file).
TagLink = collections.namedtuple("TagLink", "state target reason path updated")

# (state, reason) of a link; the common ones shared rather than built per link.
LINK_OK_STATE = (LINK_OK, None)
LINK_MISSING_STATE = (LINK_MISSING, None)
LINK_UNREADABLE_STATE = (LINK_UNREADABLE, "its directory could not be read")


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


class RepositoryLinks:
    """Link state of one repository, read lazily and at most once per link.

    When the blob scan walks the same repository first (one process running both scans),
    it hands over every link it read (record_*), and nothing is read twice. A link directory
    that could not be read makes every link in it LINK_UNREADABLE (not judged), never missing.
    """

    def __init__(self, path, fd, errors):
        self.path = path
        self.fd = fd
        self.errors = errors
        self.revisions_dir = os.path.join(path, "_manifests", "revisions", "sha256")
        self.layers_dir = os.path.join(path, "_layers", "sha256")
        self.revisions = {}  # hex -> (state, reason) for every revision dir with a link file
        self._revisions_loaded = False
        self.revisions_unreadable = False
        self._layers_fd = None
        self._layer_dirs = None  # names of the real (non-symlink) directories under _layers/sha256
        self._layer_links = {}
        self._layers_complete = False  # _layer_links holds every layer link there is
        self.layers_unreadable = False
        self.tags_unreadable = False

    def close(self):
        close_fd(self._layers_fd)
        self._layers_fd = None

    def record_revisions(self, states, unreadable=False):
        """{hex: (state, reason)} of every revision directory with a link file, as read by the caller."""
        self.revisions = states
        self._revisions_loaded = True
        self.revisions_unreadable = unreadable

    def record_layer_links(self, states, unreadable=False):
        """{hex: (state, reason)} of every _layers directory with a link file, as read by the caller."""
        self._layer_links = states
        self._layers_complete = True
        self.layers_unreadable = unreadable

    def read_link(self, dir_fd, dir_path, entry, expected_hex):
        """(state, reason) of <dir>/<entry>/link; an unreadable one is reported as a scan error."""
        state, _target, reason = read_link_at(dir_fd, entry + "/link", expected_hex)
        if state == LINK_OK:
            return LINK_OK_STATE
        if state == LINK_UNREADABLE:
            self.errors.add(os.path.join(dir_path, entry, "link"), reason + "; not judged")
        return state, reason

    def load_revisions(self):
        if self._revisions_loaded:
            return
        self._revisions_loaded = True
        dir_fd, refused = open_subdir_checked(self.fd, ("_manifests", "revisions", "sha256"), self.path, self.errors)
        self.revisions_unreadable = refused
        if dir_fd is None:
            return
        try:
            for entry, is_dir, _is_link in iter_link_dirs(dir_fd):
                if not is_dir or not is_hex_digest(entry):
                    continue  # reported by the blob scan; the registry cannot address it
                state = self.read_link(dir_fd, self.revisions_dir, entry, entry)
                if state[0] != LINK_MISSING:
                    self.revisions[entry] = state
        except OSError as exc:
            self.errors.add(self.revisions_dir, "cannot list directory: %s" % (exc.strerror or exc))
            self.revisions_unreadable = True
        finally:
            close_fd(dir_fd)

    def revision_state(self, hex_digest):
        state = self.revisions.get(hex_digest)
        if state is None:
            return LINK_UNREADABLE_STATE if self.revisions_unreadable else LINK_MISSING_STATE
        return state

    def _load_layer_dirs(self):
        self._layer_dirs = set()
        self._layers_fd, refused = open_subdir_checked(self.fd, ("_layers", "sha256"), self.path, self.errors)
        self.layers_unreadable = refused
        if self._layers_fd is not None:
            try:
                self._layer_dirs = {name for name, is_dir, _link in iter_link_dirs(self._layers_fd) if is_dir}
            except OSError as exc:
                self.errors.add(self.layers_dir, "cannot list directory: %s" % (exc.strerror or exc))
                self.layers_unreadable = True

    def layer_state(self, hex_digest):
        state = self._layer_links.get(hex_digest)
        if state is None:
            if self._layers_complete:
                return LINK_UNREADABLE_STATE if self.layers_unreadable else LINK_MISSING_STATE
            if self._layer_dirs is None:
                self._load_layer_dirs()
            if self.layers_unreadable:
                return LINK_UNREADABLE_STATE
            if hex_digest not in self._layer_dirs:
                state = LINK_MISSING_STATE  # absent, or a symlink (reported by the blob scan)
            else:
                state = self.read_link(self._layers_fd, self.layers_dir, hex_digest, hex_digest)
            self._layer_links[hex_digest] = state
        return state

    def mark_linked(self, kind, hex_digest):
        """Record a link written by a repair."""
        if kind == "revision":
            self.revisions[hex_digest] = LINK_OK_STATE
        else:
            if self._layer_dirs is not None:
                self._layer_dirs.add(hex_digest)
            self._layer_links[hex_digest] = LINK_OK_STATE

    def revision_path(self, hex_digest):
        return os.path.join(self.revisions_dir, hex_digest, "link")

    def layer_path(self, hex_digest):
        return os.path.join(self.layers_dir, hex_digest, "link")

    def read_tags(self, with_updated=False):
        """{tag: TagLink} for every tag directory of the repository.

        A tag directory that is a symlink (the registry would follow it and serve the tag) or
        cannot be opened is a tag in state LINK_UNREADABLE: it exists, nobody can say what it
        protects. ``tags_unreadable`` says whether the tags directory itself could not be read.
        """
        tags_dir = os.path.join(self.path, "_manifests", "tags")
        dir_fd, self.tags_unreadable = open_subdir_checked(self.fd, ("_manifests", "tags"), self.path, self.errors)
        tags = {}
        if dir_fd is None:
            return tags
        try:
            for tag, is_dir, is_link in iter_link_dirs(dir_fd):
                tag_path = os.path.join(tags_dir, tag)
                link_path = os.path.join(tag_path, "current", "link")
                if not is_utf8(tag):
                    self.errors.add(tag_path, "tag name is not valid UTF-8 (shown with \\x escapes)")
                if is_link:
                    self.errors.add(tag_path, "symlink not followed")
                    tags[tag] = TagLink(LINK_UNREADABLE, None, "tag directory is a symlink (not followed)",
                                        link_path, None)
                    continue
                if not is_dir:
                    continue
                current_fd, refused = open_subdir_checked(dir_fd, (tag, "current"), tags_dir, self.errors)
                if current_fd is None:
                    if refused:
                        tags[tag] = TagLink(LINK_UNREADABLE, None, "tag directory could not be read", link_path,
                                            None)
                    else:
                        tags[tag] = TagLink(LINK_MISSING, None, "tag has no current link", link_path, None)
                    continue
                try:
                    state, target, reason = read_link_at(current_fd, "link", None)
                    updated = None
                    if state == LINK_UNREADABLE:
                        self.errors.add(link_path, reason + "; not judged")
                    elif with_updated and state != LINK_MISSING:
                        updated = os.stat("link", dir_fd=current_fd, follow_symlinks=False).st_mtime
                finally:
                    close_fd(current_fd)
                tags[tag] = TagLink(state, target, reason, link_path, updated)
        except OSError as exc:
            self.errors.add(tags_dir, "cannot list directory: %s" % (exc.strerror or exc))
            self.tags_unreadable = True
        finally:
            close_fd(dir_fd)
        return tags


def walk_registry(name, v2_root, make_scanners):
    """Walk one registry once for every scanner that ``make_scanners(blobs, errors)`` returns.

    A scanner has ``add_repository(repo_name, repo)``, called in list order for each
    repository (so a blob scan placed first hands the links it read to an audit after it),
    and ``finish()``, called once the last repository is done. ``v2_root`` None is a registry
    that holds nothing yet: no repository, every scanner finishes clean.
    """
    errors = ScanErrors(name)
    with registry_storage(name, v2_root, errors) as (v2_fd, blobs):
        scanners = make_scanners(blobs, errors)
        for repo_name, repo in iter_repository_links(v2_fd, v2_root, errors):
            for scanner in scanners:
                scanner.add_repository(repo_name, repo)
        for scanner in scanners:
            scanner.finish()


def iter_repository_links(v2_fd, v2_root, errors):
    """Yield (repo_name, RepositoryLinks) for every repository, each closed when the caller moves on."""
    for repo_name, repo_path, repo_fd in iter_repositories(v2_fd, v2_root, errors):
        repo = RepositoryLinks(repo_path, repo_fd, errors)
        try:
            yield repo_name, repo
        finally:
            repo.close()
