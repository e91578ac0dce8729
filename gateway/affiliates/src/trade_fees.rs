//! What the platform charges for a fill, by symbol group, and the tiers of
//! the per-trade commission an affiliate earns on it.
//!
//! A rule is written `group:SYMBOLS=FEE`, for example `fx:EURUSD,GBP*=250/lot`
//! (GBP 2.50 per lot on EURUSD and every symbol starting with GBP) or
//! `indices:UK100=2bp@10` (2 basis points of the notional, with 10 units
//! per lot). Symbols compare case-insensitively; a trailing `*` makes a
//! prefix (brokers add suffixes such as `EURUSD.m`), and `*` alone matches
//! every symbol. The first rule that matches sets the fee; a symbol no rule
//! matches costs nothing and earns nothing.
//!
//! Rounding, as everywhere in the ledger: the fee is rounded half up to
//! the minor unit once, from exact integer arithmetic, and the commission
//! is the tier's rate of that fee, rounded half up again.

use std::fmt;
use std::str::FromStr;

use crate::money::{Bps, MAX_AMOUNT, Minor};

/// Lots are counted in units of 10^-8 lot.
const LOT_E8: i128 = 100_000_000;

/// Which symbols a rule covers (stored upper-case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SymbolPattern {
    /// This symbol only.
    Exact(String),
    /// Every symbol starting with this (empty: every symbol).
    Prefix(String),
}

impl SymbolPattern {
    fn matches(&self, symbol: &str) -> bool {
        let symbol = symbol.to_ascii_uppercase();
        match self {
            Self::Exact(name) => symbol == *name,
            Self::Prefix(start) => symbol.starts_with(start.as_str()),
        }
    }
}

impl fmt::Display for SymbolPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(name) => f.write_str(name),
            Self::Prefix(start) => write!(f, "{start}*"),
        }
    }
}

/// The platform's fee for a fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fee {
    /// Minor units per lot, pro rata for part lots.
    PerLot(Minor),
    /// Basis points of the notional: price × lots × `contract_size`, with
    /// the price taken to be in the programme's currency (true of symbols
    /// quoted in it; for others, use a per-lot fee).
    NotionalBps {
        /// The share.
        bps: u32,
        /// Units of the instrument in one lot (100 000 for a standard FX
        /// lot).
        contract_size: u64,
    },
}

/// One rule of the fee schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeeRule {
    /// The group's name, for people reading the settings.
    pub group: String,
    /// The symbols it covers.
    pub symbols: Vec<SymbolPattern>,
    /// What a fill of one of them costs.
    pub fee: Fee,
}

/// A price as an exact decimal: `mantissa × 10^-scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    /// The digits.
    pub mantissa: i64,
    /// Where the point goes.
    pub scale: u32,
}

/// Why a fee could not be computed: the fill earns nothing, and the reader
/// says why once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeeError {
    /// A share of notional needs the fill's price.
    #[error("the {group} fee is a share of notional, and the fill has no price")]
    NoPrice {
        /// The rule's group.
        group: String,
    },
    /// The fee would be negative or larger than any amount the ledger takes.
    #[error("the {group} fee for this fill is out of range")]
    OutOfRange {
        /// The rule's group.
        group: String,
    },
}

/// The fee for a fill of `volume_e8` lots of `symbol` at `price`, with the
/// rule's group; `Ok(None)` when no rule covers the symbol.
/// `minor_exponent` is the programme currency's (2 for GBP).
pub fn fee_for(
    rules: &[FeeRule],
    symbol: &str,
    volume_e8: u64,
    price: Option<Price>,
    minor_exponent: u32,
) -> Result<Option<(String, Minor)>, FeeError> {
    let Some(rule) = rules
        .iter()
        .find(|rule| rule.symbols.iter().any(|p| p.matches(symbol)))
    else {
        return Ok(None);
    };
    let out_of_range = || FeeError::OutOfRange {
        group: rule.group.clone(),
    };
    let volume = i128::from(volume_e8);
    let (numerator, denominator) = match rule.fee {
        Fee::PerLot(per_lot) => (
            i128::from(per_lot)
                .checked_mul(volume)
                .ok_or_else(out_of_range)?,
            LOT_E8,
        ),
        Fee::NotionalBps { bps, contract_size } => {
            let price = price.ok_or_else(|| FeeError::NoPrice {
                group: rule.group.clone(),
            })?;
            let numerator = i128::from(price.mantissa)
                .checked_mul(volume)
                .and_then(|n| n.checked_mul(i128::from(contract_size)))
                .and_then(|n| n.checked_mul(10i128.checked_pow(minor_exponent)?))
                .and_then(|n| n.checked_mul(i128::from(bps)))
                .ok_or_else(out_of_range)?;
            let denominator = 10i128
                .checked_pow(price.scale)
                .and_then(|d| d.checked_mul(LOT_E8 * 10_000))
                .ok_or_else(out_of_range)?;
            (numerator, denominator)
        }
    };
    if numerator < 0 {
        return Err(out_of_range());
    }
    // Half up: (2n + d) / 2d.
    let fee = numerator
        .checked_mul(2)
        .and_then(|n| n.checked_add(denominator))
        .zip(denominator.checked_mul(2))
        .map(|(n, d)| n / d)
        .ok_or_else(out_of_range)?;
    let fee = Minor::try_from(fee)
        .ok()
        .filter(|fee| *fee <= MAX_AMOUNT)
        .ok_or_else(out_of_range)?;
    Ok(Some((rule.group.clone(), fee)))
}

impl FromStr for FeeRule {
    type Err = String;

    /// `group:SYMBOLS=FEE`: see the module's documentation.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            format!(
                "trade fee {text:?}: {why} (expected group:SYMBOL,PREFIX*=250/lot or group:SYMBOL=2bp@100000)"
            )
        };
        let (group, rest) = text.split_once(':').ok_or_else(|| bad("no group name"))?;
        let (symbols, fee) = rest.split_once('=').ok_or_else(|| bad("no fee"))?;
        let group = group.trim();
        if group.is_empty()
            || !group
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(bad("the group name is letters, digits, - and _"));
        }
        let symbols = symbols
            .split(',')
            .map(|symbol| {
                let symbol = symbol.trim().to_ascii_uppercase();
                let (name, prefix) = match symbol.strip_suffix('*') {
                    Some(start) => (start.to_owned(), true),
                    None => (symbol, false),
                };
                if (name.is_empty() && !prefix)
                    || name.len() > 32
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || ".#_-+".contains(c))
                {
                    return Err(bad(
                        "a symbol is 1-32 letters, digits or .#_-+, with * to end a prefix",
                    ));
                }
                Ok(if prefix {
                    SymbolPattern::Prefix(name)
                } else {
                    SymbolPattern::Exact(name)
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let fee = fee.trim();
        let fee = if let Some(per_lot) = fee.strip_suffix("/lot") {
            let per_lot: Minor = per_lot
                .trim()
                .parse()
                .map_err(|_| bad("a per-lot fee is whole minor units"))?;
            if !(0..=MAX_AMOUNT).contains(&per_lot) {
                return Err(bad("a per-lot fee is 0 or more minor units"));
            }
            Fee::PerLot(per_lot)
        } else if let Some((bps, contract)) = fee.split_once("bp@") {
            let bps: u32 = bps
                .trim()
                .parse()
                .ok()
                .filter(|bps| *bps <= 10_000)
                .ok_or_else(|| bad("a share of notional is 0 to 10000 basis points"))?;
            let contract_size: u64 = contract
                .trim()
                .parse()
                .ok()
                .filter(|size| (1..=1_000_000_000).contains(size))
                .ok_or_else(|| bad("the contract size is 1 to 10^9 units per lot"))?;
            Fee::NotionalBps { bps, contract_size }
        } else {
            return Err(bad("the fee is N/lot or Nbp@CONTRACT_SIZE"));
        };
        Ok(Self {
            group: group.to_owned(),
            symbols,
            fee,
        })
    }
}

impl fmt::Display for FeeRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let symbols: Vec<String> = self.symbols.iter().map(ToString::to_string).collect();
        write!(f, "{}:{}=", self.group, symbols.join(","))?;
        match self.fee {
            Fee::PerLot(per_lot) => write!(f, "{per_lot}/lot"),
            Fee::NotionalBps { bps, contract_size } => write!(f, "{bps}bp@{contract_size}"),
        }
    }
}

/// One tier of the per-trade commission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TradeTier {
    /// The least measure (active referred traders, or whole lots, in the
    /// month before) that reaches it.
    pub from: u64,
    /// The share of the platform's fee the affiliate earns.
    pub rate: Bps,
}

/// What sets an affiliate's tier for a month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TierBasis {
    /// Referred customers with at least one fill in the month before.
    #[default]
    ActiveTraders,
    /// Whole lots those customers filled in the month before.
    VolumeLots,
}

impl FromStr for TierBasis {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "active-traders" => Ok(Self::ActiveTraders),
            "volume-lots" => Ok(Self::VolumeLots),
            other => Err(format!(
                "tier basis {other:?}: expected active-traders or volume-lots"
            )),
        }
    }
}

impl fmt::Display for TierBasis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ActiveTraders => "active-traders",
            Self::VolumeLots => "volume-lots",
        })
    }
}

/// The default tiers: 0.5% from the first active trader, 1% from 10, 1.5%
/// from 25, 2% from 50.
pub fn default_tiers() -> Vec<TradeTier> {
    [(0, 50), (10, 100), (25, 150), (50, 200)]
        .into_iter()
        .map(|(from, bps)| TradeTier {
            from,
            rate: Bps(bps),
        })
        .collect()
}

/// Parses tiers written `FROM:BPS,FROM:BPS,…`, lowest first: the first
/// from 0, each next from a larger measure, at most 255, each rate at most
/// 10000 basis points.
pub fn parse_tiers(text: &str) -> Result<Vec<TradeTier>, String> {
    let bad =
        |why: &str| format!("trade tiers {text:?}: {why} (expected 0:50,10:100,25:150,50:200)");
    let tiers = text
        .split(',')
        .map(|tier| {
            let (from, bps) = tier
                .split_once(':')
                .ok_or_else(|| bad("each tier is FROM:BPS"))?;
            let from: u64 = from
                .trim()
                .parse()
                .map_err(|_| bad("FROM is a whole number"))?;
            let bps: u32 = bps
                .trim()
                .parse()
                .ok()
                .filter(|bps| *bps <= 10_000)
                .ok_or_else(|| bad("BPS is 0 to 10000"))?;
            Ok(TradeTier {
                from,
                rate: Bps(bps),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    check_tiers(&tiers).map_err(|why| bad(&why))?;
    Ok(tiers)
}

/// Whether `tiers` can be used: see [`parse_tiers`].
pub fn check_tiers(tiers: &[TradeTier]) -> Result<(), String> {
    if tiers.first().map(|t| t.from) != Some(0) {
        return Err("the first tier starts from 0".into());
    }
    if tiers.len() > usize::from(u8::MAX) {
        return Err("at most 255 tiers".into());
    }
    if tiers.windows(2).any(|pair| pair[1].from <= pair[0].from) {
        return Err("each tier starts above the one before".into());
    }
    Ok(())
}

/// The tier (1 for the lowest) a measure reaches, and its rate.
pub fn tier_of(tiers: &[TradeTier], measure: u64) -> (u8, Bps) {
    let reached = tiers.iter().rposition(|t| t.from <= measure).unwrap_or(0);
    let rate = tiers.get(reached).map_or(Bps(0), |t| t.rate);
    (u8::try_from(reached + 1).unwrap_or(u8::MAX), rate)
}

/// Tiers written back as `FROM:BPS,…`.
pub fn tiers_text(tiers: &[TradeTier]) -> String {
    tiers
        .iter()
        .map(|t| format!("{}:{}", t.from, t.rate.0))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(texts: &[&str]) -> Vec<FeeRule> {
        texts.iter().map(|t| t.parse().unwrap()).collect()
    }

    #[test]
    fn a_per_lot_fee_is_pro_rata_and_rounded_half_up_once() {
        let rules = rules(&["fx:EURUSD,GBP*=250/lot", "rest:*=100/lot"]);
        // 0.10 lot of EURUSD: 25.0 pence.
        assert_eq!(
            fee_for(&rules, "EURUSD", 10_000_000, None, 2),
            Ok(Some(("fx".into(), 25)))
        );
        // 0.01 lot of gbpjpy.m (a prefix, any case): 2.5 → 3 pence.
        assert_eq!(
            fee_for(&rules, "gbpjpy.m", 1_000_000, None, 2),
            Ok(Some(("fx".into(), 3)))
        );
        // Anything else: the catch-all. 0.002 lot → 0.2 → 0.
        assert_eq!(
            fee_for(&rules, "XAUUSD", 200_000, None, 2),
            Ok(Some(("rest".into(), 0)))
        );
        assert_eq!(fee_for(&rules[..1], "XAUUSD", 1, None, 2), Ok(None));
    }

    #[test]
    fn a_share_of_notional_uses_the_exact_price() {
        let rules = rules(&["indices:UK100=2bp@10"]);
        // 1.5 lots × 10 × 8123.45 = 121 851.75 GBP; 2 bp = 24.37035 GBP.
        let price = Price {
            mantissa: 812_345,
            scale: 2,
        };
        assert_eq!(
            fee_for(&rules, "UK100", 150_000_000, Some(price), 2),
            Ok(Some(("indices".into(), 2_437)))
        );
        assert!(matches!(
            fee_for(&rules, "UK100", 1, None, 2),
            Err(FeeError::NoPrice { .. })
        ));
        let negative = Price {
            mantissa: -1,
            scale: 0,
        };
        assert!(matches!(
            fee_for(&rules, "UK100", 1, Some(negative), 2),
            Err(FeeError::OutOfRange { .. })
        ));
    }

    #[test]
    fn rules_and_tiers_read_back_as_written_and_refuse_nonsense() {
        for text in ["fx:EURUSD,GBP*=250/lot", "all:*=0/lot", "ix:UK100=2bp@10"] {
            assert_eq!(text.parse::<FeeRule>().unwrap().to_string(), text);
        }
        for bad in [
            "EURUSD=250/lot",
            "fx:=250/lot",
            "fx:EURUSD=2.5/lot",
            "fx:EURUSD=-1/lot",
            "fx:EURUSD=2bp",
            "fx:EURUSD=10001bp@1",
            "fx:EUR USD=1/lot",
        ] {
            assert!(bad.parse::<FeeRule>().is_err(), "{bad}");
        }
        assert_eq!(
            tiers_text(&parse_tiers("0:50,10:100").unwrap()),
            "0:50,10:100"
        );
        for bad in ["", "5:50", "0:50,0:60", "0:50,10:10001", "0:50;10:100"] {
            assert!(parse_tiers(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_tier_starts_exactly_at_its_threshold() {
        let tiers = default_tiers();
        assert_eq!(tier_of(&tiers, 0), (1, Bps(50)));
        assert_eq!(tier_of(&tiers, 9), (1, Bps(50)));
        assert_eq!(tier_of(&tiers, 10), (2, Bps(100)));
        assert_eq!(tier_of(&tiers, 24), (2, Bps(100)));
        assert_eq!(tier_of(&tiers, 25), (3, Bps(150)));
        assert_eq!(tier_of(&tiers, 50), (4, Bps(200)));
        assert_eq!(tier_of(&tiers, u64::MAX), (4, Bps(200)));
    }
}
