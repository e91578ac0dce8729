//! The eagate gateway: QUIC device sessions with HMAC authentication, the
//! device registry, and (as they are built) signal streaming, report ingest
//! and the HTTP sidecar.
//!
//! `main.rs` only parses the command line; each subsystem has its module.
#![forbid(unsafe_code)]

pub mod affiliates;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod durable;
pub mod http;
pub mod metrics;
pub mod nonces;
pub mod notices;
pub mod quic;
pub mod redis_store;
pub mod registry;
pub mod reports;
pub mod seal;
pub mod server;
pub mod sessions;
pub mod signals;
pub mod tls;
