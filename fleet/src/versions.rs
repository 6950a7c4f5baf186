//! A/B across the fleet: each version of a model pooled over the devices that report
//! figures of it (telemetry version 4), side by side (`GET /v1/models/{name}/versions`,
//! `edgectl compare`).
//!
//! Figures are cumulative since each agent started, so a device's share weighs by its
//! traffic; a device that restarted counts from its restart. Devices whose figures were not
//! updated within the window asked for (a day by default) are left out.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use edge_proto::rollouts::{VersionReport, VersionSummary};
use edge_proto::telemetry::VersionStats;
use serde::Deserialize;

use crate::db::{now_ms, Db, DbError};

/// The window when none is asked for.
pub const DEFAULT_SINCE_SECS: u64 = 24 * 3600;

/// Pools each device's figures by version: `rows` are (device, figures).
pub fn report(model: &str, since_secs: u64, rows: &[(String, VersionStats)]) -> VersionReport {
    let mut by_version: BTreeMap<&str, (VersionStats, u64, u64)> = BTreeMap::new();
    for (_, v) in rows {
        let entry = by_version.entry(&v.version).or_default();
        entry.0.merge(v);
        entry.1 += 1;
        entry.2 += u64::from(v.active);
    }
    let ms = |v: &VersionStats, q| v.latency_quantile(q).map(|s| s * 1e3);
    let versions = by_version
        .into_iter()
        .map(|(version, (v, devices, active_on))| VersionSummary {
            version: version.to_string(),
            devices,
            active_on,
            requests: v.requests,
            failures: v.failures,
            error_rate: if v.requests == 0 { 0.0 } else { v.failures as f64 / v.requests as f64 },
            p50_ms: ms(&v, 0.5),
            p95_ms: ms(&v, 0.95),
            p99_ms: ms(&v, 0.99),
        })
        .collect();
    VersionReport { model: model.to_string(), since_secs, versions }
}

#[derive(Deserialize)]
struct Window {
    since_secs: Option<u64>,
}

/// The route.
pub fn router(db: Db) -> Router {
    Router::new().route("/v1/models/{name}/versions", get(versions)).with_state(db)
}

async fn versions(State(db): State<Db>, Path(name): Path<String>, Query(w): Query<Window>) -> Response {
    let since_secs = w.since_secs.unwrap_or(DEFAULT_SINCE_SECS);
    let since = now_ms().saturating_sub((since_secs.min(i64::MAX as u64 / 1000) * 1000) as i64);
    match db.model_versions(&name, since).await {
        Ok(rows) => Json(report(&name, since_secs, &rows)).into_response(),
        Err(e) => {
            tracing::error!("{e}");
            let body = serde_json::json!({ "error": e.to_string() });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

impl Db {
    /// Every device's figures of `model`'s versions updated since `since` (ms).
    pub async fn model_versions(&self, model: &str, since: i64) -> Result<Vec<(String, VersionStats)>, DbError> {
        use sqlx::Row as _;
        let rows = sqlx::query("SELECT device, stats FROM device_versions WHERE model = $1 AND updated_at >= $2")
            .bind(model)
            .bind(since)
            .fetch_all(self.pool())
            .await
            .map_err(crate::db::query("read version figures"))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let device: String = r.try_get(0).map_err(crate::db::query("read version figures"))?;
            let text: String = r.try_get(1).map_err(crate::db::query("read version figures"))?;
            if let Ok(v) = serde_json::from_str(&text) {
                out.push((device, v));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_proto::telemetry::LATENCY_BUCKETS;

    fn stats(version: &str, active: bool, requests: u64, failures: u64, bucket: usize) -> VersionStats {
        VersionStats {
            name: "m".into(),
            version: version.into(),
            active,
            requests,
            failures,
            buckets: (0..LATENCY_BUCKETS.len()).map(|i| if i >= bucket { requests } else { 0 }).collect(),
            timed: requests,
            sum_secs: 0.0,
            shadow: false,
            compared: 0,
            agreed: 0,
            max_abs_diff: 0.0,
        }
    }

    #[test]
    fn versions_are_pooled_over_the_devices_that_ran_them() {
        let rows = vec![
            ("a".to_string(), stats("1", false, 900, 9, 5)),
            ("a".to_string(), stats("2", true, 100, 0, 8)),
            ("b".to_string(), stats("1", true, 100, 1, 5)),
        ];
        let r = report("m", 60, &rows);
        let [v1, v2] = r.versions.try_into().unwrap();
        assert_eq!((v1.version.as_str(), v1.devices, v1.active_on, v1.requests, v1.failures), ("1", 2, 1, 1000, 10));
        assert!((v1.error_rate - 0.01).abs() < 1e-9);
        // Interpolated inside (0.8, 1.6] and (6.4, 12.8] ms.
        assert!((v1.p95_ms.unwrap() - 1.56).abs() < 1e-9 && (v2.p95_ms.unwrap() - 12.48).abs() < 1e-9, "{v1:?} {v2:?}");
        assert_eq!((v2.devices, v2.active_on), (1, 1));
    }
}
