//! How devices reach the core. Each transport is an adapter: it carries the
//! wire protocol (`eagate-protocol`) over its kind of connection, hands
//! what devices say to the core (`crate::core`), and says what the core
//! decides. QUIC carries sessions on a connection; HTTPS carries signed
//! requests, for terminals that may not load a DLL
//! (`shared/spec/DEVICE-HTTP.md`).

pub mod https;
pub mod quic;
