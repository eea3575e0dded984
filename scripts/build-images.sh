#!/usr/bin/env bash
# Builds the local images Molecule and the demo use, since no container registry is reachable:
#   regwarden-local/debian:bookworm   debootstrap (minbase) from the host's own apt mirror
#   regwarden-local/registry:2.8.2    Debian's docker-registry, laid out like registry:2.8.3
#   regwarden-local/nginx:bookworm    Debian's nginx, laid out like the official nginx image
#   regwarden-local/redis:bookworm    Debian's redis-server (the replicas' blob-descriptor cache)
#   regwarden-local/vm:bookworm       systemd "VM" the role provisions
# and saves the registry, nginx and redis images to .cache/images/{registry,nginx,redis}.tar for loading
# into the VM's inner Docker engine.
#
# Each image carries a label with the hash of its inputs (images/<name>/, the parent image, and for
# the base the apt mirror); an image whose label matches is kept, so a warm run does nothing.
# Usage: scripts/build-images.sh [--force]    (--force rebuilds everything from scratch)
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { sed -n '2,14s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

force=0
while [ $# -gt 0 ]; do
  case "$1" in
    --force) force=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done

require_root
command -v debootstrap >/dev/null || die "debootstrap is missing (apt-get install debootstrap)"
ensure_dockerd
export DOCKER_BUILDKIT=0 # BuildKit needs buildx, which Debian's docker.io lacks

IMAGES_DIR="$REPO_ROOT/images"
ARCHIVE_DIR="$REPO_ROOT/.cache/images"
KEY_LABEL="org.regwarden.build-key"
BASE_IMAGE="regwarden-local/debian:bookworm"
# name in images/ -> tag; the base comes first, the others are built FROM it.
declare -A IMAGE_TAGS=(
  [registry]="regwarden-local/registry:2.8.2"
  [nginx]="regwarden-local/nginx:bookworm"
  [redis]="regwarden-local/redis:bookworm"
  [vm]="regwarden-local/vm:bookworm"
)
CHILD_IMAGES=(registry nginx redis vm)
ARCHIVED_IMAGES=(registry nginx redis)

mkdir -p "$ARCHIVE_DIR"
# Two runs at once (test.sh and demo.sh) would both rebuild and race on the archives.
exec 9>"$ARCHIVE_DIR/.build.lock"
flock -w 1800 9 || die "another build-images.sh holds $ARCHIVE_DIR/.build.lock"

image_id() { "$DOCKER" image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }

image_key() {
  "$DOCKER" image inspect -f "{{index .Config.Labels \"$KEY_LABEL\"}}" "$1" 2>/dev/null || true
}

# Hash of every file under a directory, by relative path and content.
dir_hash() {
  (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -d' ' -f1
}

# Removes a replaced image if nothing else uses it (a running container or another tag keeps it).
drop_old_image() {
  local old_id="$1" new_id="$2"
  [ -n "$old_id" ] && [ "$old_id" != "$new_id" ] || return 0
  "$DOCKER" image rm "$old_id" >/dev/null 2>&1 || true
}

ROOTFS=""
cleanup_rootfs() {
  [ -n "$ROOTFS" ] && [ -d "$ROOTFS" ] || return 0
  # debootstrap mounts proc/sys inside the target; a failed run can leave them mounted, and
  # removing the tree must never reach into them.
  local mount_point
  awk -v root="$ROOTFS/" 'index($2, root) == 1 {print $2}' /proc/mounts | sort -r |
    while read -r mount_point; do umount -l "$mount_point" || true; done
  rm -rf --one-file-system "$ROOTFS"
  ROOTFS=""
}
trap cleanup_rootfs EXIT

build_base() {
  local mirror security_mirror key old_id
  mirror="$(python3 "$REPO_ROOT/scripts/apt_mirror.py" bookworm)" ||
    die "no apt source for bookworm on this machine (/etc/apt/sources.list.d/*.sources or /etc/apt/sources.list)"
  security_mirror="$(python3 "$REPO_ROOT/scripts/apt_mirror.py" bookworm-security 2>/dev/null || true)"
  key="$(printf '%s\n' "$mirror" "$security_mirror" "$(dir_hash "$IMAGES_DIR/base")" | sha256sum | cut -d' ' -f1)"
  old_id="$(image_id "$BASE_IMAGE")"
  if [ "$force" -eq 0 ] && [ "$(image_key "$BASE_IMAGE")" = "$key" ]; then
    log "$BASE_IMAGE is up to date"
    return 0
  fi
  log "building $BASE_IMAGE (debootstrap bookworm from $mirror)"
  ROOTFS="$(mktemp -d "${TMPDIR:-/var/tmp}/regwarden-rootfs.XXXXXX")"
  if ! "$IMAGES_DIR/base/build-rootfs.sh" "$ROOTFS/root" "$mirror" "$security_mirror" >"$ROOTFS/build.log" 2>&1; then
    tail -n 40 "$ROOTFS/build.log" >&2
    die "debootstrap of $BASE_IMAGE failed"
  fi
  tar -C "$ROOTFS/root" --numeric-owner --xattrs -c \
    --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' . |
    "$DOCKER" import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["bash"]' \
      --change "LABEL $KEY_LABEL=$key" \
      - "$BASE_IMAGE" >/dev/null
  cleanup_rootfs
  drop_old_image "$old_id" "$(image_id "$BASE_IMAGE")"
}

build_child() {
  local name="$1" tag="${IMAGE_TAGS[$1]}" key old_id
  key="$(printf '%s\n' "$(image_id "$BASE_IMAGE")" "$(dir_hash "$IMAGES_DIR/$name")" | sha256sum | cut -d' ' -f1)"
  old_id="$(image_id "$tag")"
  if [ "$force" -eq 0 ] && [ "$(image_key "$tag")" = "$key" ]; then
    log "$tag is up to date"
    return 0
  fi
  log "building $tag"
  local build_args=(--label "$KEY_LABEL=$key" --tag "$tag")
  [ "$force" -eq 1 ] && build_args+=(--no-cache)
  local build_log
  build_log="$(mktemp)"
  if ! "$DOCKER" build --force-rm "${build_args[@]}" "$IMAGES_DIR/$name" >"$build_log" 2>&1; then
    tail -n 40 "$build_log" >&2
    rm -f "$build_log"
    die "docker build of $tag failed"
  fi
  rm -f "$build_log"
  drop_old_image "$old_id" "$(image_id "$tag")"
}

# The archive is current when it was saved from the image ID the tag has now.
save_archive() {
  local name="$1" tag="${IMAGE_TAGS[$1]}" archive="$ARCHIVE_DIR/$1.tar" id
  id="$(image_id "$tag")"
  if [ -f "$archive" ] && [ "$(cat "$archive.id" 2>/dev/null)" = "$id" ]; then
    log "$archive is up to date"
    return 0
  fi
  log "saving $tag to $archive"
  rm -f "$archive.id"
  "$DOCKER" save -o "$archive.partial" "$tag"
  mv -f "$archive.partial" "$archive"
  echo "$id" >"$archive.id"
}

started=$SECONDS
build_base
for name in "${CHILD_IMAGES[@]}"; do
  build_child "$name"
done
for name in "${ARCHIVED_IMAGES[@]}"; do
  save_archive "$name"
done
log "images ready in $((SECONDS - started)) s"
