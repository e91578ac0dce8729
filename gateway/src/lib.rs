//! The eagate gateway: MetaTrader EAs and trading bots receive trade signals
//! over QUIC and report what they did with them; admins and the platform
//! manage devices, publish signals and run the affiliate programme over an
//! HTTP sidecar.
//!
//! The modules, in the order data flows:
//!
//! - device → [`transport`] (QUIC today) → [`core`] → the stores;
//! - platform → [`http`] (the sidecar) → [`core`];
//! - the stores: each domain's types and store trait ([`registry`],
//!   [`signals`], [`reports`], [`nonces`], [`presence`]), and their backends
//!   side by side in [`store`] (sled, the embedded default; Redis, shared);
//! - [`affiliates`]: the sidecar's affiliate desk (the `eagate-affiliates`
//!   ledger, fed by the fill feed), whose [`payouts`] run pays affiliates
//!   by hand or through [`stripe`];
//! - [`server`] starts a process's parts, [`config`] and [`cli`] read what
//!   to start; [`seal`], [`tls`], [`durable`] and [`clock`] serve them all;
//!   [`api_schema`] describes the other crates' types the sidecar shows.
//!
//! `main.rs` only parses the command line.
#![forbid(unsafe_code)]

pub mod affiliates;
pub mod api_schema;
pub mod cli;
pub mod click_limit;
pub mod clock;
pub mod config;
pub mod core;
pub mod durable;
pub mod http;
pub mod nonces;
pub mod outage;
pub mod payouts;
pub mod presence;
pub mod registry;
pub mod reports;
pub mod seal;
pub mod server;
pub mod signals;
pub mod store;
pub mod stripe;
pub mod tls;
pub mod transport;
pub mod webhooks;
