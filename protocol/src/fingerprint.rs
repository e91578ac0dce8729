//! The gateway certificate's fingerprint, as the gateway prints it and as
//! devices pin it: one type, so both sides agree on every byte and colon.

use core::fmt;
use core::str::FromStr;

use sha2::{Digest, Sha256};

/// The SHA-256 fingerprint of a certificate's DER bytes, written as
/// colon-separated uppercase hex like `openssl x509 -fingerprint -sha256`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CertFingerprint(pub [u8; 32]);

impl CertFingerprint {
    /// The fingerprint of a certificate (its DER bytes).
    pub fn of(certificate_der: &[u8]) -> Self {
        Self(Sha256::digest(certificate_der).into())
    }
}

/// Why a fingerprint's text was not understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "a certificate fingerprint is 32 bytes of hex as `eagate serve` prints it \
     (SHA256 AB:CD:…, colons optional)"
)]
pub struct FingerprintParseError;

impl FromStr for CertFingerprint {
    type Err = FingerprintParseError;

    /// Accepts what `eagate serve` prints, with or without the `SHA256`
    /// prefix, colons or spaces, in either case: people copy it from
    /// terminals and emails.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let text = text
            .strip_prefix("SHA256")
            .or_else(|| text.strip_prefix("sha256"))
            .unwrap_or(text);
        let mut digits = text
            .chars()
            .filter(|c| !matches!(c, ':' | ' ' | '=' | '\t'))
            .map(|c| c.to_digit(16).ok_or(FingerprintParseError));
        let mut bytes = [0u8; 32];
        for byte in &mut bytes {
            let high = digits.next().ok_or(FingerprintParseError)??;
            let low = digits.next().ok_or(FingerprintParseError)??;
            *byte = (high * 16 + low) as u8;
        }
        if digits.next().is_some() {
            return Err(FingerprintParseError);
        }
        Ok(Self(bytes))
    }
}

impl fmt::Display for CertFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{byte:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for CertFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertFingerprint({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_parses_as_printed_and_in_looser_forms() {
        let printed = (0..32)
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        let expected: [u8; 32] = core::array::from_fn(|i| i as u8);
        for text in [
            format!("SHA256 {printed}"),
            printed.clone(),
            printed.to_lowercase().replace(':', ""),
        ] {
            assert_eq!(text.parse::<CertFingerprint>().unwrap().0, expected);
        }
        assert_eq!(CertFingerprint(expected).to_string(), printed);
    }

    #[test]
    fn a_short_long_or_non_hex_fingerprint_is_refused() {
        assert!("AB:CD".parse::<CertFingerprint>().is_err());
        assert!("ZZ".repeat(32).parse::<CertFingerprint>().is_err());
        assert!(
            String::from("AB")
                .repeat(33)
                .parse::<CertFingerprint>()
                .is_err()
        );
    }
}
