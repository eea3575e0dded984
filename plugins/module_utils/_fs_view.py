# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The read-only storage view of one filesystem registry: what every analysis reads.

A view gives the analyses, without their calling ``os`` themselves:

- ``repositories()``: every repository (FsRepository), walked iteratively, symlinks never entered;
- per repository: its link listings (``open_links(kind)``: entries, each link's state), its
  revisions and ``_layers`` links by digest (each read at most once), its tags, and the handles
  the writer works in (``dir_handle``, ``write_base``);
- ``blobs``: the blob store (each digest stat'ed at most once, content read to a bound, hashed).

It reads only; the writer (_writer) changes storage. FilesystemStorage (at the end) is what the
driver is given: discovery, the view, the lock and the writer of one backend; a second backend
implements the same names.
"""

import collections
import contextlib
import errno
import hashlib
import os
import stat

from ansible_collections.regwarden.registry.plugins.module_utils._discovery import select_registries
from ansible_collections.regwarden.registry.plugins.module_utils._storage import (
    BLOB_DIR_MISSING,
    BLOB_MISSING,
    BLOB_NOT_REGULAR,
    BLOB_UNREADABLE,
    DATA_EMPTY,
    DATA_PRESENT,
    LINK_MISSING,
    LINK_OK,
    LINK_UNREADABLE,
    MAX_REPOSITORY_NAME,
    REPO_MARKERS,
    BlobTooLarge,
    ScanError,
    SymlinkRefused,
    TagsReadOnce,
    close_fd,
    is_hex_digest,
    is_utf8,
    iter_link_dirs,
    open_dir,
    open_regular,
    open_subdir,
    open_subdir_checked,
    read_link_at,
    try_open_dir,
)
from ansible_collections.regwarden.registry.plugins.module_utils._writer import StorageWriter, registry_lock

# A tag's current link: state/target/reason as read_link_at gives them, the link's path and
# its mtime (when the tag was last pushed; None when there is no link file).
TagLink = collections.namedtuple("TagLink", "state target reason path updated")

# (state, reason) of a link; the common ones shared rather than built per link.
LINK_OK_STATE = (LINK_OK, None)
LINK_MISSING_STATE = (LINK_MISSING, None)
LINK_UNREADABLE_STATE = (LINK_UNREADABLE, "its directory could not be read")
LINK_DIRS = {
    "layer": ("_layers", "sha256"),
    "revision": ("_manifests", "revisions", "sha256"),
}
_DIRECTORIES = dict(LINK_DIRS, tags=("_manifests", "tags"))
HASH_CHUNK = 1 << 20
_BLOB_REASONS = {
    BLOB_MISSING: "blob data missing",
    BLOB_NOT_REGULAR: "blob data is not a regular file",
    BLOB_DIR_MISSING: "blob directory missing",
    BLOB_UNREADABLE: "blob data unreadable",
}


@contextlib.contextmanager
def open_registry_view(name, v2_root, errors):
    """The view of one registry while it is worked on: (repositories iterator factory, BlobStore).

    ``v2_root`` None (a registry nothing was stored in yet) has no repository and no blob store.
    An OSError nobody handled below becomes a ScanError naming the registry and the path.
    """
    view = FsRegistryView(name, v2_root, errors)
    try:
        yield view
    except OSError as exc:
        raise ScanError("registry %s: cannot read %s: %s" % (name, exc.filename or v2_root, exc.strerror or exc)) \
            from None
    finally:
        view.close()


class FsRegistryView:
    """One registry on a filesystem: its repositories and its blob store."""

    def __init__(self, name, v2_root, errors):
        self.name = name
        self.v2_root = v2_root
        self.errors = errors
        self.v2_fd = None
        self.blobs = None
        if v2_root is None:
            return
        self.v2_fd = _open_v2(v2_root)
        try:
            self.blobs = BlobStore(name, self.v2_fd, v2_root, errors)
        except BaseException:
            self.close()
            raise

    def close(self):
        if self.blobs is not None:
            self.blobs.close()
            self.blobs = None
        close_fd(self.v2_fd)
        self.v2_fd = None

    def repositories(self):
        """Yield every FsRepository, each closed when the caller moves on."""
        for repo_name, repo_path, repo_fd in iter_repositories(self.v2_fd, self.v2_root, self.errors):
            repo = FsRepository(repo_name, repo_path, repo_fd, self.errors)
            try:
                yield repo
            finally:
                repo.close()


class LinkListing:
    """The entries of one link directory of a repository, open while it is worked on.

    ``handle``: the directory's descriptor, what the writer removes links in (None when absent).
    ``unreadable``: it could not be opened or listed (a scan error says why; nothing judged).
    """

    def __init__(self, repo, kind):
        self.repo = repo
        self.kind = kind
        parts = LINK_DIRS[kind]
        self.path = os.path.join(repo.path, *parts)
        self.handle, self.unreadable = open_subdir_checked(repo.fd, parts, repo.path, repo.errors)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        close_fd(self.handle)
        self.handle = None

    def entries(self):
        """[(name, is_dir, is_symlink)] from d_type, or None when the directory is absent or
        cannot be listed (then ``unreadable`` is set and a scan error says why)."""
        if self.handle is None:
            return None
        try:
            return list(iter_link_dirs(self.handle))
        except OSError as exc:
            self.repo.errors.add(self.path, "cannot list directory: %s; its links not judged" % (exc.strerror or exc))
            self.unreadable = True
            return None

    def read(self, name):
        """(state, reason) of <name>/link, which must name ``name``."""
        state, _target, reason = read_link_at(self.handle, name + "/link", name)
        if state == LINK_OK:
            return LINK_OK_STATE
        if state == LINK_UNREADABLE:
            self.repo.errors.add(os.path.join(self.path, name, "link"), reason + "; not judged")
        return state, reason


def _open_v2(v2_root):
    """Descriptor of a registry's docker/registry/v2 directory (checked by discovery)."""
    try:
        fd = open_dir(v2_root)
    except SymlinkRefused:
        fd = None
    except OSError as exc:
        raise ScanError("cannot open %s: %s" % (v2_root, exc.strerror or exc)) from None
    if fd is None:
        raise ScanError("%s is not a directory (it changed during the scan?)" % v2_root)
    return fd


def iter_repositories(v2_fd, v2_root, errors):
    """Yield (repo_name, repo_path, repo_fd) for every repository under v2/repositories.

    A repository is any directory holding _layers, _manifests or _uploads; names nest
    (``team/app``). Symlinked directories are reported and never entered. ``repo_fd`` is
    valid only until the generator resumes. An unreadable or symlinked ``repositories``
    directory is a registry-level error: nothing under it was read.
    """
    if v2_fd is None:
        return
    top = os.path.join(v2_root, "repositories")
    fd, problem = try_open_dir("repositories", v2_fd)
    if problem:
        errors.fatal(top, problem + ": no repository was read")
        return
    if fd is None:
        return  # nothing pushed yet
    # Depth-first, children in name order, each directory listed once; the descriptors of the
    # directories on the current path stay open (at most MAX_REPOSITORY_NAME / 2 of them).
    frames = [("", top, fd, iter(_repository_children(top, fd, errors, top=True)[1]))]
    try:
        while frames:
            name, path, dir_fd, pending = frames[-1]
            child = next(pending, None)
            if child is None:
                frames.pop()
                os.close(dir_fd)
                continue
            child_name = name + "/" + child if name else child
            child_path = os.path.join(path, child)
            if len(child_name) > MAX_REPOSITORY_NAME:
                errors.add(child_path, "nested deeper than a repository name can be (%d characters): not entered"
                           % MAX_REPOSITORY_NAME)
                continue
            child_fd, problem = try_open_dir(child, dir_fd)
            if problem:
                errors.add(child_path, problem)
                continue
            if child_fd is None:
                continue  # removed while we walked
            is_repo, children = _repository_children(child_path, child_fd, errors)
            frames.append((child_name, child_path, child_fd, iter(children)))
            if is_repo:
                if not is_utf8(child):
                    errors.add(child_path, "directory name is not valid UTF-8 (shown with \\x escapes); "
                                           "no client can address this repository")
                yield child_name, child_path, child_fd
    finally:
        for _name, _path, dir_fd, _pending in frames:
            os.close(dir_fd)


def _repository_children(path, fd, errors, top=False):
    """(is a repository, sorted names of the subdirectories to walk) of one directory."""
    try:
        entries = list(iter_link_dirs(fd))
    except OSError as exc:
        report = errors.fatal if top else errors.add
        report(path, "cannot list directory: %s" % (exc.strerror or exc))
        return False, []
    names = set()
    children = []
    for entry_name, is_dir, is_link in entries:
        names.add(entry_name)
        if is_link:
            errors.add(os.path.join(path, entry_name), "symlink not followed")
        elif is_dir and not entry_name.startswith("_"):
            children.append(entry_name)
    children.sort()
    return not top and not REPO_MARKERS.isdisjoint(names), children


class FsRepository(TagsReadOnce):
    """Link state of one repository, read lazily and at most once per link.

    When the blob scan walks the same repository first (one process running both scans),
    it hands over every link it read (record_*), and nothing is read twice. A link directory
    that could not be read makes every link in it LINK_UNREADABLE (not judged), never missing.
    """

    def __init__(self, name, path, fd, errors):
        self.name = name
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

    # -- what the analyses and the writer work with -------------------------------------------

    def open_links(self, kind):
        """The entries of this repository's ``kind`` ("layer", "revision") link directory."""
        return LinkListing(self, kind)

    @contextlib.contextmanager
    def directory(self, which):
        """A handle of the repository's ``which`` ("tags", "revision", "layer") directory for the
        writer: its descriptor, or None when it cannot be opened (the writer refuses None, so
        nothing is ever done relative to the working directory)."""
        handle = open_subdir(self.fd, _DIRECTORIES[which], self.path, self.errors)
        try:
            yield handle
        finally:
            close_fd(handle)

    @property
    def tags_dir(self):
        return os.path.join(self.path, "_manifests", "tags")

    @property
    def write_base(self):
        """Where the writer creates link directories: (descriptor, path) of the repository."""
        return self.fd, self.path

    def revision_mtime(self, revisions_handle, hex_digest):
        """When the revision link of ``hex_digest`` was written (None when unknown)."""
        try:
            return os.stat(hex_digest + "/link", dir_fd=revisions_handle, follow_symlinks=False).st_mtime
        except (OSError, TypeError):
            return None

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

    def upload_entries(self):
        """[(bytes of data, start time or None)] of every upload session left in _uploads.

        Sessions are directories; their ``data`` and ``startedat`` are stat'ed, never followed or read.
        """
        uploads_path = os.path.join(self.path, "_uploads")
        dir_fd, _refused = open_subdir_checked(self.fd, ("_uploads",), self.path, self.errors)
        if dir_fd is None:
            return []
        entries = []
        try:
            for name, is_dir, _is_link in iter_link_dirs(dir_fd):
                if not is_dir:
                    continue  # a symlink or a stray file is no upload session the registry resumes
                size, started = 0, None
                for part in ("data", "startedat"):
                    try:
                        st = os.stat(name + "/" + part, dir_fd=dir_fd, follow_symlinks=False)
                    except (FileNotFoundError, NotADirectoryError):
                        continue
                    except OSError as exc:
                        self.errors.add(os.path.join(uploads_path, name, part), "cannot stat: %s"
                                        % (exc.strerror or exc))
                        continue
                    if part == "data" and stat.S_ISREG(st.st_mode):
                        size = st.st_size
                    elif part == "startedat":
                        started = st.st_mtime
                entries.append((size, started))
        except OSError as exc:
            self.errors.add(uploads_path, "cannot list directory: %s" % (exc.strerror or exc))
        finally:
            close_fd(dir_fd)
        return entries

    def revision_path(self, hex_digest):
        return os.path.join(self.revisions_dir, hex_digest, "link")

    def layer_path(self, hex_digest):
        return os.path.join(self.layers_dir, hex_digest, "link")

    def _read_tags(self, with_updated):
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


class BlobStore:
    """Blob data of one registry, each digest stat'ed at most once.

    Every access goes blobs/sha256/<xx>/<hex>/data relative to a cached descriptor of the
    prefix directory, whose listing (read once, d_type only) says which <hex> entries are
    symlinks: those are never followed. States are cached under the 32-byte digest, half
    the memory of the hex text. A prefix directory that cannot be read leaves its blobs
    unreadable (not judged), never missing.
    """

    _REFUSED = -1

    def __init__(self, name, v2_fd, v2_root, errors):
        self.manifest_cache = None  # the walk's ManifestCache (_repository.ManifestCache.of)
        self.name = name
        self.errors = errors
        self.root = os.path.join(v2_root, "blobs", "sha256")
        try:
            blobs_fd = open_dir("blobs", dir_fd=v2_fd)
            self.fd = None
            if blobs_fd is not None:
                try:
                    self.fd = open_dir("sha256", dir_fd=blobs_fd)
                finally:
                    os.close(blobs_fd)
        except SymlinkRefused:
            raise ScanError("registry %s: the blob store %s or its parent is a symlink; symlinks are never "
                            "followed, give the real storage path" % (name, self.root)) from None
        except OSError as exc:
            raise ScanError("registry %s: cannot open the blob store %s: %s"
                            % (name, self.root, exc.strerror or exc)) from None
        self._prefixes = {}
        self._listings = {}  # prefix -> (symlinked names, other non-directories) of that directory
        self._states = {}  # 32-byte digest -> DATA_* / BLOB_* state
        self._sizes = None  # 32-byte digest -> size of the data file, once keep_sizes() asked for them

    def close(self):
        for fd in self._prefixes.values():
            if fd is not None and fd != self._REFUSED:
                os.close(fd)
        self._prefixes = {}
        close_fd(self.fd)
        self.fd = None

    def data_path(self, hex_digest):
        return os.path.join(self.root, hex_digest[:2], hex_digest, "data")

    def keep_sizes(self):
        """Remember the size of every data file stat'ed from now on (the capacity figures)."""
        if self._sizes is None:
            self._sizes = {}

    def size(self, hex_digest):
        """Bytes of the blob's data (after data_state said it is there; keep_sizes() first)."""
        if self._sizes is None:
            return None
        key = bytes.fromhex(hex_digest)
        if key not in self._sizes:
            self.fresh_data_state(hex_digest)  # stat'ed before keep_sizes(): once more, remembering the size
        return self._sizes.get(key)

    def checked_count(self):
        return len(self._states)

    def data_state(self, hex_digest):
        """DATA_PRESENT, DATA_EMPTY, or one of the BLOB_* states of the blob's data file."""
        key = bytes.fromhex(hex_digest)
        state = self._states.get(key)
        if state is None:
            state = self._stat(hex_digest)
            self._states[key] = state
        return state

    def fresh_data_state(self, hex_digest):
        """Stat again, bypassing every cache (used right before a repair or a removal)."""
        state = self._stat_fresh(hex_digest)
        self._states[bytes.fromhex(hex_digest)] = state
        return state

    def reason(self, hex_digest):
        return _BLOB_REASONS.get(self.data_state(hex_digest), "blob data present")

    def _prefix_fd(self, prefix):
        fd = self._prefixes.get(prefix)
        if fd is None and prefix not in self._prefixes:
            if self.fd is None:
                # Links exist but the whole blob store does not: never conclude "every blob is gone".
                raise ScanError("registry %s: the blob store %s is missing while repositories link blobs "
                                "(is the storage volume mounted?)" % (self.name, self.root))
            try:
                fd = open_dir(prefix, dir_fd=self.fd)
            except SymlinkRefused:
                self.errors.add(os.path.join(self.root, prefix), "symlink not followed; its blobs not judged")
                fd = self._REFUSED
            except OSError as exc:
                self.errors.add(os.path.join(self.root, prefix), "cannot open directory: %s; its blobs not judged"
                                % (exc.strerror or exc))
                fd = self._REFUSED
            self._prefixes[prefix] = fd
        return fd

    _NO_NAMES = frozenset()

    def _listing(self, prefix):
        """(symlinked names, other non-directory names) of one prefix directory, read once with d_type.

        Only the exceptions are kept: a real blob directory is anything else that exists.
        """
        listing = self._listings.get(prefix)
        if listing is None:
            prefix_fd = self._prefix_fd(prefix)
            if prefix_fd is None or prefix_fd == self._REFUSED:
                listing = prefix_fd
            else:
                links = set()
                others = set()
                try:
                    for name, is_dir, is_link in iter_link_dirs(prefix_fd):
                        if is_link:
                            links.add(name)
                        elif not is_dir:
                            others.add(name)
                    listing = (frozenset(links) or self._NO_NAMES, frozenset(others) or self._NO_NAMES)
                except OSError as exc:
                    self.errors.add(os.path.join(self.root, prefix), "cannot list directory: %s; its blobs not "
                                    "judged" % (exc.strerror or exc))
                    listing = self._REFUSED
            self._listings[prefix] = listing
        return listing

    def _stat(self, hex_digest):
        """One stat of the data file: the listing already told whether the blob dir is a symlink."""
        listing = self._listing(hex_digest[:2])
        if listing is None:
            return BLOB_DIR_MISSING
        if listing == self._REFUSED:
            return BLOB_UNREADABLE
        links, others = listing
        entry = "symlink" if hex_digest in links else ("other" if hex_digest in others else None)
        return self._judge(hex_digest, entry)

    def _stat_fresh(self, hex_digest):
        prefix_fd = self._prefix_fd(hex_digest[:2])
        if prefix_fd is None:
            return BLOB_DIR_MISSING
        if prefix_fd == self._REFUSED:
            return BLOB_UNREADABLE
        try:
            mode = os.stat(hex_digest, dir_fd=prefix_fd, follow_symlinks=False).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return BLOB_DIR_MISSING
        except OSError as exc:
            self.errors.add(os.path.dirname(self.data_path(hex_digest)), "cannot stat: %s" % (exc.strerror or exc))
            return BLOB_UNREADABLE
        entry = "symlink" if stat.S_ISLNK(mode) else ("dir" if stat.S_ISDIR(mode) else "other")
        return self._judge(hex_digest, entry)

    def _judge(self, hex_digest, entry):
        """The state of <prefix>/<hex>/data, given what <hex> is ("symlink", "other", "dir" or None:
        a directory or nothing, the listing does not say which)."""
        if entry == "symlink":
            self.errors.add(os.path.dirname(self.data_path(hex_digest)), "symlink not followed")
            return BLOB_UNREADABLE
        if entry == "other":
            return BLOB_DIR_MISSING
        prefix_fd = self._prefixes[hex_digest[:2]]
        state = self._stat_data(prefix_fd, hex_digest)
        if state == BLOB_MISSING and entry is None:
            # Rare (damage only): one more stat tells a missing data file from a missing blob dir.
            try:
                if not stat.S_ISDIR(os.stat(hex_digest, dir_fd=prefix_fd, follow_symlinks=False).st_mode):
                    return BLOB_DIR_MISSING
            except (FileNotFoundError, NotADirectoryError):
                return BLOB_DIR_MISSING
            except OSError as exc:
                self.errors.add(os.path.dirname(self.data_path(hex_digest)), "cannot stat: %s"
                                % (exc.strerror or exc))
                return BLOB_UNREADABLE
        return state

    def _stat_data(self, prefix_fd, hex_digest):
        try:
            st = os.stat(hex_digest + "/data", dir_fd=prefix_fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return BLOB_MISSING
        except OSError as exc:
            self.errors.add(self.data_path(hex_digest), "cannot stat blob data: %s" % (exc.strerror or exc))
            return BLOB_UNREADABLE
        mode = st.st_mode
        if stat.S_ISREG(mode):
            if self._sizes is not None:
                self._sizes[bytes.fromhex(hex_digest)] = st.st_size
            return DATA_PRESENT if st.st_size > 0 else DATA_EMPTY
        if stat.S_ISDIR(mode):
            return BLOB_NOT_REGULAR  # the registry answers "blob unknown" for a directory
        # A symlink the registry would follow, a FIFO or a device: nothing to judge by, and
        # never a reason to call the blob gone (that would unlink what the registry serves).
        self.errors.add(self.data_path(hex_digest), "symlink not followed" if stat.S_ISLNK(mode)
                        else "blob data is not a regular file (a FIFO or device)")
        return BLOB_UNREADABLE

    def open_data(self, hex_digest):
        """Descriptor of the blob's data file (OSError if it cannot be opened safely)."""
        prefix_fd = self._prefix_fd(hex_digest[:2])
        if prefix_fd is None or prefix_fd == self._REFUSED:
            raise FileNotFoundError(errno.ENOENT, "blob directory missing", self.data_path(hex_digest))
        listing = self._listing(hex_digest[:2])
        if listing == self._REFUSED or hex_digest in listing[0]:
            raise OSError(errno.ELOOP, "symlink not followed", os.path.dirname(self.data_path(hex_digest)))
        # The listing says <hex> is no symlink, so one open relative to the prefix is safe.
        return open_regular(hex_digest + "/data", prefix_fd)

    def read(self, hex_digest, limit):
        """The blob's content; BlobTooLarge (nothing read) when its data file is over ``limit`` bytes.

        A file growing meanwhile gives at most ``limit`` + 1 bytes: callers detect oversize content.
        """
        fd = self.open_data(hex_digest)
        try:
            size = os.fstat(fd).st_size
            if size > limit:
                raise BlobTooLarge(size)
            chunks = []
            remaining = limit + 1
            # Manifests are a few KB: a small first read spares allocating (and mapping) 1 MiB each time.
            size = 1 << 16
            while remaining > 0:
                chunk = os.read(fd, min(remaining, size))
                size = 1 << 20
                if not chunk:
                    break
                chunks.append(chunk)
                remaining -= len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def sha256(self, hex_digest):
        """The sha256 of the blob's data (OSError when it cannot be read safely)."""
        fd = self.open_data(hex_digest)
        try:
            digest = hashlib.sha256()
            while True:
                chunk = os.read(fd, HASH_CHUNK)
                if not chunk:
                    break
                digest.update(chunk)
            return digest.hexdigest()
        finally:
            os.close(fd)

    def iter_all(self):
        """Yield the hex digest of every blob directory (for the full scrub)."""
        if self.fd is None:
            return
        prefixes = sorted(name for name, is_dir, _link in iter_link_dirs(self.fd) if is_dir and len(name) == 2)
        for prefix in prefixes:
            prefix_fd = self._prefix_fd(prefix)
            if prefix_fd is None or prefix_fd == self._REFUSED:
                continue
            try:
                names = sorted(name for name, is_dir, _link in iter_link_dirs(prefix_fd) if is_dir)
            except OSError as exc:
                self.errors.add(os.path.join(self.root, prefix), "cannot list directory: %s" % (exc.strerror or exc))
                continue
            for name in names:
                if is_hex_digest(name) and name.startswith(prefix):
                    yield name


class FilesystemStorage:
    """Registries under a filesystem ``path`` (docs/design.md section 2): the backend the drivers
    and analyses are given. ``location`` of a registry is its docker/registry/v2 directory."""

    kind = "filesystem"

    def __init__(self, path):
        self.path = path

    def describe(self):
        return self.path

    def select(self, wanted):
        return select_registries(self.path, wanted)

    def open_registry(self, name, location, errors):
        return open_registry_view(name, location, errors)

    def lock(self, name, location, take):
        return registry_lock(name, location, take)

    def writer(self, apply, cutoff):
        return StorageWriter(apply=apply, cutoff=cutoff)
