# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read-only access to a distribution registry's filesystem storage.

Pure Python with no Ansible import, so the same code runs inside modules and in the
scanner CLI on the registry VM. Symlinks are never followed: every open and stat is
relative to a directory descriptor with O_NOFOLLOW / follow_symlinks=False, and
entries are classified from their d_type before anything is opened.
"""

import contextlib
import errno
import os
import re
import stat

LAYOUT = os.path.join("docker", "registry", "v2")
REPO_MARKERS = frozenset(("_layers", "_manifests", "_uploads"))
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
# A valid link file is exactly "sha256:" + 64 hex; anything bigger is garbage, read no more.
LINK_READ_BYTES = 256
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})\Z")

_O_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
_O_FILE = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)

# Blob data states (cached per registry, one stat per distinct digest). Small ints, so a
# million cached states cost no int objects.
DATA_PRESENT = 1  # a regular file with content
DATA_EMPTY = 0  # a regular file of 0 bytes
BLOB_MISSING = -1  # blob directory present, data file absent
BLOB_NOT_REGULAR = -2  # data is a directory, symlink or device
BLOB_UNREADABLE = -3  # cannot tell: permission denied or a symlinked directory on the way
BLOB_DIR_MISSING = -4  # not even the blob directory
BLOB_GONE_STATES = frozenset((BLOB_MISSING, BLOB_NOT_REGULAR, BLOB_DIR_MISSING))
_BLOB_REASONS = {
    BLOB_MISSING: "blob data missing",
    BLOB_NOT_REGULAR: "blob data is not a regular file",
    BLOB_DIR_MISSING: "blob directory missing",
    BLOB_UNREADABLE: "blob data unreadable",
}

# Link states.
LINK_OK = "present"
LINK_MISSING = "missing"
LINK_INVALID = "invalid"


class ScanError(Exception):
    """Bad input that stops a scan: reported to the operator as a plain message."""


def is_hex_digest(name):
    return len(name) == 64 and _HEX64.match(name) is not None


def digest_of(hex_digest):
    return "sha256:" + hex_digest


class BlobTooLarge(Exception):
    """The blob data is larger than the caller's bound; ``size`` says how large."""

    def __init__(self, size):
        super().__init__("blob data is %d bytes" % size)
        self.size = size


class SymlinkRefused(Exception):
    """A path component is a symlink; it is never followed."""


def open_dir(name, dir_fd=None):
    """Open a directory without following a symlink in its last component.

    Returns None when it is absent or not a directory; raises SymlinkRefused for a symlink.
    """
    try:
        return os.open(name, _O_DIR, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        # O_DIRECTORY|O_NOFOLLOW answers ENOTDIR (not ELOOP) for a symlink: tell them apart.
        try:
            if stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                raise SymlinkRefused(name) from None
        except OSError:
            pass
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SymlinkRefused(name) from None
        raise


def close_fd(fd):
    if fd is not None:
        os.close(fd)


def open_subdir(parent_fd, parts, base_path, errors):
    """Open base_path/parts... one component at a time, never following a symlink.

    Returns the descriptor, or None when a component is absent; a symlinked component is
    reported in ``errors`` and also gives None. ``parent_fd`` stays open.
    """
    fd = parent_fd
    path = base_path
    try:
        for part in parts:
            path = os.path.join(path, part)
            try:
                child = open_dir(part, dir_fd=fd)
            except SymlinkRefused:
                errors.add(path, "symlink not followed")
                child = None
            except OSError as exc:
                errors.add(path, "cannot open directory: %s" % (exc.strerror or exc))
                child = None
            if fd != parent_fd:
                os.close(fd)
            fd = child
            if fd is None:
                return None
        return fd
    except BaseException:
        if fd is not None and fd != parent_fd:
            os.close(fd)
        raise


def find_registries(path):
    """Return [(name, v2_root)] for the registries under ``path``, sorted by name."""
    if not isinstance(path, str) or not path:
        raise ScanError("path must be a non-empty string")
    path = os.path.abspath(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise ScanError("path %s does not exist" % path) from None
    except OSError as exc:
        raise ScanError("cannot read path %s: %s" % (path, exc.strerror)) from None
    if stat.S_ISLNK(st.st_mode):
        raise ScanError("path %s is a symlink; give the real directory (symlinks are never followed)" % path)
    if not stat.S_ISDIR(st.st_mode):
        raise ScanError("path %s is not a directory" % path)
    if _has_layout(path):
        return [(os.path.basename(path.rstrip(os.sep)) or path, os.path.join(path, LAYOUT))]
    try:
        names = sorted(os.listdir(path))
    except OSError as exc:
        raise ScanError("cannot list path %s: %s" % (path, exc.strerror)) from None
    found = []
    for name in names:
        base = os.path.join(path, name)
        if os.path.islink(base):
            continue
        if _has_layout(base):
            found.append((name, os.path.join(base, LAYOUT)))
    return found


def select_registries(path, wanted):
    """Registries under ``path`` restricted to ``wanted`` names (None: all)."""
    found = find_registries(path)
    if wanted is None:
        return found
    by_name = dict(found)
    unknown = [name for name in wanted if name not in by_name]
    if unknown:
        raise ScanError(
            "registry %s not found under %s (registries there: %s)"
            % (", ".join(sorted(unknown)), os.path.abspath(path), ", ".join(sorted(by_name)) or "none")
        )
    return [(name, by_name[name]) for name in sorted(set(wanted))]


def _has_layout(base):
    """True if base/docker/registry/v2 exists as real directories (no symlinked component)."""
    current = base
    for part in LAYOUT.split(os.sep):
        current = os.path.join(current, part)
        try:
            st = os.lstat(current)
        except OSError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            return False
    return True


class ScanErrors:
    """Problems met while walking that are not findings of a damage class."""

    def __init__(self, registry):
        self.registry = registry
        self.items = []
        self._seen = set()

    def add(self, path, message):
        if (path, message) not in self._seen:
            self._seen.add((path, message))
            self.items.append({"registry": self.registry, "path": path, "error": message})


def open_registry(v2_root):
    """Descriptor of a registry's docker/registry/v2 directory (checked by find_registries)."""
    try:
        fd = open_dir(v2_root)
    except SymlinkRefused:
        fd = None
    if fd is None:
        raise ScanError("%s is not a directory (it changed during the scan?)" % v2_root)
    return fd


@contextlib.contextmanager
def registry_storage(name, v2_root, errors):
    """(v2 descriptor, BlobStore) of one registry while it is worked on.

    An OSError nobody handled below becomes a ScanError naming the registry and the path.
    """
    v2_fd = open_registry(v2_root)
    blobs = None
    try:
        blobs = BlobStore(name, v2_fd, v2_root, errors)
        yield v2_fd, blobs
    except OSError as exc:
        raise ScanError("registry %s: cannot read %s: %s" % (name, exc.filename or v2_root, exc.strerror or exc)) \
            from None
    finally:
        if blobs is not None:
            blobs.close()
        close_fd(v2_fd)


def iter_repositories(v2_fd, v2_root, errors):
    """Yield (repo_name, repo_path, repo_fd) for every repository under v2/repositories.

    A repository is any directory holding _layers, _manifests or _uploads; names nest
    (``team/app``). Symlinked directories are reported and never entered. ``repo_fd`` is
    valid only until the generator resumes.
    """
    top = os.path.join(v2_root, "repositories")
    fd = open_subdir(v2_fd, ("repositories",), v2_root, errors)
    if fd is None:
        return
    try:
        yield from _walk_repositories("", top, fd, errors)
    finally:
        os.close(fd)


def _walk_repositories(name, path, fd, errors):
    try:
        entries = list(iter_link_dirs(fd))
    except OSError as exc:
        errors.add(path, "cannot list directory: %s" % (exc.strerror or exc))
        return
    names = set()
    children = []
    for entry_name, is_dir, is_link in entries:
        names.add(entry_name)
        if is_link:
            errors.add(os.path.join(path, entry_name), "symlink not followed")
        elif is_dir and not entry_name.startswith("_"):
            children.append(entry_name)
    if name and not REPO_MARKERS.isdisjoint(names):
        yield name, path, fd
    for child in sorted(children):
        child_path = os.path.join(path, child)
        try:
            child_fd = open_dir(child, dir_fd=fd)
        except SymlinkRefused:
            errors.add(child_path, "symlink not followed")
            continue
        except OSError as exc:
            errors.add(child_path, "cannot open directory: %s" % (exc.strerror or exc))
            continue
        if child_fd is None:
            continue  # removed while we walked
        try:
            yield from _walk_repositories(name + "/" + child if name else child, child_path, child_fd, errors)
        finally:
            os.close(child_fd)


def read_link_at(dir_fd, rel_path, expected_hex):
    """Read a link file relative to ``dir_fd``.

    Returns (state, target_hex, reason): state LINK_OK / LINK_MISSING / LINK_INVALID.
    ``expected_hex`` None accepts any digest (tag current links).
    """
    try:
        fd = os.open(rel_path, _O_FILE, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        return LINK_MISSING, None, "link file missing"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return LINK_INVALID, None, "link file is a symlink (not followed)"
        return LINK_INVALID, None, "link file unreadable: %s" % (exc.strerror or exc)
    try:
        content = os.read(fd, LINK_READ_BYTES)
    except OSError as exc:
        if exc.errno == errno.EISDIR:
            return LINK_INVALID, None, "link is a directory, not a file"
        return LINK_INVALID, None, "link file unreadable: %s" % (exc.strerror or exc)
    finally:
        os.close(fd)
    if expected_hex is not None and len(content) == 71 and content[7:] == expected_hex.encode("ascii") \
            and content[:7] == b"sha256:":
        return LINK_OK, expected_hex, None
    return classify_link_content(content, expected_hex)


def classify_link_content(content, expected_hex):
    if not content:
        return LINK_INVALID, None, "link file is empty"
    try:
        text = content.decode("ascii")
    except UnicodeDecodeError:
        return LINK_INVALID, None, "link file is not a sha256 digest"
    match = _DIGEST.match(text)
    if match is None:
        return LINK_INVALID, None, "link file is not a sha256 digest"
    target = match.group(1)
    if expected_hex is not None and target != expected_hex:
        return LINK_INVALID, target, "link file names sha256:%s, not its directory" % target
    return LINK_OK, target, None


def iter_link_dirs(dir_fd):
    """Yield (name, is_dir, is_symlink) for the entries of a directory, from d_type alone."""
    with os.scandir(dir_fd) as it:
        for entry in it:
            yield entry.name, entry.is_dir(follow_symlinks=False), entry.is_symlink()


class BlobStore:
    """Blob data of one registry, each digest stat'ed at most once.

    Every access goes blobs/sha256/<xx>/<hex>/data relative to a cached descriptor of the
    prefix directory, whose listing (read once, d_type only) says which <hex> entries are
    symlinks: those are never followed. States are cached under the 32-byte digest, half
    the memory of the hex text.
    """

    _REFUSED = -1

    def __init__(self, name, v2_fd, v2_root, errors):
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

    def close(self):
        for fd in self._prefixes.values():
            if fd is not None and fd != self._REFUSED:
                os.close(fd)
        self._prefixes = {}
        close_fd(self.fd)
        self.fd = None

    def data_path(self, hex_digest):
        return os.path.join(self.root, hex_digest[:2], hex_digest, "data")

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
        """Stat again, bypassing every cache (used right before a repair)."""
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
                self.errors.add(os.path.join(self.root, prefix), "symlink not followed")
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
                for name, is_dir, is_link in iter_link_dirs(prefix_fd):
                    if is_link:
                        links.add(name)
                    elif not is_dir:
                        others.add(name)
                listing = (frozenset(links) or self._NO_NAMES, frozenset(others) or self._NO_NAMES)
            self._listings[prefix] = listing
        return listing

    def _stat(self, hex_digest):
        """One stat of the data file: the listing already told that the blob dir is no symlink."""
        listing = self._listing(hex_digest[:2])
        if listing is None:
            return BLOB_DIR_MISSING
        if listing == self._REFUSED:
            return BLOB_UNREADABLE
        links, others = listing
        if hex_digest in links:
            self.errors.add(os.path.dirname(self.data_path(hex_digest)), "symlink not followed")
            return BLOB_UNREADABLE
        if hex_digest in others:
            return BLOB_DIR_MISSING
        prefix_fd = self._prefixes[hex_digest[:2]]
        state = self._stat_data(prefix_fd, hex_digest)
        if state == BLOB_MISSING:
            # Rare (damage only): one more stat tells a missing data file from a missing blob dir.
            try:
                if not stat.S_ISDIR(os.stat(hex_digest, dir_fd=prefix_fd, follow_symlinks=False).st_mode):
                    return BLOB_DIR_MISSING
            except (FileNotFoundError, NotADirectoryError):
                return BLOB_DIR_MISSING
            except OSError:
                return BLOB_UNREADABLE
        return state

    def _stat_fresh(self, hex_digest):
        prefix_fd = self._prefix_fd(hex_digest[:2])
        if prefix_fd is None:
            return BLOB_DIR_MISSING
        if prefix_fd == self._REFUSED:
            return BLOB_UNREADABLE
        try:
            st = os.stat(hex_digest, dir_fd=prefix_fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return BLOB_DIR_MISSING
        except OSError:
            return BLOB_UNREADABLE
        if stat.S_ISLNK(st.st_mode):
            self.errors.add(os.path.dirname(self.data_path(hex_digest)), "symlink not followed")
            return BLOB_UNREADABLE
        if not stat.S_ISDIR(st.st_mode):
            return BLOB_DIR_MISSING
        return self._stat_data(prefix_fd, hex_digest)

    @staticmethod
    def _stat_data(prefix_fd, hex_digest):
        try:
            st = os.stat(hex_digest + "/data", dir_fd=prefix_fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return BLOB_MISSING
        except OSError:
            return BLOB_UNREADABLE
        if not stat.S_ISREG(st.st_mode):
            return BLOB_NOT_REGULAR
        return DATA_PRESENT if st.st_size > 0 else DATA_EMPTY

    def open_data(self, hex_digest):
        """Descriptor of the blob's data file (OSError if it cannot be opened safely)."""
        prefix_fd = self._prefix_fd(hex_digest[:2])
        if prefix_fd is None or prefix_fd == self._REFUSED:
            raise FileNotFoundError(errno.ENOENT, "blob directory missing", self.data_path(hex_digest))
        links, _others = self._listing(hex_digest[:2])
        if hex_digest in links:
            raise OSError(errno.ELOOP, "symlink not followed", os.path.dirname(self.data_path(hex_digest)))
        # The listing says <hex> is no symlink, so one open relative to the prefix is safe.
        return os.open(hex_digest + "/data", _O_FILE, dir_fd=prefix_fd)

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

    def iter_all(self):
        """Yield the hex digest of every blob directory (for the full scrub)."""
        if self.fd is None:
            return
        prefixes = sorted(name for name, is_dir, _link in iter_link_dirs(self.fd) if is_dir and len(name) == 2)
        for prefix in prefixes:
            prefix_fd = self._prefix_fd(prefix)
            if prefix_fd is None or prefix_fd == self._REFUSED:
                continue
            names = sorted(name for name, is_dir, _link in iter_link_dirs(prefix_fd) if is_dir)
            for name in names:
                if is_hex_digest(name) and name.startswith(prefix):
                    yield name


# Writing. Only repairs and tag cleanup write, always relative to descriptors opened
# without following symlinks, and new files take the owner of the directory they land in.

LINK_MODE = 0o644
DIR_MODE = 0o755


def make_dirs_at(parent_fd, parts):
    """mkdir -p parts... below parent_fd without following symlinks; returns a descriptor of the last."""
    fd = parent_fd
    owner = os.fstat(parent_fd)
    try:
        for part in parts:
            try:
                os.mkdir(part, DIR_MODE, dir_fd=fd)
                _chown_like(part, fd, owner)
            except FileExistsError:
                pass
            child = open_dir(part, dir_fd=fd)
            if child is None:
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", part)
            if fd != parent_fd:
                os.close(fd)
            fd = child
        return fd
    except BaseException:
        if fd != parent_fd:
            os.close(fd)
        raise


def write_link_at(dir_fd, hex_digest):
    """Write <dir_fd>/link = sha256:<hex> atomically (temp file + rename), as the registry would."""
    owner = os.fstat(dir_fd)
    tmp_name = ".link.regwarden.%d" % os.getpid()
    fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_FILE, LINK_MODE, dir_fd=dir_fd)
    try:
        os.write(fd, digest_of(hex_digest).encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    _chown_like(tmp_name, dir_fd, owner)
    os.rename(tmp_name, "link", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def remove_link_dir_at(parent_fd, name):
    """Remove <name>/link and then <name> if it is empty; True if the link file was removed."""
    try:
        os.unlink(name + "/link", dir_fd=parent_fd)
    except (FileNotFoundError, NotADirectoryError):
        return False
    try:
        os.rmdir(name, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
            raise
    return True


def rmtree_at(parent_fd, name):
    """rm -r parent/name without following symlinks (a symlink inside is unlinked, never entered)."""
    fd = open_dir(name, dir_fd=parent_fd)
    if fd is None:
        return
    try:
        for entry, is_dir, is_link in list(iter_link_dirs(fd)):
            if is_dir and not is_link:
                rmtree_at(fd, entry)
            else:
                os.unlink(entry, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)


def _chown_like(name, dir_fd, owner):
    if os.geteuid() == 0 and (owner.st_uid, owner.st_gid) != (0, 0):
        os.chown(name, owner.st_uid, owner.st_gid, dir_fd=dir_fd, follow_symlinks=False)
