#!/usr/bin/env bash
# Demo: provisions a registry "VM" on this machine and audits it.
#   1. builds the local images when missing or out of date (scripts/build-images.sh);
#   2. brings up the Molecule scenario "demo": its systemd container `regwarden-vm-demo` (the
#      platform every scenario shares, the private registry's port 5050 published on 127.0.0.1
#      only), prepared like the test VM, then converged by playbooks/site.yml (inventory/demo.yml);
#   3. pushes a sample multi-arch image (OCI index, two platforms) to the private registry;
#   4. prints the registry_index_audit result for the private registry.
# The registry password and TLS certificate are generated into .cache/demo/ (never committed).
# Running it again reuses the container and converges it again.
# Usage: scripts/demo.sh          bring the demo up (or refresh it)
#        scripts/demo.sh clean    remove the container, its volumes and .cache/demo/
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONTAINER=regwarden-vm-demo
STATE_DIR="$REPO_ROOT/.cache/demo"
INVENTORY="$REPO_ROOT/inventory/demo.yml"
PRIVATE_PORT=5050
REGISTRY_USER=demo
SAMPLE_REPO=demo/app
SAMPLE_TAG=v1
export REGWARDEN_VM_PUBLISH="127.0.0.1:$PRIVATE_PORT:$PRIVATE_PORT"
# inventory/demo.yml reads the generated password and certificate from here (Molecule converges
# with a copy of the inventory in its own temporary directory).
export REGWARDEN_DEMO_STATE_DIR="$STATE_DIR"

usage() { sed -n '2,14s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

demo_clean() {
  require_root
  ensure_venv
  ensure_dockerd
  # molecule runs ansible-config and ansible-playbook from PATH: the venv's.
  (cd "$REPO_ROOT" && PATH="$VENV/bin:$PATH" "$VENV/bin/molecule" destroy -s demo)
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
  # The same container, preparation and driver as the tests; converge = playbooks/site.yml.
  log "molecule create, prepare, converge -s demo (playbooks/site.yml -i inventory/demo.yml)"
  molecule create -s demo
  molecule prepare --force -s demo
  molecule converge -s demo

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
