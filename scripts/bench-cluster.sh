#!/usr/bin/env bash
# Cluster figures, whole mounts, in one run on this machine: a filesystem mounted twice on one
# pair of device files (slot 0 runs the server, slot 1 is a node connected to it over TCP on
# loopback), and the same workloads on two nodes and on one. Run as root on Debian 12:
#   bash scripts/bench-cluster.sh [FILES] [ROUNDS]      (defaults 5000 files per process, 3 rounds)
# Prints, per round and as medians:
#   - creates/s of two processes in their own directories on two nodes, and on one node, and
#     the ratio (goal: being two nodes costs nothing, >= 0.9);
#   - lock requests the node sent per 1,000 creates in its own directory after warm-up;
#   - creates/s per node with both creating in one shared directory;
#   - lock ping-pong: one file written alternately from both nodes, time per round;
#   - stat on one node of a file the other node just changed;
#   - creates/s of one process on the node alone against one on the server's mount alone.
# BENCH_DIR (default /var/tmp/scoutfs-bench) holds the device files.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(fuse3 libfuse3-dev pkg-config python3)
source scripts/setup.sh

FILES=${1:-5000}
ROUNDS=${2:-3}
BENCH_DIR=${BENCH_DIR:-/var/tmp/scoutfs-bench}
SCOUTFS=$(release_product scoutfs)
PORT=${BENCH_PORT:-7190}

A="$BENCH_DIR/cluster-a"
B="$BENCH_DIR/cluster-b"
KEY="$BENCH_DIR/cluster.key"
cleanup() {
    "$SCOUTFS" unmount "$B" >/dev/null 2>&1 || true
    "$SCOUTFS" unmount "$A" >/dev/null 2>&1 || true
    rm -f "$BENCH_DIR/cluster-meta.img" "$BENCH_DIR/cluster-data.img" "$KEY"
}
trap cleanup EXIT
mkdir -p "$A" "$B"
rm -f "$BENCH_DIR/cluster-meta.img" "$BENCH_DIR/cluster-data.img" "$KEY"
fallocate -l 4G "$BENCH_DIR/cluster-meta.img"
fallocate -l 4G "$BENCH_DIR/cluster-data.img"
"$SCOUTFS" mkfs --cluster-key "$KEY" -Q "0,127.0.0.1,$PORT" -Q "1,127.0.0.1,$((PORT + 1))" \
    "$BENCH_DIR/cluster-meta.img" "$BENCH_DIR/cluster-data.img" >/dev/null
"$SCOUTFS" mount --quorum-slot 0 --cluster-key "$KEY" --log "$BENCH_DIR/cluster-a.log" \
    "$BENCH_DIR/cluster-meta.img" "$BENCH_DIR/cluster-data.img" "$A" >/dev/null
"$SCOUTFS" mount --quorum-slot 1 --cluster-key "$KEY" --log "$BENCH_DIR/cluster-b.log" \
    "$BENCH_DIR/cluster-meta.img" "$BENCH_DIR/cluster-data.img" "$B" >/dev/null

echo "machine: $(nproc) CPUs, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), kernel $(uname -r); $(date -u +%Y-%m-%d)"
echo "files per process: $FILES, rounds: $ROUNDS"
python3 - "$SCOUTFS" "$A" "$B" "$FILES" "$ROUNDS" <<'EOF'
import json, os, statistics, subprocess, sys, time
from multiprocessing import Process, Barrier

scoutfs, A, B, files, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])

def create(d, n, barrier=None):
    os.makedirs(d, exist_ok=True)
    if barrier: barrier.wait()
    for i in range(n):
        os.close(os.open(f"{d}/f{i}", os.O_CREAT | os.O_WRONLY, 0o644))

def timed_parallel(dirs, n):
    barrier = Barrier(len(dirs) + 1)
    ps = [Process(target=create, args=(d, n, barrier)) for d in dirs]
    for p in ps: p.start()
    barrier.wait()
    t = time.perf_counter()
    for p in ps: p.join()
    return time.perf_counter() - t

def lock_requests(mnt):
    out = subprocess.run([scoutfs, "status", "--json", mnt], capture_output=True, text=True, check=True).stdout
    return json.loads(out)["lockRequests"]

def ping_pong(a, b, n):
    open(a, "w").close()
    fa, fb = os.open(a, os.O_WRONLY), os.open(b, os.O_WRONLY)
    os.pwrite(fa, b"x", 0); os.pwrite(fb, b"y", 0)
    t = time.perf_counter()
    for i in range(n):
        os.pwrite(fa, b"a", i % 4096)
        os.pwrite(fb, b"b", i % 4096)
    dt = time.perf_counter() - t
    os.close(fa); os.close(fb)
    return dt / n

def stat_after_change(a, b, n):
    open(a, "w").close()
    os.stat(b)
    worst, total = 0.0, 0.0
    for i in range(n):
        os.chmod(a, 0o600 if i % 2 else 0o644)
        t = time.perf_counter()
        st = os.stat(b)
        dt = time.perf_counter() - t
        assert st.st_mode & 0o777 == (0o600 if i % 2 else 0o644), "the node saw a stale mode"
        total += dt; worst = max(worst, dt)
    return total / n, worst

rows = {k: [] for k in ["two_nodes", "one_node", "ratio", "locks_per_1000", "shared_per_node", "pingpong_ms", "stat_ms", "node_alone", "server_alone", "alone_ratio"]}
for r in range(rounds):
    base = f"r{r}"
    # Two processes, own directories: one on each node, and both on the server's mount. The
    # order alternates between rounds: the second run of a round meets a larger tree (and the
    # first one's merges), which would otherwise favour one side in every round.
    if r % 2 == 0:
        t2 = timed_parallel([f"{A}/{base}-n-a", f"{B}/{base}-n-b"], files)
        t1 = timed_parallel([f"{A}/{base}-o-a", f"{A}/{base}-o-b"], files)
    else:
        t1 = timed_parallel([f"{A}/{base}-o-a", f"{A}/{base}-o-b"], files)
        t2 = timed_parallel([f"{A}/{base}-n-a", f"{B}/{base}-n-b"], files)
    rows["two_nodes"].append(2 * files / t2); rows["one_node"].append(2 * files / t1); rows["ratio"].append(t1 / t2)
    # Lock messages of the node per 1,000 creates in a directory it already created in.
    d = f"{B}/{base}-warm"; create(d, 200)
    before = lock_requests(B)
    for i in range(200, 1200): os.close(os.open(f"{d}/f{i}", os.O_CREAT | os.O_WRONLY, 0o644))
    rows["locks_per_1000"].append(lock_requests(B) - before)
    # Both nodes in one shared directory.
    os.makedirs(f"{A}/{base}-shared")
    n = max(files // 10, 200)
    barrier = Barrier(3)
    def shared(mnt, tag, barrier):
        barrier.wait()
        for i in range(n): os.close(os.open(f"{mnt}/{base}-shared/{tag}{i}", os.O_CREAT | os.O_WRONLY, 0o644))
    ps = [Process(target=shared, args=(A, "a", barrier)), Process(target=shared, args=(B, "b", barrier))]
    for p in ps: p.start()
    barrier.wait(); t = time.perf_counter()
    for p in ps: p.join()
    rows["shared_per_node"].append(n / (time.perf_counter() - t))
    rows["pingpong_ms"].append(1000 * ping_pong(f"{A}/{base}-pp", f"{B}/{base}-pp", 200))
    mean, worst = stat_after_change(f"{A}/{base}-st", f"{B}/{base}-st", 200)
    rows["stat_ms"].append(1000 * mean)
    # One process alone: on the node, then on the server's mount.
    tn = timed_parallel([f"{B}/{base}-alone"], files)
    ts = timed_parallel([f"{A}/{base}-alone-s"], files)
    rows["node_alone"].append(files / tn); rows["server_alone"].append(files / ts); rows["alone_ratio"].append(ts / tn)
    print(f"round {r}: two nodes {2*files/t2:.0f}/s, one node {2*files/t1:.0f}/s (ratio {t1/t2:.2f}); "
          f"node lock requests per 1000 creates {rows['locks_per_1000'][-1]}; shared dir {rows['shared_per_node'][-1]:.0f}/s per node; "
          f"ping-pong {rows['pingpong_ms'][-1]:.2f} ms/round; stat after change {1000*mean:.2f} ms (worst {1000*worst:.2f}); "
          f"alone: node {files/tn:.0f}/s, server's mount {files/ts:.0f}/s (node/server {ts/tn:.2f})", flush=True)
med = {k: statistics.median(v) for k, v in rows.items()}
print(f"median: two nodes / one node {med['ratio']:.2f} ({med['two_nodes']:.0f} vs {med['one_node']:.0f} creates/s); "
      f"node lock requests per 1000 creates {med['locks_per_1000']:.0f}; shared dir {med['shared_per_node']:.0f} creates/s per node; "
      f"ping-pong {med['pingpong_ms']:.2f} ms/round; stat after change {med['stat_ms']:.2f} ms; "
      f"node alone / server's mount alone {med['alone_ratio']:.2f} ({med['node_alone']:.0f} vs {med['server_alone']:.0f} creates/s)")
EOF
"$SCOUTFS" unmount "$B" >/dev/null
"$SCOUTFS" unmount "$A" >/dev/null
"$SCOUTFS" check "$BENCH_DIR/cluster-meta.img" "$BENCH_DIR/cluster-data.img" | tail -1
