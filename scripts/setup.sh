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
# promtool (Debian's `prometheus` package) checks the agent's /metrics exposition in the tests.
command -v promtool >/dev/null || need_apt+=(prometheus)
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
