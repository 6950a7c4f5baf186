//! The service's own `/metrics`: what was ingested, what was not, and the inventory's size.
//!
//! Every event worth a log line is counted here too. The device gauges are read from the
//! database when `/metrics` is scraped, so that they hold for the whole fleet, whichever
//! replica wrote the rows.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The `kind` label: `status`, `telemetry` or `ack`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// Which message.
    pub kind: String,
}

/// The counters and gauges, cheap to clone (they share their values).
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// `edge_fleet_messages_ingested_total{kind}`: messages stored in the inventory.
    pub ingested: Family<KindLabel, Counter>,
    /// `edge_fleet_messages_undecodable_total{kind}`: messages that did not decode, or named
    /// another device than their topic; logged with the topic and skipped.
    pub undecodable: Family<KindLabel, Counter>,
    /// `edge_fleet_db_errors_total`: failed database writes and reads (each retried write
    /// attempt counts).
    pub db_errors: Counter,
    /// `edge_fleet_messages_dropped_total`: messages given up on after the database
    /// refused them on every retry.
    pub dropped: Counter,
    /// `edge_fleet_devices_known`: devices in the inventory.
    pub devices_known: Gauge,
    /// `edge_fleet_devices_online`: of those, online.
    pub devices_online: Gauge,
    /// `edge_fleet_deployment_*`: what the deployments sent.
    pub deployments: crate::deployments::DeploymentMetrics,
    /// `edge_fleet_export_*`: the telemetry export to Prometheus.
    pub export: crate::export::ExportMetrics,
}

impl Metrics {
    /// Counts one message of `kind` in `family`.
    pub fn count(family: &Family<KindLabel, Counter>, kind: &str) {
        family.get_or_create(&KindLabel { kind: kind.to_string() }).inc();
    }

    /// A registry holding all of them.
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("edge_fleet");
        r.register("messages_ingested", "Messages stored in the inventory, by kind", self.ingested.clone());
        r.register(
            "messages_undecodable",
            "Messages that did not decode or named another device than their topic, by kind",
            self.undecodable.clone(),
        );
        r.register("db_errors", "Failed database operations", self.db_errors.clone());
        r.register("messages_dropped", "Messages given up on after every database retry failed", self.dropped.clone());
        r.register("devices_known", "Devices in the inventory", self.devices_known.clone());
        r.register("devices_online", "Devices whose retained status says online", self.devices_online.clone());
        self.deployments.register(&mut r);
        self.export.register(&mut r);
        r
    }
}
