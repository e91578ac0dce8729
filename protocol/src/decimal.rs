//! Exact decimals for prices and volumes.
//!
//! A price of 1.08543 is the integer 108543 at scale 5. Binary floats cannot
//! hold most such numbers exactly, and a fill reported at 1.0854299999 is a
//! different fill; so nothing on the wire is a float.

use core::cmp::Ordering;
use core::fmt;
use core::hash::{Hash, Hasher};
use core::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An exact decimal number: `mantissa × 10^-scale`.
///
/// Equality and ordering are by value, so `1.5` equals `1.50`; the wire keeps
/// the scale it was given, so a round trip preserves the representation.
///
/// In binary formats (the wire) it is a zigzag varint mantissa followed by
/// one scale byte; in human-readable formats (JSON on the HTTP side) it is a
/// string such as `"1.08543"`, never a JSON number that a client might parse
/// as a float.
#[derive(Clone, Copy)]
pub struct Decimal {
    mantissa: i64,
    scale: u8,
}

/// Why a decimal was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    /// More fractional digits than [`Decimal::MAX_SCALE`].
    #[error("has {0} decimal places, at most 18 are allowed")]
    ScaleTooLarge(usize),
    /// The value does not fit in a signed 64-bit mantissa.
    #[error("is too large to represent exactly")]
    Overflow,
    /// The text is empty or has no digits where digits are needed.
    #[error("is not a decimal number: digits are missing")]
    MissingDigits,
    /// A character other than a digit, one leading `-` and one `.`.
    #[error("is not a decimal number: unexpected {ch:?} at byte {position}")]
    InvalidCharacter {
        /// The refused character.
        ch: char,
        /// Its byte offset.
        position: usize,
    },
}

impl Decimal {
    /// The largest scale: 18 fractional digits, as many as an `i64` can carry
    /// for a value of at least one unit.
    pub const MAX_SCALE: u8 = 18;

    /// Zero at scale 0.
    pub const ZERO: Decimal = Decimal {
        mantissa: 0,
        scale: 0,
    };

    /// `mantissa × 10^-scale`; refuses a scale above [`Decimal::MAX_SCALE`].
    pub const fn new(mantissa: i64, scale: u8) -> Result<Self, DecimalError> {
        if scale > Self::MAX_SCALE {
            return Err(DecimalError::ScaleTooLarge(scale as usize));
        }
        Ok(Self { mantissa, scale })
    }

    /// The integer mantissa.
    pub const fn mantissa(self) -> i64 {
        self.mantissa
    }

    /// The number of fractional digits.
    pub const fn scale(self) -> u8 {
        self.scale
    }

    /// Whether the value is greater than zero.
    pub const fn is_positive(self) -> bool {
        self.mantissa > 0
    }

    /// Whether the value is zero, at any scale.
    pub const fn is_zero(self) -> bool {
        self.mantissa == 0
    }

    /// The same value with trailing fractional zeros removed (`1.500` → `1.5`).
    pub const fn normalized(self) -> Self {
        let mut value = self;
        while value.scale > 0 && value.mantissa % 10 == 0 {
            value.mantissa /= 10;
            value.scale -= 1;
        }
        value
    }

    /// The mantissa at scale 18, exact in an `i128`, to compare any two values.
    fn at_max_scale(self) -> i128 {
        self.mantissa as i128 * 10i128.pow((Self::MAX_SCALE - self.scale) as u32)
    }
}

impl PartialEq for Decimal {
    fn eq(&self, other: &Self) -> bool {
        self.at_max_scale() == other.at_max_scale()
    }
}

impl Eq for Decimal {}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Self) -> Ordering {
        self.at_max_scale().cmp(&other.at_max_scale())
    }
}

impl Hash for Decimal {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Equal values hash equally whatever their scale.
        let value = self.normalized();
        value.mantissa.hash(state);
        value.scale.hash(state);
    }
}

impl FromStr for Decimal {
    type Err = DecimalError;

    /// Parses `-?digits(.digits)?`, nothing else: no exponent, no spaces, no
    /// `+`, no leading or trailing dot.
    fn from_str(text: &str) -> Result<Self, DecimalError> {
        let (negative, digits_from) = match text.as_bytes().first() {
            Some(b'-') => (true, 1),
            _ => (false, 0),
        };
        let mut mantissa: i64 = 0;
        let mut scale: usize = 0;
        let mut seen_dot = false;
        let mut digits_before_dot = 0usize;
        for (position, ch) in text.char_indices().skip(digits_from) {
            match ch {
                '0'..='9' => {
                    let digit = i64::from(ch as u8 - b'0');
                    // Accumulate negatively so that i64::MIN parses too.
                    mantissa = mantissa
                        .checked_mul(10)
                        .and_then(|m| m.checked_sub(digit))
                        .ok_or(DecimalError::Overflow)?;
                    if seen_dot {
                        scale += 1;
                    } else {
                        digits_before_dot += 1;
                    }
                }
                '.' if !seen_dot => {
                    if digits_before_dot == 0 {
                        return Err(DecimalError::MissingDigits);
                    }
                    seen_dot = true;
                }
                _ => return Err(DecimalError::InvalidCharacter { ch, position }),
            }
        }
        if digits_before_dot == 0 || (seen_dot && scale == 0) {
            return Err(DecimalError::MissingDigits);
        }
        if scale > usize::from(Self::MAX_SCALE) {
            return Err(DecimalError::ScaleTooLarge(scale));
        }
        let mantissa = if negative {
            mantissa
        } else {
            mantissa.checked_neg().ok_or(DecimalError::Overflow)?
        };
        Self::new(mantissa, scale as u8)
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.mantissa < 0 {
            f.write_str("-")?;
        }
        let magnitude = self.mantissa.unsigned_abs();
        if self.scale == 0 {
            return write!(f, "{magnitude}");
        }
        let unit = 10u64.pow(u32::from(self.scale));
        write!(
            f,
            "{}.{:0width$}",
            magnitude / unit,
            magnitude % unit,
            width = usize::from(self.scale)
        )
    }
}

impl fmt::Debug for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Decimal({self})")
    }
}

#[derive(Serialize, Deserialize)]
struct WireDecimal {
    mantissa: i64,
    scale: u8,
}

impl Serialize for Decimal {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            WireDecimal {
                mantissa: self.mantissa,
                scale: self.scale,
            }
            .serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for Decimal {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            // 20 digits, a sign and a dot cover every i64 at every scale.
            let text = heapless::String::<40>::deserialize(deserializer)?;
            text.parse().map_err(serde::de::Error::custom)
        } else {
            let wire = WireDecimal::deserialize(deserializer)?;
            Decimal::new(wire.mantissa, wire.scale).map_err(serde::de::Error::custom)
        }
    }
}
