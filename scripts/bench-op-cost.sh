#!/usr/bin/env bash
# Where the time of one operation goes through FUSE: for creates, 4 KiB writes, unlinks and
# listings of a 5,000-name directory, the time the calling process sees per operation and the
# CPU the filesystem daemon spends on it (user and kernel, from /proc/PID/stat, which counts
# the daemon's exited worker threads too). The rest of the caller's time is the kernel's FUSE
# round trips, the caller's own syscalls and waiting for a CPU. Run as root on Debian 12:
#   bash scripts/bench-op-cost.sh [N] [MEMFS_MOUNT_BINARY]
# N operations per phase (default 20000). With a second argument, the same phases run on that
# in-memory FUSE filesystem too (mounted with `--cache-timeout 1 -o default_permissions`), in
# the same run, for a reference.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(fuse3 libfuse3-dev python3)
source scripts/setup.sh

N=${1:-20000}
MEMFS=${2:-}
BENCH_DIR=${BENCH_DIR:-/var/tmp/scoutfs-bench}
SCOUTFS=$(release_product scoutfs)

MNT="$BENCH_DIR/opcost-mnt"
MMNT="$BENCH_DIR/opcost-memfs"
mpid=""
cleanup() {
    "$SCOUTFS" unmount "$MNT" >/dev/null 2>&1 || true
    if [ -n "$mpid" ]; then fusermount3 -u "$MMNT" 2>/dev/null || true; wait "$mpid" 2>/dev/null || true; fi
    rm -f "$BENCH_DIR/opcost-meta.img" "$BENCH_DIR/opcost-data.img"
}
trap cleanup EXIT
mkdir -p "$MNT" "$MMNT"
truncate -s 4G "$BENCH_DIR/opcost-meta.img" "$BENCH_DIR/opcost-data.img"
"$SCOUTFS" mkfs -Q 0,127.0.0.1,7100 "$BENCH_DIR/opcost-meta.img" "$BENCH_DIR/opcost-data.img" >/dev/null
out=$("$SCOUTFS" mount --quorum-slot 0 --log "$BENCH_DIR/opcost.log" "$BENCH_DIR/opcost-meta.img" "$BENCH_DIR/opcost-data.img" "$MNT")
spid=$(sed -n 's/.*daemon pid \([0-9]*\).*/\1/p' <<<"$out")
[ -n "$spid" ] || { echo "could not find the daemon's pid in: $out"; exit 1; }

measure() {
    # $1 name, $2 mount point, $3 daemon pid
    python3 - "$1" "$2" "$3" "$N" <<'PY'
import os, sys, time
name, mnt, pid, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
tick = os.sysconf("SC_CLK_TCK")
def cpu():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) / tick, int(f[12]) / tick   # utime, stime (fields 14 and 15)
d = os.path.join(mnt, f"opcost.{os.getpid()}")
os.mkdir(d)
block = os.urandom(4096)
def run(label, count, body):
    u0, s0 = cpu(); t0 = time.perf_counter()
    body()
    t = time.perf_counter() - t0; u1, s1 = cpu()
    per = lambda x: x / count * 1e6
    print(f"{name:8} {label:22} {per(t):8.1f} us/op  daemon user {per(u1 - u0):6.1f}  kernel {per(s1 - s0):6.1f}")
def creates():
    for i in range(n): os.close(os.open(f"{d}/f{i}", os.O_CREAT | os.O_WRONLY, 0o644))
def writes():
    fd = os.open(f"{d}/w", os.O_CREAT | os.O_WRONLY, 0o644)
    for i in range(n): os.pwrite(fd, block, (i % 16384) * 4096)
    os.close(fd)
listing = os.path.join(d, "list")
os.mkdir(listing)
for i in range(5000): os.close(os.open(f"{listing}/e{i}", os.O_CREAT | os.O_WRONLY, 0o644))
def listings():
    for _ in range(100):
        if len(os.listdir(listing)) != 5000: raise SystemExit("short listing")
def unlinks():
    for i in range(n): os.unlink(f"{d}/f{i}")
run("create + close", n, creates)
run("4 KiB pwrite", n, writes)
run("listdir of 5,000", 100, listings)
run("unlink", n, unlinks)
PY
}

if [ -n "$MEMFS" ]; then
    "$MEMFS" --cache-timeout 1 -o default_permissions "$MMNT" >/dev/null 2>&1 &
    mpid=$!
    for _ in $(seq 100); do mountpoint -q "$MMNT" && break; sleep 0.1; done
    mountpoint -q "$MMNT" || { echo "memfs did not mount on $MMNT"; exit 1; }
fi
for round in 1 2; do
    echo "round $round"
    measure scoutfs "$MNT" "$spid"
    [ -z "$MEMFS" ] || measure memfs "$MMNT" "$mpid"
done
