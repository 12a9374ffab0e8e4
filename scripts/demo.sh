#!/usr/bin/env bash
# Builds scoutfs, makes a pair of sparse device files under ./demo, formats them and shows what
# is on them. Run as root on Debian 12:
#   bash scripts/demo.sh
# Re-running keeps an existing demo filesystem; DEMO_FRESH=1 formats it again.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v swift >/dev/null 2>&1 && [ -x /opt/swift/usr/bin/swift ]; then
    export PATH="$PATH:/opt/swift/usr/bin"
fi
command -v swift >/dev/null || { echo "swift not found: install a Swift 6.1+ toolchain" >&2; exit 1; }

swift build -c release --product scoutfs
BIN="$(swift build -c release --show-bin-path)/scoutfs"

DEMO="$PWD/demo"
META="$DEMO/meta.img"
DATA="$DEMO/data.img"
mkdir -p "$DEMO"
# Sparse files: they take disk space only as the filesystem writes to them.
[ -e "$META" ] || truncate -s 4G "$META"
[ -e "$DATA" ] || truncate -s 16G "$DATA"

if [ "${DEMO_FRESH:-0}" = 1 ] || ! "$BIN" check "$META" "$DATA" >/dev/null 2>&1; then
    "$BIN" mkfs --force -Q 0,127.0.0.1,7100 "$META" "$DATA"
fi
echo
"$BIN" print "$META"
echo
"$BIN" check "$META" "$DATA"
echo
echo "demo filesystem: metadata device $META, data device $DATA"
echo "inspect it with: $BIN print $META; verify it with: $BIN check $META $DATA"
