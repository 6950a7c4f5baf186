//! Watching the fleet: telemetry as it arrives, and the devices' retained status.

use std::collections::BTreeMap;
use std::time::Duration;

use edge_proto::status::Status;
use edge_proto::telemetry::Telemetry;
use edge_proto::topics::fleet;
use edge_proto::ProtoError;

use crate::link::{Link, LinkError, LinkEvent};

/// A message that did not decode: its topic and why.
pub type Skipped = (String, ProtoError);

/// Hands telemetry of `device` (or every device) to `on` as it arrives, until `count`
/// samples decoded (forever if `None`). Undecodable messages are handed over as errors.
pub async fn watch(
    link: &mut Link,
    device: Option<&str>,
    count: Option<usize>,
    mut on: impl FnMut(Result<Telemetry, Skipped>),
) -> Result<(), LinkError> {
    link.subscribe(&[fleet::telemetry(link.prefix(), device)]).await?;
    let mut seen = 0;
    while count.is_none_or(|c| seen < c) {
        let LinkEvent::Message(m) = link.next_event().await.ok_or(LinkError::Closed)? else { continue };
        match edge_proto::telemetry::decode(&m.payload) {
            Ok(t) => {
                on(Ok(t));
                seen += 1;
            }
            Err(e) => on(Err((m.topic, e))),
        }
    }
    Ok(())
}

/// The retained status of every device, collected for `wait`, by device id; and the
/// messages that did not decode.
pub async fn statuses(link: &mut Link, wait: Duration) -> Result<(BTreeMap<String, Status>, Vec<Skipped>), LinkError> {
    link.subscribe(&[fleet::status(link.prefix(), None)]).await?;
    let mut devices = BTreeMap::new();
    let mut skipped = vec![];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            event = link.next_event() => {
                if let LinkEvent::Message(m) = event.ok_or(LinkError::Closed)? {
                    match edge_proto::status::decode(&m.payload) {
                        Ok(s) => { devices.insert(s.device.clone(), s); }
                        Err(e) => skipped.push((m.topic, e)),
                    }
                }
            }
        }
    }
    Ok((devices, skipped))
}
