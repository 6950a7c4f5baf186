#!/usr/bin/env bash
# The sandbox: the whole loop on one machine, in one command. A local Mosquitto with mutual
# TLS and a throwaway PKI; `edge-agent run` serving shipped models and reporting telemetry
# every second; a predict over the local HTTP API; `edgectl watch --json` decoding the
# telemetry; then fleet commands signed with a throwaway operator key: a model deployed
# over MQTT (transfer, validation, install, health window) with its ack lifecycle, a
# second version, get-status, a rollback, and an update signed with an untrusted key
# being refused; finally the fleet service (edge-fleet on SQLite): the inventory, and a
# deployment handed to it that it delivers to dev-1 with edgectl gone.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck source=scripts/local-fleet.sh
source scripts/local-fleet.sh
cargo build --release -q -p edge-agent -p edgectl -p edge-fleet
BIN="${CARGO_TARGET_DIR:-target}/release"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/edge-demo.XXXXXX")"
AGENT_PID=""
FLEET_PID=""
LF_BROKER_PID=""
cleanup() {
    local rc=$?
    lf_stop "$FLEET_PID" "$AGENT_PID" "$LF_BROKER_PID"
    if [[ $rc -ne 0 ]]; then
        for f in "$WORK/agent.log" "$WORK/fleet.log" "$WORK/mosquitto.log"; do
            [[ -s "$f" ]] && { echo "--- $f (last 20 lines)" >&2; tail -n 20 "$f" >&2; }
        done
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT

echo "== a local broker with mutual TLS (deploy/mosquitto), certificates for dev-1 and operator"
echo "   (edgectl pki init, then edgectl pki issue --device dev-1 and --operator)"
LF_EDGECTL="$BIN/edgectl" lf_pki "$WORK/pki" dev-1 operator
echo "== edgectl keygen: the operator key that signs commands (its .pub goes to [ota] trusted_keys)"
$BIN/edgectl keygen --out "$WORK/keys"
$BIN/edgectl keygen --out "$WORK/rogue" >/dev/null
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

[ota]
trusted_keys = ["$(cat "$WORK/keys/operator.pub")"]
health_window_secs = 3
TOML
cat >"$WORK/ctl.toml" <<TOML
signing_key = "keys/operator.key"
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

CTL=("$BIN/edgectl" --config "$WORK/ctl.toml")
HAND=models/mediapipe__hand_recrop
echo
echo "== edgectl deploy: hand_recrop as model \"hand\" version 1, signed, over MQTT, with its"
echo "   reference input/output as the validation vector the device checks before switching"
"${CTL[@]}" deploy --model "$HAND.tflite" --name hand --version 1 --device dev-1 \
    --validate-input "$HAND.input.npy" --validate-output "$HAND.output.npy" --tolerance 0.01 --wait
curl -fsS -X POST -H 'Content-Type: application/x-npy' --data-binary "@$HAND.input.npy" \
    "http://$HTTP/v1/models/hand:predict" -o "$WORK/hand.npy"
echo "  hand:predict over the local API -> $(stat -c %s "$WORK/hand.npy") bytes of .npy"

echo
echo "== edgectl deploy: version 2, then get-status"
"${CTL[@]}" deploy --model "$HAND.tflite" --name hand --version 2 --device dev-1 \
    --validate-input "$HAND.input.npy" --validate-output "$HAND.output.npy" --tolerance 0.01 --wait
"${CTL[@]}" cmd get-status --device dev-1

echo
echo "== edgectl rollback: back to version 1"
"${CTL[@]}" rollback --device dev-1 --name hand --wait
"${CTL[@]}" cmd get-status --device dev-1 --json

echo
echo "== an update signed with a key the device does not trust: refused, nothing changes"
if "${CTL[@]}" deploy --model "$HAND.tflite" --name hand --version 3 --device dev-1 \
    --signing-key "$WORK/rogue/operator.key" --wait; then
    echo "sandbox: the untrusted update was accepted" >&2
    exit 1
fi

echo
echo "== edge-fleet: the fleet service on SQLite, with its own certificate (CN edge-fleet)"
$BIN/edgectl pki issue --ca "$WORK/pki" --operator edge-fleet --out "$WORK/pki" >/dev/null
FLEET_HTTP="127.0.0.1:$(lf_free_port)"
cat >"$WORK/fleet.toml" <<TOML
[mqtt]
url = "mqtts://127.0.0.1:$BROKER_PORT"
ca_file = "$WORK/pki/ca.pem"
cert_file = "$WORK/pki/edge-fleet.pem"
key_file = "$WORK/pki/edge-fleet.key"
[database]
url = "sqlite://$WORK/fleet/fleet.db"
[http]
listen = "$FLEET_HTTP"
[artifacts]
dir = "$WORK/fleet/artifacts"
TOML
$BIN/edge-fleet run --config "$WORK/fleet.toml" >"$WORK/fleet.log" 2>&1 &
FLEET_PID=$!
lf_wait_port "${FLEET_HTTP##*:}" "$FLEET_PID" edge-fleet
printf '[fleet]\nurl = "http://%s"\n' "$FLEET_HTTP" >>"$WORK/ctl.toml"
# The inventory fills from dev-1's retained status, delivered when the service subscribes.
for _ in $(seq 50); do
    "${CTL[@]}" --json devices | grep -q '"dev-1"' && break
    sleep 0.2
done
"${CTL[@]}" devices
echo
echo "== edgectl deploy through the fleet service: stored, then delivered (version 4)"
"${CTL[@]}" deploy --model "$HAND.tflite" --name hand --version 4 --device dev-1 \
    --validate-input "$HAND.input.npy" --validate-output "$HAND.output.npy" --tolerance 0.01 --wait
"${CTL[@]}" deployments

echo
echo "== /metrics (excerpt)"
curl -fsS "http://$HTTP/metrics" | grep -E '^edge_agent_(mqtt_connected|models_loaded|inference_requests_total|telemetry_samples_total|commands_total|deploys_total)'
