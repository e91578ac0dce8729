//! A device's session after admission, without a transport: which signals
//! to send it next (each channel it follows, in order, from where it
//! resumes), what to do with each report it sends (store it once, confirm
//! it, or refuse it), and when the session must end (an order from the rest
//! of the deployment, the gateway stopping, a store failing).
//!
//! A transport drives it: it writes what [`DeviceSession::next`] returns,
//! hands over what the device sends, and tells it what it wrote. The QUIC
//! driver is one; a test can be another, with no socket at all.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use eagate_protocol::{
    Authenticate, ChannelName, DeviceId, GoingAwayReason, MAX_RESUME_POINTS, Report, ResumePoint,
    Signal,
};
use tracing::{info, warn};

use super::Core;
use super::close::Close;
use super::fanout::OutgoingSignal;
use super::sessions::{LiveSession, Orders};
use crate::clock::unix_ms;
use crate::registry::RegistryError;
use crate::reports::{Durability, Ingested, ReportStoreError, SessionEpoch, StoredReport, Written};
use crate::signals::SignalLogError;

/// How often a session records how far it has delivered each channel, and
/// up to where the device has reported on each. Batched, not per signal or
/// report: the delivery record only serves the executions query
/// ("delivered, not yet reported"), and the reported position only where to
/// start a device that names no resume point (the SDK and the C library
/// always name theirs); each may lag by this much, and is recorded at the
/// session's end before a newer session can start.
const DELIVERY_RECORD_INTERVAL: Duration = Duration::from_millis(500);

/// How many reports a session may have written and not yet confirmed (on
/// their way to disk). At this many it reads nothing more from the device
/// until the oldest is durable; the SDK keeps at most 256 unconfirmed.
pub const REPORTS_IN_FLIGHT: usize = 256;

/// How long a session waits for one answer of its store while taking a
/// device's reports before it takes the store for away and holds the
/// reports to try again: a Redis that answers at all answers in
/// milliseconds, and a session waiting longer would not answer its device,
/// whose idle timeout (10 s) must not run out during an outage.
const STORE_PATIENCE: Duration = Duration::from_secs(1);

/// Bounds of the wait between tries of a store that is away.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MOST: Duration = Duration::from_secs(2);

/// The most waiting reports one try takes (one store write).
const RETRY_RUN: usize = 64;

/// Who a session is for, and where it resumes: what an admitted claim
/// leaves for the session (a QUIC `Authenticate` once checked, or a signed
/// request's device and the positions it names).
#[derive(Debug, Clone)]
pub struct SessionClaim {
    /// The device.
    pub device_id: DeviceId,
    /// The protocol version it speaks.
    pub protocol_version: u16,
    /// For each channel it names, the last position it has processed.
    pub resume: heapless::Vec<ResumePoint, MAX_RESUME_POINTS>,
}

impl From<Authenticate> for SessionClaim {
    fn from(claim: Authenticate) -> Self {
        Self {
            device_id: claim.device_id,
            protocol_version: claim.protocol_version,
            resume: claim.resume,
        }
    }
}

/// What a session does next.
#[derive(Debug, Clone)]
pub enum Next<T> {
    /// End the session.
    End(Close),
    /// The device said something (what the transport's read returned).
    Device(T),
    /// Send the device this signal (then call [`DeviceSession::sent`]).
    Signal(Arc<OutgoingSignal>),
    /// Tell the device its reports up to this sequence are stored
    /// (`ReportsConfirmed`): every report the session took up to here is
    /// durable.
    Confirm(u64),
}

/// One admitted device's session. Made by [`Core::admit`]; the device's
/// only live session until it is replaced or ends.
#[derive(Debug)]
pub struct DeviceSession<'a> {
    core: &'a Core,
    claim: SessionClaim,
    live: LiveSession<'a>,
    /// Whether the device was told it is accepted (and is counted as
    /// connected).
    started: bool,
    feed: Feed,
    /// Orders taken from the mailbox and not yet carried out: kept here, so
    /// a `next` dropped half-way through one carries it out next time.
    unhandled: Orders,
    deliveries: Marks,
    /// Up to where the device reported on each channel, not yet recorded.
    reported: Marks,
    /// Reports written and not yet durable, oldest first: confirmed in
    /// order as each becomes durable.
    in_flight: VecDeque<InFlight>,
    /// Reports the device sent that the store could not take yet (it was
    /// away), oldest first: taken in order, before any later one, once it
    /// is back. With `in_flight`, at most [`REPORTS_IN_FLIGHT`].
    waiting: VecDeque<Report>,
    /// The store is away: the session holds what waits for it and tries
    /// again, the device staying connected.
    outage: Option<Outage>,
    /// The transport has too much waiting for the device: no signals now.
    signals_held: bool,
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
    /// Each running follower, and the position it started after.
    running: HashMap<ChannelName, Follower>,
    out: tokio::sync::mpsc::Sender<Arc<OutgoingSignal>>,
    signals: tokio::sync::mpsc::Receiver<Arc<OutgoingSignal>>,
}

/// One channel's follower task, and the position it started after.
#[derive(Debug)]
struct Follower {
    task: tokio::task::AbortHandle,
    after: u64,
}

/// A report written and on its way to disk.
struct InFlight {
    durable: Durability,
    /// What to confirm once durable.
    confirm: u64,
    /// Where its signal sits, to record as the device's position.
    place: Option<(ChannelName, u64)>,
    arrived: Instant,
    ingested: Ingested,
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("confirm", &self.confirm)
            .field("place", &self.place)
            .finish_non_exhaustive()
    }
}

/// The store went away under a session (Redis restarting, unreachable, or
/// silent): since when, and when to try it again.
#[derive(Debug)]
struct Outage {
    since: Instant,
    retry_at: tokio::time::Instant,
    wait: Duration,
}

/// What woke a session waiting for its next step.
enum Woke {
    Orders(Orders),
    Durable(Result<(), ReportStoreError>),
    Stopping,
    FollowerFailed(ChannelName, SignalLogError),
    Signal(Arc<OutgoingSignal>),
    RecordDeliveries,
    RetryStore,
}

/// Why a report could not be taken now.
enum NotTaken {
    /// The session ends so.
    Ends(Close),
    /// The store is away for now (why): the report waits in the session.
    StoreAway(String),
}

/// A store call that did not answer.
enum StoreTrouble<E> {
    /// Away for now (unreachable, restarting, or silent for
    /// [`STORE_PATIENCE`]): worth trying again.
    Away(String),
    /// Failed in a way another try would not mend.
    Failed(E),
}

impl<E> StoreTrouble<E> {
    /// A report's: held while the store is away, or the session's end.
    fn for_report(self, end: impl FnOnce(E) -> Close) -> NotTaken {
        match self {
            Self::Away(why) => NotTaken::StoreAway(why),
            Self::Failed(e) => NotTaken::Ends(end(e)),
        }
    }
}

/// A store error that may only mean the store is away for now.
trait MayBeAway: std::fmt::Display {
    fn is_outage(&self) -> bool;
}

impl MayBeAway for SignalLogError {
    fn is_outage(&self) -> bool {
        SignalLogError::is_outage(self)
    }
}

impl MayBeAway for ReportStoreError {
    fn is_outage(&self) -> bool {
        ReportStoreError::is_outage(self)
    }
}

impl MayBeAway for FollowError {
    fn is_outage(&self) -> bool {
        match self {
            Self::Subscriptions(e) => e.is_outage(),
            Self::Start(e) => e.is_outage(),
        }
    }
}

/// `call`'s answer, or why there is none: the store is away (it says so,
/// or says nothing for [`STORE_PATIENCE`]), or it failed. Giving up on a
/// call is safe here: every call on the report path is a read, or a write
/// that writing again finds done (the store keeps a report once).
async fn patiently<T, E: MayBeAway>(
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, StoreTrouble<E>> {
    // Most calls on the report path answer at once (cached places and
    // subscriptions): those set no timer.
    let mut call = std::pin::pin!(call);
    let answered = match std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await {
        Poll::Ready(answer) => Ok(answer),
        Poll::Pending => tokio::time::timeout(STORE_PATIENCE, call).await,
    };
    match answered {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) if e.is_outage() => Err(StoreTrouble::Away(e.to_string())),
        Ok(Err(e)) => Err(StoreTrouble::Failed(e)),
        Err(_silent) => Err(StoreTrouble::Away(format!(
            "no answer within {STORE_PATIENCE:?}"
        ))),
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
    pub(super) fn new(core: &'a Core, claim: SessionClaim, live: LiveSession<'a>) -> Self {
        let mut record_deliveries = tokio::time::interval(DELIVERY_RECORD_INTERVAL);
        record_deliveries.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            core,
            claim,
            live,
            started: false,
            feed: Feed::new(),
            unhandled: Orders::default(),
            deliveries: Marks::default(),
            reported: Marks::default(),
            in_flight: VecDeque::new(),
            waiting: VecDeque::new(),
            outage: None,
            signals_held: false,
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
            // While the store is away, the retry does this.
            if self.unhandled.follow_subscriptions
                && self.outage.is_none()
                && let Err(close) = self.change_channels().await
            {
                return Next::End(close);
            }
            let woke = {
                let mailbox = self.live.mailbox();
                let feed = &mut self.feed;
                let in_flight = &mut self.in_flight;
                // While the store is away the device is read on (its pings
                // answered), and a device that sends more reports than a
                // session holds is told to come back later (`reports`).
                let room = in_flight.len() + self.waiting.len() < REPORTS_IN_FLIGHT
                    || self.outage.is_some();
                let retry_at = self.outage.as_ref().map(|outage| outage.retry_at);
                // Positions are not recorded while the store is away: each
                // try would wait for it, and they may lag (see
                // `DELIVERY_RECORD_INTERVAL`).
                let recording = (!self.deliveries.0.is_empty() || !self.reported.0.is_empty())
                    && self.outage.is_none();
                tokio::select! {
                    biased;
                    orders = mailbox.next() => Woke::Orders(orders),
                    () = stopping(&mut self.shutdown) => Woke::Stopping,
                    // A follower only ends on a store failure.
                    Some(Ok(Err((channel, e)))) = feed.tasks.join_next() => {
                        Woke::FollowerFailed(channel, e)
                    }
                    // Confirmations before more of the device's messages:
                    // each is one frame, and frees room for more reports.
                    durable = oldest_durable(in_flight), if !in_flight.is_empty() => {
                        Woke::Durable(durable)
                    }
                    // What waits for the store before more of the device's
                    // messages: they would wait behind it.
                    () = wait_until(retry_at), if retry_at.is_some() => Woke::RetryStore,
                    said = &mut device, if room => return Next::Device(said),
                    Some(signal) = feed.signals.recv(), if !self.signals_held => Woke::Signal(signal),
                    // Only armed while something awaits recording, so an
                    // idle session is not woken twice a second for nothing.
                    _ = self.record_deliveries.tick(), if recording => {
                        Woke::RecordDeliveries
                    }
                }
            };
            match woke {
                Woke::Orders(orders) => self.unhandled.add(orders),
                Woke::Durable(Err(e)) => {
                    self.core.metrics.store_error();
                    warn!(device = self.device(), error = %e, "making a report durable failed; ending the session");
                    return Next::End(Close::StoreUnavailable);
                }
                Woke::Durable(Ok(())) => return Next::Confirm(self.confirm_durable()),
                Woke::Stopping => return Next::End(Close::Shutdown),
                Woke::RetryStore => {
                    if let Err(close) = self.retry_store().await {
                        return Next::End(close);
                    }
                }
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
                    if let Err(why) = self.record_marks().await {
                        self.store_away(&why);
                    }
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

    /// The channels the session follows, each with the position it started
    /// after: where a device that is sent nothing more stands.
    pub fn following(&self) -> impl Iterator<Item = (&ChannelName, u64)> {
        self.feed
            .running
            .iter()
            .map(|(channel, follower)| (channel, follower.after))
    }

    /// Whether every report the session took is durable and confirmed
    /// (none in flight, none waiting for the store).
    pub fn settled(&self) -> bool {
        self.in_flight.is_empty() && self.waiting.is_empty()
    }

    /// Whether [`DeviceSession::next`] holds back signals (the transport
    /// has as much waiting for the device as it will hold) or hands them
    /// out again. Orders, confirmations and the device's messages go on
    /// either way; held signals wait in the channel's log, in order.
    pub fn hold_signals(&mut self, held: bool) {
        self.signals_held = held;
    }

    /// The transport took `signal` for the device (written, or queued in
    /// order behind what is being written).
    pub fn sent(&mut self, signal: &Signal) {
        self.core.metrics.signal_delivered();
        self.deliveries.note(&signal.channel, signal.position);
    }

    /// How many more reports the session takes before it waits for some
    /// to be durable.
    pub fn room_for_reports(&self) -> usize {
        REPORTS_IN_FLIGHT.saturating_sub(self.in_flight.len() + self.waiting.len())
    }

    /// Takes a report from the device: [`DeviceSession::reports`] of one.
    pub async fn report(&mut self, report: Report) -> Result<(), Close> {
        self.reports(vec![report]).await
    }

    /// Takes a run of reports from the device, in the order it sent them
    /// (every report already read, so the store writes them at once):
    /// checks each and writes them to the store. Their confirmations come
    /// later, from [`DeviceSession::next`] ([`Next::Confirm`]), once
    /// durable; meanwhile the session goes on (up to [`REPORTS_IN_FLIGHT`]
    /// reports on their way to disk). An error is how the session ends (a
    /// protocol violation, a conflict, a newer session, a store that
    /// failed); the reports before the one that ended it are written first,
    /// as they would have been one by one.
    ///
    /// A store that is only away (Redis restarting or unreachable) does not
    /// end the session: the report it could not take waits in the session
    /// with every later one, unconfirmed, and [`DeviceSession::next`] tries
    /// the store again until it takes them, in order. Never a later report
    /// before an earlier one: a confirmation covers every report below it.
    /// A device that sends more than the session holds meanwhile
    /// ([`REPORTS_IN_FLIGHT`]) is told to come back later (it keeps its
    /// reports and resends them).
    pub async fn reports(&mut self, reports: Vec<Report>) -> Result<(), Close> {
        if self.outage.is_some() || !self.waiting.is_empty() {
            self.waiting.extend(reports);
            if self.waiting.len() + self.in_flight.len() > REPORTS_IN_FLIGHT {
                warn!(
                    device = self.device(),
                    waiting = self.waiting.len(),
                    "more reports than a session holds while its store is away; asking the device to come back later"
                );
                return Err(Close::StoreUnavailable);
            }
            return Ok(());
        }
        self.waiting = self.take(reports).await?;
        Ok(())
    }

    /// Checks and writes `reports`, in order. What the store could not take
    /// because it is away comes back, in order: the first report not taken
    /// and every later one. An error is how the session ends.
    async fn take(&mut self, reports: Vec<Report>) -> Result<VecDeque<Report>, Close> {
        let arrived = Instant::now();
        let mut reports = reports.into_iter();
        let mut checked = Vec::with_capacity(reports.len());
        let mut refused = None;
        let mut left = VecDeque::new();
        for report in reports.by_ref() {
            match self.check(&report).await {
                Ok(place) => checked.push((report, place)),
                Err(NotTaken::Ends(close)) => {
                    refused = Some(close);
                    break;
                }
                Err(NotTaken::StoreAway(why)) => {
                    self.store_away(&why);
                    left.push_back(report);
                    break;
                }
            }
        }
        // Only a store that is away leaves reports to take later.
        if refused.is_none() {
            left.extend(reports);
        }
        let core = self.core;
        let now = unix_ms();
        let stored: Vec<StoredReport> = checked
            .iter()
            .map(|(report, _)| StoredReport::new(self.claim.device_id.as_str(), report, now))
            .collect();
        let mut checked = checked.into_iter();
        let mut at = 0;
        // The store going away meanwhile puts the report it did not take,
        // and every later one, before those left above.
        'writing: while at < stored.len() {
            let failed = |e: &dyn std::fmt::Display| {
                let report = &stored[at];
                store_failed(core, &report.device_id, report.seq, "storing reports", e)
            };
            let outcomes =
                match patiently(core.reports.write_run(&stored[at..], Some(self.epoch()))).await {
                    Ok(outcomes) => outcomes,
                    Err(StoreTrouble::Failed(e)) => return Err(failed(&e)),
                    Err(StoreTrouble::Away(why)) => {
                        self.store_away(&why);
                        left = checked.map(|(report, _)| report).chain(left).collect();
                        break 'writing;
                    }
                };
            if outcomes.is_empty() {
                // A store answers at least the first of a run; going round
                // again would never end.
                return Err(failed(&"the store answered a run of reports with nothing"));
            }
            for written in outcomes {
                let Some((report, place)) = checked.next() else {
                    break;
                };
                at += 1;
                match written {
                    // Those after it may be stored; writing them again finds
                    // them so.
                    Err(e) if e.is_outage() => {
                        self.store_away(&e);
                        left = std::iter::once(report)
                            .chain(checked.map(|(report, _)| report))
                            .chain(left)
                            .collect();
                        break 'writing;
                    }
                    written => self.take_written(report, place, written, arrived)?,
                }
            }
        }
        // A refused report ends the session all the same.
        refused.map_or(Ok(left), Err)
    }

    /// Whether `report` may be stored: a sequence number, and a signal of a
    /// channel the device followed (or one the log no longer holds). Where
    /// its signal sits, to record its position once stored.
    async fn check(&mut self, report: &Report) -> Result<Option<(ChannelName, u64)>, NotTaken> {
        let core = self.core;
        let device = self.claim.device_id.as_str();
        if report.seq == 0 {
            return Err(NotTaken::Ends(violation(
                device,
                report.seq,
                &ReportStoreError::ZeroSequence,
            )));
        }
        // Where the signal sits: to check the device could have received it,
        // and to record its position once the report is stored.
        let place = patiently(core.places.locate(&*core.signals, report.signal_id))
            .await
            .map_err(|trouble| {
                trouble.for_report(|e| {
                    store_failed(core, device, report.seq, "locating a reported signal", &e)
                })
            })?;
        match &place {
            Some((channel, _)) => {
                let followed = patiently(has_followed(core, device, &mut self.followed, channel))
                    .await
                    .map_err(|trouble| {
                        trouble.for_report(|e| {
                            store_failed(core, device, report.seq, "reading a subscription", &e)
                        })
                    })?;
                if !followed {
                    return Err(NotTaken::Ends(violation(
                        device,
                        report.seq,
                        &format!(
                            "a report about a signal of channel {channel}, which the device never followed"
                        ),
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
        Ok(place)
    }

    /// The store is away (`why`): the session holds what waits for it and
    /// tries again after a wait that grows with each failed try.
    fn store_away(&mut self, why: &dyn std::fmt::Display) {
        let now = tokio::time::Instant::now();
        match &mut self.outage {
            Some(outage) => {
                outage.wait = (outage.wait * 2).min(RETRY_MOST);
                outage.retry_at = now + outage.wait;
            }
            None => {
                self.core.metrics.store_error();
                warn!(
                    device = self.device(),
                    error = %why,
                    "the store is away; the session holds the device's reports and waits for it"
                );
                self.outage = Some(Outage {
                    since: Instant::now(),
                    retry_at: now + RETRY_FIRST,
                    wait: RETRY_FIRST,
                });
            }
        }
    }

    /// Records the positions noted since the last time (what the device
    /// reported on, what it was sent); the store is away (why) if it says
    /// so or says nothing.
    async fn record_marks(&mut self) -> Result<(), String> {
        let device = self.claim.device_id.as_str();
        self.reported
            .record(device, self.core, Mark::Reported)
            .await?;
        self.deliveries
            .record(device, self.core, Mark::Delivered)
            .await
    }

    /// The store was away: tries again what waits for it (a change of the
    /// device's channels, then its reports, in order), and ends the outage
    /// once nothing waits. An error is how the session ends.
    async fn retry_store(&mut self) -> Result<(), Close> {
        if self.unhandled.follow_subscriptions {
            self.change_channels().await?;
            if self.unhandled.follow_subscriptions {
                return Ok(());
            }
        }
        let room = REPORTS_IN_FLIGHT.saturating_sub(self.in_flight.len());
        let taking = self.waiting.len().min(room).min(RETRY_RUN);
        if taking > 0 {
            // Copied, and let go of only once taken: a `next` dropped
            // meanwhile keeps them (taking one twice is harmless).
            let run: Vec<Report> = self.waiting.iter().take(taking).cloned().collect();
            let left = self.take(run).await?;
            self.waiting.drain(..taking);
            if !left.is_empty() {
                // Still away (`take` put off the next try): back in front,
                // in order.
                for report in left.into_iter().rev() {
                    self.waiting.push_front(report);
                }
                return Ok(());
            }
        }
        // Positions noted meanwhile, once nothing else waits: the last
        // proof that the store is back.
        if self.waiting.is_empty()
            && let Err(why) = self.record_marks().await
        {
            self.store_away(&why);
            return Ok(());
        }
        match &mut self.outage {
            // More to take: at once, or once reports in flight are durable
            // (which `next` sees to first).
            Some(outage) if !self.waiting.is_empty() => {
                let full = self.in_flight.len() >= REPORTS_IN_FLIGHT;
                outage.retry_at =
                    tokio::time::Instant::now() + if full { RETRY_FIRST } else { Duration::ZERO };
            }
            Some(outage) => {
                info!(
                    device = self.claim.device_id.as_str(),
                    after = ?outage.since.elapsed(),
                    "the store is back; the session's reports are taken"
                );
                self.outage = None;
            }
            None => {}
        }
        Ok(())
    }

    /// Acts on an order to follow the device's channels anew: done, or
    /// left for the retry while the store is away. An error is how the
    /// session ends.
    async fn change_channels(&mut self) -> Result<(), Close> {
        match patiently(self.follow_subscriptions()).await {
            Ok(()) => {
                self.unhandled.follow_subscriptions = false;
                Ok(())
            }
            Err(StoreTrouble::Away(why)) => {
                self.store_away(&why);
                Ok(())
            }
            Err(StoreTrouble::Failed(e)) => {
                self.core.metrics.store_error();
                warn!(device = self.device(), error = %e, "changing the session's channels failed");
                Err(Close::StoreUnavailable)
            }
        }
    }

    /// Acts on what the store did with `report`: holds it until durable, or
    /// ends the session.
    fn take_written(
        &mut self,
        report: Report,
        place: Option<(ChannelName, u64)>,
        written: Result<Written, ReportStoreError>,
        arrived: Instant,
    ) -> Result<(), Close> {
        let core = self.core;
        let device = self.claim.device_id.as_str();
        let written = match written {
            Ok(written) => written,
            Err(e @ (ReportStoreError::ZeroSequence | ReportStoreError::TooFarAhead { .. })) => {
                return Err(violation(device, report.seq, &e));
            }
            Err(e) => {
                return Err(store_failed(
                    core,
                    device,
                    report.seq,
                    "storing a report",
                    &e,
                ));
            }
        };
        let confirmed_up_to = match &written.ingested {
            Ingested::Stored { confirmed_up_to } | Ingested::AlreadyStored { confirmed_up_to } => {
                *confirmed_up_to
            }
            Ingested::Conflict { stored } => {
                core.metrics
                    .report_ingested(&written.ingested, arrived.elapsed());
                let offered = StoredReport {
                    stored_at_ms: 0,
                    ..StoredReport::new(device, &report, 0)
                };
                warn!(
                    device,
                    seq = report.seq,
                    stored = %serde_json::to_string(stored).unwrap_or_default(),
                    offered = %serde_json::to_string(&offered).unwrap_or_default(),
                    "a report conflicts with the one stored under its number; not confirmed"
                );
                return Err(Close::ReportConflict { seq: report.seq });
            }
            // A newer session took over; its order may still be on its way.
            Ingested::Superseded => {
                core.metrics
                    .report_ingested(&written.ingested, arrived.elapsed());
                return Err(Close::Replaced);
            }
        };
        self.in_flight.push_back(InFlight {
            durable: written.durable,
            // Never above this report: a higher watermark may hold reports
            // of another installation of the device that this session has
            // not sent, and which this device must not take for its own.
            confirm: confirmed_up_to.min(report.seq),
            place,
            arrived,
            ingested: written.ingested,
        });
        Ok(())
    }

    /// The oldest report in flight is durable: takes it, and every later one
    /// already durable too, noting their positions; what to confirm.
    fn confirm_durable(&mut self) -> u64 {
        let mut confirm = 0;
        let mut first = true;
        while let Some(front) = self.in_flight.front_mut() {
            // The first is known durable; the rest only if already so (a
            // first that confirms nothing, sent ahead of a gap, says nothing
            // of the next one's durability).
            if !first {
                match futures_util::FutureExt::now_or_never(&mut front.durable) {
                    Some(Ok(())) => {}
                    None => break,
                    // Kept for the next `next` to find (the future itself is
                    // spent).
                    Some(Err(e)) => {
                        front.durable = Box::pin(std::future::ready(Err(e)));
                        break;
                    }
                }
            }
            first = false;
            let Some(done) = self.in_flight.pop_front() else {
                break;
            };
            self.core
                .metrics
                .report_ingested(&done.ingested, done.arrived.elapsed());
            if let Some((channel, position)) = &done.place {
                self.reported.note(channel, *position);
            }
            confirm = confirm.max(done.confirm);
        }
        confirm
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
            mut reported,
            ..
        } = self;
        let device = claim.device_id.as_str();
        // Where a newer session that names no resume point starts: recorded
        // before it can start.
        let away = |why: String| {
            core.metrics.store_error();
            warn!(device, error = %why, "the store is away; positions of the ended session not recorded");
        };
        if let Err(why) = reported.record(device, core, Mark::Reported).await {
            away(why);
        }
        core.session_ended(live, started).await;
        // Bookkeeping for the executions query, after the takeover was let go.
        if let Err(why) = deliveries.record(device, core, Mark::Delivered).await {
            away(why);
        }
    }

    /// Follows exactly the channels the device is subscribed to now: starts
    /// the new ones, stops the dropped ones, leaves the rest running.
    async fn follow_subscriptions(&mut self) -> Result<(), FollowError> {
        let core = self.core;
        let wanted = subscribed_channels(self.device(), core).await?;
        let feed = &mut self.feed;
        feed.running.retain(|channel, follower| {
            let keep = wanted.contains(channel);
            if !keep {
                follower.task.abort();
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
            feed.running.insert(channel, Follower { task, after });
        }
        Ok(())
    }

    /// Whether the session should have ended already, by what the stores
    /// say now: revoked, or replaced by a newer session. (`&mut`: the
    /// session holds futures that are `Send` but not `Sync`.)
    async fn ended_meanwhile(&mut self) -> Option<GoingAwayReason> {
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

/// The newest position per channel of something a session records in
/// batches (what it delivered, what the device reported on), not yet
/// recorded.
#[derive(Debug, Default)]
struct Marks(HashMap<ChannelName, u64>);

/// Which position a [`Marks`] records.
#[derive(Debug, Clone, Copy)]
enum Mark {
    Delivered,
    Reported,
}

impl Marks {
    fn note(&mut self, channel: &ChannelName, position: u64) {
        // Per signal or report: clone the channel name only for a new entry.
        match self.0.get_mut(channel) {
            Some(newest) => *newest = (*newest).max(position),
            None => {
                self.0.insert(channel.clone(), position);
            }
        }
    }

    /// Records what was noted. Cancel-safe: an entry is forgotten only
    /// once recorded (recording one again is harmless: positions only
    /// advance). A store that is away (why) stops it, the rest kept for
    /// the next time; one that fails otherwise loses the entry (positions
    /// may lag, see [`DELIVERY_RECORD_INTERVAL`]).
    async fn record(&mut self, device: &str, core: &Core, mark: Mark) -> Result<(), String> {
        let noted: Vec<(ChannelName, u64)> = self
            .0
            .iter()
            .map(|(channel, position)| (channel.clone(), *position))
            .collect();
        for (channel, position) in noted {
            let recorded = patiently(async {
                match mark {
                    Mark::Delivered => {
                        core.positions
                            .mark_delivered(device, &channel, position)
                            .await
                    }
                    Mark::Reported => core.positions.advance(device, &channel, position).await,
                }
            })
            .await;
            match recorded {
                Ok(()) => {}
                Err(StoreTrouble::Away(why)) => return Err(why),
                Err(StoreTrouble::Failed(e)) => {
                    core.metrics.store_error();
                    warn!(device, %channel, error = %e, ?mark, "recording a position failed");
                }
            }
            if self.0.get(&channel) == Some(&position) {
                self.0.remove(&channel);
            }
        }
        Ok(())
    }
}

/// A report broke the protocol: logged; the session ends.
fn violation(device: &str, seq: u64, why: &dyn std::fmt::Display) -> Close {
    warn!(device, seq, error = %why, "protocol violation");
    Close::ProtocolViolation
}

/// The store failed `what`: counted and logged; the session ends, and the
/// device resends after reconnecting.
fn store_failed(
    core: &Core,
    device: &str,
    seq: u64,
    what: &str,
    e: &dyn std::fmt::Display,
) -> Close {
    core.metrics.store_error();
    warn!(device, seq, error = %e, "{what} failed; ending the session");
    Close::StoreUnavailable
}

/// Resolves at `at` (never, without one).
async fn wait_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Resolves when the oldest report in flight is durable (cancel-safe: the
/// future stays in the queue).
async fn oldest_durable(in_flight: &mut VecDeque<InFlight>) -> Result<(), ReportStoreError> {
    match in_flight.front_mut() {
        Some(front) => (&mut front.durable).await,
        None => std::future::pending().await,
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
    claim: &SessionClaim,
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
