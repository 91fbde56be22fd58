#!/usr/bin/env bash
# Boots a real systemd in a throwaway box, for the tests: run as PID 1 of new pid, mount, cgroup,
# uts and ipc namespaces (see harness/systembox.rs, which also puts it in a cgroup of its own).
#
# The box's root is an overlay of / with a tmpfs upper layer, so nothing systemd writes reaches
# the machine's own files; /run and /tmp are private tmpfs (systemd's tmpfiles rules empty
# /tmp at boot), /sys is read-only (no udev in a container), and the cgroup tree is a fresh
# cgroup2 mount inside the cgroup namespace. It boots basic.target only, with timers masked:
# no service of the machine starts. Every mount lives in the box's mount namespace and goes
# away with its last process.
#
# usage: systemd-box.sh STORAGE_DIR SHARED_DIR...
#   STORAGE_DIR  an empty directory: the overlay's tmpfs goes there
#   SHARED_DIR   directories bound into the box at the same path (binaries, scratch files)
set -eu
storage=$1
shift
mount --make-rprivate /
mount -t tmpfs -o size=512m,mode=0700 flip-box "$storage"
mkdir -p "$storage/upper" "$storage/work" "$storage/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$storage/upper,workdir=$storage/work" "$storage/root"
root=$storage/root
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount -t sysfs -o ro sysfs "$root/sys"
mount -t cgroup2 cgroup2 "$root/sys/fs/cgroup"
mount -t tmpfs tmpfs "$root/run"
mount -t tmpfs tmpfs "$root/tmp"
for dir in "$@"; do
  mkdir -p "$root$dir"
  mount --bind "$dir" "$root$dir"
done
ln -sf /dev/null "$root/etc/systemd/system/timers.target"
export container=flip-box
exec chroot "$root" /lib/systemd/systemd --unit=basic.target
