//! A device's session after admission, without a transport: which signals
//! to send it next (each channel it follows, in order, from where it
//! resumes), what to do with each report it sends (store it once, confirm
//! it, or refuse it), and when the session must end (an order from the rest
//! of the deployment, the gateway stopping, a store failing).
//!
//! A transport drives it: it writes what [`DeviceSession::next`] returns,
//! hands over what the device sends, and tells it what it wrote. The QUIC
//! driver is one; a test can be another, with no socket at all.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eagate_protocol::{Authenticate, ChannelName, DeviceId, GoingAwayReason, Report, Signal};
use tracing::{info, warn};

use super::Core;
use super::close::Close;
use super::sessions::{LiveSession, Orders};
use crate::clock::unix_ms;
use crate::registry::RegistryError;
use crate::reports::{Ingested, ReportStoreError, SessionEpoch, StoredReport};
use crate::signals::SignalLogError;

/// How often a session records how far it has delivered each channel.
/// Batched, not per signal: the record only serves the executions query
/// ("delivered, not yet reported"), so it may lag by this much.
const DELIVERY_RECORD_INTERVAL: Duration = Duration::from_millis(500);

/// What a session does next.
#[derive(Debug, Clone)]
pub enum Next<T> {
    /// End the session.
    End(Close),
    /// The device said something (what the transport's read returned).
    Device(T),
    /// Send the device this signal (then call [`DeviceSession::sent`]).
    Signal(Arc<Signal>),
}

/// One admitted device's session. Made by [`Core::admit`]; the device's
/// only live session until it is replaced or ends.
#[derive(Debug)]
pub struct DeviceSession<'a> {
    core: &'a Core,
    claim: Authenticate,
    live: LiveSession<'a>,
    /// Whether the device was told it is accepted (and is counted as
    /// connected).
    started: bool,
    feed: Feed,
    /// Orders taken from the mailbox and not yet carried out: kept here, so
    /// a `next` dropped half-way through one carries it out next time.
    unhandled: Orders,
    deliveries: Deliveries,
    /// Channels the device follows or has followed: a report about one of
    /// their signals is one it may have received.
    followed: HashSet<ChannelName>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    record_deliveries: tokio::time::Interval,
}

/// A session's channel followers, one per subscribed channel, all feeding
/// the session's one bounded queue.
#[derive(Debug)]
struct Feed {
    tasks: tokio::task::JoinSet<Result<(), (ChannelName, SignalLogError)>>,
    running: HashMap<ChannelName, tokio::task::AbortHandle>,
    out: tokio::sync::mpsc::Sender<Arc<Signal>>,
    signals: tokio::sync::mpsc::Receiver<Arc<Signal>>,
}

/// What woke a session waiting for its next step.
enum Woke {
    Orders(Orders),
    Stopping,
    FollowerFailed(ChannelName, SignalLogError),
    Signal(Arc<Signal>),
    RecordDeliveries,
}

/// Why a session's channels could not be (re)started.
#[derive(Debug, thiserror::Error)]
enum FollowError {
    #[error("reading subscriptions: {0}")]
    Subscriptions(#[from] RegistryError),
    #[error("reading where to start: {0}")]
    Start(#[from] SignalLogError),
}

impl Feed {
    fn new() -> Self {
        let (out, signals) = tokio::sync::mpsc::channel(64);
        Self {
            tasks: tokio::task::JoinSet::new(),
            running: HashMap::new(),
            out,
            signals,
        }
    }
}

impl<'a> DeviceSession<'a> {
    pub(super) fn new(core: &'a Core, claim: Authenticate, live: LiveSession<'a>) -> Self {
        let mut record_deliveries = tokio::time::interval(DELIVERY_RECORD_INTERVAL);
        record_deliveries.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            core,
            claim,
            live,
            started: false,
            feed: Feed::new(),
            unhandled: Orders::default(),
            deliveries: Deliveries::default(),
            followed: HashSet::new(),
            shutdown: core.shutdown.subscribe(),
            record_deliveries,
        }
    }

    /// The device.
    pub fn device_id(&self) -> &DeviceId {
        &self.claim.device_id
    }

    /// The session's epoch among the device's sessions.
    pub fn epoch(&self) -> SessionEpoch {
        self.live.epoch()
    }

    /// The protocol version the device speaks.
    pub fn protocol_version(&self) -> u16 {
        self.claim.protocol_version
    }

    fn device(&self) -> &str {
        self.claim.device_id.as_str()
    }

    /// The device was told it is accepted: it counts as connected, and the
    /// session starts following its channels. An error is how the session
    /// ends at once.
    pub async fn start(&mut self) -> Result<(), Close> {
        self.started = true;
        self.core.session_started(self.device()).await;
        // Revoked or replaced between the checks and the session taking
        // orders (orders since are in its mailbox)?
        if let Some(reason) = self.ended_meanwhile().await {
            return Err(Close::ordered(reason));
        }
        // Without its subscriptions the session would look healthy and carry
        // nothing: end it, so the device reconnects when the store is back.
        if let Err(e) = self.follow_subscriptions().await {
            self.core.metrics.store_error();
            warn!(device = self.device(), error = %e, "starting the session's channels failed");
            return Err(Close::StoreUnavailable);
        }
        Ok(())
    }

    /// What to do next: end the session, handle what the device said (the
    /// output of `device`, the transport's read of its next message), or
    /// send the next signal. In that order of priority: an order to end or
    /// change the session (a revocation, a takeover, an unsubscription) is
    /// acted on before anything else, and the device's reports are read
    /// between any two signals, so a flood of signals cannot hold back
    /// confirmations.
    ///
    /// Cancel-safe as long as `device` is: nothing taken is lost when the
    /// future is dropped.
    pub async fn next<T>(&mut self, device: impl std::future::Future<Output = T>) -> Next<T> {
        tokio::pin!(device);
        loop {
            if let Some(reason) = self.unhandled.end {
                return Next::End(Close::ordered(reason));
            }
            if self.unhandled.follow_subscriptions {
                if let Err(e) = self.follow_subscriptions().await {
                    self.core.metrics.store_error();
                    warn!(device = self.device(), error = %e, "changing the session's channels failed");
                    return Next::End(Close::StoreUnavailable);
                }
                self.unhandled.follow_subscriptions = false;
            }
            let woke = {
                let mailbox = self.live.mailbox();
                let feed = &mut self.feed;
                tokio::select! {
                    biased;
                    orders = mailbox.next() => Woke::Orders(orders),
                    () = stopping(&mut self.shutdown) => Woke::Stopping,
                    // A follower only ends on a store failure.
                    Some(Ok(Err((channel, e)))) = feed.tasks.join_next() => {
                        Woke::FollowerFailed(channel, e)
                    }
                    said = &mut device => return Next::Device(said),
                    Some(signal) = feed.signals.recv() => Woke::Signal(signal),
                    // Only armed while something awaits recording, so an
                    // idle session is not woken twice a second for nothing.
                    _ = self.record_deliveries.tick(), if !self.deliveries.0.is_empty() => {
                        Woke::RecordDeliveries
                    }
                }
            };
            match woke {
                Woke::Orders(orders) => self.unhandled.add(orders),
                Woke::Stopping => return Next::End(Close::Shutdown),
                // End the session, so the device reconnects and resumes,
                // rather than let it miss a channel silently.
                Woke::FollowerFailed(channel, e) => {
                    self.core.metrics.store_error();
                    warn!(device = self.device(), %channel, error = %e, "following a channel failed; ending the session");
                    return Next::End(Close::StoreUnavailable);
                }
                Woke::Signal(signal) => {
                    // Queued before an unsubscription was acted on: not sent.
                    if self.feed.running.contains_key(&signal.channel) {
                        return Next::Signal(signal);
                    }
                }
                Woke::RecordDeliveries => {
                    self.deliveries
                        .record(self.claim.device_id.as_str(), self.core)
                        .await;
                }
            }
        }
    }

    /// The session sends nothing more: its channel followers stop now,
    /// rather than read the log while the transport says goodbye.
    pub fn stop(&mut self) {
        self.feed.tasks.abort_all();
        self.feed.running.clear();
    }

    /// The transport wrote `signal` to the device.
    pub fn sent(&mut self, signal: &Signal) {
        self.core.metrics.signal_delivered();
        self.deliveries.note(signal);
    }

    /// Stores a report from the device. `Ok(up_to_seq)` is what to confirm
    /// (`ReportsConfirmed`); an error is how the session ends (a protocol
    /// violation, a conflict, a newer session, a store that failed).
    ///
    /// A report the store cannot take now ends the session: the device keeps
    /// it and resends it, with every later one, after reconnecting. Going on
    /// to the next report instead would store reports after a gap, and a
    /// later confirmation could cover the one skipped.
    pub async fn report(&mut self, report: Report) -> Result<u64, Close> {
        let core = self.core;
        let arrived = Instant::now();
        let device = self.claim.device_id.as_str();
        let violation = |why: &dyn std::fmt::Display| {
            warn!(device, seq = report.seq, error = %why, "protocol violation");
            Close::ProtocolViolation
        };
        let store_failed = |what: &str, e: &dyn std::fmt::Display| {
            core.metrics.store_error();
            warn!(device, seq = report.seq, error = %e, "{what} failed; ending the session");
            Close::StoreUnavailable
        };
        if report.seq == 0 {
            return Err(violation(&ReportStoreError::ZeroSequence));
        }
        // Where the signal sits: to check the device could have received it,
        // and to record its position once the report is stored.
        let place = core
            .signals
            .locate(report.signal_id)
            .await
            .map_err(|e| store_failed("locating a reported signal", &e))?;
        match &place {
            Some((channel, _)) => {
                let followed = has_followed(core, device, &mut self.followed, channel)
                    .await
                    .map_err(|e| store_failed("reading a subscription", &e))?;
                if !followed {
                    return Err(violation(&format!(
                        "a report about a signal of channel {channel}, which the device never followed"
                    )));
                }
            }
            // Expired from the log while the device was away, or never
            // published at all: either way the report is the device's record
            // of what its terminal did, and is kept.
            None => {
                core.metrics.report_about_unknown_signal();
                info!(device, seq = report.seq, signal = %report.signal_id, "a report about a signal not in the log");
            }
        }
        let stored = StoredReport::new(device, &report, unix_ms());
        let ingested = match core.reports.ingest(&stored, Some(self.epoch())).await {
            Ok(ingested) => ingested,
            Err(e @ (ReportStoreError::ZeroSequence | ReportStoreError::TooFarAhead { .. })) => {
                return Err(violation(&e));
            }
            Err(e) => return Err(store_failed("storing a report", &e)),
        };
        core.metrics.report_ingested(&ingested, arrived.elapsed());
        let confirmed_up_to = match ingested {
            Ingested::Stored { confirmed_up_to } | Ingested::AlreadyStored { confirmed_up_to } => {
                confirmed_up_to
            }
            Ingested::Conflict { stored } => {
                let offered = StoredReport {
                    stored_at_ms: 0,
                    ..StoredReport::new(device, &report, 0)
                };
                warn!(
                    device,
                    seq = report.seq,
                    stored = %serde_json::to_string(&stored).unwrap_or_default(),
                    offered = %serde_json::to_string(&offered).unwrap_or_default(),
                    "a report conflicts with the one stored under its number; not confirmed"
                );
                return Err(Close::ReportConflict { seq: report.seq });
            }
            // A newer session took over; its order may still be on its way.
            Ingested::Superseded => return Err(Close::Replaced),
        };
        if let Some((channel, position)) = place {
            // Before confirming, and on resends too: advancing keeps the
            // maximum, so repeating it is harmless.
            if let Err(e) = core.positions.advance(device, &channel, position).await {
                warn!(device, error = %e, "recording a device position failed");
            }
        }
        // Never above this report: a higher watermark may hold reports of
        // another installation of the device that this session has not sent,
        // and which this device must not take for its own.
        Ok(confirmed_up_to.min(report.seq))
    }

    /// The session is over (the transport has closed its connection): gives
    /// its place up, so a newer session waiting for it goes on, and records
    /// its deliveries.
    pub async fn finish(self) {
        let Self {
            core,
            claim,
            live,
            started,
            mut deliveries,
            ..
        } = self;
        core.session_ended(live, started).await;
        // Bookkeeping for the executions query, after the takeover was let go.
        deliveries.record(claim.device_id.as_str(), core).await;
    }

    /// Follows exactly the channels the device is subscribed to now: starts
    /// the new ones, stops the dropped ones, leaves the rest running.
    async fn follow_subscriptions(&mut self) -> Result<(), FollowError> {
        let core = self.core;
        let wanted = subscribed_channels(self.device(), core).await?;
        let feed = &mut self.feed;
        feed.running.retain(|channel, task| {
            let keep = wanted.contains(channel);
            if !keep {
                task.abort();
            }
            keep
        });
        for channel in wanted {
            if feed.running.contains_key(&channel) {
                continue;
            }
            let after = start_after(&self.claim, &channel, core).await?;
            let log = core.signals.clone();
            let hub = core.hub.clone();
            let out = feed.out.clone();
            let follower = channel.clone();
            let task = feed.tasks.spawn(async move {
                hub.follow(log, follower.clone(), after, out)
                    .await
                    .map_err(|e| (follower, e))
            });
            self.followed.insert(channel.clone());
            feed.running.insert(channel, task);
        }
        Ok(())
    }

    /// Whether the session should have ended already, by what the stores
    /// say now: revoked, or replaced by a newer session.
    async fn ended_meanwhile(&self) -> Option<GoingAwayReason> {
        let device = self.device();
        if matches!(
            self.core.registry.get(device).await,
            Ok(Some(record)) if record.revoked_at_ms.is_some()
        ) {
            return Some(GoingAwayReason::Revoked);
        }
        match self.core.reports.current_session(device).await {
            Ok(newest) if newest > self.epoch() => Some(GoingAwayReason::Replaced),
            _ => None,
        }
    }
}

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

    /// Records what was noted. Cancel-safe: an entry is forgotten only
    /// once recorded (recording one again is harmless).
    async fn record(&mut self, device: &str, core: &Core) {
        let noted: Vec<(ChannelName, u64)> = self
            .0
            .iter()
            .map(|(channel, position)| (channel.clone(), *position))
            .collect();
        for (channel, position) in noted {
            if let Err(e) = core
                .positions
                .mark_delivered(device, &channel, position)
                .await
            {
                core.metrics.store_error();
                warn!(device, %channel, error = %e, "recording a delivery failed");
            }
            if self.0.get(&channel) == Some(&position) {
                self.0.remove(&channel);
            }
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
    claim: &Authenticate,
    channel: &ChannelName,
    core: &Core,
) -> Result<u64, SignalLogError> {
    let device = claim.device_id.as_str();
    let named = claim
        .resume
        .iter()
        .find(|point| point.channel == *channel)
        .map(|point| point.position);
    let start = core
        .positions
        .subscription_start(device, channel)
        .await?
        .unwrap_or(0);
    let head = core.signals.head(channel).await?;
    let wanted = match named {
        Some(position) => position,
        None => match core.positions.get(device, channel).await? {
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
    core.metrics.resume_beyond_head();
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

/// Whether the device follows, or ever followed, `channel`; remembered in
/// `followed` once known.
async fn has_followed(
    core: &Core,
    device: &str,
    followed: &mut HashSet<ChannelName>,
    channel: &ChannelName,
) -> Result<bool, SignalLogError> {
    if followed.contains(channel) {
        return Ok(true);
    }
    let ever = core
        .positions
        .subscription_start(device, channel)
        .await?
        .is_some();
    if ever {
        followed.insert(channel.clone());
    }
    Ok(ever)
}

/// Resolves when the gateway starts shutting down (drops the watch guard
/// before returning, so the session future stays `Send`).
async fn stopping(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}

async fn subscribed_channels(device: &str, core: &Core) -> Result<Vec<ChannelName>, RegistryError> {
    Ok(match core.registry.get(device).await? {
        Some(record) => record
            .channels
            .iter()
            .filter_map(|name| ChannelName::new(name).ok())
            .collect(),
        None => Vec::new(),
    })
}
