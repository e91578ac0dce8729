//! The eagate wire protocol: every message of a device session, the framing
//! that carries them, exact decimals for prices and volumes, and the device
//! authentication transcript fixed by `DEVICE-AUTH.md`.
//!
//! This crate does no IO and allocates nothing: every bounded field is a
//! [`heapless`] type and encoding writes into a caller's buffer. It builds
//! without `std`, so the device SDK core (and through it the C library inside
//! MetaTrader) shares it byte for byte with the gateway.
//!
//! ```
//! use eagate_protocol::{decode_frame, encode_frame, Decoded, DeviceMessage, Ping, MAX_WIRE_LEN};
//!
//! let mut buf = [0u8; MAX_WIRE_LEN];
//! let len = encode_frame(&DeviceMessage::Ping(Ping { token: 7 }), &mut buf).unwrap();
//!
//! // A reader that has only part of the frame is told how much more it needs.
//! assert_eq!(
//!     decode_frame::<DeviceMessage>(&buf[..5]).unwrap(),
//!     Decoded::Incomplete { needed: len - 5 }
//! );
//! match decode_frame::<DeviceMessage>(&buf[..len]).unwrap() {
//!     Decoded::Frame { message, consumed } => {
//!         assert_eq!(message, DeviceMessage::Ping(Ping { token: 7 }));
//!         assert_eq!(consumed, len);
//!     }
//!     Decoded::Incomplete { .. } => unreachable!(),
//! }
//! ```
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[macro_use]
mod tagged;

pub mod auth;
pub mod decimal;
pub mod fingerprint;
pub mod frame;
pub mod http_signing;
pub mod message;
pub mod secret;
pub mod text;

pub use auth::{AuthTranscript, CHANNEL_BINDING_LABEL, ChannelBinding, Mac, Nonce};
pub use decimal::{Decimal, DecimalError};
pub use fingerprint::{CertFingerprint, FingerprintParseError};
pub use frame::{
    DecodeError, Decoded, EncodeError, FRAME_HEADER_LEN, MAX_FRAME_LEN, MAX_WIRE_LEN, WireMessage,
    decode_frame, encode_frame,
};
pub use message::*;
pub use secret::{DeviceSecret, SecretParseError};
pub use text::{ChannelName, DeviceId, RejectionText, SignalComment, SignalId, Symbol, TextError};

/// The protocol version this crate speaks, which devices announce in
/// [`Authenticate`]. Version 2 adds [`GatewayMessage::ReportConflict`] and
/// the going-away reasons `IdleTimeout` and `SecretRotated` to version 1;
/// version 3 adds the report outcome [`ReportOutcome::Reversed`].
pub const PROTOCOL_VERSION: u16 = 3;

/// The oldest protocol version a gateway still speaks. It answers a device
/// outside `MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION` with
/// [`Refusal::UnsupportedVersion`], and speaks each session in the device's
/// version ([`GatewayMessage::for_version`]).
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// The TLS ALPN protocol id. Its number changes only when the framing itself
/// changes; message-level changes are negotiated with [`PROTOCOL_VERSION`].
pub const ALPN: &[u8] = b"eagate/1";
