//! The local inference API over real HTTP: JSON and binary predicts on the shipped models,
//! sessions, every client error, backpressure, and a version swap under load.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::serve::*;
use common::*;
use edge_agent::engine::LoadOptions;
use edge_agent::npy;
use edge_agent::serving::{api, PoolSettings, Registry};
use edge_agent::stats::InferenceStats;
use serde_json::{json, Value};

#[test]
fn json_predict_in_both_forms_matches_the_reference() {
    let prefix = "openwakeword-js__hello_deepa";
    let e = entry(prefix);
    let input = references(&e, "ref_inputs").remove(0).1;
    let want = references(&e, "ref_outputs").remove(0).1;
    let s = server(
        &[("deepa", "1", load(&format!("{prefix}.onnx"), LoadOptions::default()), PoolSettings::default())],
        1 << 20,
    );

    let (code, body) = post_json(&s.addr, "/v1/models/deepa:predict", &json!({ "inputs": to_json(&input) }));
    assert_eq!(code, 200, "{body}");
    assert_close("inputs form", &from_json(&body["outputs"], &want), &want, 0.0);

    // Row form: one instance, without the batch axis; one prediction back.
    let instance = to_json(&input)[0].clone();
    let (code, body) = post_json(&s.addr, "/v1/models/deepa:predict", &json!({ "instances": [instance] }));
    assert_eq!(code, 200, "{body}");
    let preds = body["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 1);
    assert_close("instances form", &from_json(&json!([preds[0].clone()]), &want), &want, 0.0);

    // `curl -d '{"inputs": ...}'` as TF Serving's docs show it: curl labels the body
    // application/x-www-form-urlencoded. It used to get 415.
    let body = json!({ "inputs": to_json(&input) }).to_string();
    let (code, _, raw) =
        request(&s.addr, "POST", "/v1/models/deepa:predict", "application/x-www-form-urlencoded", body.as_bytes());
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    assert_eq!(code, 200, "{body}");
    assert_close("curl -d form", &from_json(&body["outputs"], &want), &want, 0.0);
}

#[test]
fn binary_predicts_on_the_shipped_models_match_their_references() {
    let cases = [
        ("mediapipe__hand_recrop", "tflite", vec![]),
        ("pymicro-wakeword__okay_nabu", "tflite", vec![]),
        ("silero-vad__silero_vad_16k_op15", "onnx", vec!["sr"]),
        ("rapidocr-onnxruntime__ch_ppocr_mobile_v2.0_cls_infer", "onnx", vec![]),
    ];
    for (prefix, ext, pinned) in cases {
        let e = entry(prefix);
        let (pins, open): (Vec<_>, Vec<_>) =
            references(&e, "ref_inputs").into_iter().partition(|(n, _)| pinned.contains(&n.as_str()));
        let options = LoadOptions {
            shapes: open.iter().map(|(n, t)| (n.clone(), t.shape().to_vec())).collect(),
            pins,
            ..Default::default()
        };
        let model = load(&format!("{prefix}.{ext}"), options);
        let mut body = vec![];
        for spec in model.inputs() {
            body.extend(npy::to_bytes(&open.iter().find(|(n, _)| *n == spec.name).unwrap().1).unwrap());
        }
        let s = server(&[("m", "1", model, PoolSettings::default())], 16 << 20);
        let (code, head, out) = request(&s.addr, "POST", "/v1/models/m:predict", api::NPY_MEDIA_TYPE, &body);
        assert_eq!(code, 200, "{prefix}: {}", String::from_utf8_lossy(&out));
        assert!(head.contains("content-type: application/x-npy"), "{head}");
        let mut rest = &out[..];
        for (k, (_, want)) in references(&e, "ref_outputs").iter().enumerate() {
            let (got, used) = npy::read_prefix(rest).unwrap();
            assert_close(&format!("{prefix} output {k}"), &got, want, 2.0);
            rest = &rest[used..];
        }
        assert!(rest.is_empty(), "{prefix}: extra bytes");
    }
}

#[test]
fn a_session_carries_okay_nabu_state_through_the_wake_word() {
    let prefix = "pymicro-wakeword__okay_nabu";
    let s = server(
        &[("wake", "1", load(&format!("{prefix}.tflite"), LoadOptions::default()), PoolSettings::default())],
        1 << 20,
    );
    let steps = npy::read(&models_dir().join(format!("{prefix}.seq_input.npy"))).unwrap();
    let want = npy::read(&models_dir().join(format!("{prefix}.seq_output.npy"))).unwrap();
    let want: Vec<u8> = want.try_as_plain_ram().unwrap().as_slice::<u8>().unwrap().to_vec();

    let (code, body) = post_json(&s.addr, "/v1/models/wake/sessions", &json!({}));
    assert_eq!(code, 201, "{body}");
    let id = body["session"].as_str().unwrap().to_string();
    let mut got = vec![];
    for step in 0..steps.shape()[0] {
        let mut x = steps.slice(0, step, step + 1).unwrap();
        x.remove_axis(0).unwrap();
        let (code, body) =
            post_json(&s.addr, &format!("/v1/models/wake:predict?session={id}"), &json!({ "inputs": to_json(&x) }));
        assert_eq!(code, 200, "step {step}: {body}");
        got.push(body["outputs"][0][0].as_u64().unwrap() as u8);
    }
    let detect = |v: &[u8]| v.iter().enumerate().filter(|(_, x)| **x >= 128).map(|(i, _)| i).collect::<Vec<_>>();
    assert!(!detect(&want).is_empty());
    assert_eq!(detect(&got), detect(&want), "detection steps");

    // Without the session, every call starts from the initial state: the wake word's peak
    // step alone does not fire.
    let peak = got.iter().enumerate().max_by_key(|(_, x)| **x).unwrap().0;
    let mut x = steps.slice(0, peak, peak + 1).unwrap();
    x.remove_axis(0).unwrap();
    let (_, body) = post_json(&s.addr, "/v1/models/wake:predict", &json!({ "inputs": to_json(&x) }));
    assert!(body["outputs"][0][0].as_u64().unwrap() < 128, "{body}");

    let (code, _, _) = request(&s.addr, "DELETE", &format!("/v1/models/wake/sessions/{id}"), "application/json", b"");
    assert_eq!(code, 204);
    let (code, body) =
        post_json(&s.addr, &format!("/v1/models/wake:predict?session={id}"), &json!({ "inputs": to_json(&x) }));
    assert_eq!(code, 404, "{body}");
}

#[test]
fn client_errors_say_what_was_expected() {
    let deepa = load("openwakeword-js__hello_deepa.onnx", LoadOptions::default());
    let s = server(&[("deepa", "7", deepa, PoolSettings::default())], 64 * 1024);
    let a = &s.addr;
    let cases: Vec<(u16, Reply, &str)> = vec![
        (400, request(a, "POST", "/v1/models/deepa:predict", "application/json", b"{not json"), ""),
        (400, request(a, "POST", "/v1/models/deepa:predict", "application/json", br#"{"inputs": [[1.0, 2.0]]}"#), "25"),
        (400, request(a, "POST", "/v1/models/deepa:predict", "application/json", br#"{"inputs": [[[true]]]}"#), ""),
        (400, request(a, "POST", "/v1/models/deepa:predict", "application/json", br#"{"nope": 1}"#), ""),
        (404, request(a, "POST", "/v1/models/nope:predict", "application/json", br#"{"inputs": 1}"#), "nope"),
        (404, request(a, "GET", "/v1/models/nope", "application/json", b""), "nope"),
        (404, request(a, "GET", "/v1/models/deepa/versions/3", "application/json", b""), "active"),
        (
            404,
            request(a, "POST", "/v1/models/deepa:predict?session=abc", "application/json", br#"{"inputs": 1}"#),
            "abc",
        ),
        (400, request(a, "POST", "/v1/models/deepa/sessions", "application/json", b""), "state"),
        (415, request(a, "POST", "/v1/models/deepa:predict", "text/plain", b"1"), "application/json"),
        (413, request(a, "POST", "/v1/models/deepa:predict", "application/json", &vec![b' '; 100 * 1024]), ""),
        (400, request(a, "POST", "/v1/models/deepa:predict", api::NPY_MEDIA_TYPE, b"\x93NUMPY garbage"), "input 0"),
    ];
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
    let (code, _, body) = request(a, "GET", "/v1/models/deepa/versions/7", "application/json", b"");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    // The predicts refused for their body (five 400s, the 415) count as the model's
    // bad requests; a 404 (unknown model or session) and the 413 (refused before the route
    // runs) are not requests to this model.
    let text = exposition(&s.stats);
    for series in [
        "requests_total{model=\"deepa\",outcome=\"bad_request\"} 6\n",
        "duration_count{model=\"deepa\",outcome=\"bad_request\"} 6\n",
    ] {
        assert!(text.contains(series), "no {series} in:\n{text}");
    }
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    // PP-OCRv6 takes tens of milliseconds per request: one worker, a queue of one.
    let input = npy::read(&models_dir().join("rapidocr__PP-OCRv6_det_small.input.npy")).unwrap();
    let options = LoadOptions { shapes: vec![("x".into(), input.shape().to_vec())], ..Default::default() };
    let model = load("rapidocr__PP-OCRv6_det_small.onnx", options);
    let s = server(&[("det", "1", model, PoolSettings { workers: 1, queue: 1 })], 16 << 20);
    let body = Arc::new(npy::to_bytes(&input).unwrap());
    let busy = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (addr, body, busy, ok) = (s.addr.clone(), body.clone(), busy.clone(), ok.clone());
            std::thread::spawn(move || {
                let (code, head, _) = request(&addr, "POST", "/v1/models/det:predict", api::NPY_MEDIA_TYPE, &body);
                match code {
                    200 => ok.fetch_add(1, Ordering::Relaxed),
                    503 => {
                        assert!(head.contains("retry-after: 1"), "{head}");
                        busy.fetch_add(1, Ordering::Relaxed)
                    }
                    other => panic!("unexpected status {other}"),
                };
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let (busy, ok) = (busy.load(Ordering::Relaxed), ok.load(Ordering::Relaxed));
    assert!(busy >= 1, "no 503 under 8 concurrent requests with a queue of 1");
    assert!(ok >= 1);
    // Each 503 is counted and timed as `unavailable`, each answer as `ok`; the queue is
    // empty again (every request counted in was counted out).
    let text = exposition(&s.stats);
    for (outcome, n) in [("unavailable", busy), ("ok", ok)] {
        for family in ["requests_total", "duration_count"] {
            let series = format!("{family}{{model=\"det\",outcome=\"{outcome}\"}} {n}\n");
            assert!(text.contains(&series), "no {series} in:\n{text}");
        }
    }
    let served = s.registry.get("det").unwrap();
    assert_eq!((served.queued(), served.queue_capacity()), (0, 1));
}

#[test]
fn swapping_versions_under_load_fails_no_request() {
    let prefix = "openwakeword-js__hello_deepa";
    let e = entry(prefix);
    let input = references(&e, "ref_inputs").remove(0).1;
    let want = references(&e, "ref_outputs").remove(0).1;
    let settings = PoolSettings { workers: 2, queue: 256 };
    let s = server(&[("deepa", "1", load(&format!("{prefix}.onnx"), LoadOptions::default()), settings)], 1 << 20);
    let body = Arc::new(npy::to_bytes(&input).unwrap());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (addr, body, stop, done, want) =
                (s.addr.clone(), body.clone(), stop.clone(), done.clone(), want.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let (code, _, out) = request(&addr, "POST", "/v1/models/deepa:predict", api::NPY_MEDIA_TYPE, &body);
                    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&out));
                    assert_close("during swap", &npy::read_prefix(&out).unwrap().0, &want, 0.0);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for v in 2..=4 {
        s.registry
            .activate("deepa", &v.to_string(), load(&format!("{prefix}.onnx"), LoadOptions::default()), settings)
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    clients.into_iter().for_each(|c| c.join().expect("a client saw a failed request"));
    assert!(done.load(Ordering::Relaxed) > 50, "too few requests to call it load");
    let (_, _, body) = request(&s.addr, "GET", "/v1/models/deepa", "application/json", b"");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["version"], "4");
}

#[test]
fn sessions_are_capped_and_expire() {
    let mut registry =
        Registry::new(Arc::new(InferenceStats::default()), Duration::from_secs(5), Duration::from_millis(300));
    registry.max_sessions = 2;
    let model = load("pymicro-wakeword__okay_nabu.tflite", LoadOptions::default());
    registry.activate("wake", "1", model, PoolSettings::default()).unwrap();
    let a = registry.open_session("wake").unwrap();
    registry.open_session("wake").unwrap();
    let err = registry.open_session("wake").unwrap_err();
    assert!(matches!(err, edge_agent::serving::ServeError::TooManySessions(2)), "{err}");
    // Idle past the TTL, both expire: a used session is gone and new ones fit again.
    std::thread::sleep(Duration::from_millis(400));
    assert!(registry.session("wake", &a).is_err());
    registry.open_session("wake").unwrap();
    registry.open_session("wake").unwrap();
}

#[test]
fn tf_serving_metadata_has_the_signature_def_shape() {
    // The speech embedding model keeps its symbolic batch when loaded without concrete
    // shapes: it must show as -1.
    let emb = load("pyopen-wakeword__embedding_model.tflite", LoadOptions::default());
    let wake = load("pymicro-wakeword__okay_nabu.tflite", LoadOptions::default());
    let s = server(
        &[("emb", "3", emb.clone(), PoolSettings::default()), ("wake", "1", wake, PoolSettings::default())],
        1 << 20,
    );
    for path in ["/v1/models/emb/metadata", "/v1/models/emb/versions/3/metadata"] {
        let (code, v) = get_json(&s.addr, path);
        assert_eq!(code, 200, "{path}: {v}");
        assert_eq!(v["model_spec"], json!({ "name": "emb", "signature_name": "", "version": "3" }), "{path}");
        let sig = &v["metadata"]["signature_def"]["signature_def"]["serving_default"];
        assert_eq!(sig["method_name"], "tensorflow/serving/predict", "{v}");
        let input = &emb.inputs()[0];
        let info = &sig["inputs"][&input.name];
        assert_eq!(info["dtype"], "DT_FLOAT", "{v}");
        assert_eq!(info["name"], input.name.as_str());
        assert_eq!(info["tensor_shape"]["unknown_rank"], false);
        let sizes: Vec<&str> =
            info["tensor_shape"]["dim"].as_array().unwrap().iter().map(|d| d["size"].as_str().unwrap()).collect();
        let want: Vec<String> =
            input.shape.iter().map(|d| if d.parse::<u64>().is_ok() { d.clone() } else { "-1".into() }).collect();
        assert_eq!(sizes, want, "{v}");
        assert!(sizes.contains(&"-1"), "a symbolic dimension should show as -1: {sizes:?}");
        assert!(sizes.contains(&"76"), "the fixed dimensions should show: {sizes:?}");
        assert_eq!(sig["outputs"].as_object().unwrap().len(), emb.outputs().len(), "{v}");
    }
    // Integer signatures: okay_nabu takes int8 and answers uint8.
    let (code, v) = get_json(&s.addr, "/v1/models/wake/metadata");
    assert_eq!(code, 200, "{v}");
    let sig = &v["metadata"]["signature_def"]["signature_def"]["serving_default"];
    let dtypes = |side: &str| -> Vec<String> {
        sig[side].as_object().unwrap().values().map(|t| t["dtype"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(dtypes("inputs"), ["DT_INT8"], "{v}");
    assert_eq!(dtypes("outputs"), ["DT_UINT8"], "{v}");

    assert_eq!(get_json(&s.addr, "/v1/models/nope/metadata").0, 404);
    let (code, v) = get_json(&s.addr, "/v1/models/emb/versions/2/metadata");
    assert_eq!(code, 404, "{v}");
    assert!(v["error"].as_str().unwrap().contains("\"3\""), "the error names the active version: {v}");
}

#[test]
fn curl_d_without_a_content_type_predicts_as_tf_serving_documents() {
    // The real curl, as TF Serving's REST docs use it: `-d` with no -H.
    let prefix = "openwakeword-js__hello_deepa";
    let e = entry(prefix);
    let input = references(&e, "ref_inputs").remove(0).1;
    let want = references(&e, "ref_outputs").remove(0).1;
    let s = server(
        &[("deepa", "1", load(&format!("{prefix}.onnx"), LoadOptions::default()), PoolSettings::default())],
        1 << 20,
    );
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("request.json");
    std::fs::write(&body, json!({ "instances": [to_json(&input)[0]] }).to_string()).unwrap();
    let out = std::process::Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}", "-d"])
        .arg(format!("@{}", body.display()))
        .arg(format!("http://{}/v1/models/deepa:predict", s.addr))
        .output()
        .expect("curl runs (scripts/setup.sh installs it)");
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    assert_eq!(code, "200", "{body}");
    let v: Value = serde_json::from_str(body).unwrap();
    assert_close("curl -d", &from_json(&v["predictions"], &want), &want, 0.0);
}
