# Shared shell helpers for the project's scripts. Sourced, never run.
# shellcheck shell=bash

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${REGWARDEN_VENV:-$REPO_ROOT/.venv}"
export ANSIBLE_CONFIG="$REPO_ROOT/ansible.cfg"
# The Debian docker.io client; another docker binary earlier on PATH may be newer than the engine.
DOCKER="${DOCKER:-/usr/bin/docker}"
export DOCKER

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

require_root() {
  [ "$(id -u)" -eq 0 ] || die "run as root: it installs Debian packages and starts dockerd"
}

# Debian packages the tests, the demo and the image builds need.
APT_PACKAGES=(
  python3 python3-venv python3-pip ca-certificates curl git make
  docker.io docker-compose docker-registry debootstrap
  apache2-utils openssl
  time
  shellcheck # ansible-test sanity's shellcheck test (scripts/lint.sh) skips itself without it
  prometheus # only for promtool (alert-rule and textfile checks); its server is stopped below
)

install_apt_packages() {
  local missing=()
  local pkg
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The tests need promtool, not a Prometheus server listening on :9090.
  if [[ " ${missing[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  fi
}

# The venv is rebuilt only when requirements/test.txt changes.
ensure_venv() {
  local stamp="$VENV/.requirements.sha256"
  local want
  want="$(sha256sum "$REPO_ROOT/requirements/test.txt" | cut -d' ' -f1)"
  if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  log "creating venv $VENV"
  local py="${PYTHON:-python3}"
  "$py" -m venv --clear "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REPO_ROOT/requirements/test.txt"
  echo "$want" >"$stamp"
}

# Starts dockerd when no engine answers; records the PID when this script started it.
DOCKERD_PIDFILE="/run/regwarden-dockerd.pid"
ensure_dockerd() {
  if "$DOCKER" info >/dev/null 2>&1; then
    return 0
  fi
  if [ -d /run/systemd/system ] && systemctl start docker 2>/dev/null; then
    :
  else
    log "starting dockerd"
    nohup /usr/sbin/dockerd >/var/log/regwarden-dockerd.log 2>&1 &
    echo $! >"$DOCKERD_PIDFILE"
  fi
  for _ in $(seq 1 60); do
    "$DOCKER" info >/dev/null 2>&1 && return 0
    sleep 1
  done
  die "dockerd did not answer within 60 s (see /var/log/regwarden-dockerd.log)"
}

# Stops dockerd only if ensure_dockerd started it, by its recorded PID.
stop_own_dockerd() {
  [ -f "$DOCKERD_PIDFILE" ] || return 0
  local pid
  pid="$(cat "$DOCKERD_PIDFILE")"
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping dockerd (pid $pid)"
    kill "$pid"
    for _ in $(seq 1 30); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 1
    done
  fi
  rm -f "$DOCKERD_PIDFILE"
}

setup_all() {
  require_root
  install_apt_packages
  ensure_venv
  ensure_dockerd
  export PATH="$VENV/bin:$PATH"
}
