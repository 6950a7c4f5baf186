//! The accept loop of a listener: at most `max_connections` connections served at once
//! (one more is answered 503 and closed, never queued in memory), each served by hyper
//! with a header read timeout that also ends idle keep-alive connections, and an orderly
//! shutdown on cancel.
//!
//! axum's own `serve` has neither limit: it sets no timer, so hyper's header timeout is
//! off, and it accepts every connection.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::limits::HttpStats;

/// Connections being refused at once; beyond that a refused connection is just closed.
const MAX_REFUSING: usize = 32;
/// How long a refused connection is given to take its 503.
const REFUSE_WITHIN: Duration = Duration::from_secs(1);
/// How long open connections may take to finish their requests once the agent stops.
const DRAIN_WITHIN: Duration = Duration::from_secs(5);

/// The answer to a connection over the limit.
const BUSY: &str = "{\"error\":\"this agent serves [http] max_connections connections at once; retry shortly\"}";

/// How a listener serves its connections.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// How long a client may take to send its headers (and sit idle between requests).
    pub header_timeout: Duration,
}

/// Serves `app` on `listener` under `limits` until `cancel`.
pub async fn run(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    stats: Arc<HttpStats>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let tracker = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors, or a connection reset before it was accepted:
                // neither ends the listener. A short pause lets descriptors free up.
                Err(e) => {
                    tracing::warn!("HTTP accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            stats.refused("connections");
            tracing::debug!(max = limits.max_connections, "HTTP connection refused: too many open");
            if let Ok(slot) = refusing.clone().try_acquire_owned() {
                tracker.spawn(async move {
                    refuse(stream).await;
                    drop(slot);
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (app, stats, cancel) = (app.clone(), stats.clone(), cancel.clone());
        let header_timeout = limits.header_timeout;
        stats.connections.inc();
        tracker.spawn(async move {
            serve_connection(stream, app, header_timeout, &stats, cancel).await;
            stats.connections.dec();
            drop(permit);
        });
    }
    tracker.close();
    if tokio::time::timeout(DRAIN_WITHIN, tracker.wait()).await.is_err() {
        tracing::warn!("HTTP connections still open {DRAIN_WITHIN:?} after shutdown began; closing them");
    }
    Ok(())
}

async fn serve_connection(
    stream: TcpStream,
    app: Router,
    header_timeout: Duration,
    stats: &HttpStats,
    cancel: CancellationToken,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            stats.refused("header_timeout");
        }
        tracing::debug!("HTTP connection ended: {e}");
    }
}

/// Answers a connection over the limit with 503 and closes it. The request is read (and
/// dropped) for up to [`REFUSE_WITHIN`] so that closing does not reset the connection
/// before the client has read the answer.
async fn refuse(mut stream: TcpStream) {
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{BUSY}",
        BUSY.len()
    );
    let _ = tokio::time::timeout(REFUSE_WITHIN, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}
