//! How a device session ends, in the core's words: every ending the
//! protocol knows, what the device is told before it (when anything), and a
//! name for logs and metrics. A transport maps each to its own way of
//! closing (QUIC: an application close code of the same number).

use eagate_protocol::{GatewayMessage, GoingAway, GoingAwayReason, ReportConflict};

/// Why a device session (or an attempt at one) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// The device said `GoingAway`.
    DeviceLeft,
    /// The device broke the protocol.
    ProtocolViolation,
    /// Authentication was refused (`AuthRefused(Failed)`).
    AuthFailed,
    /// No authentication within the deadline.
    AuthTimeout,
    /// The gateway is shutting down.
    Shutdown,
    /// The device is revoked.
    Revoked,
    /// The device's clock is outside the window.
    ClockSkew,
    /// The device speaks an unsupported protocol version.
    UnsupportedVersion,
    /// A newer session of the same device took over.
    Replaced,
    /// The device's secret was rotated.
    SecretRotated,
    /// The report numbered `seq` conflicts with the one stored under its
    /// number.
    ReportConflict {
        /// The sequence number that holds another report.
        seq: u64,
    },
    /// Nothing arrived from the device for the idle timeout.
    IdleTimeout,
    /// The gateway could not reach its store.
    StoreUnavailable,
    /// The device did not read what the gateway sent.
    SlowReader,
}

impl Close {
    /// Every ending's name, by [`Close::index`].
    pub const NAMES: [&'static str; 14] = [
        "done",
        "protocol_violation",
        "auth_failed",
        "auth_timeout",
        "shutdown",
        "revoked",
        "clock_skew",
        "unsupported_version",
        "replaced",
        "secret_rotated",
        "report_conflict",
        "idle_timeout",
        "store_unavailable",
        "slow_reader",
    ];

    /// The ending's place in [`Close::NAMES`]: also its number in
    /// docs/protocol.md's table of endings.
    pub fn index(self) -> usize {
        match self {
            Self::DeviceLeft => 0,
            Self::ProtocolViolation => 1,
            Self::AuthFailed => 2,
            Self::AuthTimeout => 3,
            Self::Shutdown => 4,
            Self::Revoked => 5,
            Self::ClockSkew => 6,
            Self::UnsupportedVersion => 7,
            Self::Replaced => 8,
            Self::SecretRotated => 9,
            Self::ReportConflict { .. } => 10,
            Self::IdleTimeout => 11,
            Self::StoreUnavailable => 12,
            Self::SlowReader => 13,
        }
    }

    /// A stable name for logs and metrics.
    pub fn name(self) -> &'static str {
        Self::NAMES[self.index()]
    }

    /// The ending the gateway orders by telling the device `reason`.
    pub fn ordered(reason: GoingAwayReason) -> Self {
        match reason {
            GoingAwayReason::Shutdown => Self::Shutdown,
            GoingAwayReason::Revoked => Self::Revoked,
            GoingAwayReason::ProtocolViolation => Self::ProtocolViolation,
            GoingAwayReason::AuthTimeout => Self::AuthTimeout,
            GoingAwayReason::Replaced => Self::Replaced,
            GoingAwayReason::IdleTimeout => Self::IdleTimeout,
            GoingAwayReason::SecretRotated => Self::SecretRotated,
        }
    }

    /// What the gateway tells the device before closing, on a session that
    /// has begun: `None` when it ends silently (the device left, or cannot
    /// be written to) or when the answer is a refusal of its own
    /// (`AuthRefused`).
    pub fn last_word(self) -> Option<GatewayMessage> {
        let going = |reason| Some(GatewayMessage::GoingAway(GoingAway { reason }));
        match self {
            Self::DeviceLeft
            | Self::SlowReader
            | Self::AuthFailed
            | Self::ClockSkew
            | Self::UnsupportedVersion => None,
            Self::ProtocolViolation => going(GoingAwayReason::ProtocolViolation),
            Self::AuthTimeout => going(GoingAwayReason::AuthTimeout),
            // A store that is away for a moment: come back soon.
            Self::Shutdown | Self::StoreUnavailable => going(GoingAwayReason::Shutdown),
            Self::Revoked => going(GoingAwayReason::Revoked),
            Self::Replaced => going(GoingAwayReason::Replaced),
            Self::SecretRotated => going(GoingAwayReason::SecretRotated),
            Self::IdleTimeout => going(GoingAwayReason::IdleTimeout),
            Self::ReportConflict { seq } => {
                Some(GatewayMessage::ReportConflict(ReportConflict { seq }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_going_away_reason_orders_the_ending_that_tells_it_again() {
        for reason in [
            GoingAwayReason::Shutdown,
            GoingAwayReason::Revoked,
            GoingAwayReason::ProtocolViolation,
            GoingAwayReason::AuthTimeout,
            GoingAwayReason::Replaced,
            GoingAwayReason::IdleTimeout,
            GoingAwayReason::SecretRotated,
        ] {
            assert_eq!(
                Close::ordered(reason).last_word(),
                Some(GatewayMessage::GoingAway(GoingAway { reason }))
            );
        }
        assert_eq!(Close::ReportConflict { seq: 3 }.name(), "report_conflict");
        assert_eq!(Close::SlowReader.index(), Close::NAMES.len() - 1);
    }
}
