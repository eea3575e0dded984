#!/usr/bin/env bash
# The project's whole test suite, as CI runs it (CI=true, no stdin) and as the README documents:
#   lint (ruff, pycodestyle; ansible-lint, changelog, docs and ansible-test sanity per claimed ansible-core) ->
#   unit and integration tests (pytest, real docker-registry) -> the same on the oldest and the
#   newest claimed ansible-core -> local images -> Molecule scenarios `default` (every feature on)
#   and `minimal` (the optional ones off): the role, from the built and installed Galaxy tarball,
#   in a systemd "VM" with Docker inside.
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

stage "lint: ruff check . and pycodestyle plugins (the pep8 rules ruff lacks, as ansible-test sanity runs them)"
ruff check .
pycodestyle --max-line-length 160 --ignore E402,W503,W504,E741 plugins

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
python "$REPO_ROOT/scripts/collection_artifact.py" "$artifact_root" >/dev/null
export REGWARDEN_COLLECTIONS_ROOT="$artifact_root"

stage "molecule test -s default (the role from the installed artifact, every feature on)"
molecule test -s default

stage "molecule test -s minimal (the optional features off: no TLS, no cache, no tag cleanup)"
molecule test -s minimal

stage "molecule test -s s3 (SeaweedFS in the VM, two private replicas + Redis, maintenance on S3)"
molecule test -s s3

stage_name=""
log "all stages passed in $((SECONDS - suite_started)) s"
