//! The eagate device SDK for Rust trading bots (and, through
//! `eagate-ffi`, for MetaTrader EAs).
//!
//! [`Client`] (feature `std`, on by default) is what a bot uses: it connects
//! over QUIC, streams signals, and takes reports that survive a crash.
//!
//! ```no_run
//! use eagate_sdk::protocol::Fill;
//! use eagate_sdk::{Client, ClientConfig, ServerTrust};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let trust = ServerTrust::Pinned("SHA256 AB:CD:…as eagate serve prints it".parse()?);
//! let config = ClientConfig::new("gw.example:7443", "dv_…", "egs_…", trust, "bot-state")?;
//! let mut client = Client::connect(config).await?;
//! while let Ok(signal) = client.next_signal().await {
//!     // Place the order; then report it. `filled` returns once the report
//!     // is on disk: it reaches the gateway exactly once, crash or not.
//!     let fill = Fill { ticket: 1, price: "2350.10".parse()?, volume: signal.volume };
//!     client.filled(signal.signal_id, fill).await?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! [`core`] is the sans-IO session underneath: authentication, resume
//! positions, report sequence numbers, the outbox of unconfirmed reports,
//! pings, timeouts and reconnect backoff, driven by whatever carries the
//! bytes. It needs no `std` and no heap. [`protocol`] is the wire protocol
//! it speaks.
//!
//! ```
//! use eagate_sdk::core::{SessionCore, State};
//! use eagate_sdk::protocol::{DeviceId, DeviceSecret, ReportOutcome, SignalId, MAX_WIRE_LEN};
//!
//! // In a bot: DeviceSecret::parse("egs_…"), the secret printed at registration.
//! let secret = DeviceSecret::from_bytes([7; 32]);
//! let mut core = SessionCore::new(DeviceId::new("dv_01HZX3K9Q2M4T7VWB8C5N6PRSA").unwrap(), secret);
//!
//! // A report made while offline waits in the outbox with its sequence number.
//! let seq = core.report(1_700_000_000_000, SignalId([1; 16]), ReportOutcome::Received).unwrap();
//! assert_eq!((seq, core.unconfirmed()), (1, 1));
//!
//! // The driver connected (TLS done): the core asks it to send the signed
//! // authentication, and will resend the outbox once accepted.
//! core.handle_connected(1_700_000_000_000, [0; 32], [9; 16]);
//! assert_eq!(core.state(), State::Authenticating);
//! let mut frame = [0u8; MAX_WIRE_LEN];
//! let len = core.poll_transmit(1_700_000_000_000, &mut frame).unwrap();
//! assert!(len > 0);
//! ```
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod core;

#[cfg(feature = "std")]
pub mod client;
#[cfg(feature = "std")]
mod journal;
#[cfg(feature = "std")]
mod plain_udp;
#[cfg(feature = "std")]
pub mod trust;

#[cfg(feature = "std")]
pub use client::{
    Client, ClientConfig, ClientState, ConfigError, ConnectError, Event, ReportError, StopReason,
    quic_client_config,
};
#[cfg(feature = "std")]
pub use journal::JournalError;
#[cfg(feature = "std")]
pub use plain_udp::UdpSocketKind;
#[cfg(feature = "std")]
pub use trust::{CertFingerprint, ServerTrust};

pub use eagate_protocol as protocol;
