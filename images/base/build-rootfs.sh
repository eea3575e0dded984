#!/usr/bin/env bash
# Bootstraps a minimal Debian bookworm root file system into ROOTFS (run by scripts/build-images.sh).
# Usage: build-rootfs.sh ROOTFS MIRROR_URI [SECURITY_MIRROR_URI]
# No base image can be pulled here, so the base is made from the same apt mirror the host uses;
# the image's apt sources name that mirror too (written here, at build time, never in the repo).
set -euo pipefail

rootfs="$1"
mirror="$2"
security_mirror="${3:-}"
suite=bookworm
keyring=/usr/share/keyrings/debian-archive-keyring.gpg

keyring_args=()
[ -f "$keyring" ] && keyring_args=(--keyring="$keyring")

# ca-certificates: apt needs it for an https mirror, and the VM needs it anyway.
debootstrap --variant=minbase --include=ca-certificates "${keyring_args[@]}" \
  "$suite" "$rootfs" "$mirror"

rm -f "$rootfs/etc/apt/sources.list"
{
  printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\n' "$mirror" "$suite" "$suite"
  printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
  if [ -n "$security_mirror" ]; then
    printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\n' "$security_mirror" "$suite"
    printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
  fi
} >"$rootfs/etc/apt/sources.list.d/debian.sources"

# Package scripts must not start services during image builds
# (no init runs there). The VM image removes this again, since systemd runs there.
install -m 0755 "$(dirname "$0")/policy-rc.d" "$rootfs/usr/sbin/policy-rc.d"

# Docker supplies these at run time; the host's copies must not leak into the image.
: >"$rootfs/etc/resolv.conf"
rm -f "$rootfs/etc/hostname"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
  "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/bootstrap.log "$rootfs"/tmp/*
