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

/// The largest running total the ledger keeps, either sign: 10^15 minor
/// units (GBP 10 trillion). A customer's spend, an affiliate's earnings and
/// every balance and payout made of them stay within it, far inside `i64`;
/// an event that would take a total past it is refused, never wrapped.
pub const MAX_TOTAL: Minor = 1_000_000_000_000_000;

/// A running total would pass [`MAX_TOTAL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "a running total would pass {MAX_TOTAL} minor units, the most the ledger keeps; nothing was recorded"
)]
pub struct TotalOutOfRange;

/// `a + b`, or an error past [`MAX_TOTAL`] (the release build has no
/// overflow checks: a plain `+` would wrap).
pub fn total(a: Minor, b: Minor) -> Result<Minor, TotalOutOfRange> {
    a.checked_add(b)
        .filter(|sum| sum.unsigned_abs() <= MAX_TOTAL.unsigned_abs())
        .ok_or(TotalOutOfRange)
}

/// The sum of `amounts`, or an error past [`MAX_TOTAL`].
pub fn sum(amounts: impl IntoIterator<Item = Minor>) -> Result<Minor, TotalOutOfRange> {
    amounts.into_iter().try_fold(0, total)
}

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

/// An active ISO 4217 currency, which knows how many digits its minor unit
/// has (JPY 0, GBP 2, BHD 3).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

/// Every active ISO 4217 currency with its minor-unit exponent, sorted by
/// code (ISO 4217 list one, as amended to 2025: HRK withdrawn; XCG and ZWG
/// added). Funds codes with no minor unit (XAU, XDR, XXX, …) are left out:
/// nobody pays a subscription in them.
const ISO_4217: [([u8; 3], u32); 169] = [
    (*b"AED", 2),
    (*b"AFN", 2),
    (*b"ALL", 2),
    (*b"AMD", 2),
    (*b"ANG", 2),
    (*b"AOA", 2),
    (*b"ARS", 2),
    (*b"AUD", 2),
    (*b"AWG", 2),
    (*b"AZN", 2),
    (*b"BAM", 2),
    (*b"BBD", 2),
    (*b"BDT", 2),
    (*b"BGN", 2),
    (*b"BHD", 3),
    (*b"BIF", 0),
    (*b"BMD", 2),
    (*b"BND", 2),
    (*b"BOB", 2),
    (*b"BOV", 2),
    (*b"BRL", 2),
    (*b"BSD", 2),
    (*b"BTN", 2),
    (*b"BWP", 2),
    (*b"BYN", 2),
    (*b"BZD", 2),
    (*b"CAD", 2),
    (*b"CDF", 2),
    (*b"CHE", 2),
    (*b"CHF", 2),
    (*b"CHW", 2),
    (*b"CLF", 4),
    (*b"CLP", 0),
    (*b"CNY", 2),
    (*b"COP", 2),
    (*b"COU", 2),
    (*b"CRC", 2),
    (*b"CUC", 2),
    (*b"CUP", 2),
    (*b"CVE", 2),
    (*b"CZK", 2),
    (*b"DJF", 0),
    (*b"DKK", 2),
    (*b"DOP", 2),
    (*b"DZD", 2),
    (*b"EGP", 2),
    (*b"ERN", 2),
    (*b"ETB", 2),
    (*b"EUR", 2),
    (*b"FJD", 2),
    (*b"FKP", 2),
    (*b"GBP", 2),
    (*b"GEL", 2),
    (*b"GHS", 2),
    (*b"GIP", 2),
    (*b"GMD", 2),
    (*b"GNF", 0),
    (*b"GTQ", 2),
    (*b"GYD", 2),
    (*b"HKD", 2),
    (*b"HNL", 2),
    (*b"HTG", 2),
    (*b"HUF", 2),
    (*b"IDR", 2),
    (*b"ILS", 2),
    (*b"INR", 2),
    (*b"IQD", 3),
    (*b"IRR", 2),
    (*b"ISK", 0),
    (*b"JMD", 2),
    (*b"JOD", 3),
    (*b"JPY", 0),
    (*b"KES", 2),
    (*b"KGS", 2),
    (*b"KHR", 2),
    (*b"KMF", 0),
    (*b"KPW", 2),
    (*b"KRW", 0),
    (*b"KWD", 3),
    (*b"KYD", 2),
    (*b"KZT", 2),
    (*b"LAK", 2),
    (*b"LBP", 2),
    (*b"LKR", 2),
    (*b"LRD", 2),
    (*b"LSL", 2),
    (*b"LYD", 3),
    (*b"MAD", 2),
    (*b"MDL", 2),
    (*b"MGA", 2),
    (*b"MKD", 2),
    (*b"MMK", 2),
    (*b"MNT", 2),
    (*b"MOP", 2),
    (*b"MRU", 2),
    (*b"MUR", 2),
    (*b"MVR", 2),
    (*b"MWK", 2),
    (*b"MXN", 2),
    (*b"MXV", 2),
    (*b"MYR", 2),
    (*b"MZN", 2),
    (*b"NAD", 2),
    (*b"NGN", 2),
    (*b"NIO", 2),
    (*b"NOK", 2),
    (*b"NPR", 2),
    (*b"NZD", 2),
    (*b"OMR", 3),
    (*b"PAB", 2),
    (*b"PEN", 2),
    (*b"PGK", 2),
    (*b"PHP", 2),
    (*b"PKR", 2),
    (*b"PLN", 2),
    (*b"PYG", 0),
    (*b"QAR", 2),
    (*b"RON", 2),
    (*b"RSD", 2),
    (*b"RUB", 2),
    (*b"RWF", 0),
    (*b"SAR", 2),
    (*b"SBD", 2),
    (*b"SCR", 2),
    (*b"SDG", 2),
    (*b"SEK", 2),
    (*b"SGD", 2),
    (*b"SHP", 2),
    (*b"SLE", 2),
    (*b"SLL", 2),
    (*b"SOS", 2),
    (*b"SRD", 2),
    (*b"SSP", 2),
    (*b"STN", 2),
    (*b"SVC", 2),
    (*b"SYP", 2),
    (*b"SZL", 2),
    (*b"THB", 2),
    (*b"TJS", 2),
    (*b"TMT", 2),
    (*b"TND", 3),
    (*b"TOP", 2),
    (*b"TRY", 2),
    (*b"TTD", 2),
    (*b"TWD", 2),
    (*b"TZS", 2),
    (*b"UAH", 2),
    (*b"UGX", 0),
    (*b"USD", 2),
    (*b"USN", 2),
    (*b"UYI", 0),
    (*b"UYU", 2),
    (*b"UYW", 4),
    (*b"UZS", 2),
    (*b"VED", 2),
    (*b"VES", 2),
    (*b"VND", 0),
    (*b"VUV", 0),
    (*b"WST", 2),
    (*b"XAF", 0),
    (*b"XCD", 2),
    (*b"XCG", 2),
    (*b"XOF", 0),
    (*b"XPF", 0),
    (*b"YER", 2),
    (*b"ZAR", 2),
    (*b"ZMW", 2),
    (*b"ZWG", 2),
    (*b"ZWL", 2),
];

impl Currency {
    /// Pound sterling, the programme's default.
    pub const GBP: Self = Self(*b"GBP");

    /// The code as text.
    pub fn as_str(&self) -> &str {
        // Only codes from the table get in (see `from_str`).
        std::str::from_utf8(&self.0).unwrap_or("???")
    }

    /// How many decimal digits the minor unit has: `amount_minor` is the
    /// amount times 10 to this power.
    pub fn exponent(&self) -> u32 {
        ISO_4217
            .binary_search_by(|(code, _)| code.cmp(&self.0))
            .map_or(2, |at| ISO_4217[at].1)
    }

    /// `minor` as a decimal in this currency's major unit, for people and
    /// CSV: `9.00` (GBP), `3000` (JPY), `-1.250` (BHD).
    pub fn format_major(&self, minor: Minor) -> String {
        let sign = if minor < 0 { "-" } else { "" };
        let magnitude = minor.unsigned_abs();
        match self.exponent() {
            0 => format!("{sign}{magnitude}"),
            exponent => {
                let scale = 10u64.pow(exponent);
                let width = exponent as usize;
                format!("{sign}{}.{:0width$}", magnitude / scale, magnitude % scale)
            }
        }
    }
}

/// A currency code that is not an active ISO 4217 code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("currency {0:?} is not an active ISO 4217 currency code (like GBP, EUR, USD, JPY)")]
pub struct BadCurrency(pub String);

impl FromStr for Currency {
    type Err = BadCurrency;

    fn from_str(text: &str) -> Result<Self, BadCurrency> {
        match text.as_bytes() {
            &[a, b, c]
                if ISO_4217
                    .binary_search_by(|(code, _)| code.cmp(&[a, b, c]))
                    .is_ok() =>
            {
                Ok(Self([a, b, c]))
            }
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
    fn totals_past_the_limit_are_errors_not_wraps() {
        assert_eq!(total(MAX_TOTAL - 1, 1), Ok(MAX_TOTAL));
        assert_eq!(total(MAX_TOTAL, 1), Err(TotalOutOfRange));
        assert_eq!(total(-MAX_TOTAL, -1), Err(TotalOutOfRange));
        assert_eq!(total(i64::MAX, 1), Err(TotalOutOfRange));
        assert_eq!(total(i64::MIN, -1), Err(TotalOutOfRange));
        assert_eq!(sum([MAX_AMOUNT; 1_000]), Ok(1_000 * MAX_AMOUNT));
        assert_eq!(sum([MAX_AMOUNT; 1_001]), Err(TotalOutOfRange));
        assert_eq!(sum([5, -7, 2]), Ok(0));
    }

    #[test]
    fn only_active_iso_4217_codes_are_currencies() {
        assert_eq!("GBP".parse::<Currency>(), Ok(Currency::GBP));
        for good in ["EUR", "USD", "JPY", "BHD", "CLF", "XOF", "ZWG"] {
            assert_eq!(good.parse::<Currency>().unwrap().as_str(), good);
        }
        for bad in [
            "ZZZ", "XXX", "XAU", "HRK", "gbp", "GB", "GBPX", "G3P", "", "£",
        ] {
            assert!(bad.parse::<Currency>().is_err(), "{bad}");
        }
        assert!(ISO_4217.windows(2).all(|w| w[0].0 < w[1].0), "sorted");
    }

    #[test]
    fn amounts_print_with_their_currencys_minor_digits() {
        let gbp = Currency::GBP;
        assert_eq!(gbp.format_major(900), "9.00");
        assert_eq!(gbp.format_major(-5), "-0.05");
        assert_eq!(gbp.format_major(123_456), "1234.56");
        assert_eq!(gbp.format_major(0), "0.00");
        let jpy: Currency = "JPY".parse().unwrap();
        assert_eq!(jpy.format_major(3_000), "3000");
        assert_eq!(jpy.format_major(-3_000), "-3000");
        let bhd: Currency = "BHD".parse().unwrap();
        assert_eq!(bhd.format_major(1_250), "1.250");
        assert_eq!(bhd.format_major(-5), "-0.005");
        let clf: Currency = "CLF".parse().unwrap();
        assert_eq!(clf.format_major(12_345), "1.2345");
        assert_eq!(gbp.format_major(i64::MIN), "-92233720368547758.08");
    }
}
