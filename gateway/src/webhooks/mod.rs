//! Webhooks: the platform hears of what happened in the affiliate
//! programme (a referral, a commission earned or reversed, a payout paid or
//! failed, a fraud case opened, a fill busted) and to devices (registered,
//! given a new secret, revoked: journaled by comparing the registry with
//! the journal) as signed HTTP POSTs to endpoints an admin registers.
//!
//! The affiliate ledger's journal is the outbox: each of its entries that
//! is an event gets the id `evt_<journal position>`, so an event is
//! enqueued exactly once however often the sidecar restarts, and it exists
//! only once its change is on disk. Each endpoint receives its events in
//! journal order, one at a time: an event is retried with exponential
//! backoff until it is answered 2xx or its retry window runs out (then it
//! is recorded as failed and the endpoint moves on). Every attempt is in
//! the delivery log; an admin can replay one event or every event since a
//! time.
//!
//! Signing follows Stripe's `Stripe-Signature`: `Eagate-Signature:
//! t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, with a
//! per-endpoint secret shown once (sealed under the master key at rest).

mod dispatch;
mod events;
mod store;
mod target;

pub use dispatch::{DeliveryRun, Dispatcher, Pacing};
pub use events::{EVENT_KINDS, EventKind, WebhookEvent, event_id, event_of};
pub use store::{
    Delivery, DeliveryState, Endpoint, MAX_ENDPOINTS, Retrying, WEBHOOKS_DIR, WebhookError,
    Webhooks,
};
pub use target::{TargetError, check_target};

use hmac::{Hmac, KeyInit, Mac as _};
use sha2::Sha256;

/// The signature header's value for `body` sent at `t` (Unix seconds).
pub fn signature(secret: &[u8], t: u64, body: &[u8]) -> String {
    let mac = hmac_sha256(secret, &[t.to_string().as_bytes(), b".", body]);
    format!("t={t},v1={}", hex(&mac))
}

/// HMAC-SHA256 over the concatenation of `parts`.
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How long after an event's first attempt it is retried before it is
/// recorded as failed (3 days: a receiver down over a weekend still gets
/// it).
pub const RETRY_WINDOW_MS: u64 = 3 * 24 * 3_600_000;

/// The wait before retry `attempt` (1 after the first failure): `base_ms`
/// doubling each time, at most an hour.
pub fn backoff_ms(base_ms: u64, attempt: u32) -> u64 {
    base_ms
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(20))
        .min(3_600_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_the_timestamp_dot_body() {
        // RFC 4231 test case 2: key "Jefe", "what do ya want for nothing?".
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // The header signs "<t>.<body>".
        let header = signature(b"Jefe", 1_700_000_000, b"{}");
        let expected = hex(&hmac_sha256(b"Jefe", &[b"1700000000.{}"]));
        assert_eq!(header, format!("t=1700000000,v1={expected}"));
        // A long key is hashed first (RFC 4231 case 6).
        let key = [0xaa; 131];
        let mac = hmac_sha256(
            &key,
            &[b"Test Using Larger Than Block-Size Key - Hash Key First"],
        );
        assert_eq!(
            hex(&mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn retries_back_off_from_ten_seconds_to_an_hour() {
        assert_eq!(backoff_ms(10_000, 1), 10_000);
        assert_eq!(backoff_ms(10_000, 2), 20_000);
        assert_eq!(backoff_ms(10_000, 5), 160_000);
        assert_eq!(backoff_ms(10_000, 10), 3_600_000);
        assert_eq!(backoff_ms(10_000, u32::MAX), 3_600_000);
    }
}
