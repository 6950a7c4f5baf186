//! The Open Inference Protocol (KServe v2 / Triton) routes over real HTTP, on the shipped
//! models and their references: JSON and binary-tensor inference, metadata, health, the
//! client errors, and NVIDIA's own Python client (`tritonclient[http]`) end to end.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::serve::*;
use common::*;
use edge_agent::engine::LoadOptions;
use edge_agent::npy;
use edge_agent::serving::PoolSettings;
use serde_json::{json, Value};
use tract_core::internal::*;

const DEEPA: &str = "openwakeword-js__hello_deepa";
const FACES: &str = "mediapipe__face_detection_short_range";
const WAKE: &str = "pymicro-wakeword__okay_nabu";

fn datatype(t: &Tensor) -> &'static str {
    match t.datum_type().unquantized() {
        DatumType::F32 => "FP32",
        DatumType::I8 => "INT8",
        DatumType::U8 => "UINT8",
        other => panic!("no test datatype for {other:?}"),
    }
}

fn raw(t: &Tensor) -> Vec<u8> {
    t.try_as_plain_ram().unwrap().as_bytes().to_vec()
}

/// A tensor's elements as one flat JSON array.
fn flat_json(t: &Tensor) -> Value {
    fn flatten(v: Value, out: &mut Vec<Value>) {
        match v {
            Value::Array(items) => items.into_iter().for_each(|i| flatten(i, out)),
            x => out.push(x),
        }
    }
    let mut out = vec![];
    flatten(to_json(t), &mut out);
    Value::Array(out)
}

/// Posts a binary-extension request: `header` as JSON, then `tensors`' bytes.
fn post_binary(addr: &str, path: &str, header: &Value, tensors: &[&Tensor]) -> Reply {
    let mut body = header.to_string().into_bytes();
    let len = body.len().to_string();
    tensors.iter().for_each(|t| body.extend(raw(t)));
    request_with(addr, "POST", path, &[("Inference-Header-Content-Length", &len)], &body)
}

/// A response's JSON, and its outputs by name: from `data`, or from the binary part.
fn outputs(reply: &Reply, like: &[(&str, &Tensor)]) -> (Value, Vec<(String, Tensor)>) {
    let (code, head, body) = reply;
    assert_eq!(*code, 200, "{}", String::from_utf8_lossy(body));
    let json_len = header(head, "inference-header-content-length").map_or(body.len(), |v| v.parse().unwrap());
    let v: Value = serde_json::from_slice(&body[..json_len]).unwrap();
    let mut rest = &body[json_len..];
    let mut out = vec![];
    for o in v["outputs"].as_array().unwrap() {
        let name = o["name"].as_str().unwrap();
        let want = like.iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("unexpected output {name}")).1;
        assert_eq!(o["datatype"], datatype(want), "{name}");
        let shape: Vec<usize> = o["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
        let t = match o["parameters"]["binary_data_size"].as_u64() {
            Some(size) => {
                assert!(o.get("data").is_none(), "{name}: binary output with data too");
                let (bytes, tail) = rest.split_at(size as usize);
                rest = tail;
                npy::from_le_bytes(want.datum_type().unquantized(), &shape, bytes).unwrap()
            }
            None => {
                let data = o["data"].as_array().unwrap_or_else(|| panic!("{name}: no data: {o}"));
                assert!(data.iter().all(|x| !x.is_array()), "{name}: data is not flat");
                let t = from_json(&o["data"], &Tensor::zero_dt(want.datum_type(), &[data.len()]).unwrap());
                t.into_shape(&shape).unwrap()
            }
        };
        out.push((name.to_string(), t));
    }
    assert!(rest.is_empty(), "{} bytes after the binary outputs", rest.len());
    (v, out)
}

#[test]
fn json_infer_with_flat_or_nested_data_matches_the_reference() {
    let e = entry(DEEPA);
    let (in_name, input) = references(&e, "ref_inputs").remove(0);
    let want = references(&e, "ref_outputs").remove(0).1;
    let model = load(&format!("{DEEPA}.onnx"), LoadOptions::default());
    let out_name = model.outputs()[0].name.clone();
    let s = server(&[("deepa", "1", model, PoolSettings::default())], 1 << 20);
    for (path, data) in [
        ("/v2/models/deepa/infer", flat_json(&input)),
        ("/v2/models/deepa/infer", to_json(&input)),
        ("/v2/models/deepa/versions/1/infer", flat_json(&input)),
    ] {
        let request = json!({
            "id": "req-7",
            "inputs": [{ "name": in_name, "shape": input.shape(), "datatype": "FP32", "data": data }],
        });
        let (code, head, body) = request_with(
            &s.addr,
            "POST",
            path,
            &[("Content-Type", "application/json")],
            request.to_string().as_bytes(),
        );
        assert!(header(&head, "inference-header-content-length").is_none(), "{head}");
        let (v, got) = outputs(&(code, head, body), &[(&out_name, &want)]);
        assert_eq!(v["model_name"], "deepa");
        assert_eq!(v["model_version"], "1");
        assert_eq!(v["id"], "req-7");
        assert_eq!(v["outputs"][0]["shape"], json!(want.shape()));
        assert_close(path, &got[0].1, &want, 0.0);
    }
    // Each went through the registry's one path, which counts what `/metrics` exports.
    assert_eq!(s.stats.counts("deepa").requests, 3);
}

#[test]
fn binary_infer_matches_the_reference_in_every_output_mix() {
    let e = entry(FACES);
    let (in_name, input) = references(&e, "ref_inputs").remove(0);
    let refs = references(&e, "ref_outputs");
    let model = load(&format!("{FACES}.tflite"), LoadOptions::default());
    let names: Vec<String> = model.outputs().iter().map(|o| o.name.clone()).collect();
    assert_eq!(names.len(), 2);
    let like: Vec<(&str, &Tensor)> = names.iter().map(String::as_str).zip(refs.iter().map(|(_, t)| t)).collect();
    let s = server(&[("faces", "1", model, PoolSettings::default())], 16 << 20);
    let input_json = json!({
        "name": in_name, "shape": input.shape(), "datatype": "FP32",
        "parameters": { "binary_data_size": raw(&input).len() },
    });

    // Both binary, as asked one by one; then the second as JSON and first, reordered; then
    // none named with binary_data_output, as tritonclient sends when no outputs are given.
    let cases = [
        (
            json!([{ "name": names[0], "parameters": { "binary_data": true } },
                { "name": names[1], "parameters": { "binary_data": true } }]),
            json!({}),
            vec![0, 1],
            2,
        ),
        (
            json!([{ "name": names[1], "parameters": { "binary_data": false } },
                { "name": names[0], "parameters": { "binary_data": true } }]),
            json!({}),
            vec![1, 0],
            1,
        ),
        (Value::Null, json!({ "binary_data_output": true }), vec![0, 1], 2),
        (json!([{ "name": names[1] }]), json!({}), vec![1], 0),
    ];
    for (i, (outs, params, order, binary_count)) in cases.into_iter().enumerate() {
        let mut header_json = json!({ "inputs": [input_json.clone()], "parameters": params });
        if !outs.is_null() {
            header_json["outputs"] = outs;
        }
        let reply = post_binary(&s.addr, "/v2/models/faces/infer", &header_json, &[&input]);
        let (v, got) = outputs(&reply, &like);
        let got_names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        let want_names: Vec<&str> = order.iter().map(|k| names[*k].as_str()).collect();
        assert_eq!(got_names, want_names, "case {i}: {v}");
        let binaries = v["outputs"].as_array().unwrap().iter().filter(|o| o.get("parameters").is_some()).count();
        assert_eq!(binaries, binary_count, "case {i}: {v}");
        for ((name, t), k) in got.iter().zip(&order) {
            assert_close(&format!("case {i} {name}"), t, &refs[*k].1, 0.0);
        }
    }

    // Integer tensors: int8 in, uint8 out, both binary.
    let e = entry(WAKE);
    let (in_name, input) = references(&e, "ref_inputs").remove(0);
    let want = references(&e, "ref_outputs").remove(0).1;
    let model = load(&format!("{WAKE}.tflite"), LoadOptions::default());
    let out_name = model.outputs()[0].name.clone();
    let s = server(&[("wake", "1", model, PoolSettings::default())], 1 << 20);
    let header_json = json!({
        "inputs": [{ "name": in_name, "shape": input.shape(), "datatype": "INT8",
                     "parameters": { "binary_data_size": raw(&input).len() } }],
        "parameters": { "binary_data_output": true },
    });
    let reply = post_binary(&s.addr, "/v2/models/wake/infer", &header_json, &[&input]);
    let (_, got) = outputs(&reply, &[(&out_name, &want)]);
    assert_close("okay_nabu binary", &got[0].1, &want, 2.0);
}

#[test]
fn metadata_health_and_readiness() {
    let deepa = load(&format!("{DEEPA}.onnx"), LoadOptions::default());
    let emb = load("pyopen-wakeword__embedding_model.tflite", LoadOptions::default());
    let wake = load(&format!("{WAKE}.tflite"), LoadOptions::default());
    let s = server(
        &[
            ("deepa", "7", deepa.clone(), PoolSettings::default()),
            ("emb", "1", emb.clone(), PoolSettings::default()),
            ("wake", "2", wake, PoolSettings::default()),
        ],
        1 << 20,
    );
    let a = &s.addr;
    let (code, v) = get_json(a, "/v2");
    assert_eq!(code, 200);
    assert_eq!(v["name"], "edge-agent");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["extensions"], json!(["binary_tensor_data"]));
    assert_eq!(get_json(a, "/v2/health/live"), (200, json!({ "live": true })));
    assert_eq!(get_json(a, "/v2/health/ready"), (200, json!({ "ready": true })));

    for path in ["/v2/models/deepa", "/v2/models/deepa/versions/7"] {
        let (code, v) = get_json(a, path);
        assert_eq!(code, 200, "{path}: {v}");
        let input = &deepa.inputs()[0];
        let output = &deepa.outputs()[0];
        assert_eq!(
            v,
            json!({
                "name": "deepa", "versions": ["7"], "platform": "tract_onnx",
                "inputs": [{ "name": input.name, "datatype": "FP32", "shape": [1, 25, 96] }],
                "outputs": [{ "name": output.name, "datatype": "FP32", "shape": [1, 1] }],
            }),
            "{path}"
        );
    }
    // Symbolic dimensions are -1, fixed ones their size.
    let (_, v) = get_json(a, "/v2/models/emb");
    let shape: Vec<i64> = v["inputs"][0]["shape"].as_array().unwrap().iter().map(|d| d.as_i64().unwrap()).collect();
    let want: Vec<i64> = emb.inputs()[0].shape.iter().map(|d| d.parse().unwrap_or(-1)).collect();
    assert_eq!(shape, want, "{v}");
    assert!(shape.contains(&-1) && shape.contains(&76), "{shape:?}");
    let (_, v) = get_json(a, "/v2/models/wake");
    assert_eq!(v["platform"], "tract_tflite");
    assert_eq!(v["inputs"][0]["datatype"], "INT8", "{v}");
    assert_eq!(v["outputs"][0]["datatype"], "UINT8", "{v}");

    assert_eq!(get_json(a, "/v2/models/deepa/ready").0, 200);
    assert_eq!(get_json(a, "/v2/models/deepa/versions/7/ready").0, 200);
    for path in ["/v2/models/deepa/versions/6/ready", "/v2/models/nope/ready", "/v2/models/nope"] {
        let (code, v) = get_json(a, path);
        assert_eq!(code, 404, "{path}: {v}");
        assert!(v["error"].as_str().is_some_and(|m| !m.is_empty()), "{path}: {v}");
    }

    // A configured model that is not active yet makes the server not ready, and says which.
    s.registry.expect(vec!["deepa".into(), "later".into()]);
    let (code, v) = get_json(a, "/v2/health/ready");
    assert_eq!(code, 503, "{v}");
    assert!(v["error"].as_str().unwrap().contains("later"), "{v}");
    assert_eq!(get_json(a, "/v2/health/live").0, 200);
}

#[test]
fn client_errors_say_what_was_expected() {
    let e = entry(DEEPA);
    let (in_name, input) = references(&e, "ref_inputs").remove(0);
    let s = server(
        &[("deepa", "7", load(&format!("{DEEPA}.onnx"), LoadOptions::default()), PoolSettings::default())],
        256 * 1024,
    );
    let a = &s.addr;
    let bytes = raw(&input);
    let with = |fields: Value| {
        let mut i = json!({ "name": in_name, "shape": [1, 25, 96], "datatype": "FP32", "data": flat_json(&input) });
        fields.as_object().unwrap().iter().for_each(|(k, v)| i[k] = v.clone());
        i.as_object_mut().unwrap().retain(|_, v| !v.is_null());
        json!({ "inputs": [i] })
    };
    let post = |path: &str, body: &Value| request(a, "POST", path, "application/json", body.to_string().as_bytes());
    let binary = |header_json: &Value, tail: &[u8]| {
        let mut body = header_json.to_string().into_bytes();
        let len = body.len().to_string();
        body.extend_from_slice(tail);
        request_with(a, "POST", "/v2/models/deepa/infer", &[("Inference-Header-Content-Length", &len)], &body)
    };
    let bin_input = with(json!({ "data": null, "parameters": { "binary_data_size": bytes.len() } }));
    let short_input = with(json!({ "data": null, "parameters": { "binary_data_size": bytes.len() - 4 } }));
    let infer = "/v2/models/deepa/infer";
    let cases: Vec<(u16, Reply, &str)> = vec![
        (404, post("/v2/models/nope/infer", &with(json!({}))), "nope"),
        (404, post("/v2/models/deepa/versions/6/infer", &with(json!({}))), "active"),
        (400, post(infer, &with(json!({ "shape": [1, 24, 96] }))), "[1, 25, 96]"),
        (400, post(infer, &with(json!({ "shape": [1, -25, 96] }))), "negative"),
        (400, post(infer, &with(json!({ "datatype": "FP64" }))), "FP32"),
        (400, post(infer, &with(json!({ "name": "x" }))), in_name.as_str()),
        (400, post(infer, &with(json!({ "data": [1.0, 2.0, 3.0] }))), "2400"),
        (400, post(infer, &with(json!({ "data": vec![json!("a"); 2400] }))), "number"),
        (400, post(infer, &with(json!({ "data": null }))), "binary_data_size"),
        (400, post(infer, &json!({ "inputs": [] })), "missing input"),
        (400, post(infer, &json!({ "outputs": [] })), "inputs"),
        (400, post(infer, &json!({ "inputs": [with(json!({}))["inputs"][0], with(json!({}))["inputs"][0]] })), "twice"),
        (400, post(infer, &json!({ "inputs": with(json!({}))["inputs"], "outputs": [{ "name": "zz" }] })), "zz"),
        (400, request(a, "POST", infer, "application/json", b"{not json"), "not an inference request"),
        // Binary data without the header that says where the JSON ends.
        (400, request(a, "POST", infer, "application/json", &[b"{}".as_slice(), &bytes].concat()), "Inference-Header"),
        (400, binary(&bin_input, &bytes[4..]), "binary_data_size"),
        (400, binary(&short_input, &bytes[4..]), "takes 9600"),
        (400, binary(&bin_input, &[bytes.as_slice(), &[0u8; 8]].concat()), "8 bytes"),
        (
            400,
            request_with(a, "POST", infer, &[("Inference-Header-Content-Length", "lots")], b"{}"),
            "Inference-Header-Content-Length",
        ),
        (400, request_with(a, "POST", infer, &[("Inference-Header-Content-Length", "999")], b"{}"), "999"),
        (
            415,
            request_with(a, "POST", infer, &[("Content-Encoding", "gzip")], with(json!({})).to_string().as_bytes()),
            "uncompressed",
        ),
        (413, request(a, "POST", infer, "application/json", &vec![b' '; 300 * 1024]), ""),
    ];
    // What the model never saw is counted as the caller's mistake, as on /v1: every 400 and
    // 415 of deepa (not the 404s of unknown names and versions, nor the 413).
    let refused = cases.iter().filter(|(want, _, _)| matches!(want, 400 | 415)).count();
    for (i, (want, (code, _, body), needle)) in cases.into_iter().enumerate() {
        let text = String::from_utf8_lossy(&body);
        assert_eq!(code, want, "case {i}: {text}");
        assert!(text.contains(needle), "case {i}: {needle:?} not in {text}");
        if code != 413 {
            let v: Value =
                serde_json::from_slice(&body).unwrap_or_else(|_| panic!("case {i}: JSON error body: {text}"));
            assert!(v["error"].as_str().is_some_and(|m| !m.is_empty()), "case {i}: {text}");
        }
    }
    let counted = exposition(&s.stats);
    let line = format!("requests_total{{model=\"deepa\",outcome=\"bad_request\"}} {refused}\n");
    assert!(counted.contains(&line), "{line:?} not in {counted}");
    // The same request without the mistakes goes through.
    assert_eq!(post(infer, &with(json!({}))).0, 200);
    assert_eq!(binary(&bin_input, &bytes).0, 200);
}

/// The repository's venv that scripts/setup.sh makes, with tritonclient[http] and numpy.
fn venv_python() -> Option<PathBuf> {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    python.exists().then_some(python)
}

#[test]
fn tritonclient_infers_and_reads_metadata_as_against_triton() {
    let Some(python) = venv_python() else {
        eprintln!(
            "\n\n*** SKIPPED tritonclient_infers_and_reads_metadata_as_against_triton: no .venv at the \
             repository root. Run scripts/setup.sh to create it (python3 -m venv + tritonclient[http]). ***\n\n"
        );
        return;
    };
    let s = server(
        &[
            ("deepa", "1", load(&format!("{DEEPA}.onnx"), LoadOptions::default()), PoolSettings::default()),
            ("faces", "1", load(&format!("{FACES}.tflite"), LoadOptions::default()), PoolSettings::default()),
            ("wake", "1", load(&format!("{WAKE}.tflite"), LoadOptions::default()), PoolSettings::default()),
        ],
        16 << 20,
    );
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/triton_v2_client.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(&s.addr)
        .arg(models_dir())
        .args([format!("deepa={DEEPA}"), format!("faces={FACES}"), format!("wake={WAKE}")])
        .output()
        .expect("the venv's python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "tritonclient checks failed:\n{stdout}\n{stderr}");
    // Every model went through both encodings: guards against a script that checks nothing.
    for model in ["deepa", "faces", "wake"] {
        for mode in ["binary_data=True", "binary_data=False"] {
            assert!(
                stdout.lines().any(|l| l.starts_with("ok   ") && l.contains(model) && l.contains(mode)),
                "{stdout}"
            );
        }
    }
    assert!(!stdout.contains("FAIL"), "{stdout}");
}

#[test]
fn a_full_queue_answers_503_with_retry_after_on_v2_too() {
    // The v2 routes share the v1 queue: PP-OCRv6 takes tens of milliseconds per request, one
    // worker, a queue of one, eight callers at once.
    let input = npy::read(&models_dir().join("rapidocr__PP-OCRv6_det_small.input.npy")).unwrap();
    let options = LoadOptions { shapes: vec![("x".into(), input.shape().to_vec())], ..Default::default() };
    let model = load("rapidocr__PP-OCRv6_det_small.onnx", options);
    let s = server(&[("det", "1", model, PoolSettings { workers: 1, queue: 1 })], 16 << 20);
    let header_json = json!({
        "inputs": [{ "name": "x", "shape": input.shape(), "datatype": "FP32",
                     "parameters": { "binary_data_size": raw(&input).len() } }],
        "parameters": { "binary_data_output": true },
    });
    let codes: Vec<u16> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    let (code, head, body) = post_binary(&s.addr, "/v2/models/det/infer", &header_json, &[&input]);
                    if code == 503 {
                        assert_eq!(header(&head, "retry-after"), Some("1"), "{head}");
                        let v: Value = serde_json::from_slice(&body).unwrap();
                        assert!(v["error"].as_str().unwrap().contains("busy"), "{v}");
                    }
                    code
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    assert!(codes.iter().all(|c| *c == 200 || *c == 503), "{codes:?}");
    assert!(codes.contains(&503), "no 503 under 8 concurrent requests with a queue of 1: {codes:?}");
    assert!(codes.contains(&200), "{codes:?}");
}
