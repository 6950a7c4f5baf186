#!/usr/bin/env bash
# The main job, end to end: inspect a shipped wake-word model, run it over 90 steps of
# spoken "okay nabu" through one stateful session, then time a small ONNX model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -q -p edge-agent
bin="${CARGO_TARGET_DIR:-target}/release/edge-agent"
model=models/pymicro-wakeword__okay_nabu.tflite

echo "== inspect $model"
$bin inspect --model "$model"

echo
echo "== infer: wake-word probability (0..255) after each 30 ms step; >= 128 is a detection"
$bin infer --model "$model" --input models/pymicro-wakeword__okay_nabu.seq_input.npy --sequence

echo
echo "== infer --repeat: hello_deepa (ONNX), one thread"
$bin infer --model models/openwakeword-js__hello_deepa.onnx --input models/openwakeword-js__hello_deepa.input.npy --repeat 100
