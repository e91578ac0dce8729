//! Length-prefixed framing.
//!
//! ```text
//! frame = u32 BE body length || body (one postcard-encoded message)
//! ```
//!
//! A reader hands [`decode_frame`] whatever bytes it has; it answers with a
//! message and how many bytes it used, with how many more bytes it needs at
//! least, or with an error. It never panics, whatever the input: the gateway
//! feeds it bytes from strangers.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::message::{DeviceMessage, GatewayMessage};

/// Bytes in the length prefix.
pub const FRAME_HEADER_LEN: usize = 4;
/// The largest body a frame may carry. Every message the types allow fits
/// (the largest, an [`crate::Authenticate`] naming sixteen channels, is
/// about 1.5 KiB); anything longer is refused before it is buffered.
pub const MAX_FRAME_LEN: usize = 4096;
/// The largest frame on the wire, prefix included: a buffer this size can
/// hold any encoded message.
pub const MAX_WIRE_LEN: usize = FRAME_HEADER_LEN + MAX_FRAME_LEN;

/// A message type of one direction of the session. Sealed: only
/// [`DeviceMessage`] and [`GatewayMessage`] travel in frames.
pub trait WireMessage: Serialize + DeserializeOwned + sealed::Sealed {}

impl WireMessage for DeviceMessage {}
impl WireMessage for GatewayMessage {}

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::message::DeviceMessage {}
    impl Sealed for crate::message::GatewayMessage {}
}

/// The outcome of offering bytes to [`decode_frame`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<M> {
    /// A whole frame: the message, and how many input bytes it took.
    Frame {
        /// The decoded message.
        message: M,
        /// Bytes consumed from the front of the input.
        consumed: usize,
    },
    /// Not enough input yet: at least `needed` more bytes are required.
    Incomplete {
        /// The least number of further bytes that could complete a frame.
        needed: usize,
    },
}

/// Why a frame could not be decoded. The session that sent it is closed:
/// after a bad frame the stream cannot be trusted to be in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The length prefix is zero; there is no empty message.
    #[error("empty frame")]
    Empty,
    /// The length prefix exceeds the maximum frame size.
    #[error("frame of {len} bytes is larger than the maximum of {max}")]
    Oversized {
        /// The announced body length.
        len: u32,
        /// The maximum accepted.
        max: usize,
    },
    /// The body is not a valid message of this direction.
    #[error("malformed message: {0}")]
    Malformed(Malformed),
    /// The message ended before the frame did.
    #[error("{0} bytes left over after the message in its frame")]
    TrailingBytes(usize),
}

/// What was wrong inside a malformed frame body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// The body ended inside a field.
    #[error("truncated inside a field")]
    Truncated,
    /// A varint is longer than its type allows.
    #[error("bad varint")]
    BadVarint,
    /// Text that is not UTF-8.
    #[error("text is not UTF-8")]
    BadUtf8,
    /// An option or bool byte other than 0 or 1.
    #[error("bad option or bool marker")]
    BadMarker,
    /// A length beyond a field's bound, an unknown tag, or a value the
    /// field's rules refuse (empty id, bad characters, scale above 18).
    #[error("a field's value is not allowed (unknown tag, length over its bound, or invalid)")]
    InvalidValue,
    /// A value written in more bytes than its shortest form (a varint
    /// padded with `0x80` continuation bytes). Refused so that every
    /// message has exactly one encoding, which implementations in other
    /// languages can rely on and captures can be compared by bytes.
    #[error("a varint is not in its shortest form")]
    NonCanonical,
}

impl From<postcard::Error> for Malformed {
    fn from(error: postcard::Error) -> Self {
        use postcard::Error as E;
        match error {
            E::DeserializeUnexpectedEnd => Malformed::Truncated,
            E::DeserializeBadVarint => Malformed::BadVarint,
            E::DeserializeBadUtf8 | E::DeserializeBadChar => Malformed::BadUtf8,
            E::DeserializeBadBool | E::DeserializeBadOption => Malformed::BadMarker,
            _ => Malformed::InvalidValue,
        }
    }
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The output buffer cannot hold the frame; [`MAX_WIRE_LEN`] always can.
    #[error("output buffer of {0} bytes is too small for the frame")]
    BufferTooSmall(usize),
}

/// Decodes one frame from the front of `input`.
pub fn decode_frame<M: WireMessage>(input: &[u8]) -> Result<Decoded<M>, DecodeError> {
    let Some(header) = input.first_chunk::<FRAME_HEADER_LEN>() else {
        return Ok(Decoded::Incomplete {
            needed: FRAME_HEADER_LEN - input.len(),
        });
    };
    let announced = u32::from_be_bytes(*header);
    let body_len = announced as usize;
    if body_len == 0 {
        return Err(DecodeError::Empty);
    }
    if body_len > MAX_FRAME_LEN {
        return Err(DecodeError::Oversized {
            len: announced,
            max: MAX_FRAME_LEN,
        });
    }
    let frame_len = FRAME_HEADER_LEN + body_len;
    let Some(body) = input.get(FRAME_HEADER_LEN..frame_len) else {
        return Ok(Decoded::Incomplete {
            needed: frame_len - input.len(),
        });
    };
    let (message, rest) = postcard::take_from_bytes::<M>(body)
        .map_err(|error| DecodeError::Malformed(error.into()))?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    if !encodes_to(&message, body) {
        return Err(DecodeError::Malformed(Malformed::NonCanonical));
    }
    Ok(Decoded::Frame {
        message,
        consumed: frame_len,
    })
}

/// Whether `message` encodes to exactly `body`. The only fields with more
/// than one accepted encoding are varints (postcard's decoder takes padded
/// forms), so a decoded message that re-encodes to other bytes was sent in a
/// non-shortest form. Compared byte by byte as the encoder produces them:
/// no buffer, nothing allocated.
fn encodes_to<M: WireMessage>(message: &M, body: &[u8]) -> bool {
    struct SameBytes<'a> {
        expected: &'a [u8],
        at: usize,
    }

    impl postcard::ser_flavors::Flavor for SameBytes<'_> {
        type Output = usize;

        fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
            if self.expected.get(self.at) != Some(&byte) {
                return Err(postcard::Error::SerializeBufferFull);
            }
            self.at += 1;
            Ok(())
        }

        fn finalize(self) -> postcard::Result<usize> {
            Ok(self.at)
        }
    }

    let same = SameBytes {
        expected: body,
        at: 0,
    };
    postcard::serialize_with_flavor(message, same).is_ok_and(|len| len == body.len())
}

/// Encodes `message` as one frame at the front of `out`; returns the frame's
/// length.
pub fn encode_frame<M: WireMessage>(message: &M, out: &mut [u8]) -> Result<usize, EncodeError> {
    let available = out.len();
    let Some((header, body)) =
        out[..available.min(MAX_WIRE_LEN)].split_first_chunk_mut::<FRAME_HEADER_LEN>()
    else {
        return Err(EncodeError::BufferTooSmall(available));
    };
    let body_len = postcard::to_slice(message, body)
        .map_err(|_| EncodeError::BufferTooSmall(available))?
        .len();
    // body_len <= MAX_FRAME_LEN, far below u32::MAX.
    *header = (body_len as u32).to_be_bytes();
    Ok(FRAME_HEADER_LEN + body_len)
}
