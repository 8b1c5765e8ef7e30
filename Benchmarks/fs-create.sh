#!/usr/bin/env bash
# Measures file creation cost on the root filesystem, a loop-mounted ext4
# image and tmpfs: the numbers behind the choice of where write layers live.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "needs root (loop and tmpfs mounts)"; exit 1; }
work=$(mktemp -d /var/tmp/sandpit-fsbench.XXXXXX)
trap 'umount "$work/loop" "$work/tmpfs" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/root" "$work/loop" "$work/tmpfs"
truncate -s 1G "$work/img" && mkfs.ext4 -q -F -O ^has_journal "$work/img" && mount -o loop,noatime "$work/img" "$work/loop"
mount -t tmpfs tmpfs "$work/tmpfs"
for fs in root loop tmpfs; do
  python3 - "$work/$fs/d" "$fs" <<'PY'
import os, sys, time
d, name = sys.argv[1], sys.argv[2]
os.makedirs(d)
samples = []
for i in range(2000):
    t = time.perf_counter_ns()
    fd = os.open(f"{d}/f{i}", os.O_CREAT | os.O_WRONLY, 0o644); os.write(fd, b"x"); os.close(fd)
    samples.append(time.perf_counter_ns() - t)
samples.sort()
print(f"{name:6s} create+write+close  median {samples[len(samples)//2]/1000:7.1f} us   p90 {samples[len(samples)*9//10]/1000:7.1f} us")
PY
done
