//! How the processes of a deployment tell each other what just happened: a
//! signal was published (so connected followers get it now rather than at
//! their next look at the log), a device's subscriptions changed (so its
//! live session follows the new set at once), a device's sessions must end
//! (revoked, or its secret rotated), or a device connected again (so its
//! older sessions end).
//!
//! On one machine this is a direct hand-over inside the process. With Redis,
//! every notice goes out on one pub/sub channel and comes back to the
//! listener of every process, this one included, so a revocation made by
//! the sidecar closes the device's session on whichever gateway holds it.
//!
//! Pub/sub delivers at most once: a notice can be lost while a listener
//! reconnects. Neither kind depends on it alone: signals are in the log,
//! which followers reread, and after every (re)subscription the listener
//! checks each connected device against the registry and the report
//! store's session epochs (as the presence renewal does periodically).

use std::sync::Arc;
use std::time::Duration;

use eagate_protocol::{GoingAwayReason, Signal};
use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::quic::SessionContext;
use crate::reports::SessionEpoch;
use crate::sessions::LiveSessions;
use crate::signals::SignalHub;

/// Where notices go.
#[derive(Clone)]
pub enum Notices {
    /// Everything runs in this process.
    Local,
    /// Processes share a Redis: notices go through its pub/sub channel.
    Redis {
        /// The connection notices are published on.
        connection: ConnectionManager,
        /// The pub/sub channel, `<prefix>:notices`.
        channel: String,
    },
}

impl std::fmt::Debug for Notices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local => f.write_str("Local"),
            Self::Redis { channel, .. } => {
                f.debug_struct("Redis").field("channel", channel).finish()
            }
        }
    }
}

/// Something every process must hear of.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Notice {
    /// A signal was appended to its channel's log.
    Signal(Box<Signal>),
    /// A device's subscriptions changed.
    SubscriptionsChanged {
        /// The device.
        device_id: String,
    },
    /// A device's live sessions must end.
    SessionEnding {
        /// The device.
        device_id: String,
        /// Why: `revoked` (do not come back) or its secret was rotated
        /// (come back only with the new one).
        reason: EndingReason,
    },
    /// A device authenticated again: every session of it older than
    /// `epoch` must end.
    SessionReplaced {
        /// The device.
        device_id: String,
        /// The new session's epoch.
        epoch: u64,
    },
}

/// Why a device's sessions end, as said in a [`Notice`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndingReason {
    /// The device was revoked.
    Revoked,
    /// The device's secret was rotated. (Named `replaced` in notices, as
    /// processes of earlier versions know it.)
    #[serde(rename = "replaced")]
    SecretRotated,
}

impl From<EndingReason> for GoingAwayReason {
    fn from(reason: EndingReason) -> Self {
        match reason {
            EndingReason::Revoked => GoingAwayReason::Revoked,
            EndingReason::SecretRotated => GoingAwayReason::SecretRotated,
        }
    }
}

/// The pub/sub channel of a deployment whose keys start with `prefix`.
pub fn redis_channel(prefix: &str) -> String {
    format!("{prefix}:notices")
}

/// What sends notices: where they go, and this process's own receivers.
/// Cheap to clone, so a task can own one.
#[derive(Debug, Clone)]
pub struct Notifier {
    /// Where notices go.
    pub notices: Notices,
    /// This process's signal fan-out.
    pub hub: SignalHub,
    /// This process's sessions, which take the orders.
    pub live: Arc<LiveSessions>,
}

impl Notifier {
    /// Tells every process of the deployment (this one included). Returns
    /// whether the notice went out to all of them; when it could not, this
    /// process still gets it, and the others catch up from the log and the
    /// registry.
    pub async fn send(&self, notice: Notice) -> bool {
        match &self.notices {
            Notices::Local => {
                self.deliver_locally(notice);
                true
            }
            Notices::Redis {
                connection,
                channel,
            } => {
                // Orders to sessions act here at once, before the round trip
                // through Redis (acting again when it comes back is
                // harmless). Signals come back only once: followers would
                // skip a duplicate, but announcing twice costs every one.
                if !matches!(notice, Notice::Signal(_)) {
                    self.deliver_locally(notice.clone());
                }
                let payload = serde_json::to_vec(&notice).expect("a notice always serializes");
                let mut connection = connection.clone();
                let published: redis::RedisResult<i64> =
                    connection.publish(channel.as_str(), payload).await;
                match published {
                    Ok(_) => true,
                    Err(e) => {
                        warn!(error = %e, "publishing a notice failed; delivering it here only");
                        if matches!(notice, Notice::Signal(_)) {
                            self.deliver_locally(notice);
                        }
                        false
                    }
                }
            }
        }
    }

    /// Hands a notice to this process's sessions.
    pub fn deliver_locally(&self, notice: Notice) {
        match notice {
            Notice::Signal(signal) => self.hub.announce(*signal),
            // A device with no session here takes no order.
            Notice::SubscriptionsChanged { device_id } => {
                self.live.order_follow_subscriptions(&device_id);
            }
            Notice::SessionEnding { device_id, reason } => {
                self.live.order_end(&device_id, reason.into(), None);
            }
            Notice::SessionReplaced { device_id, epoch } => {
                self.live.order_end(
                    &device_id,
                    GoingAwayReason::Replaced,
                    Some(SessionEpoch(epoch)),
                );
            }
        }
    }
}

impl SessionContext {
    /// This context's notifier.
    pub fn notifier(&self) -> Notifier {
        Notifier {
            notices: self.notices.clone(),
            hub: self.hub.clone(),
            live: self.live.clone(),
        }
    }

    /// Tells every process of the deployment (see [`Notifier::send`]).
    pub async fn notify(&self, notice: Notice) {
        if !self.notifier().send(notice).await {
            self.metrics.store_error();
        }
    }
}

/// Listens on the deployment's notice channel and hands every notice to
/// this process's sessions; reconnects when Redis goes away. Runs until
/// aborted.
pub async fn listen(client: redis::Client, channel: String, context: Arc<SessionContext>) {
    const RETRY: Duration = Duration::from_secs(1);
    loop {
        let mut pubsub = match client.get_async_pubsub().await {
            Ok(pubsub) => pubsub,
            Err(e) => {
                warn!(error = %e, "connecting to Redis for notices failed; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        if let Err(e) = pubsub.subscribe(&channel).await {
            warn!(error = %e, "subscribing to notices failed; retrying");
            tokio::time::sleep(RETRY).await;
            continue;
        }
        info!(%channel, "listening for notices");
        // Anything sent while we were not listening is lost to us: make up
        // for the endings now (signals are reread from the log anyway).
        context.end_stale_sessions().await;
        let notifier = context.notifier();
        let mut messages = pubsub.into_on_message();
        while let Some(message) = messages.next().await {
            match serde_json::from_slice::<Notice>(message.get_payload_bytes()) {
                Ok(notice) => notifier.deliver_locally(notice),
                Err(e) => warn!(error = %e, "ignoring a malformed notice"),
            }
        }
        warn!("the notice subscription ended; reconnecting");
        tokio::time::sleep(RETRY).await;
    }
}
