//! The authentication checks, without IO: given the message, what the
//! registry knows about the device, the connection's channel binding and the
//! time, what should the gateway answer? And the slow-down of repeated
//! failures. Admission (`super::admission`) supplies the facts and performs
//! the one stateful step, claiming the nonce, when told to.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use eagate_protocol::{
    Authenticate, ChannelBinding, ClockSkew, DeviceSecret, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
    Refusal, SupportedVersions,
};

use crate::registry::DeviceCredentials;

/// Tunables of the checks.
#[derive(Debug, Clone, Copy)]
pub struct AuthSettings {
    /// Largest accepted |gateway clock - device timestamp|.
    pub skew_window: Duration,
    /// How long a nonce is remembered; at least twice the skew window, so a
    /// nonce is remembered for as long as its timestamp would be accepted.
    pub nonce_ttl: Duration,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            skew_window: Duration::from_secs(30),
            nonce_ttl: Duration::from_secs(120),
        }
    }
}

/// Why an authentication failed, for logs and metrics only: the device is
/// told no more than its [`Refusal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// Another protocol version.
    UnsupportedVersion,
    /// No such device.
    UnknownDevice,
    /// The MAC does not match (wrong secret, or another connection's binding).
    BadMac,
    /// The device is revoked.
    Revoked,
    /// The timestamp is outside the window.
    ClockSkew,
    /// The nonce was already used.
    ReplayedNonce,
    /// The first frame was not a well-formed Authenticate.
    Malformed,
    /// Nothing arrived before the deadline.
    Timeout,
}

impl FailureReason {
    /// Every reason, in a fixed order.
    pub const ALL: [FailureReason; 8] = [
        Self::UnsupportedVersion,
        Self::UnknownDevice,
        Self::BadMac,
        Self::Revoked,
        Self::ClockSkew,
        Self::ReplayedNonce,
        Self::Malformed,
        Self::Timeout,
    ];

    /// This reason's place in [`FailureReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// A stable label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnsupportedVersion => "unsupported_version",
            Self::UnknownDevice => "unknown_device",
            Self::BadMac => "bad_mac",
            Self::Revoked => "revoked",
            Self::ClockSkew => "clock_skew",
            Self::ReplayedNonce => "replayed_nonce",
            Self::Malformed => "malformed",
            Self::Timeout => "timeout",
        }
    }
}

/// What the checks that need no state concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assessment {
    /// Refuse with this answer.
    Refuse(Refusal, FailureReason),
    /// Everything holds; accept if the nonce can be claimed, else refuse
    /// with [`Refusal::Failed`] as a replay.
    ClaimNonce,
}

/// Checks an authentication against what the registry holds for its device.
///
/// The answers are those of `DEVICE-AUTH.md`; the MAC is verified before the
/// revocation and clock answers, so those specific answers only go to a
/// holder of the secret, and the nonce is claimed last, so only genuine
/// attempts take space in the nonce store.
pub fn assess(
    auth: &Authenticate,
    device: Option<&DeviceCredentials>,
    channel_binding: &ChannelBinding,
    now_ms: u64,
    settings: &AuthSettings,
) -> Assessment {
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&auth.protocol_version) {
        return Assessment::Refuse(
            Refusal::UnsupportedVersion(SupportedVersions {
                min: MIN_PROTOCOL_VERSION,
                max: PROTOCOL_VERSION,
            }),
            FailureReason::UnsupportedVersion,
        );
    }
    let transcript = auth.transcript(channel_binding);
    assess_signed(
        device,
        |secret| transcript.verify(secret, &auth.mac),
        auth.timestamp_ms,
        now_ms,
        settings,
    )
}

/// The checks of any signed claim (a QUIC authentication, a signed HTTPS
/// request): `verify` says whether the claim's MAC is right under a secret.
///
/// The MAC is verified before the revocation and clock answers, so those
/// specific answers only go to a holder of the secret; an unknown device
/// costs the same work as a known one.
pub fn assess_signed(
    device: Option<&DeviceCredentials>,
    verify: impl FnOnce(&DeviceSecret) -> bool,
    timestamp_ms: u64,
    now_ms: u64,
    settings: &AuthSettings,
) -> Assessment {
    let Some(device) = device else {
        // Spend the same work as for a real device, so response time does
        // not tell which device ids exist.
        let _ = verify(&UNKNOWN_DEVICE_KEY);
        return Assessment::Refuse(Refusal::Failed, FailureReason::UnknownDevice);
    };
    if !verify(&device.secret) {
        return Assessment::Refuse(Refusal::Failed, FailureReason::BadMac);
    }
    if device.revoked {
        return Assessment::Refuse(Refusal::Revoked, FailureReason::Revoked);
    }
    if now_ms.abs_diff(timestamp_ms) > settings.skew_window.as_millis() as u64 {
        return Assessment::Refuse(
            Refusal::ClockSkew(ClockSkew {
                gateway_time_ms: now_ms,
            }),
            FailureReason::ClockSkew,
        );
    }
    Assessment::ClaimNonce
}

static UNKNOWN_DEVICE_KEY: DeviceSecret = DeviceSecret::from_bytes([0; 32]);

/// Who is failing to authenticate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ThrottleKey {
    /// A claimed device id, from one source address.
    Device(String, IpAddr),
    /// A source address.
    Source(IpAddr),
}

/// Slows down repeated authentication failures, per device id and per
/// source address: the first few failures within a window cost nothing, each
/// further one doubles the wait before the next attempt is answered, up to a
/// cap. Memory is bounded: the oldest entries go first when it is full.
#[derive(Debug)]
pub struct FailureThrottle {
    entries: HashMap<ThrottleKey, Failures>,
    settings: ThrottleSettings,
}

/// Tunables of the throttle.
#[derive(Debug, Clone, Copy)]
pub struct ThrottleSettings {
    /// Failures within `window` that cost nothing.
    pub free_failures: u32,
    /// Failures older than this are forgotten.
    pub window: Duration,
    /// The wait after the first failure beyond the free ones.
    pub base_delay: Duration,
    /// The longest wait.
    pub max_delay: Duration,
    /// The most keys remembered.
    pub max_entries: usize,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        Self {
            free_failures: 3,
            window: Duration::from_secs(60),
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(4),
            max_entries: 100_000,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

impl FailureThrottle {
    /// An empty throttle.
    pub fn new(settings: ThrottleSettings) -> Self {
        Self {
            entries: HashMap::new(),
            settings,
        }
    }

    /// How long to wait before answering an attempt by `key` at `now`.
    pub fn delay(&self, key: &ThrottleKey, now: Instant) -> Duration {
        let Some(failures) = self.entries.get(key) else {
            return Duration::ZERO;
        };
        if now.saturating_duration_since(failures.last) > self.settings.window {
            return Duration::ZERO;
        }
        let excess = failures.count.saturating_sub(self.settings.free_failures);
        if excess == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32.checked_shl(excess - 1).unwrap_or(u32::MAX);
        self.settings
            .base_delay
            .saturating_mul(factor)
            .min(self.settings.max_delay)
    }

    /// Records a failure by `key` at `now`.
    pub fn record_failure(&mut self, key: ThrottleKey, now: Instant) {
        if self.entries.len() >= self.settings.max_entries && !self.entries.contains_key(&key) {
            super::eviction::make_room(
                &mut self.entries,
                self.settings.max_entries,
                now,
                self.settings.window,
                |failures| failures.last,
            );
        }
        let window = self.settings.window;
        let failures = self.entries.entry(key).or_insert(Failures {
            count: 0,
            last: now,
        });
        if now.saturating_duration_since(failures.last) > window {
            failures.count = 0;
        }
        failures.count = failures.count.saturating_add(1);
        failures.last = now;
    }

    /// Forgets `key`'s failures after it succeeds.
    pub fn record_success(&mut self, key: &ThrottleKey) {
        self.entries.remove(key);
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ThrottleSettings {
        ThrottleSettings {
            free_failures: 3,
            window: Duration::from_secs(60),
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(4),
            max_entries: 4,
        }
    }

    fn device(name: &str) -> ThrottleKey {
        ThrottleKey::Device(name.to_owned(), "192.0.2.1".parse().unwrap())
    }

    #[test]
    fn the_first_failures_cost_nothing_then_each_doubles_the_wait_up_to_the_cap() {
        let mut throttle = FailureThrottle::new(settings());
        let now = Instant::now();
        let mut delays = Vec::new();
        for _ in 0..10 {
            throttle.record_failure(device("a"), now);
            delays.push(throttle.delay(&device("a"), now).as_millis());
        }
        assert_eq!(delays, [0, 0, 0, 250, 500, 1000, 2000, 4000, 4000, 4000]);
    }

    #[test]
    fn failures_older_than_the_window_are_forgotten() {
        let mut throttle = FailureThrottle::new(settings());
        let start = Instant::now();
        for _ in 0..6 {
            throttle.record_failure(device("a"), start);
        }
        assert!(!throttle.delay(&device("a"), start).is_zero());
        let later = start + Duration::from_secs(61);
        assert!(throttle.delay(&device("a"), later).is_zero());
        throttle.record_failure(device("a"), later);
        assert!(throttle.delay(&device("a"), later).is_zero());
    }

    #[test]
    fn success_clears_a_device_and_other_keys_are_unaffected() {
        let mut throttle = FailureThrottle::new(settings());
        let now = Instant::now();
        let source = ThrottleKey::Source("192.0.2.7".parse().unwrap());
        for _ in 0..5 {
            throttle.record_failure(device("a"), now);
            throttle.record_failure(source.clone(), now);
        }
        assert!(throttle.delay(&device("b"), now).is_zero());
        throttle.record_success(&device("a"));
        assert!(throttle.delay(&device("a"), now).is_zero());
        assert!(!throttle.delay(&source, now).is_zero());
    }

    #[test]
    fn memory_is_bounded_by_evicting_the_oldest_keys() {
        let mut throttle = FailureThrottle::new(settings());
        let start = Instant::now();
        for i in 0..10u64 {
            throttle.record_failure(device(&i.to_string()), start + Duration::from_millis(i));
            assert!(throttle.len() <= 4);
        }
        assert!(throttle.entries.contains_key(&device("9")));
        assert!(!throttle.entries.contains_key(&device("0")));
    }

    #[test]
    fn failures_from_one_address_do_not_slow_the_device_from_another() {
        let mut throttle = FailureThrottle::new(settings());
        let now = Instant::now();
        let attacker = ThrottleKey::Device("dv_A".into(), "198.51.100.9".parse().unwrap());
        let owner = ThrottleKey::Device("dv_A".into(), "203.0.113.5".parse().unwrap());
        for _ in 0..10 {
            throttle.record_failure(attacker.clone(), now);
        }
        assert!(!throttle.delay(&attacker, now).is_zero());
        assert!(throttle.delay(&owner, now).is_zero());
    }

    fn credentials(revoked: bool) -> DeviceCredentials {
        DeviceCredentials {
            secret: DeviceSecret::from_bytes([5; 32]),
            revoked,
        }
    }

    fn signed(secret_byte: u8, timestamp_ms: u64, binding: &ChannelBinding) -> Authenticate {
        Authenticate::sign(
            eagate_protocol::DeviceId::new("dv_1").unwrap(),
            &DeviceSecret::from_bytes([secret_byte; 32]),
            timestamp_ms,
            [3; 16],
            binding,
            heapless::Vec::new(),
        )
    }

    #[test]
    fn revocation_and_clock_answers_go_only_to_a_holder_of_the_secret() {
        let settings = AuthSettings::default();
        let now = 1_000_000_000;
        let binding = [1; 32];
        // Wrong secret: generic, whether revoked or skewed.
        let forged = signed(6, now - 60_000, &binding);
        assert_eq!(
            assess(&forged, Some(&credentials(true)), &binding, now, &settings),
            Assessment::Refuse(Refusal::Failed, FailureReason::BadMac)
        );
        // Right secret: told precisely.
        let genuine_skewed = signed(5, now - 60_000, &binding);
        assert_eq!(
            assess(
                &genuine_skewed,
                Some(&credentials(true)),
                &binding,
                now,
                &settings
            ),
            Assessment::Refuse(Refusal::Revoked, FailureReason::Revoked)
        );
        assert_eq!(
            assess(
                &genuine_skewed,
                Some(&credentials(false)),
                &binding,
                now,
                &settings
            ),
            Assessment::Refuse(
                Refusal::ClockSkew(ClockSkew {
                    gateway_time_ms: now
                }),
                FailureReason::ClockSkew
            )
        );
    }

    #[test]
    fn the_skew_window_is_inclusive_on_both_sides() {
        let settings = AuthSettings::default();
        let now = 1_000_000_000;
        let binding = [1; 32];
        for timestamp in [now - 30_000, now + 30_000] {
            let auth = signed(5, timestamp, &binding);
            assert_eq!(
                assess(&auth, Some(&credentials(false)), &binding, now, &settings),
                Assessment::ClaimNonce
            );
        }
        let late = signed(5, now + 30_001, &binding);
        assert!(matches!(
            assess(&late, Some(&credentials(false)), &binding, now, &settings),
            Assessment::Refuse(Refusal::ClockSkew(_), _)
        ));
    }
}
