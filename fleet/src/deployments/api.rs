//! The deployments' HTTP routes (the types are `edge_proto::deployments`):
//!
//! - `PUT /v1/artifacts/{sha256}` (raw bytes; 201, or 200 when stored already),
//!   `GET /v1/artifacts/{sha256}` (`{sha256, bytes}` or 404);
//! - `POST /v1/deployments`, `GET /v1/deployments`, `GET /v1/deployments/{id}`,
//!   `POST /v1/deployments/{id}/cancel`.
//!
//! Errors are `{"error": "..."}` with 400 (the request is wrong: the message says how),
//! 404, 409 (a different deployment under the same id), 413 (over `[artifacts]
//! max_bytes`), 503 (the database or the artifact store failed: retry).

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use edge_proto::deployments::{CancelDeployment, NewDeployment};

use super::{DeployError, Deployments};
use crate::artifacts::ArtifactError;

/// Largest JSON request: a command is at most 64 KiB, twice that in hex.
const MAX_JSON_BYTES: usize = 256 * 1024;

/// The routes.
pub fn router(deployments: Deployments) -> Router {
    let json = Router::new()
        .route("/v1/deployments", post(create).get(list))
        .route("/v1/deployments/{id}", get(one))
        .route("/v1/deployments/{id}/cancel", post(cancel))
        .layer(DefaultBodyLimit::max(MAX_JSON_BYTES));
    // The store bounds uploads itself ([artifacts] max_bytes) while streaming to disk.
    let artifacts =
        Router::new().route("/v1/artifacts/{sha256}", get(artifact).put(upload)).layer(DefaultBodyLimit::disable());
    json.merge(artifacts).with_state(deployments)
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

fn artifact_error(e: ArtifactError) -> Response {
    let status = match &e {
        ArtifactError::BadName(_) | ArtifactError::HashMismatch { .. } | ArtifactError::Mismatch { .. } => {
            StatusCode::BAD_REQUEST
        }
        ArtifactError::Upload(_) => StatusCode::BAD_REQUEST,
        ArtifactError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        ArtifactError::Missing(_) => StatusCode::NOT_FOUND,
        ArtifactError::Io { .. } | ArtifactError::Copy { .. } => {
            tracing::error!("{e}");
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    error(status, e.to_string())
}

fn deploy_error(e: DeployError) -> Response {
    let status = match e {
        DeployError::Artifact(ArtifactError::Missing(_)) => StatusCode::BAD_REQUEST,
        DeployError::Artifact(a) => return artifact_error(a),
        DeployError::BadCommand(_) | DeployError::Expired { .. } => StatusCode::BAD_REQUEST,
        DeployError::Conflict(_) | DeployError::NotActive { .. } => StatusCode::CONFLICT,
        DeployError::NotFound(_) => StatusCode::NOT_FOUND,
        DeployError::Db(_) => {
            tracing::error!("{e}");
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    error(status, e.to_string())
}

async fn upload(State(d): State<Deployments>, Path(sha256): Path<String>, body: Body) -> Response {
    let existed = matches!(d.artifacts().size(&sha256).await, Ok(Some(_)));
    match d.artifacts().put(&sha256, body).await {
        Ok(bytes) => {
            let status = if existed { StatusCode::OK } else { StatusCode::CREATED };
            (status, Json(serde_json::json!({ "sha256": sha256, "bytes": bytes }))).into_response()
        }
        Err(e) => artifact_error(e),
    }
}

async fn artifact(State(d): State<Deployments>, Path(sha256): Path<String>) -> Response {
    match d.artifacts().size(&sha256).await {
        Ok(Some(bytes)) => Json(serde_json::json!({ "sha256": sha256, "bytes": bytes })).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, ArtifactError::Missing(sha256).to_string()),
        Err(e) => artifact_error(e),
    }
}

async fn create(State(d): State<Deployments>, Json(new): Json<NewDeployment>) -> Response {
    match d.create(&new).await {
        Ok(dep) => (StatusCode::CREATED, Json(dep)).into_response(),
        Err(e) => deploy_error(e),
    }
}

async fn list(State(d): State<Deployments>) -> Response {
    match d.list().await {
        Ok(all) => Json(all).into_response(),
        Err(e) => deploy_error(e.into()),
    }
}

async fn one(State(d): State<Deployments>, Path(id): Path<String>) -> Response {
    match d.get(&id).await {
        Ok(Some(dep)) => Json(dep).into_response(),
        Ok(None) => deploy_error(DeployError::NotFound(id)),
        Err(e) => deploy_error(e.into()),
    }
}

async fn cancel(State(d): State<Deployments>, Path(id): Path<String>, Json(c): Json<CancelDeployment>) -> Response {
    match d.cancel(&id, &c).await {
        Ok(dep) => Json(dep).into_response(),
        Err(e) => deploy_error(e),
    }
}
