#!/usr/bin/env bash
# The shipping half of CI, run by .ci/run after scripts/test.sh (the host tests):
#
#   1. scripts/check-k8s.sh       the Kubernetes manifests, validated offline;
#      scripts/check-scripts.sh   shellcheck on these scripts and the maintainer scripts;
#      scripts/deny.sh            cargo deny check (advisories from the dated snapshot in
#                                 deny/advisory-db, licences, bans, sources); installs
#                                 cargo-deny when missing, about 2.5 minutes on 2 cores;
#   2. cross/test-qemu.sh         aarch64: models, cli, the telemetry and OTA smoke tests
#                                 against a Mosquitto on the host, all under qemu-aarch64,
#                                 release profile;
#   3. scripts/build-debs.sh      .debs for amd64 and arm64 (release profile, so the arm64
#                                 binaries reuse step 2's build), checked with dpkg-deb and
#                                 lintian;
#      scripts/test-deb-install.sh  the amd64 .debs installed, upgraded, removed and purged
#                                 in a fresh bookworm chroot;
#   4. armv7 (armhf): the same tests under qemu-arm, and the armhf .debs.
#
# CI_ARMV7 decides step 4:
#   auto (default)  run it if CI has used at most CI_ARMV7_BEFORE_MIN minutes (default 45)
#                   when it is reached, counted from CI_STARTED_AT (set by .ci/run; else from
#                   this script's start). A cold armv7 build, test and .debs took 9 minutes on
#                   an idle 2-core machine, up to twice that under load (docs/deploy.md, "CI");
#                   the last landed CI run took 59 minutes in all (armv7 included), so 45
#                   keeps a run with armv7 near 60 and skips it, loudly, on a slower one.
#   1               always;   0   never;   only   nothing but step 4.
#
# Each step prints its wall time; the last line sums the qemu test results.
set -euo pipefail
cd "$(dirname "$0")/.."

armv7="${CI_ARMV7:-auto}"
started_at="${CI_STARTED_AT:-$(date +%s)}"
armv7_before_min="${CI_ARMV7_BEFORE_MIN:-45}"
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
    step "shellcheck" bash scripts/check-scripts.sh
    step "cargo deny" bash scripts/deny.sh
    step "aarch64 tests under qemu" qemu_tests aarch64-unknown-linux-gnu
    step "debs amd64 + arm64" bash scripts/build-debs.sh --profile release host aarch64-unknown-linux-gnu
    step "deb install in a chroot (amd64)" bash scripts/test-deb-install.sh
fi
used_min=$(( ($(date +%s) - started_at) / 60 ))
if [ "$armv7" = auto ]; then
    if [ "$used_min" -le "$armv7_before_min" ]; then
        armv7=1
    else
        armv7=0
        summary+=("armv7 SKIPPED: CI had used $used_min min (> $armv7_before_min); run CI_ARMV7=only cross/ci.sh")
        echo "=== ci: ${summary[-1]}"
    fi
fi
if [ "$armv7" = 1 ] || [ "$armv7" = only ]; then
    step "armv7 tests under qemu" qemu_tests armv7-unknown-linux-gnueabihf
    step "debs armhf" bash scripts/build-debs.sh --profile release armv7-unknown-linux-gnueabihf
fi

echo "=== ci: shipping steps"
printf '  %s\n' "${summary[@]}"
echo "qemu: ${passed} passed, ${failed} failed"
exit "$status"
