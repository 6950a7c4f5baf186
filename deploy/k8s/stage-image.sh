#!/usr/bin/env bash
# Copies the edge-agent binaries that cross/build.sh built into target/image/<arch>/, the
# layout deploy/k8s/Containerfile expects (<arch> is buildx's TARGETARCH: amd64, arm64, arm).
#
#   deploy/k8s/stage-image.sh [--profile P]     # default profile: edge
#
# Copies whichever targets have been built; fails if none has.
set -euo pipefail
cd "$(dirname "$0")/../.."
profile=edge
if [ "${1:-}" = --profile ]; then profile="${2:?--profile needs a value}"; fi
target_dir="${CARGO_TARGET_DIR:-target}"
n=0
for pair in amd64:"$profile" arm64:aarch64-unknown-linux-gnu/"$profile" arm:armv7-unknown-linux-gnueabihf/"$profile"; do
    arch=${pair%%:*}
    bin="$target_dir/${pair#*:}/edge-agent"
    [ -x "$bin" ] || continue
    mkdir -p "target/image/$arch"
    cp "$bin" "target/image/$arch/edge-agent"
    echo "stage-image.sh: $bin -> target/image/$arch/edge-agent"
    n=$((n + 1))
done
[ "$n" -gt 0 ] || { echo "stage-image.sh: no $profile build found; run cross/build.sh first" >&2; exit 1; }
