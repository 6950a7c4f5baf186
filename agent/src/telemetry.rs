//! Telemetry: samples the box, the agent and its models on an interval, and hands each
//! encoded sample to the link.
//!
//! One `sysinfo::System` lives for the agent's lifetime and refreshes only what is
//! reported: CPU usage (which needs two refreshes at least `MINIMUM_CPU_UPDATE_INTERVAL`
//! apart, so the first sample primes it), memory, and this process. Free disk space comes
//! from one `statvfs` of `state_dir`, not a scan of every mount.
//!
//! Sequence numbers only increase, across restarts too, and never stop the agent ([`seq`]).

pub mod seq;

pub use seq::SeqStore;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_proto::codec::Versioned;
use edge_proto::telemetry::{Agent, Cpu, Disk, Encoding, Link, Mem, ModelStats, Net, Telemetry as Sample, Temp};
use sysinfo::{Components, Pid, ProcessRefreshKind, ProcessesToUpdate, System};
use tokio_util::sync::CancellationToken;

use crate::link::{LinkHandle, LinkStats};
use crate::stats::InferenceStats;

/// Bytes received and sent over every interface but loopback, from `/proc/net/dev`: one
/// read, where sysinfo's network refresh reads a dozen sysfs files per interface and asks
/// netlink for addresses the agent does not report.
fn net_totals(proc_net_dev: &str) -> (u64, u64) {
    proc_net_dev
        .lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(iface, _)| iface.trim() != "lo")
        .filter_map(|(_, counters)| {
            let fields: Vec<u64> = counters.split_whitespace().filter_map(|f| f.parse().ok()).collect();
            // receive: bytes packets errs drop fifo frame compressed multicast; then transmit.
            (fields.len() >= 16).then(|| (fields[0], fields[8]))
        })
        .fold((0, 0), |(rx, tx), (r, t)| (rx + r, tx + t))
}

/// A reading as a number JSON can carry: sysinfo and the latency window can yield NaN,
/// which JSON writes as `null`, and which no consumer wants in a gauge.
fn finite(x: f32) -> f32 {
    if x.is_finite() {
        x
    } else {
        0.0
    }
}

/// Samples the box.
pub struct Sampler {
    device: String,
    state_dir: PathBuf,
    disk: Arc<crate::disk::DiskState>,
    cert_not_after: Option<i64>,
    sys: System,
    components: Option<Components>,
    pid: Option<Pid>,
    started: Instant,
}

fn statvfs(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frsize = st.f_frsize as u64;
    Some((st.f_bavail as u64 * frsize, st.f_blocks as u64 * frsize))
}

impl Sampler {
    /// A sampler for this process; the first CPU figures appear from the second sample.
    /// `disk` says whether the state directory is full; `cert_not_after` is the device
    /// certificate's expiry, read once at start (a new certificate means a restart).
    pub fn new(
        device: &str,
        state_dir: &Path,
        disk: Arc<crate::disk::DiskState>,
        cert_not_after: Option<i64>,
    ) -> Result<Sampler, sysinfo::Error> {
        let mut sys = System::new()?;
        sys.refresh_cpu_usage();
        let pid = sysinfo::get_current_pid().ok();
        let components = Components::new_with_refreshed_list().ok().filter(|c| !c.is_empty());
        Ok(Sampler {
            device: device.to_string(),
            state_dir: state_dir.to_path_buf(),
            disk,
            cert_not_after,
            sys,
            components,
            pid,
            started: Instant::now(),
        })
    }

    /// One sample, numbered `seq`.
    pub fn sample(&mut self, seq: u64, link: &LinkStats, models: &InferenceStats) -> Sample {
        self.sys.refresh_cpu_usage();
        self.sys.refresh_memory();
        let (rss_bytes, cpu_pct) = match self.pid {
            Some(pid) => {
                self.sys.refresh_processes_specifics(
                    ProcessesToUpdate::Some(&[pid]),
                    false,
                    ProcessRefreshKind::nothing().with_memory().with_cpu(),
                );
                self.sys.process(pid).map(|p| (p.memory(), finite(p.cpu_usage()))).unwrap_or((0, 0.0))
            }
            None => (0, 0.0),
        };
        let (rx_bytes, tx_bytes) = std::fs::read_to_string("/proc/net/dev").map(|t| net_totals(&t)).unwrap_or((0, 0));
        let temps = match &mut self.components {
            Some(c) => {
                c.refresh(false);
                c.iter()
                    .filter_map(|c| {
                        let celsius = c.temperature().filter(|t| t.is_finite())?;
                        Some(Temp { label: c.label().to_string(), celsius })
                    })
                    .collect()
            }
            None => vec![],
        };
        let (free_bytes, total_bytes) = statvfs(&self.state_dir).unwrap_or((0, 0));
        let load = System::load_average()
            .map(|l| [l.one as f32, l.five as f32, l.fifteen as f32].map(finite))
            .unwrap_or_default();
        Sample {
            version: Sample::VERSION,
            device: self.device.clone(),
            seq,
            ts: crate::clock::now_ms(),
            uptime_secs: System::uptime().unwrap_or(0),
            cpu: Cpu {
                total_pct: finite(self.sys.global_cpu_usage()),
                per_core_pct: self.sys.cpus().iter().map(|c| finite(c.usage())).collect(),
            },
            load,
            mem: Mem {
                total_bytes: self.sys.total_memory(),
                used_bytes: self.sys.used_memory(),
                available_bytes: self.sys.available_memory(),
                swap_total_bytes: self.sys.total_swap(),
                swap_used_bytes: self.sys.used_swap(),
            },
            agent: Agent {
                version: env!("CARGO_PKG_VERSION").to_string(),
                rss_bytes,
                cpu_pct,
                uptime_secs: self.started.elapsed().as_secs(),
            },
            disk: Disk { free_bytes, total_bytes },
            temps,
            net: Net { rx_bytes, tx_bytes },
            models: models
                .snapshot()
                .into_iter()
                .map(|m| ModelStats {
                    p50_ms: finite(m.p50_ms),
                    p95_ms: finite(m.p95_ms),
                    p99_ms: finite(m.p99_ms),
                    ..m
                })
                .collect(),
            link: Link {
                reconnects: link.reconnects.load(Ordering::Relaxed),
                queued: link.queued.load(Ordering::Relaxed),
                dropped: link.dropped(),
                bytes_sent: link.bytes_sent.load(Ordering::Relaxed),
            },
            disk_full: self.disk.full(),
            cert_not_after: self.cert_not_after,
            latency: models.latencies(),
            versions: models.versions(),
            tensors: models.tensors.summaries(),
        }
    }
}

/// The telemetry component: samples every `interval` and sends the encoded sample to the
/// link.
pub struct Telemetry {
    /// Sampler.
    pub sampler: Sampler,
    /// Sequence numbers.
    pub seq: SeqStore,
    /// Time between samples; the `set-config` command changes it at run time.
    pub interval: tokio::sync::watch::Receiver<Duration>,
    /// Where samples go.
    pub link: LinkHandle,
    /// Link counters, reported in each sample.
    pub link_stats: Arc<LinkStats>,
    /// Model counters, reported in each sample.
    pub models: Arc<InferenceStats>,
    /// Samples taken, for `/metrics`.
    pub samples: prometheus_client::metrics::counter::Counter,
    /// How samples are encoded on the wire.
    pub encoding: Encoding,
}

impl Telemetry {
    /// Samples until `cancel`.
    pub async fn run(mut self, cancel: CancellationToken) -> anyhow::Result<()> {
        // The first CPU reading needs a second refresh at least this far from the first.
        tokio::time::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL).await;
        let new_tick = |every: Duration| {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        };
        let mut tick = new_tick(*self.interval.borrow_and_update());
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                Ok(()) = self.interval.changed() => {
                    let every = *self.interval.borrow_and_update();
                    tracing::info!("telemetry interval is now {every:?}");
                    tick = new_tick(every);
                    continue;
                }
                _ = tick.tick() => {}
            }
            let seq = self.seq.take();
            let sample = self.sampler.sample(seq, &self.link_stats, &self.models);
            self.samples.inc();
            if !self.link.send(sample.encode(self.encoding)).await {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_totals_skip_loopback_and_headers() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
                    face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
                    lo: 500 5 0 0 0 0 0 0 500 5 0 0 0 0 0 0\n  \
                    eth0: 1000 10 0 0 0 0 0 0 2000 20 0 0 0 0 0 0\n  \
                    wlan0: 30 1 0 0 0 0 0 0 40 1 0 0 0 0 0 0\n";
        assert_eq!(net_totals(text), (1030, 2040));
    }

    #[test]
    fn samples_report_plausible_values() {
        let dir = tempfile::tempdir().unwrap();
        let disk = crate::disk::open_reserve(dir.path());
        let mut sampler = Sampler::new("dev-1", dir.path(), disk, Some(1_900_000_000)).unwrap();
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        let models = InferenceStats::default();
        models.register("wake");
        let s = sampler.sample(7, &LinkStats::default(), &models);
        assert_eq!((s.device.as_str(), s.seq), ("dev-1", 7));
        assert!(s.mem.total_bytes > 0 && s.mem.used_bytes <= s.mem.total_bytes);
        assert!(s.agent.rss_bytes > 0);
        assert!(!s.cpu.per_core_pct.is_empty() && (0.0..=100.0).contains(&s.cpu.total_pct));
        assert!(s.disk.total_bytes > 0 && s.disk.free_bytes <= s.disk.total_bytes);
        assert_eq!(s.models[0].name, "wake");
        assert!(s.ts > 1_600_000_000_000);
        assert_eq!((s.disk_full, s.cert_not_after), (false, Some(1_900_000_000)));
        assert_eq!(s.version, Sample::VERSION);
    }
}
