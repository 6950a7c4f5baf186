#!/usr/bin/env bash
# The main job, end to end: inspect a shipped wake-word model and run it on its reference
# audio features, one step at a time through one session.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -q -p edge-agent
bin=target/release/edge-agent
model=models/pymicro-wakeword__okay_nabu.tflite
$bin inspect --model "$model"
out=$(mktemp -d)
$bin infer --model "$model" --input models/pymicro-wakeword__okay_nabu.seq_input.npy --sequence --output-dir "$out"
echo "wrote $out/output.0.npy (wake-word probability per 30 ms step, uint8)"
$bin infer --model models/openwakeword-js__hello_deepa.onnx --input models/openwakeword-js__hello_deepa.input.npy --repeat 100
