#!/usr/bin/env bash
# The agent end to end on one machine: a local Mosquitto with mutual TLS and a throwaway
# PKI, `edge-agent run` serving two shipped models and reporting telemetry every second,
# a predict over the local HTTP API, `edgectl watch --json` decoding the telemetry, and
# `edgectl status` listing the device.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck source=scripts/local-fleet.sh
source scripts/local-fleet.sh
cargo build --release -q -p edge-agent -p edgectl
BIN=target/release

WORK="$(mktemp -d "${TMPDIR:-/tmp}/edge-demo.XXXXXX")"
AGENT_PID=""
LF_BROKER_PID=""
cleanup() {
    local rc=$?
    lf_stop "$AGENT_PID" "$LF_BROKER_PID"
    if [[ $rc -ne 0 ]]; then
        for f in "$WORK/agent.log" "$WORK/mosquitto.log"; do
            [[ -s "$f" ]] && { echo "--- $f (last 20 lines)" >&2; tail -n 20 "$f" >&2; }
        done
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT

echo "== a local broker with mutual TLS (deploy/mosquitto), certificates for dev-1 and operator"
lf_pki "$WORK/pki" dev-1 operator
BROKER_PORT="$(lf_free_port)"
lf_broker "$WORK" "$WORK/pki" "$BROKER_PORT"

HTTP="127.0.0.1:$(lf_free_port)"
sed -e "s|^state_dir = .*|state_dir = \"$WORK/state\"|" \
    -e "s|^url = .*|url = \"mqtts://127.0.0.1:$BROKER_PORT\"|" \
    -e "s|/etc/edge-agent/ca.pem|$WORK/pki/ca.pem|" \
    -e "s|/etc/edge-agent/device.pem|$WORK/pki/dev-1.pem|" \
    -e "s|/etc/edge-agent/device.key|$WORK/pki/dev-1.key|" \
    -e "s|^interval_secs = .*|interval_secs = 1|" \
    -e "s|^listen = .*|listen = \"$HTTP\"|" \
    -e "s|/usr/share/edge-agent/models|$PWD/models|" \
    deploy/edge-agent.example.toml >"$WORK/edge-agent.toml"
cat >>"$WORK/edge-agent.toml" <<TOML

[[models]]
name = "deepa"
path = "$PWD/models/openwakeword-js__hello_deepa.onnx"
TOML
cat >"$WORK/ctl.toml" <<TOML
[mqtt]
url = "mqtts://127.0.0.1:$BROKER_PORT"
ca_file = "$WORK/pki/ca.pem"
cert_file = "$WORK/pki/operator.pem"
key_file = "$WORK/pki/operator.key"
TOML

echo
echo "== edge-agent check-config, then run (the example config with local paths)"
$BIN/edge-agent check-config --config "$WORK/edge-agent.toml"
$BIN/edge-agent run --config "$WORK/edge-agent.toml" >"$WORK/agent.log" 2>&1 &
AGENT_PID=$!
lf_wait_port "${HTTP##*:}" "$AGENT_PID" edge-agent

echo
echo "== curl: models served, and a predict with a .npy body"
curl -fsS "http://$HTTP/v1/models" | python3 -c 'import json,sys; [print(" ", m["name"], "version", m["version"], [i["shape"] for i in m["inputs"]]) for m in json.load(sys.stdin)["models"]]'
curl -fsS -X POST -H 'Content-Type: application/x-npy' \
    --data-binary @models/openwakeword-js__hello_deepa.input.npy \
    "http://$HTTP/v1/models/deepa:predict" -o "$WORK/out.npy"
echo "  deepa:predict -> $(stat -c %s "$WORK/out.npy") bytes of .npy"

echo
echo "== edgectl watch --json: three telemetry messages"
$BIN/edgectl --config "$WORK/ctl.toml" watch --device dev-1 --count 3 --json

echo
echo "== edgectl status"
$BIN/edgectl --config "$WORK/ctl.toml" status

echo
echo "== /metrics (excerpt)"
curl -fsS "http://$HTTP/metrics" | grep -E '^edge_agent_(mqtt_connected|models_loaded|inference_requests_total|telemetry_samples_total)'
