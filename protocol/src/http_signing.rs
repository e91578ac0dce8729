//! Signed device requests over HTTPS and their signed answers
//! (`DEVICE-HTTP.md`), for terminals that may not load a DLL and talk to the
//! gateway with MetaTrader's `WebRequest`.
//!
//! ```text
//! request canonical = "eagate/1 device-http" LF METHOD LF TARGET LF DEVICE_ID LF
//!                     TIMESTAMP LF NONCE LF BODY_SHA256
//! answer canonical  = "eagate/1 gateway-http" LF NONCE LF STATUS LF BODY_SHA256
//! signature         = lower-case hex of HMAC-SHA256(secret, canonical)
//! ```
//!
//! Without a TLS exporter there is no channel binding: each request stands on
//! its own (timestamp, nonce, body hash), and each answer is bound to its
//! request by the nonce. The first lines differ from each other and from the
//! QUIC transcript's context, so no MAC made for one can pass as another.
//!
//! Nothing here allocates: the canonical text is fed to the HMAC piece by
//! piece, and hex goes into fixed buffers.

use hmac::Mac as _;
use sha2::{Digest, Sha256};

use crate::auth::{Mac, Nonce, keyed_hmac};
use crate::secret::DeviceSecret;

/// The first line of a request's canonical text.
pub const REQUEST_CONTEXT: &str = "eagate/1 device-http";
/// The first line of an answer's canonical text.
pub const ANSWER_CONTEXT: &str = "eagate/1 gateway-http";

/// The request header naming the device.
pub const DEVICE_HEADER: &str = "Eagate-Device";
/// The request header carrying the device's clock, Unix milliseconds.
pub const TIMESTAMP_HEADER: &str = "Eagate-Timestamp";
/// The request header carrying the nonce, 32 lower-case hex digits.
pub const NONCE_HEADER: &str = "Eagate-Nonce";
/// The header carrying the signature, of a request and of its answer.
pub const SIGNATURE_HEADER: &str = "Eagate-Signature";

/// SHA-256 of a body.
pub type BodyHash = [u8; 32];

/// SHA-256 of `body` (of the empty string when there is none).
pub fn body_sha256(body: &[u8]) -> BodyHash {
    Sha256::digest(body).into()
}

/// `bytes` as lower-case hex, in a buffer of exactly twice their length.
///
/// `N` must be `2 * M`; anything else panics, which no caller in this crate
/// can reach (the aliases below fix the pairs).
pub fn lower_hex<const M: usize, const N: usize>(bytes: &[u8; M]) -> [u8; N] {
    assert_eq!(N, 2 * M, "a hex buffer holds two digits per byte");
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; N];
    for (i, byte) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(byte >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(byte & 0x0f)];
    }
    out
}

/// Reads exactly `2 * M` lower-case hex digits; anything else (upper case,
/// another length, another character) is `None`, so one value has one
/// spelling and a signature is compared as the bytes it stands for.
pub fn parse_lower_hex<const M: usize>(text: &str) -> Option<[u8; M]> {
    let text = text.as_bytes();
    if text.len() != 2 * M {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; M];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

/// Reads a timestamp as the spec writes it: decimal digits, no sign, no
/// leading zeros (except `0` itself), within `u64`.
pub fn parse_timestamp(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    if bytes.is_empty() || bytes.len() > 20 || (bytes.len() > 1 && bytes[0] == b'0') {
        return None;
    }
    if !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    text.parse().ok()
}

/// A timestamp's decimal digits, and how many of the buffer they fill.
fn decimal(mut value: u64) -> ([u8; 20], usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    let len = digits.len() - at;
    digits.copy_within(at.., 0);
    (digits, len)
}

/// The MAC under `secret` of what `write` writes.
fn sign(secret: &DeviceSecret, write: impl FnOnce(&mut dyn FnMut(&[u8]))) -> Mac {
    let mut hmac = keyed_hmac(secret);
    write(&mut |part| hmac.update(part));
    hmac.finalize().into_bytes().into()
}

/// Whether `signature` is the MAC under `secret` of what `write` writes,
/// compared in constant time.
fn check(
    secret: &DeviceSecret,
    write: impl FnOnce(&mut dyn FnMut(&[u8])),
    signature: &Mac,
) -> bool {
    let mut hmac = keyed_hmac(secret);
    write(&mut |part| hmac.update(part));
    hmac.verify_slice(signature).is_ok()
}

/// Hands `parts` to `sink` as lines: one LF between two, none after the
/// last.
fn lines(parts: &[&[u8]], sink: &mut impl FnMut(&[u8])) {
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            sink(b"\n");
        }
        sink(part);
    }
}

/// One signed device request: what its canonical text is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestToSign<'a> {
    /// The method in upper case, as sent: `GET`, `POST`.
    pub method: &'a str,
    /// Path and query exactly as sent on the request line.
    pub target: &'a str,
    /// The device id, as the gateway issued it.
    pub device_id: &'a str,
    /// The device's clock, Unix milliseconds.
    pub timestamp_ms: u64,
    /// Unique per device for the nonce lifetime.
    pub nonce: &'a Nonce,
    /// SHA-256 of the body bytes ([`body_sha256`]).
    pub body_sha256: &'a BodyHash,
}

impl RequestToSign<'_> {
    /// Hands the canonical text to `sink`, piece by piece, in order.
    pub fn write_canonical(&self, mut sink: impl FnMut(&[u8])) {
        let (timestamp, timestamp_len) = decimal(self.timestamp_ms);
        let nonce: [u8; 32] = lower_hex(self.nonce);
        let body: [u8; 64] = lower_hex(self.body_sha256);
        lines(
            &[
                REQUEST_CONTEXT.as_bytes(),
                self.method.as_bytes(),
                self.target.as_bytes(),
                self.device_id.as_bytes(),
                &timestamp[..timestamp_len],
                &nonce,
                &body,
            ],
            &mut sink,
        );
    }

    /// The request's signature under `secret`.
    pub fn signature(&self, secret: &DeviceSecret) -> Mac {
        sign(secret, |sink| self.write_canonical(sink))
    }

    /// Whether `signature` is this request's under `secret`, compared in
    /// constant time.
    pub fn verify(&self, secret: &DeviceSecret, signature: &Mac) -> bool {
        check(secret, |sink| self.write_canonical(sink), signature)
    }
}

/// The gateway's answer to a signed request: what its canonical text is
/// made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerToSign<'a> {
    /// The nonce of the request it answers.
    pub nonce: &'a Nonce,
    /// The HTTP status, three decimal digits (100 to 999).
    pub status: u16,
    /// SHA-256 of the answer's body bytes.
    pub body_sha256: &'a BodyHash,
}

impl AnswerToSign<'_> {
    /// Hands the canonical text to `sink`, piece by piece, in order.
    ///
    /// # Panics
    /// On a status outside 100..=999, which is no HTTP status.
    pub fn write_canonical(&self, mut sink: impl FnMut(&[u8])) {
        assert!(
            (100..=999).contains(&self.status),
            "an HTTP status has three digits"
        );
        let (status, _) = decimal(u64::from(self.status));
        let nonce: [u8; 32] = lower_hex(self.nonce);
        let body: [u8; 64] = lower_hex(self.body_sha256);
        lines(
            &[ANSWER_CONTEXT.as_bytes(), &nonce, &status[..3], &body],
            &mut sink,
        );
    }

    /// The answer's signature under `secret`.
    pub fn signature(&self, secret: &DeviceSecret) -> Mac {
        sign(secret, |sink| self.write_canonical(sink))
    }

    /// Whether `signature` is this answer's under `secret`, compared in
    /// constant time: a client acts on no answer for which this is false.
    pub fn verify(&self, secret: &DeviceSecret, signature: &Mac) -> bool {
        check(secret, |sink| self.write_canonical(sink), signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_have_one_spelling() {
        assert_eq!(parse_timestamp("0"), Some(0));
        assert_eq!(parse_timestamp("1767225600000"), Some(1_767_225_600_000));
        assert_eq!(parse_timestamp("18446744073709551615"), Some(u64::MAX));
        for bad in [
            "",
            "01",
            "+1",
            "-1",
            " 1",
            "1 ",
            "1.0",
            "18446744073709551616",
            "1e3",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad:?}");
        }
        for value in [0, 1, 9, 10, 1_767_225_600_000, u64::MAX] {
            let (digits, len) = decimal(value);
            let text = core::str::from_utf8(&digits[..len]).unwrap();
            assert_eq!(parse_timestamp(text), Some(value));
        }
    }

    #[test]
    fn hex_is_lower_case_and_exact_in_length() {
        let bytes = [0x00, 0x9f, 0xa0, 0xff];
        let text: [u8; 8] = lower_hex(&bytes);
        assert_eq!(&text, b"009fa0ff");
        assert_eq!(parse_lower_hex::<4>("009fa0ff"), Some(bytes));
        assert_eq!(parse_lower_hex::<4>("009FA0FF"), None);
        assert_eq!(parse_lower_hex::<4>("009fa0f"), None);
        assert_eq!(parse_lower_hex::<4>("009fa0fff"), None);
        assert_eq!(parse_lower_hex::<4>("009fa0fg"), None);
    }
}
