#!/usr/bin/env bash
# Whole-mount benchmark: in one run, the same workload (mountbench) on a scoutfs mount and on
# libfuse's passthrough_ll example over ext4, with the ratio of each figure and each daemon's
# peak RSS. Run as root on Debian 12:
#   bash scripts/bench-mount.sh [FILES] [SEQ_MIB]          (defaults 10000 and 1024; passthrough_ll
#                                                           needs a descriptor per file)
#   bash scripts/bench-mount.sh rss [FILES]                (RSS of a scoutfs daemon holding a
#                                                           tree of FILES files, default 1000000)
# BENCH_DIR (default /var/tmp/scoutfs-bench) must be on ext4 and have room for SEQ_MIB twice.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(fuse3 libfuse3-dev pkg-config gcc)
source scripts/setup.sh

MODE=compare
if [ "${1:-}" = rss ]; then MODE=rss; shift; fi
FILES=${1:-10000}
SEQ_MIB=${2:-1024}
[ "$MODE" = rss ] && FILES=${1:-1000000}
BENCH_DIR=${BENCH_DIR:-/var/tmp/scoutfs-bench}

SCOUTFS=$(release_product scoutfs)
MOUNTBENCH=$(release_product mountbench)
BIN_DIR=$(dirname "$SCOUTFS")

EXAMPLES=/usr/share/doc/libfuse3-dev/examples
PASSTHROUGH="$BIN_DIR/passthrough_ll"
if [ "$MODE" = compare ] && [ ! -x "$PASSTHROUGH" ]; then
    src=$(mktemp -d)
    for f in passthrough_ll.c passthrough_helpers.h; do
        if [ -e "$EXAMPLES/$f" ]; then cp "$EXAMPLES/$f" "$src/"; else zcat "$EXAMPLES/$f.gz" > "$src/$f"; fi
    done
    gcc -O2 -o "$PASSTHROUGH" "$src/passthrough_ll.c" $(pkg-config fuse3 --cflags --libs)
    rm -rf "$src"
fi

# passthrough_ll holds an O_PATH descriptor for every inode the kernel knows.
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
mkdir -p "$BENCH_DIR"
if [ "$(stat -f -c %T "$BENCH_DIR")" != ext2/ext3 ]; then
    echo "note: $BENCH_DIR is on $(stat -f -c %T "$BENCH_DIR"), not ext4" >&2
fi
SMNT="$BENCH_DIR/scoutfs-mnt"
PMNT="$BENCH_DIR/passthrough-mnt"
PSRC="$BENCH_DIR/passthrough-src"
PPID_FILE=""
cleanup() {
    "$SCOUTFS" unmount "$SMNT" >/dev/null 2>&1 || true
    if [ -n "$PPID_FILE" ]; then fusermount3 -u "$PMNT" 2>/dev/null || true; fi
    rm -f "$BENCH_DIR/meta.img" "$BENCH_DIR/data.img"
    rm -rf "$PSRC"
}
trap cleanup EXIT
mkdir -p "$SMNT" "$PMNT" "$PSRC"

peak_rss_mib() { awk '/VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
rss_mib() { awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

rm -f "$BENCH_DIR/meta.img" "$BENCH_DIR/data.img"
# Preallocated, like the block devices scoutfs is meant for: a sparse image file gets its ext4
# blocks allocated piecemeal as scoutfs first writes them, and reads of it then pay for that
# fragmentation, which no real device has.
if [ "$MODE" = rss ]; then
    truncate -s 16G "$BENCH_DIR/meta.img"
    truncate -s 16G "$BENCH_DIR/data.img"
else
    fallocate -l 4G "$BENCH_DIR/meta.img"
    fallocate -l $(( (SEQ_MIB * 2 + 2048) / 1024 ))G "$BENCH_DIR/data.img"
fi
"$SCOUTFS" mkfs -Q 0,127.0.0.1,7100 "$BENCH_DIR/meta.img" "$BENCH_DIR/data.img" >/dev/null
CACHE_MIB=${CACHE_MIB:-256}
"$SCOUTFS" mount --quorum-slot 0 --cache-mib "$CACHE_MIB" --log "$BENCH_DIR/scoutfs.log" "$BENCH_DIR/meta.img" "$BENCH_DIR/data.img" "$SMNT" >/dev/null
SPID=$("$SCOUTFS" status --json "$SMNT" | sed -n 's/.*"pid" *: *\([0-9]*\).*/\1/p')

echo "machine: $(nproc) vCPU $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(free -g | awk '/Mem:/ {print $2}') GiB, $(date -u +%Y-%m-%d)"

if [ "$MODE" = rss ]; then
    # FILES files in directories of 1000, then a stat of every one: the daemon's RSS must be set
    # by its caches, not by how many files exist.
    echo "creating $FILES files under $SMNT/tree (daemon --cache-mib $CACHE_MIB) …"
    python3 - "$SMNT/tree" "$FILES" <<'PY'
import os, sys, time
root, n = sys.argv[1], int(sys.argv[2])
os.mkdir(root)
t0 = time.time()
for d in range((n + 999) // 1000):
    dp = f"{root}/d{d}"
    os.mkdir(dp)
    for f in range(min(1000, n - d * 1000)):
        os.close(os.open(f"{dp}/f{f}", os.O_CREAT | os.O_WRONLY, 0o644))
print(f"created {n} files in {time.time() - t0:.0f} s")
PY
    echo "daemon RSS after creating: $(rss_mib "$SPID") MiB (peak $(peak_rss_mib "$SPID") MiB)"
    sync; echo 3 > /proc/sys/vm/drop_caches
    find "$SMNT/tree" -type f | wc -l | sed 's/^/files found by find: /'
    echo "daemon RSS after a full walk: $(rss_mib "$SPID") MiB (peak $(peak_rss_mib "$SPID") MiB)"
    # The kernel drops its dentries and inodes and FORGETs them: what remains is the daemon's
    # own caches, which do not depend on the number of files.
    echo 2 > /proc/sys/vm/drop_caches
    sleep 7  # one commit interval, after which the daemon hands freed memory back
    echo "daemon RSS once the kernel forgot the inodes: $(rss_mib "$SPID") MiB"
    exit 0
fi

# passthrough_ll twice: as shipped, and with scoutfs's feature set. As shipped the kernel checks
# no permissions (so it never fetches a directory's attributes again after changing it) and
# has no xattrs (so a write never asks for security.capability first); default_permissions and
# xattr turn on both, and with them the same round trips scoutfs pays.
run_passthrough() {
    "$PASSTHROUGH" -f -o source="$PSRC""$1" "$PMNT" &
    PPID_FILE=$!
    for _ in $(seq 50); do mountpoint -q "$PMNT" && break; sleep 0.1; done
    mountpoint -q "$PMNT" || { echo "passthrough_ll did not mount" >&2; exit 1; }
    "$MOUNTBENCH" "$PMNT" --files "$FILES" --seq-mib "$SEQ_MIB" --json
    peak_rss_mib "$PPID_FILE" > "$BENCH_DIR/passthrough.rss"
    fusermount3 -u "$PMNT"
    wait "$PPID_FILE" 2>/dev/null || true
    PPID_FILE=""
}

# The disks here are noisy: each filesystem runs ROUNDS times, interleaved, and the table
# shows each figure's median.
ROUNDS=${ROUNDS:-3}
echo "files $FILES, sequential $SEQ_MIB MiB, median of $ROUNDS interleaved rounds"
S=(); P=(); D=()
for r in $(seq "$ROUNDS"); do
    S+=("$("$MOUNTBENCH" "$SMNT" --files "$FILES" --seq-mib "$SEQ_MIB" --json)")
    P+=("$(run_passthrough "")")
    PRSS=$(cat "$BENCH_DIR/passthrough.rss")
    D+=("$(run_passthrough ",default_permissions,xattr")")
    DRSS=$(cat "$BENCH_DIR/passthrough.rss")
done
SRSS=$(peak_rss_mib "$SPID")
python3 - "$ROUNDS" "$SRSS" "$PRSS" "$DRSS" "${S[@]}" "${P[@]}" "${D[@]}" <<'PY'
import json, statistics, sys
n = int(sys.argv[1])
srss, prss, drss = (float(a) for a in sys.argv[2:5])
runs = [json.loads(a) for a in sys.argv[5:]]
def median(group):
    return {k: statistics.median(r[k] for r in group) for k in group[0]}
s, p, d = median(runs[:n]), median(runs[n:2 * n]), median(runs[2 * n:])
print(f"| figure | scoutfs | passthrough_ll | ratio | passthrough_ll -o default_permissions,xattr | ratio |")
print(f"|---|---:|---:|---:|---:|---:|")
for k in s:
    unit = "MB/s" if k.startswith("sequential") else "/s"
    print(f"| {k} ({unit}) | {s[k]:.0f} | {p[k]:.0f} | {s[k] / p[k]:.2f} | {d[k]:.0f} | {s[k] / d[k]:.2f} |")
print(f"| peak daemon RSS (MiB) | {srss:.1f} | {prss:.1f} | {srss / prss:.2f} | {drss:.1f} | {srss / drss:.2f} |")
PY
