#!/usr/bin/env python3
"""(Re)generate the release notes of the version in galaxy.yml from changelogs/fragments/.

antsibull-changelog writes changelogs/changelog.yaml and CHANGELOG.rst. Run it while preparing a
release, whenever its fragments change; the releases before it stay as recorded. Fragments stay
(keep_fragments: true): changelog.yaml records which release took each, so a fragment added after
a release goes to the next one. Regenerating a release keeps its recorded date, so the output only
changes with the fragments.

Usage: scripts/release_notes.py [--date YYYY-MM-DD]   (default: the date already recorded, else today)
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300


def stage(dest):
    """The collection's sources (what git tracks and does not ignore) copied to dest/ansible_collections/..."""
    target = Path(dest) / "ansible_collections" / "regwarden" / "registry"
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                            capture_output=True, check=True, timeout=TIMEOUT_S).stdout
    for name in (n for n in listed.decode().split("\0") if n and not n.startswith(".collections/")):
        source = REPO_ROOT / name
        if not (source.exists() or source.is_symlink()):
            continue  # a tracked file deleted in the work tree
        copy = target / name
        copy.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            copy.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, copy)
    return target


def recorded_date(changelog, version):
    data = yaml.safe_load(changelog.read_text()) if changelog.exists() else {}
    return (((data or {}).get("releases") or {}).get(version) or {}).get("release_date")


def drop_release(changelog, version):
    """The release is made again from scratch (its fragments, modules and objects), on top of the ones before."""
    if changelog.exists():
        data = yaml.safe_load(changelog.read_text()) or {}
        (data.get("releases") or {}).pop(version, None)
        changelog.write_text(yaml.safe_dump(data))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--date", help="release date YYYY-MM-DD (default: the recorded one, else today)")
    args = parser.parse_args(argv)
    version = yaml.safe_load((REPO_ROOT / "galaxy.yml").read_text())["version"]
    date = args.date or recorded_date(REPO_ROOT / "changelogs" / "changelog.yaml", version)
    tools = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        # antsibull-changelog copies the collection directory it runs in: give it the sources only.
        staged = stage(tmp)
        drop_release(staged / "changelogs" / "changelog.yaml", version)
        # It runs ansible-doc: the venv's tools first on PATH.
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=tmp, PATH=str(tools) + os.pathsep + os.environ.get("PATH", ""))
        release = [str(tools / "antsibull-changelog"), "release", "--version", version, "--reload-plugins"]
        for command in (release + (["--date", date] if date else []),
                        [str(tools / "antsibull-changelog"), "lint"],
                        [str(tools / "antsibull-changelog"), "lint-changelog-yaml", "changelogs/changelog.yaml"]):
            result = subprocess.run(command, cwd=staged, env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
                                    check=False)
            if result.returncode != 0:
                print("error: %s failed:\n%s%s" % (" ".join(command[1:3]), result.stdout, result.stderr),
                      file=sys.stderr)
                return 1
        shutil.copy2(staged / "changelogs" / "changelog.yaml", REPO_ROOT / "changelogs" / "changelog.yaml")
        shutil.copy2(staged / "CHANGELOG.rst", REPO_ROOT / "CHANGELOG.rst")
    print("==> release notes for %s: CHANGELOG.rst, changelogs/changelog.yaml" % version, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
