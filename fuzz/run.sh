#!/usr/bin/env bash
# Coverage-guided fuzzing of one edge_agent::fuzzing target with libFuzzer, by hand:
#   bash fuzz/run.sh TARGET SECONDS      e.g. bash fuzz/run.sh command 600
# Builds fuzz/ with sanitizer coverage (the flags cargo-fuzz passes; no nightly needed,
# no address sanitizer), starts from fuzz/corpus/TARGET (and a shipped model for tflite
# and onnx), keeps what it finds new in target/fuzz-corpus/TARGET, and prints libFuzzer's
# summary: executions, and any crash with the input that caused it (crash-*), which then
# becomes a regression test named after it. Figures go in docs/security.md.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: fuzz/run.sh TARGET SECONDS}
seconds=${2:-60}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}/fuzz-build"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
cargo build --release --manifest-path fuzz/Cargo.toml --bin fuzz
work="target/fuzz-corpus/$target"
mkdir -p "$work"
seeds=("fuzz/corpus/$target")
case "$target" in
    tflite) seeds+=(models/pymicro-wakeword__okay_nabu.tflite) ;;
    onnx) seeds+=(models/openwakeword-js__hello_deepa.onnx) ;;
esac
for s in "${seeds[@]}"; do
    if [ -d "$s" ]; then cp -n "$s"/* "$work"/ 2>/dev/null || true; elif [ -f "$s" ]; then cp -n "$s" "$work"/; fi
done
EDGE_FUZZ_TARGET="$target" "$CARGO_TARGET_DIR/release/fuzz" "$work" \
    -max_total_time="$seconds" -max_len=1048576 -rss_limit_mb=4096 -timeout=30 -print_final_stats=1
