#!/usr/bin/env bash
# The project's whole test suite, as CI runs it (CI=true, no stdin) and as the README documents:
#   lint (ruff; ansible-lint, changelog, docs and ansible-test sanity per claimed ansible-core) ->
#   unit and integration tests (pytest, real docker-registry) -> the same on the oldest and the
#   newest claimed ansible-core -> local images -> Molecule scenario `default` (the role, from the
#   built and installed Galaxy tarball, in a systemd "VM" with Docker inside).
# Installs what is missing (apt packages, venv) and starts dockerd when none answers; a dockerd it
# started is stopped again at exit. Stops at the first failing stage with a non-zero exit code.
# Usage: scripts/test.sh
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cd "$REPO_ROOT"
# No prompt may wait for input, and tool output stays readable in CI logs.
exec </dev/null
export DEBIAN_FRONTEND=noninteractive PY_COLORS=0 ANSIBLE_NOCOLOR=1 NO_COLOR=1

suite_started=$SECONDS
stage_name=""
stage_started=0

stage() {
  stage_name="$1"
  stage_started=$SECONDS
  printf '\n==================== %s ====================\n' "$stage_name" >&2
}

on_exit() {
  local status=$?
  if [ "$status" -ne 0 ] && [ -n "$stage_name" ]; then
    printf '\n!!! stage "%s" failed (exit %d) after %d s\n' "$stage_name" "$status" \
      "$((SECONDS - stage_started))" >&2
  fi
  stop_own_dockerd
  exit "$status"
}
trap on_exit EXIT

stage "setup (apt packages, venv, dockerd)"
setup_all

stage "lint: ruff check ."
ruff check .

stage "lint: ansible-lint, changelog, docs, ansible-test sanity per ansible-core (scripts/lint.sh)"
"$REPO_ROOT/scripts/lint.sh"

stage "unit and integration tests: pytest"
pytest tests/unit tests/integration

stage "module tests on the oldest and the newest ansible-core (scripts/test-matrix.sh)"
"$REPO_ROOT/scripts/test-matrix.sh"

stage "local images: scripts/build-images.sh"
"$REPO_ROOT/scripts/build-images.sh"

stage "Galaxy artifact for Molecule: ansible-galaxy collection build + install"
# The scenario converges the role from the installed tarball, not from the working tree.
artifact_root="$REPO_ROOT/.cache/molecule-artifact"
rm -rf "$artifact_root"
mkdir -p "$artifact_root/build"
ansible-galaxy collection build --output-path "$artifact_root/build" "$REPO_ROOT" >/dev/null
printf '[defaults]\n' >"$artifact_root/ansible.cfg"
ANSIBLE_CONFIG="$artifact_root/ansible.cfg" ansible-galaxy collection install \
  "$artifact_root"/build/*.tar.gz -p "$artifact_root/.collections" >/dev/null
[ -f "$artifact_root/.collections/ansible_collections/regwarden/registry/MANIFEST.json" ] ||
  die "the built collection did not install under $artifact_root/.collections"
export REGWARDEN_COLLECTIONS_ROOT="$artifact_root"

stage "molecule test -s default (the role from the installed artifact)"
molecule test -s default

stage_name=""
log "all stages passed in $((SECONDS - suite_started)) s"
