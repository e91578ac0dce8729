//! The QUIC endpoint and the device session driver: a thin IO loop around
//! the framing of `eagate-protocol` and the decisions of [`crate::auth`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eagate_protocol::{
    ALPN, AuthAccepted, Authenticate, CHANNEL_BINDING_LABEL, ChannelName, DecodeError, Decoded,
    DeviceMessage, GatewayMessage, GoingAway, GoingAwayReason, MAX_FRAME_LEN, MAX_WIRE_LEN, Pong,
    Refusal, ReportsConfirmed, SessionParams, Signal, WireMessage, decode_frame, encode_frame,
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
use crate::reports::{ReportStore, StoredReport};
use crate::seal::MasterKey;
use crate::signals::{Appended, PositionStore, SignalDraft, SignalHub, SignalLog, SignalLogError};
use crate::tls::ServerIdentity;
use eagate_protocol::DeviceSecret;

/// QUIC application close codes the gateway uses. A device sees them as the
/// connection's close reason.
pub mod close_code {
    /// Normal end of a session.
    pub const DONE: u32 = 0;
    /// The peer sent something the protocol does not allow.
    pub const PROTOCOL_VIOLATION: u32 = 1;
    /// Authentication was refused.
    pub const AUTH_REFUSED: u32 = 2;
    /// No authentication arrived within the deadline.
    pub const AUTH_TIMEOUT: u32 = 3;
    /// The gateway is shutting down.
    pub const SHUTDOWN: u32 = 4;
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
    /// Devices whose live sessions must end now (revoked, or secret rotated).
    pub revocations: tokio::sync::broadcast::Sender<SessionEnding>,
    /// Devices whose subscriptions changed: their live sessions start or
    /// stop following channels at once.
    pub subscription_changes: tokio::sync::broadcast::Sender<String>,
    /// Becomes `true` when the gateway shuts down.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// Which devices are connected here, and when each was last seen.
    pub presence: Mutex<HashMap<String, Presence>>,
    /// Presence shared with the deployment's other processes, on Redis.
    pub shared_presence: Option<SharedPresence>,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
}

/// An order to end a device's live sessions, and what to tell the device.
#[derive(Debug, Clone)]
pub struct SessionEnding {
    /// The device.
    pub device_id: String,
    /// `Revoked` (do not come back) or `Replaced` (reconnect with the new
    /// secret).
    pub reason: GoingAwayReason,
}

/// A device's connection state, kept in memory since the gateway started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Presence {
    /// Live authenticated sessions.
    pub sessions: usize,
    /// When the device last authenticated or disconnected, Unix ms.
    pub last_seen_ms: u64,
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
            .set(device_id, channel, head)
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
            reason: EndingReason::Replaced,
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

    /// The device's connection state: in this process, or, when processes
    /// share a Redis, on every gateway of the deployment.
    pub async fn presence_of(&self, device_id: &str) -> Presence {
        let local = self.local_presence(device_id);
        let Some(shared) = &self.shared_presence else {
            return local;
        };
        match shared.stores.presence(device_id, unix_ms()).await {
            Ok((gateways, last_seen)) => Presence {
                sessions: gateways.max(local.sessions),
                last_seen_ms: last_seen.unwrap_or(0).max(local.last_seen_ms),
            },
            Err(e) => {
                self.metrics.store_error();
                warn!(device = device_id, error = %e, "reading presence failed");
                local
            }
        }
    }

    fn local_presence(&self, device_id: &str) -> Presence {
        self.presence
            .lock()
            .expect("presence lock")
            .get(device_id)
            .copied()
            .unwrap_or_default()
    }

    /// The devices with a live session in this process.
    pub fn connected_here(&self) -> Vec<String> {
        self.presence
            .lock()
            .expect("presence lock")
            .iter()
            .filter(|(_, presence)| presence.sessions > 0)
            .map(|(device, _)| device.clone())
            .collect()
    }

    async fn session_started(&self, device_id: &str) {
        self.metrics.connection(1);
        let now = unix_ms();
        {
            let mut presence = self.presence.lock().expect("presence lock");
            let entry = presence.entry(device_id.to_owned()).or_default();
            entry.sessions += 1;
            entry.last_seen_ms = now;
        }
        self.share_presence(device_id, true, now).await;
    }

    async fn session_ended(&self, device_id: &str) {
        self.metrics.connection(-1);
        let now = unix_ms();
        let still_here = {
            let mut presence = self.presence.lock().expect("presence lock");
            let entry = presence.entry(device_id.to_owned()).or_default();
            entry.sessions = entry.sessions.saturating_sub(1);
            entry.last_seen_ms = now;
            entry.sessions > 0
        };
        self.share_presence(device_id, still_here, now).await;
    }

    async fn share_presence(&self, device_id: &str, connected: bool, now_ms: u64) {
        let Some(shared) = &self.shared_presence else {
            return;
        };
        if let Err(e) = shared
            .stores
            .mark_presence(device_id, &shared.instance, connected, now_ms)
            .await
        {
            // Only the status shown to admins suffers; it mends itself
            // within the presence TTL.
            self.metrics.store_error();
            warn!(device = device_id, error = %e, "recording presence failed");
        }
    }
}

/// Presence shared through Redis, so the sidecar and every gateway see
/// which devices are connected anywhere.
#[derive(Debug, Clone)]
pub struct SharedPresence {
    /// The shared stores.
    pub stores: Arc<crate::redis_store::RedisStores>,
    /// This process's name in the presence records: random, per start.
    pub instance: String,
}

impl SharedPresence {
    /// Renews this process's presence records every third of their TTL,
    /// until aborted.
    pub async fn renew(self, context: Arc<SessionContext>) {
        let every = Duration::from_millis(crate::redis_store::PRESENCE_TTL_MS / 3);
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let devices = context.connected_here();
            if let Err(e) = self
                .stores
                .renew_presence(&devices, &self.instance, unix_ms())
                .await
            {
                context.metrics.store_error();
                warn!(error = %e, "renewing presence failed");
            }
        }
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
            revocations: tokio::sync::broadcast::channel(1024).0,
            subscription_changes: tokio::sync::broadcast::channel(1024).0,
            shutdown: tokio::sync::watch::channel(false).0,
            presence: Mutex::new(HashMap::new()),
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

/// Why a session ended early.
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
    #[error("the first message was not Authenticate")]
    NotAuthenticate,
    #[error("Authenticate sent on an authenticated session")]
    AuthenticatedTwice,
    #[error(transparent)]
    Store(#[from] crate::reports::ReportStoreError),
    #[error("the device has not read for {:?}", WRITE_TIMEOUT)]
    WriteTimeout,
}

impl SessionError {
    fn is_protocol_violation(&self) -> bool {
        matches!(
            self,
            Self::Frame(_)
                | Self::NotAuthenticate
                | Self::AuthenticatedTwice
                | Self::Store(
                    crate::reports::ReportStoreError::ZeroSequence
                        | crate::reports::ReportStoreError::TooFarAhead { .. }
                )
        )
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
                        None => return Err(SessionError::Ended),
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

async fn write_message(
    stream: &mut SendStream,
    message: &GatewayMessage,
) -> Result<(), SessionError> {
    let mut frame = [0u8; MAX_WIRE_LEN];
    let len = encode_frame(message, &mut frame).expect("gateway messages always fit a frame");
    tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&frame[..len]))
        .await
        .map_err(|_| SessionError::WriteTimeout)??;
    Ok(())
}

async fn run_session(connection: quinn::Connection, context: &SessionContext) {
    let remote = connection.remote_address();
    let authenticated =
        tokio::time::timeout(context.auth_deadline, authenticate(&connection, context)).await;
    let (auth, mut send, mut reader) = match authenticated {
        Ok(Ok(Some(session))) => session,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            debug!(%remote, error = %e, "closing before authentication");
            if e.is_protocol_violation() {
                context.metrics.auth_failure(FailureReason::Malformed);
            }
            let code = if e.is_protocol_violation() {
                close_code::PROTOCOL_VIOLATION
            } else {
                close_code::AUTH_REFUSED
            };
            connection.close(code.into(), b"authentication failed");
            return;
        }
        Err(_elapsed) => {
            debug!(%remote, reason = FailureReason::Timeout.as_str(), "authentication deadline");
            context.metrics.auth_failure(FailureReason::Timeout);
            connection.close(close_code::AUTH_TIMEOUT.into(), b"authentication deadline");
            return;
        }
    };
    let device = auth.device_id.as_str();
    info!(%remote, device, "device authenticated");
    context.session_started(device).await;
    let outcome = session_loop(&auth, &mut send, &mut reader, context).await;
    context.session_ended(device).await;
    match outcome {
        Ok(SessionEnd::DeviceLeft) => connection.close(close_code::DONE.into(), b"bye"),
        Ok(SessionEnd::GatewayLeft(reason)) => {
            info!(device = %device, ?reason, "ending session");
            let code = match reason {
                GoingAwayReason::Shutdown => close_code::SHUTDOWN,
                _ => close_code::AUTH_REFUSED,
            };
            say_goodbye(&connection, &mut send, reason, code).await;
        }
        Err(e) if e.is_protocol_violation() => {
            warn!(device = %device, error = %e, "protocol violation");
            say_goodbye(
                &connection,
                &mut send,
                GoingAwayReason::ProtocolViolation,
                close_code::PROTOCOL_VIOLATION,
            )
            .await;
        }
        Err(e) => debug!(device = %device, error = %e, "session ended"),
    }
}

/// How a session that did not fail ended.
#[derive(Debug)]
enum SessionEnd {
    /// The device said goodbye.
    DeviceLeft,
    /// The gateway ends it, telling the device why.
    GatewayLeft(GoingAwayReason),
}

/// Tells the device why the gateway ends the session, lets that reach it
/// (closing at once would discard unsent stream data), then closes.
async fn say_goodbye(
    connection: &quinn::Connection,
    send: &mut SendStream,
    reason: GoingAwayReason,
    code: u32,
) {
    let _ = write_message(send, &GatewayMessage::GoingAway(GoingAway { reason })).await;
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
    connection.close(code.into(), b"going away");
}

/// Runs the checks; on success returns the device id and the stream halves.
/// On refusal it answers, closes, and returns `None`.
async fn authenticate(
    connection: &quinn::Connection,
    context: &SessionContext,
) -> Result<Option<(Authenticate, SendStream, FrameReader)>, SessionError> {
    let (mut send, recv) = connection.accept_bi().await?;
    let mut reader = FrameReader::new(recv);
    let DeviceMessage::Authenticate(auth) = reader.next::<DeviceMessage>().await? else {
        return Err(SessionError::NotAuthenticate);
    };
    let mut binding = [0u8; 32];
    connection
        .export_keying_material(&mut binding, CHANNEL_BINDING_LABEL, b"")
        .map_err(|_| SessionError::Ended)?;

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

    let verdict = decide(&auth, &binding, context).await;
    match verdict {
        Ok(()) => {
            context
                .throttle
                .lock()
                .expect("throttle lock")
                .record_success(&device_key);
            let confirmed_report_seq = context
                .reports
                .confirmed_up_to(auth.device_id.as_str())
                .await
                .map_err(SessionError::Store)?;
            write_message(
                &mut send,
                &GatewayMessage::AuthAccepted(AuthAccepted {
                    gateway_time_ms: unix_ms(),
                    session: context.session,
                    confirmed_report_seq,
                }),
            )
            .await?;
            Ok(Some((auth, send, reader)))
        }
        Err((refusal, reason)) => {
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
            write_message(&mut send, &GatewayMessage::AuthRefused(refusal)).await?;
            let _ = send.finish();
            // Let the refusal reach the device before the connection closes.
            let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
            connection.close(close_code::AUTH_REFUSED.into(), b"authentication refused");
            Ok(None)
        }
    }
}

async fn decide(
    auth: &Authenticate,
    binding: &[u8; 32],
    context: &SessionContext,
) -> Result<(), (Refusal, FailureReason)> {
    let credentials = context
        .registry
        .credentials(&context.master_key, &auth.device_id)
        .await
        .map_err(|e| {
            context.metrics.store_error();
            warn!(error = %e, "device lookup failed");
            (Refusal::Failed, FailureReason::UnknownDevice)
        })?;
    let now_ms = unix_ms();
    match auth::assess(auth, credentials.as_ref(), binding, now_ms, &context.auth) {
        Assessment::Refuse(refusal, reason) => Err((refusal, reason)),
        Assessment::ClaimNonce => {
            let ttl = context.auth.nonce_ttl.as_millis() as u64;
            match context
                .nonces
                .claim(&auth.device_id, &auth.nonce, now_ms, ttl)
                .await
            {
                Ok(true) => Ok(()),
                Ok(false) => Err((Refusal::Failed, FailureReason::ReplayedNonce)),
                Err(e) => {
                    context.metrics.store_error();
                    warn!(error = %e, "nonce store failed");
                    Err((Refusal::Failed, FailureReason::ReplayedNonce))
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

/// After authentication: streams signals, stores and confirms reports,
/// answers pings, ends on the device's going-away, on its revocation and on
/// shutdown.
async fn session_loop(
    auth: &Authenticate,
    send: &mut SendStream,
    reader: &mut FrameReader,
    context: &SessionContext,
) -> Result<SessionEnd, SessionError> {
    let mut deliveries = Deliveries::default();
    let end = stream_and_ingest(auth, send, reader, context, &mut deliveries).await;
    deliveries.record(auth.device_id.as_str(), context).await;
    end
}

async fn stream_and_ingest(
    auth: &Authenticate,
    send: &mut SendStream,
    reader: &mut FrameReader,
    context: &SessionContext,
    deliveries: &mut Deliveries,
) -> Result<SessionEnd, SessionError> {
    let device = auth.device_id.as_str();
    let mut revocations = context.revocations.subscribe();
    let mut shutdown = context.shutdown.subscribe();
    // Revoked between the registry check and the subscription above?
    if is_revoked(device, context).await {
        return Ok(SessionEnd::GatewayLeft(GoingAwayReason::Revoked));
    }
    let mut subscription_changes = context.subscription_changes.subscribe();
    // One follower per subscribed channel feeds this bounded queue; the
    // followers end with the session when the set is dropped.
    let (signal_tx, mut signal_rx) = tokio::sync::mpsc::channel(64);
    let mut followers = Followers::new(signal_tx);
    // Without its subscriptions the session would look healthy and carry
    // nothing: end it, so the device reconnects when the store is back.
    if let Err(e) = followers.match_subscriptions(auth, context).await {
        context.metrics.store_error();
        warn!(device, error = %e, "starting the session's channels failed");
        return Ok(SessionEnd::GatewayLeft(GoingAwayReason::Shutdown));
    }
    let mut record_deliveries = tokio::time::interval(DELIVERY_RECORD_INTERVAL);
    record_deliveries.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Biased, in this order: orders to end or change the session come
        // before traffic, so a revocation or unsubscription is acted on
        // before the next signal is written; a device's reports come before
        // new signals, so a flood of signals cannot hold back confirmations.
        tokio::select! {
            biased;
            ending = revocations.recv() => match ending {
                Ok(ending) if ending.device_id == device => {
                    return Ok(SessionEnd::GatewayLeft(ending.reason));
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Closed) => {}
                // Missed some revocations: ask the registry instead.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    if is_revoked(device, context).await {
                        return Ok(SessionEnd::GatewayLeft(GoingAwayReason::Revoked));
                    }
                }
            },
            changed = subscription_changes.recv() => match changed {
                Ok(changed) if changed != device => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {}
                // Ours, or perhaps ours among those missed: look again.
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    if let Err(e) = followers.match_subscriptions(auth, context).await {
                        context.metrics.store_error();
                        warn!(device, error = %e, "changing the session's channels failed");
                        return Ok(SessionEnd::GatewayLeft(GoingAwayReason::Shutdown));
                    }
                }
            },
            () = stopping(&mut shutdown) => {
                return Ok(SessionEnd::GatewayLeft(GoingAwayReason::Shutdown));
            }
            // A follower only ends on a store failure: end the session, so
            // the device reconnects and resumes, rather than let it miss a
            // channel silently.
            Some(Ok(Err((channel, e)))) = followers.tasks.join_next() => {
                context.metrics.store_error();
                warn!(device, %channel, error = %e, "following a channel failed; ending the session");
                return Ok(SessionEnd::GatewayLeft(GoingAwayReason::Shutdown));
            }
            message = reader.next::<DeviceMessage>() => match message? {
                DeviceMessage::Ping(ping) => {
                    write_message(send, &GatewayMessage::Pong(Pong { token: ping.token })).await?;
                }
                DeviceMessage::Pong(_) => {}
                DeviceMessage::GoingAway(_) => return Ok(SessionEnd::DeviceLeft),
                DeviceMessage::Authenticate(_) => return Err(SessionError::AuthenticatedTwice),
                DeviceMessage::Report(report) => {
                    let arrived = Instant::now();
                    let stored = StoredReport::new(device, &report, unix_ms());
                    match context.reports.ingest(&stored).await {
                        Ok(ingested) => {
                            context.metrics.report_ingested(ingested.newly_stored, arrived.elapsed());
                            // Before confirming, and on resends too: advancing
                            // keeps the maximum, so repeating it is harmless.
                            record_position(device, &report, context).await;
                            let confirmed = ReportsConfirmed { up_to_seq: ingested.confirmed_up_to };
                            write_message(send, &GatewayMessage::ReportsConfirmed(confirmed)).await?;
                        }
                        Err(e @ (crate::reports::ReportStoreError::ZeroSequence
                        | crate::reports::ReportStoreError::TooFarAhead { .. })) => {
                            return Err(e.into());
                        }
                        // Not confirmed: the device keeps the report in its
                        // outbox and resends it, so nothing is lost.
                        Err(e) => {
                            context.metrics.store_error();
                            warn!(device, seq = report.seq, error = %e, "storing a report failed");
                        }
                    }
                }
            },
            Some(signal) = signal_rx.recv() => {
                // Queued before an unsubscription was acted on: not sent.
                if !followers.running.contains_key(&signal.channel) {
                    continue;
                }
                write_message(send, &GatewayMessage::Signal(Signal::clone(&signal))).await?;
                context.metrics.signal_delivered();
                deliveries.note(&signal);
            }
            // Only armed while something awaits recording, so an idle
            // session is not woken twice a second for nothing.
            _ = record_deliveries.tick(), if !deliveries.0.is_empty() => {
                deliveries.record(device, context).await;
            }
        }
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

    /// Follows exactly the channels the device is subscribed to now: starts
    /// the new ones, stops the dropped ones, leaves the rest running.
    async fn match_subscriptions(
        &mut self,
        auth: &Authenticate,
        context: &SessionContext,
    ) -> Result<(), FollowError> {
        let device = auth.device_id.as_str();
        let wanted = subscribed_channels(device, context).await?;
        self.running.retain(|channel, task| {
            let keep = wanted.contains(channel);
            if !keep {
                task.abort();
            }
            keep
        });
        for channel in wanted {
            if self.running.contains_key(&channel) {
                continue;
            }
            let after = start_after(auth, &channel, context).await?;
            let log = context.signals.clone();
            let hub = context.hub.clone();
            let out = self.out.clone();
            let follower = channel.clone();
            let task = self.tasks.spawn(async move {
                hub.follow(log, follower.clone(), after, out)
                    .await
                    .map_err(|e| (follower, e))
            });
            self.running.insert(channel, task);
        }
        Ok(())
    }
}

/// Where a device's session starts in a channel: the resume point it named,
/// else the position recorded for it (its last report, or where its
/// subscription started), else the channel's head.
async fn start_after(
    auth: &Authenticate,
    channel: &ChannelName,
    context: &SessionContext,
) -> Result<u64, SignalLogError> {
    if let Some(point) = auth.resume.iter().find(|point| point.channel == *channel) {
        return Ok(point.position);
    }
    match context
        .positions
        .get(auth.device_id.as_str(), channel)
        .await?
    {
        Some(position) => Ok(position),
        // Subscribing always records a start; without one, start from now
        // rather than replay the channel's history.
        None => context.signals.head(channel).await,
    }
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

/// A report about a signal shows the device has it: remember the position,
/// for when the device reconnects without naming the channel.
async fn record_position(device: &str, report: &eagate_protocol::Report, context: &SessionContext) {
    match context.signals.locate(report.signal_id).await {
        Ok(Some((channel, position))) => {
            if let Err(e) = context.positions.advance(device, &channel, position).await {
                warn!(device, error = %e, "recording a device position failed");
            }
        }
        Ok(None) => {}
        Err(e) => warn!(device, error = %e, "locating a reported signal failed"),
    }
}

async fn is_revoked(device: &str, context: &SessionContext) -> bool {
    matches!(
        context.registry.get(device).await,
        Ok(Some(record)) if record.revoked_at_ms.is_some()
    )
}
