#!/usr/bin/env python3
"""Build the collection's Galaxy tarball and install it into an empty collections path.

The one way the test command (Molecule converges the installed artifact), the lint (ansible-test
sanity runs on it) and the artifact test get the collection as its users do.

Usage: scripts/collection_artifact.py DEST   prints the installed collection's directory:
DEST/build/regwarden-registry-<version>.tar.gz, installed under DEST/.collections/.
"""

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300


class ArtifactError(RuntimeError):
    """Building or installing the tarball failed; the message holds the tool's output."""


def build_and_install(dest, galaxy=None, env=None):
    """(tarball, installed collection directory) under ``dest``; ``galaxy``: the ansible-galaxy to run."""
    dest = Path(dest)
    galaxy = galaxy or str(Path(sys.executable).with_name("ansible-galaxy"))
    build_dir, collections = dest / "build", dest / ".collections"
    build_dir.mkdir(parents=True, exist_ok=True)
    # An ansible.cfg of its own: neither the checkout's .collections nor its library are seen.
    config = dest / "ansible.cfg"
    if not config.exists():
        config.write_text("[defaults]\n")
    run_env = dict(os.environ, ANSIBLE_CONFIG=str(config), **(env or {}))
    run_env.pop("ANSIBLE_COLLECTIONS_PATH", None)
    for old in build_dir.glob("*.tar.gz"):
        old.unlink()
    _run([galaxy, "collection", "build", "--output-path", str(build_dir), str(REPO_ROOT)], dest, run_env)
    tarballs = sorted(build_dir.glob("regwarden-registry-*.tar.gz"))
    if len(tarballs) != 1:
        raise ArtifactError("ansible-galaxy built %s, not one tarball" % [t.name for t in tarballs])
    # Offline: the collection depends on nothing (galaxy.yml), so no Galaxy server is asked.
    _run([galaxy, "collection", "install", "--force", str(tarballs[0]), "-p", str(collections)], dest, run_env)
    installed = collections / "ansible_collections" / "regwarden" / "registry"
    if not (installed / "MANIFEST.json").is_file():
        raise ArtifactError("the built collection did not install under %s" % collections)
    return tarballs[0], installed


def _run(command, cwd, env):
    result = subprocess.run(command, cwd=str(cwd), env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
                            stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        raise ArtifactError("%s failed (%d):\n%s%s" % (" ".join(command[:3]), result.returncode, result.stdout,
                                                      result.stderr))


def main(argv):
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-3], file=sys.stderr)
        return 2
    try:
        _tarball, installed = build_and_install(argv[0])
    except (ArtifactError, OSError, subprocess.TimeoutExpired) as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 1
    print(installed)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
