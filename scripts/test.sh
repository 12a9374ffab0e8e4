#!/usr/bin/env bash
# Builds the package with warnings as errors and runs every test. Run as root on Debian 12:
#   bash scripts/test.sh
# It installs the Debian packages the tests need when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the build and tests use: libfuse3 for the mount, fio for data verification,
# iproute2 and util-linux (ip netns, nsenter) for nodes in network namespaces of their own.
PACKAGES=(fuse3 libfuse3-dev pkg-config fio iproute2 util-linux acl)

source scripts/setup.sh

swift build --build-tests -Xswiftc -warnings-as-errors
# A hung test fails the run within the hour instead of holding CI to its limit.
timeout --kill-after=30 3600 swift test --skip-build

# The lock client and server under the thread sanitizer (a separate build).
bash scripts/tsan.sh

# Decoders, check and a mount of mutated images under libFuzzer, for a bounded time.
bash scripts/fuzz.sh "${FUZZ_SECONDS:-60}"
