# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read-only access to a distribution registry's filesystem storage.

Pure Python with no Ansible import, so the same code runs inside modules and in the
scanner CLI on the registry VM. Nothing here writes: every change goes through _writer.

Symlinks are never followed: every open and stat is relative to a directory descriptor with
O_NOFOLLOW / follow_symlinks=False, and entries are classified from their d_type before
anything is opened. Files are opened with O_NONBLOCK and must be regular files before they
are read, so a FIFO or a device planted in the tree cannot stall a scan. Walks are
iterative: no tree shape can exhaust the interpreter's stack.
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
# distribution refuses repository names over 255 characters (reference.NameTotalLengthMax):
# a directory path longer than that below repositories/ is nothing a registry can serve.
MAX_REPOSITORY_NAME = 255
# Registry directory names the role creates (and the only empty directories taken for registries).
_REGISTRY_NAME = re.compile(r"[a-z0-9]([a-z0-9_-]*[a-z0-9])?\Z")
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})\Z")

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _O_NOFOLLOW | _O_CLOEXEC
_O_FILE = os.O_RDONLY | _O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | _O_CLOEXEC

# Blob data states (cached per registry, one stat per distinct digest). Small ints, so a
# million cached states cost no int objects.
DATA_PRESENT = 1  # a regular file with content
DATA_EMPTY = 0  # a regular file of 0 bytes
BLOB_MISSING = -1  # blob directory present, data file absent
BLOB_NOT_REGULAR = -2  # data is a directory: the registry answers "blob unknown"
BLOB_UNREADABLE = -3  # cannot tell: permission denied, a symlink (the registry would follow it), a FIFO
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
# Could not be read (permission denied, I/O error, a symlinked directory on the way): not judged.
LINK_UNREADABLE = "unreadable"


class ScanError(Exception):
    """Bad input that stops a scan: reported to the operator as a plain message."""


class IncompleteScan(ScanError):
    """Some registry could not be scanned (whole or in part); ``results`` hold what was found
    (one result per analysis run; ``result`` is the first)."""

    def __init__(self, message, results):
        super().__init__(message)
        self.results = results

    @property
    def result(self):
        return self.results[0]


class NotRegularFile(OSError):
    """A name that should be a regular file is something else (FIFO, device, directory)."""


def is_hex_digest(name):
    return len(name) == 64 and _HEX64.match(name) is not None


def digest_of(hex_digest):
    return "sha256:" + hex_digest


def escape_name(text):
    """``text`` as valid UTF-8: bytes that were not UTF-8 become ``\\xNN`` escapes."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def is_utf8(text):
    return escape_name(text) is text


def reportable(value):
    """A result with every string (and dict key) valid UTF-8, as Ansible and JSON need it."""
    if isinstance(value, str):
        return escape_name(value)
    if isinstance(value, dict):
        return {reportable(key): reportable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [reportable(item) for item in value]
    return value


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


def open_regular(name, dir_fd):
    """Descriptor of a regular file, never following a symlink and never blocking on a FIFO.

    Raises NotRegularFile (after closing it) when ``name`` is not a regular file, OSError
    (ELOOP for a symlink) when it cannot be opened.
    """
    fd = os.open(name, _O_FILE, dir_fd=dir_fd)
    try:
        mode = os.fstat(fd).st_mode
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise NotRegularFile(errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL, kind, name)
    return fd


def close_fd(fd):
    if fd is not None:
        os.close(fd)


def open_subdir(parent_fd, parts, base_path, errors, fatal=False):
    """Open base_path/parts... one component at a time, never following a symlink.

    Returns the descriptor, or None when a component is absent; a symlinked or unopenable
    component is reported in ``errors`` (as a registry-level error with ``fatal``) and also
    gives None. ``parent_fd`` stays open. ``unreadable_path`` of the returned error tells
    callers "not judged" from "absent": see open_subdir_checked.
    """
    fd, _refused = open_subdir_checked(parent_fd, parts, base_path, errors, fatal)
    return fd


def open_subdir_checked(parent_fd, parts, base_path, errors, fatal=False):
    """(descriptor or None, refused): ``refused`` is True when a component could not be read."""
    report = errors.fatal if fatal else errors.add
    fd = parent_fd
    path = base_path
    try:
        for part in parts:
            path = os.path.join(path, part)
            try:
                child = open_dir(part, dir_fd=fd)
            except SymlinkRefused:
                report(path, "symlink not followed")
                child = False
            except OSError as exc:
                report(path, "cannot open directory: %s" % (exc.strerror or exc))
                child = False
            if fd != parent_fd:
                os.close(fd)
            if child is None or child is False:
                return None, child is False
            fd = child
        return fd, False
    except BaseException:
        if fd is not None and fd != parent_fd:
            os.close(fd)
        raise


def _path_state(path):
    """"dir", "missing", "symlink" or "other" for path itself, never following it."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return "missing"
    except OSError:
        return "other"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "dir" if stat.S_ISDIR(mode) else "other"


def _layout_state(base):
    """"layout" (base/docker/registry/v2 are real directories), "empty" (no docker/ yet), or a
    reason why base is not a registry one can scan."""
    current = base
    for depth, part in enumerate(LAYOUT.split(os.sep)):
        current = os.path.join(current, part)
        state = _path_state(current)
        if state == "missing":
            return "empty" if depth == 0 else "incomplete layout: %s is missing" % current
        if state == "symlink":
            return "%s is a symlink (symlinks are never followed)" % current
        if state != "dir":
            return "%s is not a directory" % current
    return "layout"


def _check_path(path):
    if not isinstance(path, str) or not path:
        raise ScanError("path must be a non-empty string")
    path = os.path.abspath(path)
    state = _path_state(path)
    if state == "missing":
        raise ScanError("path %s does not exist" % path)
    if state == "symlink":
        raise ScanError("path %s is a symlink; give the real directory (symlinks are never followed)" % path)
    if state != "dir":
        try:
            os.lstat(path)
        except OSError as exc:
            raise ScanError("cannot read path %s: %s" % (path, exc.strerror)) from None
        raise ScanError("path %s is not a directory" % path)
    return path


def _registry_dirs(path):
    """{name: layout state} of the registry directories under ``path`` (symlinks: their reason)."""
    try:
        names = sorted(os.listdir(path))
    except OSError as exc:
        raise ScanError("cannot list path %s: %s" % (path, exc.strerror)) from None
    states = {}
    for name in names:
        base = os.path.join(path, name)
        state = _path_state(base)
        if state == "symlink":
            states[name] = "%s is a symlink (symlinks are never followed)" % base
        elif state == "dir":
            states[name] = _layout_state(base)
    return states


def find_registries(path):
    """Return [(name, v2_root)] for the registries with stored data under ``path``, sorted by name."""
    path = _check_path(path)
    if _layout_state(path) == "layout":
        return [(os.path.basename(path.rstrip(os.sep)) or path, os.path.join(path, LAYOUT))]
    return [(name, os.path.join(path, name, LAYOUT))
            for name, state in _registry_dirs(path).items() if state == "layout"]


def select_registries(path, wanted):
    """(selected, missing) for the registries under ``path`` restricted to ``wanted`` names.

    ``selected``: [(name, v2_root)] sorted by name; v2_root is None for a registry directory
    that holds nothing yet (no docker/ directory: a registry nothing was pushed to or pulled
    through), taken only when asked for by name. ``missing``: {name: reason} of the names asked
    for that cannot be scanned. ``wanted`` None: every registry with stored data; none at all
    is missing too (an unmounted or empty data directory reads as nothing, never as "clean").
    """
    path = _check_path(path)
    if _layout_state(path) == "layout":
        name = os.path.basename(path.rstrip(os.sep)) or path
        states = {name: "layout"}
        v2_of = {name: os.path.join(path, LAYOUT)}
    else:
        states = _registry_dirs(path)
        v2_of = {name: os.path.join(path, name, LAYOUT) for name in states}
    layouts = sorted(name for name, state in states.items() if state == "layout")
    if wanted is None:
        if not layouts:
            return [], {"*": "no registry with stored data under %s (is the data volume mounted?)" % path}
        return [(name, v2_of[name]) for name in layouts], {}
    selected, missing = [], {}
    for name in sorted(set(wanted)):
        state = states.get(name)
        if state == "layout":
            selected.append((name, v2_of[name]))
        elif state == "empty" and _REGISTRY_NAME.match(name):
            selected.append((name, None))
        elif state is None:
            missing[name] = "registry %s not found under %s (registries there: %s)" % (
                name, path, ", ".join(layouts) or "none")
        else:
            missing[name] = "registry %s cannot be scanned: %s" % (name, state)
    return selected, missing


def lock_dir_of(v2_root):
    """The registry's own directory (<path>/<name>), parent of docker/registry/v2: its lock lives there."""
    return os.path.dirname(os.path.dirname(os.path.dirname(v2_root)))


class ScanErrors:
    """Problems met while walking that are not findings of a damage class.

    ``fatal`` ones mean the registry was not read as a whole (a top-level directory could
    not be read): the registry is then reported as incomplete.
    """

    def __init__(self, registry):
        self.registry = registry
        self.items = []
        self._seen = set()
        self.incomplete = False

    def add(self, path, message):
        if (path, message) not in self._seen:
            self._seen.add((path, message))
            self.items.append({"registry": self.registry, "path": path, "error": message})

    def fatal(self, path, message):
        self.incomplete = True
        self.add(path, message)


def open_registry(v2_root):
    """Descriptor of a registry's docker/registry/v2 directory (checked by select_registries)."""
    try:
        fd = open_dir(v2_root)
    except SymlinkRefused:
        fd = None
    except OSError as exc:
        raise ScanError("cannot open %s: %s" % (v2_root, exc.strerror or exc)) from None
    if fd is None:
        raise ScanError("%s is not a directory (it changed during the scan?)" % v2_root)
    return fd


@contextlib.contextmanager
def registry_storage(name, v2_root, errors):
    """(v2 descriptor, BlobStore) of one registry while it is worked on.

    ``v2_root`` None (a registry nothing was stored in yet) gives (None, None). An OSError
    nobody handled below becomes a ScanError naming the registry and the path.
    """
    if v2_root is None:
        yield None, None
        return
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
    valid only until the generator resumes. An unreadable or symlinked ``repositories``
    directory is a registry-level error: nothing under it was read.
    """
    if v2_fd is None:
        return
    top = os.path.join(v2_root, "repositories")
    try:
        fd = open_dir("repositories", dir_fd=v2_fd)
    except SymlinkRefused:
        errors.fatal(top, "symlink not followed: no repository was read")
        return
    except OSError as exc:
        errors.fatal(top, "cannot open directory: %s: no repository was read" % (exc.strerror or exc))
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
            try:
                child_fd = open_dir(child, dir_fd=dir_fd)
            except SymlinkRefused:
                errors.add(child_path, "symlink not followed")
                continue
            except OSError as exc:
                errors.add(child_path, "cannot open directory: %s" % (exc.strerror or exc))
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


def read_link_at(dir_fd, rel_path, expected_hex):
    """Read a link file relative to ``dir_fd``.

    Returns (state, target_hex, reason): state LINK_OK / LINK_MISSING / LINK_INVALID /
    LINK_UNREADABLE. ``expected_hex`` None accepts any digest (tag current links).
    """
    try:
        fd = os.open(rel_path, _O_FILE, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        return LINK_MISSING, None, "link file missing"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return LINK_INVALID, None, "link file is a symlink (not followed)"
        return LINK_UNREADABLE, None, "link file unreadable: %s" % (exc.strerror or exc)
    try:
        content = os.read(fd, LINK_READ_BYTES)
    except OSError as exc:
        if exc.errno == errno.EISDIR:
            return LINK_INVALID, None, "link is a directory, not a file"
        if exc.errno == errno.EAGAIN:
            return LINK_INVALID, None, "link is not a regular file (a FIFO or device)"
        return LINK_UNREADABLE, None, "link file unreadable: %s" % (exc.strerror or exc)
    else:
        if expected_hex is not None and len(content) == 71 and content[7:] == expected_hex.encode("ascii") \
                and content[:7] == b"sha256:":
            return LINK_OK, expected_hex, None
        # Not the valid fast path: only now is it worth a stat to tell a FIFO or device apart.
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return LINK_INVALID, None, "link is not a regular file (a FIFO or device)"
        except OSError as exc:
            return LINK_UNREADABLE, None, "link file unreadable: %s" % (exc.strerror or exc)
    finally:
        os.close(fd)
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
    the memory of the hex text. A prefix directory that cannot be read leaves its blobs
    unreadable (not judged), never missing.
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
            except OSError as exc:
                self.errors.add(os.path.dirname(self.data_path(hex_digest)), "cannot stat: %s"
                                % (exc.strerror or exc))
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
        except OSError as exc:
            self.errors.add(os.path.dirname(self.data_path(hex_digest)), "cannot stat: %s" % (exc.strerror or exc))
            return BLOB_UNREADABLE
        if stat.S_ISLNK(st.st_mode):
            self.errors.add(os.path.dirname(self.data_path(hex_digest)), "symlink not followed")
            return BLOB_UNREADABLE
        if not stat.S_ISDIR(st.st_mode):
            return BLOB_DIR_MISSING
        return self._stat_data(prefix_fd, hex_digest)

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
