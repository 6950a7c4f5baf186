#!/usr/bin/env bash
# The shipping half of CI, run by .ci/run after scripts/test.sh (the host tests):
#
#   1. scripts/check-k8s.sh       the Kubernetes manifests, validated offline;
#   2. cross/test-qemu.sh         aarch64: models, cli, the telemetry smoke test against a
#                                 Mosquitto on the host (and OTA, once agent/tests/ota.rs
#                                 exists), all under qemu-aarch64, release profile;
#   3. scripts/build-debs.sh      .debs for amd64 and arm64 (release profile, so the arm64
#                                 binaries reuse step 2's build), checked with dpkg-deb and
#                                 lintian;
#      scripts/test-deb-install.sh  the amd64 .debs installed, upgraded, removed and purged
#                                 in a fresh bookworm chroot;
#   4. armv7 (armhf), only with CI_ARMV7=1: the same tests under qemu-arm and the armhf .debs.
#
# Why armv7 is opt-in: on CI's 2 cores a cold armv7 build and its qemu-arm test run add about
# 30 minutes (docs/deploy.md, "CI"), which would take a cold run past the 90-minute limit's
# safety margin. Run it before a release, or on its own: CI_ARMV7=only cross/ci.sh.
#
# Each step prints its wall time; the last line sums the qemu test results.
set -euo pipefail
cd "$(dirname "$0")/.."

armv7="${CI_ARMV7:-0}"
summary=()
passed=0
failed=0
status=0

# step NAME COMMAND...: runs it, records its time, remembers a failure and goes on.
step() {
    local name="$1" start rc=0
    shift
    echo "=== ci: $name: $*"
    start=$(date +%s)
    "$@" || rc=$?
    summary+=("$(printf '%-40s %4d s  rc=%d' "$name" "$(( $(date +%s) - start ))" "$rc")")
    [ "$rc" -eq 0 ] || status=1
    return 0
}

# qemu_tests TARGET: cross/test-qemu.sh, with its "test result:" lines added to the totals.
# shellcheck disable=SC2317 # called through step
qemu_tests() {
    local log rc=0 p f
    log=$(mktemp)
    bash cross/test-qemu.sh "$1" 2>&1 | tee "$log" || rc=$?
    p=$(grep -Eo '^test result: .* [0-9]+ passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
    f=$(grep -Eo '^test result: .*; [0-9]+ failed' "$log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
    passed=$((passed + p))
    failed=$((failed + f))
    rm -f "$log"
    return "$rc"
}

if [ "$armv7" != only ]; then
    step "k8s manifests" bash scripts/check-k8s.sh
    step "aarch64 tests under qemu" qemu_tests aarch64-unknown-linux-gnu
    step "debs amd64 + arm64" bash scripts/build-debs.sh --profile release host aarch64-unknown-linux-gnu
    step "deb install in a chroot (amd64)" bash scripts/test-deb-install.sh
fi
if [ "$armv7" = 1 ] || [ "$armv7" = only ]; then
    step "armv7 tests under qemu" qemu_tests armv7-unknown-linux-gnueabihf
    step "debs armhf" bash scripts/build-debs.sh --profile release armv7-unknown-linux-gnueabihf
else
    echo "=== ci: armv7 skipped (CI_ARMV7=1 runs it; see cross/ci.sh)"
fi

echo "=== ci: shipping steps"
printf '  %s\n' "${summary[@]}"
echo "qemu: ${passed} passed, ${failed} failed"
exit "$status"
