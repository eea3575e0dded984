# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Small state files of the maintenance commands: written atomically, read without ever blocking.

A state directory is root's, but a FIFO or a symlink planted in it must neither hang a timer
(open() of a FIFO blocks until a writer comes) nor send a read elsewhere: files are opened with
O_NONBLOCK and O_NOFOLLOW and only regular files are read.
"""

import errno
import os
import stat
import tempfile

_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def open_regular(path):
    """A read-only descriptor of the regular file ``path`` (a symlink is refused, a FIFO never blocks).

    OSError (ELOOP for a symlink, EINVAL for anything not a regular file) when it cannot be read.
    """
    fd = os.open(path, _READ_FLAGS)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_small(path, limit):
    """Up to ``limit`` bytes of the regular file ``path`` (see open_regular)."""
    fd = open_regular(path)
    try:
        return os.read(fd, limit)
    finally:
        os.close(fd)


def write_atomically(path, text, mode=0o644):
    """Replace ``path`` with ``text``: a temp file in the same directory, then a rename (readers see
    the old file or the new one, never a part)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".regwarden-", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
