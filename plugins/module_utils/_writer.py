# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The only code that changes a registry's storage: StorageWriter on a filesystem, S3Writer in a bucket.

It may remove link files (and the digest directory that held them), remove tag directories,
and write link files, nothing else: never blob data, never a path outside the registry.
Every operation

- requires a real directory descriptor of the directory it works in (never None, which the
  os functions would take for the process's working directory);
- opens the entry it changes with O_DIRECTORY|O_NOFOLLOW relative to that descriptor and
  re-reads what it is about to change through the opened descriptor, so an entry swapped for
  a symlink after the scan is refused, and one swapped after the re-check is not followed;
- unlinks with ``dir_fd`` and rmdirs relative to the parent descriptor;
- creates files with O_CREAT|O_EXCL|O_NOFOLLOW under a random name, then renames them.

A writer made with ``apply=False`` (check mode) opens and re-checks exactly as the real one
and changes nothing, so check mode refuses what the real run would refuse. Writers hold the
registry's lock (registry_lock: flock on the registry's directory) for as long as they run.
"""

import contextlib
import errno
import fcntl
import os
import secrets
import stat

from ansible_collections.regwarden.registry.plugins.module_utils._discovery import lock_dir_of
from ansible_collections.regwarden.registry.plugins.module_utils._storage import (
    LINK_INVALID,
    LINK_MISSING,
    LINK_OK,
    LINK_UNREADABLE,
    NotRegularFile,
    ScanError,
    SymlinkRefused,
    classify_link_content,
    digest_of,
    iter_link_dirs,
    open_dir,
    open_regular,
    read_link_at,
    try_open_dir,
)

LINK_MODE = 0o644
DIR_MODE = 0o755
# A tag directory holds current/link and index/sha256/<hex>/link: anything much deeper or
# bigger is not the registry's and is left for an operator to look at.
TAG_TREE_MAX_DEPTH = 6
TAG_TREE_MAX_ENTRIES = 100000

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)

# Tests set this to a callable(stage, operation, path) to change the tree at a precise moment:
# stage "plan" (a caller is about to open the directory it works in, after its listing),
# "open" (before the entry is opened) or "change" (after the re-check, before the change).
RACE_HOOK = None


class WriteRefused(Exception):
    """Not done because it would not be safe (a symlink, not a directory, ...): an error to report."""


class Changed(Exception):
    """Not done because the storage changed since it was scanned (or is too recent): left alone."""


class LockHeld(ScanError):
    """Another writer holds the registry's lock."""


def race_point(stage, operation, path):
    """Call RACE_HOOK, if a test set one (a no-op otherwise)."""
    if RACE_HOOK is not None:
        RACE_HOOK(stage, operation, path)


def _require_dir_fd(fd, path):
    """Refuse anything but an open descriptor of a directory (None would mean the working directory)."""
    if not isinstance(fd, int) or isinstance(fd, bool) or fd < 0:
        raise WriteRefused("%s: no directory descriptor (the directory vanished or is a symlink)" % path)
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise WriteRefused("%s: bad directory descriptor: %s" % (path, exc.strerror or exc)) from None
    if not stat.S_ISDIR(mode):
        raise WriteRefused("%s: descriptor is not a directory" % path)


def _open_entry_dir(parent_fd, name, path):
    """Descriptor of parent/name, a real directory; Changed when it is gone, WriteRefused otherwise."""
    fd, problem = try_open_dir(name, parent_fd)
    if problem:
        raise WriteRefused("%s: %s" % (path, problem))
    if fd is None:
        try:
            os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            raise Changed("%s is gone" % path) from None
        except OSError:
            pass
        raise WriteRefused("%s is not a directory" % path)
    return fd


def _read_link(dir_fd, path):
    """(content, mtime) of dir_fd/link, a regular file never followed."""
    try:
        fd = open_regular("link", dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        raise Changed("%s is gone" % path) from None
    except NotRegularFile:
        raise WriteRefused("%s is not a regular file" % path) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise WriteRefused("%s is a symlink (never followed)" % path) from None
        raise WriteRefused("cannot read %s: %s" % (path, exc.strerror or exc)) from None
    try:
        return os.read(fd, 256), os.fstat(fd).st_mtime
    finally:
        os.close(fd)


def _owner(fd):
    return os.fstat(fd)


def _chown_like(name, dir_fd, owner):
    if os.geteuid() == 0 and (owner.st_uid, owner.st_gid) != (0, 0):
        os.chown(name, owner.st_uid, owner.st_gid, dir_fd=dir_fd, follow_symlinks=False)


@contextlib.contextmanager
def registry_lock(name, v2_root, take=True):
    """Hold the registry's lock while the block runs: flock on the registry's own directory
    (<path>/<name>, the parent of docker/registry/v2), so no file is created in the storage.

    Non-blocking: a lock held by another writer (a module run, the CLI, the GC or tag-cleanup
    timer: ``flock --nonblock <registry dir>``) is a LockHeld error naming the directory.
    ``take`` False (check mode) holds nothing.
    """
    if not take or v2_root is None:
        yield
        return
    root = lock_dir_of(v2_root)
    try:
        fd = open_dir(root)
    except SymlinkRefused:
        raise ScanError("registry %s: %s is a symlink (never followed)" % (name, root)) from None
    except OSError as exc:
        raise ScanError("registry %s: cannot open %s to lock it: %s" % (name, root, exc.strerror or exc)) from None
    if fd is None:
        raise ScanError("registry %s: %s is not a directory" % (name, root))
    try:
        _flock_now(fd, name, root)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _flock_now(fd, name, path):
    """flock ``fd`` without waiting: LockHeld (naming ``path``) when another writer holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise LockHeld("registry %s is being changed by another run: its lock (flock on %s) is held by "
                           "a maintenance timer, the scanner CLI or another module run; nothing was changed, "
                           "try again when it has finished" % (name, path)) from None
        raise ScanError("registry %s: cannot lock %s: %s" % (name, path, exc.strerror or exc)) from None


@contextlib.contextmanager
def file_lock(name, path, take=True):
    """Hold the registry's lock in a lock file of this host (backends without a directory to
    flock, such as S3): ``path`` is made (0600, never through a symlink) in a directory only
    this user can write. Non-blocking, like registry_lock."""
    if not take:
        yield
        return
    directory = os.path.dirname(path)
    ensure_private_dir(directory)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _O_NOFOLLOW | _O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ScanError("registry %s: cannot open its lock file %s: %s" % (name, path, exc.strerror or exc)) from None
    try:
        _flock_now(fd, name, path)
        yield
    finally:
        os.close(fd)


def ensure_private_dir(path):
    """Make ``path`` (mode 0700) or accept an existing one that only this user can write; ScanError otherwise."""
    try:
        os.makedirs(path, 0o700, exist_ok=True)
        info = os.lstat(path)
    except OSError as exc:
        raise ScanError("cannot create %s: %s (set s3.cache_dir to a directory this user may write)"
                        % (path, exc.strerror or exc)) from None
    if not stat.S_ISDIR(info.st_mode):
        raise ScanError("%s is not a directory (a symlink is never followed)" % path)
    if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        raise ScanError("%s belongs to another user: the manifest cache and lock files must be this user's own"
                        % path)
    if info.st_mode & 0o022:
        raise ScanError("%s is writable by others (mode %o): anyone could plant manifests or hold the lock; "
                        "chmod go-w it" % (path, stat.S_IMODE(info.st_mode)))


class _LinkChecks:
    """The re-checks every writer makes before it removes a link, whatever the storage."""

    cutoff = None

    def _check_recent(self, mtime, path):
        if self.cutoff is not None and mtime is not None and mtime > self.cutoff:
            raise Changed("%s was written after the cutoff of this run (a recent push): left alone" % path)

    def _check_removable(self, content, mtime, hex_digest, path, still_wanted):
        """Changed unless the link still names ``hex_digest``, is older than the cutoff and
        ``still_wanted()`` (if given) has no reason to keep it."""
        state, _target, _reason = classify_link_content(content, hex_digest)
        if state != LINK_OK:
            raise Changed("%s no longer holds %s" % (path, digest_of(hex_digest)))
        self._check_recent(mtime, path)
        if still_wanted is not None:
            reason = still_wanted()
            if reason:
                raise Changed(reason)


class StorageWriter(_LinkChecks):
    """Removes and writes link files and tag directories of one registry (see the module docstring).

    ``apply`` False: every check runs, nothing changes. ``cutoff``: a link (or tag) whose file
    was written after this time (seconds since the epoch) is never removed (Changed).
    """

    def __init__(self, apply, cutoff=None):
        self.apply = apply
        self.cutoff = cutoff

    def checking(self):
        """A writer of the same storage that checks everything and changes nothing."""
        return StorageWriter(apply=False, cutoff=self.cutoff)

    def remove_link(self, dir_fd, hex_digest, path, still_wanted=None):
        """Remove <dir_fd>/<hex>/link (path: its absolute path) and then <hex>/ if it is empty.

        The link must still be a valid link of its directory; ``still_wanted`` (a callable
        returning a reason to keep it, or None) is asked right before the removal.
        """
        dir_path = os.path.dirname(path)
        _require_dir_fd(dir_fd, os.path.dirname(dir_path))
        race_point("open", "remove_link", path)
        hex_fd = _open_entry_dir(dir_fd, hex_digest, dir_path)
        try:
            content, mtime = _read_link(hex_fd, path)
            self._check_removable(content, mtime, hex_digest, path, still_wanted)
            if not self.apply:
                return
            race_point("change", "remove_link", path)
            try:
                os.unlink("link", dir_fd=hex_fd)
            except (FileNotFoundError, NotADirectoryError):
                raise Changed("%s is gone" % path) from None
        finally:
            os.close(hex_fd)
        try:
            os.rmdir(hex_digest, dir_fd=dir_fd)
        except OSError:
            pass  # not empty, gone, or no longer a directory: the link is what had to go

    def remove_tag(self, tags_fd, tag, expected_hex, path):
        """Remove the tag directory <tags_fd>/<tag> (path: its absolute path) as the registry untags.

        Its current link must still name ``expected_hex`` and be older than the cutoff. The
        directory tree is walked twice (check, then remove) without following any symlink: a
        symlink inside is unlinked, never entered.
        """
        _require_dir_fd(tags_fd, os.path.dirname(path))
        race_point("open", "remove_tag", path)
        tag_fd = _open_entry_dir(tags_fd, tag, path)
        try:
            current_path = os.path.join(path, "current")
            current_fd = _open_entry_dir(tag_fd, "current", current_path)
            try:
                content, mtime = _read_link(current_fd, os.path.join(current_path, "link"))
            finally:
                os.close(current_fd)
            state, target, _reason = classify_link_content(content, None)
            if state != LINK_OK or target != expected_hex:
                raise Changed("tag %s no longer points at %s" % (path, digest_of(expected_hex)))
            self._check_recent(mtime, path)
            _walk_tag_tree(tag_fd, path, remove=False)
            if not self.apply:
                return
            race_point("change", "remove_tag", path)
            _walk_tag_tree(tag_fd, path, remove=True)
        finally:
            os.close(tag_fd)
        try:
            os.rmdir(tag, dir_fd=tags_fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise WriteRefused("%s: emptied but not removed: %s" % (path, exc.strerror or exc)) from None

    def write_link(self, base, parts, hex_digest):
        """Write <base>/<parts...>/link = sha256:<hex> (as a push would), creating the directories.

        ``base``: (descriptor, path) of the repository (the view's ``write_base``).

        Returns True when the link is (or, in check mode, would be) written, False when a valid
        one is already there. An invalid or unreadable link file is never overwritten.
        """
        base_fd, base_path = base
        _require_dir_fd(base_fd, base_path)
        path = os.path.join(base_path, *parts)
        link_path = os.path.join(path, "link")
        race_point("open", "write_link", link_path)
        fd = base_fd
        current = base_path
        try:
            for part in parts:
                current = os.path.join(current, part)
                child = self._enter_or_make(fd, part, current)
                if child is None:
                    return True  # check mode: the rest of the chain does not exist yet, it would be created
                if fd != base_fd:
                    os.close(fd)
                fd = child
            state, _target, reason = read_link_at(fd, "link", hex_digest)
            if state == LINK_OK:
                return False
            if state in (LINK_INVALID, LINK_UNREADABLE):
                raise WriteRefused("%s exists and is %s (%s): never overwritten, inspect it by hand"
                                   % (link_path, state, reason))
            if state != LINK_MISSING or not self.apply:
                return True
            race_point("change", "write_link", link_path)
            _write_new_file(fd, "link", digest_of(hex_digest).encode("ascii"))
            return True
        finally:
            if fd != base_fd:
                os.close(fd)

    def _enter_or_make(self, fd, part, path):
        """Descriptor of the real directory fd/part, made when missing (None in check mode then)."""
        child, problem = try_open_dir(part, fd)
        if problem:
            raise WriteRefused("%s: %s" % (path, problem))
        if child is not None:
            return child
        if not _is_missing_at(fd, part):
            raise WriteRefused("%s is not a directory" % path)
        if not self.apply:
            return None
        race_point("change", "mkdir", path)
        owner = _owner(fd)
        try:
            os.mkdir(part, DIR_MODE, dir_fd=fd)
            _chown_like(part, fd, owner)
        except FileExistsError:
            pass
        child, problem = try_open_dir(part, fd)
        if child is None:
            raise WriteRefused("%s changed while it was created" % path)
        return child


def _is_missing_at(dir_fd, name):
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False
    return False


def _write_new_file(dir_fd, name, content):
    """Write dir_fd/name atomically: a new file under a random name (O_EXCL), then a rename."""
    owner = _owner(dir_fd)
    for _attempt in range(8):
        tmp_name = ".%s.regwarden.%s" % (name, secrets.token_hex(8))
        try:
            fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, LINK_MODE,
                         dir_fd=dir_fd)
            break
        except FileExistsError:
            continue
    else:
        raise WriteRefused("could not create a temporary file next to %s" % name)
    try:
        try:
            os.write(fd, content)
            os.fsync(fd)
        finally:
            os.close(fd)
        _chown_like(tmp_name, dir_fd, owner)
        os.rename(tmp_name, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp_name, dir_fd=dir_fd)
        except OSError:
            pass
        raise


def _walk_tag_tree(tag_fd, path, remove):
    """Check (remove False) or empty (remove True) a tag directory, post-order, iteratively.

    Only the descriptors on the current path are open (the depth is bounded), entries are
    classified by d_type, symlinks and files are unlinked relative to their directory.
    """
    frames = [(tag_fd, path, _entries(tag_fd, path), None)]
    count = 0
    try:
        while frames:
            dir_fd, dir_path, entries, _name = frames[-1]
            if not entries:
                frames.pop()
                if frames and dir_fd != tag_fd:
                    os.close(dir_fd)
                    if remove:
                        os.rmdir(_name, dir_fd=frames[-1][0])
                continue
            entry, is_dir, is_link = entries.pop()
            count += 1
            if count > TAG_TREE_MAX_ENTRIES:
                raise WriteRefused("%s holds more than %d entries: not the registry's, left alone"
                                   % (path, TAG_TREE_MAX_ENTRIES))
            entry_path = os.path.join(dir_path, entry)
            if is_dir and not is_link:
                if len(frames) >= TAG_TREE_MAX_DEPTH:
                    raise WriteRefused("%s is nested deeper than a tag directory can be: left alone" % entry_path)
                child_fd = _open_entry_dir(dir_fd, entry, entry_path)
                try:
                    child_entries = _entries(child_fd, entry_path)
                except BaseException:
                    os.close(child_fd)
                    raise
                frames.append((child_fd, entry_path, child_entries, entry))
            elif remove:
                try:
                    os.unlink(entry, dir_fd=dir_fd)
                except FileNotFoundError:
                    pass
    finally:
        for dir_fd, _path, _entries_left, _name in frames:
            if dir_fd != tag_fd:
                os.close(dir_fd)


def _entries(dir_fd, path):
    try:
        return list(iter_link_dirs(dir_fd))
    except OSError as exc:
        raise WriteRefused("cannot list %s: %s" % (path, exc.strerror or exc)) from None


class S3Writer(_LinkChecks):
    """The same changes as StorageWriter, on an S3 bucket: object deletes and puts.

    Handles are key prefixes (the view's ``directory``/``handle``/``write_base``), never built
    from anything but the listing of the registry being changed and validated digests.
    S3 has no rename and no compare-and-delete: every change re-reads what it changes right
    before (the link's content and its LastModified against the cutoff), as on a filesystem,
    and check mode (``apply`` False) re-reads exactly the same and changes nothing.
    """

    def __init__(self, s3, apply, cutoff=None):
        self.s3 = s3
        self.apply = apply
        self.cutoff = cutoff

    def checking(self):
        """A writer of the same bucket that checks everything and changes nothing."""
        return S3Writer(self.s3, apply=False, cutoff=self.cutoff)

    def _read_link(self, key, path):
        info = self.s3.head(key)
        if info is None:
            raise Changed("%s is gone" % path)
        content = self.s3.get(key, 256)
        if content is None:
            raise Changed("%s is gone" % path)
        return content, info[2]

    def remove_link(self, dir_key, hex_digest, path, still_wanted=None):
        """Delete <dir_key><hex>/link when it still names ``hex_digest`` and is older than the cutoff."""
        _require_key_prefix(dir_key, path)
        key = "%s%s/link" % (dir_key, hex_digest)
        race_point("open", "remove_link", path)
        content, mtime = self._read_link(key, path)
        self._check_removable(content, mtime, hex_digest, path, still_wanted)
        if not self.apply:
            return
        race_point("change", "remove_link", path)
        self.s3.delete(key)
        self._remove_directories(dir_key, [key])

    def remove_tag(self, tags_key, tag, expected_hex, path):
        """Delete every object of the tag <tags_key><tag>/ (current/link first, so the tag stops
        resolving before its history goes), when current still names ``expected_hex``."""
        _require_key_prefix(tags_key, path)
        if not tag or "/" in tag:
            raise WriteRefused("%s: not a tag name" % path)
        race_point("open", "remove_tag", path)
        prefix = "%s%s/" % (tags_key, tag)
        current = prefix + "current/link"
        content, mtime = self._read_link(current, path + "/current/link")
        state, target, _reason = classify_link_content(content, None)
        if state != LINK_OK or target != expected_hex:
            raise Changed("tag %s no longer points at %s" % (path, digest_of(expected_hex)))
        self._check_recent(mtime, path)
        keys = []
        for objects, _prefixes in self.s3.list_pages(prefix):
            for key, _size, _etag, _mtime in objects:
                if key[len(prefix):].count("/") >= TAG_TREE_MAX_DEPTH:
                    raise WriteRefused("%s is nested deeper than a tag directory can be: left alone" % key)
                keys.append(key)
                if len(keys) > TAG_TREE_MAX_ENTRIES:
                    raise WriteRefused("%s holds more than %d objects: not the registry's, left alone"
                                       % (path, TAG_TREE_MAX_ENTRIES))
        if not self.apply:
            return
        race_point("change", "remove_tag", path)
        self.s3.delete(current)
        for key in keys:
            if key != current:
                self.s3.delete(key)
        self._remove_directories(tags_key, keys)

    def _remove_directories(self, base_key, keys):
        """Delete the "directories" the removed ``keys`` leave below ``base_key``, deepest first.

        Stores built on a filer (SeaweedFS) keep a directory after its last object is gone, and
        a delimiter listing shows it: the registry's tag list would still name a removed tag.
        Deleting a directory that still holds objects does nothing there; on AWS S3 these keys
        do not exist and the deletes are no-ops.
        """
        directories = set()
        for key in keys:
            rest = key[len(base_key):].split("/")[:-1]
            directories.update(base_key + "/".join(rest[:depth]) + "/" for depth in range(1, len(rest) + 1))
        for directory in sorted(directories, key=lambda d: (-d.count("/"), d)):
            self.s3.delete(directory)

    def write_link(self, base, parts, hex_digest):
        """Put <base key><parts...>/link = sha256:<hex> unless a link is there; True when (or, in
        check mode, if) it is written. An invalid or unreadable link is never overwritten."""
        base_key, base_path = base
        _require_key_prefix(base_key, base_path)
        key = base_key + "/".join(parts) + "/link"
        link_path = "/".join((base_path, *parts, "link"))
        race_point("open", "write_link", link_path)
        content = self.s3.get(key, 256)
        if content is not None:
            state, _target, reason = classify_link_content(content, hex_digest)
            if state == LINK_OK:
                return False
            raise WriteRefused("%s exists and is %s (%s): never overwritten, inspect it by hand"
                               % (link_path, state, reason))
        if not self.apply:
            return True
        race_point("change", "write_link", link_path)
        self.s3.put(key, digest_of(hex_digest).encode("ascii"))
        return True


def _require_key_prefix(key, path):
    """Refuse anything but a key prefix of a registry (a str ending in "/" and below docker/registry/v2/)."""
    if not isinstance(key, str) or not key.endswith("/") or "/docker/registry/v2/" not in "/" + key:
        raise WriteRefused("%s: no key prefix of a registry to work in" % path)
