# Helpers for the collection as a package: the ansible-core releases it claims and tests (a venv
# for each), a staged copy of the collection for the tools that want ansible_collections/ns/name
# and must not walk the checkout's caches. Sourced after lib.sh, never run.
# shellcheck shell=bash

# "ansible-core version  controller Python": the oldest claimed release on the oldest Python it
# runs on, the newest on the newest. The venv's release (requirements/test.txt) is one of them.
CORE_MATRIX=(
  "2.17.14 3.10"
  "2.18.19 3.11"
  "2.19.14 3.11"
  "2.20.10 3.12"
  "2.21.5 3.13"
)
# shellcheck disable=SC2034 # read by the scripts that source this file
CORE_OLDEST="${CORE_MATRIX[0]}"
# shellcheck disable=SC2034
CORE_NEWEST="${CORE_MATRIX[${#CORE_MATRIX[@]} - 1]}"
CORE_VENVS_DIR="$REPO_ROOT/.cache/ansible-core"
PYENV_ROOT="${PYENV_ROOT:-/root/.pyenv}"

# The interpreter for "3.12": pyenv's real binary, else one on PATH that is not a pyenv shim
# (a shim refuses versions that are not selected with `pyenv global`).
find_python() {
  local version="$1" candidate
  for candidate in "$PYENV_ROOT"/versions/"$version".*/bin/python"$version"; do
    [ -x "$candidate" ] && { echo "$candidate"; return 0; }
  done
  candidate="$(PATH="$(printf '%s' "$PATH" | tr ':' '\n' | grep -v '/shims$' | paste -sd:)" \
    command -v "python$version" || true)"
  [ -n "$candidate" ] && { echo "$candidate"; return 0; }
  return 1
}

# A directory of pythonX.Y links to every interpreter found, for ansible-test: it looks for
# pythonX.Y on PATH to compile and import the modules under each Python they support.
python_versions_dir() {
  local dir="$CORE_VENVS_DIR/pythons" minor path
  mkdir -p "$dir"
  for minor in 2.7 3.6 3.7 3.8 3.9 3.10 3.11 3.12 3.13 3.14; do
    if path="$(find_python "$minor")"; then
      ln -sfn "$path" "$dir/python$minor"
    else
      rm -f "$dir/python$minor"
    fi
  done
  echo "$dir"
}

# Prints the venv for "VERSION PYTHON": the project venv when it has that ansible-core, else
# .cache/ansible-core/<version>-py<python> with ansible-core, the test requirements
# (requirements/matrix.txt) and ansible.posix copied from the project venv (the json stdout
# callback tests/support/ansible_run.py reads results with; ansible-core alone lacks it).
ensure_core_venv() {
  local version="$1" python_version="$2"
  # shellcheck disable=SC2153 # VENV: the project venv, from lib.sh
  if [ "$("$VENV/bin/python" -c 'import ansible; print(ansible.__version__)')" = "$version" ]; then
    echo "$VENV"
    return 0
  fi
  local venv="$CORE_VENVS_DIR/$version-py$python_version"
  local stamp="$venv/.requirements.sha256" want python
  want="$( (echo "ansible-core==$version"; cat "$REPO_ROOT/requirements/matrix.txt") | sha256sum | cut -d' ' -f1)"
  if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    echo "$venv"
    return 0
  fi
  python="$(find_python "$python_version")" ||
    die "Python $python_version is needed for ansible-core $version (pyenv install $python_version)"
  log "creating venv $venv (ansible-core $version, $("$python" --version))"
  # Command substitution does not inherit errexit: every step checks its own status.
  "$python" -m venv --clear "$venv" >&2 || die "cannot create $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "ansible-core==$version" \
    -r "$REPO_ROOT/requirements/matrix.txt" >&2 || die "pip install into $venv failed"
  local posix_src site
  posix_src="$("$VENV/bin/python" -c 'import ansible_collections.ansible.posix as p; print(list(p.__path__)[0])')" ||
    die "ansible.posix not found in $VENV (requirements/test.txt installs the ansible package)"
  site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" || die "no site-packages in $venv"
  { mkdir -p "$site/ansible_collections/ansible" && cp -a "$posix_src" "$site/ansible_collections/ansible/posix"; } ||
    die "cannot copy ansible.posix into $venv"
  echo "$want" >"$stamp"
  echo "$venv"
}

# ansible-test bootstraps pip in each venv it creates with a get-pip script it downloads from
# ci-files.testing.ansible.com, which is not reachable here. It uses a cached script first, so
# this writes one that does the same offline: ensurepip, then pip installs what it was asked
# for (the pinned pip) from PyPI. A real get-pip script already cached is left alone.
ensure_offline_get_pip() {
  local venv="$1" pip_version cache
  pip_version="$("$venv/bin/python" - <<'EOF'
import re
from pathlib import Path
import ansible_test
source = Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py"
print(re.search(r"pip='([0-9.]+)'", source.read_text()).group(1))
EOF
)"
  cache="$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
  if [ -f "$cache" ] && ! grep -q 'regwarden offline get-pip' "$cache"; then
    return 0
  fi
  mkdir -p "$(dirname "$cache")"
  cat >"$cache" <<'EOF'
# regwarden offline get-pip: written by scripts/lib_collection.sh (see ensure_offline_get_pip).
import subprocess
import sys

GET_PIP_ONLY_OPTIONS = {"--no-setuptools", "--no-wheel"}
pip_args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY_OPTIONS]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"])
subprocess.check_call([sys.executable, "-m", "pip", "install"] + pip_args)
EOF
}

# Copies the collection's files (tracked and untracked-but-not-ignored, as git sees them) to
# DEST/ansible_collections/regwarden/registry and prints that path. Tools that copy or walk the
# whole collection directory (antsibull-changelog, ansible-test) get the sources, not the
# gigabytes of images and venvs under .cache/ and .venv/.
stage_collection() {
  local dest="$1/ansible_collections/regwarden/registry"
  mkdir -p "$dest" || die "cannot create $dest"
  # A tracked file deleted in the work tree is not copied.
  (cd "$REPO_ROOT" && git ls-files -z --cached --others --exclude-standard | grep -zv '^\.collections/' |
    while IFS= read -r -d '' file; do
      if [ -e "$file" ] || [ -L "$file" ]; then printf '%s\0' "$file"; fi
    done | xargs -0 cp --parents -P -t "$dest") ||
    die "cannot copy the collection to $dest"
  echo "$dest"
}
