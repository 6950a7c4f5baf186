"""Drives edge-agent's Open Inference Protocol routes with NVIDIA's own HTTP client
(tritonclient[http]) and checks every answer against the models' reference outputs.

Run by agent/tests/serving_v2.rs, which starts the server and passes:

    triton_v2_client.py HOST:PORT MODELS_DIR NAME=MANIFEST_PREFIX [NAME=MANIFEST_PREFIX ...]

Each NAME is a model the server serves, MANIFEST_PREFIX the start of its file name in
MODELS_DIR/MANIFEST.json, whose ref_inputs / ref_outputs name the reference .npy files.
Exits 0 when everything matches; otherwise prints what did not and exits 1.
"""

import json
import os
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def close(got, want):
    """Floats within 1e-3 of the reference's largest magnitude, integers within 2 steps
    (the tolerance the Rust tests use for the same models)."""
    if got is None or got.shape != want.shape or got.dtype != want.dtype:
        return False
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64)).max(initial=0.0)
    if np.issubdtype(want.dtype, np.floating):
        return diff <= 1e-3 * max(np.abs(want).max(initial=0.0), 1e-12)
    return diff <= 2


def main():
    addr, models_dir, pairs = sys.argv[1], sys.argv[2], sys.argv[3:]
    with open(os.path.join(models_dir, "MANIFEST.json")) as f:
        manifest = json.load(f)
    client = httpclient.InferenceServerClient(url=addr)

    check(client.is_server_live(), "is_server_live")
    check(client.is_server_ready(), "is_server_ready")
    server = client.get_server_metadata()
    check("binary_tensor_data" in server.get("extensions", []), f"server metadata {server}")

    for pair in pairs:
        name, prefix = pair.split("=", 1)
        entry = next(e for e in manifest if e["file"].startswith(prefix))
        ref_in = {n: np.load(os.path.join(models_dir, f)) for f, n in entry["ref_inputs"]}
        ref_out = {n: np.load(os.path.join(models_dir, f)) for f, n in entry["ref_outputs"]}

        check(client.is_model_ready(name), f"{name}: is_model_ready")
        meta = client.get_model_metadata(name)
        check(meta["name"] == name, f"{name}: metadata name {meta['name']}")
        for tensor in meta["inputs"]:
            ref = ref_in[tensor["name"]]
            want_type = np_to_triton_dtype(ref.dtype)
            check(tensor["datatype"] == want_type, f"{name}: input {tensor['name']} datatype {tensor['datatype']}, reference {want_type}")
            fits = len(tensor["shape"]) == ref.ndim and all(d in (-1, r) for d, r in zip(tensor["shape"], ref.shape))
            check(fits, f"{name}: input {tensor['name']} shape {tensor['shape']} takes the reference's {list(ref.shape)}")
        # Outputs by position: the metadata's names are the ones to ask for.
        out_names = [t["name"] for t in meta["outputs"]]
        check(len(out_names) == len(ref_out), f"{name}: {len(out_names)} outputs, {len(ref_out)} references")
        refs = list(ref_out.values())

        for binary in (True, False):
            inputs = []
            for tensor in meta["inputs"]:
                x = ref_in[tensor["name"]]
                inp = httpclient.InferInput(tensor["name"], list(x.shape), tensor["datatype"])
                inp.set_data_from_numpy(x, binary_data=binary)
                inputs.append(inp)
            wanted = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in out_names]
            result = client.infer(name, inputs, outputs=wanted, request_id=f"{name}-{binary}")
            response = result.get_response()
            check(response.get("id") == f"{name}-{binary}", f"{name}: id echoed")
            carried = ["binary_data_size" in o.get("parameters", {}) for o in response["outputs"]]
            check(carried == [binary] * len(out_names), f"{name}: outputs carried as binary: {carried}")
            check(all(("data" in o) != binary for o in response["outputs"]), f"{name}: \"data\" only in JSON outputs")
            for n, want in zip(out_names, refs):
                got = result.as_numpy(n)
                check(close(got, want), f"{name}: output {n}, binary_data={binary}")
            # No outputs named: tritonclient then asks for all of them as binary data.
            result = client.infer(name, inputs)
            for n, want in zip(out_names, refs):
                got = result.as_numpy(n)
                check(close(got, want), f"{name}: output {n}, outputs=None, inputs binary_data={binary}")

    try:
        client.get_model_metadata("no-such-model")
        check(False, "metadata of an unknown model raises")
    except InferenceServerException as e:
        check("no-such-model" in str(e), f"unknown model: {e}")

    if failures:
        print(f"{len(failures)} check(s) failed", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
