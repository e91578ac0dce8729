//! How the client decides that it is talking to the right gateway: a pinned
//! certificate fingerprint (what `eagate serve` prints) or CA roots.

use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

pub use eagate_protocol::{CertFingerprint, FingerprintParseError};

/// The CA roots type of [`ServerTrust::Roots`] (rustls's).
pub use rustls::RootCertStore;

/// What the client trusts.
#[derive(Debug, Clone)]
pub enum ServerTrust {
    /// Exactly the certificate with this fingerprint, whatever its name and
    /// issuer: the gateway's self-signed certificate.
    Pinned(CertFingerprint),
    /// Any certificate for the server's name issued under these roots.
    Roots(Arc<RootCertStore>),
}

/// Remembers why a certificate was refused, so the driver can tell a wrong
/// certificate (stop: retrying cannot help) from a network failure (retry).
#[derive(Debug, Default)]
pub(crate) struct CertificateVerdict(Mutex<Option<String>>);

impl CertificateVerdict {
    pub(crate) fn take(&self) -> Option<String> {
        self.0.lock().map(|mut v| v.take()).unwrap_or(None)
    }

    fn record(&self, why: String) {
        if let Ok(mut verdict) = self.0.lock() {
            *verdict = Some(why);
        }
    }
}

/// The verifier for `trust`, which records its refusals in `verdict`.
pub(crate) fn verifier(
    trust: &ServerTrust,
    provider: Arc<CryptoProvider>,
    verdict: Arc<CertificateVerdict>,
) -> Result<Arc<dyn ServerCertVerifier>, rustls::Error> {
    let inner = match trust {
        ServerTrust::Pinned(pin) => Inner::Pinned {
            pin: *pin,
            provider,
        },
        ServerTrust::Roots(roots) => Inner::Roots(
            WebPkiServerVerifier::builder_with_provider(roots.clone(), provider)
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?,
        ),
    };
    Ok(Arc::new(Verifier { inner, verdict }))
}

#[derive(Debug)]
enum Inner {
    Pinned {
        pin: CertFingerprint,
        provider: Arc<CryptoProvider>,
    },
    Roots(Arc<WebPkiServerVerifier>),
}

#[derive(Debug)]
struct Verifier {
    inner: Inner,
    verdict: Arc<CertificateVerdict>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.inner {
            Inner::Pinned { pin, .. } => {
                let presented = CertFingerprint::of(end_entity);
                // The pin is the whole identity: a self-signed certificate
                // has no issuer or name worth checking.
                if presented == *pin {
                    Ok(ServerCertVerified::assertion())
                } else {
                    self.verdict.record(format!(
                        "the gateway's certificate has fingerprint SHA256 {presented}, \
                         not the pinned SHA256 {pin}"
                    ));
                    Err(rustls::Error::InvalidCertificate(
                        CertificateError::ApplicationVerificationFailure,
                    ))
                }
            }
            Inner::Roots(webpki) => webpki
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .inspect_err(|e| {
                    self.verdict.record(format!(
                        "the gateway's certificate is not trusted by the configured roots: {e}"
                    ));
                }),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match &self.inner {
            Inner::Pinned { provider, .. } => rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &provider.signature_verification_algorithms,
            ),
            Inner::Roots(webpki) => webpki.verify_tls12_signature(message, cert, dss),
        }
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Proof that the peer holds the key of the certificate just checked:
        // without it a pin would only check a certificate anyone can copy.
        match &self.inner {
            Inner::Pinned { provider, .. } => rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &provider.signature_verification_algorithms,
            ),
            Inner::Roots(webpki) => webpki.verify_tls13_signature(message, cert, dss),
        }
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        match &self.inner {
            Inner::Pinned { provider, .. } => provider
                .signature_verification_algorithms
                .supported_schemes(),
            Inner::Roots(webpki) => webpki.supported_verify_schemes(),
        }
    }
}
