#!/usr/bin/env bash
# (Re)generates the release notes of the version in galaxy.yml from changelogs/fragments/ with
# antsibull-changelog: changelogs/changelog.yaml and CHANGELOG.rst. Run it while preparing a
# release, whenever its fragments change; releases before it stay as recorded. Fragments stay
# (keep_fragments: true): changelog.yaml records which release took each, so a fragment added
# after a release goes to the next one.
# Usage: scripts/release-notes.sh [--date YYYY-MM-DD]   (default: the date already recorded, else today)
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=scripts/lib_collection.sh
source "$REPO_ROOT/scripts/lib_collection.sh"

date_arg=()
case "${1:-}" in
  --date) [ -n "${2:-}" ] || die "--date needs YYYY-MM-DD"; date_arg=(--date "$2") ;;
  "") ;;
  *) die "usage: scripts/release-notes.sh [--date YYYY-MM-DD]" ;;
esac

ensure_venv
export PATH="$VENV/bin:$PATH"
version="$(python -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["version"])' "$REPO_ROOT/galaxy.yml")"
if [ ${#date_arg[@]} -eq 0 ]; then
  # Regenerating an existing release keeps its date, so the output only changes with the fragments.
  recorded="$(python - "$REPO_ROOT/changelogs/changelog.yaml" "$version" <<'PY'
import os, sys, yaml
path, version = sys.argv[1:]
data = yaml.safe_load(open(path)) if os.path.exists(path) else {}
print(((data or {}).get("releases") or {}).get(version, {}).get("release_date", ""))
PY
)"
  [ -n "$recorded" ] && date_arg=(--date "$recorded")
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# antsibull-changelog copies the collection directory it runs in: give it the sources only.
staged="$(stage_collection "$tmp")"
# The release is made again from scratch (its fragments, added modules and objects), on top of
# the releases before it: antsibull-changelog's refresh options skip new roles and playbooks.
python - "$staged/changelogs/changelog.yaml" "$version" <<'PY'
import os, sys, yaml
path, version = sys.argv[1:]
if os.path.exists(path):
    data = yaml.safe_load(open(path)) or {}
    (data.get("releases") or {}).pop(version, None)
    with open(path, "w") as handle:
        yaml.safe_dump(data, handle)
PY
(
  cd "$staged"
  export ANSIBLE_COLLECTIONS_PATH="$tmp"
  antsibull-changelog release --version "$version" "${date_arg[@]}" --reload-plugins
  antsibull-changelog lint
  antsibull-changelog lint-changelog-yaml changelogs/changelog.yaml
)
cp "$staged/changelogs/changelog.yaml" "$REPO_ROOT/changelogs/changelog.yaml"
cp "$staged/CHANGELOG.rst" "$REPO_ROOT/CHANGELOG.rst"
log "release notes for $version: CHANGELOG.rst, changelogs/changelog.yaml"
