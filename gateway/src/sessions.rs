//! One live session per device: the sessions this process holds, the
//! takeover when a device authenticates while an older session of it is
//! live (here or on another gateway sharing the store), and the presence
//! admins see.
//!
//! Traders connect one device twice: a second chart with the same inputs,
//! the EA on a second VPS. Two live sessions would both receive every
//! signal (and both terminals trade it) and both report under the same
//! sequence numbers. So the newest authentication wins:
//!
//! 1. It takes a new session epoch from the report store
//!    ([`ReportStore::begin_session`]). From that moment the store refuses
//!    every report write of an older session, atomically, wherever it runs.
//! 2. It tells every process to end the device's older sessions
//!    ([`Notice::SessionReplaced`]); each is told `GoingAway(Replaced)` and
//!    closed, before its next signal.
//! 3. It waits, a bounded time, until no older session is left here and no
//!    other gateway still shows the device as connected, and only then
//!    answers `AuthAccepted`, so the device receives nothing while the old
//!    session could still be sending.
//!
//! If an older session is missed anyway (its gateway lost the notice), the
//! fence of step 1 still keeps its reports out of the store, and it ends at
//! its next report, when its gateway renews its notice subscription, or at
//! the periodic presence renewal, within [`PRESENCE_TTL_MS`]` / 3`.
//!
//! [`ReportStore::begin_session`]: crate::reports::ReportStore::begin_session
//! [`PRESENCE_TTL_MS`]: crate::redis_store::PRESENCE_TTL_MS

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eagate_protocol::GoingAwayReason;
use tokio::sync::Notify;
use tracing::warn;

use crate::clock::unix_ms;
use crate::notices::Notice;
use crate::quic::{SessionContext, SessionEnding};
use crate::reports::SessionEpoch;

/// The longest a new session waits for the older ones to close before it
/// answers the device anyway. Older sessions on a live gateway close in
/// milliseconds; one on a gateway that died only ever shows in the presence
/// records until they expire, and cannot deliver anything.
pub const TAKEOVER_WAIT: Duration = Duration::from_secs(2);

/// How often a new session looks at the shared presence records while it
/// waits for an older session on another gateway to close.
const TAKEOVER_POLL: Duration = Duration::from_millis(20);

/// A device's connection state, as admins see it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Presence {
    /// Live authenticated sessions (two only for the moment of a takeover).
    pub sessions: usize,
    /// When the device last authenticated or disconnected, Unix ms.
    pub last_seen_ms: u64,
}

/// The device sessions of this process, by device and epoch.
#[derive(Debug, Default)]
pub struct LiveSessions {
    devices: Mutex<HashMap<String, DeviceSessions>>,
    /// Woken whenever a session ends, for takeovers waiting on one.
    ended: Notify,
}

#[derive(Debug, Default)]
struct DeviceSessions {
    epochs: Vec<SessionEpoch>,
    last_seen_ms: u64,
}

impl LiveSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, DeviceSessions>> {
        self.devices.lock().expect("live sessions lock")
    }

    /// Records a session of `device_id` under `epoch`, seen at `now_ms`.
    pub fn begin(&self, device_id: &str, epoch: SessionEpoch, now_ms: u64) {
        let mut devices = self.lock();
        let device = devices.entry(device_id.to_owned()).or_default();
        device.epochs.push(epoch);
        device.last_seen_ms = now_ms;
    }

    /// Forgets the session of `device_id` under `epoch`; returns whether
    /// another session of the device is still live here.
    pub fn end(&self, device_id: &str, epoch: SessionEpoch, now_ms: u64) -> bool {
        let still_here = {
            let mut devices = self.lock();
            let device = devices.entry(device_id.to_owned()).or_default();
            device.epochs.retain(|live| *live != epoch);
            device.last_seen_ms = now_ms;
            !device.epochs.is_empty()
        };
        self.ended.notify_waiters();
        still_here
    }

    /// The device's presence in this process.
    pub fn presence(&self, device_id: &str) -> Presence {
        self.lock()
            .get(device_id)
            .map(|device| Presence {
                sessions: device.epochs.len(),
                last_seen_ms: device.last_seen_ms,
            })
            .unwrap_or_default()
    }

    /// Every live session here, as (device, epoch).
    pub fn all(&self) -> Vec<(String, SessionEpoch)> {
        self.lock()
            .iter()
            .flat_map(|(device, sessions)| {
                sessions
                    .epochs
                    .iter()
                    .map(move |epoch| (device.clone(), *epoch))
            })
            .collect()
    }

    /// Where `epoch` stands among the device's sessions here: whether an
    /// older one is still live, and whether a newer one has begun.
    fn standing(&self, device_id: &str, epoch: SessionEpoch) -> (bool, bool) {
        self.lock().get(device_id).map_or((false, false), |device| {
            (
                device.epochs.iter().any(|live| *live < epoch),
                device.epochs.iter().any(|live| *live > epoch),
            )
        })
    }

    /// Waits until no session of the device older than `epoch` is live
    /// here, or a newer one has begun (which ends this one anyway), or
    /// `deadline`. Returns whether the older ones are gone.
    async fn wait_for_older(
        &self,
        device_id: &str,
        epoch: SessionEpoch,
        deadline: tokio::time::Instant,
    ) -> bool {
        loop {
            // Registered before looking, so an end between the look and the
            // wait still wakes us.
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            let (older, newer) = self.standing(device_id, epoch);
            if !older || newer {
                return !older;
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                return false;
            }
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
    /// Every third of the presence TTL: renews this process's presence
    /// records, and ends the sessions a missed takeover notice left behind
    /// (their devices connected again elsewhere; a missed revocation is
    /// caught when the notice subscription is renewed). Runs until aborted.
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
            self.end_superseded_sessions(&context).await;
        }
    }

    /// Ends the sessions here whose device has begun a newer session since
    /// (a takeover notice that never arrived): one round trip for all.
    async fn end_superseded_sessions(&self, context: &SessionContext) {
        let live = context.live.all();
        if live.is_empty() {
            return;
        }
        let devices: Vec<&str> = live.iter().map(|(device, _)| device.as_str()).collect();
        let newest = match self.stores.session_epochs(&devices).await {
            Ok(newest) => newest,
            Err(e) => {
                context.metrics.store_error();
                warn!(error = %e, "reading session epochs failed");
                return;
            }
        };
        for ((device_id, epoch), newest) in live.into_iter().zip(newest) {
            if newest > epoch {
                context.end_here(SessionEnding {
                    device_id,
                    reason: GoingAwayReason::Replaced,
                    older_than: Some(newest),
                });
            }
        }
    }
}

impl SessionContext {
    /// The device's connection state: in this process, or, when processes
    /// share a Redis, on every gateway of the deployment.
    pub async fn presence_of(&self, device_id: &str) -> Presence {
        let local = self.live.presence(device_id);
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

    /// The devices with a live session in this process.
    pub fn connected_here(&self) -> Vec<String> {
        let mut devices: Vec<String> = self
            .live
            .all()
            .into_iter()
            .map(|(device, _)| device)
            .collect();
        devices.dedup();
        devices
    }

    /// Makes the session of `device_id` under `epoch` (just taken from the
    /// report store) the device's only one: ends every older session, here
    /// and on other gateways, and waits up to [`TAKEOVER_WAIT`] for them to
    /// close. Returns whether they all did in time; if not, the fence on
    /// report writes still holds them off.
    pub async fn take_over(&self, device_id: &str, epoch: SessionEpoch) -> bool {
        self.live.begin(device_id, epoch, unix_ms());
        self.notify(Notice::SessionReplaced {
            device_id: device_id.to_owned(),
            epoch: epoch.0,
        })
        .await;
        let deadline = tokio::time::Instant::now() + TAKEOVER_WAIT;
        if !self.live.wait_for_older(device_id, epoch, deadline).await {
            return false;
        }
        let Some(shared) = &self.shared_presence else {
            return true;
        };
        // Older sessions on other gateways: their presence records go when
        // they close.
        loop {
            match shared
                .stores
                .presence_elsewhere(device_id, &shared.instance, unix_ms())
                .await
            {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) => {
                    self.metrics.store_error();
                    warn!(device = device_id, error = %e, "reading presence failed");
                    return false;
                }
            }
            if tokio::time::Instant::now() + TAKEOVER_POLL > deadline {
                return false;
            }
            tokio::time::sleep(TAKEOVER_POLL).await;
        }
    }

    /// A session that [`SessionContext::take_over`] registered has been
    /// accepted: counted, and shown as connected to the deployment.
    pub(crate) async fn session_started(&self, device_id: &str) {
        self.metrics.connection(1);
        self.share_presence(device_id, true, unix_ms()).await;
    }

    /// A session registered by [`SessionContext::take_over`] is over;
    /// `accepted` says whether [`SessionContext::session_started`] counted it.
    pub(crate) async fn session_ended(&self, device_id: &str, epoch: SessionEpoch, accepted: bool) {
        let now = unix_ms();
        let still_here = self.live.end(device_id, epoch, now);
        if accepted {
            self.metrics.connection(-1);
        }
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

    /// Ends what a lost notice would have ended: sessions of revoked
    /// devices, and sessions older than their device's newest.
    pub async fn end_stale_sessions(&self) {
        for (device_id, epoch) in self.live.all() {
            match self.registry.get(&device_id).await {
                Ok(Some(record)) if record.revoked_at_ms.is_some() => {
                    self.end_here(SessionEnding {
                        device_id,
                        reason: GoingAwayReason::Revoked,
                        older_than: None,
                    });
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(device = %device_id, error = %e, "checking a revocation failed");
                }
            }
            match self.reports.current_session(&device_id).await {
                Ok(newest) if newest > epoch => self.end_here(SessionEnding {
                    device_id,
                    reason: GoingAwayReason::Replaced,
                    older_than: Some(newest),
                }),
                Ok(_) => {}
                Err(e) => {
                    warn!(device = %device_id, error = %e, "checking a session's epoch failed");
                }
            }
        }
    }

    pub(crate) fn end_here(&self, ending: SessionEnding) {
        // No receiver just means no session is live here any more.
        let _ = self.revocations.send(ending);
    }
}
