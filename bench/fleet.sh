#!/usr/bin/env bash
# Fleet figures (issue 12): N simulated devices (edge-sim, one process, one MQTT session over
# mutual TLS per device) against one Mosquitto, one edge-fleet on PostgreSQL and one Prometheus:
#   phase 1: every device at 1 Hz for D seconds, then expected vs found samples in Prometheus,
#            edge-fleet's and Mosquitto's CPU and RSS;
#   phase 2: a 5 MB model deployed with `edgectl deploy --group` through edge-fleet to all N,
#            L of them offline until 60 s after the deploy; time until all converged.
# Exits 1 when a sample is missing or a device did not converge. bench/RESULTS.md records a run.
#
#   bash bench/fleet.sh                 # 1000 devices, 300 s, 200 late (about 10 minutes)
#   bash bench/fleet.sh --short         # 50 devices, 20 s, 10 late after 10 s (about a minute;
#                                       # CI runs it on debug builds: fleet/tests/fleet_bench_short.rs)
#   bash bench/fleet.sh --devices 500 --duration 60 --late 100   # any edge-sim bench flag
#
# Mosquitto runs with deploy/mosquitto/mosquitto.conf plus the tuning in sim/src/bench.rs
# (BROKER_TUNING: larger queues and in-flight window), as an operator would set for this fleet.
set -euo pipefail
cd "$(dirname "$0")/.."
args=()
for a in "$@"; do
    if [ "$a" = "--short" ]; then
        args+=(--devices 50 --duration 20 --late 10 --late-after 10 --deploy-timeout 120)
    else
        args+=("$a")
    fi
done
bash scripts/setup.sh >/dev/null
cargo build --release -q -p edge-fleet -p edgectl -p edge-sim
# One socket per device in the simulator and in the broker, besides their files.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "- Machine: \`nproc\` = $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/ {print $2}') GiB"
echo "- Versions: git $(git rev-parse --short HEAD), $(mosquitto -h 2>/dev/null | head -1 || true), $(/usr/bin/prometheus --version 2>&1 | head -1)"
echo "- Command: \`bash bench/fleet.sh $*\`"
echo
exec target/release/edge-sim bench --fleet-bin target/release/edge-fleet --edgectl-bin target/release/edgectl "${args[@]}"
