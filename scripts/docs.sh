#!/usr/bin/env bash
# Generates docs/reference/ (one page per module, one for the role, an index) from the sources
# ansible-doc reads: the modules' DOCUMENTATION/EXAMPLES/RETURN and the role's
# meta/argument_specs.yml. Nothing there is written by hand.
# Usage: scripts/docs.sh           regenerate docs/reference/
#        scripts/docs.sh --check   fail when docs/reference/ differs from what the sources give
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

check=0
case "${1:-}" in
  --check) check=1 ;;
  "") ;;
  *) die "usage: scripts/docs.sh [--check]" ;;
esac

ensure_venv
export PATH="$VENV/bin:$PATH"
REFERENCE_DIR="$REPO_ROOT/docs/reference"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
workdir="$tmp/reference"
# antsibull-docs refuses a destination others can write to.
mkdir -m 0755 "$workdir"

# --use-current: the collection as this checkout has it (ansible.cfg resolves it through
# .collections/); --fail-on-error: a doc that does not parse fails instead of making an error page.
antsibull-docs collection --use-current --squash-hierarchy --fail-on-error \
  --no-add-antsibull-docs-version --output-format simplified-rst \
  --dest-dir "$workdir" regwarden.registry >"$tmp/antsibull-docs.log" 2>&1 ||
  { cat "$tmp/antsibull-docs.log" >&2; die "antsibull-docs collection failed"; }

if [ "$check" -eq 1 ]; then
  if ! diff -ru "$REFERENCE_DIR" "$workdir" >&2; then
    die "docs/reference/ is out of date: run scripts/docs.sh and commit the result"
  fi
  log "docs/reference/ is current"
  exit 0
fi

rm -rf "$REFERENCE_DIR"
mkdir -p "$REFERENCE_DIR"
cp -R "$workdir"/. "$REFERENCE_DIR/"
log "wrote $(find "$REFERENCE_DIR" -type f | wc -l) pages to docs/reference/"
