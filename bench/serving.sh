#!/usr/bin/env bash
# Local inference API: HTTP vs in-process tract, in the same run, for a small model.
#
# Starts `edge-agent run` with one [[models]] entry (hello_deepa, workers = 2, queue = 256)
# and its MQTT side pointed at an unused loopback port (mqtts://127.0.0.1:1, throwaway openssl
# PKI so the TLS configuration loads): the broker is never reachable and the agent keeps
# retrying it, which also checks that the API answers while the broker is down. Then:
#   - in-process baseline: `edge-agent infer --threads 1 --repeat N` (median, p95), run before
#     the HTTP levels (the figure used) and again after them (a drift check);
#   - HTTP: wrk (bench/serving.lua) POSTing the reference .npy input with Content-Type
#     application/x-npy to /v1/models/hello_deepa:predict, BENCH_SECONDS per level at
#     concurrency 1, 8 and 64 (wrk threads = min(concurrency, 2)), after a 2 s warm-up:
#     requests/s, p50, p99, non-2xx responses and socket errors. A level with non-2xx
#     responses gets a short extra pass counting them by status (503 = queue full);
#   - diagnostics at concurrency 1 (not part of the verdict): GET /healthz (the HTTP floor
#     with no model hand-off), and predict and /healthz again while a nice-19 busy loop keeps
#     one core out of idle (how much of the latency is waking idle vCPUs);
#   - overhead at concurrency 1 = p50(HTTP) - median(in-process), against the target
#     50 us + 2 % of the in-process median: PASS/FAIL.
# Prints a table and appends it as a dated section to bench/RESULTS.md.
#
# Usage: bench/serving.sh
#   BENCH_SECONDS=N    seconds per concurrency level (default 10)
#   BENCH_REPEAT=N     in-process timed runs (default 2000)
#   BENCH_AGENT=FILE   use this edge-agent binary instead of building the working tree
#   BENCH_NO_RECORD=1  print the table only, do not append to bench/RESULTS.md
# Needs: cargo, openssl, curl, python3; wrk (installed from Debian if missing, as root or
# with sudo).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

MODEL_NAME=hello_deepa
MODEL="$ROOT/models/openwakeword-js__hello_deepa.onnx"
INPUT="$ROOT/models/openwakeword-js__hello_deepa.input.npy"
REFERENCE="$ROOT/models/openwakeword-js__hello_deepa.output.npy"
WORKERS=2
QUEUE=256
LEVELS=(1 8 64)
WARMUP_SECONDS=2
DURATION="${BENCH_SECONDS:-10}"
REPEAT="${BENCH_REPEAT:-2000}"
TARGET_FIXED_US=50
TARGET_PCT=2

COMMAND="bench/serving.sh"
for v in BENCH_SECONDS BENCH_REPEAT BENCH_AGENT; do
    [[ -n "${!v:-}" ]] && COMMAND="$v=${!v} $COMMAND"
done
[[ "$DURATION" =~ ^[1-9][0-9]*$ ]] || { echo "serving: BENCH_SECONDS must be a positive integer" >&2; exit 2; }
[[ "$REPEAT" =~ ^[1-9][0-9]*$ ]] || { echo "serving: BENCH_REPEAT must be a positive integer" >&2; exit 2; }

need() { command -v "$1" >/dev/null 2>&1 || { echo "serving: $1 not found${2:+ ($2)}" >&2; exit 2; }; }
need openssl
need curl
need python3
for f in "$MODEL" "$INPUT" "$REFERENCE"; do
    [[ -f "$f" ]] || { echo "serving: $f missing" >&2; exit 2; }
done

# --- wrk from Debian.
if ! command -v wrk >/dev/null 2>&1; then
    echo "serving: installing wrk (Debian package wrk)" >&2
    if [[ "$(id -u)" == 0 ]]; then
        SUDO=()
    elif command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        echo "serving: wrk not found and neither root nor sudo to install it" >&2
        exit 2
    fi
    "${SUDO[@]}" apt-get install -y wrk >/dev/null 2>&1 \
        || { "${SUDO[@]}" apt-get update >/dev/null && "${SUDO[@]}" apt-get install -y wrk >/dev/null; }
fi
need wrk
WRK_VERSION="$(wrk -v 2>&1 | head -n 1 | sed 's/ Copyright.*//' || true)"

# --- The agent binary.
if [[ -n "${BENCH_AGENT:-}" ]]; then
    AGENT="$(realpath "$BENCH_AGENT")"
    [[ -x "$AGENT" ]] || { echo "serving: BENCH_AGENT=$BENCH_AGENT is not executable" >&2; exit 2; }
    BUILT="prebuilt binary \`$AGENT\`, not built by this run"
else
    need cargo
    # Only one cargo build at a time on this machine: cargo waits on its own lock if another runs.
    cargo build --release -p edge-agent
    AGENT="${CARGO_TARGET_DIR:-$ROOT/target}/release/edge-agent"
    BUILT="\`cargo build --release -p edge-agent\` of the working tree"
fi
AGENT_VERSION="$("$AGENT" --version)"
GIT_REV="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -z "${BENCH_AGENT:-}" ]] && ! git diff --quiet HEAD -- agent Cargo.toml Cargo.lock 2>/dev/null; then
    GIT_REV="$GIT_REV + uncommitted changes in agent/ or Cargo.*"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/edge-serving.XXXXXX")"
chmod 700 "$WORK"
AGENT_PID=""
SPIN_PID=""
# shellcheck source=../scripts/local-fleet.sh
source "$ROOT/scripts/local-fleet.sh"

cleanup() {
    local rc=$?
    [[ -n "$SPIN_PID" ]] && { kill -KILL "$SPIN_PID" 2>/dev/null || true; wait "$SPIN_PID" 2>/dev/null || true; }
    lf_stop "$AGENT_PID"
    if [[ $rc -ne 0 && -s "$WORK/agent.log" ]]; then
        echo "serving: failed (exit $rc); agent log (last 20 lines):" >&2
        tail -n 20 "$WORK/agent.log" >&2
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- Throwaway PKI (ECDSA P-256, PKCS#8): only so that the [mqtt] TLS configuration loads.
PKI="$WORK/pki"
lf_pki "$PKI" bench-1

# --- Agent: broker unreachable (port 1 on loopback), one model.
HTTP_PORT="$(lf_free_port)"
BASE="http://127.0.0.1:$HTTP_PORT"
cat >"$WORK/agent.toml" <<TOML
device_id = "bench-1"
state_dir = "$WORK/state"

[mqtt]
url = "mqtts://127.0.0.1:1"
ca_file = "$PKI/ca.pem"
cert_file = "$PKI/bench-1.pem"
key_file = "$PKI/bench-1.key"

[http]
listen = "127.0.0.1:$HTTP_PORT"

[[models]]
name = "$MODEL_NAME"
path = "$MODEL"
workers = $WORKERS
queue = $QUEUE
TOML
"$AGENT" check-config --config "$WORK/agent.toml" >/dev/null
"$AGENT" run --config "$WORK/agent.toml" >"$WORK/agent.log" 2>&1 &
AGENT_PID=$!

for i in $(seq 300); do
    kill -0 "$AGENT_PID" 2>/dev/null || { echo "serving: edge-agent exited early" >&2; exit 1; }
    if curl -fsS --max-time 2 "$BASE/v1/models" 2>/dev/null \
        | python3 -c 'import json, sys; sys.exit(0 if any(m.get("name") == sys.argv[1] for m in json.load(sys.stdin).get("models", [])) else 1)' "$MODEL_NAME" 2>/dev/null; then
        break
    fi
    [[ $i == 300 ]] && { echo "serving: $MODEL_NAME not listed by GET /v1/models after 30 s" >&2; exit 1; }
    sleep 0.1
done

# --- The API answers while the broker is down, and answers right.
CONNECTED="$(curl -fsS --max-time 2 "$BASE/metrics" | awk '$1 == "edge_agent_mqtt_connected" { print $2; exit }')"
[[ "$CONNECTED" == 0 ]] || { echo "serving: expected edge_agent_mqtt_connected 0, got '$CONNECTED'" >&2; exit 1; }
URL="$BASE/v1/models/$MODEL_NAME:predict"
STATUS="$(curl -sS --max-time 5 -o "$WORK/predict.out" -w '%{http_code}' \
    -H 'Content-Type: application/x-npy' --data-binary "@$INPUT" "$URL")"
[[ "$STATUS" == 200 ]] || { echo "serving: predict answered $STATUS: $(head -c 300 "$WORK/predict.out")" >&2; exit 1; }
CHECK="$(python3 - "$WORK/predict.out" "$REFERENCE" <<'PY'
import sys
got = open(sys.argv[1], "rb").read()
if not got.startswith(b"\x93NUMPY"):
    sys.exit("response is not a .npy image")
try:
    import io
    import numpy as np
except ImportError:
    print("response is a .npy image (numpy not available: values not compared)")
    sys.exit(0)
out = np.load(io.BytesIO(got))
ref = np.load(sys.argv[2])
if out.shape != ref.shape or not np.allclose(out, ref, rtol=1e-4, atol=1e-5):
    sys.exit(f"response {out.shape} {out.ravel()[:4]} differs from the reference {ref.shape} {ref.ravel()[:4]}")
print(f"response matches the reference output (shape {list(out.shape)}, max abs diff {float(np.max(np.abs(out - ref))):.1e})")
PY
)"
echo "serving: broker down (edge_agent_mqtt_connected 0), predict 200: $CHECK" >&2

# --- In-process baseline.
inprocess() { # -> "median_ms p95_ms"
    "$AGENT" infer --model "$MODEL" --input "$INPUT" --threads 1 --repeat "$REPEAT" \
        | sed -n 's/.*median_ms=\([0-9.]*\).*p95_ms=\([0-9.]*\).*/\1 \2/p'
}
read -r IN_MEDIAN_MS IN_P95_MS < <(inprocess)
[[ -n "${IN_P95_MS:-}" ]] || { echo "serving: could not parse edge-agent infer --repeat output" >&2; exit 1; }
echo "serving: in-process median ${IN_MEDIAN_MS} ms, p95 ${IN_P95_MS} ms" >&2

# --- HTTP levels.
export BENCH_NPY="$INPUT"
LUA="$ROOT/bench/serving.lua"
run_wrk() { # concurrency seconds [url] -> wrk stdout
    local c=$1 s=$2 t=$(( $1 < 2 ? $1 : 2 ))
    wrk -t "$t" -c "$c" -d "${s}s" --latency -s "$LUA" "${3:-$URL}"
}
field() { sed -n "s/^BENCH .*\b$1=\([0-9.]*\).*/\1/p" <<<"$2"; }

run_wrk 8 "$WARMUP_SECONDS" >/dev/null
declare -A RPS P50 P99 REQS NON2XX SOCK CODES
for c in "${LEVELS[@]}"; do
    out="$(run_wrk "$c" "$DURATION")"
    line="$(grep '^BENCH ' <<<"$out" || true)"
    [[ -n "$line" ]] || { echo "serving: no summary from wrk at concurrency $c:" >&2; echo "$out" >&2; exit 1; }
    REQS[$c]="$(field requests "$line")"
    dur_us="$(field duration_us "$line")"
    RPS[$c]="$(awk -v n="${REQS[$c]}" -v d="$dur_us" 'BEGIN { printf "%.0f", n / (d / 1e6) }')"
    P50[$c]="$(field p50_us "$line")"
    P99[$c]="$(field p99_us "$line")"
    NON2XX[$c]="$(field non2xx "$line")"
    SOCK[$c]=$(( $(field connect "$line") + $(field read "$line") + $(field write "$line") + $(field timeout "$line") ))
    CODES[$c]=""
    if (( NON2XX[$c] > 0 )); then
        CODES[$c]="$(BENCH_CODES=1 run_wrk "$c" 3 | sed -n 's/^BENCH_CODES //p')"
    fi
    echo "serving: c=$c ${RPS[$c]} req/s p50 ${P50[$c]} us p99 ${P99[$c]} us non-2xx ${NON2XX[$c]} socket errors ${SOCK[$c]}${CODES[$c]:+ (3 s recount by status: ${CODES[$c]})}" >&2
done

# Diagnostics at concurrency 1.
declare -A DIAG
diag() { # key url [get] -> "requests rps p50 p99 non2xx"
    local out line n d
    if [[ "${3:-}" == get ]]; then out="$(BENCH_GET=1 run_wrk 1 "$DURATION" "$2")"; else out="$(run_wrk 1 "$DURATION" "$2")"; fi
    line="$(grep '^BENCH ' <<<"$out" || true)"
    [[ -n "$line" ]] || { echo "serving: no summary from wrk ($1):" >&2; echo "$out" >&2; exit 1; }
    n="$(field requests "$line")"; d="$(field duration_us "$line")"
    DIAG[$1]="$n $(awk -v n="$n" -v d="$d" 'BEGIN { printf "%.0f", n / (d / 1e6) }') $(field p50_us "$line") $(field p99_us "$line") $(field non2xx "$line")"
    echo "serving: diagnostic $1: requests/s p50 p99 non-2xx = ${DIAG[$1]#* }" >&2
}
diag healthz "$BASE/healthz" get
nice -n 19 bash -c 'while :; do :; done' &
SPIN_PID=$!
diag predict_spin "$URL"
diag healthz_spin "$BASE/healthz" get
kill -KILL "$SPIN_PID"; wait "$SPIN_PID" 2>/dev/null || true; SPIN_PID=""

read -r IN2_MEDIAN_MS IN2_P95_MS < <(inprocess)
echo "serving: in-process again after the HTTP levels: median ${IN2_MEDIAN_MS} ms, p95 ${IN2_P95_MS} ms" >&2
LOADAVG="$(cut -d' ' -f1-3 /proc/loadavg)"

# --- Overhead at concurrency 1.
read -r IN_MEDIAN_US IN_P95_US IN2_MEDIAN_US OVERHEAD_US TARGET_US VERDICT < <(awk \
    -v m="$IN_MEDIAN_MS" -v p="$IN_P95_MS" -v m2="$IN2_MEDIAN_MS" -v h="${P50[1]}" \
    -v fixed="$TARGET_FIXED_US" -v pct="$TARGET_PCT" 'BEGIN {
        mu = m * 1000; over = h - mu; target = fixed + pct / 100 * mu
        printf "%.1f %.1f %.1f %.1f %.1f %s\n", mu, p * 1000, m2 * 1000, over, target, (over <= target ? "PASS" : "FAIL")
    }')

# --- Report.
NPROC="$(nproc)"
CPU="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
KERNEL="$(uname -r)"
VIRT=""
grep -qw hypervisor /proc/cpuinfo && VIRT=", virtual machine"
IDLE="$(cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null || echo unknown)"
HALTPOLL="$(grep -o 'haltpoll.guest_halt_poll_ns=[0-9]*' /proc/cmdline || true)"
DATE="$(date -u '+%Y-%m-%d %H:%M UTC')"
TABLE="$(
    echo "| mode | concurrency | wrk threads | requests | requests/s | p50 µs | p99 µs | non-2xx | socket errors |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---|"
    echo "| in-process (\`edge-agent infer --threads 1 --repeat $REPEAT\`) | 1 | - | $REPEAT | - | $IN_MEDIAN_US (median) | $IN_P95_US (p95) | - | - |"
    for c in "${LEVELS[@]}"; do
        t=$(( c < 2 ? c : 2 ))
        n="${NON2XX[$c]}"
        [[ -n "${CODES[$c]}" ]] && n="$n (status:count in a 3 s recount: ${CODES[$c]})"
        echo "| HTTP \`application/x-npy\` (wrk) | $c | $t | ${REQS[$c]} | ${RPS[$c]} | ${P50[$c]} | ${P99[$c]} | $n | ${SOCK[$c]} |"
    done
    for k in healthz predict_spin healthz_spin; do
        read -r n r p50 p99 bad <<<"${DIAG[$k]}"
        case $k in
            healthz) what="diagnostic: HTTP \`GET /healthz\` (wrk)" ;;
            predict_spin) what="diagnostic: HTTP \`application/x-npy\` (wrk), nice-19 busy loop running" ;;
            healthz_spin) what="diagnostic: HTTP \`GET /healthz\` (wrk), nice-19 busy loop running" ;;
        esac
        echo "| $what | 1 | 1 | $n | $r | $p50 | $p99 | $bad | - |"
    done
    echo
    echo "**Overhead at concurrency 1:** p50(HTTP) − median(in-process) = ${P50[1]} − $IN_MEDIAN_US = **$OVERHEAD_US µs**; target 50 µs + 2 % of $IN_MEDIAN_US µs = $TARGET_US µs: **$VERDICT**."
)"
echo
echo "$TABLE"

if [[ -z "${BENCH_NO_RECORD:-}" ]]; then
    {
        echo
        echo "## Local API: HTTP vs in-process (hello_deepa)"
        echo
        echo "- Date: $DATE"
        echo "- Command: \`$COMMAND\`"
        echo "- Machine: \`nproc\` = $NPROC, CPU: $CPU, kernel $KERNEL$VIRT, cpuidle driver $IDLE${HALTPOLL:+ (\`$HALTPOLL\`)}; load average at the end: $LOADAVG"
        echo "- Versions: $AGENT_VERSION ($BUILT, git $GIT_REV), $WRK_VERSION"
        echo "- Setup: \`edge-agent run\` with one \`[[models]]\` entry (\`$MODEL_NAME\` = \`models/$(basename "$MODEL")\`, workers = $WORKERS, queue = $QUEUE), \`[http] listen\` on a loopback port, and \`[mqtt] url = \"mqtts://127.0.0.1:1\"\` (nothing listens there; throwaway openssl ECDSA P-256 PKI so the TLS configuration loads): the agent retried the broker throughout, and before the load \`edge_agent_mqtt_connected\` was 0 while \`POST /v1/models/$MODEL_NAME:predict\` answered 200 ($CHECK)."
        echo "- Method: in-process = \`edge-agent infer --model … --input models/$(basename "$INPUT") --threads 1 --repeat $REPEAT\` (one warm-up run, then $REPEAT timed \`session.run\` calls on one thread; median and p95), run with the agent idle before the HTTP levels; a second run after them gave median $IN2_MEDIAN_US µs (p95 ${IN2_P95_MS} ms). HTTP = \`wrk -t min(c,2) -c c -d ${DURATION}s --latency -s bench/serving.lua\` POSTing the same .npy input (\`Content-Type: application/x-npy\`, $(stat -c %s "$INPUT") bytes) to \`/v1/models/$MODEL_NAME:predict\` over keep-alive connections, after a ${WARMUP_SECONDS} s warm-up at c = 8; p50/p99 from wrk's latency histogram (1 µs resolution), requests/s = completed requests / elapsed; non-2xx = wrk's status errors (status ≥ 400; a level with any gets a 3 s recount by status, 503 meaning a full queue)."
        echo "- Diagnostics (concurrency 1, ${DURATION} s each, not part of the verdict): \`GET /healthz\` is the agent's HTTP path with no model hand-off; the same and the predict again while \`nice -n 19 bash -c 'while :; do :; done'\` keeps one core busy show how much of the latency is waking idle vCPUs (each request crosses threads: wrk → the agent's runtime → a model worker → the runtime → wrk)."
        echo "- What wrk measures: closed-loop latency per connection, from writing a request to reading the whole response, so it includes the kernel loopback path and wrk's own request writing and response parsing, on the same $NPROC cores as the agent (wrk's threads compete with the agent's HTTP runtime and its $WORKERS model workers). The overhead figure is therefore an upper bound on the agent's own HTTP cost; the in-process figure times only \`session.run\`, not the agent's worker queue hand-off, which the HTTP figure includes."
        echo
        echo "$TABLE"
    } >>"$ROOT/bench/RESULTS.md"
    echo "serving: appended to bench/RESULTS.md" >&2
fi
