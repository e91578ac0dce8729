//! The gateway's core: its state (the registry, the stores, the live
//! sessions, the signal fan-out) and its operations (publish, subscribe,
//! revoke, rotate a secret, admit a device, run its session, ingest its
//! reports, presence). No transport type enters here: the QUIC driver
//! (`crate::transport::quic`) and the HTTP sidecar (`crate::http`) are
//! adapters around it, and a second device transport reuses it as they do.
//!
//! Data flows one way: device → transport → core → store, and
//! platform → sidecar → core. The store traits sit with their domains
//! (`crate::registry`, `crate::reports`, `crate::signals`, `crate::nonces`,
//! `crate::presence`); their backends are in `crate::store`.

pub mod admission;
pub mod checks;
pub mod close;
pub mod connection_gate;
pub mod device_session;
mod eviction;
pub mod fanout;
pub mod metrics;
pub mod notices;
pub mod places;
pub mod sessions;
pub mod signed_requests;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eagate_protocol::{ChannelName, DeviceSecret, MAX_FRAME_LEN, SessionParams};

pub use admission::{Admitted, Denial};
pub use close::Close;
pub use device_session::{DeviceSession, Next, SessionClaim};

use crate::nonces::NonceStore;
use crate::registry::{DeviceRecord, DeviceRegistry, RegistryError};
use crate::reports::ReportStore;
use crate::seal::MasterKey;
use crate::signals::{Appended, PositionStore, SignalDraft, SignalLog, SignalLogError};
use checks::{AuthSettings, FailureThrottle, ThrottleSettings};
use fanout::SignalHub;
use metrics::Metrics;
use notices::{EndingReason, Notice, NoticeBus};
use places::SignalPlaces;
use sessions::{LiveSessions, SharedPresence};

/// The gateway's state and its operations, shared by every transport and
/// the sidecar.
#[derive(Debug)]
pub struct Core {
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
    /// Where the signals reported on lately sit in their channels.
    pub places: SignalPlaces,
    /// How far each device has got in each channel, from its reports.
    pub positions: Arc<dyn PositionStore>,
    /// How the deployment's other processes hear of what happens here
    /// (signals published, sessions to end); `None` on one machine.
    pub notices: Option<Arc<dyn NoticeBus>>,
    /// Check tunables.
    pub auth: AuthSettings,
    /// Time allowed from connection to successful authentication.
    pub auth_deadline: Duration,
    /// Parameters announced in [`AuthAccepted`].
    pub session: SessionParams,
    /// Repeated failure slow-down.
    pub throttle: Mutex<FailureThrottle>,
    /// Who may open a connection: a budget per source, a cap on those not
    /// yet authenticated.
    pub connection_gate: Mutex<connection_gate::ConnectionGate>,
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

/// The store failed a call of a device's request, or did not answer it
/// within the core's `auth_deadline` (counted and logged already).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreAway;

impl Core {
    /// Runs `call`, a store call on behalf of `device`'s request, for at
    /// most the core's `auth_deadline`: a store that fails or does not
    /// answer in time must not hold a request without end. Either is counted
    /// as a store error and logged, saying it was `what`.
    pub async fn in_time<T, E: std::fmt::Display>(
        &self,
        device: &str,
        what: &str,
        call: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, StoreAway> {
        let failure = match tokio::time::timeout(self.auth_deadline, call).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => e.to_string(),
            Err(_elapsed) => "the store did not answer in time".to_owned(),
        };
        self.metrics.store_error();
        tracing::warn!(device, error = %failure, "{what} failed");
        Err(StoreAway)
    }

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

impl Core {
    /// A core with default timing.
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
            places: SignalPlaces::default(),
            positions,
            notices: None,
            auth: AuthSettings::default(),
            auth_deadline: Duration::from_secs(5),
            session: SessionParams {
                ping_interval_ms: 5_000,
                idle_timeout_ms: IDLE_TIMEOUT.as_millis() as u32,
                max_frame_len: MAX_FRAME_LEN as u32,
            },
            throttle: Mutex::new(FailureThrottle::new(ThrottleSettings::default())),
            connection_gate: Mutex::new(connection_gate::ConnectionGate::new(
                connection_gate::GateSettings::default(),
            )),
            shutdown: tokio::sync::watch::channel(false).0,
            live: Arc::new(LiveSessions::default()),
            shared_presence: None,
            metrics: Metrics::default(),
        }
    }
}

/// A device that sends nothing for this long is gone (terminal closed, VPS
/// gone): the session's liveness rule, announced in `AuthAccepted`.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
