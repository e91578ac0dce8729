//! Per-trade commissions: each fill of a customer an affiliate referred
//! earns the affiliate its tier's share of the platform's fee for the fill,
//! once per fill (device, report sequence) however often the fill feed
//! hands it over. The tier for a calendar month is fixed by the first fill
//! of that month from the month before's activity (active referred traders
//! or their lots), so every fill of a month earns at the same tier, and a
//! late fill of the month before cannot change it afterwards.
//!
//! The commission is an ordinary ledger entry: it waits out the holding
//! period, an open fraud case holds it, payouts pay it; a fill an admin
//! busts, or its device reports reversed, is reversed (or clawed back once
//! paid).

use std::collections::HashMap;

use super::{Decided, Programme, Referral};
use crate::calendar::{format_date, month_start};
use crate::facts::{CommissionKind, Fact, Referrer};
use crate::money::{Bps, Minor, commission, total};
use crate::trade_fees::{FeeError, Price, TierBasis, fee_for, tier_of};

/// A fill as the fill feed's reader hands it to the programme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TradeFill {
    /// The customer: the device's account.
    pub user_id: String,
    /// The device that reported it.
    pub device_id: String,
    /// Its report sequence.
    pub seq: u64,
    /// The signal it filled, hex.
    pub signal_id: String,
    /// The terminal's ticket, if reported.
    pub ticket: Option<u64>,
    /// What was traded.
    pub symbol: String,
    /// Lots, in units of 10^-8 lot.
    pub volume_e8: u64,
    /// The execution price, if reported.
    pub price: Option<Price>,
    /// When the gateway stored it, Unix ms: its day and month.
    pub filled_at_ms: u64,
}

/// A device's report that fills it reported before were undone, as the
/// fill feed's reader hands it to the programme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TradeReversal {
    /// The customer: the device's account.
    pub user_id: String,
    /// The device that reported it.
    pub device_id: String,
    /// The reversal's own report sequence: it undoes fills numbered below.
    pub seq: u64,
    /// The signal whose fills it undoes, hex.
    pub signal_id: String,
    /// The ticket of the fills it undoes.
    pub ticket: u64,
}

/// A fill counted for an affiliate's per-trade commission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountedFill {
    /// The referring affiliate.
    pub affiliate_id: String,
    /// The customer.
    pub user_id: String,
    /// The signal it filled, hex.
    pub signal_id: String,
    /// The terminal's ticket, if reported.
    pub ticket: Option<u64>,
    /// What was traded.
    pub symbol: String,
    /// Lots, in units of 10^-8 lot.
    pub volume_e8: u64,
    /// The platform's fee for it.
    pub fee_minor: Minor,
    /// Its month's first day.
    pub month: i64,
    /// Busted by an admin, or reported reversed by its device.
    pub busted: bool,
}

/// An affiliate's referred trading in one month.
#[derive(Debug, Clone, Default)]
pub(super) struct Activity {
    /// Counted (not busted) fills and their lots (10^-8), per customer.
    pub(super) by_trader: HashMap<String, (u64, u128)>,
}

/// A tier fixed for a month.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TierChoice {
    pub(super) tier: u8,
    pub(super) rate: Bps,
    pub(super) measure: u64,
}

/// The reference a per-trade commission carries where a subscription
/// commission carries its payment: the fill's identity.
pub fn fill_reference(device_id: &str, seq: u64) -> String {
    format!("fill:{device_id}:{seq}")
}

/// Why a bust was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BustError {
    /// No commission-counted fill has that identity.
    #[error("no counted fill {seq} of device {device_id}")]
    UnknownFill {
        /// The device named.
        device_id: String,
        /// The sequence named.
        seq: u64,
    },
    /// A reason is required: the audit trail keeps it.
    #[error("a bust needs a reason")]
    NoReason,
    /// The reversal would take a running total out of range.
    #[error(transparent)]
    OutOfRange(#[from] crate::money::TotalOutOfRange),
}

/// An affiliate's tier now, and what the next one needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierStatus {
    /// What the tiers measure.
    pub basis: TierBasis,
    /// The current month's first day.
    pub month: i64,
    /// The tier for this month (1 for the lowest).
    pub tier: u8,
    /// Its rate.
    pub rate: Bps,
    /// The measure of the month before that set it.
    pub measured: u64,
    /// Whether a fill this month fixed it already (otherwise it is what the
    /// first fill will fix, unless a late fill of last month changes it).
    pub fixed: bool,
    /// This month's measure so far: it sets next month's tier.
    pub this_month: u64,
    /// The tier above the one this month's measure so far would give next
    /// month, if any: its number, rate and least measure.
    pub next: Option<(u8, Bps, u64)>,
}

impl Programme {
    /// The affiliate whose per-trade commissions a customer's fills earn:
    /// referred by an affiliate, not blocked by a confirmed case.
    pub fn fills_earn_for(&self, user_id: &str) -> Option<&str> {
        let customer = self.customers.get(user_id)?;
        match &customer.referral {
            Some(Referral {
                referrer: Referrer::Affiliate { affiliate_id },
                ..
            }) if !customer.blocked => Some(affiliate_id),
            _ => None,
        }
    }

    /// A fill of a customer: counted once for its referrer (with the fee),
    /// the referrer's tier for the fill's month fixed if this is its first
    /// fill there, and the tier's share of the fee earned. A fill counted
    /// before, of a customer nobody referred, or of no volume decides
    /// nothing. A fee that cannot be computed counts the fill with no fee
    /// (returned, for the reader to log).
    pub fn trade_filled(&self, fill: &TradeFill, now_ms: u64) -> (Decided, Option<FeeError>) {
        // No fee schedule: per-trade commissions are off, and fills are
        // not journaled for them at all.
        if self.config.trade_fees.is_empty() {
            return (Decided::replay(), None);
        }
        let Some(affiliate_id) = self.fills_earn_for(&fill.user_id) else {
            return (Decided::replay(), None);
        };
        let key = (fill.device_id.clone(), fill.seq);
        if fill.volume_e8 == 0 || self.trade_fills.contains_key(&key) {
            return (Decided::replay(), None);
        }
        let day = crate::calendar::day_of(fill.filled_at_ms);
        let month = month_start(day);
        // Its device reported it reversed already (the store may hold a
        // later report before an earlier one): counted, busted at once,
        // earning nothing and fixing no tier.
        if let Some(reversal_seq) = self.reversal_of(fill) {
            let facts = vec![
                self.counted(affiliate_id, fill, 0, day, now_ms),
                Fact::TradeBusted {
                    device_id: fill.device_id.clone(),
                    seq: fill.seq,
                    reason: reversed_by_device(reversal_seq),
                    at_ms: now_ms,
                },
            ];
            return (Decided::new(facts), None);
        }
        let (fee, problem) = match fee_for(
            &self.config.trade_fees,
            &fill.symbol,
            fill.volume_e8,
            fill.price,
            self.config.currency.exponent(),
        ) {
            Ok(fee) => (fee.map_or(0, |(_, fee)| fee), None),
            Err(problem) => (0, Some(problem)),
        };
        let mut facts = vec![self.counted(affiliate_id, fill, fee, day, now_ms)];
        let choice = match self.tiers_set.get(&(affiliate_id.to_owned(), month)) {
            Some(choice) => *choice,
            None => {
                let choice = self.tier_from_activity(affiliate_id, month);
                facts.push(Fact::TierSet {
                    affiliate_id: affiliate_id.to_owned(),
                    month,
                    tier: choice.tier,
                    rate: choice.rate,
                    measure: choice.measure,
                    at_ms: now_ms,
                });
                choice
            }
        };
        let entry_id = self.entries.len() as u64 + 1;
        // The affiliate's running total stays within what the ledger keeps
        // (as a payment's commission does); past it, the fill still counts.
        let earned_so_far = self.affiliates.get(affiliate_id).map_or(0, |a| a.earned);
        let fits = total(earned_so_far, commission(fee, choice.rate)).is_ok();
        if let Some(earned) = fits
            .then(|| {
                self.earn(
                    entry_id,
                    affiliate_id,
                    &fill_reference(&fill.device_id, fill.seq),
                    &fill.user_id,
                    CommissionKind::Trade { tier: choice.tier },
                    choice.rate,
                    fee,
                    fill.filled_at_ms,
                    now_ms,
                )
            })
            .flatten()
        {
            facts.push(earned);
        }
        (Decided::new(facts), problem)
    }

    /// The fact that counts `fill` for `affiliate_id` with `fee`.
    fn counted(
        &self,
        affiliate_id: &str,
        fill: &TradeFill,
        fee: Minor,
        day: i64,
        now_ms: u64,
    ) -> Fact {
        Fact::TradeFilled {
            affiliate_id: affiliate_id.to_owned(),
            user_id: fill.user_id.clone(),
            device_id: fill.device_id.clone(),
            seq: fill.seq,
            signal_id: fill.signal_id.clone(),
            ticket: fill.ticket,
            symbol: fill.symbol.clone(),
            volume_e8: fill.volume_e8,
            fee_minor: fee,
            day,
            filled_at_ms: fill.filled_at_ms,
            at_ms: now_ms,
        }
    }

    /// The sequence of a reversal `fill`'s device reported after it for its
    /// signal and ticket, if any.
    fn reversal_of(&self, fill: &TradeFill) -> Option<u64> {
        let ticket = fill.ticket?;
        self.trade_reversals
            .range(
                (fill.device_id.clone(), fill.seq.saturating_add(1))
                    ..=(fill.device_id.clone(), u64::MAX),
            )
            .find(|(_, (signal_id, reversed))| *signal_id == fill.signal_id && *reversed == ticket)
            .map(|((_, seq), _)| *seq)
    }

    /// A device reported its fills of a signal with one ticket undone: each
    /// counted one it reported before the reversal is busted (its commission
    /// reversed while unpaid, clawed back once paid), and the reversal is
    /// kept, so a fill of those the feed hands over later is counted busted.
    /// A reversal seen before, or one of a customer whose fills earn nothing
    /// that names no counted fill, decides nothing. A fill whose reversal
    /// would take a running total out of range is left counted (returned,
    /// for the reader to log).
    pub fn trade_reversed(
        &self,
        reversal: &TradeReversal,
        now_ms: u64,
    ) -> (Decided, Option<crate::money::TotalOutOfRange>) {
        // No fee schedule: no fill was counted, and none will be.
        let key = (reversal.device_id.clone(), reversal.seq);
        if self.config.trade_fees.is_empty() || self.trade_reversals.contains_key(&key) {
            return (Decided::replay(), None);
        }
        let undone: Vec<u64> = self
            .trade_fills
            .range((reversal.device_id.clone(), 0)..(reversal.device_id.clone(), reversal.seq))
            .filter(|(_, fill)| {
                !fill.busted
                    && fill.ticket == Some(reversal.ticket)
                    && fill.signal_id == reversal.signal_id
            })
            .map(|((_, seq), _)| *seq)
            .collect();
        // The affiliate whose fills it undoes, or whose fills to come of
        // the customer it would undo.
        let affiliate_id = match undone.first() {
            Some(&seq) => self.trade_fills[&(reversal.device_id.clone(), seq)]
                .affiliate_id
                .clone(),
            None => match self.fills_earn_for(&reversal.user_id) {
                Some(affiliate_id) => affiliate_id.to_owned(),
                None => return (Decided::replay(), None),
            },
        };
        let mut facts = vec![Fact::TradeReversalReported {
            affiliate_id,
            device_id: reversal.device_id.clone(),
            seq: reversal.seq,
            signal_id: reversal.signal_id.clone(),
            ticket: reversal.ticket,
            at_ms: now_ms,
        }];
        let mut next_entry = self.entries.len() as u64 + 1;
        let mut problem = None;
        for seq in undone {
            let reason = reversed_by_device(reversal.seq);
            match self.bust_facts(&reversal.device_id, seq, &reason, now_ms, &mut next_entry) {
                Ok(busted) => facts.extend(busted),
                Err(e) => problem = Some(e),
            }
        }
        (Decided::new(facts), problem)
    }

    /// The tier `month` gets from the month before's activity.
    fn tier_from_activity(&self, affiliate_id: &str, month: i64) -> TierChoice {
        let before = month_start(month - 1);
        let measure = self
            .trade_activity
            .get(&(affiliate_id.to_owned(), before))
            .map_or(0, |activity| self.measure(activity));
        let (tier, rate) = tier_of(&self.config.trade_tiers, measure);
        TierChoice {
            tier,
            rate,
            measure,
        }
    }

    /// A month's measure: its traders, or their whole lots. A customer a
    /// confirmed fraud case blocked does not count: fake traders must not
    /// lift the tier that pays on real ones.
    fn measure(&self, activity: &Activity) -> u64 {
        let genuine = activity.by_trader.iter().filter(|(user_id, _)| {
            !self
                .customers
                .get(user_id.as_str())
                .is_some_and(|customer| customer.blocked)
        });
        match self.config.tier_basis {
            TierBasis::ActiveTraders => genuine.count() as u64,
            TierBasis::VolumeLots => {
                let lots_e8 = genuine.fold(0u128, |sum, (_, (_, lots))| sum.saturating_add(*lots));
                u64::try_from(lots_e8 / 100_000_000).unwrap_or(u64::MAX)
            }
        }
    }

    /// An admin busts a counted fill: its commission is reversed while
    /// unpaid, clawed back once paid, and the fill leaves its month's
    /// activity. Busting it again is a replay.
    pub fn bust_trade(
        &self,
        device_id: &str,
        seq: u64,
        reason: &str,
        now_ms: u64,
    ) -> Result<Decided, BustError> {
        if reason.trim().is_empty() {
            return Err(BustError::NoReason);
        }
        let record = self
            .trade_fills
            .get(&(device_id.to_owned(), seq))
            .ok_or_else(|| BustError::UnknownFill {
                device_id: device_id.to_owned(),
                seq,
            })?;
        if record.busted {
            return Ok(Decided::replay());
        }
        let mut next_entry = self.entries.len() as u64 + 1;
        let facts = self.bust_facts(device_id, seq, reason, now_ms, &mut next_entry)?;
        Ok(Decided::new(facts))
    }

    /// What busting counted fill `seq` of `device_id` writes: the bust, and
    /// its commission's reversal or clawback, a new entry numbered
    /// `next_entry` (then advanced).
    fn bust_facts(
        &self,
        device_id: &str,
        seq: u64,
        reason: &str,
        now_ms: u64,
        next_entry: &mut u64,
    ) -> Result<Vec<Fact>, crate::money::TotalOutOfRange> {
        let reference = fill_reference(device_id, seq);
        let mut facts = vec![Fact::TradeBusted {
            device_id: device_id.to_owned(),
            seq,
            reason: reason.to_owned(),
            at_ms: now_ms,
        }];
        if let Some(&entry_id) = self.trade_entries.get(&reference) {
            let entry = self.entry(entry_id);
            let taken_back = total(entry.reversed_minor, entry.clawed_back_minor)?;
            let owed_back: Minor = total(entry.amount_minor, -taken_back)?;
            let bust_id = format!("bust:{device_id}:{seq}");
            if owed_back > 0 && entry.payout_id.is_none() {
                facts.push(Fact::CommissionReversed {
                    entry_id,
                    refund_id: bust_id,
                    amount_minor: owed_back,
                    at_ms: now_ms,
                });
            } else if owed_back > 0 {
                facts.push(Fact::ClawbackEntered {
                    entry_id: *next_entry,
                    of_entry: entry_id,
                    affiliate_id: entry.affiliate_id.clone(),
                    refund_id: bust_id,
                    amount_minor: -owed_back,
                    at_ms: now_ms,
                });
                *next_entry += 1;
            }
        }
        Ok(facts)
    }

    /// An affiliate's tier today (`today` a UTC day) and what the next one
    /// needs; None for an affiliate the programme does not know.
    pub fn tier_status(&self, affiliate_id: &str, today: i64) -> Option<TierStatus> {
        self.affiliates.get(affiliate_id)?;
        let month = month_start(today);
        let key = (affiliate_id.to_owned(), month);
        let (choice, fixed) = match self.tiers_set.get(&key) {
            Some(choice) => (*choice, true),
            None => (self.tier_from_activity(affiliate_id, month), false),
        };
        let this_month = self
            .trade_activity
            .get(&key)
            .map_or(0, |activity| self.measure(activity));
        // What next month's tier is on course for, by this month so far,
        // and the tier above that.
        let (heading_for, _) = tier_of(&self.config.trade_tiers, this_month);
        let next = self
            .config
            .trade_tiers
            .get(usize::from(heading_for))
            .map(|t| (heading_for.saturating_add(1), t.rate, t.from));
        Some(TierStatus {
            basis: self.config.tier_basis,
            month,
            tier: choice.tier,
            rate: choice.rate,
            measured: choice.measure,
            fixed,
            this_month,
            next,
        })
    }

    /// How many fills were counted for per-trade commissions.
    pub fn trade_fill_count(&self) -> usize {
        self.trade_fills.len()
    }

    /// A counted fill by its identity.
    pub fn counted_fill(&self, device_id: &str, seq: u64) -> Option<&CountedFill> {
        self.trade_fills.get(&(device_id.to_owned(), seq))
    }

    /// The counted fill a per-trade commission's reference names.
    pub fn counted_fill_of(&self, reference: &str) -> Option<(&str, u64, &CountedFill)> {
        let (device_id, seq) = reference.strip_prefix("fill:")?.rsplit_once(':')?;
        let seq = seq.parse().ok()?;
        let (key, fill) = self
            .trade_fills
            .get_key_value(&(device_id.to_owned(), seq))?;
        Some((key.0.as_str(), seq, fill))
    }

    pub(super) fn apply_trade_filled(&mut self, fact: &Fact) {
        let Fact::TradeFilled {
            affiliate_id,
            user_id,
            device_id,
            seq,
            signal_id,
            ticket,
            symbol,
            volume_e8,
            fee_minor,
            day,
            ..
        } = fact
        else {
            return;
        };
        let month = month_start(*day);
        let volume_e8 = *volume_e8;
        self.trade_fills.insert(
            (device_id.clone(), *seq),
            CountedFill {
                affiliate_id: affiliate_id.clone(),
                user_id: user_id.clone(),
                signal_id: signal_id.clone(),
                ticket: *ticket,
                symbol: symbol.clone(),
                volume_e8,
                fee_minor: *fee_minor,
                month,
                busted: false,
            },
        );
        let activity = self
            .trade_activity
            .entry((affiliate_id.to_owned(), month))
            .or_default();
        let (fills, lots) = activity.by_trader.entry(user_id.to_owned()).or_default();
        *fills += 1;
        *lots = lots.saturating_add(u128::from(volume_e8));
    }

    pub(super) fn apply_trade_busted(&mut self, device_id: &str, seq: u64) {
        let Some(record) = self.trade_fills.get_mut(&(device_id.to_owned(), seq)) else {
            return;
        };
        if record.busted {
            return;
        }
        record.busted = true;
        let record = record.clone();
        if let Some(activity) = self
            .trade_activity
            .get_mut(&(record.affiliate_id.clone(), record.month))
            && let Some((fills, lots)) = activity.by_trader.get_mut(&record.user_id)
        {
            *fills = fills.saturating_sub(1);
            *lots = lots.saturating_sub(u128::from(record.volume_e8));
            if *fills == 0 {
                activity.by_trader.remove(&record.user_id);
            }
        }
    }
}

/// The reason a bust by a device's reversal report gives.
fn reversed_by_device(reversal_seq: u64) -> String {
    format!("reported reversed by the device (report {reversal_seq})")
}

/// A month as `YYYY-MM`.
pub fn month_text(month: i64) -> String {
    format_date(month)[..7].to_owned()
}
