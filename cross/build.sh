#!/usr/bin/env bash
# Builds edge-agent and edgectl for one target without Docker, with Debian's cross gcc and
# qemu-user (see docs/deploy.md). Installs what the target needs first (rustup target, cross
# gcc, cross libc, qemu-user), via the cross block of scripts/setup.sh.
#
#   cross/build.sh TARGET [--profile P]
#
# TARGET: host | aarch64-unknown-linux-gnu | armv7-unknown-linux-gnueabihf |
#         aarch64-unknown-linux-musl
# --profile: a cargo profile; default `edge` (fat LTO, stripped: what ships). `release` builds
#         much faster and is what to use while iterating.
#
# Prints the binaries' paths and their stripped sizes, then runs `edge-agent --version` under
# qemu (natively for host) as a smoke test.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 1 ] || usage
target="$1"; shift
profile=edge
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile="${2:?--profile needs a value}"; shift 2 ;;
        --profile=*) profile="${1#--profile=}"; shift ;;
        -h|--help) usage ;;
        *) echo "build.sh: unknown argument $1" >&2; usage ;;
    esac
done

case "$target" in
    host|aarch64-unknown-linux-gnu|armv7-unknown-linux-gnueabihf|aarch64-unknown-linux-musl) ;;
    *) echo "build.sh: unsupported target $target" >&2; usage ;;
esac

# Toolchain: the cross block of scripts/setup.sh (it runs only with SETUP_CROSS_TARGET set).
if [ "$target" != host ]; then
    SETUP_CROSS_TARGET="$target" bash scripts/setup.sh
fi

# Per-target environment: STRIP, RUNNER (how to run a target binary on this host; mirrors the
# runners in .cargo/config.toml) and the cc-rs variables the musl target needs.
target_env() {
    case "$1" in
        host)
            STRIP="strip"; RUNNER=() ;;
        aarch64-unknown-linux-gnu)
            STRIP=aarch64-linux-gnu-strip
            RUNNER=(qemu-aarch64 -L /usr/aarch64-linux-gnu)
            export QEMU_LD_PREFIX=/usr/aarch64-linux-gnu ;;
        armv7-unknown-linux-gnueabihf)
            STRIP=arm-linux-gnueabihf-strip
            RUNNER=(env TRACT_CPU_ARM32_NEON=true qemu-arm -L /usr/arm-linux-gnueabihf)
            export QEMU_LD_PREFIX=/usr/arm-linux-gnueabihf ;;
        aarch64-unknown-linux-musl)
            STRIP=aarch64-linux-gnu-strip
            RUNNER=(qemu-aarch64)
            # Debian has no aarch64-linux-musl-gcc: cc-rs (ring) compiles with the gnu cross gcc,
            # against glibc's headers (see docs/deploy.md for whether that works).
            export CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
            export AR_aarch64_unknown_linux_musl=aarch64-linux-gnu-ar ;;
        *) echo "unknown target $1" >&2; exit 2 ;;
    esac
}
target_env "$target"

target_args=()
if [ "$target" != host ]; then target_args=(--target "$target"); fi

# cargo's directory for a profile: `dev` builds into debug/, the others into their own name.
dir_profile="$profile"
[ "$profile" = dev ] && dir_profile=debug
target_dir="${CARGO_TARGET_DIR:-target}"
if [ "$target" = host ]; then out="$target_dir/$dir_profile"; else out="$target_dir/$target/$dir_profile"; fi

# The commit built from, for /metrics (edge_agent_build_info{git_sha}); left out when the
# source is not a git checkout (a release tarball).
EDGE_AGENT_GIT_SHA="$(git rev-parse --short=12 HEAD 2>/dev/null || true)"
export EDGE_AGENT_GIT_SHA
echo "build.sh: cargo build -p edge-agent -p edgectl --profile $profile ${target_args[*]}" >&2
start=$(date +%s)
cargo build -p edge-agent -p edgectl --profile "$profile" "${target_args[@]}"
echo "build.sh: built in $(( $(date +%s) - start )) s" >&2

for bin in edge-agent edgectl; do
    path="$out/$bin"
    [ -x "$path" ] || { echo "build.sh: $path missing" >&2; exit 1; }
    # Stripped size: `edge` is stripped already; for the others, measure a stripped copy.
    tmp=$(mktemp)
    cp "$path" "$tmp"
    "$STRIP" "$tmp" 2>/dev/null || true
    size=$(stat -c %s "$tmp")
    rm -f "$tmp"
    awk -v p="$path" -v s="$size" 'BEGIN { printf "%s\t%d bytes stripped (%.1f MB)\n", p, s, s / 1e6 }'
done

echo "build.sh: smoke test: ${RUNNER[*]} $out/edge-agent --version" >&2
"${RUNNER[@]}" "$out/edge-agent" --version
