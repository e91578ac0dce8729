//! The channel binding as docs/protocol.md tells an implementer whose QUIC
//! stack has no TLS exporter to compute it, from the TLS 1.3 key schedule
//! (RFC 8446 section 7.5), is the exporter the gateway checks: derived here
//! from the exporter secret a real handshake with the gateway logged, with
//! either hash a cipher suite may bring, and compared with quinn's exporter.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use eagate_protocol::*;
use hmac::{Hmac, KeyInit, Mac};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256, Sha384};

/// A cipher suite's hash, as the key schedule uses it.
struct SuiteHash {
    hmac: fn(&[u8], &[&[u8]]) -> Vec<u8>,
    hash: fn(&[u8]) -> Vec<u8>,
    len: usize,
}

const SHA256: SuiteHash = SuiteHash {
    hmac: |key, parts| {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
        parts.iter().for_each(|part| mac.update(part));
        mac.finalize().into_bytes().to_vec()
    },
    hash: |bytes| Sha256::digest(bytes).to_vec(),
    len: 32,
};

const SHA384: SuiteHash = SuiteHash {
    hmac: |key, parts| {
        let mut mac = Hmac::<Sha384>::new_from_slice(key).unwrap();
        parts.iter().for_each(|part| mac.update(part));
        mac.finalize().into_bytes().to_vec()
    },
    hash: |bytes| Sha384::digest(bytes).to_vec(),
    len: 48,
};

impl SuiteHash {
    /// HKDF-Expand-Label (RFC 8446 section 7.1).
    fn expand_label(&self, secret: &[u8], label: &str, context: &[u8], length: usize) -> Vec<u8> {
        let full_label = format!("tls13 {label}");
        let mut info = Vec::new();
        info.extend_from_slice(&(length as u16).to_be_bytes());
        info.push(full_label.len() as u8);
        info.extend_from_slice(full_label.as_bytes());
        info.push(context.len() as u8);
        info.extend_from_slice(context);
        // HKDF-Expand (RFC 5869): T(i) = HMAC(secret, T(i-1) || info || i).
        let mut output = Vec::new();
        let mut previous = Vec::new();
        let mut counter = 1u8;
        while output.len() < length {
            previous = (self.hmac)(secret, &[&previous, &info, &[counter]]);
            output.extend_from_slice(&previous);
            counter += 1;
        }
        output.truncate(length);
        output
    }

    /// The binding from the exporter master secret, as the document spells
    /// it out.
    fn binding(&self, exporter_secret: &[u8]) -> Vec<u8> {
        let empty_hash = (self.hash)(b"");
        let derived = self.expand_label(
            exporter_secret,
            "EXPORTER-eagate-device-auth",
            &empty_hash,
            self.len,
        );
        self.expand_label(&derived, "exporter", &empty_hash, 32)
    }
}

/// Keeps the `EXPORTER_SECRET` a handshake logs (what SSLKEYLOGFILE holds).
#[derive(Debug, Default)]
struct ExporterSecret(Mutex<Option<Vec<u8>>>);

impl rustls::KeyLog for ExporterSecret {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        if label == "EXPORTER_SECRET" {
            *self.0.lock().unwrap() = Some(secret.to_vec());
        }
    }
}

/// Connects to `gateway` preferring `suite`; the exporter secret logged
/// and quinn's channel binding.
async fn handshake(
    gateway: &eagate_gateway::server::Gateway,
    data_dir: &std::path::Path,
    suite: rustls::SupportedCipherSuite,
) -> (Vec<u8>, [u8; 32]) {
    let cert = CertificateDer::from_pem_file(data_dir.join("tls/cert.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let mut provider = rustls::crypto::ring::default_provider();
    // The gateway follows the client's order of preference.
    provider
        .cipher_suites
        .retain(|s| s.suite() != suite.suite());
    provider.cipher_suites.insert(0, suite);
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let secrets = Arc::new(ExporterSecret::default());
    tls.key_log = secrets.clone();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let connection = endpoint
        .connect(gateway.quic_addr().unwrap(), "localhost")
        .unwrap()
        .await
        .unwrap();
    let mut binding = [0u8; 32];
    connection
        .export_keying_material(&mut binding, CHANNEL_BINDING_LABEL, b"")
        .unwrap();
    let secret = secrets
        .0
        .lock()
        .unwrap()
        .clone()
        .expect("the exporter secret was logged");
    connection.close(0u32.into(), b"done");
    (secret, binding)
}

#[tokio::test]
async fn the_binding_computed_from_the_key_schedule_is_the_exporter_for_either_hash() {
    let (gateway, dir) = start().await;
    use rustls::crypto::ring::cipher_suite::{TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384};
    let (secret, binding) = handshake(&gateway, dir.path(), TLS13_AES_128_GCM_SHA256).await;
    assert_eq!(secret.len(), 32, "a SHA-256 suite");
    assert_eq!(SHA256.binding(&secret), binding);
    let (secret, binding) = handshake(&gateway, dir.path(), TLS13_AES_256_GCM_SHA384).await;
    assert_eq!(secret.len(), 48, "a SHA-384 suite");
    assert_eq!(SHA384.binding(&secret), binding);
    // The hash matters: the other suite's hash gives another binding.
    assert_ne!(SHA256.binding(&secret), binding);
}
