#!/usr/bin/env bash
# Builds the package with warnings as errors and runs every test. Run as root on Debian 12:
#   bash scripts/test.sh
# It installs the Debian packages the tests need when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the build and tests use: libfuse3 for the mount, fio for data verification.
PACKAGES=(fuse3 libfuse3-dev pkg-config fio)

need=()
for p in "${PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! command -v swift >/dev/null 2>&1 && [ -x /opt/swift/usr/bin/swift ]; then
    export PATH="$PATH:/opt/swift/usr/bin"
fi
command -v swift >/dev/null || { echo "swift not found: install a Swift 6.1+ toolchain" >&2; exit 1; }

swift build --build-tests -Xswiftc -warnings-as-errors
swift test --skip-build
