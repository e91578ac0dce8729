//! How the processes of a deployment tell each other what just happened: a
//! signal was published (so connected followers get it now rather than at
//! their next look at the log), a device's subscriptions changed (so its
//! live session follows the new set at once), a device's sessions must end
//! (revoked, or its secret rotated), or a device connected again (so its
//! older sessions end).
//!
//! On one machine this is a direct hand-over inside the process. Processes
//! sharing a store also send every notice through a [`NoticeBus`] (Redis
//! pub/sub: `crate::store::redis`), which brings it to every process's
//! listener, this one included, so a revocation made by the sidecar closes
//! the device's session on whichever gateway holds it.
//!
//! Pub/sub delivers at most once: a notice can be lost while a listener
//! reconnects. Neither kind depends on it alone: signals are in the log,
//! which followers reread, and after every (re)subscription the listener
//! checks each connected device against the registry and the report
//! store's session epochs (as the presence renewal does periodically).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use eagate_protocol::{GoingAwayReason, Signal};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::Core;
use super::fanout::SignalHub;
use super::sessions::LiveSessions;
use crate::reports::SessionEpoch;

/// How a deployment's processes reach each other.
pub trait NoticeBus: Send + Sync + std::fmt::Debug {
    /// Sends `notice` to every process of the deployment, this one
    /// included (by way of its listener).
    fn publish<'a>(
        &'a self,
        notice: &'a Notice,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
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

/// What sends notices: where they go, and this process's own receivers.
/// Cheap to clone, so a task can own one.
#[derive(Debug, Clone)]
pub struct Notifier {
    /// Where notices go to the other processes, if any.
    pub bus: Option<Arc<dyn NoticeBus>>,
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
        let Some(bus) = &self.bus else {
            self.deliver_locally(notice);
            return true;
        };
        // Orders to sessions act here at once, before the round trip through
        // the bus (acting again when it comes back is harmless). Signals come
        // back only once: followers would skip a duplicate, but announcing
        // twice costs every one.
        if !matches!(notice, Notice::Signal(_)) {
            self.deliver_locally(notice.clone());
        }
        match bus.publish(&notice).await {
            Ok(()) => true,
            Err(e) => {
                warn!(error = %e, "publishing a notice failed; delivering it here only");
                if matches!(notice, Notice::Signal(_)) {
                    self.deliver_locally(notice);
                }
                false
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

impl Core {
    /// This core's notifier.
    pub fn notifier(&self) -> Notifier {
        Notifier {
            bus: self.notices.clone(),
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
