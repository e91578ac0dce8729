//! The device authentication transcript and its MAC (`DEVICE-AUTH.md`).
//!
//! ```text
//! msg = "eagate/1 device-auth" || u16 BE len(device_id) || device_id
//!    || u64 BE timestamp_ms || nonce[16] || channel_binding[32]
//! mac = HMAC-SHA256(secret, msg)
//! ```
//!
//! The channel binding is the TLS exporter of the connection the device
//! authenticates on, so a captured message is useless on any other one.

use hmac::{Hmac, KeyInit, Mac as _};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::secret::DeviceSecret;
use crate::text::DeviceId;

/// The fixed context string that opens every transcript.
pub const TRANSCRIPT_CONTEXT: &[u8; 20] = b"eagate/1 device-auth";
/// The TLS exporter label for the channel binding (empty context, 32 bytes).
pub const CHANNEL_BINDING_LABEL: &[u8] = b"EXPORTER-eagate-device-auth";
/// The largest transcript: context, length, a 255-byte id, time, nonce, binding.
pub const MAX_TRANSCRIPT_LEN: usize = 20 + 2 + DeviceId::MAX_LEN + 8 + 16 + 32;

/// 16 random bytes, fresh for every authentication attempt.
pub type Nonce = [u8; 16];
/// The 32-byte TLS exporter value of the connection.
pub type ChannelBinding = [u8; 32];
/// An HMAC-SHA256 tag.
pub type Mac = [u8; 32];

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// An HMAC-SHA256 keyed with the device secret's 32 bytes (never its
/// text): the key of every device MAC, the QUIC transcript's and the HTTPS
/// requests' and answers'.
pub(crate) fn keyed_hmac(secret: &DeviceSecret) -> HmacSha256 {
    // HMAC zero-pads a key shorter than the hash's block to the block size
    // (RFC 2104), so padding here gives the same MAC as keying with the 32
    // bytes, without a fallible call.
    let mut key = Zeroizing::new([0u8; 64]);
    key[..32].copy_from_slice(secret.expose_bytes());
    HmacSha256::new(&(*key).into())
}

/// The exact bytes a device signs to authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthTranscript {
    bytes: heapless::Vec<u8, MAX_TRANSCRIPT_LEN>,
}

impl AuthTranscript {
    /// Lays out the transcript for one authentication attempt.
    pub fn new(
        device_id: &DeviceId,
        timestamp_ms: u64,
        nonce: &Nonce,
        channel_binding: &ChannelBinding,
    ) -> Self {
        let id = device_id.as_str().as_bytes();
        // DeviceId holds at most 255 bytes, so the length fits in a u16 and
        // the whole transcript fits in MAX_TRANSCRIPT_LEN.
        let id_len = (id.len() as u16).to_be_bytes();
        let mut bytes = heapless::Vec::new();
        for part in [
            &TRANSCRIPT_CONTEXT[..],
            &id_len,
            id,
            &timestamp_ms.to_be_bytes(),
            nonce,
            channel_binding,
        ] {
            bytes
                .extend_from_slice(part)
                .expect("a transcript of a valid device id fits its bound");
        }
        Self { bytes }
    }

    /// The transcript bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The MAC a device with `secret` sends for this transcript.
    pub fn mac(&self, secret: &DeviceSecret) -> Mac {
        self.keyed(secret).finalize().into_bytes().into()
    }

    /// Whether `mac` is this transcript's MAC under `secret`, compared in
    /// constant time.
    pub fn verify(&self, secret: &DeviceSecret, mac: &Mac) -> bool {
        self.keyed(secret).verify_slice(mac).is_ok()
    }

    fn keyed(&self, secret: &DeviceSecret) -> HmacSha256 {
        let mut hmac = keyed_hmac(secret);
        hmac.update(&self.bytes);
        hmac
    }
}
