# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read-only access to a distribution registry's filesystem storage.

Pure Python with no Ansible import, so the same code runs inside modules and in the
scanner CLI on the registry VM. Symlinks are never followed: every open and stat is
relative to a directory descriptor with O_NOFOLLOW / follow_symlinks=False, and
entries are classified from their d_type before anything is opened.
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
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})\Z")

_O_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
_O_FILE = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)

# Blob data states (cached per registry, one stat per distinct digest).
BLOB_MISSING = -1
BLOB_NOT_REGULAR = -2
BLOB_UNREADABLE = -3

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


def open_dir(path, dir_fd=None):
    """Open a directory without following a symlink; None if it is absent or not a directory."""
    try:
        return os.open(path, _O_DIR, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None
        raise


def close_fd(fd):
    if fd is not None:
        os.close(fd)


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

    def add(self, path, message):
        self.items.append({"registry": self.registry, "path": path, "error": message})


def iter_repositories(v2_root, errors):
    """Yield (repo_name, repo_path) for every repository under ``v2_root``/repositories.

    A repository is any directory holding _layers, _manifests or _uploads; names nest
    (``team/app``). Symlinked directories are reported and never entered.
    """
    top = os.path.join(v2_root, "repositories")
    stack = [("", top)]
    while stack:
        name, path = stack.pop()
        try:
            with os.scandir(path) as it:
                entries = [(e.name, e.is_dir(follow_symlinks=False), e.is_symlink()) for e in it]
        except (FileNotFoundError, NotADirectoryError):
            continue  # removed while we walked
        except OSError as exc:
            errors.add(path, "cannot list directory: %s" % (exc.strerror or exc))
            continue
        names = set()
        children = []
        for entry_name, is_dir, is_link in entries:
            names.add(entry_name)
            if is_link:
                errors.add(os.path.join(path, entry_name), "symlink not followed")
            elif is_dir and not entry_name.startswith("_"):
                children.append(entry_name)
        if name and not REPO_MARKERS.isdisjoint(names):
            yield name, path
        for child in sorted(children, reverse=True):
            stack.append((name + "/" + child if name else child, os.path.join(path, child)))


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
    """Yield (name, is_dir, is_symlink) for the entries of a ``<algo>`` link directory."""
    try:
        with os.scandir(dir_fd) as it:
            for entry in it:
                yield entry.name, entry.is_dir(follow_symlinks=False), entry.is_symlink()
    except (FileNotFoundError, NotADirectoryError):
        return


class BlobStore:
    """Blob data of one registry, each digest stat'ed at most once."""

    def __init__(self, v2_root):
        self.root = os.path.join(v2_root, "blobs", "sha256")
        self.fd = open_dir(self.root)
        self._sizes = {}

    def close(self):
        close_fd(self.fd)
        self.fd = None

    def data_path(self, hex_digest):
        return os.path.join(self.root, hex_digest[:2], hex_digest, "data")

    def size(self, hex_digest):
        """Size of the blob data, or BLOB_MISSING / BLOB_NOT_REGULAR / BLOB_UNREADABLE."""
        size = self._sizes.get(hex_digest)
        if size is None:
            size = self._stat(hex_digest)
            self._sizes[hex_digest] = size
        return size

    def checked_count(self):
        return len(self._sizes)

    def fresh_size(self, hex_digest):
        """Stat again, bypassing the cache (used right before a repair)."""
        size = self._stat(hex_digest)
        self._sizes[hex_digest] = size
        return size

    def _stat(self, hex_digest):
        if self.fd is None:
            return BLOB_MISSING
        try:
            st = os.stat("%s/%s/data" % (hex_digest[:2], hex_digest), dir_fd=self.fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return BLOB_MISSING
        except OSError:
            return BLOB_UNREADABLE
        if not stat.S_ISREG(st.st_mode):
            return BLOB_NOT_REGULAR
        return st.st_size

    def missing_reason(self, hex_digest):
        size = self.size(hex_digest)
        if size == BLOB_NOT_REGULAR:
            return "blob data is not a regular file"
        if size == BLOB_UNREADABLE:
            return "blob data unreadable"
        blob_dir = os.path.dirname(self.data_path(hex_digest))
        if os.path.lexists(blob_dir):
            return "blob data missing"
        return "blob directory missing"

    def read(self, hex_digest, limit):
        """Read up to ``limit`` + 1 bytes of a blob (callers detect oversize content)."""
        fd = os.open("%s/%s/data" % (hex_digest[:2], hex_digest), _O_FILE, dir_fd=self.fd)
        try:
            chunks = []
            remaining = limit + 1
            while remaining > 0:
                chunk = os.read(fd, min(remaining, 1 << 20))
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
        for prefix, is_dir, _is_link in iter_link_dirs(self.fd):
            if not is_dir or len(prefix) != 2:
                continue
            prefix_fd = open_dir(prefix, dir_fd=self.fd)
            if prefix_fd is None:
                continue
            try:
                names = [name for name, sub_is_dir, _ in iter_link_dirs(prefix_fd) if sub_is_dir]
            finally:
                os.close(prefix_fd)
            for name in sorted(names):
                if is_hex_digest(name) and name.startswith(prefix):
                    yield name
