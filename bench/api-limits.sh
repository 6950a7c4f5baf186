#!/usr/bin/env bash
# The local API's limits under load (issue 14 item 3): a release `edge-agent run` with the
# shipped [http] defaults (plus a token and a metrics listener), 64 concurrent maximum-size
# JSON requests and 1,000 idle sockets at once; prints the agent's peak RSS next to the
# bound and whether the MQTT link stayed up (bench/src/api_limits.rs says how).
#
# Usage: bench/api-limits.sh [--requests N] [--idle N]
# Needs: cargo, mosquitto (scripts/setup.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
cargo build --release -p edge-agent --bin edge-agent -p edge-bench --bin api-limits-bench
# 1,000 idle sockets on the client side, and as many accepted (then refused) by the agent.
ulimit -n 4096
exec "$target/release/api-limits-bench" --agent "$target/release/edge-agent" --models models "$@"
