//! The daemon's components under supervision, and the signals that stop them.
//!
//! Each component runs as its own task ([`supervise`]). One that returns an error or
//! panics is logged, remembered as the [`Failed`] component, and cancels the one
//! [`CancellationToken`] every component watches: the others drain as they do on SIGTERM
//! ([`ShutdownSignal`]), and the daemon reports the failure
//! ([`crate::daemon::Stopped::Failed`]), which `edge-agent run` turns into exit code 70 so
//! that the service manager restarts it (vectordotdev/vector's `handle_errors` does the
//! same for its topology). Only the failure that started the shutdown counts: a component
//! that fails while the others are already draining is logged, not reported.
//! [`ShutdownSignal`] turns SIGTERM and Ctrl-C into the same cancellation.
//!
//! # Fault injection
//!
//! No component of the agent fails on anything reachable from outside the process (bad
//! input and full or read-only disks are logged and counted, and the component carries on),
//! so the process-level test of this path (`agent/tests/supervision.rs`) injects the
//! failure: `EDGE_AGENT_FAULT=NAME:error` or `EDGE_AGENT_FAULT=NAME:panic` makes the
//! component NAME (as named in `crate::daemon`: `link`, `telemetry`, `http`, ...) return an
//! error or panic as it starts, instead of running. It exists for tests only; a unit
//! never sets it.

use std::sync::{Arc, Mutex};

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The environment variable that injects a component failure (see the module docs).
pub const FAULT_ENV: &str = "EDGE_AGENT_FAULT";

/// The component whose failure started a shutdown, and why it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    /// The component's name, as given to [`supervise`].
    pub component: &'static str,
    /// Its error (with causes), or its panic message.
    pub reason: String,
}

/// The supervised components: a [`TaskTracker`] that also remembers the first failure.
#[derive(Debug, Default)]
pub struct Tracker {
    tasks: TaskTracker,
    failed: Arc<Mutex<Option<Failed>>>,
}

impl Tracker {
    /// No components yet.
    pub fn new() -> Tracker {
        Tracker::default()
    }

    /// No more components will be added: [`Tracker::wait`] can finish.
    pub fn close(&self) {
        self.tasks.close();
    }

    /// Waits until every component has returned (after [`Tracker::close`]).
    pub async fn wait(&self) {
        self.tasks.wait().await;
    }

    /// The failure that started the shutdown, if a component failed.
    pub fn failed(&self) -> Option<Failed> {
        self.failed.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Runs a component; an error or a panic is logged, recorded in `tracker` and cancels
/// everything.
pub fn supervise<F>(tracker: &Tracker, cancel: &CancellationToken, name: &'static str, fut: F)
where
    F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let cancel = cancel.clone();
    let failed = tracker.failed.clone();
    let fault = injected_fault(name);
    let handle = tokio::spawn(async move {
        match fault.as_deref() {
            None => fut.await,
            Some("panic") => panic!("injected fault ({FAULT_ENV}={name}:panic)"),
            Some(kind) => anyhow::bail!("injected fault ({FAULT_ENV}={name}:{kind})"),
        }
    });
    tracker.tasks.spawn(async move {
        let reason = match handle.await {
            Ok(Ok(())) => {
                tracing::debug!("{name} stopped");
                return;
            }
            Ok(Err(e)) => format!("{e:#}"),
            Err(e) if e.is_panic() => format!("panicked: {}", panic_message(e.into_panic())),
            Err(e) => format!("{e}"),
        };
        if cancel.is_cancelled() {
            tracing::warn!(component = name, "{name} failed while shutting down: {reason}");
            return;
        }
        tracing::error!(component = name, "{name} failed: {reason}; shutting down");
        failed.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(Failed { component: name, reason });
        cancel.cancel();
    });
}

/// What `EDGE_AGENT_FAULT` asks of component `name`, if anything (see the module docs).
fn injected_fault(name: &str) -> Option<String> {
    let spec = std::env::var(FAULT_ENV).ok()?;
    let (component, kind) = spec.rsplit_once(':')?;
    (component == name).then(|| kind.to_string())
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => payload.downcast_ref::<&str>().map(|s| s.to_string()).unwrap_or_else(|| "(no message)".into()),
    }
}

/// SIGTERM and SIGINT (Ctrl-C), listened for from the moment [`ShutdownSignal::listen`]
/// returns. Make it before READY=1: until a listener exists, either signal kills the
/// process with its default action, so a `systemctl stop` right after READY would skip the
/// orderly shutdown (found by `agent/tests/supervision.rs`: the agent died of SIGTERM).
#[derive(Debug)]
pub struct ShutdownSignal {
    term: Option<Signal>,
    interrupt: Option<Signal>,
}

impl ShutdownSignal {
    /// Starts listening (inside the runtime). A signal that cannot be listened for is
    /// logged and never arrives.
    pub fn listen() -> ShutdownSignal {
        let listen = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| tracing::warn!("cannot listen for {name}: {e}")).ok()
        };
        ShutdownSignal {
            term: listen(SignalKind::terminate(), "SIGTERM"),
            interrupt: listen(SignalKind::interrupt(), "SIGINT"),
        }
    }

    /// Waits for SIGTERM, Ctrl-C or a cancellation (a failed component, a `restart`
    /// command), then cancels `cancel` so that every component drains.
    pub async fn wait(mut self, cancel: CancellationToken) {
        async fn recv(s: &mut Option<Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = recv(&mut self.term) => tracing::info!("SIGTERM: shutting down"),
            _ = recv(&mut self.interrupt) => tracing::info!("interrupt: shutting down"),
            _ = cancel.cancelled() => {}
        }
        cancel.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A component that runs until cancelled, then says it drained.
    fn drains(
        cancel: &CancellationToken,
        drained: &Arc<Mutex<bool>>,
    ) -> impl std::future::Future<Output = anyhow::Result<()>> {
        let (cancel, drained) = (cancel.clone(), drained.clone());
        async move {
            cancel.cancelled().await;
            *drained.lock().unwrap() = true;
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_failing_component_is_named_and_the_others_drain() {
        let (tracker, cancel, drained) = (Tracker::new(), CancellationToken::new(), Arc::new(Mutex::new(false)));
        supervise(&tracker, &cancel, "steady", drains(&cancel, &drained));
        supervise(&tracker, &cancel, "broken", async { Err(anyhow::anyhow!("disk gone").context("writing x")) });
        tracker.close();
        tracker.wait().await;
        assert!(cancel.is_cancelled());
        assert!(*drained.lock().unwrap(), "the other component drained");
        assert_eq!(tracker.failed(), Some(Failed { component: "broken", reason: "writing x: disk gone".into() }));
    }

    #[tokio::test]
    async fn a_panicking_component_is_named_with_its_message() {
        let (tracker, cancel, drained) = (Tracker::new(), CancellationToken::new(), Arc::new(Mutex::new(false)));
        supervise(&tracker, &cancel, "steady", drains(&cancel, &drained));
        supervise(&tracker, &cancel, "crashy", async { panic!("interval is zero") });
        tracker.close();
        tracker.wait().await;
        assert!(*drained.lock().unwrap());
        assert_eq!(tracker.failed(), Some(Failed { component: "crashy", reason: "panicked: interval is zero".into() }));
    }

    #[tokio::test]
    async fn a_failure_while_draining_is_not_what_stopped_the_agent() {
        // A component that errors on its way out after SIGTERM must not turn an orderly stop
        // into a reported failure (exit 0 would become 70).
        let (tracker, cancel) = (Tracker::new(), CancellationToken::new());
        let c = cancel.clone();
        supervise(&tracker, &cancel, "sloppy", async move {
            c.cancelled().await;
            anyhow::bail!("stream closed")
        });
        tracker.close();
        cancel.cancel();
        tracker.wait().await;
        assert_eq!(tracker.failed(), None);
    }

    #[tokio::test]
    async fn components_that_return_cleanly_are_no_failure() {
        let (tracker, cancel) = (Tracker::new(), CancellationToken::new());
        supervise(&tracker, &cancel, "done", async { Ok(()) });
        tracker.close();
        tracker.wait().await;
        assert!(!cancel.is_cancelled(), "a component that returns Ok does not stop the others");
        assert_eq!(tracker.failed(), None);
    }
}
