#!/usr/bin/env bash
# Build the testbed's base images base:1..3 (linux/amd64) into CACHE_DIR/oci, once.
# Each tag has two gzip layers: a debootstrap minbase bookworm rootfs, then python3
# (pip, venv, headers) installed on top with apt in a chroot. A marker file per variant in each layer
# (/etc/buildfan-base/layer1, layer2) makes every layer digest distinct across tags.
# The debootstrap and python rootfs tarballs are kept in CACHE_DIR for fast rebuilds.
set -euo pipefail
cache=${1:?usage: build-images.sh CACHE_DIR}
mirror=${TESTBED_DEBIAN_MIRROR:-http://deb.debian.org/debian}
pkgs="python3 python3-pip python3-venv python3-dev"   # layer 2
log() { echo "testbed: $*" >&2; }

[ -f "$cache/.complete" ] && exit 0
[ "$(id -u)" = 0 ] || { log "build-images.sh must run as root (debootstrap, chroot)"; exit 3; }
for c in debootstrap umoci chroot tar gzip flock; do
  command -v "$c" >/dev/null || { log "missing prerequisite: $c (apt-get install $c)"; exit 3; }
done
mkdir -p "$cache"
exec 9>"$cache/.lock"; flock 9                     # one builder at a time
[ -f "$cache/.complete" ] && exit 0
start=$SECONDS
work="$cache/work"; rm -rf "$work"; mkdir -p "$work"
# Clean rootfs trees inside $work must never hold mounts: nothing here mounts anything.
tar_rootfs() { tar -C "$1" --numeric-owner --xattrs -cf "$2.tmp" --exclude='./dev/*' . && mv "$2.tmp" "$2"; }

if [ ! -f "$cache/minbase.tar" ]; then
  log "debootstrap --variant=minbase bookworm from $mirror"
  debootstrap --variant=minbase bookworm "$work/minbase" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    { log "debootstrap failed, see $work/debootstrap.log"; tail -5 "$work/debootstrap.log" >&2; exit 1; }
  # like Docker's debian images: no .debs, apt lists or host identity in the base layer
  rm -rf "$work/minbase"/var/cache/apt/archives/*.deb "$work/minbase"/var/lib/apt/lists/*
  : >"$work/minbase/etc/resolv.conf"; chmod 644 "$work/minbase/etc/resolv.conf"; echo localhost >"$work/minbase/etc/hostname"
  tar_rootfs "$work/minbase" "$cache/minbase.tar"; rm -rf "$work/minbase"
fi

if [ ! -f "$cache/python.tar" ]; then
  log "installing $pkgs in a chroot"
  r="$work/py"; mkdir -p "$r"; tar -C "$r" --numeric-owner -xf "$cache/minbase.tar"
  for d in null:3 zero:5 full:7 random:8 urandom:9; do mknod -m 666 "$r/dev/${d%:*}" c 1 "${d#*:}"; done
  cp /etc/resolv.conf "$r/etc/resolv.conf"   # emptied again below, as in minbase.tar
  chroot "$r" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    sh -c "apt-get update -q && apt-get install -y -q --no-install-recommends $pkgs && apt-get clean" \
    >"$work/apt.log" 2>&1 || { log "apt-get in chroot failed, see $work/apt.log"; tail -5 "$work/apt.log" >&2; exit 1; }
  rm -rf "$r"/var/lib/apt/lists/* && : >"$r/etc/resolv.conf"
  tar_rootfs "$r" "$cache/python.tar"; rm -rf "$r"
fi

oci="$work/oci"
umoci init --layout "$oci"
marker() { # rootfs layer variant: same content and mtime when rewritten, so no spurious diff
  mkdir -p "$1/etc/buildfan-base"
  echo "buildfan testbed base image variant $3, $2" >"$1/etc/buildfan-base/$2"
  touch -d @1700000000 "$1/etc/buildfan-base/$2" "$1/etc/buildfan-base"
}
for n in 1 2 3; do
  log "building base:$n"
  b="$work/bundle-$n"
  umoci new --image "$oci:$n"
  umoci unpack --image "$oci:$n" "$b" >/dev/null
  tar -C "$b/rootfs" --numeric-owner -xf "$cache/minbase.tar"; marker "$b/rootfs" layer1 "$n"
  umoci repack --refresh-bundle --image "$oci:$n" --history.created_by "debootstrap --variant=minbase bookworm" "$b"
  find "$b/rootfs" -mindepth 1 -maxdepth 1 -exec rm -rf {} +  # replace the tree; umoci diffs it
  tar -C "$b/rootfs" --numeric-owner -xf "$cache/python.tar"
  marker "$b/rootfs" layer1 "$n"; marker "$b/rootfs" layer2 "$n"
  umoci repack --image "$oci:$n" --history.created_by "apt-get install --no-install-recommends $pkgs" "$b"
  umoci config --image "$oci:$n" --no-history --config.cmd /bin/bash \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --config.env LANG=C.UTF-8
  rm -rf "$b"
done
umoci gc --layout "$oci"
rm -rf "$cache/oci" && mv "$oci" "$cache/oci" && rm -rf "$work"
touch "$cache/.complete"
log "base images 1 2 3 built in $cache/oci in $((SECONDS - start))s"
