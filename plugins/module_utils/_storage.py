# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The scanners' common vocabulary and the filesystem primitives every other file builds on.

States of links and blob data, the scan errors and exceptions, digests, names that are not
UTF-8; and descriptor-relative opens and reads. Pure Python with no Ansible import, so the same
code runs inside modules and in the scanner CLI on the registry VM. Nothing here writes: every
change goes through _writer.

Symlinks are never followed: every open and stat is relative to a directory descriptor with
O_NOFOLLOW / follow_symlinks=False, and entries are classified from their d_type before
anything is opened. Files are opened with O_NONBLOCK and must be regular files before they
are read, so a FIFO or a device planted in the tree cannot stall a scan. Walks are
iterative: no tree shape can exhaust the interpreter's stack.
"""

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


def try_open_dir(name, dir_fd):
    """(descriptor, None) of a real directory; (None, None) when absent or not a directory;
    (None, problem) when it is a symlink or cannot be opened (``problem`` says why)."""
    try:
        return open_dir(name, dir_fd=dir_fd), None
    except SymlinkRefused:
        return None, "symlink not followed"
    except OSError as exc:
        return None, "cannot open directory: %s" % (exc.strerror or exc)


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
            child, problem = try_open_dir(part, fd)
            if problem:
                report(path, problem)
            if fd != parent_fd:
                os.close(fd)
            if child is None:
                return None, problem is not None
            fd = child
        return fd, False
    except BaseException:
        if fd is not None and fd != parent_fd:
            os.close(fd)
        raise


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


class TagsReadOnce:
    """A repository view's ``read_tags``: read once per walk whichever scanners ask (a problem met is
    reported once); a read without times serves a later call that wants them only by reading again.
    The view provides ``_read_tags(with_updated)``."""

    _tags_read = None  # (with times, {tag: TagLink}) once read

    def read_tags(self, with_updated=False):
        if self._tags_read is None or (with_updated and not self._tags_read[0]):
            self._tags_read = (with_updated, self._read_tags(with_updated))
        return self._tags_read[1]
