#!/usr/bin/env bash
# Demo: provisions a registry "VM" on this machine and audits it.
#   1. builds the local images when missing or out of date (scripts/build-images.sh);
#   2. starts the systemd container `regwarden-demo` (same run options as the Molecule platform;
#      the private registry's port 5050 published on 127.0.0.1 only), or reuses it;
#   3. runs playbooks/site.yml on it (inventory/demo.yml: group `registry`);
#   4. pushes a sample multi-arch image (OCI index, two platforms) to the private registry;
#   5. prints the registry_index_audit result for the private registry.
# The registry password and TLS certificate are generated into .cache/demo/ (never committed).
# Running it again reuses the container and converges it again.
# Usage: scripts/demo.sh          bring the demo up (or refresh it)
#        scripts/demo.sh clean    remove the container, its volumes and .cache/demo/
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONTAINER=regwarden-demo
STATE_DIR="$REPO_ROOT/.cache/demo"
INVENTORY="$REPO_ROOT/inventory/demo.yml"
PLATFORM_FILE="$REPO_ROOT/extensions/molecule/default/molecule.yml"
PRIVATE_PORT=5050
REGISTRY_USER=demo
SAMPLE_REPO=demo/app
SAMPLE_TAG=v1

usage() { sed -n '2,13s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

container_status() { "$DOCKER" container inspect -f '{{.State.Status}}' "$CONTAINER" 2>/dev/null || true; }

demo_clean() {
  require_root
  if [ -n "$(container_status)" ]; then
    log "removing container $CONTAINER and its volumes"
    "$DOCKER" rm -f -v "$CONTAINER" >/dev/null
  fi
  rm -rf "$STATE_DIR"
  log "demo removed (the local images stay; scripts/build-images.sh keeps them current)"
}

# Password and TLS material exist only on this machine, generated once per demo.
make_secrets() {
  mkdir -p "$STATE_DIR/tls"
  chmod 0700 "$STATE_DIR"
  if [ ! -s "$STATE_DIR/registry-password" ]; then
    (umask 077 && openssl rand -hex 24 >"$STATE_DIR/registry-password")
  fi
  if [ ! -s "$STATE_DIR/tls/registry.crt" ] || [ ! -s "$STATE_DIR/tls/registry.key" ]; then
    log "generating a self-signed TLS certificate for the private registry"
    (umask 077 && openssl req -x509 -newkey rsa:2048 -nodes -days 825 -sha256 \
      -subj "/CN=$CONTAINER" \
      -addext "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:$CONTAINER" \
      -keyout "$STATE_DIR/tls/registry.key" -out "$STATE_DIR/tls/registry.crt" 2>/dev/null)
  fi
}

# `docker run` options of the Molecule platform, so the demo VM and the tested VM are the same.
platform_run_args() {
  "$VENV/bin/python" - "$PLATFORM_FILE" <<'PY'
import sys

import yaml

with open(sys.argv[1], encoding="utf-8") as handle:
    platform = yaml.safe_load(handle)["platforms"][0]
args = ["--cap-add=" + cap for cap in platform.get("capabilities", [])]
args += ["--security-opt=" + opt for opt in platform.get("security_opts", [])]
if platform.get("cgroupns_mode"):
    args.append("--cgroupns=" + platform["cgroupns_mode"])
args += ["--volume=" + volume for volume in platform.get("volumes", [])]
args += ["--tmpfs=" + path for path in platform.get("tmpfs", [])]
if platform.get("stop_signal"):
    args.append("--stop-signal=" + platform["stop_signal"])
args += [platform["image"], *platform["command"].split()]
print("\n".join(args))
PY
}

start_vm() {
  local status
  status="$(container_status)"
  case "$status" in
    running) log "reusing running container $CONTAINER" ;;
    created | exited)
      log "starting existing container $CONTAINER"
      "$DOCKER" start "$CONTAINER" >/dev/null
      ;;
    "")
      log "creating container $CONTAINER"
      local run_args
      mapfile -t run_args < <(platform_run_args)
      [ "${#run_args[@]}" -gt 2 ] || die "could not read the platform from $PLATFORM_FILE"
      "$DOCKER" run --detach --name "$CONTAINER" --hostname "$CONTAINER" \
        --publish "127.0.0.1:$PRIVATE_PORT:$PRIVATE_PORT" "${run_args[@]}" >/dev/null
      ;;
    *) die "container $CONTAINER is $status; remove it with: scripts/demo.sh clean" ;;
  esac
  # systemd must be up before Ansible installs and starts services; right after the start
  # systemctl cannot even reach it, so poll.
  local state=""
  for _ in $(seq 1 60); do
    state="$("$DOCKER" exec "$CONTAINER" systemctl is-system-running 2>/dev/null || true)"
    case "$state" in
      running | degraded) return 0 ;;
    esac
    sleep 1
  done
  die "systemd in $CONTAINER did not finish booting within 60 s (state: ${state:-unknown})"
}

# The image ships no apt lists (cache_valid_time would trust stale stamps), and the images the
# role loads come from this machine: copy them when the container lacks the current build.
prepare_vm() {
  if ! "$DOCKER" exec "$CONTAINER" sh -c 'ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1'; then
    log "refreshing apt lists in $CONTAINER"
    "$DOCKER" exec "$CONTAINER" apt-get update -qq
  fi
  "$DOCKER" exec "$CONTAINER" mkdir -p /opt/regwarden-images
  local name local_id remote_id
  for name in registry nginx; do
    local_id="$(cat "$REPO_ROOT/.cache/images/$name.tar.id")"
    remote_id="$("$DOCKER" exec "$CONTAINER" cat "/opt/regwarden-images/$name.tar.id" 2>/dev/null || true)"
    if [ "$local_id" != "$remote_id" ]; then
      log "copying $name.tar into $CONTAINER"
      "$DOCKER" cp "$REPO_ROOT/.cache/images/$name.tar" "$CONTAINER:/opt/regwarden-images/$name.tar"
      "$DOCKER" cp "$REPO_ROOT/.cache/images/$name.tar.id" "$CONTAINER:/opt/regwarden-images/$name.tar.id"
    fi
  done
}

wait_for_registry() {
  local url="https://127.0.0.1:$PRIVATE_PORT/v2/" code=""
  for _ in $(seq 1 60); do
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 \
      --cacert "$STATE_DIR/tls/registry.crt" "$url" || true)"
    # 401: up, and asking for the htpasswd credentials.
    [ "$code" = 401 ] && return 0
    sleep 2
  done
  die "the private registry at $url did not answer 401 within 120 s (last status: ${code:-none})"
}

demo_up() {
  setup_all
  cd "$REPO_ROOT"
  command -v openssl >/dev/null || die "openssl is missing (apt-get install openssl)"
  [ -f "$REPO_ROOT/playbooks/site.yml" ] || die "playbooks/site.yml is missing"

  "$REPO_ROOT/scripts/build-images.sh"
  make_secrets
  start_vm
  prepare_vm

  log "ansible-playbook playbooks/site.yml -i inventory/demo.yml"
  ansible-playbook "$REPO_ROOT/playbooks/site.yml" -i "$INVENTORY"

  wait_for_registry
  log "pushing the sample multi-arch image to the private registry"
  PYTHONPATH="$REPO_ROOT" python "$REPO_ROOT/scripts/demo_push.py" \
    "https://127.0.0.1:$PRIVATE_PORT" "$REGISTRY_USER" "$STATE_DIR/registry-password" \
    "$STATE_DIR/tls/registry.crt" "$SAMPLE_REPO" "$SAMPLE_TAG"

  log "ansible registry -m regwarden.registry.registry_index_audit -i inventory/demo.yml"
  ansible registry -i "$INVENTORY" -m regwarden.registry.registry_index_audit

  cat >&2 <<EOF

Demo is up. The private registry: https://127.0.0.1:$PRIVATE_PORT (user $REGISTRY_USER,
password in .cache/demo/registry-password, CA certificate .cache/demo/tls/registry.crt).
  shell in the VM:   $DOCKER exec -it $CONTAINER bash
  blob scan:         ansible registry -i inventory/demo.yml -m regwarden.registry.registry_blob_scan
  remove the demo:   scripts/demo.sh clean
EOF
}

case "${1:-up}" in
  up) demo_up ;;
  clean) demo_clean ;;
  -h | --help) usage ;;
  *) usage >&2; exit 2 ;;
esac
