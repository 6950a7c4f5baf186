//! The HTTP inference API over the [`Registry`]: TF Serving's REST routes (`/v1`, here) and
//! the Open Inference Protocol's (`/v2`, KServe v2 / Triton, in [`super::v2`]).
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/models` | every model: name, version, state, signature |
//! | `GET /v1/models/{name}` | one model |
//! | `GET /v1/models/{name}/versions/{v}` | one version (only the active one is served) |
//! | `GET /v1/models/{name}[/versions/{v}]/metadata` | TF Serving's model metadata: the `serving_default` signature, dtypes as `DT_FLOAT`..., symbolic dimensions as `-1` |
//! | `POST /v1/models/{name}:predict` | JSON `{"inputs": ..}` or `{"instances": [..]}`; or, with `Content-Type: application/x-npy`, `.npy` images of the inputs back to back, answered the same way |
//! | `POST /v1/models/{name}/versions/{v}:predict` | the same, pinned to the active version |
//! | `POST /v1/models/{name}/sessions` | opens a session on a stateful model |
//! | `DELETE /v1/models/{name}/sessions/{id}` | closes it |
//! | `GET /v2/health/live`, `GET /v2/health/ready` | 200 when alive; when every configured model is active |
//! | `GET /v2` | server metadata: name, version, extensions (`binary_tensor_data`) |
//! | `GET /v2/models/{name}[/versions/{v}]` | model metadata: versions, platform, inputs and outputs with `FP32`-style datatypes and `-1` for dynamic dimensions |
//! | `GET /v2/models/{name}[/versions/{v}]/ready` | 200 when that model (version) is active, else 404 |
//! | `POST /v2/models/{name}[/versions/{v}]/infer` | Open Inference Protocol request, JSON `data` or binary tensors after an `Inference-Header-Content-Length` JSON header; outputs as JSON or binary |
//!
//! A predict names its session with `?session=ID`. Errors are `{"error": "..."}` with 400
//! (bad input), 404 (unknown model, version or session), 413 (body too large), 415 (content
//! type), 503 with `Retry-After` (queue full), 504 (timeout) or 500. In front of these
//! routes, [`crate::http`] answers 401 (no token), 408 (body too slow), 413 and 503 (byte
//! budget, connections) before a handler runs.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tract_core::internal::{DatumType, Tensor};

use super::json::{parse_request, render_response, InputSpec, JsonError};
use super::{Registry, ServeError, Served};
use crate::engine::TensorSpec;
use crate::npy;

/// Media type of the binary predict route.
pub const NPY_MEDIA_TYPE: &str = "application/x-npy";
/// What `curl -d` labels a body with when no `Content-Type` is given.
const CURL_DEFAULT_MEDIA_TYPE: &str = "application/x-www-form-urlencoded";

pub(super) fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": message.to_string() }))).into_response()
}

pub(super) fn serve_error(e: ServeError) -> Response {
    let status = match &e {
        ServeError::UnknownModel(_) | ServeError::UnknownSession(..) | ServeError::InactiveVersion(..) => {
            StatusCode::NOT_FOUND
        }
        ServeError::BadInput(_) | ServeError::Stateless(_) => StatusCode::BAD_REQUEST,
        ServeError::Busy(..) | ServeError::TooManySessions(_) => {
            let mut r = error(StatusCode::SERVICE_UNAVAILABLE, &e);
            r.headers_mut().insert(header::RETRY_AFTER, "1".parse().expect("static header"));
            return r;
        }
        ServeError::Timeout(..) => StatusCode::GATEWAY_TIMEOUT,
        ServeError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e)
}

fn spec_json(s: &TensorSpec) -> serde_json::Value {
    json!({ "name": s.name, "dtype": s.dtype, "shape": s.shape })
}

fn describe(s: &Served) -> serde_json::Value {
    json!({
        "name": s.name,
        "version": s.version,
        "state": "AVAILABLE",
        "stateful": s.model.is_stateful(),
        "inputs": s.inputs().iter().map(spec_json).collect::<Vec<_>>(),
        "outputs": s.outputs().iter().map(spec_json).collect::<Vec<_>>(),
        "model_version_status": [{
            "version": s.version,
            "state": "AVAILABLE",
            "status": { "error_code": "OK", "error_message": "" }
        }],
    })
}

async fn list(State(r): State<Arc<Registry>>) -> Response {
    Json(json!({ "models": r.list().iter().map(|s| describe(s)).collect::<Vec<_>>() })).into_response()
}

async fn model(State(r): State<Arc<Registry>>, Path(name): Path<String>) -> Response {
    match r.get(&name) {
        Ok(s) => Json(describe(&s)).into_response(),
        Err(e) => serve_error(e),
    }
}

pub(super) fn active_version(r: &Registry, name: &str, version: &str) -> Result<Arc<Served>, ServeError> {
    let served = r.get(name)?;
    if served.version != version {
        return Err(ServeError::InactiveVersion(name.into(), version.into(), served.version.clone()));
    }
    Ok(served)
}

async fn version(State(r): State<Arc<Registry>>, Path((name, v)): Path<(String, String)>) -> Response {
    match active_version(&r, &name, &v) {
        Ok(s) => Json(describe(&s)).into_response(),
        Err(e) => serve_error(e),
    }
}

#[derive(Debug, Deserialize)]
struct PredictQuery {
    session: Option<String>,
}

pub(super) fn input_specs(specs: &[TensorSpec]) -> Vec<(String, tract_core::internal::DatumType, Vec<Option<usize>>)> {
    specs.iter().map(|s| (s.name.clone(), s.datum_type(), s.shape.iter().map(|d| d.parse().ok()).collect())).collect()
}

fn parse_npy_stream(mut body: &[u8], count: usize) -> Result<Vec<Tensor>, String> {
    let mut out = vec![];
    while !body.is_empty() {
        let (t, used) = npy::read_prefix(body).map_err(|e| format!("input {}: {e}", out.len()))?;
        out.push(t);
        body = &body[used..];
    }
    if out.len() != count {
        return Err(format!("expected {count} .npy inputs back to back, got {}", out.len()));
    }
    Ok(out)
}

/// Bodies up to this size are parsed where they arrive; larger ones on tokio's blocking
/// pool, so that parsing a large body stalls neither the other connections nor the MQTT
/// link, which share the runtime's worker threads.
const PARSE_INLINE_BYTES: usize = 64 * 1024;

/// Runs `parse` (of a body of `size` bytes) off the runtime's worker threads when the body
/// is large. The byte budget of `[http] max_queued_bytes` bounds how many run at once.
pub(super) async fn off_runtime<T: Send + 'static>(
    size: usize,
    parse: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    if size <= PARSE_INLINE_BYTES {
        return Ok(parse());
    }
    match tokio::task::spawn_blocking(parse).await {
        Ok(parsed) => Ok(parsed),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(format!("parsing the request was cancelled: {e}")),
    }
}

async fn predict_on(
    r: &Registry,
    served: Arc<Served>,
    headers: &HeaderMap,
    query: PredictQuery,
    body: Bytes,
) -> Response {
    // Refusals of the request itself (415, 400) are counted here; whatever reaches the
    // model is counted by the registry.
    let started = std::time::Instant::now();
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    let binary = content_type.starts_with(NPY_MEDIA_TYPE) || content_type.starts_with("application/octet-stream");
    // `curl -d`, as TF Serving documents its API, labels a JSON body as a form: TF Serving
    // reads it as JSON whatever the label, so this does too.
    let json = content_type.starts_with("application/json") || content_type.starts_with(CURL_DEFAULT_MEDIA_TYPE);
    if !binary && !json {
        r.refused(&served.name, started.elapsed());
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content type {content_type:?}: send application/json or {NPY_MEDIA_TYPE}"),
        );
    }
    // An unknown session is the first thing to report, whatever the body holds.
    let session = match query.session.as_deref().map(|id| r.session(&served.name, id)).transpose() {
        Ok(session) => session,
        Err(e) => return serve_error(e),
    };
    let specs = input_specs(served.inputs());
    let parsed = off_runtime(body.len(), move || {
        if binary {
            parse_npy_stream(&body, specs.len()).map(|t| (None, t))
        } else {
            let views: Vec<InputSpec> =
                specs.iter().map(|(name, dtype, shape)| InputSpec { name, dtype: *dtype, shape }).collect();
            parse_request(&body, &views).map(|(form, t)| (Some(form), t)).map_err(|e: JsonError| e.to_string())
        }
    })
    .await
    .and_then(|r| r);
    let (form, inputs) = match parsed {
        Ok(p) => p,
        Err(m) => {
            r.refused(&served.name, started.elapsed());
            return error(StatusCode::BAD_REQUEST, m);
        }
    };
    let outputs = match r.predict_on(served.clone(), inputs, session).await {
        Ok(o) => o,
        Err(e) => return serve_error(e),
    };
    match form {
        None => {
            let mut buf = vec![];
            for t in &outputs {
                match npy::to_bytes(t) {
                    Ok(b) => buf.extend(b),
                    Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
                }
            }
            (
                [
                    (header::CONTENT_TYPE, NPY_MEDIA_TYPE.to_string()),
                    ("x-outputs".parse().unwrap(), outputs.len().to_string()),
                ],
                buf,
            )
                .into_response()
        }
        Some(form) => {
            let names: Vec<&str> = served.outputs().iter().map(|s| s.name.as_str()).collect();
            match render_response(form, &names, &outputs) {
                Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
            }
        }
    }
}

/// `POST /v1/models/{name}:predict`
async fn predict(
    State(r): State<Arc<Registry>>,
    Path(target): Path<String>,
    Query(query): Query<PredictQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(name) = target.strip_suffix(":predict") else {
        return error(StatusCode::NOT_FOUND, format!("no route POST /v1/models/{target}: use /v1/models/NAME:predict"));
    };
    match r.get(name) {
        Ok(served) => predict_on(&r, served, &headers, query, body).await,
        Err(e) => serve_error(e),
    }
}

/// `POST /v1/models/{name}/versions/{v}:predict`
async fn predict_version(
    State(r): State<Arc<Registry>>,
    Path((name, target)): Path<(String, String)>,
    Query(query): Query<PredictQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(v) = target.strip_suffix(":predict") else {
        return error(StatusCode::NOT_FOUND, format!("no route POST /v1/models/{name}/versions/{target}"));
    };
    match active_version(&r, &name, v) {
        Ok(served) => predict_on(&r, served, &headers, query, body).await,
        Err(e) => serve_error(e),
    }
}

async fn open_session(State(r): State<Arc<Registry>>, Path(name): Path<String>) -> Response {
    match r.open_session(&name) {
        Ok(id) => {
            (StatusCode::CREATED, Json(json!({ "session": id, "ttl_secs": r.session_ttl.as_secs() }))).into_response()
        }
        Err(e) => serve_error(e),
    }
}

async fn close_session(State(r): State<Arc<Registry>>, Path((name, id)): Path<(String, String)>) -> Response {
    match r.close_session(&name, &id) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => serve_error(e),
    }
}

/// TF Serving's name for an element type (`DataType` in its `types.proto`).
fn tf_dtype(dt: DatumType) -> &'static str {
    use DatumType as D;
    match dt.unquantized() {
        D::Bool => "DT_BOOL",
        D::U8 => "DT_UINT8",
        D::I8 => "DT_INT8",
        D::U16 => "DT_UINT16",
        D::I16 => "DT_INT16",
        D::U32 => "DT_UINT32",
        D::I32 => "DT_INT32",
        D::U64 => "DT_UINT64",
        D::I64 => "DT_INT64",
        D::F16 => "DT_HALF",
        D::F32 => "DT_FLOAT",
        D::F64 => "DT_DOUBLE",
        _ => "DT_INVALID",
    }
}

/// A spec's dimensions with symbolic ones as -1, as both TF Serving and the Open Inference
/// Protocol show a dimension of any size.
pub(super) fn dims_or_minus_one(s: &TensorSpec) -> Vec<i64> {
    s.shape.iter().map(|d| d.parse().unwrap_or(-1)).collect()
}

/// A `TensorInfo` as TF Serving prints it: int64 sizes as strings (protobuf's JSON mapping),
/// unnamed dimensions.
fn tensor_info(s: &TensorSpec) -> serde_json::Value {
    let dims: Vec<_> = dims_or_minus_one(s).iter().map(|d| json!({ "size": d.to_string(), "name": "" })).collect();
    json!({
        "dtype": tf_dtype(s.datum_type()),
        "tensor_shape": { "dim": dims, "unknown_rank": false },
        "name": s.name,
    })
}

/// `GET /v1/models/{name}[/versions/{v}]/metadata`: the model's one signature, under TF
/// Serving's default signature name, in the shape of its `GetModelMetadataResponse`.
fn metadata_json(s: &Served) -> Response {
    let map = |specs: &[TensorSpec]| -> serde_json::Map<String, serde_json::Value> {
        specs.iter().map(|t| (t.name.clone(), tensor_info(t))).collect()
    };
    Json(json!({
        "model_spec": { "name": s.name, "signature_name": "", "version": s.version },
        "metadata": { "signature_def": { "signature_def": { "serving_default": {
            "inputs": map(s.inputs()),
            "outputs": map(s.outputs()),
            "method_name": "tensorflow/serving/predict",
        }}}},
    }))
    .into_response()
}

async fn metadata(State(r): State<Arc<Registry>>, Path(name): Path<String>) -> Response {
    match r.get(&name) {
        Ok(s) => metadata_json(&s),
        Err(e) => serve_error(e),
    }
}

async fn version_metadata(State(r): State<Arc<Registry>>, Path((name, v)): Path<(String, String)>) -> Response {
    match active_version(&r, &name, &v) {
        Ok(s) => metadata_json(&s),
        Err(e) => serve_error(e),
    }
}

/// The `/v1` and `/v2` routes; requests larger than `max_body_bytes` get 413.
pub fn router(registry: Arc<Registry>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/models", get(list))
        .route("/v1/models/{target}", get(model).post(predict))
        .route("/v1/models/{name}/metadata", get(metadata))
        .route("/v1/models/{name}/versions/{target}", get(version).post(predict_version))
        .route("/v1/models/{name}/versions/{v}/metadata", get(version_metadata))
        .route("/v1/models/{name}/sessions", post(open_session))
        .route("/v1/models/{name}/sessions/{id}", delete(close_session))
        .merge(super::v2::routes())
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
        .with_state(registry)
}
