//! Referral codes: ten symbols of Crockford's base 32 (no I, L, O or U),
//! shown as `K7QM2-XR4HD`. 50 random bits: with a million codes issued, a
//! guess hits one about once in a billion tries. Typing is forgiving:
//! case, spaces and hyphens do not matter, and O, I and L read as 0, 1, 1.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Symbols in a code.
pub const CODE_LEN: usize = 10;

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A referral code, in canonical form (ten alphabet symbols, no hyphen).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ReferralCode([u8; CODE_LEN]);

impl ReferralCode {
    /// The code made from 50 of `random`'s bits.
    pub fn from_random(random: u64) -> Self {
        let mut symbols = [0u8; CODE_LEN];
        for (i, symbol) in symbols.iter_mut().enumerate() {
            *symbol = ALPHABET[((random >> (5 * i)) & 31) as usize];
        }
        Self(symbols)
    }

    /// A fresh code from the operating system's random source.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes)?;
        Ok(Self::from_random(u64::from_le_bytes(bytes)))
    }

    /// The ten symbols, no hyphen: the form in links.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

/// Text that is not a referral code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a referral code: codes are 10 letters and digits like K7QM2-XR4HD (no U)")]
pub struct BadCode(pub String);

impl FromStr for ReferralCode {
    type Err = BadCode;

    fn from_str(text: &str) -> Result<Self, BadCode> {
        let bad = || BadCode(text.chars().take(40).collect());
        let mut symbols = [0u8; CODE_LEN];
        let mut len = 0;
        for byte in text.bytes() {
            let symbol = match byte.to_ascii_uppercase() {
                b'-' | b' ' => continue,
                b'O' => b'0',
                b'I' | b'L' => b'1',
                b'U' => return Err(bad()),
                other if ALPHABET.contains(&other) => other,
                _ => return Err(bad()),
            };
            *symbols.get_mut(len).ok_or_else(bad)? = symbol;
            len += 1;
        }
        if len == CODE_LEN {
            Ok(Self(symbols))
        } else {
            Err(bad())
        }
    }
}

impl TryFrom<String> for ReferralCode {
    type Error = BadCode;

    fn try_from(text: String) -> Result<Self, BadCode> {
        text.parse()
    }
}

impl From<ReferralCode> for String {
    fn from(code: ReferralCode) -> Self {
        code.as_str().to_owned()
    }
}

impl fmt::Display for ReferralCode {
    /// The form for people: `K7QM2-XR4HD`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.as_str();
        write!(f, "{}-{}", &text[..5], &text[5..])
    }
}

impl fmt::Debug for ReferralCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReferralCode({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_reads_back_however_it_was_typed() {
        let code = ReferralCode::from_random(0x0123_4567_89ab_cdef);
        let shown = code.to_string();
        assert_eq!(shown.len(), 11);
        assert_eq!(shown.parse::<ReferralCode>(), Ok(code));
        assert_eq!(code.as_str().parse::<ReferralCode>(), Ok(code));
        assert_eq!(
            shown
                .to_lowercase()
                .replace('-', " ")
                .parse::<ReferralCode>(),
            Ok(code)
        );
    }

    #[test]
    fn letters_that_look_like_digits_read_as_the_digits() {
        assert_eq!(
            "OIL23-45678".parse::<ReferralCode>().map(|c| c.to_string()),
            Ok("01123-45678".to_owned())
        );
    }

    #[test]
    fn wrong_lengths_and_symbols_are_refused() {
        for bad in [
            "",
            "K7QM2",
            "K7QM2-XR4HDX",
            "K7QM2-XR4U0",
            "K7QM2_XR4HD",
            "K7QM2-XR4H€",
        ] {
            assert!(bad.parse::<ReferralCode>().is_err(), "{bad}");
        }
    }

    #[test]
    fn generated_codes_differ() {
        let a = ReferralCode::generate().expect("random");
        let b = ReferralCode::generate().expect("random");
        assert_ne!(a, b);
    }
}
