//! The Open Inference Protocol's REST routes (KServe v2, what Triton serves and its clients
//! call), translated onto the same [`Registry`] path as the TF Serving routes in
//! [`super::api`]: a request here is decoded into tensors, run by
//! [`Registry::predict_on`] (the one queue, timeout and metrics every request goes through),
//! and the outputs encoded back. Nothing here runs a model.
//!
//! - Health: `GET /v2/health/live` is 200 while the process answers; `GET /v2/health/ready`
//!   is 200 once every configured model is active and 503 before (the broker link, which
//!   `/readyz` also waits for, does not matter to local inference).
//! - Metadata: `GET /v2` names the server and its one extension, `binary_tensor_data`;
//!   `GET /v2/models/NAME[/versions/V]` gives the model's inputs and outputs with the
//!   protocol's datatypes (`FP32`, `INT8`, `UINT8`, ...) and `-1` for a dynamic dimension.
//!   Only the active version is served: another version is a 404 that names the active one.
//! - Inference: `POST /v2/models/NAME[/versions/V]/infer`; the body's format is
//!   [`infer`]'s to decode and encode.
//!
//! Errors are `{"error": "..."}` with the v1 routes' statuses ([`super::api::serve_error`]):
//! 400 for a request that does not fit the model, 404 for an unknown model or version, 413
//! for a body over `[http] max_body_bytes`, 415 for a compressed body, 503 (with
//! `Retry-After`) for a full queue, 504 for a timeout.

mod infer;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tract_core::internal::DatumType;

use super::api::{active_version, dims_or_minus_one, error, serve_error};
use super::{Registry, ServeError, Served};
use crate::engine::{Format, TensorSpec};

pub use infer::{decode, encode, Decoded, InferError, Wanted};

/// The request and response header that says how many leading body bytes are JSON, the
/// rest being binary tensors (the `binary_tensor_data` extension).
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// The protocol's name for an element type; `None` for one it has no name for.
pub fn datatype(dt: DatumType) -> Option<&'static str> {
    use DatumType as D;
    Some(match dt.unquantized() {
        D::Bool => "BOOL",
        D::U8 => "UINT8",
        D::U16 => "UINT16",
        D::U32 => "UINT32",
        D::U64 => "UINT64",
        D::I8 => "INT8",
        D::I16 => "INT16",
        D::I32 => "INT32",
        D::I64 => "INT64",
        D::F16 => "FP16",
        D::F32 => "FP32",
        D::F64 => "FP64",
        _ => return None,
    })
}

/// The `platform` of model metadata: Triton spells it `<runtime>_<format>`
/// (`onnxruntime_onnx`); here the runtime is tract.
fn platform(format: Format) -> &'static str {
    match format {
        Format::Onnx => "tract_onnx",
        Format::Tflite => "tract_tflite",
        Format::Nnef => "tract_nnef",
    }
}

fn tensor_metadata(s: &TensorSpec) -> serde_json::Value {
    json!({
        "name": s.name,
        "datatype": datatype(s.datum_type()).unwrap_or("UNKNOWN"),
        "shape": dims_or_minus_one(s),
    })
}

fn model_metadata(s: &Served) -> Response {
    Json(json!({
        "name": s.name,
        "versions": [s.version],
        "platform": platform(s.model.format()),
        "inputs": s.inputs().iter().map(tensor_metadata).collect::<Vec<_>>(),
        "outputs": s.outputs().iter().map(tensor_metadata).collect::<Vec<_>>(),
    }))
    .into_response()
}

async fn live() -> Response {
    Json(json!({ "live": true })).into_response()
}

async fn ready(State(r): State<Arc<Registry>>) -> Response {
    let missing = r.missing();
    if missing.is_empty() {
        Json(json!({ "ready": true })).into_response()
    } else {
        error(StatusCode::SERVICE_UNAVAILABLE, format!("models not loaded yet: {}", missing.join(", ")))
    }
}

async fn server_metadata() -> Response {
    Json(json!({
        "name": "edge-agent",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    }))
    .into_response()
}

async fn model(State(r): State<Arc<Registry>>, Path(name): Path<String>) -> Response {
    r.get(&name).map_or_else(serve_error, |s| model_metadata(&s))
}

async fn version(State(r): State<Arc<Registry>>, Path((name, v)): Path<(String, String)>) -> Response {
    active_version(&r, &name, &v).map_or_else(serve_error, |s| model_metadata(&s))
}

fn ready_json(s: &Served) -> Response {
    Json(json!({ "name": s.name, "version": s.version, "ready": true })).into_response()
}

async fn model_ready(State(r): State<Arc<Registry>>, Path(name): Path<String>) -> Response {
    r.get(&name).map_or_else(serve_error, |s| ready_json(&s))
}

async fn version_ready(State(r): State<Arc<Registry>>, Path((name, v)): Path<(String, String)>) -> Response {
    active_version(&r, &name, &v).map_or_else(serve_error, |s| ready_json(&s))
}

async fn infer_model(
    State(r): State<Arc<Registry>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match r.get(&name) {
        Ok(served) => infer_on(&r, served, &headers, body).await,
        Err(e) => serve_error(e),
    }
}

async fn infer_version(
    State(r): State<Arc<Registry>>,
    Path((name, v)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match active_version(&r, &name, &v) {
        Ok(served) => infer_on(&r, served, &headers, body).await,
        Err(e) => serve_error(e),
    }
}

/// Decodes, runs on `served` through the registry, encodes.
async fn infer_on(r: &Registry, served: Arc<Served>, headers: &HeaderMap, body: Bytes) -> Response {
    // Refusals of the request itself (415, 400) are counted here, as on /v1; whatever
    // reaches the model is counted by the registry.
    let started = std::time::Instant::now();
    // tritonclient compresses only when asked to; this agent does not inflate bodies.
    if let Some(enc) = headers.get(header::CONTENT_ENCODING) {
        if enc.as_bytes() != b"identity" {
            r.refused(&served.name, started.elapsed());
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "Content-Encoding {:?}: compressed requests are not supported; send the body uncompressed",
                    String::from_utf8_lossy(enc.as_bytes())
                ),
            );
        }
    }
    let header_length = match headers.get(HEADER_LENGTH) {
        None => None,
        Some(v) => match v.to_str().ok().and_then(|v| v.trim().parse::<usize>().ok()) {
            Some(n) => Some(n),
            None => {
                r.refused(&served.name, started.elapsed());
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "header Inference-Header-Content-Length is {:?}: expected the JSON header's length in bytes",
                        String::from_utf8_lossy(v.as_bytes())
                    ),
                );
            }
        },
    };
    let on = served.clone();
    let decoded = super::api::off_runtime(body.len(), move || decode(&body, header_length, on.inputs(), on.outputs()))
        .await
        .map_err(InferError::Request)
        .and_then(|r| r);
    let request = match decoded {
        Ok(d) => d,
        Err(e) => {
            r.refused(&served.name, started.elapsed());
            return infer_error(e);
        }
    };
    let outputs = match r.predict_on(served.clone(), request.inputs, None).await {
        Ok(o) => o,
        Err(e) => return serve_error(e),
    };
    match encode(&served.name, &served.version, request.id.as_deref(), served.outputs(), &outputs, &request.outputs) {
        Ok((body, None)) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Ok((body, Some(json_len))) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                (header::HeaderName::from_static(HEADER_LENGTH), json_len.to_string()),
            ],
            body,
        )
            .into_response(),
        Err(e) => infer_error(e),
    }
}

fn infer_error(e: InferError) -> Response {
    match e {
        InferError::Request(_) => serve_error(ServeError::BadInput(e.to_string())),
        InferError::Output(_) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// The `/v2` routes, merged into [`super::api::router`] (which sets the body limit).
pub(super) fn routes() -> Router<Arc<Registry>> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer_model))
        .route("/v2/models/{name}/versions/{v}", get(version))
        .route("/v2/models/{name}/versions/{v}/ready", get(version_ready))
        .route("/v2/models/{name}/versions/{v}/infer", post(infer_version))
}
