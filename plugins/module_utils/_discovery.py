# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which registries lie under a filesystem ``path``, and which of those asked for are missing.

Reads only (lstat and listdir of ``path`` and its direct children), never follows a symlink.
Layout: ``<path>/<name>/docker/registry/v2`` per registry, or ``path`` itself one registry
(docs/design.md section 2).
"""

import os
import re
import stat

from ansible_collections.regwarden.registry.plugins.module_utils._storage import LAYOUT, ScanError

# Registry directory names the role creates (and the only empty directories taken for registries).
_REGISTRY_NAME = re.compile(r"[a-z0-9]([a-z0-9_-]*[a-z0-9])?\Z")


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
