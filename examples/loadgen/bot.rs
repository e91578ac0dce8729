//! One simulated device as a bot runs it: the SDK's whole [`Client`], with
//! its journal (each report `fsync`ed before it is sent), its own QUIC
//! endpoint and its background driver. Slower than the bare session core the
//! other devices use; it is there to measure what the SDK costs a bot per
//! message (the harness's own CPU per message), against an MQTT client
//! library's in the same scenario.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use eagate_protocol::{DeviceId, DeviceSecret};
use eagate_sdk::{Client, ClientConfig, Event, ServerTrust, UdpSocketKind};
use tokio::sync::watch;

use crate::device::{DeviceStats, Mode, Turn};
use crate::live::{Live, Phase};

/// Where a bot connects and keeps its journal.
pub(crate) struct BotLink<'a> {
    pub(crate) server: String,
    pub(crate) trust: ServerTrust,
    pub(crate) state_dir: &'a Path,
}

impl BotLink<'_> {
    pub(crate) fn config(&self, (device_id, secret): (DeviceId, DeviceSecret)) -> ClientConfig {
        ClientConfig {
            server: self.server.clone(),
            server_name: Some("localhost".to_owned()),
            device_id,
            secret,
            trust: self.trust.clone(),
            state_dir: self.state_dir.to_path_buf(),
            udp: UdpSocketKind::default(),
        }
    }
}

/// Runs one bot until the harness stops it or its session ends. Only the
/// `connect` and `fanout` modes (idle, or a report on every signal).
pub(crate) async fn run(
    config: ClientConfig,
    mode: Mode,
    mut turn: Turn,
    live: Arc<Live>,
    mut phase: watch::Receiver<Phase>,
) -> DeviceStats {
    turn.begin().await;
    let started = Instant::now();
    let mut stats = DeviceStats::new();
    let outcome = async {
        let mut client = Client::connect(config)
            .await
            .map_err(|e| format!("starting the client: {e}"))?;
        let mut positions = HashMap::new();
        let mut in_flight = VecDeque::new();
        loop {
            let now_phase = *phase.borrow_and_update();
            match now_phase {
                Phase::Stop => break,
                Phase::Drain { signals }
                    if in_flight.is_empty()
                        && (stats.signals >= signals || !mode.acknowledges()) =>
                {
                    stats.drained = true;
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
                event = client.next_event() => event,
            };
            match event {
                Some(Event::Connected { .. }) => {
                    stats.connected_after = Some(started.elapsed());
                    live.connected();
                    turn.end();
                }
                Some(Event::Signal(signal)) => {
                    stats.signal_seen(&live, &mut positions, &signal);
                    if mode.acknowledges() {
                        let seq = client
                            .received(signal.signal_id)
                            .await
                            .map_err(|e| format!("reporting: {e}"))?;
                        in_flight.push_back((seq, Instant::now()));
                        stats.reports += 1;
                        stats.last_seq = seq;
                    }
                }
                Some(Event::ReportsConfirmed { up_to_seq }) => {
                    stats.confirmed_up_to(&live, &mut in_flight, up_to_seq);
                }
                Some(Event::ClockCorrected { .. }) => {}
                Some(Event::Disconnected { reason, .. }) => {
                    return Err(format!("disconnected: {reason}"));
                }
                Some(Event::ReportsRenumbered { .. }) => {
                    return Err("the gateway held other reports under our numbers".into());
                }
                Some(Event::Stopped(reason)) => return Err(format!("stopped: {reason}")),
                None => return Err("the client stopped".into()),
            }
        }
        client.close().await;
        Ok::<(), String>(())
    }
    .await;
    if let Err(why) = outcome {
        stats.failure = Some(why);
        live.failed();
    }
    turn.end();
    stats
}
