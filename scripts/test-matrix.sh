#!/usr/bin/env bash
# The module tests (tests/unit and tests/integration: modules through `ansible`, the playbooks
# through `ansible-playbook`, the Galaxy artifact installed and run) against the oldest and the
# newest ansible-core the collection claims, each in its own venv on its own Python
# (scripts/lib_collection.sh CORE_MATRIX). The project venv's release runs them in scripts/test.sh
# already and is skipped here. ansible-builder's EE checks do not depend on ansible-core and
# run only in the project venv, and so do the S3 tree tests (marker s3_tree: storage logic, not
# ansible-core's; the S3 option handling runs on every core through the bad-settings tests).
# Usage: scripts/test-matrix.sh [--all] [pytest arguments...]
#   --all: every release of CORE_MATRIX, not only the oldest and the newest
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=scripts/lib_collection.sh
source "$REPO_ROOT/scripts/lib_collection.sh"

cores=("$CORE_OLDEST" "$CORE_NEWEST")
if [ "${1:-}" = "--all" ]; then
  cores=("${CORE_MATRIX[@]}")
  shift
fi

ensure_venv
cd "$REPO_ROOT"
project_core="$("$VENV/bin/python" -c 'import ansible; print(ansible.__version__)')"

# Every release runs even when one fails, so one run shows the whole matrix.
failed=()
for entry in "${cores[@]}"; do
  read -r core_version python_version <<<"$entry"
  if [ "$core_version" = "$project_core" ]; then
    log "ansible-core $core_version is the project venv's: its tests ran in the pytest stage"
    continue
  fi
  core_venv="$(ensure_core_venv "$core_version" "$python_version")"
  log "module tests with ansible-core $core_version on $("$core_venv/bin/python" --version)"
  started=$SECONDS
  # The venv's bin first: run_module and run_playbook call the ansible next to sys.executable.
  if PATH="$core_venv/bin:$PATH" "$core_venv/bin/python" -m pytest -p no:cacheprovider \
    --ignore=tests/integration/test_execution_environment.py -m "not s3_tree and not no_ansible" tests/unit tests/integration "$@"; then
    log "ansible-core $core_version: module tests passed in $((SECONDS - started)) s"
  else
    log "ansible-core $core_version: module tests FAILED after $((SECONDS - started)) s"
    failed+=("$core_version")
  fi
done
[ ${#failed[@]} -eq 0 ] || die "module tests failed with ansible-core ${failed[*]}"
