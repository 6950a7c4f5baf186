#!/usr/bin/env bash
# Installs what building and testing edge-agent needs on a fresh Debian machine.
# Idempotent: skips what is already there.
set -euo pipefail

need_apt=()
command -v cc >/dev/null || need_apt+=(gcc)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
# The integration tests (crate `edge-it` in tests/) start their own Mosquitto on a free
# loopback port with a generated config. Debian installs it as /usr/sbin/mosquitto, which is
# not on a normal user's PATH, so look there too. If apt also starts the packaged systemd
# service, it is left alone: it listens on 1883 and the tests never use it.
if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
    need_apt+=(mosquitto)
fi
# The fleet service's tests (fleet/tests) start their own PostgreSQL server in a temporary
# directory with initdb and pg_ctl; Debian puts them under /usr/lib/postgresql/<major>/bin,
# off PATH, where the harness (tests/src/postgres.rs) looks. Only the server binaries are
# wanted: the packaged cluster and service are left alone.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_apt+=(postgresql)
# promtool (Debian's `prometheus` package) checks the agent's /metrics exposition and the alert
# rules in the tests; its `prometheus` binary is the remote-write receiver of fleet/tests/export.rs.
command -v promtool >/dev/null || need_apt+=(prometheus)
# curl sends TF Serving's documented `curl -d` requests in agent/tests/serving.rs.
command -v curl >/dev/null || need_apt+=(curl)
# libfaketime sets an agent's clock back in agent/tests/authority.rs (replay after the clock
# goes back), without touching the machine's clock.
compgen -G '/usr/lib/*/faketime/libfaketimeMT.so.1' >/dev/null || need_apt+=(libfaketime)
# qemu-user runs the model-check child under emulation in agent/tests/engine.rs, as an arm
# image tested on an x86 machine would (its resource limits must leave qemu room).
command -v "qemu-$(uname -m)" >/dev/null || need_apt+=(qemu-user)
if [ ${#need_apt[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    # --no-install-recommends, and no service start: only the binaries are wanted.
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

if ! command -v cargo >/dev/null; then
    echo "setup: cargo not found; install Rust with rustup first (https://rustup.rs)" >&2
    exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

# --- Python client of the serving tests ---------------------------------------------------
# agent/tests/serving_v2.rs drives the agent's Open Inference Protocol routes with NVIDIA's own
# HTTP client (PyPI `tritonclient[http]`), from a venv in the repository (.venv, ignored by
# git) so that no system Python is touched. Rebuilt only when the pinned version is missing.
TRITONCLIENT_VERSION=2.73.0
venv="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv"
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv
fi
if ! "$venv/bin/python" -c "
import importlib.metadata as m, numpy, tritonclient.http
assert m.version('tritonclient') == '$TRITONCLIENT_VERSION'" 2>/dev/null; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "tritonclient[http]==$TRITONCLIENT_VERSION" numpy
fi

# --- Cross builds (cross/build.sh, cross/test-qemu.sh) -------------------------------------
# Not run by default: CI and a plain `scripts/setup.sh` never install cross toolchains. The
# cross/ scripts source this file with SETUP_CROSS_TARGET set and call setup_cross; that is
# the only way the block below runs.
setup_cross() {
    local target="$1" pkgs=()
    case "$target" in
        aarch64-unknown-linux-gnu)
            pkgs=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user) ;;
        armv7-unknown-linux-gnueabihf)
            pkgs=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross qemu-user) ;;
        aarch64-unknown-linux-musl)
            # No musl cross gcc in Debian: the gnu one compiles ring's C against glibc headers
            # and drives the link; Rust's self-contained musl provides crt and libc.
            pkgs=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user) ;;
        host|"") return 0 ;;
        *) echo "setup: no cross toolchain known for $target" >&2; return 1 ;;
    esac
    rustup target list --installed | grep -qx "$target" || rustup target add "$target"
    local missing=()
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        local sudo=""
        [ "$(id -u)" -ne 0 ] && sudo="sudo"
        $sudo apt-get update -qq
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
}
if [ -n "${SETUP_CROSS_TARGET:-}" ]; then
    setup_cross "$SETUP_CROSS_TARGET"
fi
