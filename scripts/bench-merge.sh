#!/usr/bin/env bash
# fsync latency while the mount's log tree passes the merge threshold again and again: one
# process creates FILES (default 200000) empty files in directories of 1,000 and, every 500
# creates, times an fsync of one small file. Each create adds several items, so the log tree
# passes the 100,000-item threshold every few tens of thousands of creates; a merge that ran
# inside the commit showed up as a slow fsync. Prints the create rate and the fsync p50, p99
# and worst. Run as root on Debian 12:
#   bash scripts/bench-merge.sh [FILES] [SCOUTFS_BINARY]
# BENCH_DIR (default /var/tmp/scoutfs-bench) holds the sparse device files.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(fuse3 libfuse3-dev python3)
source scripts/setup.sh

FILES=${1:-200000}
BENCH_DIR=${BENCH_DIR:-/var/tmp/scoutfs-bench}
if [ -n "${2:-}" ]; then
    SCOUTFS=$2
else
    SCOUTFS=$(release_product scoutfs)
fi

MNT="$BENCH_DIR/merge-mnt"
cleanup() {
    "$SCOUTFS" unmount "$MNT" >/dev/null 2>&1 || true
    rm -f "$BENCH_DIR/merge-meta.img" "$BENCH_DIR/merge-data.img"
}
trap cleanup EXIT
mkdir -p "$MNT"
rm -f "$BENCH_DIR/merge-meta.img" "$BENCH_DIR/merge-data.img"
truncate -s 4G "$BENCH_DIR/merge-meta.img"
truncate -s 8G "$BENCH_DIR/merge-data.img"
"$SCOUTFS" mkfs -Q 0,127.0.0.1,7100 "$BENCH_DIR/merge-meta.img" "$BENCH_DIR/merge-data.img" >/dev/null
"$SCOUTFS" mount --quorum-slot 0 "$BENCH_DIR/merge-meta.img" "$BENCH_DIR/merge-data.img" "$MNT" >/dev/null

python3 - "$MNT" "$FILES" <<'PY'
import os, sys, time
mnt, n = sys.argv[1], int(sys.argv[2])
d = os.path.join(mnt, "m")
os.mkdir(d)
for k in range(n // 1000 + 1):
    os.mkdir(os.path.join(d, f"d{k}"))
probe = os.open(os.path.join(mnt, "probe"), os.O_CREAT | os.O_WRONLY, 0o644)
lat = []
t0 = time.time()
for i in range(n):
    os.close(os.open(os.path.join(d, f"d{i // 1000}", f"f{i}"), os.O_CREAT | os.O_WRONLY, 0o644))
    if i % 500 == 499:
        os.pwrite(probe, b"x", 0)
        a = time.perf_counter()
        os.fsync(probe)
        lat.append(time.perf_counter() - a)
total = time.time() - t0
lat.sort()
def p(q): return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000
print(f"{n} creates in {total:.1f} s ({n / total:.0f}/s); fsync every 500 creates: "
      f"p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms, worst {lat[-1] * 1000:.1f} ms ({len(lat)} fsyncs)")
PY
