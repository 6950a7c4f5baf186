#!/usr/bin/env bash
# Runs the inference correctness tests for a cross target under qemu-user:
#
#   cross/test-qemu.sh TARGET [extra cargo test arguments, e.g. -- --test-threads=1]
#
# i.e. `cargo test -p edge-agent --test models --test cli --target TARGET`, with the test
# binaries started through the runner in .cargo/config.toml (qemu-aarch64 / qemu-arm).
# TARGET: aarch64-unknown-linux-gnu | armv7-unknown-linux-gnueabihf | aarch64-unknown-linux-musl
#
# The `cli` tests start the edge-agent binary themselves, which the runner cannot wrap: the
# kernel must hand target ELF files to qemu (binfmt_misc). When the handler is missing and we
# are root, this script mounts binfmt_misc and registers one for the target's qemu (a
# machine-wide change until reboot; unregister with `echo -1 > /proc/sys/fs/binfmt_misc/qemu-…`).
# Otherwise the `cli` tests fail with "Exec format error" and the `models` tests still run.
#
# Cold, this is a full cross build of tract in the test profile (dependencies at opt-level 3):
# see docs/deploy.md for times. Not run by CI yet.
set -euo pipefail
cd "$(dirname "$0")/.."

[ $# -ge 1 ] || { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
target="$1"; shift

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

start=$(date +%s)
echo "test-qemu.sh: building tests for $target" >&2
cargo test -p edge-agent --test models --test cli --target "$target" --no-run
built=$(date +%s)
echo "test-qemu.sh: build took $(( built - start )) s; running under $qemu" >&2
rc=0
cargo test -p edge-agent --test models --test cli --target "$target" "$@" || rc=$?
echo "test-qemu.sh: tests took $(( $(date +%s) - built )) s (rc=$rc)" >&2
exit $rc
