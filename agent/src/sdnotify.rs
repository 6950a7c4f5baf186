//! systemd service notifications (`sd_notify`): READY, STATUS, WATCHDOG and
//! EXTEND_TIMEOUT_USEC.
//!
//! Under `Type=notify` systemd passes a datagram socket in `NOTIFY_SOCKET`; the protocol is
//! one `KEY=value` line per field. Outside systemd the variable is unset and every call is a
//! no-op. The watchdog is pinged from a task on the daemon's own runtime, so a runtime that
//! hangs stops the pings and systemd restarts the service. systemd arms the watchdog only
//! at READY=1; before that the start timeout (`TimeoutStartSec=`, 90 s by default) applies,
//! which model loading can outlast on a slow board: the daemon asks for more with
//! [`Notifier::extend_timeout`] and a [`start_budget`] per model.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// A connection to systemd's notification socket, if there is one.
#[derive(Debug)]
pub struct Notifier {
    socket: Option<(UnixDatagram, String)>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`; without it, a notifier that does nothing.
    pub fn from_env() -> Notifier {
        Notifier::new(std::env::var("NOTIFY_SOCKET").ok())
    }

    /// A notifier for `path` (a filesystem path, or `@name` for the abstract namespace).
    pub fn new(path: Option<String>) -> Notifier {
        let socket = path.and_then(|p| UnixDatagram::unbound().ok().map(|s| (s, p)));
        Notifier { socket }
    }

    /// Whether systemd is listening.
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// Sends one notification (`READY=1`, `STATUS=...`, `WATCHDOG=1`).
    pub fn notify(&self, state: &str) {
        let Some((socket, path)) = &self.socket else { return };
        let result = if let Some(name) = path.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
        } else {
            socket.send_to(state.as_bytes(), path)
        };
        if let Err(e) = result {
            tracing::debug!("sd_notify {state:?}: {e}");
        }
    }

    /// Asks systemd for `by` more time in the current phase (start-up, before READY=1):
    /// `EXTEND_TIMEOUT_USEC=`. systemd only ever extends the deadline this way, never
    /// shortens it; a start that outlasts it is killed and, under `Restart=on-failure`,
    /// started again.
    pub fn extend_timeout(&self, by: Duration) {
        self.notify(&format!("EXTEND_TIMEOUT_USEC={}", by.as_micros()));
    }

    /// Half the watchdog period systemd asks for (`WATCHDOG_USEC`), if it asks.
    pub fn watchdog_interval() -> Option<Duration> {
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        if let Ok(pid) = std::env::var("WATCHDOG_PID") {
            if pid.parse::<u32>().ok() != Some(std::process::id()) {
                return None;
            }
        }
        (usec > 0).then(|| Duration::from_micros(usec / 2))
    }
}

/// How long one model may take to load and optimise before the start counts as hung. Not
/// measured on the slowest boards: a wide margin over the seconds the reference models take
/// on a development machine, short enough that a hung load does not hold the unit in
/// "activating" for long.
pub const LOAD_BUDGET_PER_MODEL: Duration = Duration::from_secs(120);

/// The start-up time to ask for before loading `models` models: [`LOAD_BUDGET_PER_MODEL`]
/// each, and at least one budget for the rest of the start.
pub fn start_budget(models: usize) -> Duration {
    LOAD_BUDGET_PER_MODEL.saturating_mul(models.clamp(1, u32::MAX as usize) as u32)
}

/// Until `cancel`: pings the watchdog every `watchdog` (if systemd asked for one) and sends
/// `STATUS=` whenever `status()` changes, checking every few seconds.
pub async fn supervise(
    notifier: std::sync::Arc<Notifier>,
    watchdog: Option<Duration>,
    status: impl Fn() -> String + Send + 'static,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let period = watchdog.unwrap_or(Duration::from_secs(5)).min(Duration::from_secs(5));
    let mut tick = tokio::time::interval(period);
    let mut last = String::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                notifier.notify("STOPPING=1");
                return Ok(());
            }
            _ = tick.tick() => {}
        }
        if watchdog.is_some() {
            notifier.notify("WATCHDOG=1");
        }
        let now = status();
        if now != last {
            notifier.notify(&format!("STATUS={now}"));
            last = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_each_state_as_one_datagram() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(Some(path.display().to_string()));
        assert!(n.enabled());
        n.notify("READY=1");
        n.notify("STATUS=connected");
        let mut buf = [0u8; 64];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STATUS=connected");
    }

    #[test]
    fn extend_timeout_sends_microseconds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        Notifier::new(Some(path.display().to_string())).extend_timeout(start_budget(3));
        let mut buf = [0u8; 64];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"EXTEND_TIMEOUT_USEC=360000000");
    }

    #[test]
    fn the_start_budget_grows_with_the_models_and_never_drops_to_zero() {
        assert_eq!(start_budget(0), LOAD_BUDGET_PER_MODEL);
        assert_eq!(start_budget(2), 2 * LOAD_BUDGET_PER_MODEL);
        assert!(start_budget(usize::MAX) >= start_budget(1000));
    }

    #[test]
    fn without_systemd_nothing_happens() {
        let n = Notifier::new(None);
        assert!(!n.enabled());
        n.notify("READY=1");
    }
}
