#!/usr/bin/env bash
# Scale benchmark: one tree of empty files in 1,000 directories grows in steps, on a scoutfs
# mount and on ext4, both over loop devices backed by files on the same disk. After each step
# both filesystems are unmounted, the page cache dropped and both mounted again, then the same
# random stats run on each: the cold stat rate, and the device reads one stat costs. Also the
# create rate of each step and the scoutfs daemon's RSS. Run as root on Debian 12:
#   bash scripts/bench-scale.sh [STEP …]        (defaults 100000 1000000 3000000: total files)
# STATS (default 5000) random stats per step; PROCS (default 2) creating processes, each with
# its own directories. BENCH_DIR (default /var/tmp/scoutfs-scale) needs room for the images:
# about 1.5 KiB of metadata per file for scoutfs and 8 GiB more for the ext4 image.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(fuse3 libfuse3-dev pkg-config e2fsprogs)
source scripts/setup.sh

STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=(100000 1000000 3000000)
STATS=${STATS:-5000}
PROCS=${PROCS:-2}
DIRS=1000
BENCH_DIR=${BENCH_DIR:-/var/tmp/scoutfs-scale}
LAST=${STEPS[-1]}

SCOUTFS=$(release_product scoutfs)
mkdir -p "$BENCH_DIR"
SMNT="$BENCH_DIR/scoutfs-mnt"
EMNT="$BENCH_DIR/ext4-mnt"
LOOPS=()
cleanup() {
    "$SCOUTFS" unmount "$SMNT" >/dev/null 2>&1 || true
    umount "$EMNT" 2>/dev/null || true
    for l in "${LOOPS[@]}"; do losetup -d "$l" 2>/dev/null || true; done
    rm -f "$BENCH_DIR/meta.img" "$BENCH_DIR/data.img" "$BENCH_DIR/ext4.img"
}
trap cleanup EXIT
mkdir -p "$SMNT" "$EMNT"

rm -f "$BENCH_DIR/meta.img" "$BENCH_DIR/data.img" "$BENCH_DIR/ext4.img"
# Preallocated, so reads of the images are not slowed by ext4 allocating them piecemeal, and
# attached with direct I/O, so that each filesystem's reads reach the disk as it makes them
# (through the page cache of the image files, each would also read ahead in them).
fallocate -l $(( LAST * 1536 / (1 << 30) + 4 ))G "$BENCH_DIR/meta.img"
truncate -s 8G "$BENCH_DIR/data.img"
fallocate -l $(( LAST * 512 / (1 << 30) + 8 ))G "$BENCH_DIR/ext4.img"
# Not in a command substitution: its subshell would keep LOOPS from the cleanup.
attach() { LOOPS+=("$(losetup --direct-io=on -f --show "$1")"); }
attach "$BENCH_DIR/meta.img"; META=${LOOPS[-1]}
attach "$BENCH_DIR/data.img"; DATA=${LOOPS[-1]}
attach "$BENCH_DIR/ext4.img"; EXT4=${LOOPS[-1]}
"$SCOUTFS" mkfs -Q 0,127.0.0.1,7100 "$META" "$DATA" >/dev/null
mkfs.ext4 -q -F -N $(( LAST + 100000 )) "$EXT4"

mount_scoutfs() {
    "$SCOUTFS" mount --quorum-slot 0 --log "$BENCH_DIR/scoutfs.log" "$META" "$DATA" "$SMNT" >/dev/null
    SPID=$("$SCOUTFS" status --json "$SMNT" | sed -n 's/.*"pid" *: *\([0-9]*\).*/\1/p')
}
mount_ext4() { mount -t ext4 "$EXT4" "$EMNT"; }
mount_scoutfs
mount_ext4
mkdir -p "$SMNT/tree" "$EMNT/tree"

rss_mib() { awk '/VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }
# Reads completed by a block device since it was attached (field 1 of its stat file).
reads_of() { awk '{ print $1 }' "/sys/block/$(basename "$1")/stat"; }

# Adds files [FROM, TO) of every directory under ROOT with PROCS processes; prints files/s.
create_files() {
    python3 - "$1" "$2" "$3" "$DIRS" "$PROCS" <<'PY'
import os, sys, time
root, lo, hi, dirs, procs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
t0 = time.time()
pids = []
for p in range(procs):
    pid = os.fork()
    if pid == 0:
        for d in range(p, dirs, procs):
            dp = f"{root}/d{d}"
            if lo == 0:
                os.mkdir(dp)
            for f in range(lo, hi):
                os.close(os.open(f"{dp}/f{f}", os.O_CREAT | os.O_WRONLY, 0o644))
        # A FUSE mount commits on fsync: the step's creates are on the device before it ends.
        fd = os.open(root, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        os._exit(0)
    pids.append(pid)
for pid in pids:
    _, status = os.waitpid(pid, 0)
    if status != 0:
        sys.exit(f"a creating process failed under {root}")
print(f"{(hi - lo) * dirs / (time.time() - t0):.0f}")
PY
}

# STATS stats of random existing files (the same ones for both filesystems); prints stats/s.
cold_stats() {
    python3 - "$1" "$2" "$DIRS" "$STATS" <<'PY'
import os, random, sys, time
root, per_dir, dirs, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(per_dir)
paths = [f"{root}/d{rng.randrange(dirs)}/f{rng.randrange(per_dir)}" for _ in range(n)]
t0 = time.time()
for p in paths:
    os.stat(p)
print(f"{n / (time.time() - t0):.0f}")
PY
}

echo "machine: $(nproc) vCPU $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(free -g | awk '/Mem:/ {print $2}') GiB, $(date -u +%Y-%m-%d)"
echo "$DIRS directories, $PROCS creating processes, $STATS cold random stats per step"
echo
echo "| files | scoutfs creates/s | ext4 creates/s | scoutfs RSS after creates (MiB) | scoutfs cold stats/s | ext4 cold stats/s | ratio | scoutfs device reads per stat | ext4 device reads per stat |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
have=0
for total in "${STEPS[@]}"; do
    per_dir=$(( total / DIRS ))
    from=$(( have / DIRS ))
    s_creates=$(create_files "$SMNT/tree" "$from" "$per_dir")
    e_creates=$(create_files "$EMNT/tree" "$from" "$per_dir")
    rss=$(rss_mib "$SPID")
    have=$(( per_dir * DIRS ))

    "$SCOUTFS" unmount "$SMNT" >/dev/null
    umount "$EMNT"
    sync
    echo 3 > /proc/sys/vm/drop_caches
    mount_scoutfs
    mount_ext4
    stat "$SMNT/tree" "$EMNT/tree" >/dev/null

    r0=$(reads_of "$META")
    s_stats=$(cold_stats "$SMNT/tree" "$per_dir")
    s_reads=$(( $(reads_of "$META") - r0 ))
    r0=$(reads_of "$EXT4")
    e_stats=$(cold_stats "$EMNT/tree" "$per_dir")
    e_reads=$(( $(reads_of "$EXT4") - r0 ))
    awk -v n="$have" -v sc="$s_creates" -v ec="$e_creates" -v rss="$rss" -v ss="$s_stats" -v es="$e_stats" \
        -v sr="$s_reads" -v er="$e_reads" -v k="$STATS" \
        'BEGIN { printf "| %d | %d | %d | %d | %d | %d | %.2f | %.2f | %.2f |\n", n, sc, ec, rss, ss, es, ss / es, sr / k, er / k }'
done
