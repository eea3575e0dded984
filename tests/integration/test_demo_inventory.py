"""The demo inventory finds scripts/demo.sh's generated files from a copy of itself: Molecule
converges with a copy in its own temporary directory (the demo failed there before), ad-hoc
commands use the file in place."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

from tests.support.ansible_run import REPO_ROOT, ansible_bin


def state_dir(inventory, env_value):
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO_ROOT / "ansible.cfg"), ANSIBLE_STDOUT_CALLBACK="json",
               ANSIBLE_LOAD_CALLBACK_PLUGINS="1")
    env.pop("REGWARDEN_DEMO_STATE_DIR", None)
    if env_value is not None:
        env["REGWARDEN_DEMO_STATE_DIR"] = env_value
    # debug runs on the controller; the local connection stands in for the demo container's (whose
    # plugin, community.docker's, the bare ansible-core of the matrix venvs lacks).
    proc = subprocess.run([ansible_bin(), "regwarden-vm-demo", "-i", str(inventory), "-e", "ansible_connection=local",
                           "-m", "ansible.builtin.debug", "-a", "var=regwarden_demo_state_dir"],
                          cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["regwarden-vm-demo"]
    return result["regwarden_demo_state_dir"].strip()


def test_a_copy_of_the_demo_inventory_uses_the_directory_demo_sh_names(tmp_path):
    copy = tmp_path / "inventory" / "hosts.yml"
    copy.parent.mkdir()
    shutil.copy(REPO_ROOT / "inventory" / "demo.yml", copy)
    assert state_dir(copy, "/srv/demo-state") == "/srv/demo-state"


def test_the_demo_inventory_in_place_finds_the_cache_beside_it():
    got = state_dir(REPO_ROOT / "inventory" / "demo.yml", None)
    assert os.path.normpath(got) == str(REPO_ROOT / ".cache" / "demo")
