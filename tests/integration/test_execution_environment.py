"""The AWX execution environment definition, checked with ansible-builder itself (offline: no
base image can be pulled here, so the image build is not run; the build context is).

- ``execution-environment.yml`` (ansible-builder v3) generates a build context: schema valid,
  the ansible-core it pins is the one the test suite runs, the collection comes from the tarball
  ``ansible-galaxy collection build`` makes for the version in galaxy.yml.
- The collection's own ``meta/execution-environment.yml``, read from the installed tarball the
  way ansible-builder does inside the image (``introspect``): no Python packages, the system
  packages of ``meta/ee-bindep.txt``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.ansible_run import REPO_ROOT

TIMEOUT_S = 300


def tool(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ANSIBLE_")}
    (cwd / "ansible.cfg").write_text("[defaults]\n")
    env["ANSIBLE_CONFIG"] = str(cwd / "ansible.cfg")
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
                          stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def version() -> str:
    return yaml.safe_load((REPO_ROOT / "galaxy.yml").read_text())["version"]


@pytest.fixture(scope="module")
def tarball(tmp_path_factory) -> Path:
    build_dir = tmp_path_factory.mktemp("ee-build")
    run([tool("ansible-galaxy"), "collection", "build", "--output-path", str(build_dir), str(REPO_ROOT)], build_dir)
    path = build_dir / f"regwarden-registry-{version()}.tar.gz"
    assert path.is_file()
    return path


def test_definition_generates_a_build_context_with_the_tested_core_and_the_tarball(tarball, tmp_path):
    definition = yaml.safe_load((REPO_ROOT / "execution-environment.yml").read_text())
    assert definition["version"] == 3
    # The file names the tarball of galaxy.yml's version, where additional_build_files puts it.
    [copy] = definition["additional_build_files"]
    assert Path(copy["src"]).name == tarball.name
    [collection] = definition["dependencies"]["galaxy"]["collections"]
    assert collection == {"name": f"/build/{copy['dest']}/{tarball.name}", "type": "file"}
    tested_core = re.search(r"^ansible-core==(\S+)$", (REPO_ROOT / "requirements/test.txt").read_text(), re.M)[1]
    assert definition["dependencies"]["ansible_core"]["package_pip"] == f"ansible-core=={tested_core}"

    shutil.copy(REPO_ROOT / "execution-environment.yml", tmp_path / "execution-environment.yml")
    (tmp_path / Path(copy["src"]).parent).mkdir(parents=True)
    shutil.copy(tarball, tmp_path / copy["src"])
    run([tool("ansible-builder"), "create", "-f", "execution-environment.yml", "-c", "context"], tmp_path)
    context = tmp_path / "context"
    containerfile = next(path for path in (context / "Containerfile", context / "Dockerfile") if path.exists())
    text = containerfile.read_text()
    assert f'ANSIBLE_INSTALL_REFS="ansible-core=={tested_core} ' in text
    assert "ansible-galaxy collection install" in text
    assert (context / "_build" / copy["dest"] / tarball.name).read_bytes() == tarball.read_bytes()
    requirements = yaml.safe_load((context / "_build" / "requirements.yml").read_text())
    assert requirements["collections"] == [collection]


def test_collection_declares_its_ee_dependencies_for_ansible_builder(tarball, tmp_path):
    collections = tmp_path / "collections"
    run([tool("ansible-galaxy"), "collection", "install", str(tarball), "-p", str(collections)], tmp_path)
    introspected = run([tool("ansible-builder"), "introspect", "--sanitize", str(collections)], tmp_path)
    data = yaml.safe_load(introspected.stdout.split("\n", 1)[1])  # after the "# Dependency data" line
    python = [line.split("#")[0].strip() for line in data["python"]]
    assert python == [line.strip() for line in (REPO_ROOT / "meta/ee-requirements.txt").read_text().splitlines()
                      if line.strip() and not line.startswith("#")] == ["boto3>=1.26"]
    packages = [line.split("#")[0].strip() for line in data["system"]]
    expected = [line.strip() for line in (REPO_ROOT / "meta/ee-bindep.txt").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert packages == expected
    assert "openssh-clients [platform:rpm]" in packages
