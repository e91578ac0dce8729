//! Money: integer minor units of one ISO 4217 currency, rates in basis
//! points. Nothing here touches a float.
//!
//! Rounding, written down once: a commission is `base × rate / 10 000`,
//! rounded half up to the minor unit (GBP 0.005 → 0.01). A clawback never
//! recomputes a commission from the refund: it takes a share of the amount
//! that was stored (see [`share_of`]), so a full refund takes back exactly
//! what was earned, to the penny.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An amount in minor units (pence for GBP). Signed, because a clawback
/// after payout is a negative ledger entry.
pub type Minor = i64;

/// The largest amount one payment or refund may carry: 10^12 minor units
/// (GBP 10 billion). Far above any subscription, and small enough that
/// `amount × 10 000` never overflows.
pub const MAX_AMOUNT: Minor = 1_000_000_000_000;

/// A rate in basis points: 1 bp = 0.01%, 10 000 bp = 100%.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Bps(pub u32);

impl Bps {
    /// 100%.
    pub const WHOLE: Self = Self(10_000);
}

/// `base × rate`, rounded half up to the minor unit. `base` is never negative
/// (commissions are computed on payments only).
pub fn commission(base: Minor, rate: Bps) -> Minor {
    debug_assert!(base >= 0);
    let product = i128::from(base) * i128::from(rate.0);
    ((product + 5_000) / 10_000) as Minor
}

/// `stored × part / whole`, rounded half up: the share of a stored amount
/// that `part` of `whole` accounts for. With `part == whole` it is `stored`
/// exactly.
pub fn share_of(stored: Minor, part: Minor, whole: Minor) -> Minor {
    debug_assert!(stored >= 0 && part >= 0 && whole > 0 && part <= whole);
    let product = i128::from(stored) * i128::from(part);
    let whole = i128::from(whole);
    ((2 * product + whole) / (2 * whole)) as Minor
}

/// An ISO 4217 code: three upper-case ASCII letters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl Currency {
    /// Pound sterling, the programme's default.
    pub const GBP: Self = Self(*b"GBP");

    /// The code as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII upper-case letters get in (see `from_str`).
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

/// A currency code that is not three upper-case letters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("currency {0:?} is not an ISO 4217 code (three upper-case letters, like GBP)")]
pub struct BadCurrency(pub String);

impl FromStr for Currency {
    type Err = BadCurrency;

    fn from_str(text: &str) -> Result<Self, BadCurrency> {
        match text.as_bytes() {
            &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_uppercase) => Ok(Self([a, b, c])),
            _ => Err(BadCurrency(text.to_owned())),
        }
    }
}

impl TryFrom<String> for Currency {
    type Error = BadCurrency;

    fn try_from(text: String) -> Result<Self, BadCurrency> {
        text.parse()
    }
}

impl From<Currency> for String {
    fn from(currency: Currency) -> Self {
        currency.as_str().to_owned()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Currency({})", self.as_str())
    }
}

/// `minor` as a decimal with two places (`-12.34`), for people and CSV.
/// Every currency the programme runs in has two minor digits (GBP, EUR, USD).
pub fn format_major(minor: Minor) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let magnitude = minor.unsigned_abs();
    format!("{sign}{}.{:02}", magnitude / 100, magnitude % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commission_rounds_half_up_to_the_penny() {
        // 30% of GBP 29.99 = 8.997 → 9.00
        assert_eq!(commission(2_999, Bps(3_000)), 900);
        // 15% of GBP 0.03 = 0.0045 → 0.00; of 0.10 = 0.015 → 0.02 (half up)
        assert_eq!(commission(3, Bps(1_500)), 0);
        assert_eq!(commission(10, Bps(1_500)), 2);
        // 5% of GBP 0.10 = 0.005 → 0.01
        assert_eq!(commission(10, Bps(500)), 1);
        assert_eq!(commission(9, Bps(500)), 0);
        assert_eq!(commission(MAX_AMOUNT, Bps::WHOLE), MAX_AMOUNT);
    }

    #[test]
    fn a_full_share_is_the_stored_amount_exactly_and_halves_round_up() {
        assert_eq!(share_of(900, 2_999, 2_999), 900);
        assert_eq!(share_of(901, 1, 2), 451);
        assert_eq!(share_of(900, 0, 2_999), 0);
        assert_eq!(share_of(1, 1, 3), 0);
    }

    #[test]
    fn currencies_are_three_upper_case_letters() {
        assert_eq!("GBP".parse::<Currency>(), Ok(Currency::GBP));
        for bad in ["gbp", "GB", "GBPX", "G3P", "", "£"] {
            assert!(bad.parse::<Currency>().is_err(), "{bad}");
        }
    }

    #[test]
    fn minor_units_print_with_two_places() {
        assert_eq!(format_major(900), "9.00");
        assert_eq!(format_major(-5), "-0.05");
        assert_eq!(format_major(123_456), "1234.56");
        assert_eq!(format_major(0), "0.00");
    }
}
