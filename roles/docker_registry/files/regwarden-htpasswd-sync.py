#!/usr/bin/python3
"""Bring an htpasswd file to exactly the users given on stdin, bcrypt at a chosen cost.

stdin: {"rounds": N, "users": [{"username": ..., "password": ...}]} (never argv: it holds passwords).
A user's line is kept while its hash is bcrypt at that cost and verifies the password, so the file
(and its salts) only changes when a password, the cost or the user list changes.
Prints {"changed": bool, "added": [...], "updated": [...], "removed": [...]} (names only).
Usage: regwarden-htpasswd-sync PATH [--check]
"""

import json
import os
import sys
import tempfile

import bcrypt


def read_entries(path):
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


def hash_cost(hashed):
    # $2b$10$<salt+hash>
    parts = hashed.split("$")
    if len(parts) != 4 or parts[1] not in ("2a", "2b", "2y"):
        return None
    try:
        return int(parts[2])
    except ValueError:
        return None


def current(hashed, password, rounds):
    if hash_cost(hashed) != rounds:
        return False
    try:
        return bcrypt.checkpw(password.encode(), hashed.encode())
    except ValueError:
        return False


def main():
    if len(sys.argv) not in (2, 3) or (len(sys.argv) == 3 and sys.argv[2] != "--check"):
        print("usage: regwarden-htpasswd-sync PATH [--check] < users.json", file=sys.stderr)
        return 2
    path = sys.argv[1]
    check = len(sys.argv) == 3
    wanted = json.load(sys.stdin)
    rounds = int(wanted["rounds"])
    existing = read_entries(path)
    lines, added, updated = [], [], []
    for user in wanted["users"]:
        name, password = str(user["username"]), str(user["password"])
        hashed = existing.get(name)
        if hashed is None or not current(hashed, password, rounds):
            (added if hashed is None else updated).append(name)
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()
        lines.append("%s:%s\n" % (name, hashed))
    names = {str(user["username"]) for user in wanted["users"]}
    removed = sorted(set(existing) - names)
    changed = bool(added or updated or removed)
    if changed and not check:
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".htpasswd-", dir=directory)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.writelines(lines)
            # Readable by the registry containers' root only, as community.general.htpasswd left it.
            os.chmod(tmp, 0o640)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    print(json.dumps({"changed": changed, "added": added, "updated": updated, "removed": removed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
