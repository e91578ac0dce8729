//! Every message of a device session.
//!
//! A session is one bidirectional QUIC stream. The device speaks
//! [`DeviceMessage`]s and the gateway [`GatewayMessage`]s; each direction
//! has its own tag range (device `0x01..`, gateway `0x41..`) so a frame in a
//! capture shows which side sent it. The first frame must be
//! [`DeviceMessage::Authenticate`]; the gateway answers with
//! [`GatewayMessage::AuthAccepted`] or [`GatewayMessage::AuthRefused`].

use serde::{Deserialize, Serialize};

use crate::auth::{AuthTranscript, ChannelBinding, Mac, Nonce};
use crate::decimal::Decimal;
use crate::secret::DeviceSecret;
use crate::text::{ChannelName, DeviceId, RejectionText, SignalComment, SignalId, Symbol};

/// How many channels a device can name in one [`Authenticate`].
pub const MAX_RESUME_POINTS: usize = 16;

tagged_enum! {
    /// What a device sends to the gateway.
    #[derive(Debug, Clone, PartialEq, Eq)]
    #[allow(
        clippy::large_enum_variant,
        reason = "no heap in no_std; a message is built once and moved a few times"
    )]
    pub enum DeviceMessage {
        /// The first and only first message: who the device is and proof of it.
        Authenticate(Authenticate) = 0x01,
        /// What the device did with a signal.
        Report(Report) = 0x02,
        /// Liveness probe; the gateway answers with the same token.
        Ping(Ping) = 0x03,
        /// Answer to a gateway [`GatewayMessage::Ping`].
        Pong(Pong) = 0x04,
        /// The device is closing the session on purpose.
        GoingAway(GoingAway) = 0x05,
    }
}

tagged_enum! {
    /// What the gateway sends to a device.
    #[derive(Debug, Clone, PartialEq, Eq)]
    #[allow(
        clippy::large_enum_variant,
        reason = "no heap in no_std; a message is built once and moved a few times"
    )]
    pub enum GatewayMessage {
        /// Authentication succeeded; the session is open.
        AuthAccepted(AuthAccepted) = 0x41,
        /// Authentication failed; the gateway closes the connection after this.
        AuthRefused(Refusal) = 0x42,
        /// A trade signal from a channel the device is subscribed to.
        Signal(Signal) = 0x43,
        /// Every report up to a sequence number is durably stored.
        ReportsConfirmed(ReportsConfirmed) = 0x44,
        /// Liveness probe; the device answers with the same token.
        Ping(Ping) = 0x45,
        /// Answer to a device [`DeviceMessage::Ping`].
        Pong(Pong) = 0x46,
        /// The gateway is closing the session, and why.
        GoingAway(GoingAway) = 0x47,
        /// Version 2: a report's sequence number already holds a different
        /// report. The gateway stored nothing and ends the session after
        /// this message; the device renumbers that report and every later
        /// one after its newest number, and reconnects.
        ReportConflict(ReportConflict) = 0x48,
    }
}

impl GatewayMessage {
    /// This message as a session of protocol `version` can receive it.
    ///
    /// A version 1 device knows neither [`GatewayMessage::ReportConflict`]
    /// nor the going-away reasons added in version 2; it is told the
    /// nearest version 1 meaning instead (a conflict and an idle session
    /// are protocol violations there, a rotated secret replaces the
    /// session's credentials). Every other message is the same in both.
    pub fn for_version(self, version: u16) -> Self {
        if version >= 2 {
            return self;
        }
        match self {
            Self::ReportConflict(_) => Self::GoingAway(GoingAway {
                reason: GoingAwayReason::ProtocolViolation,
            }),
            Self::GoingAway(GoingAway { reason }) => Self::GoingAway(GoingAway {
                reason: match reason {
                    GoingAwayReason::IdleTimeout => GoingAwayReason::ProtocolViolation,
                    GoingAwayReason::SecretRotated => GoingAwayReason::Replaced,
                    other => other,
                },
            }),
            other => other,
        }
    }
}

/// A device's authentication, with the positions it wants to resume from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authenticate {
    /// The protocol version the device speaks, [`crate::PROTOCOL_VERSION`].
    pub protocol_version: u16,
    /// The device's id as registered.
    pub device_id: DeviceId,
    /// The device's clock, Unix milliseconds.
    pub timestamp_ms: u64,
    /// Fresh random bytes for this attempt.
    pub nonce: Nonce,
    /// HMAC-SHA256 over the transcript ([`AuthTranscript`]).
    pub mac: Mac,
    /// For each channel, the last position the device has processed. The
    /// gateway sends each channel from the position after it; channels not
    /// named here resume from the gateway's own record.
    pub resume: heapless::Vec<ResumePoint, MAX_RESUME_POINTS>,
}

impl Authenticate {
    /// Builds and signs an authentication for the connection whose TLS
    /// exporter is `channel_binding`.
    pub fn sign(
        device_id: DeviceId,
        secret: &DeviceSecret,
        timestamp_ms: u64,
        nonce: Nonce,
        channel_binding: &ChannelBinding,
        resume: heapless::Vec<ResumePoint, MAX_RESUME_POINTS>,
    ) -> Self {
        let mac =
            AuthTranscript::new(&device_id, timestamp_ms, &nonce, channel_binding).mac(secret);
        Self {
            protocol_version: crate::PROTOCOL_VERSION,
            device_id,
            timestamp_ms,
            nonce,
            mac,
            resume,
        }
    }

    /// The transcript this message claims to have signed, on the connection
    /// whose TLS exporter is `channel_binding`.
    pub fn transcript(&self, channel_binding: &ChannelBinding) -> AuthTranscript {
        AuthTranscript::new(
            &self.device_id,
            self.timestamp_ms,
            &self.nonce,
            channel_binding,
        )
    }
}

/// The last position a device has processed in one channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumePoint {
    /// The channel.
    pub channel: ChannelName,
    /// The last position processed; 0 when none yet (positions start at 1).
    pub position: u64,
}

/// The gateway's welcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthAccepted {
    /// The gateway's clock, Unix milliseconds, for the device to track skew.
    pub gateway_time_ms: u64,
    /// Timing and size rules for this session.
    pub session: SessionParams,
    /// The highest report sequence number stored for this device with no
    /// gap below it (0 if none). A device numbers its next new report above
    /// it. Reports it still holds unconfirmed, at or below this number too,
    /// it resends: the number may hold a report of another installation of
    /// the same device, which only a resend can tell.
    pub confirmed_report_seq: u64,
}

/// Timing and size rules the gateway sets for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionParams {
    /// How often the device should ping when it has nothing else to send.
    pub ping_interval_ms: u32,
    /// Silence after which either side may consider the session dead.
    pub idle_timeout_ms: u32,
    /// The largest frame body the gateway accepts, at most
    /// [`crate::MAX_FRAME_LEN`].
    pub max_frame_len: u32,
}

tagged_enum! {
    /// Why authentication failed. Every failure but clock skew, a revoked
    /// device and an unsupported version is [`Refusal::Failed`], with no hint
    /// of which check failed.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Refusal {
        /// Unknown device, wrong MAC, replayed nonce, wrong binding, throttled.
        Failed = 1,
        /// The device's timestamp is outside the gateway's skew window. Sent
        /// only when the MAC is valid, so it tells nothing to a stranger.
        ClockSkew(ClockSkew) = 2,
        /// The device is revoked. Sent only when the MAC is valid; the
        /// device should stop retrying.
        Revoked = 3,
        /// The device speaks a protocol version the gateway does not.
        UnsupportedVersion(SupportedVersions) = 4,
    }
}

/// The gateway's clock, for a device whose clock is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockSkew {
    /// The gateway's clock, Unix milliseconds.
    pub gateway_time_ms: u64,
}

/// The protocol versions a gateway accepts, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupportedVersions {
    /// The oldest version accepted.
    pub min: u16,
    /// The newest version accepted.
    pub max: u16,
}

/// A trade signal as delivered to a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signal {
    /// The channel it was published to.
    pub channel: ChannelName,
    /// Its position in the channel's log: 1, 2, 3, … with no gaps.
    pub position: u64,
    /// Its id, unique across channels; reports refer to it.
    pub signal_id: SignalId,
    /// The instrument.
    pub symbol: Symbol,
    /// What to do.
    pub action: Action,
    /// How to place an opening order.
    pub order_type: OrderType,
    /// Lots. For [`Action::Close`], how much to close; zero closes all.
    pub volume: Decimal,
    /// The limit or stop price; none for a market order.
    pub price: Option<Decimal>,
    /// The stop loss price, if any.
    pub stop_loss: Option<Decimal>,
    /// The take profit price, if any.
    pub take_profit: Option<Decimal>,
    /// The EA's magic number for the order (MT4 keeps the low 31 bits).
    pub magic: u64,
    /// The order comment.
    pub comment: SignalComment,
    /// When the provider issued it, Unix milliseconds.
    pub issued_at_ms: u64,
    /// After this instant the device must not act on it, Unix milliseconds.
    pub expires_at_ms: Option<u64>,
    /// For close, modify and cancel: the signal that opened the position or
    /// placed the order this one acts on.
    pub reference: Option<SignalId>,
}

tagged_enum! {
    /// What a signal asks the device to do.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum Action {
        /// Open a long position or place a buy order.
        OpenBuy = 1,
        /// Open a short position or place a sell order.
        OpenSell = 2,
        /// Close (part of) the position opened by `reference`.
        Close = 3,
        /// Change price, stop loss or take profit of `reference`.
        Modify = 4,
        /// Delete the pending order placed by `reference`.
        Cancel = 5,
    }
}

tagged_enum! {
    /// How an opening order is placed.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum OrderType {
        /// At the current market price.
        Market = 1,
        /// A pending order at `price` or better.
        Limit = 2,
        /// A pending order triggered at `price`.
        Stop = 3,
    }
}

/// Why a signal is not valid, whatever its fields' types allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    /// Opening with zero or negative volume.
    #[error("volume must be positive to open a position")]
    VolumeNotPositive,
    /// A negative volume (close accepts zero: close everything).
    #[error("volume must not be negative")]
    VolumeNegative,
    /// A limit or stop order without its price.
    #[error("a limit or stop order needs a price")]
    PriceMissing,
    /// A market order with a price.
    #[error("a market order takes no price")]
    PriceOnMarketOrder,
    /// A price, stop loss or take profit at or below zero.
    #[error("{0} must be positive")]
    PriceNotPositive(&'static str),
    /// Close, modify or cancel without the signal it acts on.
    #[error("close, modify and cancel need the reference of the signal they act on")]
    ReferenceMissing,
    /// An opening signal that names a reference.
    #[error("an opening signal has no reference")]
    ReferenceOnOpen,
    /// A modify that changes nothing.
    #[error("a modify signal changes at least one of price, stop loss and take profit")]
    NothingToModify,
    /// Expiry not after issue.
    #[error("expires_at must be after issued_at")]
    ExpiresBeforeIssued,
}

impl Signal {
    /// Checks the rules between fields that types cannot express. The gateway
    /// refuses to publish a signal that fails them.
    pub fn validate(&self) -> Result<(), SignalError> {
        for (name, price) in [
            ("price", self.price),
            ("stop_loss", self.stop_loss),
            ("take_profit", self.take_profit),
        ] {
            if price.is_some_and(|p| !p.is_positive()) {
                return Err(SignalError::PriceNotPositive(name));
            }
        }
        if self.volume < Decimal::ZERO {
            return Err(SignalError::VolumeNegative);
        }
        match self.action {
            Action::OpenBuy | Action::OpenSell => {
                if !self.volume.is_positive() {
                    return Err(SignalError::VolumeNotPositive);
                }
                if self.reference.is_some() {
                    return Err(SignalError::ReferenceOnOpen);
                }
                match (self.order_type, self.price) {
                    (OrderType::Market, Some(_)) => return Err(SignalError::PriceOnMarketOrder),
                    (OrderType::Limit | OrderType::Stop, None) => {
                        return Err(SignalError::PriceMissing);
                    }
                    _ => {}
                }
            }
            Action::Close | Action::Modify | Action::Cancel => {
                if self.reference.is_none() {
                    return Err(SignalError::ReferenceMissing);
                }
                if self.action == Action::Modify
                    && self.price.is_none()
                    && self.stop_loss.is_none()
                    && self.take_profit.is_none()
                {
                    return Err(SignalError::NothingToModify);
                }
            }
        }
        if self
            .expires_at_ms
            .is_some_and(|expires| expires <= self.issued_at_ms)
        {
            return Err(SignalError::ExpiresBeforeIssued);
        }
        Ok(())
    }
}

/// One thing a device did with one signal, numbered by the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The device's own report sequence number: 1, 2, 3, … The gateway
    /// stores each (device, seq) once, however often it is resent.
    pub seq: u64,
    /// The signal it is about.
    pub signal_id: SignalId,
    /// When it happened on the device (fills: the trade server's time),
    /// Unix milliseconds.
    pub at_ms: u64,
    /// What happened.
    pub outcome: ReportOutcome,
}

tagged_enum! {
    /// What happened to a signal on a device.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum ReportOutcome {
        /// The device has the signal and is acting on it.
        Received = 1,
        /// The signal was (partly) executed. A partial fill is followed by
        /// more fills for the same signal.
        Filled(Fill) = 2,
        /// The terminal or the broker refused it.
        Rejected(Rejection) = 3,
        /// Version 3: fills of this signal reported before were undone (the
        /// broker cancelled the deal, or the trade was busted). It names
        /// them by their ticket: every earlier fill report of this signal
        /// with that ticket is reversed.
        Reversed(Reversal) = 4,
    }
}

/// An execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fill {
    /// The terminal's order or deal ticket.
    pub ticket: u64,
    /// The execution price.
    pub price: Decimal,
    /// The executed lots.
    pub volume: Decimal,
}

/// Version 3: the fills of a signal with one terminal ticket were undone
/// after they were reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reversal {
    /// The ticket the reversed fills were reported with.
    pub ticket: u64,
}

/// A refusal by the terminal or broker, in MetaTrader's own terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// MetaTrader's error code (`GetLastError()` in MT4, the trade server's
    /// return code in MT5, such as 10019 for no money).
    pub code: u32,
    /// The terminal's description of it.
    pub text: RejectionText,
}

/// The gateway has durably stored every report of this device up to and
/// including `up_to_seq`, each with the content this session sent for it.
/// It never confirms a number above the newest report the session sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportsConfirmed {
    /// The highest confirmed sequence number.
    pub up_to_seq: u64,
}

/// Version 2: the report the device sent with `seq` differs from the report
/// already stored under that number (another installation of the device
/// used it). Nothing was stored and the session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportConflict {
    /// The sequence number that holds another report.
    pub seq: u64,
}

/// A liveness probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// Echoed in the [`Pong`], to match answers to probes.
    pub token: u64,
}

/// The answer to a [`Ping`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// The probe's token.
    pub token: u64,
}

/// The sender is closing the session on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoingAway {
    /// Why.
    pub reason: GoingAwayReason,
}

tagged_enum! {
    /// Why a session is being closed.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum GoingAwayReason {
        /// The sender is shutting down, or (from the gateway) lost its store
        /// for a moment; reconnect (to another gateway) later.
        Shutdown = 1,
        /// The device was revoked; do not reconnect.
        Revoked = 2,
        /// The peer broke the protocol (bad frame, message out of order).
        ProtocolViolation = 3,
        /// No authentication arrived within the deadline.
        AuthTimeout = 4,
        /// Another session of the same device took over (the device
        /// connected again, from another terminal or machine). Do not
        /// reconnect on your own: two installations replacing each other
        /// would never stop. In version 1 this also meant a rotated secret.
        Replaced = 5,
        /// Version 2: nothing arrived from the peer for the session's idle
        /// timeout.
        IdleTimeout = 6,
        /// Version 2: the device's secret was rotated; reconnect only with
        /// the new secret.
        SecretRotated = 7,
    }
}
