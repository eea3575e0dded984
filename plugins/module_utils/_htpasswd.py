# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""An htpasswd file of exactly the users given, bcrypt at a chosen cost, for the registry's auth.

A user's line is kept while its hash is bcrypt at that cost and still verifies the password, so
the file (and its salts) changes only when a password, the cost or the user list changes. The
registry checks the hash on every request: the cost multiplies into every pull.
May touch: the one file it is given (written atomically, 0640, next to where it lands).
"""

from ansible_collections.regwarden.registry.plugins.module_utils._cli import write_atomically


def hash_cost(hashed):
    """The bcrypt cost of a ``$2b$10$...`` hash, None when it is not bcrypt."""
    parts = hashed.split("$")
    if len(parts) != 4 or parts[1] not in ("2a", "2b", "2y"):
        return None
    try:
        return int(parts[2])
    except ValueError:
        return None


def read_entries(path):
    """{user: hash} of an htpasswd file; {} when it does not exist yet."""
    entries = {}
    try:
        with open(path) as handle:
            for line in handle:
                name, sep, hashed = line.rstrip("\n").partition(":")
                if sep:
                    entries[name] = hashed
    except FileNotFoundError:
        pass
    return entries


def plan(bcrypt, existing, users, rounds):
    """(lines, added, updated, removed) that bring ``existing`` to ``users`` at ``rounds``."""
    lines, added, updated = [], [], []
    for user in users:
        name, password = str(user["username"]), str(user["password"])
        hashed = existing.get(name)
        if hashed is None or not _current(bcrypt, hashed, password, rounds):
            (added if hashed is None else updated).append(name)
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()
        lines.append("%s:%s\n" % (name, hashed))
    removed = sorted(set(existing) - {str(user["username"]) for user in users})
    return lines, added, updated, removed


def _current(bcrypt, hashed, password, rounds):
    if hash_cost(hashed) != rounds:
        return False
    try:
        return bcrypt.checkpw(password.encode(), hashed.encode())
    except ValueError:
        return False


def write(path, lines):
    """Replace ``path`` atomically with ``lines`` (0640: the registry containers' root reads it)."""
    write_atomically(path, "".join(lines), mode=0o640)
