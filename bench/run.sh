#!/usr/bin/env bash
# Times every model in models/ that has a reference input in edge-agent and in its native
# runtime (onnxruntime / ai-edge-litert), single-threaded, and writes bench/RESULTS.md.
# Usage: bench/run.sh            (BENCH_RUNS=N sets the timed runs per model, default 50)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

RUNS="${BENCH_RUNS:-50}"
if [[ -n "${BENCH_RUNS:-}" ]]; then
    COMMAND="BENCH_RUNS=$BENCH_RUNS bench/run.sh"
else
    COMMAND="bench/run.sh"
fi

# Native runtimes, pinned to the versions that made the references in models/MANIFEST.json.
VENV=bench/.venv
if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    numpy==2.4.6 onnxruntime==1.32.0 ai-edge-litert==2.3.0

# Only one cargo build at a time on this machine: cargo waits on its own lock if another runs.
cargo build --release -p edge-agent
AGENT="${CARGO_TARGET_DIR:-$ROOT/target}/release/edge-agent"

exec "$VENV/bin/python" bench/bench.py --runs "$RUNS" --agent "$AGENT" --command "$COMMAND"
