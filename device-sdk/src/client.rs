//! The async client for Rust bots: the session core driven over QUIC with
//! tokio and quinn, with a durable journal so that nothing accepted is lost.
//!
//! [`Client::connect`] opens the device's journal and starts the session in
//! the background; the bot then reads [`Event`]s (signals among them) and
//! reports what it did with [`Client::received`], [`Client::filled`] and
//! [`Client::rejected`]. Each report call returns once the report is
//! `fsync`ed in the journal; the client sends it, resends it after any
//! reconnect, and drops it only when the gateway confirms it stored it.
//!
//! A signal counts as done, and is not delivered again after a restart,
//! once the bot reports on it or asks for the next event. A bot killed
//! between taking a signal and either of those gets it again on restart.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eagate_protocol::{
    ALPN, CHANNEL_BINDING_LABEL, DeviceId, DeviceSecret, Fill, MAX_WIRE_LEN, Refusal, Rejection,
    ReportOutcome, ResumePoint, Reversal, SecretParseError, Signal, SignalId, TextError,
};
use tokio::sync::{Mutex, Notify, mpsc, watch};
use tokio::task::JoinHandle;

use crate::core::{self, EVENT_CAPACITY, SessionCore, SessionError};
use crate::journal::{Journal, JournalError, Record};
use crate::plain_udp::{PlainUdpSocket, UdpSocketKind};
use crate::trust::{self, CertificateVerdict, ServerTrust};

/// How long one connection attempt (QUIC and TLS handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`Client::close`] waits for the gateway before giving up; it
/// returns within this and a little more whatever the network does (a
/// MetaTrader EA has 2.5 s in `OnDeinit`).
pub const CLOSE_TIMEOUT: Duration = Duration::from_millis(1_500);

/// The part of [`CLOSE_TIMEOUT`] spent handing the goodbye to QUIC.
const GOODBYE_TIMEOUT: Duration = Duration::from_millis(500);

/// Everything needed to connect a device.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The gateway's QUIC address, `host:port`, looked up on every attempt.
    pub server: String,
    /// The name the gateway's certificate is checked against when trusting
    /// CA roots; with a pinned fingerprint it is only sent as SNI. Defaults
    /// to the host part of `server`.
    pub server_name: Option<String>,
    /// The device's id, as printed at registration.
    pub device_id: DeviceId,
    /// The device's secret.
    pub secret: DeviceSecret,
    /// How the gateway's certificate is checked.
    pub trust: ServerTrust,
    /// Where the journal of unconfirmed reports and positions lives. It must
    /// survive restarts; one directory can hold several devices' journals.
    pub state_dir: PathBuf,
    /// Which UDP socket carries QUIC: the platform's fast paths, or plain
    /// `send_to`/`recv_from` (the default on Windows, where the DLL may run
    /// under Wine). See [`UdpSocketKind`].
    pub udp: UdpSocketKind,
}

/// Why a configuration's text was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The device id is empty, too long or has control characters.
    #[error("device id: {0}")]
    DeviceId(TextError),
    /// The secret is not the `egs_…` text printed at registration.
    #[error("device secret: {0}")]
    Secret(SecretParseError),
}

impl ClientConfig {
    /// A configuration from the texts a person copies from `eagate`'s
    /// output: the device id and secret printed at registration. The
    /// secret text is not kept.
    pub fn new(
        server: impl Into<String>,
        device_id: &str,
        secret: &str,
        trust: ServerTrust,
        state_dir: impl Into<PathBuf>,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            server: server.into(),
            server_name: None,
            device_id: DeviceId::new(device_id).map_err(ConfigError::DeviceId)?,
            secret: DeviceSecret::parse(secret.trim()).map_err(ConfigError::Secret)?,
            trust,
            state_dir: state_dir.into(),
            udp: UdpSocketKind::default(),
        })
    }

    fn server_name(&self) -> String {
        if let Some(name) = &self.server_name {
            return name.clone();
        }
        let host = match self.server.rsplit_once(':') {
            Some((host, _port)) => host,
            None => &self.server,
        };
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned()
    }
}

/// Where the client stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientState {
    /// Connecting and authenticating.
    Connecting,
    /// Authenticated: signals arrive, reports are sent.
    Connected,
    /// The last attempt failed or the session was lost; the client tries
    /// again at `retry_at`.
    BackingOff {
        /// When the next attempt starts.
        retry_at: SystemTime,
    },
    /// The client has stopped for good and will not connect again.
    Stopped(StopReason),
}

/// Why the client stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StopReason {
    /// The device was revoked by the platform: it must never trade again.
    #[error("the device was revoked")]
    Revoked,
    /// The gateway refused the credentials: wrong device id or secret (or
    /// the device is unknown there). Retrying would not help.
    #[error("the gateway refused the device id or secret")]
    CredentialsRefused,
    /// The gateway does not speak this client's protocol version.
    #[error("the gateway supports protocol versions {min} to {max} only")]
    UnsupportedVersion {
        /// The oldest version the gateway accepts.
        min: u16,
        /// The newest version the gateway accepts.
        max: u16,
    },
    /// The gateway's certificate is not the pinned one, or is not trusted by
    /// the configured roots: the server may not be the gateway.
    #[error("certificate refused: {0}")]
    Certificate(String),
    /// The same device connected from elsewhere (another chart, terminal or
    /// machine) and the gateway gave it this device's session. The client
    /// does not reconnect on its own: two installations would replace each
    /// other for ever. Run the device in one place; start this client again
    /// only where it should trade.
    #[error("this device connected from elsewhere and took over the session")]
    Replaced,
    /// The device's secret was rotated on the platform: start the client
    /// again with the new secret.
    #[error("the device's secret was rotated; connect with the new secret")]
    SecretRotated,
    /// The application closed the client (or dropped it).
    #[error("the client was closed")]
    Closed,
}

impl From<Refusal> for StopReason {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Revoked => StopReason::Revoked,
            Refusal::UnsupportedVersion(v) => StopReason::UnsupportedVersion {
                min: v.min,
                max: v.max,
            },
            // Clock skew never stops the client; anything else is refused
            // credentials.
            Refusal::Failed | Refusal::ClockSkew(_) => StopReason::CredentialsRefused,
        }
    }
}

/// What happened, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "signals are the common event; boxing them would cost an allocation each"
)]
pub enum Event {
    /// The session is authenticated.
    Connected {
        /// The gateway's clock at acceptance, Unix ms.
        gateway_time_ms: u64,
    },
    /// A signal to act on: in channel order, never twice.
    Signal(Signal),
    /// The gateway stored every report up to this sequence number.
    ReportsConfirmed {
        /// The highest confirmed sequence number.
        up_to_seq: u64,
    },
    /// The device's clock was off: the client corrected it and signs with
    /// the gateway's time from now on.
    ClockCorrected {
        /// Gateway time minus device time, in ms.
        offset_ms: i64,
    },
    /// Reports had numbers another installation of this device used first;
    /// the gateway said so, and they are sent again under new numbers
    /// (already in the journal). Nothing was lost.
    ReportsRenumbered {
        /// The first number that was taken.
        from_seq: u64,
        /// Its new number; the reports after it follow in order.
        to_seq: u64,
        /// How many reports were renumbered.
        count: usize,
    },
    /// The session was lost or an attempt failed; the client retries.
    Disconnected {
        /// What went wrong.
        reason: String,
        /// When the client tries again.
        retry_in: Duration,
    },
    /// The client stopped for good; no events follow.
    Stopped(StopReason),
}

/// Why [`Client::connect`] failed. Network trouble is not among these: the
/// client keeps trying and says so in its state and events.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The journal could not be opened or is in use.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The TLS configuration could not be built.
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// Why a report was not accepted. When this is returned, nothing was
/// stored and nothing will be sent.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The outbox holds [`core::OUTBOX_CAPACITY`] unconfirmed reports; try
    /// again once the gateway confirms some.
    #[error("the outbox is full; wait for the gateway to confirm reports")]
    OutboxFull,
    /// The journal could not be written (disk full, permissions).
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// A connected (or connecting) device. Dropping it stops the session;
/// [`Client::close`] stops it politely.
///
/// Read events continuously (one task looping on [`Client::next_event`]):
/// they are the backpressure. While about 100 events wait unread, the
/// client stops reading from the gateway, and a session left unread for its
/// idle timeout is dropped by the gateway and resumed later.
#[derive(Debug)]
pub struct Client {
    shared: Arc<Shared>,
    events: mpsc::Receiver<Event>,
    state: watch::Receiver<ClientState>,
    closing: watch::Sender<bool>,
    driver: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    inner: Mutex<Inner>,
    /// The last signal handed to the application and not yet done. Set and
    /// taken without an `await`, so `next_event` stays cancel-safe.
    handed_out: std::sync::Mutex<Option<(SignalId, ResumePoint)>>,
    /// Wakes the driver: reports wait to be sent.
    wake: Notify,
    /// Taken by the one caller syncing the journal; the callers queued
    /// behind it find their reports made durable by its sync, or start the
    /// next one for everything written meanwhile (the group commit).
    syncing: std::sync::Mutex<()>,
}

impl Shared {
    fn handed_out(&self) -> std::sync::MutexGuard<'_, Option<(SignalId, ResumePoint)>> {
        // A panic elsewhere while holding it leaves a plain value behind.
        self.handed_out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Debug)]
struct Inner {
    core: SessionCore,
    journal: Journal,
    /// The journal ticket of each report the core holds back until it is
    /// durable, oldest first, in the core's order.
    held: VecDeque<u64>,
}

impl Inner {
    /// Journals a report (written, not yet synced) and has the core hold
    /// it; returns its sequence number and journal ticket. It is sent, and
    /// its caller told it was accepted, once the ticket is durable.
    fn stage_report(
        &mut self,
        handed_out: &mut Option<(SignalId, ResumePoint)>,
        at_ms: u64,
        signal_id: SignalId,
        outcome: ReportOutcome,
    ) -> Result<(u64, u64), ReportError> {
        let draft = self
            .core
            .draft_report(at_ms, signal_id, outcome.clone())
            .map_err(map_report_error)?;
        let seq = draft.seq;
        let mut records = vec![Record::Accepted(draft)];
        let done = handed_out
            .as_ref()
            .filter(|(id, _)| *id == signal_id)
            .map(|(_, point)| point.clone());
        if let Some(point) = done.clone() {
            // Reporting on a signal is being done with it: one write, so
            // the report and the position are on disk together or not at all.
            records.push(Record::Position(point));
        }
        self.journal.append(&records)?;
        if done.is_some() {
            *handed_out = None;
        }
        let held = self
            .core
            .hold_report(at_ms, signal_id, outcome)
            .map_err(map_report_error)?;
        debug_assert_eq!(held, seq);
        let ticket = self.journal.written();
        self.held.push_back(ticket);
        Ok((seq, ticket))
    }

    /// Lets the core send every held report whose journal record is
    /// durable now; drops the held reports when the journal broke and they
    /// never will be.
    fn release_durable(&mut self) {
        // The core may have let go of a held report the gateway confirmed
        // (it never should): those are the oldest.
        while self.held.len() > self.core.held() {
            self.held.pop_front();
        }
        let mut durable = 0;
        for ticket in &self.held {
            match self.journal.is_durable(*ticket) {
                Ok(true) => durable += 1,
                Ok(false) => break,
                Err(_) => {
                    // Cut off the disk by the failed sync: the callers
                    // waiting on them are told, and nothing goes out.
                    self.core.release_held(durable);
                    self.core.discard_held();
                    self.held.clear();
                    return;
                }
            }
        }
        self.held.drain(..durable);
        self.core.release_held(durable);
    }
}

impl Shared {
    /// Journals and accepts a report, returning once it is durable. Every
    /// caller writes its own record; syncs are shared: while one caller
    /// syncs, the others write theirs and queue, and the next sync makes
    /// all of them durable at once. Runs on a blocking thread.
    fn accept_report(
        &self,
        at_ms: u64,
        signal_id: SignalId,
        outcome: ReportOutcome,
    ) -> Result<u64, ReportError> {
        let (seq, ticket) = {
            let mut inner = self.inner.blocking_lock();
            let mut handed_out = self.handed_out();
            inner.stage_report(&mut handed_out, at_ms, signal_id, outcome)?
        };
        self.sync_through(ticket)?;
        Ok(seq)
    }

    /// Finishes a signal handed out before: its position is written and
    /// made durable with whatever else waits (a failed write only means the
    /// signal may come again after a restart, the safe side). `false` when
    /// the journal was busy and `wait` is false: try again later.
    fn finish_signal(&self, point: ResumePoint, wait: bool) -> bool {
        let ticket = {
            let mut inner = if wait {
                self.inner.blocking_lock()
            } else {
                match self.inner.try_lock() {
                    Ok(inner) => inner,
                    Err(_) => return false,
                }
            };
            inner
                .journal
                .append(&[Record::Position(point)])
                .map(|()| inner.journal.written())
        };
        if let Ok(ticket) = ticket {
            let _ = self.sync_through(ticket);
        }
        true
    }

    /// Returns once the journal append with `ticket` is durable, or with
    /// why it never will be. Every `fsync` of the journal happens here, one
    /// at a time: whoever holds the turn syncs everything written so far,
    /// and the callers queued behind find theirs done or start the next
    /// sync for everything written meanwhile (the group commit). Ok or not
    /// is decided by the journal's own record of what is durable, not by
    /// how one sync went.
    fn sync_through(&self, ticket: u64) -> Result<(), JournalError> {
        // A panic while syncing leaves nothing half done behind the lock.
        let _turn = self
            .syncing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            let sync = {
                let mut inner = self.inner.blocking_lock();
                match inner.journal.is_durable(ticket) {
                    // The sync before this caller's turn covered it.
                    Ok(true) => return Ok(()),
                    Ok(false) => inner.journal.begin_sync(),
                    Err(broken) => Err(broken),
                }
                .inspect_err(|_| inner.release_durable())?
            };
            // The journal is free meanwhile: other callers write their
            // records and queue for the next sync.
            let synced = sync.run();
            let mut inner = self.inner.blocking_lock();
            let finished = inner.journal.finish_sync(sync, synced);
            inner.release_durable();
            drop(inner);
            self.wake.notify_one();
            finished?;
            // Durable now, or the file was replaced meanwhile by a
            // compaction that failed to make it so: then sync again.
        }
    }
}

fn map_report_error(error: core::ReportError) -> ReportError {
    match error {
        core::ReportError::OutboxFull => ReportError::OutboxFull,
    }
}

impl Client {
    /// Opens the device's journal in `config.state_dir` and starts the
    /// session in the background. It returns at once, before the network
    /// is reached: watch [`Client::state`] or the events to see it connect.
    /// Reports left unconfirmed by an earlier run are sent after
    /// authentication, and each channel resumes after the last signal done.
    ///
    /// Must be called inside a tokio runtime.
    pub async fn connect(config: ClientConfig) -> Result<Client, ConnectError> {
        let state_dir = config.state_dir.clone();
        let device_id = config.device_id.clone();
        let journal = on_blocking_pool(move || Journal::open(&state_dir, &device_id)).await?;
        let core = SessionCore::restore(
            config.device_id.clone(),
            config.secret.clone(),
            journal.state().snapshot(),
        );
        let verdict = Arc::new(CertificateVerdict::default());
        let quic = quic_config(&config.trust, verdict.clone())?;
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                core,
                journal,
                held: VecDeque::new(),
            }),
            handed_out: std::sync::Mutex::new(None),
            wake: Notify::new(),
            syncing: std::sync::Mutex::new(()),
        });
        let (events_tx, events) = mpsc::channel(EVENT_CAPACITY * 2);
        let (state_tx, state) = watch::channel(ClientState::Connecting);
        let (closing, closing_rx) = watch::channel(false);
        let driver = Driver {
            shared: shared.clone(),
            events: events_tx,
            outgoing: VecDeque::new(),
            state: state_tx,
            closing: closing_rx,
            server: config.server.clone(),
            server_name: config.server_name(),
            quic,
            udp: config.udp,
            verdict,
            reason: String::new(),
        };
        let driver = tokio::spawn(driver.run());
        Ok(Client {
            shared,
            events,
            state,
            closing,
            driver: Some(driver),
        })
    }

    /// The next event. The signal handed out before is done from now on:
    /// it will not be delivered again, even after a restart. `None` after
    /// [`Event::Stopped`]. Cancel-safe: dropping the future (in a
    /// `select!`) loses no event.
    pub async fn next_event(&mut self) -> Option<Event> {
        // Taken now, written by a task that completes even if this call is
        // cancelled. A failed write leaves the signal not done: it comes
        // again after a restart, which is the safe side.
        let done = self.shared.handed_out().take();
        if let Some((_, point)) = done {
            let shared = self.shared.clone();
            on_blocking_pool(move || shared.finish_signal(point, true)).await;
        }
        let event = self.events.recv().await?;
        self.hand_out(&event);
        Some(event)
    }

    /// The next event if one is waiting, without waiting: for callers on a
    /// timer outside any async runtime (the C library inside MetaTrader).
    /// The same contract as [`Client::next_event`]; finishing the signal
    /// handed out before is written on this thread (one short `fsync`,
    /// shared with any report being made durable at the same moment, so it
    /// may wait for that one to finish). `None` when nothing waits, or when
    /// the session holds the journal at this instant: call again on the
    /// next tick.
    ///
    /// # Panics
    ///
    /// When called from inside an async task: use `next_event` there.
    pub fn try_next_event(&mut self) -> Option<Event> {
        let done = self.shared.handed_out().take();
        if let Some((signal_id, point)) = done
            && !self.shared.finish_signal(point.clone(), false)
        {
            *self.shared.handed_out() = Some((signal_id, point));
            return None;
        }
        let event = self.events.try_recv().ok()?;
        self.hand_out(&event);
        Some(event)
    }

    /// [`Client::report`] for callers outside any async runtime: returns
    /// once the report is `fsync`ed in the journal, waiting for nothing on
    /// the network.
    ///
    /// # Panics
    ///
    /// When called from inside an async task: use `report` there.
    pub fn report_blocking(
        &self,
        at_ms: u64,
        signal_id: SignalId,
        outcome: ReportOutcome,
    ) -> Result<u64, ReportError> {
        // Sent once durable: the sync that made it so woke the driver.
        self.shared.accept_report(at_ms, signal_id, outcome)
    }

    /// Remembers a signal given to the application as not done yet, with
    /// no `await`, so the event cannot be lost to a cancellation.
    fn hand_out(&self, event: &Event) {
        if let Event::Signal(signal) = event {
            *self.shared.handed_out() = Some((
                signal.signal_id,
                ResumePoint {
                    channel: signal.channel.clone(),
                    position: signal.position,
                },
            ));
        }
    }

    /// The next signal, skipping other events; `Err` once the client has
    /// stopped for good.
    pub async fn next_signal(&mut self) -> Result<Signal, StopReason> {
        loop {
            match self.next_event().await {
                Some(Event::Signal(signal)) => return Ok(signal),
                Some(Event::Stopped(reason)) => return Err(reason),
                Some(_) => {}
                None => return Err(self.stop_reason()),
            }
        }
    }

    fn stop_reason(&self) -> StopReason {
        match &*self.state.borrow() {
            ClientState::Stopped(reason) => reason.clone(),
            _ => StopReason::Closed,
        }
    }

    /// Where the client stands now.
    pub fn state(&self) -> ClientState {
        self.state.borrow().clone()
    }

    /// A receiver that sees every change of [`Client::state`].
    pub fn watch_state(&self) -> watch::Receiver<ClientState> {
        self.state.clone()
    }

    /// Reports that the device has `signal_id` and is acting on it.
    pub async fn received(&self, signal_id: SignalId) -> Result<u64, ReportError> {
        self.report(now_ms(), signal_id, ReportOutcome::Received)
            .await
    }

    /// Reports an execution of `signal_id`; returns the report's sequence
    /// number once it is safely in the journal.
    pub async fn filled(&self, signal_id: SignalId, fill: Fill) -> Result<u64, ReportError> {
        self.report(now_ms(), signal_id, ReportOutcome::Filled(fill))
            .await
    }

    /// Reports that the terminal or broker refused `signal_id`.
    pub async fn rejected(
        &self,
        signal_id: SignalId,
        rejection: Rejection,
    ) -> Result<u64, ReportError> {
        self.report(now_ms(), signal_id, ReportOutcome::Rejected(rejection))
            .await
    }

    /// Reports that the fills of `signal_id` reported before with `ticket`
    /// were undone (the broker cancelled the deal, or busted the trade):
    /// the platform takes back what they earned.
    pub async fn reversed(&self, signal_id: SignalId, ticket: u64) -> Result<u64, ReportError> {
        self.report(
            now_ms(),
            signal_id,
            ReportOutcome::Reversed(Reversal { ticket }),
        )
        .await
    }

    /// Reports `outcome` for `signal_id` as of `at_ms` (Unix ms; for fills,
    /// the trade server's time). Returns the report's sequence number once
    /// it is `fsync`ed in the journal.
    pub async fn report(
        &self,
        at_ms: u64,
        signal_id: SignalId,
        outcome: ReportOutcome,
    ) -> Result<u64, ReportError> {
        let shared = self.shared.clone();
        // Sent once durable: the sync that made it so woke the driver.
        on_blocking_pool(move || shared.accept_report(at_ms, signal_id, outcome)).await
    }

    /// How many reports wait for the gateway's confirmation.
    pub async fn unconfirmed(&self) -> usize {
        self.shared.inner.lock().await.core.unconfirmed()
    }

    /// Closes the session: tells the gateway, waits for it at most
    /// [`CLOSE_TIMEOUT`], and stops. Unconfirmed reports stay in the journal
    /// for the next run.
    pub async fn close(mut self) {
        let _ = self.closing.send(true);
        if let Some(mut driver) = self.driver.take()
            && tokio::time::timeout(CLOSE_TIMEOUT, &mut driver)
                .await
                .is_err()
        {
            driver.abort();
            // Wait for the cancelled task to be dropped: it holds the
            // journal, whose lock must be free when this returns (an EA
            // re-initialised on a timeframe change connects again at once).
            let _ = driver.await;
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.closing.send(true);
    }
}

/// The QUIC client configuration the [`Client`] connects with (TLS 1.3, ALPN
/// `eagate/1`, the certificate checked as `trust` says), for a driver of
/// [`core::SessionCore`] of its own, such as a load harness running many
/// devices over one UDP socket.
pub fn quic_client_config(trust: &ServerTrust) -> Result<quinn::ClientConfig, ConnectError> {
    quic_config(trust, Arc::new(CertificateVerdict::default()))
}

fn quic_config(
    trust: &ServerTrust,
    verdict: Arc<CertificateVerdict>,
) -> Result<quinn::ClientConfig, ConnectError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = trust::verifier(trust, provider.clone(), verdict)
        .map_err(|e| ConnectError::Tls(e.to_string()))?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ConnectError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| ConnectError::Tls(e.to_string()))?;
    let mut quic = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // The session core pings and times out on its own terms; this is only
    // the backstop for a connection that stops carrying anything at all.
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(30)).expect("30 s is a valid timeout"),
    ));
    quic.transport_config(Arc::new(transport));
    Ok(quic)
}

/// Runs journal work (file IO, `fsync`) off the async workers. A panic in
/// it is a bug and is passed on as one; blocking tasks are never cancelled.
async fn on_blocking_pool<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}

/// The current time, Unix ms.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // Without an OS random source nothing here is safe; getrandom only
    // fails on platforms eagate does not support.
    getrandom::fill(&mut bytes).expect("the OS random number generator works");
    bytes
}

fn jitter() -> u32 {
    u32::from_le_bytes(random())
}

/// Resolves once the client is closing. (The guard `wait_for` returns is
/// not `Send`, so it must not live in a `select!` beside an `await`.)
async fn closing(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|closing| *closing).await;
}

/// How a session ended.
enum SessionEnd {
    /// The application is closing.
    Closing,
    /// The connection failed; reconnect after backing off.
    Lost(String),
    /// The core left the session state by itself: refused, revoked, or
    /// retrying at once with a corrected clock.
    Settled,
}

/// The background task that runs the session.
struct Driver {
    shared: Arc<Shared>,
    events: mpsc::Sender<Event>,
    /// Events taken from the core, waiting for room in `events`.
    outgoing: VecDeque<Event>,
    state: watch::Sender<ClientState>,
    closing: watch::Receiver<bool>,
    server: String,
    server_name: String,
    quic: quinn::ClientConfig,
    udp: UdpSocketKind,
    verdict: Arc<CertificateVerdict>,
    /// Why the last session or attempt failed, for the Disconnected event.
    reason: String,
}

impl Driver {
    async fn run(mut self) {
        let stop = loop {
            if *self.closing.borrow() || self.events.is_closed() {
                break StopReason::Closed;
            }
            let state = self.shared.inner.lock().await.core.state();
            match state {
                core::State::Revoked => break StopReason::Revoked,
                core::State::Refused(refusal) => break refusal.into(),
                core::State::Replaced => break StopReason::Replaced,
                core::State::SecretRotated => break StopReason::SecretRotated,
                core::State::BackingOff { until_ms } => {
                    let retry_in = Duration::from_millis(until_ms.saturating_sub(now_ms()));
                    self.set_state(ClientState::BackingOff {
                        retry_at: SystemTime::now() + retry_in,
                    });
                    if !self.idle_for(retry_in).await {
                        break StopReason::Closed;
                    }
                    let _ = self.shared.inner.lock().await.core.handle_timeout(now_ms());
                }
                core::State::Disconnected
                | core::State::Authenticating
                | core::State::Connected => {
                    if let Err(stop) = self.attempt().await {
                        break stop;
                    }
                }
            }
        };
        self.set_state(ClientState::Stopped(stop.clone()));
        self.outgoing.push_back(Event::Stopped(stop));
        // Hand over what is left (signals first, then the stop), unless the
        // application is gone or closing.
        while let Some(event) = self.outgoing.pop_front() {
            if *self.closing.borrow() {
                break;
            }
            tokio::select! {
                sent = self.events.send(event) => if sent.is_err() { break },
                _ = self.closing.changed() => break,
            }
        }
    }

    fn set_state(&self, state: ClientState) {
        self.state.send_if_modified(|current| {
            let changed = *current != state;
            *current = state;
            changed
        });
    }

    /// Waits `duration` while handing events to the application; false if
    /// the client is closing.
    async fn idle_for(&mut self, duration: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + duration;
        loop {
            tokio::select! {
                biased;
                _ = closing(&mut self.closing) => return false,
                permit = self.events.reserve(), if !self.outgoing.is_empty() => match permit {
                    Ok(permit) => permit.send(self.outgoing.pop_front().expect("not empty")),
                    Err(_) => return false,
                },
                _ = tokio::time::sleep_until(deadline) => return true,
            }
        }
    }

    /// One connection attempt and, if it succeeds, the session on it.
    async fn attempt(&mut self) -> Result<(), StopReason> {
        self.set_state(ClientState::Connecting);
        let opened = tokio::select! {
            biased;
            _ = closing(&mut self.closing) => return Err(StopReason::Closed),
            opened = tokio::time::timeout(
                CONNECT_TIMEOUT,
                open(&self.server, &self.server_name, &self.quic, self.udp),
            ) => opened,
        };
        let (endpoint, connection, mut send, mut recv) = match opened {
            Ok(Ok(opened)) => opened,
            Ok(Err(why)) => {
                if let Some(certificate) = self.verdict.take() {
                    return Err(StopReason::Certificate(certificate));
                }
                self.lost(why).await;
                return Ok(());
            }
            Err(_) => {
                self.lost(format!(
                    "no answer from {} within {CONNECT_TIMEOUT:?}",
                    self.server
                ))
                .await;
                return Ok(());
            }
        };
        let mut binding = [0u8; 32];
        if connection
            .export_keying_material(&mut binding, CHANNEL_BINDING_LABEL, b"")
            .is_err()
        {
            connection.close(0u32.into(), b"no keying material");
            self.lost("TLS keying material is unavailable".to_owned())
                .await;
            return Ok(());
        }
        self.shared
            .inner
            .lock()
            .await
            .core
            .handle_connected(now_ms(), binding, random());
        let end = self.session(&mut send, &mut recv).await;
        match end {
            SessionEnd::Closing => {
                self.say_goodbye(&mut send).await;
                connection.close(0u32.into(), b"closing");
                // What is left of the close budget after the goodbye.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT - GOODBYE_TIMEOUT, endpoint.wait_idle())
                    .await;
                Err(StopReason::Closed)
            }
            SessionEnd::Lost(why) => {
                connection.close(0u32.into(), b"session lost");
                self.lost(why).await;
                Ok(())
            }
            SessionEnd::Settled => {
                connection.close(0u32.into(), b"done");
                Ok(())
            }
        }
    }

    /// The session on an open connection, until it ends.
    async fn session(
        &mut self,
        send: &mut quinn::SendStream,
        recv: &mut quinn::RecvStream,
    ) -> SessionEnd {
        let mut backlog: Vec<u8> = Vec::new();
        let mut read_buf = vec![0u8; 16 * 1024];
        let mut frames = Vec::new();
        loop {
            let (state, deadline) = {
                let shared = self.shared.clone();
                let mut inner = shared.inner.lock().await;
                let now = now_ms();
                if let Err(why) = self.pump(&mut inner, now, &mut backlog) {
                    return SessionEnd::Lost(why);
                }
                // Due now, whatever else is ready: the select below takes
                // its timer branch last, and under a steady flood of
                // signals it would never get there, and the device would
                // stop pinging.
                if inner.core.poll_timeout().is_some_and(|at| at <= now)
                    && let Err(e) = inner.core.handle_timeout(now)
                {
                    return SessionEnd::Lost(e.to_string());
                }
                let mut frame = [0u8; MAX_WIRE_LEN];
                while let Some(len) = inner.core.poll_transmit(now, &mut frame) {
                    frames.extend_from_slice(&frame[..len]);
                }
                (inner.core.state(), inner.core.poll_timeout())
            };
            if !frames.is_empty() {
                if let Err(e) = send.write_all(&frames).await {
                    return SessionEnd::Lost(format!("sending to the gateway: {e}"));
                }
                frames.clear();
            }
            match state {
                core::State::Authenticating => {}
                core::State::Connected => self.set_state(ClientState::Connected),
                _ => return SessionEnd::Settled,
            }
            let deadline = deadline.map_or(Duration::from_secs(3600), |at| {
                Duration::from_millis(at.saturating_sub(now_ms()))
            });
            let can_read = backlog.is_empty() && self.outgoing.len() < EVENT_CAPACITY;
            tokio::select! {
                biased;
                _ = closing(&mut self.closing) => return SessionEnd::Closing,
                permit = self.events.reserve(), if !self.outgoing.is_empty() => match permit {
                    Ok(permit) => permit.send(self.outgoing.pop_front().expect("not empty")),
                    Err(_) => return SessionEnd::Closing,
                },
                read = recv.read(&mut read_buf), if can_read => match read {
                    Ok(Some(n)) => backlog.extend_from_slice(&read_buf[..n]),
                    Ok(None) => return SessionEnd::Lost("the gateway ended the session".to_owned()),
                    Err(e) => return SessionEnd::Lost(format!("the connection failed: {e}")),
                },
                _ = self.shared.wake.notified() => {}
                _ = tokio::time::sleep(deadline) => {
                    let mut inner = self.shared.inner.lock().await;
                    if let Err(e) = inner.core.handle_timeout(now_ms()) {
                        return SessionEnd::Lost(e.to_string());
                    }
                }
            }
        }
    }

    /// Feeds received bytes to the core and takes its events, applying what
    /// they mean to the journal before anything more is sent.
    fn pump(&mut self, inner: &mut Inner, now: u64, backlog: &mut Vec<u8>) -> Result<(), String> {
        loop {
            self.take_events(inner)?;
            if backlog.is_empty() || self.outgoing.len() >= EVENT_CAPACITY {
                return Ok(());
            }
            match inner.core.handle_bytes(now, backlog) {
                Ok(taken) => {
                    backlog.drain(..taken);
                }
                Err(e) => {
                    let why = match e {
                        SessionError::GatewayLeft(reason) => {
                            format!("the gateway closed the session ({reason:?})")
                        }
                        other => other.to_string(),
                    };
                    self.take_events(inner)?;
                    return Err(why);
                }
            }
        }
    }

    fn take_events(&mut self, inner: &mut Inner) -> Result<(), String> {
        while let Some(event) = inner.core.poll_event() {
            let event = match event {
                core::Event::Connected { gateway_time_ms } => {
                    // The journal must hold the outbox as the core will send
                    // it (renumbered after a report conflict, whose own
                    // write may have failed) and the next number (raised
                    // above the gateway's) before anything is sent: a
                    // failure here ends the session before it sends.
                    let snapshot = inner.core.snapshot();
                    inner
                        .journal
                        .replace_outbox(snapshot.next_seq, snapshot.outbox)
                        .map_err(|e| e.to_string())?;
                    inner.release_durable();
                    Event::Connected { gateway_time_ms }
                }
                core::Event::Signal(signal) => Event::Signal(signal),
                core::Event::ReportsConfirmed { up_to_seq } => {
                    // Written with the next record, not synced: a
                    // confirmation lost in a crash only means a resend,
                    // which the gateway stores once.
                    inner.journal.confirm(up_to_seq);
                    Event::ReportsConfirmed { up_to_seq }
                }
                core::Event::ClockCorrected { offset_ms } => Event::ClockCorrected { offset_ms },
                core::Event::ReportsRenumbered {
                    from_seq,
                    to_seq,
                    count,
                } => {
                    // The new numbers are durable before the reconnect that
                    // sends them.
                    let snapshot = inner.core.snapshot();
                    inner
                        .journal
                        .replace_outbox(snapshot.next_seq, snapshot.outbox)
                        .map_err(|e| e.to_string())?;
                    inner.release_durable();
                    Event::ReportsRenumbered {
                        from_seq,
                        to_seq,
                        count,
                    }
                }
                core::Event::Disconnected { reconnect_at_ms } => Event::Disconnected {
                    reason: self.reason.clone(),
                    retry_in: Duration::from_millis(reconnect_at_ms.saturating_sub(now_ms())),
                },
                // The run loop reports the stop once, with its reason.
                core::Event::Revoked
                | core::Event::Refused(_)
                | core::Event::Replaced
                | core::Event::SecretRotated => continue,
            };
            self.outgoing.push_back(event);
        }
        Ok(())
    }

    /// The connection failed: back off and say why.
    async fn lost(&mut self, why: String) {
        self.reason = why;
        let shared = self.shared.clone();
        let mut inner = shared.inner.lock().await;
        inner.core.handle_disconnected(now_ms(), jitter());
        // Only the journal-free events can come out of a disconnection.
        let _ = self.take_events(&mut inner);
    }

    /// Tells the gateway the device is leaving, without waiting long.
    async fn say_goodbye(&mut self, send: &mut quinn::SendStream) {
        let mut frames = Vec::new();
        {
            let mut inner = self.shared.inner.lock().await;
            inner.core.close();
            let mut frame = [0u8; MAX_WIRE_LEN];
            let now = now_ms();
            while let Some(len) = inner.core.poll_transmit(now, &mut frame) {
                frames.extend_from_slice(&frame[..len]);
            }
        }
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
            let _ = send.write_all(&frames).await;
            let _ = send.finish();
        })
        .await;
    }
}

/// Resolves the gateway, connects and opens the session stream.
async fn open(
    server: &str,
    server_name: &str,
    quic: &quinn::ClientConfig,
    udp: UdpSocketKind,
) -> Result<
    (
        quinn::Endpoint,
        quinn::Connection,
        quinn::SendStream,
        quinn::RecvStream,
    ),
    String,
> {
    let address: SocketAddr = tokio::net::lookup_host(&server)
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", server))?
        .next()
        .ok_or_else(|| format!("{} resolves to no address", server))?;
    let local: SocketAddr = if address.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let endpoint = match udp {
        UdpSocketKind::Platform => quinn::Endpoint::client(local),
        UdpSocketKind::Plain => PlainUdpSocket::bind(local).and_then(|socket| {
            quinn::Endpoint::new_with_abstract_socket(
                quinn::EndpointConfig::default(),
                None,
                Arc::new(socket),
                Arc::new(quinn::TokioRuntime),
            )
        }),
    }
    .map_err(|e| format!("cannot open a UDP socket: {e}"))?;
    let connection = endpoint
        .connect_with(quic.clone(), address, server_name)
        .map_err(|e| format!("cannot connect to {address}: {e}"))?
        .await
        .map_err(|e| format!("connecting to {address}: {e}"))?;
    let (send, recv) = connection
        .open_bi()
        .await
        .map_err(|e| format!("opening the session stream: {e}"))?;
    Ok((endpoint, connection, send, recv))
}
