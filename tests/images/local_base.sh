#!/usr/bin/env bash
# Puts the Dockerfiles' base image (python:3.11.14-slim-bookworm) into buildah's local storage, for
# `make images` on a machine without Docker. A no-op when the image is already there. It is pulled from
# Docker Hub when Docker Hub answers; otherwise it is MADE LOCALLY, which needs root, debootstrap and a
# Debian mirror, and is NOT the official image:
#
#   - Debian bookworm's own python3 (3.11.2, in /usr/bin) instead of python.org's 3.11.14 in /usr/local;
#   - a debootstrap `minbase` with python3, python3-venv, python3-pip, python-is-python3 and
#     ca-certificates (the official slim image has no Debian python3 packages, and pip comes from ensurepip);
#   - this host's extra CA certificates from /usr/local/share/ca-certificates are trusted inside (a proxy's
#     CA, without which pip inside RUN fails certificate checks on such hosts);
#   - /usr/lib/python3.11/EXTERNALLY-MANAGED is removed, so `pip install` as root works as in the official image.
#
# The image carries the label dev.peft-operator.local-base, and the image test reports it. Images built on it
# are for testing here; publish images built on the official base (a machine with Docker or a registry).
#
# Environment:
#   IMAGES_DIR   buildah's storage lives in $IMAGES_DIR/{storage,run} (default $REPO/.images, git-ignored)
#   BASE_IMAGE   the name to provide (default python:3.11.14-slim-bookworm, the Dockerfiles' FROM)
#   MIRROR       the Debian mirror (default: the first in /etc/apt/sources.list.d, else deb.debian.org)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
IMAGES_DIR="${IMAGES_DIR:-$REPO/.images}"
BASE_IMAGE="${BASE_IMAGE:-python:3.11.14-slim-bookworm}"

bah() { buildah --root "$IMAGES_DIR/storage" --runroot "$IMAGES_DIR/run" --storage-driver overlay "$@"; }

if bah inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
  exit 0
fi
if timeout 120 bah pull --quiet "docker.io/library/$BASE_IMAGE" >/dev/null 2>&1; then
  bah tag "docker.io/library/$BASE_IMAGE" "$BASE_IMAGE"  # the FROM name, found with --pull=never
  echo "images: pulled docker.io/library/$BASE_IMAGE"
  exit 0
fi

echo "images: Docker Hub is not reachable; making $BASE_IMAGE locally from Debian bookworm (not the official image)"
for tool in debootstrap chroot; do
  command -v "$tool" >/dev/null || { echo "images: $tool is missing (apt-get install debootstrap)" >&2; exit 1; }
done
[[ $(id -u) == 0 ]] || { echo "images: making the base needs root (debootstrap)" >&2; exit 1; }

if [[ -z "${MIRROR:-}" ]]; then
  MIRROR="$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}')"
  [[ -n "$MIRROR" ]] || MIRROR="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
    awk '/^deb / && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}')"
  MIRROR="${MIRROR:-http://deb.debian.org/debian}"
fi

rootfs="$IMAGES_DIR/base-rootfs"
rm -rf "$rootfs"
mkdir -p "$rootfs"
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
  bookworm "$rootfs" "$MIRROR" >"$IMAGES_DIR/debootstrap.log" 2>&1 ||
  { tail -20 "$IMAGES_DIR/debootstrap.log" >&2; exit 1; }
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
fi
chroot "$rootfs" update-ca-certificates >/dev/null
rm -f "$rootfs"/usr/lib/python3.*/EXTERNALLY-MANAGED
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
python_version="$(chroot "$rootfs" python3 -c 'import platform; print(platform.python_version())')"

container="$(bah from scratch)"
mount="$(bah mount "$container")"
tar -C "$rootfs" -cf - . | tar -C "$mount" -xf -
bah umount "$container" >/dev/null
bah config --env LANG=C.UTF-8 --cmd python3 \
  --label "dev.peft-operator.local-base=debootstrap bookworm minbase, Debian python3 $python_version" "$container"
bah commit --quiet --rm "$container" "$BASE_IMAGE" >/dev/null
echo "images: made $BASE_IMAGE locally (Python $python_version)"
