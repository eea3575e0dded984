"""The role run on the controller without a VM: its preflight alone, or its templates rendered from
its own defaults and vars (what a controller test of the role's logic needs)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support.ansible_run import REPO_ROOT

ROLE = REPO_ROOT / "roles" / "docker_registry"
PLAY = """
- hosts: all
  gather_facts: false
  vars_files:
    - {defaults}
    - {vars}
  tasks:
    - name: Render the role's templates
      ansible.builtin.template:
        src: "{role}/templates/{{{{ item }}}}.j2"
        dest: "{out}/{{{{ inventory_hostname }}}}-{{{{ item }}}}"
        mode: "0755"
      loop: {templates}
    - name: The maintenance units as the role computes them
      ansible.builtin.copy:
        content: "{{{{ _docker_registry_maintenance_units | to_json }}}}"
        dest: "{out}/{{{{ inventory_hostname }}}}-units.json"
        mode: "0644"
"""


def render(tmp_path: Path, templates, settings: dict, hosts="vm-a,vm-b") -> Path:
    """The role's ``templates`` rendered by Ansible (from the role's defaults and vars, ``settings`` as
    extra vars) for each of ``hosts``, as <out>/<host>-<template>, and each host's maintenance units."""
    out = tmp_path / "out"
    out.mkdir()
    playbook = tmp_path / "render.yml"
    playbook.write_text(PLAY.format(defaults=ROLE / "defaults" / "main.yml", vars=ROLE / "vars" / "main.yml",
                                    role=ROLE, out=out, templates=json.dumps(list(templates))))
    extra = tmp_path / "settings.json"
    extra.write_text(json.dumps(settings))
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO_ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), str(playbook),
                           "-i", hosts + ("," if "," not in hosts else ""), "-c", "local",
                           "-e", "ansible_python_interpreter=%s" % sys.executable, "-e", "@%s" % extra],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def run_preflight(tmp_path: Path, variables: dict, verbosity: str = "", hosts: str = "localhost,"
                  ) -> subprocess.CompletedProcess:
    """The role's preflight alone (``--tags docker_registry_preflight``) with ``variables`` on ``hosts``
    (each of them this machine, over the local connection)."""
    playbook = tmp_path / "preflight.yml"
    playbook.write_text("- hosts: all\n  gather_facts: true\n"
                        "  roles:\n    - role: regwarden.registry.docker_registry\n")
    variables_file = tmp_path / "vars.json"
    variables_file.write_text(json.dumps(variables))
    command = [str(Path(sys.executable).parent / "ansible-playbook"), str(playbook), "-i", hosts,
               "-c", "local", "-e", "ansible_python_interpreter=%s" % sys.executable, "-e", "@%s" % variables_file,
               "--tags", "docker_registry_preflight"]
    if verbosity:
        command.append(verbosity)
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO_ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_DEPRECATION_WARNINGS="0")
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL, check=False)


def preflight_cases(tmp_path: Path, cases: dict, verbosity: str = "") -> tuple[dict, str]:
    """One preflight run for many independent cases: one inventory host per case (each of them this
    machine), its variables as host variables. Returns ({case: its failure's text, or None when its
    preflight passed}, the whole output). A playbook run costs seconds; twenty of them cost a minute
    on every ansible-core the tests run on."""
    playbook = tmp_path / "preflight.yml"
    playbook.write_text("- hosts: all\n  gather_facts: true\n"
                        "  roles:\n    - role: regwarden.registry.docker_registry\n")
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"all": {"hosts": {
        name: {**variables, "ansible_connection": "local", "ansible_python_interpreter": sys.executable}
        for name, variables in cases.items()}}}))
    command = [str(Path(sys.executable).parent / "ansible-playbook"), str(playbook), "-i", str(inventory),
               "--tags", "docker_registry_preflight", "--forks", "8"]
    if verbosity:
        command.append(verbosity)
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO_ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_DEPRECATION_WARNINGS="0")
    proc = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL, check=False)
    text = proc.stdout + proc.stderr
    recap = text[text.rfind("PLAY RECAP"):] if "PLAY RECAP" in text else ""
    results = {}
    for name in cases:
        line = re.search(r"^%s\s+:.*$" % re.escape(name), recap, re.M)
        assert line, "no recap for case %s:\n%s" % (name, text[-3000:])
        if re.search(r"\bfailed=0\b", line.group(0)):
            results[name] = None
            continue
        failure = re.search(r"fatal: \[%s\]: FAILED! => (.*?)(?=\n\S*fatal: \[|\nTASK \[|\nPLAY RECAP|\Z)"
                            % re.escape(name), text, re.S)
        results[name] = " ".join((failure.group(1) if failure else line.group(0)).split())
    return results, text
