#!/usr/bin/env bash
# OTA figures (issue 4): throughput to one agent over TLS on loopback beside raw MQTT, the
# agent's RSS during a transfer, and a group deploy to 100 devices beside a raw fan-out.
# Prints a Markdown report; bench/RESULTS.md records a run. Arguments go to ota-bench
# (`--help`), e.g. `bash bench/ota.sh --devices 20 --size-mb 10`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
cargo build --release -q -p edge-agent -p edge-bench
echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "- Machine: \`nproc\` = $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/ {print $2}') GiB"
echo "- Versions: edge-agent $(target/release/edge-agent --version | cut -d' ' -f2) (git $(git rev-parse --short HEAD)), $(mosquitto -h 2>/dev/null | head -1 || true)"
echo "- Command: \`bash bench/ota.sh $*\`"
echo
target/release/ota-bench --agent target/release/edge-agent "$@"
