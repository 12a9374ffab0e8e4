# Sourced by the scripts here: installs missing Debian packages and finds the Swift toolchain.
# Usage: PACKAGES=(…); source scripts/setup.sh

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

# Builds a release product with the Swift runtime linked in (as the installed binary is) and
# prints its path: SCOUTFS=$(release_product scoutfs).
release_product() {
    swift build -c release --static-swift-stdlib --product "$1" >/dev/null || return 1
    echo "$(swift build -c release --static-swift-stdlib --show-bin-path)/$1"
}
