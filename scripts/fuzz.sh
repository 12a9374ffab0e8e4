#!/usr/bin/env bash
# Builds the libFuzzer target (Fuzz/) and runs it for a bounded time; fails on any finding.
#   bash scripts/fuzz.sh [SECONDS]        (scripts/test.sh runs it with 60)
# The corpus grows in .build-fuzz/corpus between runs on one machine; findings (crash-*,
# oom-*, timeout-*) are written to .build-fuzz/findings with the input that caused them.
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES=()
source scripts/setup.sh

seconds=${1:-60}
scratch=.build-fuzz
swift build -c release --package-path Fuzz --sanitize=fuzzer --scratch-path "$scratch"
mkdir -p "$scratch/corpus" "$scratch/findings"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# The Swift runtime's own crash handler would take the trap before libFuzzer can save the
# input that caused it.
SWIFT_BACKTRACE=enable=no "$scratch/release/ScoutFuzz" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$scratch/findings/" "$scratch/corpus" >"$log" 2>&1 || status=$?
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
if [ "$status" -ne 0 ]; then
    grep -E "ERROR|SUMMARY|Fatal error|Test unit written|Base64" "$log" >&2 || tail -40 "$log" >&2
    # Run the input once more with the runtime's backtrace, which names the line that trapped.
    for f in "$scratch"/findings/*; do
        [ -f "$f" ] && "$scratch/release/ScoutFuzz" "$f" 2>&1 | grep -E "Swift runtime failure|Fatal error| at /" | head -20 >&2
    done
    echo "fuzz: finding after ${execs:-?} executions (exit $status); the input is in $scratch/findings" >&2
    exit 1
fi
echo "fuzz: ${execs:-0} executions in ${seconds} s, no findings ($(grep -cE '^#[0-9]+.*NEW' "$log" || true) new inputs)"
