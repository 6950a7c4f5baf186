#!/usr/bin/env bash
# Delta transfer figures (issue 12 item 6): for each ONNX model in models/ (or the
# directory given), the bytes a new version costs a device that holds the old one, with a
# full transfer, fixed-size chunks (the old scheme) and content-defined chunks
# (edge_proto::cdc). The new versions (classifier head retrained; one more output class)
# are described in bench/src/delta.rs. Then the same on the wire: a real edge-agent behind a
# real Mosquitto, deployed each model and its retrained version with content-defined and
# with fixed chunks (release builds). Prints a Markdown report; bench/RESULTS.md records a
# run. Usage: bash bench/delta.sh [MODELS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS="${1:-models}"
cargo build -q --release -p edge-bench --bin delta-bench -p edge-agent --bin edge-agent
echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC') (git $(git rev-parse --short HEAD))"
echo "- Command: \`bash bench/delta.sh ${1:-}\`"
echo
target="${CARGO_TARGET_DIR:-target}/release"
"$target/delta-bench" "$MODELS" --agent "$target/edge-agent"
