//! One simulated device: the SDK's sans-IO session core, driven over a QUIC
//! connection with no journal, as cheap as a device can be so the figures
//! are the gateway's. It authenticates, takes signals (timing each from its
//! publication, checking each channel's positions for gaps, repeats and
//! order), reports on them or floods reports, and counts what the gateway
//! confirms. When told to drain it stops making reports of its own and ends
//! once everything it sent is confirmed.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eagate_protocol::{
    CHANNEL_BINDING_LABEL, ChannelName, DeviceId, DeviceSecret, MAX_WIRE_LEN, ReportOutcome,
    Signal, SignalId,
};
use eagate_sdk::core::{Event, ReportError, SessionCore};
use hdrhistogram::Histogram;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use crate::live::{Live, Phase, histogram, unix_micros};

/// What a simulated device does once connected.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mode {
    /// Nothing but stay connected (pinging).
    Idle,
    /// Report `Received` on every signal.
    Acknowledge,
    /// Keep up to `window` reports about `signal` in flight, all the time.
    Flood { signal: SignalId, window: usize },
    /// Both: report on every signal, and keep `window` reports about
    /// `signal` in flight besides.
    Mixed { signal: SignalId, window: usize },
}

impl Mode {
    pub(crate) fn acknowledges(self) -> bool {
        matches!(self, Self::Acknowledge | Self::Mixed { .. })
    }

    pub(crate) fn flood(self) -> Option<(SignalId, usize)> {
        match self {
            Self::Flood { signal, window } | Self::Mixed { signal, window } => {
                Some((signal, window))
            }
            Self::Idle | Self::Acknowledge => None,
        }
    }
}

/// What one device saw.
#[derive(Debug)]
pub(crate) struct DeviceStats {
    /// From the start of the attempt until authenticated.
    pub(crate) connected_after: Option<Duration>,
    /// Why the session ended early, if it did.
    pub(crate) failure: Option<String>,
    /// Publication → receipt, µs.
    pub(crate) latency: Histogram<u64>,
    /// Report → its confirmation, µs.
    pub(crate) confirmation: Histogram<u64>,
    pub(crate) signals: u64,
    /// Positions skipped (a signal that never arrived).
    pub(crate) gaps: u64,
    /// Signals at or below a position already received.
    pub(crate) repeats: u64,
    pub(crate) reports: u64,
    pub(crate) confirmed: u64,
    /// Times a report had to wait because 256 were already unconfirmed.
    pub(crate) outbox_full: u64,
    /// The highest sequence number reported.
    pub(crate) last_seq: u64,
    /// The highest sequence number the server confirmed.
    pub(crate) confirmed_seq: u64,
    /// Everything sent was confirmed before the device stopped.
    pub(crate) drained: bool,
}

impl DeviceStats {
    pub(crate) fn new() -> Self {
        Self {
            connected_after: None,
            failure: None,
            latency: histogram(),
            confirmation: histogram(),
            signals: 0,
            gaps: 0,
            repeats: 0,
            reports: 0,
            confirmed: 0,
            outbox_full: 0,
            last_seq: 0,
            confirmed_seq: 0,
            drained: false,
        }
    }
}

impl DeviceStats {
    /// Counts a signal received: its latency from publication (carried in
    /// its comment as `t<unix µs>`), and a gap or repeat in its channel.
    pub(crate) fn signal_seen(
        &mut self,
        live: &Live,
        positions: &mut HashMap<ChannelName, u64>,
        signal: &Signal,
    ) {
        self.signals += 1;
        live.delivered();
        if let Some(sent) = signal
            .comment
            .as_str()
            .strip_prefix('t')
            .and_then(|t| t.parse::<u64>().ok())
        {
            let _ = self
                .latency
                .record(unix_micros().saturating_sub(sent).max(1));
        }
        let last = positions.entry(signal.channel.clone()).or_insert(0);
        if signal.position <= *last {
            self.repeats += 1;
        } else {
            if *last != 0 {
                self.gaps += signal.position - *last - 1;
            }
            *last = signal.position;
        }
    }

    /// Counts the reports in flight (sequence number, when sent) that a
    /// confirmation up to `up_to_seq` covers.
    pub(crate) fn confirmed_up_to(
        &mut self,
        live: &Live,
        in_flight: &mut VecDeque<(u64, Instant)>,
        up_to_seq: u64,
    ) {
        self.confirmed_seq = self.confirmed_seq.max(up_to_seq);
        while let Some(&(seq, at)) = in_flight.front()
            && seq <= up_to_seq
        {
            in_flight.pop_front();
            self.confirmed += 1;
            live.confirmed();
            let _ = self
                .confirmation
                .record((at.elapsed().as_micros() as u64).max(1));
        }
    }
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the OS random number generator works");
    bytes
}

/// A device's turn at connecting: a place among those connecting at once
/// (`--concurrency`), taken before the device connects and given back (and
/// the harness told) once it is authenticated or has failed, whichever
/// comes first.
pub(crate) struct Turn {
    slots: Arc<Semaphore>,
    slot: Option<OwnedSemaphorePermit>,
    over: Option<mpsc::UnboundedSender<()>>,
}

impl Turn {
    pub(crate) fn new(slots: Arc<Semaphore>, over: mpsc::UnboundedSender<()>) -> Self {
        Self {
            slots,
            slot: None,
            over: Some(over),
        }
    }

    /// Waits for a place among those connecting.
    pub(crate) async fn begin(&mut self) {
        // The semaphore is never closed.
        self.slot = self.slots.clone().acquire_owned().await.ok();
    }

    pub(crate) fn end(&mut self) {
        self.slot = None;
        if let Some(over) = self.over.take() {
            // The harness may have stopped waiting; nothing to tell then.
            let _ = over.send(());
        }
    }
}

/// Where and how a device connects.
pub(crate) struct Link {
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) client: quinn::ClientConfig,
    pub(crate) gateway: SocketAddr,
}

/// Runs one device until the harness stops it or its session ends.
pub(crate) async fn run(
    link: Link,
    device: (DeviceId, DeviceSecret),
    mode: Mode,
    pace: Option<Duration>,
    mut turn: Turn,
    live: Arc<Live>,
    mut phase: watch::Receiver<Phase>,
) -> DeviceStats {
    turn.begin().await;
    let live = &*live;
    let mut stats = DeviceStats::new();
    let mut tracking = Tracking {
        mode,
        pace,
        next_flood: Instant::now(),
        turn: &mut turn,
        live,
        positions: HashMap::new(),
        in_flight: VecDeque::new(),
        waiting: VecDeque::new(),
        authenticated: false,
        started: Instant::now(),
        stats: &mut stats,
    };
    if let Err(why) = session(link, device, &mut tracking, &mut phase).await {
        tracking.stats.failure = Some(why);
        live.failed();
    }
    turn.end();
    stats
}

/// What a device keeps between events.
struct Tracking<'a> {
    mode: Mode,
    /// With `Some`, the flood is one report each such interval (a steady
    /// load, for a soak) instead of `window` in flight all the time.
    pace: Option<Duration>,
    /// When the paced flood's next report is due.
    next_flood: Instant,
    turn: &'a mut Turn,
    live: &'a Live,
    positions: HashMap<ChannelName, u64>,
    in_flight: VecDeque<(u64, Instant)>,
    /// Signals to acknowledge once the outbox has room.
    waiting: VecDeque<SignalId>,
    authenticated: bool,
    started: Instant,
    stats: &'a mut DeviceStats,
}

impl Tracking<'_> {
    /// Takes every event the core has for the application, then makes the
    /// reports the mode calls for.
    fn events(&mut self, core: &mut SessionCore, phase: Phase) -> Result<(), String> {
        while let Some(event) = core.poll_event() {
            match event {
                Event::Connected { .. } => {
                    self.authenticated = true;
                    self.stats.connected_after = Some(self.started.elapsed());
                    self.live.connected();
                    self.turn.end();
                }
                Event::Signal(signal) => {
                    self.stats
                        .signal_seen(self.live, &mut self.positions, &signal);
                    if self.mode.acknowledges() {
                        self.waiting.push_back(signal.signal_id);
                    }
                }
                Event::ReportsConfirmed { up_to_seq } => {
                    self.stats
                        .confirmed_up_to(self.live, &mut self.in_flight, up_to_seq);
                }
                Event::Disconnected { .. } => return Err("disconnected".into()),
                Event::Revoked | Event::Refused(_) | Event::Replaced | Event::SecretRotated => {
                    return Err(format!("stopped: {event:?}"));
                }
                Event::ReportsRenumbered { .. } => {
                    return Err("the gateway held other reports under our numbers".into());
                }
                Event::ClockCorrected { .. } => {}
            }
        }
        while let Some(&signal) = self.waiting.front() {
            if !self.report(core, signal)? {
                break;
            }
            self.waiting.pop_front();
        }
        if let Some((signal, window)) = self.mode.flood()
            && self.authenticated
            && phase == Phase::Run
        {
            match self.pace {
                None => while self.in_flight.len() < window && self.report(core, signal)? {},
                Some(pace) => {
                    let now = Instant::now();
                    if now >= self.next_flood
                        && self.in_flight.len() < window
                        && self.report(core, signal)?
                    {
                        // Due times keep their rhythm; one missed (the window
                        // full) is not made up in a burst.
                        self.next_flood = (self.next_flood + pace).max(now);
                    }
                }
            }
        }
        Ok(())
    }

    /// How long until the paced flood's next report, if it is paced.
    fn until_next_flood(&self) -> Option<Duration> {
        self.pace
            .map(|_| self.next_flood.saturating_duration_since(Instant::now()))
    }

    /// Reports `Received` about `signal`, remembering when; false when the
    /// outbox is full and the report has to wait for confirmations.
    fn report(&mut self, core: &mut SessionCore, signal: SignalId) -> Result<bool, String> {
        match core.report(now_ms(), signal, ReportOutcome::Received) {
            Ok(seq) => {
                self.in_flight.push_back((seq, Instant::now()));
                self.stats.reports += 1;
                self.stats.last_seq = seq;
                Ok(true)
            }
            Err(ReportError::OutboxFull) => {
                self.stats.outbox_full += 1;
                Ok(false)
            }
        }
    }

    /// Whether a draining device is done: everything asked of it answered
    /// and confirmed.
    fn drained(&self, expected_signals: u64) -> bool {
        self.in_flight.is_empty()
            && self.waiting.is_empty()
            && (self.stats.signals >= expected_signals || !self.mode.acknowledges())
    }
}

/// The core's clock: Unix ms (it signs its authentication with it).
fn now_ms() -> u64 {
    unix_micros() / 1_000
}

async fn session(
    Link {
        endpoint,
        client,
        gateway,
    }: Link,
    (id, secret): (DeviceId, DeviceSecret),
    tracking: &mut Tracking<'_>,
    phase: &mut watch::Receiver<Phase>,
) -> Result<(), String> {
    let connection = endpoint
        .connect_with(client, gateway, "localhost")
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let (mut send, mut recv) = connection
        .open_bi()
        .await
        .map_err(|e| format!("opening the stream: {e}"))?;
    let mut binding = [0u8; 32];
    connection
        .export_keying_material(&mut binding, CHANNEL_BINDING_LABEL, b"")
        .map_err(|_| "no keying material".to_owned())?;
    let mut core = SessionCore::new(id, secret);
    core.handle_connected(now_ms(), binding, random());
    let mut frames = Vec::with_capacity(MAX_WIRE_LEN);
    let mut frame = [0u8; MAX_WIRE_LEN];
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let now_phase = *phase.borrow_and_update();
        tracking.events(&mut core, now_phase)?;
        match now_phase {
            Phase::Stop => break,
            Phase::Drain { signals } if tracking.drained(signals) => {
                tracking.stats.drained = true;
                break;
            }
            _ => {}
        }
        let now = now_ms();
        while let Some(len) = core.poll_transmit(now, &mut frame) {
            frames.extend_from_slice(&frame[..len]);
        }
        if !frames.is_empty() {
            send.write_all(&frames)
                .await
                .map_err(|e| format!("sending: {e}"))?;
            frames.clear();
        }
        let mut wait = core.poll_timeout().map_or(Duration::from_secs(3600), |at| {
            Duration::from_millis(at.saturating_sub(now_ms()))
        });
        if let Some(flood) = tracking.until_next_flood() {
            wait = wait.min(flood.max(Duration::from_millis(1)));
        }
        tokio::select! {
            changed = phase.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            read = recv.read(&mut buffer) => match read {
                Ok(Some(n)) => {
                    let mut taken = 0;
                    while taken < n {
                        taken += core
                            .handle_bytes(now_ms(), &buffer[taken..n])
                            .map_err(|e| e.to_string())?;
                        // The core takes no more than its event queue holds.
                        tracking.events(&mut core, *phase.borrow())?;
                    }
                }
                Ok(None) => return Err("the gateway ended the stream".into()),
                Err(e) => return Err(format!("reading: {e}")),
            },
            () = tokio::time::sleep(wait) => {
                core.handle_timeout(now_ms()).map_err(|e| e.to_string())?;
            }
        }
    }
    connection.close(0u32.into(), b"load test over");
    Ok(())
}
