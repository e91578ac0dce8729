//! How devices reach the core. Each transport is an adapter: it carries the
//! wire protocol (`eagate-protocol`) over its kind of connection, hands
//! what devices say to the core (`crate::core`), and says what the core
//! decides. QUIC is the one devices use today; a transport over HTTPS for
//! terminals that may not load a DLL is the next (`shared/spec/DEVICE-HTTP.md`).

pub mod quic;
