#!/usr/bin/env python3
"""Times every model in models/ that has a reference input, in edge-agent and in the
native runtime (onnxruntime for .onnx, ai-edge-litert for .tflite), single-threaded, on
the same reference inputs. Prints per-model medians, the ratio edge-agent/native and the
geometric-mean ratio, and writes them as a markdown table (bench/RESULTS.md by default).

Run through bench/run.sh, which sets up the venv and builds the agent.
"""

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

# Inputs given to edge-agent as --pin NAME=VALUE instead of --input (the native side still
# feeds the reference .npy). Silero's `sr` selects the 16 kHz branch of its If nodes.
PINS = {"silero-vad__silero_vad_16k_op15.onnx": {"sr": "16000"}}

MEDIAN_RE = re.compile(r"median_ms=([0-9.eE+-]+)")


def median(times):
    """Same definition as `edge-agent infer --repeat`: the upper middle of the sorted list."""
    s = sorted(times)
    return s[len(s) // 2]


def agrees(got, ref):
    """Reference agreement as models/README.md states it: 1e-3 of the largest magnitude
    for floats, 2 LSB for integers. Returns (ok, text)."""
    got = np.asarray(got)
    ref = np.asarray(ref)
    if got.shape != ref.shape:
        return False, f"shape {list(got.shape)} vs ref {list(ref.shape)}"
    if np.issubdtype(ref.dtype, np.floating):
        diff = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0
        scale = max(float(np.max(np.abs(ref))) if ref.size else 0.0, 1e-12)
        return diff <= 1e-3 * scale, f"max_abs={diff:.3g}"
    diff = int(np.max(np.abs(got.astype(np.int64) - ref.astype(np.int64)))) if ref.size else 0
    return diff <= 2, f"max_abs={diff}"


def check_outputs(outputs, entry, models):
    """Compares a first-run output list (model order) with the reference outputs."""
    bad = []
    for k, (npy, name) in enumerate(entry["ref_outputs"]):
        if k >= len(outputs):
            bad.append(f"{name}: missing")
            continue
        ok, text = agrees(outputs[k], np.load(models / npy))
        if not ok:
            bad.append(f"{name}: {text}")
    return bad


def bench_agent(agent, entry, models, runs):
    """Returns (median_ms, note) or raises RuntimeError with the reason."""
    pins = PINS.get(entry["file"], {})
    cmd = [str(agent), "infer", "--model", str(models / entry["file"])]
    for npy, name in entry["ref_inputs"]:
        if name not in pins:
            cmd += ["--input", f"{name}={models / npy}"]
    for name, value in pins.items():
        cmd += ["--pin", f"{name}={value}"]
    with tempfile.TemporaryDirectory() as out:
        cmd += ["--output-dir", out, "--repeat", str(runs), "--threads", "1"]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            raise RuntimeError("edge-agent: timed out after 600 s")
        if p.returncode != 0:
            lines = [l.strip() for l in (p.stderr or p.stdout).splitlines() if l.strip()]
            reason = lines[-1] if lines else f"exit code {p.returncode}"
            raise RuntimeError(f"edge-agent: {reason}")
        m = MEDIAN_RE.search(p.stdout) or MEDIAN_RE.search(p.stderr)
        if not m:
            raise RuntimeError("edge-agent: no median_ms in its output")
        n_out = len(entry["ref_outputs"])
        outputs = []
        for k in range(n_out):
            f = Path(out) / f"output.{k}.npy"
            if f.exists():
                outputs.append(np.load(f))
        bad = check_outputs(outputs, entry, models)
    note = f"edge-agent output off reference ({'; '.join(bad)})" if bad else ""
    return float(m.group(1)), note


def time_runs(run_once, runs):
    first = run_once()  # warm-up; its outputs are checked against the reference
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        run_once()
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return first, median(times)


def onnx_session(path, flush_denormals=False):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    if flush_denormals:
        so.add_session_config_entry("session.set_denormal_as_zero", "1")
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def bench_onnx(entry, models, runs):
    sess = onnx_session(models / entry["file"])
    feed = {name: np.load(models / npy) for npy, name in entry["ref_inputs"]}
    declared = {i.name for i in sess.get_inputs()}
    missing = declared - feed.keys()
    if missing:
        raise RuntimeError(f"native: no reference for inputs {sorted(missing)}")
    first, med = time_runs(lambda: sess.run(None, feed), runs)
    return first, med


def onnx_flush_denormals_median(entry, models, runs):
    """onnxruntime with denormals flushed to zero (not its default): shown as a side note,
    since denormal arithmetic alone can slow a model down several times on x86.

    Runs in a fresh process: onnxruntime applies the setting process-wide, and only when the
    process's first session is made, so in this process it would either do nothing or leak
    into every later default measurement."""
    code = ("import json, sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
            "import bench; m = Path(sys.argv[2]); "
            "e = [e for e in json.load(open(m / 'MANIFEST.json')) if e['file'] == sys.argv[3]][0]; "
            "s = bench.onnx_session(m / e['file'], flush_denormals=True); "
            "f = {n: bench.np.load(m / p) for p, n in e['ref_inputs']}; "
            "print(bench.time_runs(lambda: s.run(None, f), int(sys.argv[4]))[1])")
    p = subprocess.run([sys.executable, "-c", code, str(Path(__file__).resolve().parent),
                        str(models), entry["file"], str(runs)],
                       capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        return None
    return float(p.stdout.strip().splitlines()[-1])


def bench_tflite(entry, models, runs):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(models / entry["file"]), num_threads=1)
    by_name = {name: np.load(models / npy) for npy, name in entry["ref_inputs"]}
    details = interp.get_input_details()
    feed = []
    for d in details:
        if d["name"] not in by_name:
            raise RuntimeError(f"native: no reference for input {d['name']!r}")
        x = by_name[d["name"]]
        if x.dtype != d["dtype"]:
            x = x.astype(d["dtype"])
        if list(d["shape"]) != list(x.shape):
            interp.resize_tensor_input(d["index"], list(x.shape))
        feed.append((d["index"], x))
    interp.allocate_tensors()
    out_idx = [d["index"] for d in interp.get_output_details()]

    def run_once():
        for idx, x in feed:
            interp.set_tensor(idx, x)
        interp.invoke()
        return [interp.get_tensor(i) for i in out_idx]

    return time_runs(run_once, runs)


def bench_native(entry, models, runs):
    try:
        if entry["format"] == "onnx":
            first, med = bench_onnx(entry, models, runs)
        elif entry["format"] == "tflite":
            first, med = bench_tflite(entry, models, runs)
        else:
            raise RuntimeError(f"native: no runtime for format {entry['format']!r}")
    except RuntimeError:
        raise
    except Exception as e:  # the runtime's own refusal
        msg = " ".join(str(e).split())[:200]
        raise RuntimeError(f"native: {type(e).__name__}: {msg}")
    bad = check_outputs(first, entry, models)
    note = f"native output off reference ({'; '.join(bad)})" if bad else ""
    return med, note


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def tract_version():
    lock = ROOT / "Cargo.lock"
    if lock.exists():
        m = re.search(r'name = "tract-core"\nversion = "([^"]+)"', lock.read_text())
        if m:
            return m.group(1)
    return "unknown"


def loadavg():
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def fmt(x):
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agent", default=str(ROOT / "target/release/edge-agent"))
    ap.add_argument("--models", default=str(ROOT / "models"))
    ap.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "50")))
    ap.add_argument("--out", default=str(ROOT / "bench/RESULTS.md"))
    ap.add_argument("--command", default=None, help="the command line to record in the results")
    args = ap.parse_args()
    if args.runs < 1:
        sys.exit("--runs must be at least 1")

    models = Path(args.models)
    agent = Path(args.agent)
    manifest = json.loads((models / "MANIFEST.json").read_text())
    agent_version = subprocess.run([str(agent), "--version"], capture_output=True,
                                   text=True).stdout.strip() or "unknown"
    versions = {
        "edge-agent": f"{agent_version.removeprefix('edge-agent ')} (tract {tract_version()})",
        "onnxruntime": importlib.metadata.version("onnxruntime"),
        "ai-edge-litert": importlib.metadata.version("ai-edge-litert"),
        "numpy": importlib.metadata.version("numpy"),
        "python": platform.python_version(),
    }
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = loadavg()

    rows = []
    skipped = []
    for entry in manifest:
        name = entry["file"]
        if not entry.get("ref_inputs"):
            skipped.append((name, entry.get("error", "no reference input")))
            print(f"skip {name}: no reference input", flush=True)
            continue
        row = {"model": name, "format": entry["format"], "agent": None, "native": None,
               "notes": []}
        try:
            row["native"], note = bench_native(entry, models, args.runs)
            if note:
                row["notes"].append(note)
        except RuntimeError as e:
            row["notes"].append(str(e))
        try:
            row["agent"], note = bench_agent(agent, entry, models, args.runs)
            if note:
                row["notes"].append(note)
        except RuntimeError as e:
            row["notes"].append(str(e))
        if row["agent"] is not None and row["native"] is not None:
            row["ratio"] = row["agent"] / row["native"]
        else:
            row["ratio"] = None
        if entry["format"] == "onnx" and row["native"] is not None:
            daz = onnx_flush_denormals_median(entry, models, args.runs)
            row["daz"] = daz
            if daz is not None and daz * 1.5 <= row["native"]:
                extra = f", edge-agent / that = {row['agent'] / daz:.3f}" if row["agent"] else ""
                row["notes"].append(f"onnxruntime with denormals flushed to zero "
                                    f"(session.set_denormal_as_zero=1): {fmt(daz)} ms{extra}")
        rows.append(row)
        print(f"{name}: edge-agent {fmt(row['agent'])} ms, native {fmt(row['native'])} ms, "
              f"ratio {fmt(row['ratio'])}" + (f"  [{'; '.join(row['notes'])}]" if row["notes"] else ""),
              flush=True)

    ratios = [r["ratio"] for r in rows if r["ratio"] is not None]
    failed = [r["model"] for r in rows if r["ratio"] is None]
    geomean = math.exp(sum(math.log(x) for x in ratios) / len(ratios)) if ratios else None
    load_after = loadavg()

    command = args.command or " ".join([sys.executable, *sys.argv])
    lines = [
        "# edge-agent vs native runtime: single-thread latency",
        "",
        f"- Date: {started.strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: `nproc` = {len(os.sched_getaffinity(0))}, "
        f"CPU: {cpu_model()}; load average before / after: {load_before} / {load_after}",
        "- Runtimes: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"- Command: `{command}`",
        f"- Method: per model, one warm-up run, then {args.runs} timed runs, median "
        "(upper middle of the sorted times, as `edge-agent infer --repeat` reports it). "
        "edge-agent: `edge-agent infer --threads 1 --repeat N`, timing `session.run`. "
        "Native: onnxruntime `InferenceSession` (intra_op/inter_op threads = 1, CPU EP) for .onnx; "
        "ai-edge-litert `Interpreter(num_threads=1)` (default delegates, XNNPACK) for .tflite, "
        "timing set_tensor + invoke + get_tensor. Same reference inputs (models/MANIFEST.json) on "
        "both sides; both sides' warm-up outputs are checked against the reference outputs. "
        "Silero's `sr` is pinned to 16000 in edge-agent (`--pin sr=16000`) and fed as an input natively. "
        "onnxruntime is timed a second time, in a fresh process, with denormals flushed to zero; where "
        "that makes it at least 1.5x faster the notes say so (the ratios and the geometric mean use "
        "its default). Sub-0.1 ms medians are dominated by per-call overhead (Python binding vs "
        "Rust call) and vary by tens of percent from run to run.",
        "",
        "| model | format | edge-agent median ms | native median ms | edge-agent / native | notes |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| `{r['model']}` | {r['format']} | {fmt(r['agent'])} | {fmt(r['native'])} | "
                     f"{fmt(r['ratio'])} | {'; '.join(r['notes']).replace('|', '/')} |")
    for name, why in skipped:
        lines.append(f"| `{name}` | {name.rsplit('.', 1)[-1]} | - | - | - | skipped: no reference "
                     f"input (unsupported by design: needs MediaPipe custom ops) |")
    lines.append("")
    gm = (f"**Geometric mean of edge-agent / native: {geomean:.3f}** over {len(ratios)} models"
          if geomean is not None else "**Geometric mean: none** (no model ran on both sides)")
    if failed:
        gm += f"; left out because they failed on a side: {', '.join(f'`{m}`' for m in failed)}"
    else:
        gm += " (no model failed on either side)"
    lines.append(gm + ". A ratio above 1 means edge-agent is slower.")
    daz_ratios = [r["agent"] / r["daz"] if r.get("daz") else r["ratio"] for r in rows
                  if r["ratio"] is not None]
    if daz_ratios and any(r.get("daz") and r["daz"] * 1.5 <= r["native"] for r in rows):
        gm_daz = math.exp(sum(math.log(x) for x in daz_ratios) / len(daz_ratios))
        lines.append("")
        lines.append(f"With onnxruntime's denormals flushed to zero (not its default) the geometric "
                     f"mean would be {gm_daz:.3f}.")
    lines.append("")

    text = "\n".join(lines)
    # This command owns the top of the file, up to the first "## " section; the other
    # benchmarks (footprint, serving) append their own sections after it, which are kept.
    out = Path(args.out)
    old = out.read_text() if out.exists() else ""
    rest = old[old.index("\n## ") + 1:] if "\n## " in old else ""
    out.write_text(text + ("\n" + rest if rest else ""))
    print()
    print(text)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
