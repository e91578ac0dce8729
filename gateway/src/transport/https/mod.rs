//! Devices over HTTPS (`shared/spec/DEVICE-HTTP.md`): for EAs that may not
//! load a DLL and reach the gateway with MetaTrader's `WebRequest`. Each
//! request is signed by the device and each answer signed back
//! ([`signing`]); the routes ([`routes`]) run the core's device session for
//! the span of each request.
//!
//! `WebRequest` trusts only certificates Windows trusts, so the listener
//! wants the operator's certificate for a real host name (or sits behind a
//! proxy that terminates TLS with one); a self-signed identity serves tests
//! and tools that pin it. The answer signatures hold either way: an EA acts
//! only on answers its own secret verifies, whoever terminated TLS.

pub mod routes;
pub mod signing;

use std::sync::Arc;

use crate::tls::ServerIdentity;

/// The TLS configuration of the device HTTPS listener: TLS 1.2 and 1.3 (a
/// terminal on an older Windows speaks only 1.2), HTTP/1.1, which is all
/// `WebRequest` speaks.
pub fn tls_acceptor(identity: &ServerIdentity) -> Result<tokio_rustls::TlsAcceptor, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(identity.cert_chain.clone(), identity.key.clone_key())?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(tls)))
}
