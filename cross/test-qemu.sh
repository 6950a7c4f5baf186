#!/usr/bin/env bash
# Runs the agent's correctness tests for a cross target under qemu-user:
#
#   cross/test-qemu.sh TARGET [--profile P] [-- extra cargo test arguments]
#
# i.e. `cargo test -p edge-agent --profile P --target TARGET --test models --test cli
# --test fleet`, with the test binaries started through the runner in
# .cargo/config.toml (qemu-aarch64 / qemu-arm):
#   models  every shipped model against its reference outputs, on the target's kernels;
#   cli     the edge-agent binary's inspect/infer/check-config;
#   fleet   the telemetry smoke test: `edge-agent run` (under qemu) against a real Mosquitto
#           on the host over mutual TLS (the test harness starts it; scripts/setup.sh
#           installs it).
# QEMU_TESTS="models cli" replaces that list (and skips the OTA smoke test below);
# QEMU_EXTRA_TESTS="ota" adds all of agent/tests/ota.rs to it.
# TARGET: aarch64-unknown-linux-gnu | armv7-unknown-linux-gnueabihf | aarch64-unknown-linux-musl
# --profile: default `release`, the profile the .deb packages and cross/build.sh --profile
#   release build, so CI compiles the target's dependencies once for all three. (`edge`
#   inherits it, adding LTO.) Debug assertions are covered by the host tests (scripts/test.sh).
#
# The cli and fleet tests start the edge-agent binary themselves, which the runner cannot
# wrap: the kernel must hand target ELF files to qemu (binfmt_misc). When the handler is
# missing and we are root, this script mounts binfmt_misc and registers one for the target's
# qemu (a machine-wide change until reboot; unregister with
# `echo -1 > /proc/sys/fs/binfmt_misc/qemu-…`). Otherwise those tests fail with "Exec format
# error" and the `models` tests still run.
#
# Cold, this is a full cross build of tract: see docs/deploy.md for times.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 1 ] || usage
target="$1"; shift
profile=release
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile="${2:?--profile needs a value}"; shift 2 ;;
        --profile=*) profile="${1#--profile=}"; shift ;;
        -h|--help) usage ;;
        --) shift; break ;;
        *) break ;;
    esac
done
tests=()
if [ -n "${QEMU_TESTS:-}" ]; then
    read -r -a tests <<<"$QEMU_TESTS"
else
    tests=(models cli fleet)
fi
if [ -n "${QEMU_EXTRA_TESTS:-}" ]; then
    read -r -a extra <<<"$QEMU_EXTRA_TESTS"
    tests+=("${extra[@]}")
fi
test_args=()
for t in "${tests[@]}"; do test_args+=(--test "$t"); done

# magic and mask: the ELF header fields qemu's own qemu-binfmt-conf.sh matches on.
case "$target" in
    aarch64-unknown-linux-gnu|aarch64-unknown-linux-musl)
        qemu="qemu-aarch64"
        magic='\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
        mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff' ;;
    armv7-unknown-linux-gnueabihf)
        qemu="qemu-arm"
        magic='\x7fELF\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x28\x00'
        mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff' ;;
    *) echo "test-qemu.sh: unsupported target $target" >&2; exit 2 ;;
esac

SETUP_CROSS_TARGET="$target" bash scripts/setup.sh

# Tests that need a request slower than firing a few (agent/tests/fleet.rs) pick a smaller
# model under emulation, where every model runs hundreds of times slower.
export EDGE_IT_EMULATED=1

# What the runner's `-L` does for the test binary, for the processes it starts (via binfmt).
case "$target" in
    aarch64-unknown-linux-gnu) export QEMU_LD_PREFIX=/usr/aarch64-linux-gnu ;;
    armv7-unknown-linux-gnueabihf)
        export QEMU_LD_PREFIX=/usr/arm-linux-gnueabihf
        # Also in the runner; exported so that it reaches the processes the tests start.
        export TRACT_CPU_ARM32_NEON=true ;;
    aarch64-unknown-linux-musl)
        export CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
        export AR_aarch64_unknown_linux_musl=aarch64-linux-gnu-ar ;;
esac

binfmt=/proc/sys/fs/binfmt_misc
have_handler() {
    local f
    for f in "$binfmt"/*; do
        [ -f "$f" ] && grep -q "^interpreter .*$qemu\$" "$f" 2>/dev/null && grep -qx enabled "$f" && return 0
    done
    return 1
}
if ! have_handler; then
    if [ "$(id -u)" -eq 0 ]; then
        [ -e "$binfmt/register" ] || mount -t binfmt_misc binfmt_misc "$binfmt" 2>/dev/null || true
        if [ -e "$binfmt/register" ] && [ ! -e "$binfmt/$qemu" ]; then
            echo ":$qemu:M::$magic:$mask:$(command -v "$qemu"):" > "$binfmt/register" \
                && echo "test-qemu.sh: registered binfmt_misc handler $binfmt/$qemu" >&2
        fi
    fi
    have_handler || echo "test-qemu.sh: no binfmt_misc handler for $qemu: the cli tests will fail" >&2
fi

cargo_test=(cargo test -p edge-agent --profile "$profile" --target "$target" "${test_args[@]}")
start=$(date +%s)
echo "test-qemu.sh: building: ${cargo_test[*]}" >&2
"${cargo_test[@]}" --no-run
built=$(date +%s)
echo "test-qemu.sh: build took $(( built - start )) s; running under $qemu" >&2
rc=0
"${cargo_test[@]}" "$@" || rc=$?
# The OTA smoke test, unless QEMU_TESTS chose the list: a signed deploy validated and
# installed by the agent under qemu, a second version and a rollback, and the refusals (bad
# key, bad hash, truncated and garbage models, a failed validation vector, expired,
# replayed, oversized, unknown version), against the same broker. The rest of
# agent/tests/ota.rs (QEMU_EXTRA_TESTS=ota) has timing-sensitive tests that fail under
# emulation.
if [ -z "${QEMU_TESTS:-}" ]; then
    cargo test -p edge-agent --profile "$profile" --target "$target" --test ota -- \
        deploy_activate_a_second_version_then_roll_back bad_updates_are_refused || rc=$?
fi
echo "test-qemu.sh: tests took $(( $(date +%s) - built )) s (rc=$rc)" >&2
exit $rc
