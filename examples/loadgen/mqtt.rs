//! The peer baseline: the same scenarios against an MQTT broker, as users
//! would build a signal feed on one instead of eagate. A device is an MQTT
//! client subscribed at QoS 1 to `<prefix>/signals`, answering each signal
//! (or flooding) with a QoS 1 message on `<prefix>/reports/<n>`; a report
//! is confirmed by the broker's PUBACK. One more client, the collector,
//! subscribes to every report at QoS 1 and counts them per device: the
//! broker's counterpart of the gateway's store, so the stored count can be
//! checked against the sent count the same way.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rumqttc::{
    AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport,
};
use tokio::sync::watch;

use crate::device::{DeviceStats, Mode, Turn};
use crate::live::{Live, Phase, unix_micros};
use crate::report::{Outcome, Stored};
use crate::{Args, Scenario};

/// Where the broker is and how to reach it.
#[derive(Clone)]
struct Broker {
    host: String,
    port: u16,
    /// The CA certificate, PEM, for `mqtts://`.
    ca: Option<Vec<u8>>,
}

impl Broker {
    fn parse(target: &str, ca: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let (tls, rest) = if let Some(rest) = target.strip_prefix("mqtts://") {
            (true, rest)
        } else if let Some(rest) = target.strip_prefix("mqtt://") {
            (false, rest)
        } else {
            bail!("--target: `eagate`, `mqtts://host:port` or `mqtt://host:port`, not {target}");
        };
        let (host, port) = rest
            .rsplit_once(':')
            .with_context(|| format!("--target: no port in {target}"))?;
        let port: u16 = port
            .trim_end_matches('/')
            .parse()
            .context("--target port")?;
        let ca = match (tls, ca) {
            (true, Some(path)) => {
                Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
            }
            (true, None) => {
                bail!("mqtts needs --mqtt-ca, the CA the broker's certificate is under")
            }
            (false, _) => None,
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            ca,
        })
    }

    fn options(&self, client_id: String, inflight: u16) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, self.host.clone(), self.port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            .set_inflight(inflight.max(1))
            .set_request_channel_capacity(usize::from(inflight) + 64);
        if let Some(ca) = &self.ca {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
                ca: ca.clone(),
                alpn: None,
                client_auth: None,
            }));
        }
        options
    }
}

/// Runs the scenario against the broker.
pub(crate) async fn run(args: &Args) -> anyhow::Result<Outcome> {
    if args.scenario == Scenario::Halfopen {
        anyhow::bail!("halfopen measures eagate's QUIC listener; run it against eagate");
    }
    // rumqttc builds its TLS configuration on the process's provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let broker = Broker::parse(&args.target, args.mqtt_ca.as_deref())?;
    let signals_topic = format!("{}/signals", args.channel);
    let reports_prefix = format!("{}/reports", args.channel);
    let counts: Arc<Vec<AtomicU64>> =
        Arc::new((0..args.devices).map(|_| AtomicU64::new(0)).collect());
    let collecting = args.scenario != Scenario::Connect;
    let collector = if collecting {
        Some(collect(&broker, &reports_prefix, counts.clone()).await?)
    } else {
        None
    };
    let mode = match args.scenario {
        Scenario::Connect | Scenario::Halfopen => Mode::Idle,
        Scenario::Fanout => Mode::Acknowledge,
        // The signal reported on does not matter to a broker.
        Scenario::Ingest => Mode::Flood {
            signal: placeholder_signal(),
            window: args.window,
        },
        Scenario::Mixed => Mode::Mixed {
            signal: placeholder_signal(),
            window: args.window,
        },
    };
    let inflight = u16::try_from(args.window.max(100)).unwrap_or(u16::MAX);
    let ran = crate::drive(
        args,
        args.devices,
        0,
        |index, turn, live, phases| {
            let options =
                broker.options(format!("loadgen-{}-{index}", std::process::id()), inflight);
            let topics = (signals_topic.clone(), format!("{reports_prefix}/{index}"));
            device(options, topics, mode, turn, live, phases)
        },
        async {
            match args.scenario {
                Scenario::Connect | Scenario::Ingest | Scenario::Halfopen => {
                    tokio::time::sleep(Duration::from_secs(args.duration)).await;
                    Ok(0)
                }
                Scenario::Fanout | Scenario::Mixed => publish(&broker, &signals_topic, args).await,
            }
        },
    )
    .await?;
    // The collector receives after the broker confirms: wait until its
    // counts stop moving.
    let mut stored = counted(&counts);
    if collecting {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = counted(&counts);
            if now == stored || Instant::now() > until {
                break;
            }
            stored = now;
        }
    }
    if let Some(collector) = collector {
        collector.abort();
    }
    let stored = stored
        .into_iter()
        .zip(&ran.stats)
        .map(|(stored, s)| Stored {
            stored,
            sent: s.last_seq,
            confirmed: s.confirmed_seq,
        })
        .collect();
    Ok(ran.outcome(args, stored))
}

fn placeholder_signal() -> eagate_protocol::SignalId {
    eagate_protocol::SignalId([0; 16])
}

fn counted(counts: &[AtomicU64]) -> Vec<u64> {
    counts.iter().map(|c| c.load(Ordering::Relaxed)).collect()
}

/// Starts the collector: subscribed to every device's reports at QoS 1,
/// counting them per device. Returns once subscribed.
async fn collect(
    broker: &Broker,
    reports_prefix: &str,
    counts: Arc<Vec<AtomicU64>>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let options = broker.options(format!("loadgen-collector-{}", std::process::id()), 1000);
    let (client, mut events) = AsyncClient::new(options, 1024);
    client
        .subscribe(format!("{reports_prefix}/+"), QoS::AtLeastOnce)
        .await?;
    loop {
        match events.poll().await.context("the collector's connection")? {
            Event::Incoming(Packet::SubAck(_)) => break,
            _ => continue,
        }
    }
    let prefix_len = reports_prefix.len() + 1;
    Ok(tokio::spawn(async move {
        // The client must live as long as its event loop.
        let _client = client;
        while let Ok(event) = events.poll().await {
            if let Event::Incoming(Packet::Publish(report)) = event
                && let Some(index) = report
                    .topic
                    .get(prefix_len..)
                    .and_then(|n| n.parse::<usize>().ok())
                && let Some(count) = counts.get(index)
            {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
    }))
}

/// Publishes signals at `--rate` for `--duration` (0: as fast as the broker
/// confirms, 100 in flight); how many the broker confirmed.
async fn publish(broker: &Broker, topic: &str, args: &Args) -> anyhow::Result<u64> {
    let options = broker.options(format!("loadgen-publisher-{}", std::process::id()), 100);
    let (client, mut events) = AsyncClient::new(options, 256);
    let until = Instant::now() + Duration::from_secs(args.duration);
    let interval = (args.rate > 0).then(|| Duration::from_micros(1_000_000 / args.rate));
    let mut ticker = interval.map(|i| {
        let mut t = tokio::time::interval(i);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    let mut number = 0u64;
    let mut unconfirmed = 0u64;
    let mut confirmed = 0u64;
    let mut connected = false;
    loop {
        let publishing = Instant::now() < until;
        if !publishing && unconfirmed == 0 {
            break;
        }
        let due = connected
            && publishing
            && match &mut ticker {
                None => unconfirmed < 100,
                Some(_) => true,
            };
        tokio::select! {
            () = async {
                if let Some(t) = &mut ticker {
                    t.tick().await;
                }
            }, if due => {
                number += 1;
                let payload = format!("t{} {number}", unix_micros());
                client.try_publish(topic, QoS::AtLeastOnce, false, payload)?;
                unconfirmed += 1;
            }
            event = events.poll() => match event.context("the publisher's connection")? {
                Event::Incoming(Packet::ConnAck(_)) => connected = true,
                Event::Incoming(Packet::PubAck(_)) => {
                    unconfirmed -= 1;
                    confirmed += 1;
                }
                _ => {}
            },
        }
    }
    let _ = client.try_disconnect();
    Ok(confirmed)
}

/// One simulated device on the broker.
async fn device(
    options: MqttOptions,
    (signals_topic, reports_topic): (String, String),
    mode: Mode,
    mut turn: Turn,
    live: Arc<Live>,
    mut phase: watch::Receiver<Phase>,
) -> DeviceStats {
    turn.begin().await;
    let live = &*live;
    let mut stats = DeviceStats::new();
    let started = Instant::now();
    let (client, mut events) = AsyncClient::new(options, 1024);
    let mut sim = Sim {
        client: &client,
        reports_topic,
        queued: VecDeque::new(),
        in_flight: HashMap::new(),
        last_number: 0,
        stats: &mut stats,
        live,
    };
    let outcome: anyhow::Result<()> = async {
        let mut subscribed = false;
        loop {
            let now_phase = *phase.borrow_and_update();
            match now_phase {
                Phase::Stop => break,
                Phase::Drain { signals }
                    if sim.queued.is_empty()
                        && sim.in_flight.is_empty()
                        && (sim.stats.signals >= signals || !mode.acknowledges()) =>
                {
                    sim.stats.drained = true;
                    break;
                }
                _ => {}
            }
            let event = tokio::select! {
                changed = phase.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    continue;
                }
                event = events.poll() => event?,
            };
            match event {
                Event::Incoming(Packet::ConnAck(_)) => {
                    client.try_subscribe(signals_topic.as_str(), QoS::AtLeastOnce)?;
                }
                Event::Incoming(Packet::SubAck(_)) => {
                    subscribed = true;
                    sim.stats.connected_after = Some(started.elapsed());
                    live.connected();
                    turn.end();
                }
                Event::Incoming(Packet::Publish(signal)) => {
                    sim.signal(&signal.payload);
                    if mode.acknowledges() {
                        sim.report()?;
                    }
                }
                Event::Outgoing(Outgoing::Publish(pkid)) => {
                    if let Some(at) = sim.queued.pop_front() {
                        sim.in_flight.insert(pkid, at);
                    }
                }
                Event::Incoming(Packet::PubAck(ack)) => sim.confirmed(ack.pkid),
                _ => {}
            }
            if let Some((_, window)) = mode.flood()
                && subscribed
                && *phase.borrow() == Phase::Run
            {
                while sim.queued.len() + sim.in_flight.len() < window {
                    sim.report()?;
                }
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = outcome {
        stats.failure = Some(format!("{e:#}"));
        live.failed();
    }
    let _ = client.try_disconnect();
    turn.end();
    stats
}

/// A device's bookkeeping on the broker.
struct Sim<'a> {
    client: &'a AsyncClient,
    reports_topic: String,
    /// Reports handed to the client, not yet written, in order.
    queued: VecDeque<Instant>,
    /// Reports written, by packet id, until the broker's PUBACK.
    in_flight: HashMap<u16, Instant>,
    last_number: u64,
    stats: &'a mut DeviceStats,
    live: &'a Live,
}

impl Sim<'_> {
    /// A signal: `t<µs> <number>`, numbers counting up from 1.
    fn signal(&mut self, payload: &[u8]) {
        self.stats.signals += 1;
        self.live.delivered();
        let text = std::str::from_utf8(payload).unwrap_or("");
        let mut parts = text.split(' ');
        if let Some(sent) = parts
            .next()
            .and_then(|t| t.strip_prefix('t'))
            .and_then(|t| t.parse::<u64>().ok())
        {
            let _ = self
                .stats
                .latency
                .record(unix_micros().saturating_sub(sent).max(1));
        }
        if let Some(number) = parts.next().and_then(|n| n.parse::<u64>().ok()) {
            if number <= self.last_number {
                self.stats.repeats += 1;
            } else {
                if self.last_number != 0 {
                    self.stats.gaps += number - self.last_number - 1;
                }
                self.last_number = number;
            }
        }
    }

    fn report(&mut self) -> anyhow::Result<()> {
        self.stats.reports += 1;
        self.stats.last_seq = self.stats.reports;
        self.queued.push_back(Instant::now());
        self.client.try_publish(
            self.reports_topic.as_str(),
            QoS::AtLeastOnce,
            false,
            format!("received {}", self.stats.reports),
        )?;
        Ok(())
    }

    fn confirmed(&mut self, pkid: u16) {
        if let Some(at) = self.in_flight.remove(&pkid) {
            self.stats.confirmed += 1;
            self.stats.confirmed_seq = self.stats.confirmed;
            self.live.confirmed();
            let _ = self
                .stats
                .confirmation
                .record((at.elapsed().as_micros() as u64).max(1));
        }
    }
}
