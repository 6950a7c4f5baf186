//! `edge-fleet`, the fleet side of edge-agent. This first slice keeps a **device inventory**:
//! it reads every device's retained status, telemetry and acks from the broker and stores,
//! per device, its groups, online state and last-seen time, agent version, certificate
//! expiry, and each model's active and installed versions and health, in SQLite or
//! PostgreSQL; `GET /v1/devices` (and `edgectl devices`) lists them. With `[prometheus]
//! remote_write_url` it also writes every device's telemetry into Prometheus at the
//! samples' own times ([`export`]). It drives desired-state deployments
//! ([`deployments`]), and several instances (replicas, `share_group`) can share the work
//! over one PostgreSQL ([`session`], docs/fleet.md "Replicas"). docs/fleet.md says what is
//! built and what is not.
//!
//! # Layout
//!
//! ```text
//! broker ─> ingest (persistent MQTT session, manual acks)
//!             └─> inventory::observe + apply (pure) ─> db (SQLite | PostgreSQL)
//!                                                        └─> http: /v1/devices, /healthz, /metrics
//! broker ─> export (its own session, `{client_id}-metrics`; acks after Prometheus took it)
//!             └─> progress (dedup by device, seq; labels from db) ─> series ─> remote_write
//! ```
//!
//! - [`config`]: `fleet.toml` (`[mqtt]` as in ctl.toml, `[database]`, `[http]`), checked in
//!   full, errors naming the key.
//! - [`inventory`]: what a message says and how it changes a device's record; pure, tested
//!   without I/O.
//! - [`db`]: one query layer for both databases, the embedded migrations.
//! - [`ingest`]: the MQTT side: subscribe, decode, store, then ack.
//! - [`http`]: the JSON API and `/metrics`; [`metrics`]: the counters.
//! - [`export`]: telemetry to Prometheus over a session of its own ([`session`] holds
//!   the connection settings and subscriptions both sessions share): [`progress`]
//!   deduplicates by (device, seq), [`series`] maps a sample to `edge_device_*` series,
//!   [`remote_write`] sends them.
//! - [`deployments`]: desired-state deployments; [`artifacts`] the artifact store, with
//!   [`artifact_copies`] in the database for replicas.
//!
//! # Why sqlx's `Any` driver
//!
//! One query layer for SQLite and PostgreSQL means each query written once. sqlx's `Any`
//! driver picks the engine from the URL at run time and passes the same SQL to either;
//! the SQL the inventory needs (`$1` placeholders, `INSERT … ON CONFLICT … DO UPDATE`,
//! TEXT/BIGINT) is common to both engines. The alternative, both drivers behind a
//! trait of our own, would write each query twice (or generate it) for no gain at this
//! size. The price: `Any` maps only the basic types (no native timestamps, arrays or
//! JSON columns), so times are BIGINT milliseconds and lists are JSON text or rows. sqlx
//! is async throughout (SQLite runs on its own worker thread), so nothing blocks the
//! runtime. The migrations are plain SQL files embedded with `include_str!` and applied
//! by [`db::Db::migrate`], recorded in `fleet_migrations`, rather than with sqlx's
//! `migrate!` macro, which would build both drivers a second time for the proc-macro host.
//!
//! # Schema
//!
//! The migrations in `migrations/` are the schema, in order; docs/fleet.md has the table of
//! tables. Each step of a deployment is written at the row revision it read, and records that
//! two replicas may change at once are written under a per-key lock ([`db::Db`]), so
//! several instances can share one database.

#![deny(missing_docs)]

pub mod artifact_copies;
pub mod artifacts;
pub mod config;
pub mod db;
pub mod deployments;
pub mod export;
pub mod http;
pub mod ingest;
pub mod inventory;
pub mod metrics;
pub mod progress;
pub mod remote_write;
pub mod retention;
pub mod rollouts;
pub mod series;
pub mod session;
pub mod versions;

use tokio_util::sync::CancellationToken;

pub use config::Config;

/// Why the service stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Db(#[from] db::DbError),
    /// `[http] listen` cannot be bound.
    #[error("[http] listen {addr}: cannot bind: {source}; is another service on that port?")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The broker settings cannot be used.
    #[error(transparent)]
    Ingest(#[from] ingest::IngestError),
    /// The HTTP server failed.
    #[error("HTTP API: {0}")]
    Http(std::io::Error),
    /// `[http] token_file` cannot be read or holds no usable token.
    #[error("[http] token_file: {0}")]
    Token(String),
    /// The artifact store cannot be opened.
    #[error(transparent)]
    Artifacts(#[from] artifacts::ArtifactError),
}

/// Opens the database (running its migrations), binds the HTTP API, and ingests from the
/// broker until `cancel`.
pub async fn run(config: Config, cancel: CancellationToken) -> Result<(), FleetError> {
    let token = config.http.token_file.as_deref().map(http::Token::load).transpose().map_err(FleetError::Token)?;
    let db = db::Db::open(&config.database.url).await?;
    let metrics = metrics::Metrics::default();
    // Replicas share the artifacts through the database; one instance keeps files only.
    let copies = config.share_group.is_some().then(|| artifact_copies::Copies::new(db.clone()));
    let store = artifacts::Artifacts::open(&config.artifacts.dir, config.artifacts.max_bytes, copies).await?;
    let listener = tokio::net::TcpListener::bind(&config.http.listen)
        .await
        .map_err(|source| FleetError::Bind { addr: config.http.listen.clone(), source })?;
    tracing::info!(
        database = %db::redact(&config.database.url),
        http = %config.http.listen,
        broker = %config.mqtt.url,
        artifacts = %config.artifacts.dir.display(),
        "edge-fleet started"
    );
    let (out_tx, out_rx) = tokio::sync::mpsc::unbounded_channel();
    let deployments = deployments::Deployments::new(db.clone(), store.clone(), out_tx, metrics.deployments.clone());
    let sender = tokio::spawn(deployments::sender::run(
        config.mqtt.clone(),
        format!("{}-out", config.client_id),
        config.deployments.max_bytes_per_sec,
        store.clone(),
        db.clone(),
        out_rx,
        metrics.deployments.clone(),
        cancel.clone(),
    ));
    let ticker = tokio::spawn(deployments::ticker(deployments.clone(), cancel.clone()));
    let rollouts = rollouts::Rollouts::new(db.clone(), deployments.clone());
    let rollout_ticker = tokio::spawn(rollouts::ticker(rollouts.clone(), cancel.clone()));
    let keep = std::time::Duration::from_secs(config.artifacts.keep_days.saturating_mul(86_400));
    let retention = tokio::spawn(retention::run(db.clone(), store.clone(), keep, cancel.clone()));
    let mut router = http::router(db.clone(), metrics.clone())
        .merge(deployments::api::router(deployments.clone()))
        .merge(rollouts::api::router(rollouts.clone()))
        .merge(versions::router(db.clone()));
    if let Some(token) = &token {
        router = router.layer(axum::middleware::from_fn_with_state(token.clone(), http::require_token));
    }
    let server = tokio::spawn(http::serve(listener, router, cancel.clone()));
    let exporter = export::spawn(&config, db.clone(), metrics.export.clone(), cancel.clone());
    let ingested = ingest::run(
        config.mqtt,
        config.client_id,
        config.share_group,
        db.clone(),
        deployments,
        rollouts,
        metrics,
        cancel.clone(),
    )
    .await;
    // Whatever ended ingestion ends the service.
    cancel.cancel();
    let served = server.await;
    let _ = ticker.await;
    let _ = rollout_ticker.await;
    let _ = retention.await;
    if let Some(exporter) = exporter {
        let _ = exporter.await;
    }
    let sent = sender.await;
    db.close().await;
    ingested?;
    if let Ok(Err(e)) = sent {
        return Err(e.into());
    }
    match served {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(FleetError::Http(e)),
        Err(e) => Err(FleetError::Http(std::io::Error::other(e.to_string()))),
    }
}
