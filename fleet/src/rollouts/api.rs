//! The rollouts' HTTP routes (the types are `edge_proto::rollouts`): `POST /v1/rollouts`,
//! `GET /v1/rollouts`, `GET /v1/rollouts/{id}`, `POST /v1/rollouts/{id}/approve`.
//!
//! Errors are `{"error": "..."}` with 400 (the request is wrong: the message says how), 404,
//! 409 (not awaiting approval) and 503 (the database failed: retry); a deployment's own
//! refusals keep the statuses of `POST /v1/deployments`.

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use edge_proto::rollouts::NewRollout;

use super::{RolloutError, Rollouts};
use crate::deployments::DeployError;

/// Largest JSON request: two commands in hex and the options.
const MAX_JSON_BYTES: usize = 512 * 1024;

/// The routes.
pub fn router(rollouts: Rollouts) -> Router {
    Router::new()
        .route("/v1/rollouts", post(create).get(list))
        .route("/v1/rollouts/{id}", get(one))
        .route("/v1/rollouts/{id}/approve", post(approve))
        .layer(DefaultBodyLimit::max(MAX_JSON_BYTES))
        .with_state(rollouts)
}

fn error(e: RolloutError) -> Response {
    let status = match &e {
        RolloutError::Bad(_) => StatusCode::BAD_REQUEST,
        RolloutError::NotFound(_) => StatusCode::NOT_FOUND,
        RolloutError::NotAwaiting { .. } => StatusCode::CONFLICT,
        RolloutError::Deploy(DeployError::Db(_)) | RolloutError::Db(_) => {
            tracing::error!("{e}");
            StatusCode::SERVICE_UNAVAILABLE
        }
        RolloutError::Deploy(DeployError::NotFound(_)) => StatusCode::NOT_FOUND,
        RolloutError::Deploy(DeployError::Conflict(_) | DeployError::NotActive { .. }) => StatusCode::CONFLICT,
        RolloutError::Deploy(_) => StatusCode::BAD_REQUEST,
    };
    (status, Json(serde_json::json!({ "error": e.to_string() }))).into_response()
}

async fn create(State(r): State<Rollouts>, Json(new): Json<NewRollout>) -> Response {
    match r.create(&new).await {
        Ok(v) => (StatusCode::CREATED, Json(v)).into_response(),
        Err(e) => error(e),
    }
}

async fn list(State(r): State<Rollouts>) -> Response {
    match r.list().await {
        Ok(all) => Json(all).into_response(),
        Err(e) => error(e.into()),
    }
}

async fn one(State(r): State<Rollouts>, Path(id): Path<String>) -> Response {
    match r.get(&id).await {
        Ok(Some(v)) => Json(v).into_response(),
        Ok(None) => error(RolloutError::NotFound(id)),
        Err(e) => error(e.into()),
    }
}

async fn approve(State(r): State<Rollouts>, Path(id): Path<String>) -> Response {
    match r.approve(&id).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => error(e),
    }
}
