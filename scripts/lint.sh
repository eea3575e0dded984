#!/usr/bin/env bash
# The collection's lint, as the test command runs it (scripts/test.sh) and as CI can run it alone:
#   ansible-lint (production profile, .ansible-lint)
#   changelog: antsibull-changelog lint, changelog.yaml schema, CHANGELOG.rst generated from it
#   docs: antsibull-docs lint-collection-docs, docs/reference/ current (scripts/docs.sh --check)
#   ansible-test sanity on the built artifact, for every ansible-core release the collection
#     claims (scripts/lib_collection.sh CORE_MATRIX), each on its controller Python, the modules
#     compiled and imported under every Python that release supports and this machine has.
# Zero findings, or an entry in tests/sanity/ignore-<core>.txt with a one-line reason.
#
# ansible-test sanity runs on the collection as `ansible-galaxy collection install` lays out the
# built tarball: what users get and what Galaxy certification checks (the test suite, Molecule
# and the scripts are not shipped; ruff and the tests themselves cover them).
#
# Offline: ansible-test bootstraps pip in its venvs with a script it downloads from
# ci-files.testing.ansible.com (not reachable here); ensure_offline_get_pip writes a stand-in
# (ensurepip, then pip from PyPI) into ~/.ansible/test/cache/, where ansible-test looks first.
#
# Usage: scripts/lint.sh [--sanity-cores all|ends|none]
#   all (default): every release in CORE_MATRIX; ends: the oldest and the newest; none: skip sanity
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=scripts/lib_collection.sh
source "$REPO_ROOT/scripts/lib_collection.sh"

sanity_cores=all
while [ $# -gt 0 ]; do
  case "$1" in
    --sanity-cores) sanity_cores="${2:-}"; shift ;;
    *) die "usage: scripts/lint.sh [--sanity-cores all|ends|none]" ;;
  esac
  shift
done
case "$sanity_cores" in
  all) cores=("${CORE_MATRIX[@]}") ;;
  ends) cores=("$CORE_OLDEST" "$CORE_NEWEST") ;;
  none) cores=() ;;
  *) die "--sanity-cores takes all, ends or none" ;;
esac

ensure_venv
export PATH="$VENV/bin:$PATH"
cd "$REPO_ROOT"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

step() { printf -- '--- %s\n' "$*" >&2; }

# ansible-test shows pip's output while it fills its venvs (first run, a few hundred lines):
# keep what the tests say.
without_pip_progress() {
  grep --line-buffered -Ev '^ *(Collecting|Downloading|Processing|Installing collected|Successfully (installed|uninstalled)|Requirement already|Looking in|Attempting uninstall|Found existing|Uninstalling|Using cached|WARNING: Location|Building wheels?|Created wheel|Stored in directory|Preparing metadata|Getting requirements|Installing build dependencies|━)' || true
}

step "ansible-lint (profile production)"
ansible-lint --nocolor

step "changelog: antsibull-changelog lint, changelogs/changelog.yaml, CHANGELOG.rst"
antsibull-changelog lint
antsibull-changelog lint-changelog-yaml changelogs/changelog.yaml
# CHANGELOG.rst must be what changelog.yaml renders to (scripts/release_notes.py writes both).
staged="$(stage_collection "$tmp/changelog")"
(cd "$staged" && ANSIBLE_COLLECTIONS_PATH="$tmp/changelog" antsibull-changelog generate >/dev/null)
diff -u CHANGELOG.rst "$staged/CHANGELOG.rst" >&2 ||
  die "CHANGELOG.rst does not match changelogs/changelog.yaml: run scripts/release_notes.py"

step "docs: antsibull-docs lint-collection-docs, docs/reference/ current"
staged="$(stage_collection "$tmp/docs")"
(cd "$staged" && ANSIBLE_COLLECTIONS_PATH="$tmp/docs" antsibull-docs lint-collection-docs --plugin-docs .)
"$REPO_ROOT/scripts/docs.sh" --check

[ ${#cores[@]} -gt 0 ] || { log "ansible-test sanity skipped (--sanity-cores none)"; exit 0; }

step "build and install the artifact for ansible-test sanity"
installed="$(python "$REPO_ROOT/scripts/collection_artifact.py" "$tmp/artifact")"

pythons="$(python_versions_dir)"
for entry in "${cores[@]}"; do
  read -r core_version python_version <<<"$entry"
  step "ansible-test sanity, ansible-core $core_version (Python $python_version)"
  core_venv="$(ensure_core_venv "$core_version" "$python_version")"
  ensure_offline_get_pip "$core_venv"
  started=$SECONDS
  # pythonX.Y links first: ansible-test finds every Python by name, and pyenv shims refuse the
  # versions that are not selected.
  (cd "$installed" && PATH="$pythons:$core_venv/bin:$PATH" \
    ansible-test sanity --venv --color no --truncate 0 2>&1 | without_pip_progress)
  rm -rf "$installed/tests/output"
  log "sanity with ansible-core $core_version passed in $((SECONDS - started)) s"
done
