#!/usr/bin/env bash
# What the serving workers' tensor statistics (agent/src/tensor_stats.rs) cost per request,
# beside the inference they describe: every model in models/ with a reference input, run by
# `edge-agent infer --repeat N` (single-threaded), which times the statistics of each run's
# inputs and outputs as a worker computes them. Prints one line per model: the cost of
# describing one request, its share of the inference time, and the share of requests the
# workers then describe to stay within the 1 % budget (issue 13's goal; the rest are
# skipped and counted); then the same with a reference profile of 20 bins per tensor, i.e.
# with the drift windows counted too (agent/src/drift.rs).
# Usage: bench/tensor-stats.sh        (BENCH_RUNS=N sets the runs per model, default 30)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RUNS="${BENCH_RUNS:-30}"
cargo build --release -q -p edge-agent
AGENT="${CARGO_TARGET_DIR:-$ROOT/target}/release/edge-agent"

# The inputs each model takes, from models/MANIFEST.json (pinned inputs as in bench/bench.py).
python3 - "$ROOT/models" <<'PY' | while IFS=$'\t' read -r file args; do
import json, sys
from pathlib import Path
models = Path(sys.argv[1])
pins = {"silero-vad__silero_vad_16k_op15.onnx": {"sr": "16000"}}
for e in json.load(open(models / "MANIFEST.json")):
    if not e.get("ref_inputs"):
        continue
    p = pins.get(e["file"], {})
    args = [f"--input {n}={models / f}" for f, n in e["ref_inputs"] if n not in p]
    args += [f"--pin {n}={v}" for n, v in p.items()]
    print(e["file"] + "\t" + " ".join(args))
PY
    # shellcheck disable=SC2086 # args are flags split on purpose (paths have no spaces)
    if out=$("$AGENT" infer --model "models/$file" $args --repeat "$RUNS" --threads 1 2>&1 | tail -n 1); then
        median=$(sed -n 's/.* median_ms=\([0-9.]*\).*/\1/p' <<<"$out")
        stats=$(sed -n 's/.* stats_median_ms=\([0-9.]*\).*/\1/p' <<<"$out")
        share=$(sed -n 's/.* stats_share_pct=\([0-9.]*\).*/\1/p' <<<"$out")
        described=$(awk -v s="$share" 'BEGIN { d = (s <= 1) ? 100 : 100 / s; printf "%.0f", d }')
        dstats=$(sed -n 's/.*drift_stats_median_ms=\([0-9.]*\).*/\1/p' <<<"$out")
        dshare=$(sed -n 's/.*drift_stats_share_pct=\([0-9.]*\).*/\1/p' <<<"$out")
        ddescribed=$(awk -v s="$dshare" 'BEGIN { d = (s <= 1) ? 100 : 100 / s; printf "%.0f", d }')
        printf '%-58s inference %9s ms   statistics %7s ms = %6s %%   described %3s %%   with drift %7s ms = %6s %%   described %3s %%\n' \
            "$file" "$median" "$stats" "$share" "$described" "$dstats" "$dshare" "$ddescribed"
    else
        printf '%-55s failed: %s\n' "$file" "$out"
    fi
done
