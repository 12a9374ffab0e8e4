#!/usr/bin/env bash
# Builds scoutfs, makes a pair of sparse device files under ./demo, formats them (once), and
# mounts the filesystem on ./demo/mnt. Run as root on Debian 12:
#   bash scripts/demo.sh
# Re-running keeps the demo filesystem and its files; DEMO_FRESH=1 formats it again.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(fuse3 libfuse3-dev pkg-config)
source scripts/setup.sh

swift build -c release --static-swift-stdlib --product scoutfs
BIN="$(swift build -c release --static-swift-stdlib --show-bin-path)/scoutfs"

DEMO="$PWD/demo"
META="$DEMO/meta.img"
DATA="$DEMO/data.img"
KEY="$DEMO/cluster.key"
MNT="$DEMO/mnt"
mkdir -p "$DEMO" "$MNT"
if "$BIN" status "$MNT" >/dev/null 2>&1; then
    echo "the demo filesystem is mounted on $MNT; unmounting it first"
    "$BIN" unmount "$MNT"
fi
# Sparse files: they take disk space only as the filesystem writes to them.
[ -e "$META" ] || truncate -s 4G "$META"
[ -e "$DATA" ] || truncate -s 16G "$DATA"

if [ "${DEMO_FRESH:-0}" = 1 ] || [ ! -e "$KEY" ] || ! "$BIN" check "$META" "$DATA" >/dev/null 2>&1; then
    rm -f "$KEY"
    "$BIN" mkfs --force --cluster-key "$KEY" -Q 0,127.0.0.1,7100 -Q 1,127.0.0.1,7101 "$META" "$DATA"
fi
"$BIN" mount --quorum-slot 0 --cluster-key "$KEY" --log "$DEMO/scoutfs.log" -o allow_other "$META" "$DATA" "$MNT"
[ -e "$MNT/README" ] || echo "This is a scoutfs-swift filesystem. Its devices are $META and $DATA." > "$MNT/README"
echo
"$BIN" status "$MNT"
echo
df -h "$MNT"
echo
echo "scoutfs is mounted on $MNT (devices $META and $DATA, log $DEMO/scoutfs.log)."
echo "Use it like any directory. Unmount with: $BIN unmount $MNT"
echo "A second node of the same filesystem (quorum slot 1): mkdir -p $DEMO/mnt2; $BIN mount --quorum-slot 1 --cluster-key $KEY $META $DATA $DEMO/mnt2"
echo "Then inspect the devices with: $BIN print $META; $BIN check $META $DATA"
