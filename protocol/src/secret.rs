//! The device secret and its text form, as fixed by `DEVICE-AUTH.md`:
//! `egs_` followed by 32 bytes in base64url without padding, 47 characters.

use core::fmt;
use core::str::FromStr;

use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// The text form's prefix.
pub const SECRET_PREFIX: &str = "egs_";
/// Length of the text form: the prefix and 43 base64url characters.
pub const SECRET_TEXT_LEN: usize = 47;
/// Length of the decoded secret, which is the HMAC key.
pub const SECRET_LEN: usize = 32;

const ENCODED_LEN: usize = SECRET_TEXT_LEN - SECRET_PREFIX.len();
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// A device's 32-byte secret: the HMAC key of its authentication.
///
/// It is wiped from memory when dropped, and its `Debug` output never shows
/// it. The only ways to see it are [`DeviceSecret::to_text`], for showing it
/// to its owner once, and [`DeviceSecret::expose_bytes`], for sealing it.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct DeviceSecret([u8; SECRET_LEN]);

/// Why a secret's text form was refused. Each cause has its own variant so a
/// trader pasting a secret into an EA's inputs is told what is wrong with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SecretParseError {
    /// The text does not start with `egs_`.
    #[error("a device secret starts with \"egs_\"; this one does not")]
    WrongPrefix,
    /// The text is not 47 bytes long.
    #[error("a device secret is 47 characters long (egs_ and 43 more); this one has {0} bytes")]
    WrongLength(usize),
    /// A character outside base64url's alphabet (`A-Z a-z 0-9 - _`).
    #[error(
        "a device secret has only the characters A-Z, a-z, 0-9, - and _ after egs_; byte {position} is not one of them"
    )]
    InvalidCharacter {
        /// Byte offset in the whole text, prefix included.
        position: usize,
    },
    /// The last character carries bits beyond the 32 bytes, so this text
    /// was not produced by encoding a secret (typically a mistyped last
    /// character).
    #[error("a device secret's last character does not match any 32-byte secret; it was mistyped")]
    NonCanonical,
}

impl DeviceSecret {
    /// Wraps 32 secret bytes (fresh from a CSPRNG, or unsealed from a store).
    pub const fn from_bytes(bytes: [u8; SECRET_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw key. Named so that every use stands out in review.
    pub const fn expose_bytes(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }

    /// Parses the text form, refusing anything but exactly `egs_` and 43
    /// canonical base64url characters.
    pub fn parse(text: &str) -> Result<Self, SecretParseError> {
        let bytes = text.as_bytes();
        if !bytes.starts_with(SECRET_PREFIX.as_bytes()) {
            return Err(SecretParseError::WrongPrefix);
        }
        if bytes.len() != SECRET_TEXT_LEN {
            return Err(SecretParseError::WrongLength(bytes.len()));
        }
        let encoded = &bytes[SECRET_PREFIX.len()..];
        // Intermediate buffers hold the secret too, so they are wiped on every path.
        let mut sextets = Zeroizing::new([0u8; ENCODED_LEN]);
        for (i, (&ch, sextet)) in encoded.iter().zip(sextets.iter_mut()).enumerate() {
            *sextet = sextet_of(ch).ok_or(SecretParseError::InvalidCharacter {
                position: SECRET_PREFIX.len() + i,
            })?;
        }
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        // Ten groups of four characters make 30 bytes...
        for (group, out) in sextets.chunks_exact(4).zip(secret.chunks_exact_mut(3)) {
            let word = u32::from(group[0]) << 18
                | u32::from(group[1]) << 12
                | u32::from(group[2]) << 6
                | u32::from(group[3]);
            out.copy_from_slice(&word.to_be_bytes()[1..]);
        }
        // ...and the last three carry 18 bits for the final two bytes, of
        // which the lowest two must be zero.
        let tail = &sextets[40..];
        let word = u32::from(tail[0]) << 12 | u32::from(tail[1]) << 6 | u32::from(tail[2]);
        if word & 0b11 != 0 {
            return Err(SecretParseError::NonCanonical);
        }
        secret[30] = (word >> 10) as u8;
        secret[31] = (word >> 2) as u8;
        Ok(Self(*secret))
    }

    /// The text form, to be shown to the device's owner exactly once.
    pub fn to_text(&self) -> SecretText {
        let mut text = [0u8; SECRET_TEXT_LEN];
        text[..SECRET_PREFIX.len()].copy_from_slice(SECRET_PREFIX.as_bytes());
        let out = &mut text[SECRET_PREFIX.len()..];
        for (group, chars) in self.0.chunks_exact(3).zip(out.chunks_exact_mut(4)) {
            let word = u32::from(group[0]) << 16 | u32::from(group[1]) << 8 | u32::from(group[2]);
            for (k, ch) in chars.iter_mut().enumerate() {
                *ch = ALPHABET[((word >> (18 - 6 * k)) & 0x3f) as usize];
            }
        }
        let word = u32::from(self.0[30]) << 10 | u32::from(self.0[31]) << 2;
        for (k, ch) in out[40..].iter_mut().enumerate() {
            *ch = ALPHABET[((word >> (12 - 6 * k)) & 0x3f) as usize];
        }
        SecretText(text)
    }
}

fn sextet_of(ch: u8) -> Option<u8> {
    match ch {
        b'A'..=b'Z' => Some(ch - b'A'),
        b'a'..=b'z' => Some(ch - b'a' + 26),
        b'0'..=b'9' => Some(ch - b'0' + 52),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    }
}

impl FromStr for DeviceSecret {
    type Err = SecretParseError;

    fn from_str(text: &str) -> Result<Self, SecretParseError> {
        Self::parse(text)
    }
}

impl fmt::Debug for DeviceSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceSecret(<redacted>)")
    }
}

/// A secret's text form (`egs_…`), wiped when dropped. Its `Display` shows
/// the secret, which is its purpose; its `Debug` does not.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretText([u8; SECRET_TEXT_LEN]);

impl SecretText {
    /// The text.
    pub fn as_str(&self) -> &str {
        // Only ASCII from ALPHABET and the prefix is ever written here.
        core::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretText(<redacted>)")
    }
}
