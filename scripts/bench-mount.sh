#!/usr/bin/env bash
# Whole-mount benchmark: in one run, the same workload (mountbench) on a scoutfs mount and on
# libfuse's passthrough_ll example over ext4, with the ratio of each figure and each daemon's
# peak RSS. Run as root on Debian 12:
#   bash scripts/bench-mount.sh [FILES] [SEQ_MIB]          (defaults 20000 and 1024)
#   bash scripts/bench-mount.sh rss [FILES]                (RSS of a scoutfs daemon holding a
#                                                           tree of FILES files, default 1000000)
# BENCH_DIR (default /var/tmp/scoutfs-bench) must be on ext4 and have room for SEQ_MIB twice.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(fuse3 libfuse3-dev pkg-config gcc)
source scripts/setup.sh

MODE=compare
if [ "${1:-}" = rss ]; then MODE=rss; shift; fi
FILES=${1:-20000}
SEQ_MIB=${2:-1024}
[ "$MODE" = rss ] && FILES=${1:-1000000}
BENCH_DIR=${BENCH_DIR:-/var/tmp/scoutfs-bench}

swift build -c release --product scoutfs >/dev/null
swift build -c release --product mountbench >/dev/null
BIN_DIR="$(swift build -c release --show-bin-path)"
SCOUTFS="$BIN_DIR/scoutfs"
MOUNTBENCH="$BIN_DIR/mountbench"

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
truncate -s 16G "$BENCH_DIR/meta.img"
truncate -s 32G "$BENCH_DIR/data.img"
"$SCOUTFS" mkfs -Q 0,127.0.0.1,7100 "$BENCH_DIR/meta.img" "$BENCH_DIR/data.img" >/dev/null
"$SCOUTFS" mount --quorum-slot 0 --log "$BENCH_DIR/scoutfs.log" "$BENCH_DIR/meta.img" "$BENCH_DIR/data.img" "$SMNT" >/dev/null
SPID=$("$SCOUTFS" status --json "$SMNT" | sed -n 's/.*"pid" *: *\([0-9]*\).*/\1/p')

echo "machine: $(nproc) vCPU $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(free -g | awk '/Mem:/ {print $2}') GiB, $(date -u +%Y-%m-%d)"

if [ "$MODE" = rss ]; then
    # FILES files in directories of 1000, then a stat of every one: the daemon's RSS must be set
    # by its caches, not by how many files exist.
    echo "creating $FILES files under $SMNT/tree …"
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
    exit 0
fi

"$PASSTHROUGH" -f -o source="$PSRC" "$PMNT" &
PPID_FILE=$!
for _ in $(seq 50); do mountpoint -q "$PMNT" && break; sleep 0.1; done
mountpoint -q "$PMNT" || { echo "passthrough_ll did not mount" >&2; exit 1; }

echo "files $FILES, sequential $SEQ_MIB MiB"
S=$("$MOUNTBENCH" "$SMNT" --files "$FILES" --seq-mib "$SEQ_MIB" --json)
P=$("$MOUNTBENCH" "$PMNT" --files "$FILES" --seq-mib "$SEQ_MIB" --json)
SRSS=$(peak_rss_mib "$SPID")
PRSS=$(peak_rss_mib "$PPID_FILE")
python3 - "$S" "$P" "$SRSS" "$PRSS" <<'PY'
import json, sys
s, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"| {'figure':<18} | {'scoutfs':>12} | {'passthrough_ll':>14} | {'ratio':>6} |")
print(f"|{'-'*20}|{'-'*14}|{'-'*16}|{'-'*8}|")
for k in s:
    unit = "MB/s" if k.startswith("sequential") else "/s"
    print(f"| {k + ' ' + unit:<18} | {s[k]:>12.0f} | {p[k]:>14.0f} | {s[k] / p[k]:>6.2f} |")
print(f"| {'peak RSS MiB':<18} | {float(sys.argv[3]):>12.1f} | {float(sys.argv[4]):>14.1f} | {float(sys.argv[3]) / float(sys.argv[4]):>6.2f} |")
PY
