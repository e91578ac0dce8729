//! The sans-IO session core: everything a device session decides, with no
//! sockets, no clock and no randomness of its own.
//!
//! The driver (the tokio + quinn client, the C library, or a test) feeds it
//! what happened (`handle_*`, always with `now_ms`) and carries out what it
//! asks for (`poll_*`): bytes to write, when to wake it up, and events for
//! the application. The same core therefore runs in a bot, inside
//! MetaTrader, and in memory under a simulated clock.
//!
//! It owns authentication (the signed transcript of `eagate-protocol`,
//! corrected for clock skew), resume positions per channel, report sequence
//! numbers and the outbox of reports not yet confirmed, pings and timeouts,
//! and the reconnect backoff. Nothing is on the heap: queues are
//! [`heapless`] with fixed bounds.

use heapless::{Deque, Vec};

use eagate_protocol::{
    Authenticate, ChannelBinding, ChannelName, DecodeError, Decoded, DeviceId, DeviceMessage,
    DeviceSecret, GatewayMessage, GoingAway, GoingAwayReason, MAX_RESUME_POINTS, MAX_WIRE_LEN,
    Nonce, Ping, Pong, Refusal, Report, ReportOutcome, ResumePoint, Signal, SignalId, decode_frame,
    encode_frame,
};

/// How many unconfirmed reports the outbox holds. A device that has this
/// many reports unconfirmed is told [`ReportError::OutboxFull`] until the
/// gateway confirms some.
pub const OUTBOX_CAPACITY: usize = 256;

/// How many events wait for the application at most. A signal is only
/// taken from the wire when there is room for its event, so none is lost.
pub const EVENT_CAPACITY: usize = 32;

/// Time allowed from connecting to the gateway's answer to authentication.
pub const AUTH_TIMEOUT_MS: u64 = 10_000;

/// The first reconnect delay; it doubles on each failed attempt.
pub const BACKOFF_START_MS: u64 = 500;

/// The longest reconnect delay.
pub const BACKOFF_MAX_MS: u64 = 30_000;

/// Where the session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not connected; the driver should connect now.
    Disconnected,
    /// Connected, authentication sent, waiting for the answer.
    Authenticating,
    /// Authenticated: signals flow, reports are sent.
    Connected,
    /// Waiting until `until_ms` before connecting again.
    BackingOff {
        /// When to connect again (the core's clock).
        until_ms: u64,
    },
    /// The device was revoked: never connect again.
    Revoked,
    /// The gateway refused the device for good (wrong secret, unknown
    /// device, unsupported version): fix the configuration.
    Refused(Refusal),
    /// The same device connected from elsewhere (another chart, terminal or
    /// machine) and took over: do not reconnect on our own, or the two
    /// would replace each other for ever.
    Replaced,
    /// The device's secret was rotated: connect again only with the new
    /// secret.
    SecretRotated,
}

/// Something the application should know.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "no heap in no_std; events sit in a fixed queue either way"
)]
pub enum Event {
    /// The session is authenticated.
    Connected {
        /// The gateway's clock at acceptance, Unix ms.
        gateway_time_ms: u64,
    },
    /// A new signal, in order and never twice.
    Signal(Signal),
    /// The gateway stored every report up to this sequence number.
    ReportsConfirmed {
        /// The highest confirmed sequence number.
        up_to_seq: u64,
    },
    /// The device's clock was off; the core now adds `offset_ms` to it when
    /// signing, and reconnects.
    ClockCorrected {
        /// Gateway time minus device time, in ms.
        offset_ms: i64,
    },
    /// The session ended; the core backs off and asks to reconnect.
    Disconnected {
        /// When the driver should connect again.
        reconnect_at_ms: u64,
    },
    /// The device was revoked; the core stops.
    Revoked,
    /// The gateway refused the device for good; the core stops.
    Refused(Refusal),
    /// The same device connected from elsewhere and took over; the core
    /// stops.
    Replaced,
    /// The device's secret was rotated; the core stops.
    SecretRotated,
    /// Reports had sequence numbers that another installation of this
    /// device used first (the gateway said so): they now carry new numbers
    /// and are sent again. A driver with a journal persists the new
    /// numbers before anything more is sent.
    ReportsRenumbered {
        /// The first number that was taken.
        from_seq: u64,
        /// Its new number; the reports after it follow in order.
        to_seq: u64,
        /// How many reports were renumbered.
        count: usize,
    },
}

/// Why the connection must be closed now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The gateway sent a frame that does not decode.
    #[error("the gateway sent a malformed frame: {0:?}")]
    Malformed(DecodeError),
    /// The gateway sent a message the session does not allow now.
    #[error("the gateway sent a message out of order")]
    OutOfOrder,
    /// No answer to authentication in time, or silence past the idle
    /// timeout.
    #[error("the gateway went silent")]
    TimedOut,
    /// The gateway is going away (shutdown, revoked, replaced).
    #[error("the gateway closed the session: {0:?}")]
    GatewayLeft(GoingAwayReason),
    /// The gateway holds another report under this sequence number; the
    /// core renumbered its own and reconnects.
    #[error("report {0} conflicts with the one the gateway stored under its number")]
    ReportConflict(u64),
}

/// Why a report was not accepted into the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// The outbox holds [`OUTBOX_CAPACITY`] unconfirmed reports.
    #[error("the outbox is full; wait for the gateway to confirm reports")]
    OutboxFull,
}

/// What the driver must persist to resume after a crash: the reports not
/// yet confirmed and the positions reached (see [`SessionCore::restore`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The next report sequence number to hand out.
    pub next_seq: u64,
    /// Reports accepted and not yet confirmed, in sequence order.
    pub outbox: Vec<Report, OUTBOX_CAPACITY>,
    /// The last position handed to the application, per channel.
    pub positions: Vec<ResumePoint, MAX_RESUME_POINTS>,
}

/// A message waiting to be written: small descriptors, so a long queue
/// costs little; reports are read from the outbox when written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Authenticate,
    Report(u64),
    Ping(u64),
    Pong(u64),
    GoingAway,
}

/// The session core of one device.
#[derive(Debug)]
pub struct SessionCore {
    device_id: DeviceId,
    secret: DeviceSecret,
    state: State,
    clock_offset_ms: i64,
    binding: ChannelBinding,
    nonce: Nonce,
    positions: Vec<ResumePoint, MAX_RESUME_POINTS>,
    next_seq: u64,
    outbox: Deque<Report, OUTBOX_CAPACITY>,
    /// The newest `held` reports of the outbox wait to be made durable by
    /// the driver and are not sent until [`Self::release_held`].
    held: usize,
    confirmed_seq: u64,
    pending: Deque<Pending, { OUTBOX_CAPACITY + 8 }>,
    events: Deque<Event, EVENT_CAPACITY>,
    inbound: Vec<u8, MAX_WIRE_LEN>,
    failures: u32,
    ping_interval_ms: u64,
    idle_timeout_ms: u64,
    last_heard_ms: u64,
    last_sent_ms: u64,
    connected_at_ms: u64,
    next_ping_token: u64,
    /// Channels that sent a signal on this connection: the first signal of
    /// a channel at or below the position named shows its log restarted.
    heard_from: Vec<ChannelName, MAX_RESUME_POINTS>,
    /// `AuthAccepted.confirmed_report_seq` of this connection: every number
    /// up to it is taken at the gateway.
    gateway_confirmed: u64,
}

impl SessionCore {
    /// A core for `device_id`, starting disconnected, with an empty outbox.
    pub fn new(device_id: DeviceId, secret: DeviceSecret) -> Self {
        Self::restore(device_id, secret, Snapshot::default())
    }

    /// A core resuming from what a previous run persisted: its unconfirmed
    /// reports are sent again after authentication, and each channel resumes
    /// after its recorded position.
    pub fn restore(device_id: DeviceId, secret: DeviceSecret, snapshot: Snapshot) -> Self {
        let mut outbox = Deque::new();
        let mut next_seq = snapshot.next_seq.max(1);
        for report in snapshot.outbox {
            next_seq = next_seq.max(report.seq + 1);
            // Same capacity as the snapshot's: cannot fail.
            let _ = outbox.push_back(report);
        }
        Self {
            device_id,
            secret,
            state: State::Disconnected,
            clock_offset_ms: 0,
            binding: [0; 32],
            nonce: [0; 16],
            positions: snapshot.positions,
            next_seq,
            outbox,
            held: 0,
            confirmed_seq: 0,
            pending: Deque::new(),
            events: Deque::new(),
            inbound: Vec::new(),
            failures: 0,
            ping_interval_ms: 5_000,
            idle_timeout_ms: 10_000,
            last_heard_ms: 0,
            last_sent_ms: 0,
            connected_at_ms: 0,
            next_ping_token: 1,
            heard_from: Vec::new(),
            gateway_confirmed: 0,
        }
    }

    /// Where the session stands.
    pub fn state(&self) -> State {
        self.state
    }

    /// The correction added to the device's clock when signing.
    pub fn clock_offset_ms(&self) -> i64 {
        self.clock_offset_ms
    }

    /// What to persist now (after accepting a report, after a confirmation,
    /// after handing out a signal).
    pub fn snapshot(&self) -> Snapshot {
        let mut outbox = Vec::new();
        for report in &self.outbox {
            let _ = outbox.push(report.clone());
        }
        Snapshot {
            next_seq: self.next_seq,
            outbox,
            positions: self.positions.clone(),
        }
    }

    /// How many reports wait for the gateway's confirmation.
    pub fn unconfirmed(&self) -> usize {
        self.outbox.len()
    }

    /// The transport is up (TLS done) on a connection whose exporter is
    /// `binding`; `nonce` must be fresh random bytes. Queues the signed
    /// authentication.
    pub fn handle_connected(&mut self, now_ms: u64, binding: ChannelBinding, nonce: Nonce) {
        if self.is_stopped() {
            return;
        }
        self.binding = binding;
        self.nonce = nonce;
        self.inbound.clear();
        self.pending.clear();
        self.heard_from.clear();
        self.state = State::Authenticating;
        self.connected_at_ms = now_ms;
        self.last_heard_ms = now_ms;
        let _ = self.pending.push_back(Pending::Authenticate);
    }

    /// The transport went away (or the driver closed it after an error).
    pub fn handle_disconnected(&mut self, now_ms: u64, jitter: u32) {
        if self.is_stopped() {
            return;
        }
        if self.state == State::Connected {
            // It worked for a while: start the backoff afresh.
            self.failures = 0;
        }
        let delay = backoff_ms(self.failures, jitter);
        self.failures = self.failures.saturating_add(1);
        self.pending.clear();
        self.inbound.clear();
        let until_ms = now_ms + delay;
        self.state = State::BackingOff { until_ms };
        self.push_event(Event::Disconnected {
            reconnect_at_ms: until_ms,
        });
    }

    /// Bytes from the gateway. Returns how many were taken: fewer than given
    /// when the event queue is full (call again after [`Self::poll_event`]).
    /// An error means the connection must be closed.
    pub fn handle_bytes(&mut self, now_ms: u64, bytes: &[u8]) -> Result<usize, SessionError> {
        let mut taken = 0;
        while taken < bytes.len() {
            if self.events.len() + 2 > EVENT_CAPACITY {
                break;
            }
            let room = MAX_WIRE_LEN - self.inbound.len();
            let chunk = &bytes[taken..bytes.len().min(taken + room)];
            // Cannot fail: the chunk fits the room left.
            let _ = self.inbound.extend_from_slice(chunk);
            taken += chunk.len();
            self.drain_frames(now_ms)?;
        }
        Ok(taken)
    }

    fn drain_frames(&mut self, now_ms: u64) -> Result<(), SessionError> {
        loop {
            if self.events.len() + 2 > EVENT_CAPACITY {
                return Ok(());
            }
            match decode_frame::<GatewayMessage>(&self.inbound) {
                Ok(Decoded::Incomplete { .. }) => return Ok(()),
                Ok(Decoded::Frame { message, consumed }) => {
                    let rest = self.inbound.len() - consumed;
                    self.inbound.copy_within(consumed.., 0);
                    self.inbound.truncate(rest);
                    self.last_heard_ms = now_ms;
                    self.handle_message(now_ms, message)?;
                }
                Err(e) => return Err(SessionError::Malformed(e)),
            }
        }
    }

    fn handle_message(&mut self, now_ms: u64, message: GatewayMessage) -> Result<(), SessionError> {
        match (self.state, message) {
            (State::Authenticating, GatewayMessage::AuthAccepted(accepted)) => {
                self.state = State::Connected;
                self.failures = 0;
                self.ping_interval_ms = u64::from(accepted.session.ping_interval_ms).max(100);
                self.idle_timeout_ms = u64::from(accepted.session.idle_timeout_ms).max(1_000);
                // New reports are numbered above everything the gateway
                // holds for this device (a lost journal, a reinstall, or
                // another installation may have used numbers we never
                // did). What the outbox holds is resent as it is, even at or
                // below the gateway's number: only the gateway can tell
                // whether it stored our report under that number or another
                // installation's, and it confirms ours or says
                // `ReportConflict`.
                self.gateway_confirmed = accepted.confirmed_report_seq;
                self.next_seq = self
                    .next_seq
                    .max(accepted.confirmed_report_seq.saturating_add(1));
                // Held reports follow when the driver releases them.
                let sendable = self.outbox.len() - self.held;
                for report in self.outbox.iter().take(sendable) {
                    let _ = self.pending.push_back(Pending::Report(report.seq));
                }
                self.push_event(Event::Connected {
                    gateway_time_ms: accepted.gateway_time_ms,
                });
                Ok(())
            }
            (State::Authenticating, GatewayMessage::AuthRefused(refusal)) => {
                match refusal {
                    Refusal::ClockSkew(skew) => {
                        let offset = skew.gateway_time_ms as i64 - now_ms as i64;
                        self.clock_offset_ms = offset;
                        self.push_event(Event::ClockCorrected { offset_ms: offset });
                        // Retry at once with the corrected clock.
                        self.state = State::BackingOff { until_ms: now_ms };
                    }
                    Refusal::Revoked => self.stop_revoked(),
                    Refusal::Failed | Refusal::UnsupportedVersion(_) => {
                        // The outbox is kept: a fixed configuration (or a
                        // restored snapshot) sends it later.
                        self.state = State::Refused(refusal);
                        self.push_event(Event::Refused(refusal));
                    }
                }
                Ok(())
            }
            (State::Connected, GatewayMessage::ReportConflict(conflict)) => {
                self.renumber_from(conflict.seq);
                Err(SessionError::ReportConflict(conflict.seq))
            }
            (State::Connected, GatewayMessage::Signal(signal)) => {
                if self.is_new(&signal) {
                    self.push_event(Event::Signal(signal));
                }
                Ok(())
            }
            (State::Connected, GatewayMessage::ReportsConfirmed(confirmed)) => {
                self.confirm(confirmed.up_to_seq);
                self.push_event(Event::ReportsConfirmed {
                    up_to_seq: confirmed.up_to_seq,
                });
                Ok(())
            }
            (State::Connected, GatewayMessage::Ping(ping)) => {
                let _ = self.pending.push_back(Pending::Pong(ping.token));
                Ok(())
            }
            (State::Connected, GatewayMessage::Pong(_)) => Ok(()),
            (_, GatewayMessage::GoingAway(GoingAway { reason })) => {
                match reason {
                    GoingAwayReason::Revoked => self.stop_revoked(),
                    GoingAwayReason::Replaced => self.stop(State::Replaced, Event::Replaced),
                    GoingAwayReason::SecretRotated => {
                        self.stop(State::SecretRotated, Event::SecretRotated);
                    }
                    GoingAwayReason::Shutdown
                    | GoingAwayReason::ProtocolViolation
                    | GoingAwayReason::AuthTimeout
                    | GoingAwayReason::IdleTimeout => {}
                }
                Err(SessionError::GatewayLeft(reason))
            }
            _ => Err(SessionError::OutOfOrder),
        }
    }

    fn stop_revoked(&mut self) {
        self.stop(State::Revoked, Event::Revoked);
    }

    fn stop(&mut self, state: State, event: Event) {
        if self.state != state {
            self.state = state;
            self.push_event(event);
        }
    }

    /// Whether the core has stopped for good.
    fn is_stopped(&self) -> bool {
        matches!(
            self.state,
            State::Revoked | State::Refused(_) | State::Replaced | State::SecretRotated
        )
    }

    /// The gateway holds another installation's report under `seq`: ours
    /// was never stored under it, nor was any later one (the gateway stores
    /// a session's reports in order and stopped at this one). They get new
    /// numbers, in the same order, right after both that number and every
    /// number the gateway had when the session began: the first numbers
    /// nobody can hold, so the gateway's confirmed number can reach them
    /// without a hole below.
    fn renumber_from(&mut self, seq: u64) {
        let to_seq = seq.max(self.gateway_confirmed).saturating_add(1);
        let mut next = to_seq;
        let mut count = 0;
        for report in self.outbox.iter_mut().filter(|report| report.seq >= seq) {
            report.seq = next;
            next += 1;
            count += 1;
        }
        if count > 0 {
            self.next_seq = self.next_seq.max(next);
            self.push_event(Event::ReportsRenumbered {
                from_seq: seq,
                to_seq,
                count,
            });
        }
    }

    /// Whether a signal is after the position reached in its channel; if
    /// so, records it as reached.
    ///
    /// The gateway starts each channel after the position named (or later),
    /// so the first signal of a channel on a connection at or below it
    /// means the gateway's log restarted below the device (a new store, or
    /// another deployment): it is new, and the position follows the log.
    fn is_new(&mut self, signal: &Signal) -> bool {
        let first_heard = !self.heard_from.contains(&signal.channel);
        if first_heard {
            // As many channels fit as positions are kept.
            let _ = self.heard_from.push(signal.channel.clone());
        }
        if let Some(point) = self
            .positions
            .iter_mut()
            .find(|p| p.channel == signal.channel)
        {
            if signal.position <= point.position && !first_heard {
                return false;
            }
            point.position = signal.position;
            return true;
        }
        // A channel the device has not seen: remember it if there is room
        // (the gateway allows no more channels than fit).
        let _ = self.positions.push(ResumePoint {
            channel: signal.channel.clone(),
            position: signal.position,
        });
        true
    }

    fn confirm(&mut self, up_to_seq: u64) {
        self.confirmed_seq = self.confirmed_seq.max(up_to_seq);
        while self
            .outbox
            .front()
            .is_some_and(|report| report.seq <= self.confirmed_seq)
        {
            self.outbox.pop_front();
        }
        // Held reports are the newest and never sent, so none should be
        // confirmed; if one ever were, it is no longer held either.
        self.held = self.held.min(self.outbox.len());
    }

    fn push_event(&mut self, event: Event) {
        // handle_bytes keeps room for two events per frame; other events are
        // rare state changes, so the oldest is dropped rather than the newest
        // when the application stops polling altogether.
        if self.events.is_full() {
            self.events.pop_front();
        }
        let _ = self.events.push_back(event);
    }

    /// The report [`Self::report`] would accept now, with the sequence
    /// number it would get, without accepting it. A driver with a journal
    /// writes this durably first and then calls [`Self::report`] with the
    /// same arguments, so a report is never in flight without being on disk.
    pub fn draft_report(
        &self,
        at_ms: u64,
        signal_id: SignalId,
        outcome: ReportOutcome,
    ) -> Result<Report, ReportError> {
        // A core stopped for good takes reports all the same, whatever
        // stopped it: a report is the terminal's record of a trade it made,
        // and kept, it goes out with the device's next session (once its
        // secret or pinned certificate is put right, or it runs here
        // again); a revoked device's stay in the journal, unsent
        // (revocation is final), as that record. One rule, so a caller
        // never wonders whether a report it was told is taken was stored.
        if self.outbox.is_full() {
            return Err(ReportError::OutboxFull);
        }
        Ok(Report {
            seq: self.next_seq,
            signal_id,
            at_ms,
            outcome,
        })
    }

    /// Accepts a report about `signal_id` into the outbox and returns its
    /// sequence number. It is sent now if connected, else after the next
    /// authentication, and resent until the gateway confirms it. While
    /// reports are held it is held too, behind them: reports go out in
    /// sequence order.
    pub fn report(
        &mut self,
        at_ms: u64,
        signal_id: SignalId,
        outcome: ReportOutcome,
    ) -> Result<u64, ReportError> {
        let held = self.held > 0;
        let seq = self.hold_report(at_ms, signal_id, outcome)?;
        if !held {
            self.release_held(1);
        }
        Ok(seq)
    }

    /// Accepts a report like [`Self::report`] but holds it back from the
    /// wire until [`Self::release_held`]: for a driver that writes reports
    /// to its journal one by one and makes them durable in groups, one
    /// `fsync` for all the reports waiting on it. Held reports are in the
    /// outbox (and in [`Self::snapshot`]) and keep their place in the
    /// sequence.
    pub fn hold_report(
        &mut self,
        at_ms: u64,
        signal_id: SignalId,
        outcome: ReportOutcome,
    ) -> Result<u64, ReportError> {
        let report = self.draft_report(at_ms, signal_id, outcome)?;
        let seq = report.seq;
        // Cannot fail: the draft checked for room.
        let _ = self.outbox.push_back(report);
        self.next_seq += 1;
        self.held += 1;
        Ok(seq)
    }

    /// How many reports are held back from the wire.
    pub fn held(&self) -> usize {
        self.held
    }

    /// The oldest `count` held reports are durable: they are sent now if
    /// connected, else after the next authentication.
    pub fn release_held(&mut self, count: usize) {
        let count = count.min(self.held);
        let first = self.outbox.len() - self.held;
        self.held -= count;
        if self.state == State::Connected {
            for report in self.outbox.iter().skip(first).take(count) {
                let _ = self.pending.push_back(Pending::Report(report.seq));
            }
        }
    }

    /// The held reports could not be made durable: they are dropped, never
    /// having been sent, and their sequence numbers are given out again
    /// (those above every number the gateway holds).
    pub fn discard_held(&mut self) {
        for _ in 0..self.held {
            if let Some(report) = self.outbox.pop_back() {
                self.next_seq = report.seq;
            }
        }
        self.held = 0;
        // Never back to numbers the gateway holds (authentication may have
        // raised the count above the held reports' numbers).
        self.next_seq = self.next_seq.max(self.gateway_confirmed.saturating_add(1));
    }

    /// Closes the session on purpose: queues a going-away for the gateway.
    pub fn close(&mut self) {
        if matches!(self.state, State::Connected | State::Authenticating) {
            let _ = self.pending.push_back(Pending::GoingAway);
        }
    }

    /// Time passed: sends pings when quiet, and fails the session when the
    /// gateway is silent too long.
    pub fn handle_timeout(&mut self, now_ms: u64) -> Result<(), SessionError> {
        match self.state {
            State::Authenticating if now_ms >= self.connected_at_ms + AUTH_TIMEOUT_MS => {
                Err(SessionError::TimedOut)
            }
            State::Connected => {
                if now_ms >= self.last_heard_ms + self.idle_timeout_ms {
                    return Err(SessionError::TimedOut);
                }
                // The liveness contract: the device sends something every
                // ping interval, however much it hears (the gateway drops a
                // device it has not heard from for the idle timeout).
                if now_ms >= self.last_sent_ms + self.ping_interval_ms {
                    let token = self.next_ping_token;
                    self.next_ping_token += 1;
                    let _ = self.pending.push_back(Pending::Ping(token));
                    // Counts as sent now, so one ping per interval.
                    self.last_sent_ms = now_ms;
                }
                Ok(())
            }
            State::BackingOff { until_ms } if now_ms >= until_ms => {
                self.state = State::Disconnected;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// When to call [`Self::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<u64> {
        match self.state {
            State::Authenticating => Some(self.connected_at_ms + AUTH_TIMEOUT_MS),
            State::Connected => Some(
                (self.last_heard_ms + self.idle_timeout_ms)
                    .min(self.last_sent_ms + self.ping_interval_ms),
            ),
            State::BackingOff { until_ms } => Some(until_ms),
            _ => None,
        }
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Writes the next frame to send into `out` and returns its length, or
    /// `None` when there is nothing to send.
    pub fn poll_transmit(&mut self, now_ms: u64, out: &mut [u8; MAX_WIRE_LEN]) -> Option<usize> {
        while let Some(next) = self.pending.pop_front() {
            let message = match next {
                Pending::Authenticate => {
                    let signed_at = now_ms.saturating_add_signed(self.clock_offset_ms);
                    DeviceMessage::Authenticate(Authenticate::sign(
                        self.device_id.clone(),
                        &self.secret,
                        signed_at,
                        self.nonce,
                        &self.binding,
                        self.positions.clone(),
                    ))
                }
                Pending::Report(seq) => {
                    // Confirmed since it was queued: nothing to send.
                    let Some(report) = self.outbox.iter().find(|r| r.seq == seq) else {
                        continue;
                    };
                    DeviceMessage::Report(report.clone())
                }
                Pending::Ping(token) => DeviceMessage::Ping(Ping { token }),
                Pending::Pong(token) => DeviceMessage::Pong(Pong { token }),
                Pending::GoingAway => DeviceMessage::GoingAway(GoingAway {
                    reason: GoingAwayReason::Shutdown,
                }),
            };
            // `out` holds MAX_WIRE_LEN, which every frame fits: a message
            // that somehow did not would be skipped, not wedge the queue.
            if let Ok(len) = encode_frame(&message, out) {
                self.last_sent_ms = now_ms;
                return Some(len);
            }
        }
        None
    }
}

/// Jittered exponential backoff: the delay doubles per failure from
/// [`BACKOFF_START_MS`] up to [`BACKOFF_MAX_MS`], and a random part (from
/// `jitter`) spreads out devices that lost the gateway at the same moment,
/// so they do not all return at once.
pub fn backoff_ms(failures: u32, jitter: u32) -> u64 {
    let ceiling = BACKOFF_START_MS
        .saturating_mul(1u64 << failures.min(16))
        .min(BACKOFF_MAX_MS);
    // Half fixed, half random: never sooner than half the ceiling.
    ceiling / 2 + u64::from(jitter) % (ceiling / 2 + 1)
}
