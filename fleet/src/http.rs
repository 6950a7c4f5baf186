//! The HTTP API: `GET /v1/devices[?group=G]`, `GET /healthz`, `GET /metrics`.

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::db::Db;
use crate::metrics::Metrics;

#[derive(Clone)]
struct Api {
    db: Db,
    metrics: Metrics,
}

/// `?group=G`
#[derive(Debug, Deserialize)]
struct DevicesQuery {
    group: Option<String>,
}

/// The routes.
pub fn router(db: Db, metrics: Metrics) -> Router {
    Router::new()
        .route("/v1/devices", get(devices))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .with_state(Api { db, metrics })
}

/// Serves `router` on `listener` until `cancel`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(async move { cancel.cancelled().await }).await
}

fn db_failed(api: &Api, e: crate::db::DbError) -> Response {
    api.metrics.db_errors.inc();
    tracing::error!("{e}");
    (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "error": e.to_string() }))).into_response()
}

async fn devices(State(api): State<Api>, Query(q): Query<DevicesQuery>) -> Response {
    match api.db.devices(q.group.as_deref()).await {
        Ok(devices) => Json(devices).into_response(),
        Err(e) => db_failed(&api, e),
    }
}

/// Healthy when the database answers.
async fn healthz(State(api): State<Api>) -> Response {
    match api.db.counts().await {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => db_failed(&api, e),
    }
}

async fn metrics_text(State(api): State<Api>) -> Response {
    match api.db.counts().await {
        Ok((known, online)) => {
            api.metrics.devices_known.set(known);
            api.metrics.devices_online.set(online);
        }
        // The counters are still worth serving; the gauges keep their last values.
        Err(e) => {
            api.metrics.db_errors.inc();
            tracing::warn!("device gauges not refreshed: {e}");
        }
    }
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &api.metrics.registry()) {
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the metrics: {e}\n")).into_response();
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
}
