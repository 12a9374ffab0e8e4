#!/usr/bin/env bash
# Archive-interface figures on a real mount, in one run. Run as root on Debian 12:
#   bash scripts/bench-archive.sh [FILES] [CHANGED] [STAGE_MIB]    (defaults 1000000, 1000, 1024)
#
# 1. FILES files in directories of 1000, of which CHANGED carry a .srch. xattr; after a commit,
#    CHANGED files get one more byte. Then, each with the kernel's caches dropped first (cold)
#    and once more without (warm): walk-inodes over data_seq from the first seq after the tree
#    was committed, against `find -newer` over the same mount.
# 2. search-xattrs for the tag (CHANGED inodes among FILES), against the same cold find.
# 3. release and stage of a STAGE_MIB file (staged from an archive copy on the local disk), and
#    a plain copy of the same bytes into the mount for scale.
# BENCH_DIR (default /var/tmp/scoutfs-bench) holds the device images and the archive copy.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(fuse3 libfuse3-dev pkg-config python3 bc)
source scripts/setup.sh

FILES=${1:-1000000}
CHANGED=${2:-1000}
STAGE_MIB=${3:-1024}
BENCH_DIR=${BENCH_DIR:-/var/tmp/scoutfs-bench}

SCOUTFS=$(release_product scoutfs)

MNT="$BENCH_DIR/archive-mnt"
mkdir -p "$MNT"
cleanup() {
    "$SCOUTFS" unmount "$MNT" >/dev/null 2>&1 || true
    rm -f "$BENCH_DIR/meta.img" "$BENCH_DIR/data.img" "$BENCH_DIR/archive.bin"
}
trap cleanup EXIT
rm -f "$BENCH_DIR/meta.img" "$BENCH_DIR/data.img"
truncate -s 16G "$BENCH_DIR/meta.img"
# The data device preallocated, as a real device: stage and copy write into it.
fallocate -l $(( (STAGE_MIB * 3 + 2048) / 1024 ))G "$BENCH_DIR/data.img"
"$SCOUTFS" mkfs -Q 0,127.0.0.1,7100 "$BENCH_DIR/meta.img" "$BENCH_DIR/data.img" >/dev/null
"$SCOUTFS" mount --quorum-slot 0 --log "$BENCH_DIR/scoutfs.log" "$BENCH_DIR/meta.img" "$BENCH_DIR/data.img" "$MNT" >/dev/null

echo "machine: $(nproc) vCPU $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(free -g | awk '/Mem:/ {print $2}') GiB, $(date -u +%Y-%m-%d)"

now() { date +%s%N; }
ms() { echo "scale=1; ($2 - $1) / 1000000" | bc; }
committed() { "$SCOUTFS" statfs -p "$MNT" -s committed_seq; }
# Waits for a commit that started after now: everything done so far is then in the index.
wait_commit() {
    local c tries=0
    c=$(committed)
    until [ "$(committed)" -gt "$c" ]; do
        sleep 0.2
        tries=$((tries + 1))
        [ "$tries" -lt 300 ] || { echo "no commit within 60 s" >&2; exit 1; }
    done
}
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }

echo "creating $FILES files ($CHANGED tagged) …"
python3 - "$MNT/tree" "$FILES" "$CHANGED" <<'PY'
import os, sys, time
root, n, tagged = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.mkdir(root)
t0 = time.time()
step = n // tagged
for d in range((n + 999) // 1000):
    dp = f"{root}/d{d}"
    os.mkdir(dp)
    for f in range(min(1000, n - d * 1000)):
        i = d * 1000 + f
        fd = os.open(f"{dp}/f{f}", os.O_CREAT | os.O_WRONLY, 0o644)
        if i % step == step // 2 and i // step < tagged:
            os.setxattr(fd, "scoutfs.srch.bench", b"1")
        os.close(fd)
print(f"created {n} files in {time.time() - t0:.0f} s")
PY
wait_commit
FIRST=$(( $(committed) + 1 ))
touch "$MNT/ref"
sleep 0.05
python3 - "$MNT/tree" "$FILES" "$CHANGED" <<'PY'
import os, random, sys
root, n, changed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
random.seed(7)
for i in random.sample(range(n), changed):
    with open(f"{root}/d{i // 1000}/f{i % 1000}", "ab") as f:
        f.write(b"x")
PY
wait_commit

walk() { "$SCOUTFS" walk-inodes -p "$MNT" data_seq "$FIRST" -1 | grep -vc '^#'; }
findnewer() { find "$MNT/tree" -newer "$MNT/ref" -type f | wc -l; }
search() { "$SCOUTFS" search-xattrs -p "$MNT" scoutfs.srch.bench | wc -l; }
timed() {  # NAME COMMAND…: prints "NAME ms count"
    local name=$1 t0 t1 n
    shift
    t0=$(now); n=$("$@"); t1=$(now)
    echo "$name $(ms "$t0" "$t1") $n"
}

# Cold: nothing in the page cache, not even the scoutfs binary; warm: the same again at once.
cold; W1=$(timed walk-cold walk); W2=$(timed walk-warm walk)
cold; F1=$(timed find-cold findnewer); F2=$(timed find-warm findnewer)
cold; S1=$(timed search-cold search); S2=$(timed search-warm search)

field() { echo "$1" | cut -d' ' -f"$2"; }
ratio() { echo "scale=0; $(field "$2" 2) / $(field "$1" 2)" | bc; }
echo
echo "| figure | time (ms) | entries found |"
echo "|---|---:|---:|"
for r in "$W1" "$F1" "$W2" "$F2" "$S1" "$S2"; do echo "| $(field "$r" 1) | $(field "$r" 2) | $(field "$r" 3) |"; done
echo
echo "find -newer / walk-inodes: cold $(ratio "$W1" "$F1")×, warm $(ratio "$W2" "$F2")×"
echo "cold find / search-xattrs: $(ratio "$S1" "$F1")×"

# Release and stage of one file, against a plain copy of the same bytes.
ARCHIVE="$BENCH_DIR/archive.bin"
head -c $(( STAGE_MIB << 20 )) /dev/urandom > "$ARCHIVE"
cat "$ARCHIVE" > /dev/null
t0=$(now); cp "$ARCHIVE" "$MNT/copy"; sync "$MNT/copy"; t1=$(now)
COPY_MS=$(ms "$t0" "$t1")
cp "$ARCHIVE" "$MNT/big"
sync "$MNT/big"
V=$("$SCOUTFS" stat -s data_version "$MNT/big")
t0=$(now); "$SCOUTFS" release "$MNT/big" -V "$V"; t1=$(now)
REL_MS=$(ms "$t0" "$t1")
[ "$("$SCOUTFS" stat -s online_blocks "$MNT/big")" = 0 ] || { echo "release left blocks online" >&2; exit 1; }
t0=$(now); "$SCOUTFS" stage "$ARCHIVE" "$MNT/big" -V "$V"; sync "$MNT/big"; t1=$(now)
STAGE_MS=$(ms "$t0" "$t1")
cold
cmp "$ARCHIVE" "$MNT/big" || { echo "staged contents differ from the archive" >&2; exit 1; }
mbs() { echo "scale=0; $STAGE_MIB * 1048576 / 1000 / $1" | bc; }
echo
echo "| $STAGE_MIB MiB file | time (ms) | MB/s |"
echo "|---|---:|---:|"
echo "| release | $REL_MS | $(mbs "$REL_MS") |"
echo "| stage (+ fsync) | $STAGE_MS | $(mbs "$STAGE_MS") |"
echo "| cp into the mount (+ fsync), for scale | $COPY_MS | $(mbs "$COPY_MS") |"
