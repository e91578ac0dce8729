//! Bounded, validated text and identifiers that appear on the wire.
//!
//! Each type checks its rules when built from a `&str` and again when decoded,
//! so a value that exists is a valid one. Control characters are refused
//! everywhere: these strings end up in logs, terminals and MetaTrader's
//! journal, where a stray newline or escape sequence would forge lines.

use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a piece of text was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// The text is empty but this field needs at least one character.
    #[error("must not be empty")]
    Empty,
    /// The text is longer than the field allows, in UTF-8 bytes.
    #[error("is {len} bytes long, at most {max} are allowed")]
    TooLong {
        /// The text's length in UTF-8 bytes.
        len: usize,
        /// The most the field accepts.
        max: usize,
    },
    /// A character the field does not allow, at a byte offset.
    #[error("has a character that is not allowed ({ch:?}) at byte {position}")]
    InvalidCharacter {
        /// The refused character.
        ch: char,
        /// Its byte offset in the text.
        position: usize,
    },
}

macro_rules! bounded_text {
    (
        $(#[$meta:meta])*
        $name:ident, max = $max:expr, non_empty = $non_empty:expr, allows = $allows:expr
    ) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(heapless::String<$max>);

        impl $name {
            /// The most UTF-8 bytes this field holds.
            pub const MAX_LEN: usize = $max;

            /// Checks `text` against this field's rules.
            pub fn new(text: &str) -> Result<Self, TextError> {
                validate(text, $max, $non_empty, $allows)?;
                let mut inner = heapless::String::new();
                // Cannot fail: validate checked the length.
                inner
                    .push_str(text)
                    .map_err(|_| TextError::TooLong { len: text.len(), max: $max })?;
                Ok(Self(inner))
            }

            /// The text.
            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }
        }

        impl FromStr for $name {
            type Err = TextError;

            fn from_str(text: &str) -> Result<Self, TextError> {
                Self::new(text)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = TextError;

            fn try_from(text: &str) -> Result<Self, TextError> {
                Self::new(text)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self.as_str(), f)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                // Decoding into the bounded string first refuses overlong
                // input before any of it is checked or copied twice.
                let text = heapless::String::<$max>::deserialize(deserializer)?;
                validate(&text, $max, $non_empty, $allows).map_err(serde::de::Error::custom)?;
                Ok(Self(text))
            }
        }
    };
}

fn validate(
    text: &str,
    max: usize,
    non_empty: bool,
    allows: fn(char) -> bool,
) -> Result<(), TextError> {
    if non_empty && text.is_empty() {
        return Err(TextError::Empty);
    }
    if text.len() > max {
        return Err(TextError::TooLong {
            len: text.len(),
            max,
        });
    }
    match text.char_indices().find(|&(_, ch)| !allows(ch)) {
        Some((position, ch)) => Err(TextError::InvalidCharacter { ch, position }),
        None => Ok(()),
    }
}

fn printable(ch: char) -> bool {
    !ch.is_control()
}

fn printable_without_space(ch: char) -> bool {
    !ch.is_control() && !ch.is_whitespace()
}

fn channel_char(ch: char) -> bool {
    ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-')
}

bounded_text! {
    /// A device's id: 1 to 255 UTF-8 bytes, exactly as it enters the
    /// authentication transcript. The gateway issues ids like `dv_01HZX…`,
    /// but any printable text is valid on the wire.
    DeviceId, max = 255, non_empty = true, allows = printable
}

bounded_text! {
    /// A signal channel's name: 1 to 64 ASCII letters, digits, `.`, `_`, `-`.
    /// Names are used as parts of store keys and URLs, hence the small alphabet.
    ChannelName, max = 64, non_empty = true, allows = channel_char
}

bounded_text! {
    /// A trading symbol as the broker names it (`EURUSD`, `XAUUSD.pro`):
    /// 1 to 32 bytes, printable, no whitespace.
    Symbol, max = 32, non_empty = true, allows = printable_without_space
}

bounded_text! {
    /// The comment a signal asks the EA to put on its order: up to 64 bytes.
    /// MetaTrader itself keeps only the first 31 characters of an order comment.
    SignalComment, max = 64, non_empty = false, allows = printable
}

bounded_text! {
    /// MetaTrader's description of why an order was rejected: up to 128 bytes.
    RejectionText, max = 128, non_empty = false, allows = printable
}

impl RejectionText {
    /// Keeps as much of `text` as fits, cut at a character boundary, with
    /// control characters replaced by spaces. A terminal's error text is
    /// informational; refusing a rejection report because its text is long
    /// would lose the report itself.
    pub fn lossy(text: &str) -> Self {
        let mut inner = heapless::String::new();
        for ch in text.chars() {
            let ch = if ch.is_control() { ' ' } else { ch };
            if inner.push(ch).is_err() {
                break;
            }
        }
        Self(inner)
    }
}

/// A signal's id, unique across all channels, assigned by the gateway when
/// the signal is published. Shown to people as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SignalId(pub [u8; 16]);

/// Why a signal id in text form was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignalIdError {
    /// Not 32 characters long.
    #[error("a signal id has 32 hex digits, this has {0} characters")]
    WrongLength(usize),
    /// A character that is not a hex digit, at a byte offset.
    #[error("a signal id has only hex digits; byte {0} is not one")]
    NotHex(usize),
}

impl FromStr for SignalId {
    type Err = SignalIdError;

    fn from_str(text: &str) -> Result<Self, SignalIdError> {
        let bytes = text.as_bytes();
        if bytes.len() != 32 {
            return Err(SignalIdError::WrongLength(text.len()));
        }
        let mut id = [0u8; 16];
        for (i, out) in id.iter_mut().enumerate() {
            let hi = hex_value(bytes[2 * i]).ok_or(SignalIdError::NotHex(2 * i))?;
            let lo = hex_value(bytes[2 * i + 1]).ok_or(SignalIdError::NotHex(2 * i + 1))?;
            *out = (hi << 4) | lo;
        }
        Ok(Self(id))
    }
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for SignalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SignalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SignalId({self})")
    }
}

impl Serialize for SignalId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            self.0.serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for SignalId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = heapless::String::<32>::deserialize(deserializer)?;
            text.parse().map_err(serde::de::Error::custom)
        } else {
            <[u8; 16]>::deserialize(deserializer).map(SignalId)
        }
    }
}
