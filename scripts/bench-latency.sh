#!/usr/bin/env bash
# Metadata latency while another process writes: stat + utime of 200 files, over and over,
# while dd writes a file of WRITE_MIB (default 4096) with conv=fsync into the same scoutfs
# mount; then the same with nothing else running. Prints p50, p99, p99.9 and the worst in
# microseconds. Run as root on Debian 12:
#   bash scripts/bench-latency.sh [WRITE_MIB]
# BENCH_DIR (default /var/tmp/scoutfs-bench) needs room for WRITE_MIB of data.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(fuse3 libfuse3-dev python3)
source scripts/setup.sh

WRITE_MIB=${1:-4096}
BENCH_DIR=${BENCH_DIR:-/var/tmp/scoutfs-bench}
SCOUTFS=$(release_product scoutfs)

MNT="$BENCH_DIR/latency-mnt"
cleanup() {
    "$SCOUTFS" unmount "$MNT" >/dev/null 2>&1 || true
    rm -f "$BENCH_DIR/lat-meta.img" "$BENCH_DIR/lat-data.img"
}
trap cleanup EXIT
mkdir -p "$MNT"
truncate -s 4G "$BENCH_DIR/lat-meta.img"
truncate -s $(( WRITE_MIB / 1024 + 4 ))G "$BENCH_DIR/lat-data.img"
"$SCOUTFS" mkfs -Q 0,127.0.0.1,7100 "$BENCH_DIR/lat-meta.img" "$BENCH_DIR/lat-data.img" >/dev/null
"$SCOUTFS" mount --quorum-slot 0 --log "$BENCH_DIR/latency.log" "$BENCH_DIR/lat-meta.img" "$BENCH_DIR/lat-data.img" "$MNT" >/dev/null

probe() {
    # $1: seconds to run, or "until FILE exists"
    python3 - "$MNT" "$1" <<'PY'
import os, sys, time
mnt, until = sys.argv[1], sys.argv[2]
d = os.path.join(mnt, "probe")
os.makedirs(d, exist_ok=True)
files = [os.path.join(d, "f%d" % i) for i in range(200)]
for f in files:
    open(f, "w").close()
lat = []
start = time.monotonic()
def done():
    if until.startswith("/"):
        return os.path.exists(until)
    return time.monotonic() - start >= float(until)
while not done():
    for f in files:
        t0 = time.perf_counter_ns()
        os.stat(f)
        os.utime(f)
        lat.append(time.perf_counter_ns() - t0)
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(len(lat) * p))] / 1000
print("%d calls: p50 %.0f us, p99 %.0f us, p99.9 %.0f us, worst %.0f us" % (len(lat), q(0.5), q(0.99), q(0.999), lat[-1] / 1000))
PY
}

echo "idle (10 s):"
probe 10
DONE="$BENCH_DIR/latency-write-done"
rm -f "$DONE"
( dd if=/dev/zero of="$MNT/big" bs=1M count="$WRITE_MIB" conv=fsync status=none; touch "$DONE" ) &
echo "while dd writes $WRITE_MIB MiB with conv=fsync:"
probe "$DONE"
wait
rm -f "$DONE"
