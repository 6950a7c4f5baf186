#!/usr/bin/env bash
# Footprint of the agent daemon next to Mosquitto's own, in the same run.
#
# Runs `edge-agent run` with telemetry at 1 Hz and no models against a local Mosquitto
# (mutual TLS, the fleet configuration and ACL from deploy/mosquitto, a throwaway openssl
# PKI), lets it warm up for 5 s, then measures both processes over BENCH_SECONDS (default 60):
# RSS (VmRSS from /proc/PID/status, sampled every second: mean and max) and CPU as a percent
# of one core (delta utime+stime from /proc/PID/stat / (CLK_TCK * elapsed) * 100). It checks
# that telemetry flowed (edge_agent_mqtt_sent_messages_total over the window), prints a table
# against the targets (agent RSS <= 8 MiB, CPU <= 0.3 % of one core) and appends it as a dated
# section to bench/RESULTS.md.
#
# Usage: bench/footprint.sh
#   BENCH_SECONDS=N   measurement window in seconds (default 60)
#   BENCH_AGENT=FILE  measure this edge-agent binary instead of building the working tree
#   BENCH_NO_RECORD=1 print the table only, do not append to bench/RESULTS.md
# Needs: cargo, openssl, curl, mosquitto (scripts/setup.sh installs it).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DURATION="${BENCH_SECONDS:-60}"
WARMUP=5
TARGET_RSS_KIB=8192          # 8 MiB (VmRSS is reported in KiB)
TARGET_CPU_PCT=0.3           # percent of one core
if [[ -n "${BENCH_SECONDS:-}" ]]; then
    COMMAND="BENCH_SECONDS=$BENCH_SECONDS bench/footprint.sh"
else
    COMMAND="bench/footprint.sh"
fi
[[ "$DURATION" =~ ^[1-9][0-9]*$ ]] || { echo "footprint: BENCH_SECONDS must be a positive integer" >&2; exit 2; }

need() { command -v "$1" >/dev/null 2>&1 || { echo "footprint: $1 not found${2:+ ($2)}" >&2; exit 2; }; }
need cargo
need openssl
need curl
need python3
MOSQUITTO="$(command -v mosquitto || true)"
[[ -n "$MOSQUITTO" ]] || MOSQUITTO=/usr/sbin/mosquitto
[[ -x "$MOSQUITTO" ]] || { echo "footprint: mosquitto not found: run scripts/setup.sh (Debian package mosquitto)" >&2; exit 2; }

if [[ -n "${BENCH_AGENT:-}" ]]; then
    # A prebuilt binary (e.g. one built from a clean checkout while the tree has work in progress).
    AGENT="$(realpath "$BENCH_AGENT")"
    [[ -x "$AGENT" ]] || { echo "footprint: BENCH_AGENT=$BENCH_AGENT is not executable" >&2; exit 2; }
    COMMAND="BENCH_AGENT=$BENCH_AGENT $COMMAND"
else
    # Only one cargo build at a time on this machine: cargo waits on its own lock if another runs.
    cargo build --release -p edge-agent
    AGENT="${CARGO_TARGET_DIR:-$ROOT/target}/release/edge-agent"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/edge-footprint.XXXXXX")"
chmod 700 "$WORK"
AGENT_PID=""
BROKER_PID=""
# shellcheck source=../scripts/local-fleet.sh
source "$ROOT/scripts/local-fleet.sh"

cleanup() {
    local rc=$?
    lf_stop "$AGENT_PID" "$BROKER_PID"
    if [[ $rc -ne 0 ]]; then
        echo "footprint: failed (exit $rc); logs:" >&2
        for f in "$WORK/mosquitto.log" "$WORK/mosquitto.stderr" "$WORK/agent.log"; do
            [[ -s "$f" ]] && { echo "--- $f (last 20 lines)" >&2; tail -n 20 "$f" >&2; }
        done
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- Throwaway PKI (device bench-1) and Mosquitto running the fleet configuration
# (deploy/mosquitto) with only its machine-specific lines rewritten.
PKI="$WORK/pki"
lf_pki "$PKI" bench-1
BROKER_PORT="$(lf_free_port)"
lf_broker "$WORK" "$PKI" "$BROKER_PORT"
BROKER_PID="$LF_BROKER_PID"

# --- Agent: telemetry every second, no models.
HTTP_PORT="$(lf_free_port)"
cat >"$WORK/agent.toml" <<EOF
device_id = "bench-1"
state_dir = "$WORK/state"

[mqtt]
url = "mqtts://127.0.0.1:$BROKER_PORT"
ca_file = "$PKI/ca.pem"
cert_file = "$PKI/bench-1.pem"
key_file = "$PKI/bench-1.key"

[telemetry]
interval_secs = 1

[http]
listen = "127.0.0.1:$HTTP_PORT"
EOF
"$AGENT" check-config --config "$WORK/agent.toml" >/dev/null
"$AGENT" run --config "$WORK/agent.toml" >"$WORK/agent.log" 2>&1 &
AGENT_PID=$!
METRICS="http://127.0.0.1:$HTTP_PORT/metrics"

metric() { # name -> value (first unlabelled sample), or empty
    curl -fsS --max-time 2 "$METRICS" 2>/dev/null | awk -v n="$1" '$1 == n { print $2; exit }'
}
for i in $(seq 150); do
    kill -0 "$AGENT_PID" 2>/dev/null || { echo "footprint: edge-agent exited early" >&2; exit 1; }
    [[ "$(metric edge_agent_mqtt_connected)" == 1 ]] && break
    [[ $i == 150 ]] && { echo "footprint: edge-agent not connected to the broker after 15 s" >&2; exit 1; }
    sleep 0.1
done
sleep "$WARMUP"

# --- Measurement window.
CLK_TCK="$(getconf CLK_TCK)"
cpu_ticks() { # pid -> utime+stime; fields after the ")" that ends comm: state is 3, utime 14, stime 15
    local stat rest
    stat="$(<"/proc/$1/stat")"
    rest="${stat##*) }"
    read -r -a f <<<"$rest"
    echo $(( f[11] + f[12] ))
}
rss_kib() { awk '$1 == "VmRSS:" { print $2 }' "/proc/$1/status"; }

declare -A RSS_SUM RSS_MAX
sample_rss() {
    local who pid v
    for who in agent broker; do
        [[ $who == agent ]] && pid=$AGENT_PID || pid=$BROKER_PID
        v="$(rss_kib "$pid")"
        RSS_SUM[$who]=$(( ${RSS_SUM[$who]:-0} + v ))
        (( v > ${RSS_MAX[$who]:-0} )) && RSS_MAX[$who]=$v
    done
    SAMPLES=$(( ${SAMPLES:-0} + 1 ))
}

SENT0="$(metric edge_agent_mqtt_sent_messages_total)"
T0="$EPOCHREALTIME"
A0="$(cpu_ticks "$AGENT_PID")"
B0="$(cpu_ticks "$BROKER_PID")"
sample_rss
for i in $(seq "$DURATION"); do
    # Sleep to the next whole second of the window so the loop's own time does not drift it.
    sleep "$(python3 -c "print(max(0.0, $T0 + $i - $EPOCHREALTIME))" 2>/dev/null || echo 1)"
    kill -0 "$AGENT_PID" 2>/dev/null || { echo "footprint: edge-agent died during the run" >&2; exit 1; }
    kill -0 "$BROKER_PID" 2>/dev/null || { echo "footprint: mosquitto died during the run" >&2; exit 1; }
    sample_rss
done
A1="$(cpu_ticks "$AGENT_PID")"
B1="$(cpu_ticks "$BROKER_PID")"
T1="$EPOCHREALTIME"
SENT1="$(metric edge_agent_mqtt_sent_messages_total)"
CONNECTED="$(metric edge_agent_mqtt_connected)"
# Where the RSS is, at the end of the window: anonymous (heap, stacks) vs file-backed (code).
# File-backed pages are mostly the executable's code, shared and reclaimable.
breakdown() {
    local pss
    pss="$(awk '$1 == "Pss:" { printf "%.2f", $2 / 1024 }' "/proc/$1/smaps_rollup" 2>/dev/null || true)"
    awk -v pss="${pss:-?}" '$1 == "RssAnon:" { a = $2 } $1 == "RssFile:" { f = $2 } $1 == "Threads:" { t = $2 }
         END { printf "RssAnon %.2f MiB + RssFile %.2f MiB, PSS %s MiB, %d thread(s)", a / 1024, f / 1024, pss, t }' "/proc/$1/status"
}
AGENT_BREAKDOWN="$(breakdown "$AGENT_PID")"
BROKER_BREAKDOWN="$(breakdown "$BROKER_PID")"
RECONNECTS="$(metric edge_agent_mqtt_reconnects_total)"

# --- Report.
read -r ELAPSED AGENT_CPU BROKER_CPU AGENT_RSS_MEAN BROKER_RSS_MEAN < <(python3 - <<EOF
elapsed = $T1 - $T0
cpu = lambda d: d / ($CLK_TCK * elapsed) * 100
print(f"{elapsed:.1f} {cpu($A1 - $A0):.3f} {cpu($B1 - $B0):.3f} "
      f"{${RSS_SUM[agent]} / $SAMPLES / 1024:.2f} {${RSS_SUM[broker]} / $SAMPLES / 1024:.2f}")
EOF
)
AGENT_RSS_MAX="$(python3 -c "print(f'{${RSS_MAX[agent]} / 1024:.2f}')")"
BROKER_RSS_MAX="$(python3 -c "print(f'{${RSS_MAX[broker]} / 1024:.2f}')")"
SENT=$(( ${SENT1%.*} - ${SENT0%.*} ))

verdict() { python3 -c "print('PASS' if $1 <= $2 else 'FAIL')"; }
RSS_VERDICT="$(verdict "${RSS_MAX[agent]}" "$TARGET_RSS_KIB")"
CPU_VERDICT="$(verdict "$AGENT_CPU" "$TARGET_CPU_PCT")"
# Telemetry at 1 Hz: about one message per second of the window (a second either way for
# where the window edges fall, and 5 % for timer slack).
SLACK=$(( DURATION / 20 > 2 ? DURATION / 20 : 2 ))
if (( SENT >= DURATION - SLACK && SENT <= DURATION + SLACK )); then FLOW_VERDICT=PASS; else FLOW_VERDICT=FAIL; fi

TABLE="| measure | edge-agent | mosquitto | target (edge-agent) | result |
|---|---:|---:|---|---|
| RSS mean, MiB | $AGENT_RSS_MEAN | $BROKER_RSS_MEAN | | |
| RSS max, MiB | $AGENT_RSS_MAX | $BROKER_RSS_MAX | ≤ 8 MiB | $RSS_VERDICT |
| CPU, % of one core | $AGENT_CPU | $BROKER_CPU | ≤ $TARGET_CPU_PCT % | $CPU_VERDICT |
| telemetry messages acked in window | $SENT | | ≈ $DURATION (1 Hz) | $FLOW_VERDICT |"

echo
echo "Footprint over ${ELAPSED} s (after ${WARMUP} s warm-up), $SAMPLES RSS samples, CLK_TCK=$CLK_TCK:"
echo "$TABLE"
NOTES="At the end of the window: edge-agent $AGENT_BREAKDOWN; mosquitto $BROKER_BREAKDOWN. Agent connected to the broker: ${CONNECTED:-?}, reconnects: ${RECONNECTS:-?}."
echo "$NOTES"

GIT_REV="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
BUILT="git $GIT_REV"
# The binary is built from the working tree: say so if it differs from the commit.
if [[ -n "${BENCH_AGENT:-}" ]]; then
    BUILT="prebuilt binary \`$BENCH_AGENT\`, not built by this run; tree at git $GIT_REV"
elif [[ -n "$(git status --porcelain -- agent proto Cargo.toml Cargo.lock 2>/dev/null)" ]]; then
    BUILT="git $GIT_REV + uncommitted changes under agent/ or proto/"
fi
if [[ "${BENCH_NO_RECORD:-}" == 1 ]]; then
    echo "BENCH_NO_RECORD=1: not recording in bench/RESULTS.md"
else
    LOAD="$(cut -d' ' -f1-3 /proc/loadavg)"
    CPU_MODEL="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    {
        echo
        echo "## Footprint: agent vs Mosquitto"
        echo
        echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
        echo "- Command: \`$COMMAND\`"
        echo "- Machine: \`nproc\` = $(nproc), CPU: ${CPU_MODEL:-unknown}, kernel $(uname -r); load average at the end: $LOAD"
        echo "- Versions: $("$AGENT" --version) ($BUILT), $("$MOSQUITTO" -h 2>/dev/null | awk 'NR == 1 { print "mosquitto", $3 }'), $(openssl version | awk '{ print $1, $2 }') for the PKI"
        echo "- Setup: \`edge-agent run\` with \`[telemetry] interval_secs = 1\` and no models, publishing over mutual TLS (ECDSA P-256) to a local Mosquitto running the fleet configuration (\`deploy/mosquitto/mosquitto.conf\`: TLS listener on loopback, \`require_certificate true\`, \`use_identity_as_username true\`, \`deploy/mosquitto/acl\`, persistence on) with only ports, certificate paths and persistence/log locations rewritten; both processes started fresh, ${WARMUP} s warm-up after the agent connected."
        echo "- Method: over a ${ELAPSED} s window, VmRSS from \`/proc/PID/status\` every second ($SAMPLES samples: mean and max); CPU = delta(utime+stime) / (CLK_TCK × elapsed) × 100 from \`/proc/PID/stat\` (CLK_TCK = $CLK_TCK, so one tick over the window is $(python3 -c "print(f'{100 / ($CLK_TCK * $ELAPSED):.3f}')") % of one core). Telemetry flow: \`edge_agent_mqtt_sent_messages_total\` from /metrics at both ends of the window. MiB = 1024 KiB; the 8 MB target is read as 8 MiB of max RSS."
        echo
        echo "$TABLE"
        echo
        echo "$NOTES"
    } >>bench/RESULTS.md
    echo "Recorded in bench/RESULTS.md"
fi
