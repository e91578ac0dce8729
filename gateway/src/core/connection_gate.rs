//! Who may open a device connection, without IO: a budget of new
//! connections per source (a token bucket per IPv4 address or IPv6 /64,
//! so a host cannot dodge it by rotating through its own addresses), and a
//! cap on connections not yet authenticated, so a flood from many sources
//! holds bounded memory.
//!
//! A source address in a first packet may be forged, so it is charged only
//! once it is proven: by a completed handshake, or by the token of a QUIC
//! Retry. The QUIC driver asks before the handshake: a proven source out of
//! budget is refused then (the cheapest answer, before any cryptography or
//! store work); an unproven one is sent a Retry, which a forger cannot
//! answer, when its claimed source is out of budget or half the waiting
//! places are taken. A forged flood thus neither uses up another host's
//! budget nor holds the places others need.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Tunables of the gate.
#[derive(Debug, Clone, Copy)]
pub struct GateSettings {
    /// New connections a source may open per minute, and at once: a
    /// terminal host with many EAs reconnecting after a restart fits.
    pub per_minute: u32,
    /// Connections admitted but not yet authenticated (or gone), at most.
    pub max_unauthenticated: usize,
    /// The most sources remembered.
    pub max_sources: usize,
}

impl Default for GateSettings {
    fn default() -> Self {
        Self {
            per_minute: 300,
            max_unauthenticated: 10_000,
            max_sources: 100_000,
        }
    }
}

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnedAway {
    /// Its source opened too many connections lately; the next is possible
    /// after this long.
    TooFast {
        /// When the source's next connection is admitted.
        retry_after: Duration,
    },
    /// Too many connections are waiting to authenticate.
    TooManyWaiting,
}

impl TurnedAway {
    /// The metrics label of each kind, in [`TurnedAway::index`] order.
    pub const LABELS: [&'static str; 2] = ["too_fast", "too_many_waiting"];

    /// This kind's place in [`TurnedAway::LABELS`].
    pub fn index(self) -> usize {
        match self {
            Self::TooFast { .. } => 0,
            Self::TooManyWaiting => 1,
        }
    }

    /// A stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        Self::LABELS[self.index()]
    }
}

/// One connection in budget units: a unit is what a source earns in a
/// millisecond at one connection a minute, so refills are whole numbers at
/// any rate and nothing is lost to rounding however often a source knocks.
const CONNECTION: u64 = 60_000;

/// A source's budget, in units.
#[derive(Debug, Clone, Copy)]
struct Budget {
    units: u64,
    updated: Instant,
}

/// What to do with an arriving connection, before its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead with the handshake.
    Admit,
    /// Send a QUIC Retry: the source must prove its address first.
    Retry,
    /// Refuse it.
    Refuse(TurnedAway),
}

/// Adds what `budget` earned since it was last updated (up to a minute's
/// worth) and says whether it holds a connection, or how long until it does.
fn refilled(budget: &mut Budget, per_minute: u32, now: Instant) -> Result<(), TurnedAway> {
    let per_minute = u64::from(per_minute.max(1));
    let elapsed_ms = now.saturating_duration_since(budget.updated).as_millis() as u64;
    budget.units = budget
        .units
        .saturating_add(elapsed_ms.saturating_mul(per_minute))
        .min(per_minute * CONNECTION);
    budget.updated = now;
    if budget.units < CONNECTION {
        let missing = CONNECTION - budget.units;
        return Err(TurnedAway::TooFast {
            retry_after: Duration::from_millis(missing.div_ceil(per_minute)),
        });
    }
    Ok(())
}

/// The gate: per-source budgets and the count of connections waiting to
/// authenticate.
#[derive(Debug)]
pub struct ConnectionGate {
    settings: GateSettings,
    budgets: HashMap<IpAddr, Budget>,
    waiting: usize,
}

impl ConnectionGate {
    /// An open gate.
    pub fn new(settings: GateSettings) -> Self {
        Self {
            settings,
            budgets: HashMap::new(),
            waiting: 0,
        }
    }

    /// A connection arriving from `source` at `now`, `proven` when QUIC has
    /// validated its address (it answered a Retry): what to do before its
    /// handshake. An admitted connection counts as waiting until
    /// [`ConnectionGate::settled`]; its source is charged once its
    /// handshake completes ([`ConnectionGate::charge`]).
    pub fn arriving(&mut self, source: IpAddr, proven: bool, now: Instant) -> Verdict {
        if self.waiting >= self.settings.max_unauthenticated {
            return Verdict::Refuse(TurnedAway::TooManyWaiting);
        }
        match (self.budget_left(source, now), proven) {
            (Err(why), true) => Verdict::Refuse(why),
            (Err(_), false) => Verdict::Retry,
            (Ok(()), false) if self.waiting >= self.settings.max_unauthenticated / 2 => {
                Verdict::Retry
            }
            (Ok(()), _) => {
                self.waiting += 1;
                Verdict::Admit
            }
        }
    }

    /// Charges `source`, proven by a completed handshake, one connection;
    /// turned away when it has none left (it spent them while this one was
    /// shaking hands).
    pub fn charge(&mut self, source: IpAddr, now: Instant) -> Result<(), TurnedAway> {
        let key = source_key(source);
        if self.budgets.len() >= self.settings.max_sources && !self.budgets.contains_key(&key) {
            // A source unseen for a minute has a full budget: the same as
            // one never seen.
            super::eviction::make_room(
                &mut self.budgets,
                self.settings.max_sources,
                now,
                Duration::from_secs(60),
                |budget| budget.updated,
            );
        }
        let budget = self.budgets.entry(key).or_insert(Budget {
            units: u64::from(self.settings.per_minute.max(1)) * CONNECTION,
            updated: now,
        });
        refilled(budget, self.settings.per_minute, now)?;
        budget.units -= CONNECTION;
        Ok(())
    }

    /// Whether `source` has a connection left, without charging it (nor
    /// remembering a source never charged: a forger cannot fill memory).
    fn budget_left(&mut self, source: IpAddr, now: Instant) -> Result<(), TurnedAway> {
        match self.budgets.get_mut(&source_key(source)) {
            Some(budget) => refilled(budget, self.settings.per_minute, now),
            None => Ok(()),
        }
    }

    /// A connection [`ConnectionGate::arriving`] admitted has authenticated or
    /// ended.
    pub fn settled(&mut self) {
        self.waiting = self.waiting.saturating_sub(1);
    }

    /// Connections admitted and not yet settled.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// Sources remembered.
    pub fn sources(&self) -> usize {
        self.budgets.len()
    }
}

/// The key a source's budget is kept under: an IPv4 address (also when
/// mapped into IPv6), or an IPv6 address's /64, which one host usually
/// holds whole.
pub fn source_key(source: IpAddr) -> IpAddr {
    match source {
        IpAddr::V4(_) => source,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(per_minute: u32, max_unauthenticated: usize, max_sources: usize) -> ConnectionGate {
        ConnectionGate::new(GateSettings {
            per_minute,
            max_unauthenticated,
            max_sources,
        })
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_source_opens_a_minutes_worth_at_once_then_one_per_its_share_of_a_minute() {
        let mut gate = gate(60, 1_000, 100);
        let now = Instant::now();
        for _ in 0..60 {
            assert_eq!(gate.arriving(ip("192.0.2.1"), false, now), Verdict::Admit);
            gate.charge(ip("192.0.2.1"), now).unwrap();
            gate.settled();
        }
        let out = TurnedAway::TooFast {
            retry_after: Duration::from_secs(1),
        };
        assert_eq!(gate.charge(ip("192.0.2.1"), now), Err(out));
        // Out of budget: an unproven arrival is asked to prove its address,
        // a proven one is refused before its handshake.
        assert_eq!(gate.arriving(ip("192.0.2.1"), false, now), Verdict::Retry);
        assert_eq!(
            gate.arriving(ip("192.0.2.1"), true, now),
            Verdict::Refuse(out)
        );
        // 60 a minute: one a second.
        let later = now + Duration::from_millis(999);
        assert!(gate.charge(ip("192.0.2.1"), later).is_err());
        let later = now + Duration::from_secs(1);
        assert_eq!(gate.arriving(ip("192.0.2.1"), true, later), Verdict::Admit);
        gate.charge(ip("192.0.2.1"), later).unwrap();
        assert!(gate.charge(ip("192.0.2.1"), later).is_err());
        // Other sources are not held back by it.
        gate.charge(ip("192.0.2.2"), later).unwrap();
    }

    #[test]
    fn forged_arrivals_neither_spend_nor_take_the_places_of_the_host_they_name() {
        let mut gate = gate(60, 100, 100);
        let now = Instant::now();
        // A flood of first packets naming the victim's address, none of
        // which completes a handshake: each either waits (until its
        // deadline settles it) or is asked to prove its address.
        let mut retried = 0;
        for _ in 0..10_000 {
            match gate.arriving(ip("192.0.2.1"), false, now) {
                Verdict::Admit => {}
                Verdict::Retry => retried += 1,
                Verdict::Refuse(why) => panic!("refused: {why:?}"),
            }
        }
        // Half the places, then Retry for the rest: the other half stays
        // for proven connections.
        assert_eq!(gate.waiting(), 50);
        assert_eq!(retried, 10_000 - 50);
        assert_eq!(gate.arriving(ip("192.0.2.9"), true, now), Verdict::Admit);
        assert_eq!(gate.sources(), 0, "nothing remembered of unproven sources");
        // The victim's own connections are charged a full budget.
        for _ in 0..60 {
            gate.charge(ip("192.0.2.1"), now).unwrap();
        }
    }

    #[test]
    fn a_slow_rate_refills_exactly_however_often_the_source_knocks() {
        let mut gate = gate(7, 1_000, 100);
        let start = Instant::now();
        for _ in 0..7 {
            gate.charge(ip("192.0.2.1"), start).unwrap();
        }
        // Knocking every millisecond: the next one comes after 60/7 s all
        // the same (8572 ms, rounded up).
        let mut admitted_at = None;
        for ms in 1..=9_000u64 {
            if gate
                .charge(ip("192.0.2.1"), start + Duration::from_millis(ms))
                .is_ok()
            {
                admitted_at = Some(ms);
                break;
            }
        }
        assert_eq!(admitted_at, Some(8_572));
    }

    #[test]
    fn an_ipv6_host_cannot_dodge_its_budget_by_changing_addresses_within_its_64() {
        let mut gate = gate(2, 1_000, 100);
        let now = Instant::now();
        gate.charge(ip("2001:db8:1:2::1"), now).unwrap();
        gate.charge(ip("2001:db8:1:2:ffff::9"), now).unwrap();
        assert!(gate.charge(ip("2001:db8:1:2:abcd::1"), now).is_err());
        // Another /64 has its own.
        gate.charge(ip("2001:db8:1:3::1"), now).unwrap();
        // An IPv4 address seen as IPv6 is that IPv4 address.
        gate.charge(ip("192.0.2.9"), now).unwrap();
        gate.charge(ip("::ffff:192.0.2.9"), now).unwrap();
        assert!(gate.charge(ip("192.0.2.9"), now).is_err());
    }

    #[test]
    fn connections_waiting_to_authenticate_are_capped_across_all_sources() {
        let mut gate = gate(1_000, 3, 100);
        let now = Instant::now();
        for n in 1..=3 {
            let source = ip(&format!("192.0.2.{n}"));
            assert_eq!(gate.arriving(source, true, now), Verdict::Admit);
        }
        assert_eq!(
            gate.arriving(ip("192.0.2.4"), true, now),
            Verdict::Refuse(TurnedAway::TooManyWaiting)
        );
        gate.settled();
        assert_eq!(gate.arriving(ip("192.0.2.4"), true, now), Verdict::Admit);
        assert_eq!(gate.waiting(), 3);
    }

    #[test]
    fn memory_is_bounded_however_many_sources_come() {
        let mut gate = gate(10, 1_000_000, 50);
        let now = Instant::now();
        for n in 0..10_000u32 {
            let source = IpAddr::V4(n.to_be_bytes().into());
            gate.charge(source, now + Duration::from_millis(u64::from(n)))
                .unwrap();
            assert!(gate.sources() <= 50, "{} sources kept", gate.sources());
        }
    }
}
