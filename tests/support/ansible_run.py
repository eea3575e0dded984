"""Run a module through the real ``ansible`` CLI (ad-hoc) and return its result as a dict.

The module goes through Ansible's whole path (argument spec, module_utils shipping, check and
diff mode, JSON result), not a Python import. The ``json`` stdout callback makes the result
machine-readable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_TIMEOUT_S = 300


@dataclass
class ModuleRun:
    command: list[str]
    rc: int
    stdout: str
    stderr: str
    result: dict
    seconds: float

    @property
    def failed(self) -> bool:
        return bool(self.result.get("failed"))


def ansible_bin() -> str:
    """The ``ansible`` next to the running interpreter (the project venv), else on PATH."""
    candidate = Path(sys.executable).parent / "ansible"
    return str(candidate) if candidate.exists() else "ansible"


def run_module(module: str, args: dict, *, check: bool = False, diff: bool = False,
               timeout: float = ANSIBLE_TIMEOUT_S, cwd: str | Path = REPO_ROOT,
               env: dict | None = None) -> ModuleRun:
    """``ansible localhost -m MODULE -a JSON`` from the repository root; the host's result.

    ``module`` may be the FQCN (``regwarden.registry.registry_blob_scan``) or the short name.
    ``cwd`` and ``env`` (added or overriding variables, such as another ``ANSIBLE_CONFIG``) run
    it from elsewhere, for example against an installed copy of the collection.
    """
    env_overrides = env or {}
    command = [
        ansible_bin(), "localhost",
        "-i", "localhost,", "-c", "local",
        # The venv's interpreter: interpreter discovery would pick the system python.
        "-e", f"ansible_python_interpreter={sys.executable}",
        "-m", module, "-a", json.dumps(args),
    ]
    if check:
        command.append("--check")
    if diff:
        command.append("--diff")
    env = dict(os.environ)
    env.update({
        "ANSIBLE_CONFIG": str(REPO_ROOT / "ansible.cfg"),
        "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
        "ANSIBLE_STDOUT_CALLBACK": "json",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_DEPRECATION_WARNINGS": "0",
    })
    env.update(env_overrides)
    started = time.monotonic()
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    seconds = time.monotonic() - started
    try:
        output = json.loads(proc.stdout)
        result = output["plays"][0]["tasks"][0]["hosts"]["localhost"]
    except (ValueError, KeyError, IndexError) as exc:
        raise AssertionError(
            f"could not parse ansible output ({exc}); rc={proc.returncode}\n"
            f"command: {command}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
        ) from exc
    return ModuleRun(command, proc.returncode, proc.stdout, proc.stderr, result, seconds)


@dataclass
class PlaybookRun:
    command: list[str]
    rc: int
    stdout: str
    stderr: str
    output: dict
    seconds: float

    def task_result(self, name_prefix: str, host: str = "localhost") -> dict:
        """The result of the first task whose name starts with ``name_prefix``."""
        for play in self.output.get("plays", []):
            for task in play.get("tasks", []):
                if task["task"]["name"].startswith(name_prefix):
                    return task["hosts"][host]
        raise AssertionError(f"no task {name_prefix!r} ran; stdout:\n{self.stdout[-4000:]}\n{self.stderr[-2000:]}")


def run_playbook(playbook: str | Path, extra_vars: dict, *, timeout: float = ANSIBLE_TIMEOUT_S,
                 inventory: str | Path = "localhost,", env: dict | None = None,
                 cwd: str | Path = REPO_ROOT, options: tuple[str, ...] = ()) -> PlaybookRun:
    """``ansible-playbook PLAYBOOK -e @vars.json`` against localhost (the venv's interpreter).

    Extra vars go through a temporary file (mode 0600), so secrets stay off the command line.
    ``inventory`` replaces the implicit ``localhost,`` (for plays that target a group);
    ``env`` adds or overrides environment variables; ``cwd`` runs it from another directory;
    ``options`` are more ``ansible-playbook`` arguments (``--check``, ``--tags``).
    """
    import tempfile

    env_overrides = env or {}
    playbook_bin = str(Path(ansible_bin()).with_name("ansible-playbook"))
    env = dict(os.environ)
    env.update({
        "ANSIBLE_CONFIG": str(REPO_ROOT / "ansible.cfg"),
        "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
        "ANSIBLE_STDOUT_CALLBACK": "json",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_DEPRECATION_WARNINGS": "0",
    })
    env.update(env_overrides)
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="extra-vars-") as handle:
        json.dump(extra_vars, handle)
        handle.flush()
        command = [
            playbook_bin if Path(playbook_bin).exists() else "ansible-playbook",
            "-i", str(inventory), "-c", "local",
            "-e", f"ansible_python_interpreter={sys.executable}",
            "-e", f"@{handle.name}",
            *options,
            str(playbook),
        ]
        started = time.monotonic()
        proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    seconds = time.monotonic() - started
    try:
        output = json.loads(proc.stdout)
    except ValueError as exc:
        raise AssertionError(
            f"could not parse ansible-playbook output ({exc}); rc={proc.returncode}\n"
            f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
        ) from exc
    return PlaybookRun(command, proc.returncode, proc.stdout, proc.stderr, output, seconds)
