//! The broker connection settings every persistent session of the service shares: the
//! inventory's ([`crate::ingest`]) and the telemetry export's ([`crate::export`]).
//!
//! Both are QoS 1 sessions with clean session off and manual acks, so that the broker keeps
//! what arrives while the service (or one of its consumers) is down or slow, and a message
//! is acked only once it has been handled.

use std::time::Duration;

use edge_mqtt::{host_port, MqttConfig};
use rumqttc::{AsyncClient, EventLoop, MqttOptions, Transport};

use crate::ingest::IngestError;

/// A client and its event loop for a persistent session as `client_id`, with at most `cap`
/// requests queued towards the event loop.
pub fn connect(mqtt: &MqttConfig, client_id: String, cap: usize) -> Result<(AsyncClient, EventLoop), IngestError> {
    let (host, port) = host_port(&mqtt.url).ok_or_else(|| IngestError::BadUrl(mqtt.url.clone()))?;
    let mut opts = MqttOptions::new(client_id, host, port);
    opts.set_clean_session(false);
    opts.set_manual_acks(true);
    opts.set_keep_alive(Duration::from_secs(mqtt.keep_alive_secs.max(5)));
    opts.set_max_packet_size(mqtt.max_packet_bytes, mqtt.max_packet_bytes);
    if mqtt.url.starts_with("mqtts://") {
        let tls = edge_mqtt::client_config(&mqtt.ca_file, &mqtt.cert_file, &mqtt.key_file)?;
        opts.set_transport(Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls)));
    }
    let (client, mut eventloop) = AsyncClient::new(opts, cap);
    eventloop.network_options.set_connection_timeout(mqtt.network_timeout_secs.max(1));
    Ok((client, eventloop))
}
