#!/usr/bin/env bash
# Runs the multi-threaded lock, item cache and filesystem tests under the thread sanitizer;
# fails on any report.
#   bash scripts/tsan.sh            (scripts/test.sh runs it after the main suite)
# The modules lock with pthread mutexes, which the sanitizer can see
# (Sources/ScoutFormat/BlockingMutex.swift explains why not Synchronization.Mutex).
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES=()
source scripts/setup.sh

scratch=.build/tsan
log=$(mktemp)
trap 'rm -f "$log"' EXIT
swift build --build-tests --sanitize=thread --scratch-path "$scratch"
status=0
TSAN_OPTIONS="halt_on_error=0 ${TSAN_OPTIONS:-}" \
    timeout --kill-after=30 1800 swift test --skip-build --sanitize=thread --scratch-path "$scratch" \
    --filter 'LockStressTests|LockClientTests|ItemCacheStressTests|ParallelFilesystemTests|ClusterFilesystemTests|ClusterModelTests|NetTransportTests|NetworkLockTests' 2>&1 | tee "$log" || status=$?
reports=$(grep -c 'WARNING: ThreadSanitizer' "$log" || true)
if [ "$status" -ne 0 ] || [ "$reports" -ne 0 ]; then
    echo "thread sanitizer: $reports report(s), test exit status $status" >&2
    exit 1
fi
echo "thread sanitizer: no reports"
