//! One live session per device: the sessions this process holds, the orders
//! they take (end, follow the subscriptions again), the takeover when a
//! device authenticates while an older session of it is live (here or on
//! another gateway sharing the store), and the presence admins see.
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
//! Orders reach a session through its own [`Mailbox`], found by device:
//! delivering one costs the same with ten sessions or twenty thousand.
//!
//! If an older session is missed anyway (its gateway lost the notice), the
//! fence of step 1 still keeps its reports out of the store, and it ends at
//! its next report, when its gateway renews its notice subscription, or at
//! the epoch check every [`EPOCH_CHECK`], which the takeover outwaits.
//!
//! [`ReportStore::begin_session`]: crate::reports::ReportStore::begin_session

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eagate_protocol::GoingAwayReason;
use tokio::sync::Notify;
use tracing::warn;

use super::Core;
use super::notices::Notice;
use crate::clock::unix_ms;
use crate::presence::PresenceStore;
use crate::reports::SessionEpoch;

/// How often a gateway sharing Redis checks that each of its sessions is
/// still its device's newest, in case a takeover notice was lost.
pub const EPOCH_CHECK: Duration = Duration::from_secs(2);

/// The longest a new session waits for the older ones to close before it
/// answers the device anyway: longer than [`EPOCH_CHECK`], so an older
/// session whose gateway missed the notice has ended by then. Older sessions
/// on a live gateway close in milliseconds; one on a gateway that died only
/// shows in the presence records until they expire, and delivers nothing.
pub const TAKEOVER_WAIT: Duration = Duration::from_secs(3);

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

/// What the rest of the deployment has told one session to do, not yet
/// acted on. Orders coalesce: a session needs to know only whether to end
/// (and why) and whether its subscriptions changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Orders {
    /// End the session, telling the device this.
    pub end: Option<GoingAwayReason>,
    /// Follow the device's subscriptions as they are now.
    pub follow_subscriptions: bool,
}

impl Orders {
    /// Adds an order to end. The first reason stands, but a revocation
    /// overrides any: the device must learn it may not come back.
    pub fn add_end(&mut self, reason: GoingAwayReason) {
        if self.end.is_none() || reason == GoingAwayReason::Revoked {
            self.end = Some(reason);
        }
    }

    /// Adds `other`'s orders to these.
    pub fn add(&mut self, other: Orders) {
        if let Some(reason) = other.end {
            self.add_end(reason);
        }
        self.follow_subscriptions |= other.follow_subscriptions;
    }
}

/// One session's orders: a slot and a wake-up, a few dozen bytes a session.
#[derive(Debug, Default)]
pub struct Mailbox {
    orders: Mutex<Orders>,
    wake: Notify,
}

impl Mailbox {
    fn post(&self, post: impl FnOnce(&mut Orders)) {
        post(&mut self.orders.lock().expect("mailbox lock"));
        // One waiter (its session); a permit is kept if it is not waiting.
        self.wake.notify_one();
    }

    fn post_end(&self, reason: GoingAwayReason) {
        self.post(|orders| orders.add_end(reason));
    }

    /// The orders posted since the last call, waiting for some. Cancel-safe:
    /// orders are only taken when returned.
    pub async fn next(&self) -> Orders {
        loop {
            let orders = std::mem::take(&mut *self.orders.lock().expect("mailbox lock"));
            if orders != Orders::default() {
                return orders;
            }
            self.wake.notified().await;
        }
    }
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
    live: Vec<(SessionEpoch, Arc<Mailbox>)>,
    last_seen_ms: u64,
}

/// A session's place in [`LiveSessions`], given up when it is dropped, so a
/// session that ends in any way (a panic included) leaves nothing behind.
#[derive(Debug)]
pub struct LiveSession<'a> {
    sessions: &'a LiveSessions,
    device_id: String,
    epoch: SessionEpoch,
    mailbox: Arc<Mailbox>,
    /// Whether another session of the device was still live here when this
    /// one was given up.
    still_here: Option<bool>,
}

impl LiveSession<'_> {
    /// The session's epoch.
    pub fn epoch(&self) -> SessionEpoch {
        self.epoch
    }

    /// Where the session's orders arrive.
    pub fn mailbox(&self) -> &Mailbox {
        &self.mailbox
    }

    /// Gives the place up now; whether another session of the device is
    /// still live here.
    fn give_up(&mut self) -> bool {
        *self.still_here.get_or_insert_with(|| {
            self.sessions
                .remove(&self.device_id, &self.mailbox, unix_ms())
        })
    }
}

impl Drop for LiveSession<'_> {
    fn drop(&mut self) {
        self.give_up();
    }
}

impl LiveSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, DeviceSessions>> {
        self.devices.lock().expect("live sessions lock")
    }

    /// Records a session of `device_id` under `epoch`, seen at `now_ms`.
    pub fn register(&self, device_id: &str, epoch: SessionEpoch, now_ms: u64) -> LiveSession<'_> {
        let mailbox = Arc::new(Mailbox::default());
        let mut devices = self.lock();
        let device = devices.entry(device_id.to_owned()).or_default();
        device.live.push((epoch, mailbox.clone()));
        device.last_seen_ms = now_ms;
        LiveSession {
            sessions: self,
            device_id: device_id.to_owned(),
            epoch,
            mailbox,
            still_here: None,
        }
    }

    /// Forgets the one session of `device_id` whose mailbox is `mailbox`
    /// (several may share an epoch: the requests of one session over
    /// HTTPS); returns whether another session of the device is still live
    /// here.
    fn remove(&self, device_id: &str, mailbox: &Arc<Mailbox>, now_ms: u64) -> bool {
        let still_here = {
            let mut devices = self.lock();
            let device = devices.entry(device_id.to_owned()).or_default();
            device.live.retain(|(_, live)| !Arc::ptr_eq(live, mailbox));
            device.last_seen_ms = now_ms;
            !device.live.is_empty()
        };
        self.ended.notify_waiters();
        still_here
    }

    /// Orders the device's sessions here older than `older_than` (all of
    /// them for `None`) to end, telling the device `reason`.
    pub fn order_end(
        &self,
        device_id: &str,
        reason: GoingAwayReason,
        older_than: Option<SessionEpoch>,
    ) {
        if let Some(device) = self.lock().get(device_id) {
            for (epoch, mailbox) in &device.live {
                if older_than.is_none_or(|newer| *epoch < newer) {
                    mailbox.post_end(reason);
                }
            }
        }
    }

    /// Orders the device's sessions here to follow its subscriptions as
    /// they are now.
    pub fn order_follow_subscriptions(&self, device_id: &str) {
        if let Some(device) = self.lock().get(device_id) {
            for (_, mailbox) in &device.live {
                mailbox.post(|orders| orders.follow_subscriptions = true);
            }
        }
    }

    /// The device's presence in this process.
    pub fn presence(&self, device_id: &str) -> Presence {
        self.lock()
            .get(device_id)
            .map(|device| Presence {
                sessions: device.live.len(),
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
                    .live
                    .iter()
                    .map(move |(epoch, _)| (device.clone(), *epoch))
            })
            .collect()
    }

    /// The devices with a live session here.
    pub fn devices(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, sessions)| !sessions.live.is_empty())
            .map(|(device, _)| device.clone())
            .collect()
    }

    /// Where `epoch` stands among the device's sessions here: whether an
    /// older one is still live, and whether a newer one has begun.
    fn standing(&self, device_id: &str, epoch: SessionEpoch) -> (bool, bool) {
        self.lock().get(device_id).map_or((false, false), |device| {
            (
                device.live.iter().any(|(live, _)| *live < epoch),
                device.live.iter().any(|(live, _)| *live > epoch),
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
    /// Where the gateways say which devices they hold.
    pub stores: Arc<dyn PresenceStore>,
    /// This process's name in the presence records: random, per start.
    pub instance: String,
}

impl SharedPresence {
    /// Every [`EPOCH_CHECK`], ends the sessions a lost takeover notice left
    /// behind (their devices connected again elsewhere; a lost revocation is
    /// caught when the notice subscription is renewed); every third of the
    /// presence TTL, renews this process's presence records. Runs until
    /// aborted.
    pub async fn renew(self, context: Arc<Core>) {
        let mut check = tokio::time::interval(EPOCH_CHECK);
        let mut renew =
            tokio::time::interval(Duration::from_millis(crate::presence::PRESENCE_TTL_MS / 3));
        for tick in [&mut check, &mut renew] {
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            tokio::select! {
                _ = check.tick() => self.end_superseded_sessions(&context).await,
                _ = renew.tick() => {
                    let devices = context.live.devices();
                    if let Err(e) = self
                        .stores
                        .renew(&devices, &self.instance, unix_ms())
                        .await
                    {
                        context.metrics.store_error();
                        warn!(error = %e, "renewing presence failed");
                    }
                }
            }
        }
    }

    /// Ends the sessions here whose device has begun a newer session since
    /// (a takeover notice that never arrived): one round trip for all.
    async fn end_superseded_sessions(&self, context: &Core) {
        let live = context.live.all();
        if live.is_empty() {
            return;
        }
        let devices: Vec<&str> = live.iter().map(|(device, _)| device.as_str()).collect();
        let newest = match context.reports.current_sessions(&devices).await {
            Ok(newest) => newest,
            Err(e) => {
                context.metrics.store_error();
                warn!(error = %e, "reading session epochs failed");
                return;
            }
        };
        for ((device_id, epoch), newest) in live.iter().zip(newest) {
            if newest > *epoch {
                context
                    .live
                    .order_end(device_id, GoingAwayReason::Replaced, Some(newest));
            }
        }
    }
}

impl Core {
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
        self.live.devices()
    }

    /// Makes the session of `device_id` under `epoch` (just taken from the
    /// report store) the device's only one: registers it, ends every older
    /// session, here and on other gateways, and waits up to
    /// [`TAKEOVER_WAIT`] for them to close. Returns the session's place.
    /// Older sessions that did not close in time are logged; the fence on
    /// report writes still holds them off.
    pub async fn take_over(&self, device_id: &str, epoch: SessionEpoch) -> LiveSession<'_> {
        let session = self.live.register(device_id, epoch, unix_ms());
        if !self.older_sessions_closed(device_id, epoch).await {
            warn!(
                device = device_id,
                "an older session of the device did not close in time; its reports are fenced off"
            );
        }
        session
    }

    /// Tells every older session of `device_id` than `epoch` to end and
    /// waits up to [`TAKEOVER_WAIT`]: whether they all closed in time.
    async fn older_sessions_closed(&self, device_id: &str, epoch: SessionEpoch) -> bool {
        let deadline = tokio::time::Instant::now() + TAKEOVER_WAIT;
        let told = tokio::time::timeout_at(
            deadline,
            self.notify(Notice::SessionReplaced {
                device_id: device_id.to_owned(),
                epoch: epoch.0,
            }),
        )
        .await;
        if told.is_err() {
            self.metrics.store_error();
            warn!(
                device = device_id,
                "announcing a takeover did not finish in time"
            );
        }
        if !self.live.wait_for_older(device_id, epoch, deadline).await {
            return false;
        }
        let Some(shared) = &self.shared_presence else {
            return true;
        };
        // Older sessions on other gateways: their presence records go when
        // they close.
        loop {
            let elsewhere = tokio::time::timeout_at(
                deadline,
                shared
                    .stores
                    .elsewhere(device_id, &shared.instance, unix_ms()),
            )
            .await;
            match elsewhere {
                Ok(Ok(0)) => return true,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    // Waited out like a live session: the record may show
                    // one that is closing.
                    self.metrics.store_error();
                    warn!(device = device_id, error = %e, "reading presence failed");
                }
                Err(_elapsed) => return false,
            }
            if tokio::time::Instant::now() + TAKEOVER_POLL > deadline {
                return false;
            }
            tokio::time::sleep(TAKEOVER_POLL).await;
        }
    }

    /// A session that [`Core::take_over`] registered has been
    /// accepted: counted, and shown as connected to the deployment.
    pub(crate) async fn session_started(&self, device_id: &str) {
        self.metrics.connection(1);
        self.share_presence(device_id, true, unix_ms()).await;
    }

    /// A session registered by [`Core::take_over`] is over;
    /// `accepted` says whether [`Core::session_started`] counted it.
    pub(crate) async fn session_ended(&self, mut session: LiveSession<'_>, accepted: bool) {
        let still_here = session.give_up();
        if accepted {
            self.metrics.connection(-1);
        }
        self.share_presence(&session.device_id, still_here, unix_ms())
            .await;
    }

    async fn share_presence(&self, device_id: &str, connected: bool, now_ms: u64) {
        let Some(shared) = &self.shared_presence else {
            return;
        };
        if let Err(e) = shared
            .stores
            .mark(device_id, &shared.instance, connected, now_ms)
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
                    self.live
                        .order_end(&device_id, GoingAwayReason::Revoked, None);
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(device = %device_id, error = %e, "checking a revocation failed");
                }
            }
            match self.reports.current_session(&device_id).await {
                Ok(newest) if newest > epoch => {
                    self.live
                        .order_end(&device_id, GoingAwayReason::Replaced, Some(newest));
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(device = %device_id, error = %e, "checking a session's epoch failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn orders_reach_only_the_sessions_they_name_and_coalesce() {
        let live = LiveSessions::default();
        let old = live.register("dv_A", SessionEpoch(1), 0);
        let new = live.register("dv_A", SessionEpoch(2), 0);
        let other = live.register("dv_B", SessionEpoch(1), 0);
        live.order_end("dv_A", GoingAwayReason::Replaced, Some(SessionEpoch(2)));
        live.order_follow_subscriptions("dv_A");
        live.order_follow_subscriptions("dv_A");
        assert_eq!(
            old.mailbox().next().await,
            Orders {
                end: Some(GoingAwayReason::Replaced),
                follow_subscriptions: true
            }
        );
        assert_eq!(
            new.mailbox().next().await,
            Orders {
                end: None,
                follow_subscriptions: true
            }
        );
        // Nothing for the other device.
        assert!(
            tokio::time::timeout(Duration::from_millis(20), other.mailbox().next())
                .await
                .is_err()
        );
        // A revocation overrides a replacement not yet acted on.
        live.order_end("dv_A", GoingAwayReason::Replaced, None);
        live.order_end("dv_A", GoingAwayReason::Revoked, None);
        assert_eq!(
            new.mailbox().next().await.end,
            Some(GoingAwayReason::Revoked)
        );
    }

    #[tokio::test]
    async fn a_session_dropped_in_any_way_leaves_no_trace() {
        let live = LiveSessions::default();
        {
            let _session = live.register("dv_A", SessionEpoch(1), 5);
            assert_eq!(live.presence("dv_A").sessions, 1);
        }
        assert_eq!(live.presence("dv_A").sessions, 0);
        assert!(live.presence("dv_A").last_seen_ms > 0);
        assert!(live.devices().is_empty());
        // A takeover waiting on an older session is released by its end.
        let older = live.register("dv_A", SessionEpoch(1), 0);
        let _newer = live.register("dv_A", SessionEpoch(2), 0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let (gone, ()) = tokio::join!(
            live.wait_for_older("dv_A", SessionEpoch(2), deadline),
            async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                drop(older);
            }
        );
        assert!(gone);
        assert!(tokio::time::Instant::now() < deadline);
    }
}
