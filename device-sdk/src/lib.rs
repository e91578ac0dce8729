//! The eagate device SDK for Rust trading bots.
//!
//! Today it gives bots the wire protocol ([`protocol`]): the messages, the
//! framing and the signed authentication. The sans-IO session core and the
//! tokio + quinn client with reconnect and a durable outbox build on it.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub use eagate_protocol as protocol;
