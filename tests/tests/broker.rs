//! The harness and the fleet ACL, proved with real traffic through a real Mosquitto.
//!
//! Every test runs under [`TEST_TIMEOUT`] so a broker that never answers fails the test
//! instead of hanging the run.

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use edge_it::{mqtt_options, unique_client_id, Broker, BrokerLog, Pki};
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, Incoming, MqttOptions, Publish, QoS};
use tokio::sync::mpsc;
use tokio::time::timeout;

const TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one step (a connection, an acknowledgement, a delivery) may take.
const STEP: Duration = Duration::from_secs(10);

/// Runs `body` under [`TEST_TIMEOUT`]; on failure, appends the broker's log.
async fn bounded(log: BrokerLog, body: impl Future<Output = Result<()>>) -> Result<()> {
    let result = match timeout(TEST_TIMEOUT, body).await {
        Ok(r) => r,
        Err(_) => Err(anyhow!("test timed out after {TEST_TIMEOUT:?}")),
    };
    result.map_err(|e| anyhow!("{e:#}\n{}", log.read()))
}

/// Polls until the broker's CONNACK or the first connection error.
async fn connack(eventloop: &mut EventLoop) -> Result<(), ConnectionError> {
    loop {
        if let Event::Incoming(Incoming::ConnAck(_)) = eventloop.poll().await? {
            return Ok(());
        }
    }
}

/// A connected client whose event loop runs in a task, forwarding what arrives.
struct Conn {
    client: AsyncClient,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    pending: VecDeque<Incoming>,
}

impl Conn {
    async fn connect(opts: MqttOptions, broker: &Broker) -> Result<Conn> {
        let id = opts.client_id();
        let (client, mut eventloop) = AsyncClient::new(opts, 16);
        match timeout(STEP, connack(&mut eventloop)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("{id}: connecting: {e}\n{}", broker.log()),
            Err(_) => bail!("{id}: no CONNACK within {STEP:?}\n{}", broker.log()),
        }
        let (tx, incoming) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(event) = eventloop.poll().await {
                if let Event::Incoming(packet) = event {
                    if matches!(packet, Incoming::PingResp) {
                        continue;
                    }
                    if tx.send(packet).is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Conn { client, incoming, pending: VecDeque::new() })
    }

    /// The first packet, buffered or new, that `pick` accepts. Packets it declines are kept
    /// for later calls: a PUBLISH may arrive before the PUBACK a test is waiting for.
    async fn next<T>(&mut self, what: &str, mut pick: impl FnMut(&Incoming) -> Option<T>) -> Result<T> {
        if let Some(i) = self.pending.iter().position(|p| pick(p).is_some()) {
            let packet = self.pending.remove(i).expect("index from position");
            return Ok(pick(&packet).expect("picked above"));
        }
        let wait = async {
            while let Some(packet) = self.incoming.recv().await {
                match pick(&packet) {
                    Some(t) => return Some(t),
                    None => self.pending.push_back(packet),
                }
            }
            None
        };
        match timeout(STEP, wait).await {
            Ok(Some(t)) => Ok(t),
            Ok(None) => bail!("connection closed while waiting for {what}"),
            Err(_) => bail!("no {what} within {STEP:?}"),
        }
    }

    async fn subscribe(&mut self, filter: &str) -> Result<()> {
        self.client.subscribe(filter, QoS::AtLeastOnce).await?;
        // Wait for the SUBACK so that what is published next is routed to us.
        self.next("SUBACK", |p| matches!(p, Incoming::SubAck(_)).then_some(())).await
    }

    /// Publishes at QoS 1 and waits for the PUBACK. Mosquitto acknowledges an ACL-denied
    /// publish too, so the ack proves the broker processed it, not that it was allowed.
    async fn publish(&mut self, topic: &str, payload: &str) -> Result<()> {
        self.client.publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec()).await?;
        self.next("PUBACK", |p| matches!(p, Incoming::PubAck(_)).then_some(())).await
    }

    async fn message(&mut self) -> Result<Publish> {
        self.next("PUBLISH", |p| match p {
            Incoming::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await
    }
}

fn setup() -> Result<(tempfile::TempDir, Pki, Broker)> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path())?;
    let broker = Broker::start(&pki)?;
    Ok((dir, pki, broker))
}

async fn connect_as(cn: &str, pki: &Pki, broker: &Broker) -> Result<Conn> {
    let opts = mqtt_options(&unique_client_id(cn), broker.port(), pki.client_config(cn)?);
    Conn::connect(opts, broker).await
}

fn payload(p: &Publish) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

#[tokio::test]
async fn operator_receives_device_telemetry_and_device_receives_operator_commands() -> Result<()> {
    let (_dir, pki, broker) = setup()?;
    bounded(broker.log_handle(), async {
        let mut operator = connect_as("operator", &pki, &broker).await?;
        let mut dev1 = connect_as("dev-1", &pki, &broker).await?;
        operator.subscribe("edge/+/telemetry").await?;
        dev1.subscribe("edge/dev-1/cmd").await?;

        dev1.publish("edge/dev-1/telemetry", "t1").await?;
        let got = operator.message().await?;
        assert_eq!((got.topic.as_str(), payload(&got).as_str()), ("edge/dev-1/telemetry", "t1"));

        operator.publish("edge/dev-1/cmd", "reboot").await?;
        let got = dev1.message().await?;
        assert_eq!((got.topic.as_str(), payload(&got).as_str()), ("edge/dev-1/cmd", "reboot"));
        Ok(())
    })
    .await
}

#[tokio::test]
async fn device_cannot_publish_into_another_devices_topics() -> Result<()> {
    let (_dir, pki, broker) = setup()?;
    bounded(broker.log_handle(), async {
        let mut operator = connect_as("operator", &pki, &broker).await?;
        let mut dev2 = connect_as("dev-2", &pki, &broker).await?;
        operator.subscribe("edge/+/telemetry").await?;

        // Mosquitto drops the denied publish silently (it still sends the PUBACK), so a
        // control message from dev-2's own topic, sent after it on the same connection,
        // marks the point by which the forged one would have arrived.
        dev2.publish("edge/dev-1/telemetry", "forged").await?;
        dev2.publish("edge/dev-2/telemetry", "control").await?;

        let got = operator.message().await?;
        assert_eq!(
            (got.topic.as_str(), payload(&got).as_str()),
            ("edge/dev-2/telemetry", "control"),
            "the operator received dev-2's forged publish\n{}",
            broker.log()
        );
        assert!(broker.log().contains("Denied PUBLISH"), "no ACL denial in the broker log\n{}", broker.log());
        Ok(())
    })
    .await
}

#[tokio::test]
async fn operator_identities_get_the_topics_of_their_role() -> Result<()> {
    let (_dir, pki, broker) = setup()?;
    bounded(broker.log_handle(), async {
        let mut admin = connect_as("operator", &pki, &broker).await?;
        admin.subscribe("edge/dev-1/#").await?;
        admin.subscribe("edge/group/lab/#").await?;
        let mut observer = connect_as("observer", &pki, &broker).await?;
        let mut deployer = connect_as("deployer", &pki, &broker).await?;

        // An observer sends commands but not OTA chunks, to a device or a group; each
        // denied publish is followed by an allowed one on the same connection, which marks
        // the point by which the denied one would have arrived (Mosquitto drops it silently).
        for (denied, allowed) in [("edge/dev-1/ota", "edge/dev-1/cmd"), ("edge/group/lab/ota", "edge/group/lab/cmd")] {
            observer.publish(denied, "chunk").await?;
            observer.publish(allowed, "command").await?;
            let got = admin.message().await?;
            assert_eq!((got.topic.as_str(), payload(&got).as_str()), (allowed, "command"), "{}", broker.log());
        }
        assert!(broker.log().contains("Denied PUBLISH from"), "{}", broker.log());
        // A deployer sends both.
        for topic in ["edge/dev-1/ota", "edge/dev-1/cmd", "edge/group/lab/ota"] {
            deployer.publish(topic, "x").await?;
            let got = admin.message().await?;
            assert_eq!(got.topic, topic, "{}", broker.log());
        }
        // Neither may speak for a device: telemetry and acks are the device's.
        for (who, forged) in [(&mut observer, "edge/dev-1/ack"), (&mut deployer, "edge/dev-1/telemetry")] {
            who.publish(forged, "forged").await?;
            who.publish("edge/dev-1/cmd", "control").await?;
            let got = admin.message().await?;
            assert_eq!((got.topic.as_str(), payload(&got).as_str()), ("edge/dev-1/cmd", "control"), "{}", broker.log());
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn device_subscribed_to_everything_receives_only_its_own_topics() -> Result<()> {
    let (_dir, pki, broker) = setup()?;
    bounded(broker.log_handle(), async {
        let mut dev1 = connect_as("dev-1", &pki, &broker).await?;
        let mut dev2 = connect_as("dev-2", &pki, &broker).await?;
        // Mosquitto 2.0 accepts the subscription and checks read access per delivery.
        dev2.subscribe("edge/#").await?;

        dev1.publish("edge/dev-1/telemetry", "private").await?;
        dev2.publish("edge/dev-2/telemetry", "control").await?;

        let got = dev2.message().await?;
        assert_eq!(
            (got.topic.as_str(), payload(&got).as_str()),
            ("edge/dev-2/telemetry", "control"),
            "dev-2 read dev-1's telemetry\n{}",
            broker.log()
        );
        Ok(())
    })
    .await
}

/// Polls a connection that must fail; returns the error, or fails if the broker accepts it.
async fn refused(opts: MqttOptions, broker: &Broker) -> Result<ConnectionError> {
    let (_client, mut eventloop) = AsyncClient::new(opts, 16);
    match timeout(STEP, connack(&mut eventloop)).await {
        Ok(Err(e)) => Ok(e),
        Ok(Ok(())) => bail!("the broker accepted the connection\n{}", broker.log()),
        Err(_) => bail!("neither CONNACK nor an error within {STEP:?}\n{}", broker.log()),
    }
}

#[tokio::test]
async fn client_with_a_certificate_from_an_unknown_ca_is_refused() -> Result<()> {
    let (_dir, pki, broker) = setup()?;
    bounded(broker.log_handle(), async {
        // Same CN and same CA name as a real device; only the signature is wrong.
        let rogue = pki.rogue_client("dev-1")?;
        let tls = edge_it::client_config(pki.ca_pem(), &rogue.cert, &rogue.key)?;
        let err = refused(mqtt_options(&unique_client_id("rogue"), broker.port(), tls), &broker).await?;
        // The broker's TLS alert, not some unrelated failure.
        assert!(err.to_string().contains("UnknownCA"), "expected the broker's UnknownCA alert, got: {err}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn client_refuses_a_broker_its_ca_did_not_sign() -> Result<()> {
    let (_dir, pki, broker) = setup()?;
    bounded(broker.log_handle(), async {
        // A valid device certificate, but the client trusts the rogue CA only.
        let dev = pki.client("dev-1")?;
        let tls = edge_it::client_config(pki.rogue_ca_pem(), &dev.cert, &dev.key)?;
        let err = refused(mqtt_options(&unique_client_id("dev-1"), broker.port(), tls), &broker).await?;
        assert!(matches!(err, ConnectionError::Tls(_)), "expected a TLS error, got {err}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn broker_restarts_on_the_same_port_and_clients_reconnect() -> Result<()> {
    let (_dir, pki, mut broker) = setup()?;
    let port = broker.port();
    assert_eq!(broker.url(), format!("mqtts://127.0.0.1:{port}"));
    bounded(broker.log_handle(), async {
        let opts = mqtt_options(&unique_client_id("dev-1"), port, pki.client_config("dev-1")?);
        let (_client, mut eventloop) = AsyncClient::new(opts.clone(), 16);
        timeout(STEP, connack(&mut eventloop)).await.context("first CONNACK")??;

        broker.stop()?;
        assert!(!broker.is_running());
        // The established connection notices, and a new one is refused while it is down.
        timeout(STEP, async { while eventloop.poll().await.is_ok() {} })
            .await
            .context("the connection outlived the broker")?;
        let (_c, mut down) = AsyncClient::new(opts.clone(), 16);
        assert!(timeout(STEP, connack(&mut down)).await.context("connect while down")?.is_err());

        broker.restart()?;
        assert_eq!(broker.port(), port);
        // The same event loop reconnects on its next poll, as the agent's link will.
        timeout(STEP, connack(&mut eventloop))
            .await
            .context("CONNACK after restart")?
            .with_context(|| format!("reconnecting after restart\n{}", broker.log()))?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn ota_chunk_of_one_mib_passes_and_a_larger_packet_is_refused() -> Result<()> {
    let (_dir, pki, broker) = setup()?;
    bounded(broker.log_handle(), async {
        let operator = connect_as("operator", &pki, &broker).await?;
        let mut dev1 = connect_as("dev-1", &pki, &broker).await?;
        dev1.subscribe("edge/dev-1/ota").await?;

        let chunk = vec![0xa5u8; 1024 * 1024];
        operator.client.publish("edge/dev-1/ota", QoS::AtLeastOnce, false, chunk.clone()).await?;
        let got = dev1.message().await?;
        assert_eq!(got.payload.len(), chunk.len());
        assert!(got.payload.iter().all(|&b| b == 0xa5));

        // A client allowed to send more than the broker's max_packet_size is disconnected.
        let mut opts = mqtt_options(&unique_client_id("operator"), broker.port(), pki.client_config("operator")?);
        opts.set_max_packet_size(edge_it::MAX_PACKET_BYTES, 4 * edge_it::MAX_PACKET_BYTES);
        let (client, mut eventloop) = AsyncClient::new(opts, 16);
        timeout(STEP, connack(&mut eventloop)).await.context("CONNACK")??;
        client.publish("edge/dev-1/ota", QoS::AtLeastOnce, false, vec![0u8; 2 * 1024 * 1024]).await?;
        let closed = timeout(STEP, async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::PubAck(_))) => return false,
                    Ok(_) => {}
                    Err(_) => return true,
                }
            }
        })
        .await
        .context("neither PUBACK nor disconnect for the oversized packet")?;
        assert!(closed, "the broker acknowledged a 2 MiB packet");
        Ok(())
    })
    .await
}
