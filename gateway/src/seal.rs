//! Sealing device secrets at rest with the server master key
//! (ChaCha20-Poly1305). The gateway must be able to recompute a device's MAC,
//! so it keeps the key, but never in plaintext in sled or Redis.

use std::fs;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use eagate_protocol::secret::SECRET_LEN;
use eagate_protocol::{DeviceId, DeviceSecret};
use zeroize::Zeroizing;

const NONCE_LEN: usize = 12;
const AAD_CONTEXT: &[u8] = b"eagate/1 sealed device secret:";
/// Length of a sealed secret: nonce, ciphertext, tag.
pub const SEALED_LEN: usize = NONCE_LEN + SECRET_LEN + 16;

/// The 32-byte key that seals every device secret.
#[derive(Clone)]
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// Why the master key could not be had, or a secret not unsealed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key file could not be read or created.
    #[error("master key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The key file is gone but the data directory holds a store sealed
    /// under it: a new key would lock every device out.
    #[error(
        "master key file {0} is missing, but the data directory holds a store sealed with it: \
         restore the file from a backup (or set EAGATE_MASTER_KEY to the key); \
         a new key would lock every device out"
    )]
    Missing(PathBuf),
    /// The key given by file or environment is not 64 hex digits.
    #[error("the master key must be 64 hex digits (32 bytes)")]
    BadKey,
    /// The sealed bytes are damaged, or were sealed under another key or for
    /// another device.
    #[error("a sealed device secret does not open with this master key")]
    Unseal,
}

/// The embedded store's directory inside the data directory: if it
/// exists, a key was made for it.
pub const STORE_DIR: &str = "db";

/// Where the master key comes from when `EAGATE_MASTER_KEY` is unset.
pub const MASTER_KEY_FILE: &str = "master.key";

impl MasterKey {
    /// From 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Self, SealError> {
        let text = text.trim();
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SealError::BadKey);
        }
        let mut key = Zeroizing::new([0u8; 32]);
        for (i, out) in key.iter_mut().enumerate() {
            *out =
                u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| SealError::BadKey)?;
        }
        Ok(Self(key))
    }

    /// The key from `EAGATE_MASTER_KEY` if given, else from the data
    /// directory's key file, created (mode 0600) with a fresh random key on
    /// the first start.
    pub fn load_or_create(data_dir: &Path, from_env: Option<&str>) -> Result<Self, SealError> {
        if let Some(hex) = from_env {
            return Self::from_hex(hex);
        }
        let path = data_dir.join(MASTER_KEY_FILE);
        let io = |source| SealError::Io {
            path: path.clone(),
            source,
        };
        match fs::read_to_string(&path) {
            Ok(text) => {
                #[cfg(unix)]
                if let Ok(meta) = fs::metadata(&path) {
                    use std::os::unix::fs::PermissionsExt;
                    let mode = meta.permissions().mode() & 0o777;
                    if mode & 0o077 != 0 {
                        tracing::warn!(
                            file = %path.display(),
                            mode = format!("{mode:o}"),
                            "the master key file can be read by others than its owner; chmod 600 it"
                        );
                    }
                }
                Self::from_hex(&Zeroizing::new(text))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if data_dir.join(STORE_DIR).exists() {
                    return Err(SealError::Missing(path));
                }
                let mut key = Zeroizing::new([0u8; 32]);
                getrandom::fill(&mut key[..])
                    .map_err(|e| io(std::io::Error::other(e.to_string())))?;
                let hex =
                    Zeroizing::new(key.iter().map(|b| format!("{b:02x}")).collect::<String>());
                fs::create_dir_all(data_dir).map_err(io)?;
                crate::tls::write_private(&path, hex.as_bytes()).map_err(io)?;
                Ok(Self(key))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// A value that tells keys apart without revealing them: hex of the
    /// first 16 bytes of SHA-256 over a fixed label and the key. Processes
    /// sharing a Redis compare it at start, so one started with another key
    /// refuses to run instead of failing every device's authentication.
    pub fn check_value(&self) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::new()
            .chain_update(b"eagate/1 master key check:")
            .chain_update(&self.0[..])
            .finalize();
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A MAC under the master key of `label` and `parts` (each length
    /// prefixed, so no two lists of parts give the same input): a value
    /// every process of the deployment computes alike and no one without
    /// the key can forge, such as the token naming a device's session over
    /// HTTPS.
    pub fn tag(&self, label: &str, parts: &[&[u8]]) -> [u8; 32] {
        use hmac::{Hmac, KeyInit, Mac};
        let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&self.0[..])
            .expect("HMAC takes a key of any length");
        mac.update(b"eagate/1 tag:");
        for part in std::iter::once(label.as_bytes()).chain(parts.iter().copied()) {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(Key::from_slice(&self.0[..]))
    }

    /// Seals `secret` for `device_id`: the sealed bytes open only for that
    /// device, so records cannot be swapped between devices in the store.
    pub fn seal(&self, device_id: &DeviceId, secret: &DeviceSecret) -> Result<Vec<u8>, SealError> {
        self.seal_bytes(&aad(device_id), secret.expose_bytes())
    }

    /// Opens what [`MasterKey::seal`] sealed for `device_id`.
    pub fn unseal(&self, device_id: &DeviceId, sealed: &[u8]) -> Result<DeviceSecret, SealError> {
        let bytes = self.open_bytes(&aad(device_id), sealed)?;
        Ok(DeviceSecret::from_bytes(*bytes))
    }

    /// Seals a 32-byte secret of something other than a device (a webhook
    /// endpoint's), bound to `label`: it opens only for the same label.
    pub fn seal_for(&self, label: &str, secret: &[u8; 32]) -> Result<Vec<u8>, SealError> {
        self.seal_bytes(&[LABELLED_CONTEXT, label.as_bytes()].concat(), secret)
    }

    /// Opens what [`MasterKey::seal_for`] sealed for `label`.
    pub fn unseal_for(&self, label: &str, sealed: &[u8]) -> Result<Zeroizing<[u8; 32]>, SealError> {
        self.open_bytes(&[LABELLED_CONTEXT, label.as_bytes()].concat(), sealed)
    }

    /// A fresh nonce and the 32 bytes sealed under it, bound to `aad`.
    fn seal_bytes(&self, aad: &[u8], secret: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| SealError::BadKey)?;
        let ciphertext = self
            .cipher()
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: secret, aad })
            .map_err(|_| SealError::Unseal)?;
        let mut sealed = Vec::with_capacity(SEALED_LEN);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }

    fn open_bytes(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<[u8; 32]>, SealError> {
        if sealed.len() != SEALED_LEN {
            return Err(SealError::Unseal);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let plain = Zeroizing::new(
            self.cipher()
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: ciphertext,
                        aad,
                    },
                )
                .map_err(|_| SealError::Unseal)?,
        );
        let bytes: [u8; SECRET_LEN] = plain[..].try_into().map_err(|_| SealError::Unseal)?;
        Ok(Zeroizing::new(bytes))
    }
}

/// Domain separation of [`MasterKey::seal_for`] from device secrets.
const LABELLED_CONTEXT: &[u8] = b"eagate/1 sealed secret of:";

fn aad(device_id: &DeviceId) -> Vec<u8> {
    [AAD_CONTEXT, device_id.as_str().as_bytes()].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MasterKey {
        MasterKey::from_hex(&"11".repeat(32)).unwrap()
    }

    #[test]
    fn a_labelled_secret_opens_for_its_label_only_and_never_as_a_device_secret() {
        let sealed = key().seal_for("webhook secret:wh_1", &[9; 32]).unwrap();
        assert_eq!(
            *key().unseal_for("webhook secret:wh_1", &sealed).unwrap(),
            [9; 32]
        );
        assert!(key().unseal_for("webhook secret:wh_2", &sealed).is_err());
        let device = DeviceId::new("dv_X").unwrap();
        assert!(key().unseal(&device, &sealed).is_err());
    }

    #[test]
    fn a_sealed_secret_opens_for_its_device_only() {
        let alice = DeviceId::new("dv_ALICE").unwrap();
        let bob = DeviceId::new("dv_BOB").unwrap();
        let secret = DeviceSecret::from_bytes([7; 32]);
        let sealed = key().seal(&alice, &secret).unwrap();
        assert_eq!(sealed.len(), SEALED_LEN);
        assert!(!sealed.windows(32).any(|w| w == [7; 32]), "not plaintext");
        assert_eq!(key().unseal(&alice, &sealed).unwrap(), secret);
        assert!(matches!(
            key().unseal(&bob, &sealed),
            Err(SealError::Unseal)
        ));
        let other = MasterKey::from_hex(&"22".repeat(32)).unwrap();
        assert!(matches!(
            other.unseal(&alice, &sealed),
            Err(SealError::Unseal)
        ));
        let mut tampered = sealed.clone();
        tampered[20] ^= 1;
        assert!(matches!(
            key().unseal(&alice, &tampered),
            Err(SealError::Unseal)
        ));
    }

    #[test]
    fn the_master_key_file_is_created_once_with_owner_only_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let first = MasterKey::load_or_create(dir.path(), None).unwrap();
        let again = MasterKey::load_or_create(dir.path(), None).unwrap();
        assert_eq!(*first.0, *again.0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(MASTER_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_master_key_that_is_not_64_hex_digits_is_refused() {
        for bad in ["", "abc", &"zz".repeat(32), &"11".repeat(33)] {
            assert!(matches!(MasterKey::from_hex(bad), Err(SealError::BadKey)));
        }
    }
}
