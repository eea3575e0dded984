# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pull records: when each tag and manifest of a registry was last pulled.

nginx, in front of every registry, logs each manifest GET and HEAD it answered 200 to one file per
registry, one JSON object per line (``LOG_FORMAT`` in the role's nginx template):

    {"t":"1764770400.123","m":"GET","s":"200","u":"/v2/team/app/manifests/v1"}

``fold`` reads what is new in that log since the last fold and keeps, per registry, one small state
file of last-pull times by tag and by digest. It is safe against log rotation: the state remembers
the log's device, inode and the offset read to, so after a rename (to ``<log>.1``, which ``fold``
does itself once the log passes ``rotate_bytes``) the rest of the old file is read before the new
one. The state is bounded: past ``max_entries`` the oldest records go, and ``complete_since`` moves
up to the newest record dropped.

``complete_since`` is the promise retention relies on: every pull after it is in the records. A
repository or tag without a record after that time was not pulled since; before it (recording had
not started, lines were lost to a rotation nobody read, records were dropped), absence says nothing.
"""

import fcntl
import hashlib
import json
import os
import re
import time

from ansible_collections.regwarden.registry.plugins.module_utils._files import (
    open_regular,
    read_small,
    write_atomically,
)
from ansible_collections.regwarden.registry.plugins.module_utils._storage import ScanError

STATE_VERSION = 1
LOG_SUFFIX = ".log"
ROTATED_SUFFIX = ".log.1"
STATE_SUFFIX = ".json"
DEFAULT_MAX_ENTRIES = 200000
DEFAULT_ROTATE_BYTES = 64 * 1024 * 1024
MAX_LINE_BYTES = 8192
HEAD_BYTES = 256
STATE_MAX_BYTES = 256 * 1024 * 1024

# distribution's repository name grammar (path components of lower-case alphanumerics and separators),
# a tag, or a sha256 digest.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_MANIFEST_URI = re.compile(r"/v2/(?P<repo>%s(?:/%s)*)/manifests/(?P<reference>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
                           r"|sha256:[0-9a-f]{64})" % (_COMPONENT, _COMPONENT))
_REGISTRY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def check_registry_name(name):
    if not isinstance(name, str) or not _REGISTRY_NAME.fullmatch(name):
        raise ScanError("not a registry name: %r" % (name,))
    return name


def parse_line(line):
    """(repository, reference, time) of one pull record line, or None when it is not one (anything
    but a 200 to a GET or HEAD of a manifest, or not a line nginx wrote in LOG_FORMAT)."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # nested past Python's limit: no line nginx writes either
        return None
    if not isinstance(record, dict) or record.get("m") not in ("GET", "HEAD") or record.get("s") != "200":
        return None
    uri, when = record.get("u"), record.get("t")
    if not isinstance(uri, str) or not isinstance(when, str):
        return None
    match = _MANIFEST_URI.fullmatch(uri)
    if match is None or len(match.group("repo")) > 255:
        return None
    try:
        seconds = float(when)
    except ValueError:
        return None
    if not 0 < seconds < 1e11:
        return None
    return match.group("repo"), match.group("reference"), seconds


class PullRecords:
    """Last-pull times of one registry: by tag and by manifest digest, per repository."""

    def __init__(self, registry, complete_since, tags=None, digests=None, position=None, previous=None):
        self.registry = registry
        self.complete_since = complete_since
        self.tags = tags if tags is not None else {}  # repo -> {tag: time}
        self.digests = digests if digests is not None else {}  # repo -> {hex digest: time}
        self.position = position  # {"device", "inode", "offset", "head"} of the live log read so far, or None
        self.previous = previous  # the same of the rotated log (<registry>.log.1), or None

    def add(self, repo, reference, when):
        if reference.startswith("sha256:"):
            table, key = self.digests.setdefault(repo, {}), reference[len("sha256:"):]
        else:
            table, key = self.tags.setdefault(repo, {}), reference
        if when > table.get(key, 0):
            table[key] = when

    def tag_pulled(self, repo, tag):
        return self.tags.get(repo, {}).get(tag)

    def digest_pulled(self, repo, hex_digest):
        return self.digests.get(repo, {}).get(hex_digest)

    def repository_pulled(self, repo):
        """The last pull of anything in ``repo`` (None: no record)."""
        times = list(self.tags.get(repo, {}).values()) + list(self.digests.get(repo, {}).values())
        return max(times) if times else None

    def entries(self):
        return sum(len(table) for tables in (self.tags, self.digests) for table in tables.values())

    def bound(self, max_entries):
        """Drop the oldest records past ``max_entries``; the records are complete only after the newest dropped."""
        if self.entries() <= max_entries:
            return 0
        every = sorted(
            (when, kind, repo, key)
            for kind, tables in (("t", self.tags), ("d", self.digests))
            for repo, table in tables.items() for key, when in table.items())
        dropped = every[:len(every) - max_entries]
        for _when, kind, repo, key in dropped:
            tables = self.tags if kind == "t" else self.digests
            del tables[repo][key]
            if not tables[repo]:
                del tables[repo]
        self.complete_since = max(self.complete_since, dropped[-1][0])
        return len(dropped)

    def to_json(self):
        return json.dumps({"version": STATE_VERSION, "registry": self.registry,
                           "complete_since": self.complete_since, "position": self.position,
                           "previous": self.previous,
                           "tags": self.tags, "digests": self.digests}, sort_keys=True, separators=(",", ":"))


def state_path(state_dir, registry):
    return os.path.join(state_dir, check_registry_name(registry) + STATE_SUFFIX)


def load(state_dir, registry):
    """The pull records of ``registry`` under ``state_dir``; ScanError naming the file when there are none
    (pull recording is not on for it) or they cannot be read."""
    path = state_path(state_dir, registry)
    try:
        data = read_small(path, STATE_MAX_BYTES + 1)
    except FileNotFoundError:
        raise ScanError("no pull records for registry %s: %s does not exist (pull recording is not on for it, "
                        "or it never ran)" % (registry, path)) from None
    except OSError as exc:
        raise ScanError("cannot read the pull records %s: %s" % (path, exc.strerror or exc)) from None
    if len(data) > STATE_MAX_BYTES:
        raise ScanError("the pull records %s are larger than %d bytes" % (path, STATE_MAX_BYTES))
    try:
        return _from_state(registry, json.loads(data.decode("utf-8")))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ScanError("the pull records %s are damaged: %s" % (path, exc)) from None


def _from_state(registry, state):
    if state.get("version") != STATE_VERSION or state.get("registry") != registry:
        raise ValueError("not version %d records of registry %s" % (STATE_VERSION, registry))

    def tables(value):
        return {str(repo): {str(key): float(when) for key, when in table.items()} for repo, table in value.items()}

    def position(value):
        if value is None:
            return None
        return dict({key: int(value[key]) for key in ("device", "inode", "offset")}, head=str(value["head"]))

    return PullRecords(registry, float(state["complete_since"]), tables(state["tags"]), tables(state["digests"]),
                       position(state.get("position")), position(state.get("previous")))


def _open_log(path):
    """(fd, stat) of a log file, (None, None) when there is none; OSError when it cannot be read."""
    try:
        fd = open_regular(path)
    except FileNotFoundError:
        return None, None
    return fd, os.fstat(fd)


def _head(fd, offset):
    """A fingerprint of the file's first bytes (up to HEAD_BYTES of those read): an inode number is
    reused as soon as a file is deleted, so device and inode alone do not say it is the same file."""
    return hashlib.sha256(os.pread(fd, min(offset, HEAD_BYTES), 0)).hexdigest()


def _same_file(fd, info, position):
    return info is not None and position is not None and (info.st_dev, info.st_ino) == (
        position["device"], position["inode"]) and info.st_size >= position["offset"] \
        and _head(fd, position["offset"]) == position["head"]


def _read_lines(fd, offset, records, counts):
    """Fold the complete lines of ``fd`` from ``offset`` into ``records``; the offset after the last one."""
    os.lseek(fd, offset, os.SEEK_SET)
    pending = b""
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return offset
        pending += chunk
        lines = pending.split(b"\n")
        pending = lines.pop()
        for line in lines:
            offset += len(line) + 1
            counts["lines"] += 1
            parsed = parse_line(line.decode("utf-8", "replace")) if len(line) <= MAX_LINE_BYTES else None
            if parsed is None:
                counts["skipped"] += 1
                continue
            records.add(*parsed)
            counts["pulls"] += 1
        if len(pending) > MAX_LINE_BYTES:
            # A line this long is no pull record: skip to its end (its bytes count as read).
            pending = b""
            counts["skipped"] += 1
            _skip_to_newline(fd)
            offset = os.lseek(fd, 0, os.SEEK_CUR)


def _skip_to_newline(fd):
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return
        newline = chunk.find(b"\n")
        if newline >= 0:
            os.lseek(fd, newline + 1 - len(chunk), os.SEEK_CUR)
            return


def _position(fd, info, offset):
    return {"device": info.st_dev, "inode": info.st_ino, "offset": offset, "head": _head(fd, offset)}


def _read_logs(records, live_fd, live, old_path, counts, now):
    """Fold the unread lines of the rotated log and of the live one: (live position, rotated position).

    nginx goes on writing to the renamed file until it has reopened its logs (longer, should a reopen
    fail): the rotated file is read on from where the last fold left it for as long as it is there.
    """
    position, previous = records.position, records.previous
    rotated = None
    old_fd, old = _open_log(old_path)
    try:
        start = None
        if _same_file(old_fd, old, position):
            start, position = position["offset"], None  # renamed since the last fold
        elif _same_file(old_fd, old, previous):
            start = previous["offset"]
        if start is not None:
            rotated = _position(old_fd, old, _read_lines(old_fd, min(start, old.st_size), records, counts))
    finally:
        if old_fd is not None:
            os.close(old_fd)
    if position is not None and not _same_file(live_fd, live, position):
        # The file read last is neither the live log nor the rotated one: gone unread to its end (or
        # truncated below what was read), so pulls before now may be missing.
        records.complete_since = max(records.complete_since, now)
        position = None
    if live is None:
        return None, rotated
    start = position["offset"] if position is not None else 0
    return _position(live_fd, live, _read_lines(live_fd, start, records, counts)), rotated


def fold(log_dir, state_dir, registry, now=None, max_entries=DEFAULT_MAX_ENTRIES, rotate_bytes=DEFAULT_ROTATE_BYTES):
    """Fold what is new in ``<log_dir>/<registry>.log`` (and the rest of ``.log.1`` after a rotation) into
    the registry's state file; rename the log to ``.log.1`` once it is over ``rotate_bytes`` (the caller
    then has nginx reopen its logs). Returns what was done (``rotated`` True when the log was renamed)."""
    check_registry_name(registry)
    for what, value in (("max_entries", max_entries), ("rotate_bytes", rotate_bytes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ScanError("%s must be a whole number of at least 1 (got %r)" % (what, value))
    now = time.time() if now is None else now
    os.makedirs(state_dir, mode=0o755, exist_ok=True)
    live_path = os.path.join(log_dir, registry + LOG_SUFFIX)
    old_path = os.path.join(log_dir, registry + ROTATED_SUFFIX)
    with _locked(state_dir):
        try:
            records = load(state_dir, registry)
        except ScanError:
            if os.path.lexists(state_path(state_dir, registry)):
                raise
            # The first fold: the records are complete from now on (what the log holds already is kept too).
            records = PullRecords(registry, now)
        counts = {"lines": 0, "pulls": 0, "skipped": 0}
        try:
            live_fd, live = _open_log(live_path)
            try:
                records.position, records.previous = _read_logs(records, live_fd, live, old_path, counts, now)
            finally:
                if live_fd is not None:
                    os.close(live_fd)
        except OSError as exc:
            raise ScanError("cannot read the pull log of registry %s (%s): %s" % (
                registry, exc.filename or live_path, exc.strerror or exc)) from None
        rotated = False
        if live is not None and records.position is not None and records.position["inode"] == live.st_ino \
                and records.position["offset"] >= rotate_bytes:
            # The next fold reads on in it as .log.1 (nginx writes there until it reopens its logs).
            os.replace(live_path, old_path)
            records.position, records.previous = None, records.position
            rotated = True
        dropped = records.bound(max_entries)
        write_atomically(state_path(state_dir, registry), records.to_json() + "\n")
    return {"registry": registry, "lines": counts["lines"], "pulls": counts["pulls"], "skipped": counts["skipped"],
            "dropped": dropped, "entries": records.entries(), "complete_since": records.complete_since,
            "rotated": rotated}


class _locked:
    """flock on ``<state_dir>/.lock``: one fold at a time (the timer and a tag cleanup)."""

    def __init__(self, state_dir):
        self.path = os.path.join(state_dir, ".lock")
        self.fd = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc_info):
        os.close(self.fd)


def annotate_capacity(capacity, state_dir):
    """Add the last pulls to capacity figures ({registry: figures}, _blob_scan): per repository
    ``last_pulled`` (epoch seconds, None: no pull recorded), per registry ``pull_records_complete_since``
    (None: no records for it; the absence of a pull says something only after that time).
    Records that exist but cannot be read are a ScanError."""
    for name, figures in capacity.items():
        records = load(state_dir, name) if os.path.lexists(state_path(state_dir, name)) else None
        figures["pull_records_complete_since"] = records.complete_since if records is not None else None
        for repo, repo_figures in figures.get("repositories", {}).items():
            repo_figures["last_pulled"] = records.repository_pulled(repo) if records is not None else None
    return capacity
