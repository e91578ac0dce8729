//! The QUIC endpoint and the device session driver: a thin IO loop around
//! the framing of `eagate-protocol` and the decisions of [`crate::auth`].

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eagate_protocol::{
    ALPN, AuthAccepted, Authenticate, CHANNEL_BINDING_LABEL, ChannelName, DecodeError, Decoded,
    DeviceMessage, GatewayMessage, GoingAway, GoingAwayReason, MAX_FRAME_LEN, MAX_WIRE_LEN, Pong,
    Refusal, Report, ReportConflict, ReportsConfirmed, SessionParams, Signal, WireMessage,
    decode_frame, encode_frame,
};
use quinn::{RecvStream, SendStream, VarInt};
use tracing::{debug, info, warn};

use crate::auth::{
    self, Assessment, AuthSettings, FailureReason, FailureThrottle, ThrottleKey, ThrottleSettings,
};
use crate::clock::unix_ms;
use crate::metrics::Metrics;
use crate::nonces::NonceStore;
use crate::notices::{EndingReason, Notice, Notices};
use crate::registry::{DeviceRecord, DeviceRegistry, RegistryError};
use crate::reports::{Ingested, ReportStore, ReportStoreError, SessionEpoch, StoredReport};
use crate::seal::MasterKey;
use crate::sessions::{LiveSession, LiveSessions, Mailbox, SharedPresence};
use crate::signals::{Appended, PositionStore, SignalDraft, SignalHub, SignalLog, SignalLogError};
use crate::tls::ServerIdentity;
use eagate_protocol::DeviceSecret;

/// QUIC application close codes the gateway uses: every way a connection
/// ends has its own, so a device (or a capture) can tell why without
/// decoding the stream. Where the stream is open, the gateway first sends
/// the message named here, then finishes the stream and closes.
pub mod close_code {
    /// The device said `GoingAway`: the session ended normally.
    pub const DONE: u32 = 0;
    /// The device broke the protocol: a malformed, oversized or truncated
    /// frame, a first message other than `Authenticate`, a second
    /// `Authenticate`, report sequence 0 or too far ahead, or a report
    /// about a signal of a channel the device never followed. After
    /// `GoingAway(ProtocolViolation)`.
    pub const PROTOCOL_VIOLATION: u32 = 1;
    /// Authentication failed (`AuthRefused(Failed)`).
    pub const AUTH_FAILED: u32 = 2;
    /// No `Authenticate` within the deadline; after `GoingAway(AuthTimeout)`
    /// when the device had opened its stream.
    pub const AUTH_TIMEOUT: u32 = 3;
    /// The gateway is shutting down; after `GoingAway(Shutdown)`.
    pub const SHUTDOWN: u32 = 4;
    /// The device is revoked: after `AuthRefused(Revoked)`, or
    /// `GoingAway(Revoked)` when revoked while connected.
    pub const REVOKED: u32 = 5;
    /// The device's clock is outside the window; after
    /// `AuthRefused(ClockSkew)`.
    pub const CLOCK_SKEW: u32 = 6;
    /// The device speaks an unsupported protocol version; after
    /// `AuthRefused(UnsupportedVersion)`.
    pub const UNSUPPORTED_VERSION: u32 = 7;
    /// A newer session of the same device took over; after
    /// `GoingAway(Replaced)`.
    pub const REPLACED: u32 = 8;
    /// The device's secret was rotated; after `GoingAway(SecretRotated)`
    /// (`GoingAway(Replaced)` in protocol version 1).
    pub const SECRET_ROTATED: u32 = 9;
    /// A report's sequence number holds another report; after
    /// `ReportConflict` (`GoingAway(ProtocolViolation)` in version 1).
    pub const REPORT_CONFLICT: u32 = 10;
    /// Nothing arrived from the device for the idle timeout; after
    /// `GoingAway(IdleTimeout)` (`GoingAway(ProtocolViolation)` in version 1).
    pub const IDLE_TIMEOUT: u32 = 11;
    /// The gateway could not reach its store; after `GoingAway(Shutdown)`.
    /// Reconnect with backoff.
    pub const STORE_UNAVAILABLE: u32 = 12;
    /// The device did not read what the gateway sent for 10 s; nothing more
    /// can be sent on the stream.
    pub const SLOW_READER: u32 = 13;

    /// Every code's name, by code, for metrics and logs.
    pub const NAMES: [&str; 14] = [
        "done",
        "protocol_violation",
        "auth_failed",
        "auth_timeout",
        "shutdown",
        "revoked",
        "clock_skew",
        "unsupported_version",
        "replaced",
        "secret_rotated",
        "report_conflict",
        "idle_timeout",
        "store_unavailable",
        "slow_reader",
    ];
}

/// Everything a session needs, shared by all connections.
#[derive(Debug)]
pub struct SessionContext {
    /// The device registry.
    pub registry: DeviceRegistry,
    /// The key that opens device secrets.
    pub master_key: MasterKey,
    /// Nonces seen.
    pub nonces: Arc<dyn NonceStore>,
    /// Where reports are stored.
    pub reports: Arc<dyn ReportStore>,
    /// The channels' signal logs.
    pub signals: Arc<dyn SignalLog>,
    /// Live fan-out of new signals.
    pub hub: SignalHub,
    /// How far each device has got in each channel, from its reports.
    pub positions: Arc<dyn PositionStore>,
    /// Where published signals and session endings are announced.
    pub notices: Notices,
    /// Check tunables.
    pub auth: AuthSettings,
    /// Time allowed from connection to successful authentication.
    pub auth_deadline: Duration,
    /// Parameters announced in [`AuthAccepted`].
    pub session: SessionParams,
    /// Repeated failure slow-down.
    pub throttle: Mutex<FailureThrottle>,
    /// Becomes `true` when the gateway shuts down.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// The device sessions live in this process, which take orders (end,
    /// follow the subscriptions again) by device.
    pub live: Arc<LiveSessions>,
    /// Presence shared with the deployment's other processes, on Redis.
    pub shared_presence: Option<SharedPresence>,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
}

impl SessionContext {
    /// Publishes a signal: validates it, appends it durably to the channel's
    /// log, and hands it to every connected subscriber.
    ///
    /// Appending and announcing run in their own task, so a caller that goes
    /// away mid-way (an HTTP client timing out) cannot leave a signal logged
    /// but unannounced.
    pub async fn publish(
        &self,
        channel: &ChannelName,
        draft: SignalDraft,
        idempotency_key: Option<String>,
    ) -> Result<Appended, SignalLogError> {
        let signals = self.signals.clone();
        let notifier = self.notifier();
        let channel = channel.clone();
        tokio::spawn(async move {
            let appended = signals
                .append(&channel, draft, idempotency_key.as_deref())
                .await?;
            if !appended.replayed {
                notifier
                    .send(Notice::Signal(Box::new(appended.signal.clone())))
                    .await;
            }
            Ok(appended)
        })
        .await
        .map_err(|e| SignalLogError::Corrupt(format!("publishing task failed: {e}")))?
    }

    /// Subscribes a device to a channel from now on: it receives signals
    /// published after this call, at once if it is connected. Subscribing
    /// again changes nothing.
    pub async fn subscribe(
        &self,
        device_id: &str,
        channel: &ChannelName,
    ) -> Result<(), RegistryError> {
        let record = self
            .registry
            .get(device_id)
            .await?
            .ok_or_else(|| RegistryError::NotFound(device_id.to_owned()))?;
        if record.channels.iter().any(|c| c == channel.as_str()) {
            return Ok(());
        }
        // The start position is written before the subscription, so a
        // session can never see the subscription without it (and start from
        // the channel's first signal, replaying its history).
        let head = self
            .signals
            .head(channel)
            .await
            .map_err(|e| RegistryError::Corrupt(e.to_string()))?;
        self.positions
            .start_subscription(device_id, channel, head)
            .await
            .map_err(|e| RegistryError::Corrupt(e.to_string()))?;
        self.registry.subscribe(device_id, channel).await?;
        self.notify(Notice::SubscriptionsChanged {
            device_id: device_id.to_owned(),
        })
        .await;
        Ok(())
    }

    /// Unsubscribes a device from a channel; a live session stops following
    /// it at once. Returns whether it was subscribed.
    pub async fn unsubscribe(
        &self,
        device_id: &str,
        channel: &ChannelName,
    ) -> Result<bool, RegistryError> {
        let removed = self.registry.unsubscribe(device_id, channel).await?;
        if removed {
            self.notify(Notice::SubscriptionsChanged {
                device_id: device_id.to_owned(),
            })
            .await;
        }
        Ok(removed)
    }

    /// Gives a device a new secret (shown once) and ends its live sessions,
    /// which were opened with the old one.
    pub async fn rotate_secret(
        &self,
        device_id: &str,
    ) -> Result<(DeviceRecord, DeviceSecret), RegistryError> {
        let rotated = self
            .registry
            .rotate_secret(&self.master_key, device_id)
            .await?;
        self.notify(Notice::SessionEnding {
            device_id: device_id.to_owned(),
            reason: EndingReason::SecretRotated,
        })
        .await;
        Ok(rotated)
    }

    /// Revokes a device: it can no longer authenticate, and its live sessions
    /// are told `GoingAway(Revoked)` and closed at once.
    pub async fn revoke(&self, device_id: &str) -> Result<DeviceRecord, RegistryError> {
        let record = self.registry.revoke(device_id).await?;
        self.notify(Notice::SessionEnding {
            device_id: device_id.to_owned(),
            reason: EndingReason::Revoked,
        })
        .await;
        Ok(record)
    }
}

impl SessionContext {
    /// A context with default timing.
    pub fn new(
        registry: DeviceRegistry,
        master_key: MasterKey,
        nonces: Arc<dyn NonceStore>,
        reports: Arc<dyn ReportStore>,
        signals: Arc<dyn SignalLog>,
        positions: Arc<dyn PositionStore>,
    ) -> Self {
        Self {
            registry,
            master_key,
            nonces,
            reports,
            signals,
            hub: SignalHub::new(256),
            positions,
            notices: Notices::Local,
            auth: AuthSettings::default(),
            auth_deadline: Duration::from_secs(5),
            session: SessionParams {
                ping_interval_ms: 5_000,
                idle_timeout_ms: IDLE_TIMEOUT.as_millis() as u32,
                max_frame_len: MAX_FRAME_LEN as u32,
            },
            throttle: Mutex::new(FailureThrottle::new(ThrottleSettings::default())),
            shutdown: tokio::sync::watch::channel(false).0,
            live: Arc::new(LiveSessions::default()),
            shared_presence: None,
            metrics: Metrics::default(),
        }
    }
}

/// A dead EA (terminal closed, VPS gone) is noticed after this much silence.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The gateway probes a quiet connection this often, so a live but idle EA
/// never reaches the idle timeout and a dead one is found within it.
const KEEP_ALIVE: Duration = Duration::from_secs(3);

/// The QUIC server configuration.
///
/// quinn's defaults suit a few connections moving bulk data (megabytes of
/// flow-control window per connection, 100 concurrent streams). A gateway
/// serves many devices that each exchange small messages on one stream, so
/// windows are small (memory per connection stays in the tens of KiB), a
/// device may open exactly one bidirectional stream and no unidirectional
/// ones, 0-RTT is off (it would allow replays), and idle detection is quick.
pub fn server_config(identity: &ServerIdentity) -> Result<quinn::ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(identity.cert_chain.clone(), identity.key.clone_key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));

    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(1))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(64 * 1024))
        .receive_window(VarInt::from_u32(64 * 1024))
        .send_window(256 * 1024)
        .max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("10 s fits")))
        .keep_alive_interval(Some(KEEP_ALIVE))
        .datagram_receive_buffer_size(None);
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Binds the endpoint.
pub fn bind(identity: &ServerIdentity, addr: SocketAddr) -> std::io::Result<quinn::Endpoint> {
    let config = server_config(identity).map_err(std::io::Error::other)?;
    quinn::Endpoint::server(config, addr)
}

/// Accepts connections until the endpoint is closed, each in its own task,
/// and returns once every session has ended, so the store they share is
/// released when this returns.
pub async fn serve(endpoint: quinn::Endpoint, context: Arc<SessionContext>) {
    let mut sessions = tokio::task::JoinSet::new();
    while let Some(incoming) = endpoint.accept().await {
        // Reap finished sessions so the set stays as small as the live ones.
        while sessions.try_join_next().is_some() {}
        let context = context.clone();
        sessions.spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(connection) => run_session(connection, &context).await,
                Err(e) => debug!(%remote, error = %e, "handshake failed"),
            }
        });
    }
    while sessions.join_next().await.is_some() {}
}

/// Why a session (or an attempt at one) failed.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream read failed: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("bad frame: {0}")]
    Frame(#[from] DecodeError),
    #[error("the stream ended")]
    Ended,
    #[error("the stream ended inside a frame")]
    Truncated,
    #[error("the first message was not Authenticate")]
    NotAuthenticate,
    #[error("Authenticate sent on an authenticated session")]
    AuthenticatedTwice,
    #[error(transparent)]
    Report(ReportStoreError),
    #[error("a report about a signal of channel {0}, which the device never followed")]
    ForeignChannel(ChannelName),
    #[error("the device has not read for {:?}", WRITE_TIMEOUT)]
    WriteTimeout,
}

impl SessionError {
    /// The device broke the protocol (as opposed to the connection or the
    /// gateway failing).
    fn is_protocol_violation(&self) -> bool {
        matches!(
            self,
            Self::Frame(_)
                | Self::Truncated
                | Self::NotAuthenticate
                | Self::AuthenticatedTwice
                | Self::ForeignChannel(_)
                | Self::Report(
                    ReportStoreError::ZeroSequence | ReportStoreError::TooFarAhead { .. }
                )
        )
    }

    /// How a session that failed this way ends.
    fn ending(&self) -> Ending {
        match self {
            _ if self.is_protocol_violation() => Ending::going_away(
                GoingAwayReason::ProtocolViolation,
                close_code::PROTOCOL_VIOLATION,
            ),
            Self::WriteTimeout => Ending::Silent(close_code::SLOW_READER),
            _ => Ending::Gone,
        }
    }
}

/// Reads frames of one direction off a QUIC stream.
struct FrameReader {
    recv: RecvStream,
    buffer: Vec<u8>,
}

impl FrameReader {
    fn new(recv: RecvStream) -> Self {
        Self {
            recv,
            buffer: Vec::with_capacity(1024),
        }
    }

    /// The next message. Cancel-safe: if the future is dropped before it
    /// completes, no received byte is lost or duplicated, so it can sit in a
    /// `select!` beside revocation and shutdown.
    async fn next<M: WireMessage>(&mut self) -> Result<M, SessionError> {
        loop {
            match decode_frame::<M>(&self.buffer)? {
                Decoded::Frame { message, consumed } => {
                    self.buffer.drain(..consumed);
                    return Ok(message);
                }
                Decoded::Incomplete { .. } => {
                    // The decoder has already refused an oversized frame, so
                    // the buffer never holds more than one frame and a chunk.
                    let mut chunk = [0u8; 2048];
                    match self.recv.read(&mut chunk).await? {
                        Some(n) => self.buffer.extend_from_slice(&chunk[..n]),
                        None if self.buffer.is_empty() => return Err(SessionError::Ended),
                        None => return Err(SessionError::Truncated),
                    }
                }
            }
        }
    }
}

/// How long a write may wait for a device that does not read. A device
/// stuck longer is dropped; it resumes from the log when it comes back, and
/// meanwhile its session cannot miss a revocation or a shutdown.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The gateway's half of a session stream, speaking the device's protocol
/// version (version 1 until `Authenticate` says otherwise).
struct DeviceStream {
    send: SendStream,
    version: u16,
}

impl DeviceStream {
    async fn write(&mut self, message: GatewayMessage) -> Result<(), SessionError> {
        let mut frame = [0u8; MAX_WIRE_LEN];
        let len = encode_frame(&message.for_version(self.version), &mut frame)
            .expect("gateway messages always fit a frame");
        tokio::time::timeout(WRITE_TIMEOUT, self.send.write_all(&frame[..len]))
            .await
            .map_err(|_| SessionError::WriteTimeout)??;
        Ok(())
    }
}

/// How a session, or an attempt at one, ends: what the device is told on
/// its stream, when it can be, and the connection's close code.
#[derive(Debug)]
enum Ending {
    /// Tell the device this, then close with the code.
    Tell(LastWord, u32),
    /// Close with the code, saying nothing on the stream (there is none, or
    /// it cannot be written).
    Silent(u32),
    /// The connection is already gone.
    Gone,
}

/// The last message of a session.
#[derive(Debug, Clone, Copy)]
enum LastWord {
    GoingAway(GoingAwayReason),
    Refused(Refusal),
    ReportConflict(u64),
}

impl From<LastWord> for GatewayMessage {
    fn from(word: LastWord) -> Self {
        match word {
            LastWord::GoingAway(reason) => Self::GoingAway(GoingAway { reason }),
            LastWord::Refused(refusal) => Self::AuthRefused(refusal),
            LastWord::ReportConflict(seq) => Self::ReportConflict(ReportConflict { seq }),
        }
    }
}

impl Ending {
    fn going_away(reason: GoingAwayReason, code: u32) -> Self {
        Self::Tell(LastWord::GoingAway(reason), code)
    }

    /// The gateway ends a session on an order (revoked, replaced, rotated)
    /// or at shutdown.
    fn ordered(reason: GoingAwayReason) -> Self {
        let code = match reason {
            GoingAwayReason::Revoked => close_code::REVOKED,
            GoingAwayReason::Replaced => close_code::REPLACED,
            GoingAwayReason::SecretRotated => close_code::SECRET_ROTATED,
            GoingAwayReason::IdleTimeout => close_code::IDLE_TIMEOUT,
            GoingAwayReason::AuthTimeout => close_code::AUTH_TIMEOUT,
            GoingAwayReason::ProtocolViolation => close_code::PROTOCOL_VIOLATION,
            GoingAwayReason::Shutdown => close_code::SHUTDOWN,
        };
        Self::going_away(reason, code)
    }

    /// The store failed under a session: the device should come back soon.
    fn store_unavailable() -> Self {
        Self::going_away(GoingAwayReason::Shutdown, close_code::STORE_UNAVAILABLE)
    }

    fn refused(refusal: Refusal) -> Self {
        let code = match refusal {
            Refusal::Failed => close_code::AUTH_FAILED,
            Refusal::ClockSkew(_) => close_code::CLOCK_SKEW,
            Refusal::Revoked => close_code::REVOKED,
            Refusal::UnsupportedVersion(_) => close_code::UNSUPPORTED_VERSION,
        };
        Self::Tell(LastWord::Refused(refusal), code)
    }

    /// Carries it out: the message (if the stream can take it), the end of
    /// the stream, a moment for both to reach the device (closing at once
    /// would discard unsent stream data), then the close.
    async fn carry_out(
        self,
        connection: &quinn::Connection,
        stream: Option<&mut DeviceStream>,
        metrics: &Metrics,
    ) {
        let code = match self {
            Self::Gone => return,
            Self::Silent(code) => code,
            Self::Tell(word, code) => {
                if let Some(stream) = stream
                    && stream.write(word.into()).await.is_ok()
                {
                    let _ = stream.send.finish();
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), stream.send.stopped()).await;
                }
                code
            }
        };
        metrics.session_ended(code);
        let name = close_code::NAMES.get(code as usize).copied().unwrap_or("");
        connection.close(code.into(), name.as_bytes());
    }
}

/// An authenticated session, ready to run.
struct Accepted<'a> {
    auth: Authenticate,
    live: LiveSession<'a>,
    stream: DeviceStream,
    reader: FrameReader,
}

async fn run_session(connection: quinn::Connection, context: &SessionContext) {
    let remote = connection.remote_address();
    let mut stream = None;
    let accepted = authenticate(&connection, context, &mut stream).await;
    let Accepted {
        auth,
        live,
        mut stream,
        mut reader,
    } = match accepted {
        Ok(accepted) => accepted,
        Err(ending) => {
            ending
                .carry_out(&connection, stream.as_mut(), &context.metrics)
                .await;
            return;
        }
    };
    let device = auth.device_id.as_str();
    let epoch = live.epoch();
    info!(%remote, device, epoch = epoch.0, version = stream.version, "device authenticated");
    context.session_started(device).await;
    let mut session = DeviceSession {
        auth: &auth,
        epoch,
        mailbox: live.mailbox(),
        context,
        stream: &mut stream,
        reader: &mut reader,
        deliveries: Deliveries::default(),
        followed: HashSet::new(),
    };
    let ending = session.run().await;
    let mut deliveries = std::mem::take(&mut session.deliveries);
    match &ending {
        Ending::Tell(word, _) => info!(device, ?word, "ending session"),
        Ending::Silent(code) => info!(device, code, "closing session"),
        Ending::Gone => debug!(device, "session ended"),
    }
    ending
        .carry_out(&connection, Some(&mut stream), &context.metrics)
        .await;
    // Only now, with the connection closed: a newer session of the device
    // waits for this before it is accepted.
    context.session_ended(live, true).await;
    // Bookkeeping for the executions query, after the takeover was let go.
    deliveries.record(device, context).await;
}

/// Runs the checks. On success the device's session is the only live one
/// (older ones are ending) and it has been told `AuthAccepted`; otherwise
/// the returned ending says what to tell it. The stream, once the device
/// opened it, is left in `opened` for telling.
async fn authenticate<'a>(
    connection: &quinn::Connection,
    context: &'a SessionContext,
    opened: &mut Option<DeviceStream>,
) -> Result<Accepted<'a>, Ending> {
    let deadline = tokio::time::Instant::now() + context.auth_deadline;
    let timed_out = || {
        debug!(remote = %connection.remote_address(), "authentication deadline");
        context.metrics.auth_failure(FailureReason::Timeout);
    };
    let (send, recv) = match tokio::time::timeout_at(deadline, connection.accept_bi()).await {
        Ok(Ok(halves)) => halves,
        Ok(Err(_lost)) => return Err(Ending::Gone),
        Err(_elapsed) => {
            timed_out();
            return Err(Ending::Silent(close_code::AUTH_TIMEOUT));
        }
    };
    let stream = opened.insert(DeviceStream { send, version: 1 });
    let mut reader = FrameReader::new(recv);
    let auth = match tokio::time::timeout_at(deadline, reader.next::<DeviceMessage>()).await {
        Err(_elapsed) => {
            timed_out();
            return Err(Ending::going_away(
                GoingAwayReason::AuthTimeout,
                close_code::AUTH_TIMEOUT,
            ));
        }
        Ok(Ok(DeviceMessage::Authenticate(auth))) => auth,
        Ok(Ok(_)) => {
            return Err(malformed(
                connection,
                context,
                SessionError::NotAuthenticate,
            ));
        }
        // Opened its stream and finished it without a word: as broken as a
        // cut-off frame.
        Ok(Err(SessionError::Ended)) => {
            return Err(malformed(connection, context, SessionError::Truncated));
        }
        Ok(Err(e)) if e.is_protocol_violation() => return Err(malformed(connection, context, e)),
        Ok(Err(_lost)) => return Err(Ending::Gone),
    };
    let device = auth.device_id.as_str();
    // The checks and the new session's epoch have a deadline of their own:
    // the device has done its part, and a gateway whose store does not
    // answer must not hold connections open without end.
    let checked = async {
        check(connection, context, &auth).await?;
        context.reports.begin_session(device).await.map_err(|e| {
            context.metrics.store_error();
            warn!(device, error = %e, "beginning a session failed");
            Ending::store_unavailable()
        })
    };
    let (epoch, confirmed_report_seq) =
        match tokio::time::timeout(context.auth_deadline, checked).await {
            Ok(Ok(begun)) => begun,
            Ok(Err(ending)) => return Err(ending),
            Err(_elapsed) => {
                context.metrics.store_error();
                warn!(device, "the authentication checks did not finish in time");
                return Err(Ending::store_unavailable());
            }
        };
    let (live, alone) = context.take_over(device, epoch).await;
    if !alone {
        warn!(
            device,
            "an older session of the device did not close in time; its reports are fenced off"
        );
    }
    stream.version = auth.protocol_version;
    let welcome = GatewayMessage::AuthAccepted(AuthAccepted {
        gateway_time_ms: unix_ms(),
        session: context.session,
        confirmed_report_seq,
    });
    if stream.write(welcome).await.is_err() {
        context.session_ended(live, false).await;
        return Err(Ending::Gone);
    }
    let stream = opened.take().expect("the stream was opened above");
    Ok(Accepted {
        auth,
        live,
        stream,
        reader,
    })
}

/// A broken first frame: counted, and answered as a protocol violation.
fn malformed(connection: &quinn::Connection, context: &SessionContext, e: SessionError) -> Ending {
    debug!(remote = %connection.remote_address(), error = %e, "closing before authentication");
    context.metrics.auth_failure(FailureReason::Malformed);
    Ending::going_away(
        GoingAwayReason::ProtocolViolation,
        close_code::PROTOCOL_VIOLATION,
    )
}

/// The checks of `DEVICE-AUTH.md` after the frame, with the slow-down of
/// repeated failures; a refusal is the ending that tells the device.
async fn check(
    connection: &quinn::Connection,
    context: &SessionContext,
    auth: &Authenticate,
) -> Result<(), Ending> {
    let mut binding = [0u8; 32];
    if connection
        .export_keying_material(&mut binding, CHANNEL_BINDING_LABEL, b"")
        .is_err()
    {
        // Cannot happen with TLS 1.3; without a binding nothing can be checked.
        return Err(Ending::refused(Refusal::Failed));
    }
    let source = ThrottleKey::Source(connection.remote_address().ip());
    // Per (device, source): failures from one address cannot slow the
    // device's logins from another.
    let device_key =
        ThrottleKey::Device(auth.device_id.to_string(), connection.remote_address().ip());
    let delay = {
        let throttle = context.throttle.lock().expect("throttle lock");
        let now = Instant::now();
        throttle
            .delay(&source, now)
            .max(throttle.delay(&device_key, now))
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match decide(auth, &binding, context).await {
        Ok(()) => {
            context
                .throttle
                .lock()
                .expect("throttle lock")
                .record_success(&device_key);
            Ok(())
        }
        // Not the device's failure: it comes back when the store does, and
        // is neither refused (the SDK would stop for good) nor slowed down.
        Err(Denied::StoreTrouble) => Err(Ending::store_unavailable()),
        Err(Denied::Refused(refusal, reason)) => {
            {
                let mut throttle = context.throttle.lock().expect("throttle lock");
                let now = Instant::now();
                throttle.record_failure(source, now);
                throttle.record_failure(device_key, now);
            }
            context.metrics.auth_failure(reason);
            info!(
                remote = %connection.remote_address(),
                device = %auth.device_id,
                reason = reason.as_str(),
                "authentication refused"
            );
            Err(Ending::refused(refusal))
        }
    }
}

/// Why an authentication did not pass the checks.
enum Denied {
    /// The device is refused, with this answer.
    Refused(Refusal, FailureReason),
    /// The store could not be asked.
    StoreTrouble,
}

async fn decide(
    auth: &Authenticate,
    binding: &[u8; 32],
    context: &SessionContext,
) -> Result<(), Denied> {
    let credentials = context
        .registry
        .credentials(&context.master_key, &auth.device_id)
        .await
        .map_err(|e| {
            context.metrics.store_error();
            warn!(error = %e, "device lookup failed");
            Denied::StoreTrouble
        })?;
    let now_ms = unix_ms();
    match auth::assess(auth, credentials.as_ref(), binding, now_ms, &context.auth) {
        Assessment::Refuse(refusal, reason) => Err(Denied::Refused(refusal, reason)),
        Assessment::ClaimNonce => {
            let ttl = context.auth.nonce_ttl.as_millis() as u64;
            match context
                .nonces
                .claim(&auth.device_id, &auth.nonce, now_ms, ttl)
                .await
            {
                Ok(true) => Ok(()),
                Ok(false) => Err(Denied::Refused(
                    Refusal::Failed,
                    FailureReason::ReplayedNonce,
                )),
                Err(e) => {
                    context.metrics.store_error();
                    warn!(error = %e, "nonce store failed");
                    Err(Denied::StoreTrouble)
                }
            }
        }
    }
}

/// How often a session records how far it has delivered each channel.
/// Batched, not per signal: the record only serves the executions query
/// ("delivered, not yet reported"), so it may lag by this much.
const DELIVERY_RECORD_INTERVAL: Duration = Duration::from_millis(500);

/// The newest position written to the device per channel, not yet recorded.
#[derive(Debug, Default)]
struct Deliveries(HashMap<ChannelName, u64>);

impl Deliveries {
    fn note(&mut self, signal: &Signal) {
        // Per signal written: clone the channel name only for a new entry.
        match self.0.get_mut(&signal.channel) {
            Some(newest) => *newest = (*newest).max(signal.position),
            None => {
                self.0.insert(signal.channel.clone(), signal.position);
            }
        }
    }

    async fn record(&mut self, device: &str, context: &SessionContext) {
        for (channel, position) in self.0.drain() {
            if let Err(e) = context
                .positions
                .mark_delivered(device, &channel, position)
                .await
            {
                context.metrics.store_error();
                warn!(device, %channel, error = %e, "recording a delivery failed");
            }
        }
    }
}

/// One authenticated device session: streams signals, stores and confirms
/// reports, answers pings, and ends on the device's going-away, its
/// silence, an order (revoked, replaced, rotated), or shutdown.
struct DeviceSession<'a> {
    auth: &'a Authenticate,
    epoch: SessionEpoch,
    /// Where orders for this session arrive (end it, follow the
    /// subscriptions again).
    mailbox: &'a Mailbox,
    context: &'a SessionContext,
    stream: &'a mut DeviceStream,
    reader: &'a mut FrameReader,
    deliveries: Deliveries,
    /// Channels the device follows or has followed: a report about one of
    /// their signals is one it may have received.
    followed: HashSet<ChannelName>,
}

impl DeviceSession<'_> {
    fn device(&self) -> &str {
        self.auth.device_id.as_str()
    }

    async fn run(&mut self) -> Ending {
        match self.stream_and_ingest().await {
            Ok(ending) => ending,
            Err(e) => {
                if e.is_protocol_violation() {
                    warn!(device = self.device(), error = %e, "protocol violation");
                } else {
                    debug!(device = self.device(), error = %e, "session failed");
                }
                e.ending()
            }
        }
    }

    async fn stream_and_ingest(&mut self) -> Result<Ending, SessionError> {
        let context = self.context;
        let device = self.auth.device_id.as_str();
        let epoch = self.epoch;
        let mailbox = self.mailbox;
        let mut shutdown = context.shutdown.subscribe();
        // Revoked or replaced between the checks and the session taking
        // orders (orders since are in its mailbox)?
        if let Some(reason) = ended_meanwhile(device, epoch, context).await {
            return Ok(Ending::ordered(reason));
        }
        // One follower per subscribed channel feeds this bounded queue; the
        // followers end with the session when the set is dropped.
        let (signal_tx, mut signal_rx) = tokio::sync::mpsc::channel(64);
        let mut followers = Followers::new(signal_tx);
        // Without its subscriptions the session would look healthy and carry
        // nothing: end it, so the device reconnects when the store is back.
        if let Err(e) = self.follow_subscriptions(&mut followers).await {
            context.metrics.store_error();
            warn!(device, error = %e, "starting the session's channels failed");
            return Ok(Ending::store_unavailable());
        }
        let mut record_deliveries = tokio::time::interval(DELIVERY_RECORD_INTERVAL);
        record_deliveries.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The liveness contract: a device sends something at least every
        // ping interval, so silence for the idle timeout means it is gone
        // (QUIC keep-alives alone would hold a dead EA's connection open).
        let idle_timeout = Duration::from_millis(u64::from(context.session.idle_timeout_ms));
        let idle = tokio::time::sleep(idle_timeout);
        tokio::pin!(idle);
        loop {
            // Biased, in this order: orders to end or change the session come
            // before traffic, so a revocation, takeover or unsubscription is
            // acted on before the next signal is written; a device's reports
            // come before new signals, so a flood of signals cannot hold back
            // confirmations.
            tokio::select! {
                biased;
                orders = mailbox.next() => {
                    if let Some(reason) = orders.end {
                        return Ok(Ending::ordered(reason));
                    }
                    if orders.follow_subscriptions
                        && let Err(e) = self.follow_subscriptions(&mut followers).await
                    {
                        context.metrics.store_error();
                        warn!(device, error = %e, "changing the session's channels failed");
                        return Ok(Ending::store_unavailable());
                    }
                }
                () = stopping(&mut shutdown) => {
                    return Ok(Ending::ordered(GoingAwayReason::Shutdown));
                }
                // A follower only ends on a store failure: end the session, so
                // the device reconnects and resumes, rather than let it miss a
                // channel silently.
                Some(Ok(Err((channel, e)))) = followers.tasks.join_next() => {
                    context.metrics.store_error();
                    warn!(device, %channel, error = %e, "following a channel failed; ending the session");
                    return Ok(Ending::store_unavailable());
                }
                message = self.reader.next::<DeviceMessage>() => {
                    idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                    match message? {
                        DeviceMessage::Ping(ping) => {
                            self.stream.write(GatewayMessage::Pong(Pong { token: ping.token })).await?;
                        }
                        DeviceMessage::Pong(_) => {}
                        DeviceMessage::GoingAway(_) => return Ok(Ending::Silent(close_code::DONE)),
                        DeviceMessage::Authenticate(_) => return Err(SessionError::AuthenticatedTwice),
                        DeviceMessage::Report(report) => {
                            if let Some(ending) = self.ingest(report).await? {
                                return Ok(ending);
                            }
                        }
                    }
                },
                Some(signal) = signal_rx.recv() => {
                    // Queued before an unsubscription was acted on: not sent.
                    if !followers.running.contains_key(&signal.channel) {
                        continue;
                    }
                    self.stream.write(GatewayMessage::Signal(Signal::clone(&signal))).await?;
                    context.metrics.signal_delivered();
                    self.deliveries.note(&signal);
                }
                // Only armed while something awaits recording, so an idle
                // session is not woken twice a second for nothing.
                _ = record_deliveries.tick(), if !self.deliveries.0.is_empty() => {
                    self.deliveries.record(device, context).await;
                }
                () = &mut idle => {
                    return Ok(Ending::ordered(GoingAwayReason::IdleTimeout));
                }
            }
        }
    }

    /// Stores a report and confirms it, or refuses it. Returns how the
    /// session ends when the report ends it.
    async fn ingest(&mut self, report: Report) -> Result<Option<Ending>, SessionError> {
        let context = self.context;
        let device = self.auth.device_id.as_str();
        let arrived = Instant::now();
        if report.seq == 0 {
            return Err(SessionError::Report(ReportStoreError::ZeroSequence));
        }
        // A report the store cannot take now ends the session: the device
        // keeps it and resends it, with every later one, after reconnecting.
        // Going on to the next report instead would store reports after a
        // gap, and a later confirmation could cover the one skipped.
        let store_failed = |what: &str, e: &dyn std::fmt::Display| {
            context.metrics.store_error();
            warn!(device, seq = report.seq, error = %e, "{what} failed; ending the session");
            Ok(Some(Ending::store_unavailable()))
        };
        // Where the signal sits: to check the device could have received it,
        // and to record its position once the report is stored.
        let place = match context.signals.locate(report.signal_id).await {
            Ok(place) => place,
            Err(e) => return store_failed("locating a reported signal", &e),
        };
        match &place {
            Some((channel, _)) => match self.has_followed(channel).await {
                Ok(true) => {}
                Ok(false) => return Err(SessionError::ForeignChannel(channel.clone())),
                Err(e) => return store_failed("reading a subscription", &e),
            },
            // Expired from the log while the device was away, or never
            // published at all: either way the report is the device's record
            // of what its terminal did, and is kept.
            None => {
                context.metrics.report_about_unknown_signal();
                info!(device, seq = report.seq, signal = %report.signal_id, "a report about a signal not in the log");
            }
        }
        let stored = StoredReport::new(device, &report, unix_ms());
        let ingested = match context.reports.ingest(&stored, Some(self.epoch)).await {
            Ok(ingested) => ingested,
            Err(e @ (ReportStoreError::ZeroSequence | ReportStoreError::TooFarAhead { .. })) => {
                return Err(SessionError::Report(e));
            }
            Err(e) => return store_failed("storing a report", &e),
        };
        context
            .metrics
            .report_ingested(&ingested, arrived.elapsed());
        let confirmed_up_to = match ingested {
            Ingested::Stored { confirmed_up_to } | Ingested::AlreadyStored { confirmed_up_to } => {
                confirmed_up_to
            }
            Ingested::Conflict { stored } => {
                warn!(
                    device,
                    seq = report.seq,
                    stored = %serde_json::to_string(&stored).unwrap_or_default(),
                    offered = %serde_json::to_string(&StoredReport { stored_at_ms: 0, ..StoredReport::new(device, &report, 0) }).unwrap_or_default(),
                    "a report conflicts with the one stored under its number; not confirmed"
                );
                return Ok(Some(Ending::Tell(
                    LastWord::ReportConflict(report.seq),
                    close_code::REPORT_CONFLICT,
                )));
            }
            // A newer session took over; its order may still be on its way.
            Ingested::Superseded => return Ok(Some(Ending::ordered(GoingAwayReason::Replaced))),
        };
        if let Some((channel, position)) = place {
            // Before confirming, and on resends too: advancing keeps the
            // maximum, so repeating it is harmless.
            if let Err(e) = context.positions.advance(device, &channel, position).await {
                warn!(device, error = %e, "recording a device position failed");
            }
        }
        // Never above this report: a higher watermark may hold reports of
        // another installation of the device that this session has not sent,
        // and which this device must not take for its own.
        let up_to_seq = confirmed_up_to.min(report.seq);
        self.stream
            .write(GatewayMessage::ReportsConfirmed(ReportsConfirmed {
                up_to_seq,
            }))
            .await?;
        Ok(None)
    }

    /// Whether the device follows, or ever followed, `channel`.
    async fn has_followed(&mut self, channel: &ChannelName) -> Result<bool, SignalLogError> {
        if self.followed.contains(channel) {
            return Ok(true);
        }
        let ever = self
            .context
            .positions
            .subscription_start(self.device(), channel)
            .await?
            .is_some();
        if ever {
            self.followed.insert(channel.clone());
        }
        Ok(ever)
    }

    /// Follows exactly the channels the device is subscribed to now: starts
    /// the new ones, stops the dropped ones, leaves the rest running.
    async fn follow_subscriptions(&mut self, followers: &mut Followers) -> Result<(), FollowError> {
        let context = self.context;
        let device = self.device();
        let wanted = subscribed_channels(device, context).await?;
        followers.running.retain(|channel, task| {
            let keep = wanted.contains(channel);
            if !keep {
                task.abort();
            }
            keep
        });
        for channel in wanted {
            if followers.running.contains_key(&channel) {
                continue;
            }
            let after = start_after(self.auth, &channel, context).await?;
            let log = context.signals.clone();
            let hub = context.hub.clone();
            let out = followers.out.clone();
            let follower = channel.clone();
            let task = followers.tasks.spawn(async move {
                hub.follow(log, follower.clone(), after, out)
                    .await
                    .map_err(|e| (follower, e))
            });
            self.followed.insert(channel.clone());
            followers.running.insert(channel, task);
        }
        Ok(())
    }
}

/// Why a session's channels could not be (re)started.
#[derive(Debug, thiserror::Error)]
enum FollowError {
    #[error("reading subscriptions: {0}")]
    Subscriptions(#[from] RegistryError),
    #[error("reading where to start: {0}")]
    Start(#[from] SignalLogError),
}

/// A session's channel followers, one per subscribed channel, all feeding
/// the session's one bounded queue.
struct Followers {
    tasks: tokio::task::JoinSet<Result<(), (ChannelName, SignalLogError)>>,
    running: HashMap<ChannelName, tokio::task::AbortHandle>,
    out: tokio::sync::mpsc::Sender<Arc<Signal>>,
}

impl Followers {
    fn new(out: tokio::sync::mpsc::Sender<Arc<Signal>>) -> Self {
        Self {
            tasks: tokio::task::JoinSet::new(),
            running: HashMap::new(),
            out,
        }
    }
}

/// Where a device's session starts in a channel: after the resume point it
/// named, else after the position recorded for it (its last report, or
/// where its subscription started); never before its subscription's start,
/// whatever it names.
///
/// A position beyond the channel's head comes from a log that no longer
/// exists (the store was reset, or the device's journal is another
/// deployment's): the device has seen nothing of this log, and is sent it
/// from its subscription's start (or the log's first signal), as after any
/// absence. Waiting for the log to pass that position would withhold every
/// signal until then.
async fn start_after(
    auth: &Authenticate,
    channel: &ChannelName,
    context: &SessionContext,
) -> Result<u64, SignalLogError> {
    let device = auth.device_id.as_str();
    let named = auth
        .resume
        .iter()
        .find(|point| point.channel == *channel)
        .map(|point| point.position);
    let start = context
        .positions
        .subscription_start(device, channel)
        .await?
        .unwrap_or(0);
    let head = context.signals.head(channel).await?;
    let wanted = match named {
        Some(position) => position,
        None => match context.positions.get(device, channel).await? {
            Some(position) => position,
            // Subscribing always records a start; without one, start from
            // now rather than replay the channel's history.
            None => head,
        },
    };
    let after = wanted.max(start);
    if after <= head {
        return Ok(after);
    }
    context.metrics.resume_beyond_head();
    let restart = if start <= head { start } else { 0 };
    warn!(
        device,
        %channel,
        resume = after,
        head,
        from = restart,
        "a resume point beyond the channel's head; sending the log from the subscription's start"
    );
    Ok(restart)
}

/// Resolves when the gateway starts shutting down (drops the watch guard
/// before returning, so the session future stays `Send`).
async fn stopping(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}

async fn subscribed_channels(
    device: &str,
    context: &SessionContext,
) -> Result<Vec<ChannelName>, RegistryError> {
    Ok(match context.registry.get(device).await? {
        Some(record) => record
            .channels
            .iter()
            .filter_map(|name| ChannelName::new(name).ok())
            .collect(),
        None => Vec::new(),
    })
}

/// Whether the device's session under `epoch` should have ended already, by
/// what the stores say now: revoked, or replaced by a newer session.
async fn ended_meanwhile(
    device: &str,
    epoch: SessionEpoch,
    context: &SessionContext,
) -> Option<GoingAwayReason> {
    if matches!(
        context.registry.get(device).await,
        Ok(Some(record)) if record.revoked_at_ms.is_some()
    ) {
        return Some(GoingAwayReason::Revoked);
    }
    match context.reports.current_session(device).await {
        Ok(newest) if newest > epoch => Some(GoingAwayReason::Replaced),
        _ => None,
    }
}
