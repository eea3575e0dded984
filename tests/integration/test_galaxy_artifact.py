"""The collection as its users get it: ``ansible-galaxy collection build``, then
``ansible-galaxy collection install`` of that tarball into an empty collections path, then
everything run by FQCN from a directory outside the repository, with an ``ansible.cfg`` that
knows nothing of the checkout.

- The tarball holds what a user needs and none of the development tree (tests but
  ``tests/sanity``, Molecule, image builds, scripts, venvs, caches).
- ``ansible-doc`` renders every module and the role's argument specs from the installed copy.
- Each module runs by FQCN against real registries (:mod:`tests.support.small_tree`); the short
  names (which the repo's ansible.cfg maps to plugins/modules) do not resolve: the installed
  copy is what runs.
- The role: ``--syntax-check`` of a play that applies it, then its preflight in check mode on
  this host (argument specs validated, every preflight assert run, nothing else: it never
  installs Docker here), once passing and once refusing a floating registry tag.
- The audit playbook by its FQCN, ``regwarden.registry.audit``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from scripts.collection_artifact import build_and_install
from tests.support import storage
from tests.support.ansible_run import REPO_ROOT, ModuleRun, PlaybookRun, ansible_bin, run_module, run_playbook
from tests.support.small_tree import SmallTree, build_small_tree

MODULES = ("registry_blob_scan", "registry_htpasswd", "registry_index_audit", "registry_probe", "registry_tag_cleanup")
ROLE = "regwarden.registry.docker_registry"
COMMAND_TIMEOUT_S = 300


def galaxy_version() -> str:
    return yaml.safe_load((REPO_ROOT / "galaxy.yml").read_text())["version"]


@dataclass
class Installed:
    tarball: Path
    workdir: Path  # outside the repo: the ansible.cfg, playbooks and inventory live here
    collections: Path
    env: dict

    @property
    def collection_dir(self) -> Path:
        return self.collections / "ansible_collections" / "regwarden" / "registry"

    def run(self, tool: str, *args: str) -> subprocess.CompletedProcess:
        command = [str(Path(ansible_bin()).with_name(tool)), *args]
        env = {**_clean_environ(), **self.env}
        return subprocess.run(command, cwd=self.workdir, env=env, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL, check=False)

    def module(self, name: str, args: dict, **kwargs) -> ModuleRun:
        return run_module(name, args, cwd=self.workdir, env=self.env, **kwargs)

    def playbook(self, playbook: str | Path, extra_vars: dict, **kwargs) -> PlaybookRun:
        return run_playbook(playbook, extra_vars, cwd=self.workdir, env=self.env, **kwargs)


def _clean_environ() -> dict:
    import os

    return {key: value for key, value in os.environ.items() if not key.startswith("ANSIBLE_")}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    base = tmp_path_factory.mktemp("galaxy")
    workdir = base / "work"
    workdir.mkdir()
    galaxy = str(Path(ansible_bin()).with_name("ansible-galaxy"))
    tarball, collection = build_and_install(base / "artifact", galaxy=galaxy)
    assert tarball.name == f"regwarden-registry-{galaxy_version()}.tar.gz"
    collections = collection.parents[2]
    # Only the install location: no .collections of the checkout, no library or module_utils.
    (workdir / "ansible.cfg").write_text(
        "[defaults]\n"
        f"collections_path = {collections}\n"
        f"roles_path = {workdir / 'roles'}\n"
        "interpreter_python = auto_silent\n"
        "retry_files_enabled = False\n"
    )
    env = {"ANSIBLE_CONFIG": str(workdir / "ansible.cfg"), "ANSIBLE_COLLECTIONS_PATH": str(collections)}
    return Installed(tarball, workdir, collections, env)


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory) -> SmallTree:
    tree = build_small_tree(tmp_path_factory.mktemp("galaxy-tree"))
    yield tree
    tree.stop()


# -- the artifact -------------------------------------------------------------------------


def test_tarball_ships_the_collection_and_nothing_of_the_development_tree(installed):
    with tarfile.open(installed.tarball) as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile("MANIFEST.json"))
    info = manifest["collection_info"]
    assert (info["namespace"], info["name"], info["version"]) == ("regwarden", "registry", galaxy_version())
    assert info["dependencies"] == {}
    required = {
        *(f"plugins/modules/{module}.py" for module in MODULES),
        *(f"docs/reference/{module}_module.rst" for module in MODULES),
        "docs/reference/docker_registry_role.rst",
        "docs/awx.md",
        "plugins/doc_fragments/attributes.py",
        "plugins/module_utils/_cli.py",
        "roles/docker_registry/meta/argument_specs.yml",
        "roles/docker_registry/tasks/main.yml",
        "playbooks/audit.yml",
        "playbooks/site.yml",
        "playbooks/s3_maintenance.yml",
        "playbooks/verify_image.yml",
        "meta/runtime.yml",
        "meta/execution-environment.yml",
        "meta/ee-requirements.txt",
        "meta/ee-bindep.txt",
        "CHANGELOG.rst",
        "changelogs/changelog.yaml",
        "LICENSE",
        "README.md",
    }
    assert required <= names, sorted(required - names)
    development = ("tests/unit", "tests/integration", "tests/support", "tests/bench", "tests/output",
                   "scripts", "images", "extensions/molecule", "requirements", ".venv", ".cache",
                   ".collections", ".ansible", ".git", ".ci", "ansible.cfg", "pyproject.toml",
                   "execution-environment.yml")
    leaked = sorted(name for name in names if name.startswith(development))
    assert not leaked
    # tests/ ships only the sanity ignore files (part of the collection's sanity contract).
    assert {name for name in names if name.startswith("tests/")} - {"tests/"} <= {
        name for name in names if name.startswith("tests/sanity")}
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]


def test_installed_copy_is_the_only_one_ansible_sees(installed):
    listed = installed.run("ansible-galaxy", "collection", "list", "regwarden.registry", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    locations = json.loads(listed.stdout)
    assert list(locations) == [str(installed.collections / "ansible_collections")]
    assert locations[str(installed.collections / "ansible_collections")]["regwarden.registry"]["version"] == \
        galaxy_version()


@pytest.mark.parametrize("module", MODULES)
def test_ansible_doc_renders_each_module(installed, module):
    rendered = installed.run("ansible-doc", "--json", f"regwarden.registry.{module}")
    assert rendered.returncode == 0, rendered.stderr
    entry = json.loads(rendered.stdout)[f"regwarden.registry.{module}"]
    assert entry["doc"]["module"] == module
    assert entry["doc"]["filename"].startswith(str(installed.collection_dir))
    assert entry["doc"]["options"] and entry["return"] and entry["examples"]
    assert installed.run("ansible-doc", f"regwarden.registry.{module}").returncode == 0


def test_ansible_doc_renders_the_role_argument_specs(installed):
    rendered = installed.run("ansible-doc", "-t", "role", "--json", ROLE)
    assert rendered.returncode == 0, rendered.stderr
    entry = json.loads(rendered.stdout)[ROLE]
    assert entry["path"] == str(installed.collection_dir)
    options = entry["entry_points"]["main"]["options"]
    assert {"docker_registry_image", "docker_registry_data_dir", "docker_registry_caches"} <= set(options)
    assert installed.run("ansible-doc", "-t", "role", ROLE).returncode == 0


# -- the modules, by FQCN ---------------------------------------------------------------------


def test_modules_run_by_fqcn_from_the_installed_copy(installed, small_tree):
    path = str(small_tree.data_dir)
    before = storage.snapshot(small_tree.data_dir)

    blob = installed.module("regwarden.registry.registry_blob_scan", {"path": path})
    assert blob.rc == 0 and not blob.failed, blob.stdout[-3000:]
    assert blob.result["registries"] == ["dockerhub", "private"]
    assert [(f["registry"], f["repo"], f["digest"]) for f in blob.result["orphan_layer_links"]] == [
        ("dockerhub", "library/base", small_tree.cache_orphan_digest)]
    assert blob.result["ansible_facts"]["registry_blob_scan"]["orphan_layer_links"] == \
        blob.result["orphan_layer_links"]

    index = installed.module("regwarden.registry.registry_index_audit", {"path": path})
    assert index.rc == 0 and not index.failed, index.stdout[-3000:]
    assert index.result["findings"] == 0
    assert index.result["summary"]["private"]["indexes"] == 1

    probe = installed.module("regwarden.registry.registry_probe",
                             {"url": small_tree.private.url, "verify_blobs": True})
    assert probe.rc == 0 and not probe.failed, probe.stdout[-3000:]
    assert probe.result["unfetchable"] == []
    assert probe.result["counts"]["repositories"] == 2
    assert probe.result["counts"]["tags"] == 3
    blobs = {blob.digest for image in small_tree.images.values() if image is not small_tree.images["base"]
             for manifest in image.walk() for blob in manifest.blobs}
    assert probe.result["counts"]["blobs"] == len(blobs)

    # keep=1 in check mode: the older team/tool tag would go; nothing is removed.
    cleanup = installed.module("regwarden.registry.registry_tag_cleanup",
                               {"path": path, "registries": ["private"], "keep": 1}, check=True, diff=True)
    assert cleanup.rc == 0 and not cleanup.failed, cleanup.stdout[-3000:]
    assert cleanup.result["changed"] is True
    assert [(t["repo"], t["tag"]) for t in cleanup.result["removed_tags"]] == [("team/tool", "1")]

    assert storage.snapshot(small_tree.data_dir) == before


def test_short_module_names_do_not_resolve_outside_the_repo(installed, small_tree):
    run = installed.module("registry_blob_scan", {"path": str(small_tree.data_dir)})
    assert run.failed
    assert "registry_blob_scan" in run.result.get("msg", "")


# -- the role and the playbooks ---------------------------------------------------------------

ROLE_PLAY = """\
- name: Registry VM
  hosts: registry
  gather_facts: true
  roles:
    - role: regwarden.registry.docker_registry
"""

# Valid for every preflight check; the certificate content is only checked for presence there.
ROLE_VARS = {
    "docker_registry_private_users": [{"username": "ci", "password": "not-a-real-secret"}],
    "docker_registry_private_tls_cert": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    "docker_registry_private_tls_key": "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n",
}


@pytest.fixture(scope="module")
def role_play(installed) -> tuple[Path, Path]:
    playbook = installed.workdir / "registry_vm.yml"
    playbook.write_text(ROLE_PLAY)
    inventory = installed.workdir / "inventory.yml"
    inventory.write_text(
        "registry:\n  hosts:\n    regvm:\n      ansible_connection: local\n      ansible_become: false\n"
        f"      ansible_python_interpreter: {sys.executable}\n")
    return playbook, inventory


def test_role_play_passes_syntax_check(installed, role_play):
    playbook, inventory = role_play
    checked = installed.run("ansible-playbook", "--syntax-check", "-i", str(inventory), str(playbook))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def preflight(installed, role_play, extra_vars) -> PlaybookRun:
    playbook, inventory = role_play
    # Check mode and the preflight tag: argument specs and asserts only, nothing changes.
    return installed.playbook(playbook, extra_vars, inventory=inventory,
                              options=("--check", "--tags", "docker_registry_preflight"))


def task_names(run: PlaybookRun) -> list[str]:
    """Task names without the ``<role> : `` prefix the json callback adds to a role's tasks."""
    return [task["task"]["name"].split(" : ", 1)[-1] for play in run.output["plays"] for task in play["tasks"]]


def test_role_preflight_runs_from_the_installed_copy(installed, role_play):
    run = preflight(installed, role_play, ROLE_VARS)
    assert run.rc == 0, run.stdout[-4000:] + run.stderr[-2000:]
    stats = run.output["stats"]["regvm"]
    assert stats["failures"] == 0 and stats["changed"] == 0
    names = task_names(run)
    assert names[:2] == ["Gathering Facts", names[1]] and names[1].startswith("Validating arguments against arg spec")
    preflight_names = [name for name in names[2:] if name.startswith("Preflight | ")]
    assert len(preflight_names) >= 5, names
    # Nothing past the preflight ran: no install, images, configs, stack or timers.
    assert names[2:] == preflight_names


def test_role_preflight_refuses_a_floating_registry_tag(installed, role_play):
    run = preflight(installed, role_play, {**ROLE_VARS, "docker_registry_image": "registry:2"})
    assert run.rc != 0
    failed = run.task_result(f"{ROLE} : Preflight | Registry image is pinned to a release", "regvm")
    assert failed["failed"] is True
    assert "not pinned to a release" in failed["msg"]


def test_audit_playbook_runs_by_fqcn(installed, role_play, small_tree):
    _, inventory = role_play
    run = installed.playbook("regwarden.registry.audit",
                             {"registry_audit_data_dir": str(small_tree.data_dir),
                              "registry_audit_probe_url": small_tree.private.url},
                             inventory=inventory)
    assert run.rc == 0, run.stdout[-4000:] + run.stderr[-2000:]
    probe = run.task_result("Walk every tag, manifest and blob over HTTP", "regvm")
    assert probe["findings"] == 0
    blob = run.task_result("Scan the storage of every registry", "regvm")
    assert blob["findings"] == 1  # the cache's orphan link: reported, not fatal
