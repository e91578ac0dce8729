//! The gateway's TLS identity: PEM files given by the operator, or a
//! self-signed certificate generated on first start and kept in the data
//! directory, so its fingerprint (which EAs pin) stays the same across
//! restarts.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct ServerIdentity {
    /// Leaf first.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

/// Why the TLS identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing a PEM file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is missing or wrong.
        what: String,
    },
    /// One file of the identity is there and the other is not: a new
    /// identity would change the fingerprint every device pins.
    #[error(
        "{present} exists but {missing} is missing: restore {missing} from a backup \
         (a new identity would break every device pinning the current fingerprint), \
         or remove {present} too to make a new identity on purpose"
    )]
    Incomplete {
        /// The file that is there.
        present: PathBuf,
        /// The file that is not.
        missing: PathBuf,
    },
    /// rcgen could not generate the self-signed certificate.
    #[error("generating the self-signed certificate failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The fingerprint devices pin: the same type they parse it into.
pub use eagate_protocol::CertFingerprint as Fingerprint;

const CERT_FILE: &str = "tls/cert.pem";
const KEY_FILE: &str = "tls/key.pem";

impl ServerIdentity {
    /// Loads an operator's PEM certificate chain and private key.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, IdentityError> {
        let cert_chain = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| IdentityError::Pem {
                path: cert.to_owned(),
                what: e.to_string(),
            })?;
        if cert_chain.is_empty() {
            return Err(IdentityError::Pem {
                path: cert.to_owned(),
                what: "no certificate in the file".into(),
            });
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| IdentityError::Pem {
            path: key.to_owned(),
            what: e.to_string(),
        })?;
        Ok(Self { cert_chain, key })
    }

    /// Loads the self-signed identity from `data_dir`, generating it on the
    /// first start for `hostnames` (the names EAs may use to connect): only
    /// when neither file exists, never over one of them.
    pub fn load_or_generate(data_dir: &Path, hostnames: &[String]) -> Result<Self, IdentityError> {
        let cert_path = data_dir.join(CERT_FILE);
        let key_path = data_dir.join(KEY_FILE);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| IdentityError::Io { path, source }
        };
        let (cert_new, key_new) = (aside(&cert_path), aside(&key_path));
        // A generation interrupted between its two renames: both files
        // were complete and durable aside before the first, so finish it.
        for (path, new, other) in [
            (&cert_path, &cert_new, &key_path),
            (&key_path, &key_new, &cert_path),
        ] {
            if !path.exists() && other.exists() && new.exists() {
                fs::rename(new, path).map_err(io(path))?;
            }
        }
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => return Self::from_pem_files(&cert_path, &key_path),
            (true, false) => {
                return Err(IdentityError::Incomplete {
                    present: cert_path,
                    missing: key_path,
                });
            }
            (false, true) => {
                return Err(IdentityError::Incomplete {
                    present: key_path,
                    missing: cert_path,
                });
            }
            // The first start (or one interrupted before any rename: what
            // was written aside is incomplete, and goes).
            (false, false) => {
                for new in [&cert_new, &key_new] {
                    if new.exists() {
                        fs::remove_file(new).map_err(io(new))?;
                    }
                }
            }
        }
        let generated = rcgen::generate_simple_self_signed(hostnames.to_vec())?;
        let tls_dir = data_dir.join("tls");
        fs::create_dir_all(&tls_dir).map_err(io(data_dir))?;
        // Both written aside and synced, then renamed into place: a crash
        // never leaves half an identity that cannot be completed.
        write_private(&key_new, generated.signing_key.serialize_pem().as_bytes())
            .map_err(io(&key_new))?;
        write_private(&cert_new, generated.cert.pem().as_bytes()).map_err(io(&cert_new))?;
        fs::rename(&key_new, &key_path).map_err(io(&key_path))?;
        fs::rename(&cert_new, &cert_path).map_err(io(&cert_path))?;
        fs::File::open(&tls_dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io(&tls_dir))?;
        Self::from_pem_files(&cert_path, &key_path)
    }

    /// The fingerprint clients pin.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.cert_chain[0])
    }
}

/// Where `path` is written before it is renamed into place.
fn aside(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".new");
    std::path::PathBuf::from(name)
}

/// Writes a file only its owner can read, created with those permissions
/// so it is never readable by others, not even for an instant.
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}
