//! The affiliate programme in a sidecar process: its ledger in
//! `<data-dir>/affiliates` (sled of its own, so the sidecar keeps it
//! whichever store devices use), the settings its routes need, and the
//! reader of the fill feed that turns a referred user's first fill into
//! their first trade, and each of their fills into a per-trade commission.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use eagate_affiliates::programme::{TradeFill, TradeReversal};
use eagate_affiliates::trade_fees::Price;
use eagate_affiliates::{JournalError, Ledger, ReferralCode, TradeSide, WriteError};
use eagate_protocol::{Action, Decimal, SignalId};

use crate::config::ServeConfig;
use crate::core::Core;
use crate::payouts::{PayoutRunner, RunError, RunReport, Trigger};
use crate::registry::RegistryError;
use crate::reports::{FeedFill, ReportKind, ReportStoreError, StoredReport};
use crate::signals::SignalLogError;

/// Where the programme reads the time: the wall clock, or a test's.
pub type Clock = crate::clock::Clock;

/// The ledger's directory inside the data directory.
pub const LEDGER_DIR: &str = "affiliates";

/// How long a reversal in the fill feed waits for its report to be stored
/// before it is given up: Redis adds a report's feed entry before the
/// script that stores the report runs, so the reader may see the entry
/// first; a session replaced meanwhile stores it when the device resends.
const REVERSAL_WAIT_MS: u64 = 10 * 60 * 1000;

/// How often the fill feed is read.
const FEED_INTERVAL: Duration = Duration::from_millis(500);

/// How often the payout scheduler looks at the clock.
const SCHEDULER_TICK: Duration = Duration::from_secs(30);

/// Fills read from the feed per round.
const FEED_BATCH: usize = 256;

/// How many batches one read of the fill feed goes through at most: reads
/// past reversals that wait are bounded, and the reader's loop comes back
/// for the rest.
const FEED_PAGES: usize = 64;

/// Devices read from the registry per page when comparing it with the
/// journal.
const DEVICE_PAGE: usize = 500;

/// How often the registry is compared with the journal when no admin
/// change asks for it sooner.
const DEVICE_SWEEP: Duration = Duration::from_secs(60);

/// A digest of a sealed secret, to notice a replaced one without keeping
/// anything of the secret: SHA-256 of the sealed bytes (random nonce and
/// ciphertext), 16 bytes in hex.
fn secret_digest(sealed: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(sealed)[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The programme as the sidecar runs it.
#[derive(Clone)]
pub struct AffiliateDesk {
    /// The journaled programme.
    pub ledger: Arc<Ledger>,
    /// Where referral links land, before `ref` and `click` are added.
    pub landing_page: String,
    /// The public base of `/r/{code}` links.
    pub link_base: String,
    /// Clicks per source address per minute.
    pub click_limit: Arc<crate::click_limit::ClickLimit>,
    /// Who pays affiliates, and the lock that lets one payout run at a time.
    pub payouts: PayoutRunner,
    /// Delivers the programme's events to webhook endpoints (absent where
    /// the desk was made without them).
    pub webhooks: Option<crate::webhooks::Dispatcher>,
    /// Woken when an admin changes a device, so the journal (and the
    /// webhooks) hear of it at once rather than at the next comparison.
    devices_changed: Arc<tokio::sync::Notify>,
    clock: Clock,
}

impl std::fmt::Debug for AffiliateDesk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AffiliateDesk")
            .field("landing_page", &self.landing_page)
            .field("link_base", &self.link_base)
            .finish_non_exhaustive()
    }
}

/// Why the programme could not start.
#[derive(Debug, thiserror::Error)]
pub enum DeskError {
    /// A setting is invalid.
    #[error("affiliate programme settings: {0}")]
    Settings(String),
    /// The ledger could not be opened (another process holds it?).
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// Why reading the fill feed failed; the next round retries.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The report store failed.
    #[error(transparent)]
    Reports(#[from] ReportStoreError),
    /// The device registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The ledger failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The signal log failed.
    #[error(transparent)]
    Signals(#[from] SignalLogError),
}

/// Lots in units of 10^-8 lot (finer digits cut; negative volumes count
/// as none).
fn lots_e8(volume: Decimal) -> u64 {
    let mantissa = u64::try_from(volume.mantissa()).unwrap_or(0);
    let scale = u32::from(volume.scale());
    if scale <= 8 {
        mantissa.saturating_mul(10u64.pow(8 - scale))
    } else {
        mantissa / 10u64.pow(scale - 8)
    }
}

/// The fills of a batch that name their signal and lots, from devices
/// whose account is known, with those.
fn known_fills<'a>(
    fills: &'a [FeedFill],
    accounts: &'a HashMap<&str, Option<String>>,
) -> impl Iterator<Item = (&'a FeedFill, SignalId, Decimal, &'a str)> {
    fills.iter().filter_map(|fill| {
        if fill.reverses_ticket.is_some() {
            return None;
        }
        let account_id = accounts.get(fill.device_id.as_str())?.as_deref()?;
        Some((fill, fill.signal_id?, fill.volume?, account_id))
    })
}

/// What one batch of the fill feed looked up: each signal's symbol and
/// side (opening trades only: a close names no side), and the reports of
/// the signals whose fills earn commission, for their price and ticket.
#[derive(Default)]
struct SignalCache {
    traded: HashMap<SignalId, Option<(String, Option<TradeSide>)>>,
    reports: HashMap<SignalId, Vec<StoredReport>>,
}

impl SignalCache {
    /// The signal's symbol and side; None for a signal no longer kept.
    async fn traded(
        &mut self,
        core: &Core,
        signal_id: SignalId,
    ) -> Result<Option<(String, Option<TradeSide>)>, FeedError> {
        if let Some(traded) = self.traded.get(&signal_id) {
            return Ok(traded.clone());
        }
        let traded = match core.signals.locate(signal_id).await? {
            Some((channel, position)) => core
                .signals
                .read_after(&channel, position.saturating_sub(1), 1)
                .await?
                .into_iter()
                .find(|s| s.signal_id == signal_id)
                .map(|s| {
                    let side = match s.action {
                        Action::OpenBuy => Some(TradeSide::Buy),
                        Action::OpenSell => Some(TradeSide::Sell),
                        _ => None,
                    };
                    (s.symbol.as_str().to_owned(), side)
                }),
            None => None,
        };
        self.traded.insert(signal_id, traded.clone());
        Ok(traded)
    }

    /// The stored report `seq` of `device_id` about `signal_id`.
    async fn report(
        &mut self,
        core: &Core,
        signal_id: SignalId,
        device_id: &str,
        seq: u64,
    ) -> Result<Option<StoredReport>, FeedError> {
        if let std::collections::hash_map::Entry::Vacant(slot) = self.reports.entry(signal_id) {
            slot.insert(core.reports.for_signal(signal_id).await?);
        }
        Ok(self.reports[&signal_id]
            .iter()
            .find(|r| r.device_id == device_id && r.seq == seq)
            .cloned())
    }
}

impl AffiliateDesk {
    /// Opens the ledger in `config`'s data directory, on the wall clock.
    pub fn open(config: &ServeConfig) -> Result<Self, DeskError> {
        let programme = config.programme().map_err(DeskError::Settings)?;
        let payouts = config.payouts().map_err(DeskError::Settings)?;
        let ledger = Ledger::open(&config.data_dir.join(LEDGER_DIR), programme)?;
        Ok(Self {
            ledger: Arc::new(ledger),
            landing_page: config.referral_landing_page.clone(),
            link_base: config.referral_link_base.trim_end_matches('/').to_owned(),
            click_limit: Arc::new(crate::click_limit::ClickLimit::new(
                config.click_rate_per_minute as u32,
            )),
            payouts: PayoutRunner::new(payouts),
            webhooks: None,
            devices_changed: Arc::default(),
            clock: Arc::new(crate::clock::unix_ms),
        })
    }

    /// The same desk delivering webhooks through `webhooks`.
    pub fn with_webhooks(&self, webhooks: crate::webhooks::Dispatcher) -> Self {
        Self {
            webhooks: Some(webhooks),
            ..self.clone()
        }
    }

    /// The desk's clock.
    pub fn clock(&self) -> Clock {
        self.clock.clone()
    }

    /// The same desk paying through `payouts`.
    pub fn with_payouts(&self, payouts: PayoutRunner) -> Self {
        Self {
            payouts,
            ..self.clone()
        }
    }

    /// The same desk reading the time from `clock`.
    pub fn with_clock(&self, clock: Clock) -> Self {
        Self {
            clock,
            ..self.clone()
        }
    }

    /// Journals what `decide` decides as the sidecar's own work (`system`):
    /// decisions of the fill feed and the device comparison never refuse.
    async fn journal(
        &self,
        decide: impl FnOnce(&eagate_affiliates::Programme) -> eagate_affiliates::Decided,
    ) -> Result<eagate_affiliates::Decided, JournalError> {
        match self
            .ledger
            .write(|programme| Ok::<_, Infallible>(decide(programme)))
            .await
        {
            Ok(decided) => Ok(decided),
            Err(WriteError::Journal(e)) => Err(e),
            Err(WriteError::Refused(never)) => match never {},
        }
    }

    /// Now, by the desk's clock.
    pub fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    /// The referral link of `code`.
    pub fn link(&self, code: &ReferralCode) -> String {
        format!("{}/r/{}", self.link_base, code.as_str())
    }

    /// Reads the fill feed, a batch at a time: each fill's device account
    /// is a user, whose first trade it may be. Claims a batch only once the
    /// ledger has it on disk, so a crash between the two rereads it (and
    /// the programme ignores a second first trade). A reversal whose report
    /// is not stored yet stays in the feed for a later call; the batches
    /// after it are read all the same (up to [`FEED_PAGES`] batches a
    /// call), so no number of them holds back the fills behind. Returns how
    /// many entries were claimed.
    pub async fn take_fills(&self, core: &Core) -> Result<usize, FeedError> {
        let mut after: Option<Vec<u8>> = None;
        let mut claimed = 0;
        for _ in 0..FEED_PAGES {
            let fills = core
                .reports
                .unclaimed_fills(after.as_deref(), FEED_BATCH)
                .await?;
            claimed += self.take_batch(core, &fills).await?;
            if fills.len() < FEED_BATCH {
                break;
            }
            after = fills.last().map(|fill| fill.mark.clone());
        }
        Ok(claimed)
    }

    /// Takes `fills` into the programme and claims them but the reversals
    /// that wait: how many it claimed.
    async fn take_batch(&self, core: &Core, fills: &[FeedFill]) -> Result<usize, FeedError> {
        // A device's account never changes: one registry read per device
        // per batch, however many fills it reported.
        let mut accounts: HashMap<&str, Option<String>> = HashMap::new();
        for fill in fills {
            // A damaged entry (logged by the store) has no device; claimed
            // with the rest so it cannot stall the feed.
            if fill.device_id.is_empty() {
                continue;
            }
            let account = match accounts.get(fill.device_id.as_str()) {
                Some(account) => account.clone(),
                None => {
                    let record = core.registry.get(&fill.device_id).await?;
                    let account = record.map(|device| device.account_id);
                    accounts.insert(&fill.device_id, account.clone());
                    account
                }
            };
            let Some(account_id) = account else {
                continue;
            };
            // A reversal is nobody's first trade.
            if fill.reverses_ticket.is_some() {
                continue;
            }
            let now = self.now_ms();
            // Most fills are not anyone's first trade: decide under a read
            // lock, and write (and fsync) only when there is something new.
            let first = self
                .ledger
                .read()
                .first_trade(&account_id, &fill.device_id, now);
            if first.facts.is_empty() {
                continue;
            }
            self.journal(|programme| programme.first_trade(&account_id, &fill.device_id, now))
                .await?;
        }
        let mut signals = SignalCache::default();
        self.commission_trades(core, fills, &accounts, &mut signals)
            .await?;
        self.count_trades(core, fills, &accounts, &mut signals)
            .await?;
        // After the batch's fills: a reversal undoes fills reported before
        // it, which may be in this batch.
        let waiting = self.reverse_trades(core, fills, &accounts).await?;
        if waiting.is_empty() {
            core.reports.claim_fills(fills).await?;
        } else {
            let handled: Vec<FeedFill> = fills
                .iter()
                .enumerate()
                .filter(|(index, _)| !waiting.contains(index))
                .map(|(_, fill)| fill.clone())
                .collect();
            core.reports.claim_fills(&handled).await?;
        }
        Ok(fills.len() - waiting.len())
    }

    /// Counts each fill of a customer an affiliate referred for the
    /// per-trade commission (once per fill: the programme refuses a fill it
    /// counted before), with the signal's symbol and the report's price and
    /// ticket.
    async fn commission_trades(
        &self,
        core: &Core,
        fills: &[FeedFill],
        accounts: &HashMap<&str, Option<String>>,
        signals: &mut SignalCache,
    ) -> Result<(), FeedError> {
        for (fill, signal_id, volume, account_id) in known_fills(fills, accounts) {
            {
                let programme = self.ledger.read();
                // Most accounts are nobody's referral, and a resent fill
                // was counted already: no lookups for them.
                if programme.config().trade_fees.is_empty()
                    || lots_e8(volume) == 0
                    || programme.fills_earn_for(account_id).is_none()
                    || programme.counted_fill(&fill.device_id, fill.seq).is_some()
                {
                    continue;
                }
            }
            let Some((symbol, _)) = signals.traded(core, signal_id).await? else {
                tracing::warn!(device = %fill.device_id, seq = fill.seq, signal = %signal_id, "a referred fill's signal is no longer kept: it earns no trade commission");
                continue;
            };
            // The price and ticket are the report's; a report that cannot
            // be read (logged by the store) must not stall the feed.
            let report = signals
                .report(core, signal_id, &fill.device_id, fill.seq)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(device = %fill.device_id, seq = fill.seq, error = %e, "a referred fill's report could not be read: counted without its price and ticket");
                    None
                });
            let trade = TradeFill {
                user_id: account_id.to_owned(),
                device_id: fill.device_id.clone(),
                seq: fill.seq,
                signal_id: signal_id.to_string(),
                ticket: report.as_ref().and_then(|r| r.ticket),
                symbol,
                volume_e8: lots_e8(volume),
                price: report.as_ref().and_then(|r| r.price).map(|price| Price {
                    mantissa: price.mantissa(),
                    scale: u32::from(price.scale()),
                }),
                filled_at_ms: fill.stored_at_ms,
            };
            let now = self.now_ms();
            let mut problem = None;
            self.journal(|programme| {
                let (decided, fee_problem) = programme.trade_filled(&trade, now);
                problem = fee_problem;
                decided
            })
            .await?;
            if let Some(problem) = problem {
                tracing::warn!(device = %fill.device_id, seq = fill.seq, %problem, "a referred fill earns no trade commission");
            }
        }
        Ok(())
    }

    /// Busts the fills each reversal in the batch undoes (their commissions
    /// reversed, or clawed back once paid), once per reversal however often
    /// the feed hands it over, and only for the reversal stored under its
    /// number: Redis adds a feed entry before its script decides, also for
    /// a report the script refuses (another report holds the number). The
    /// positions in `fills` of reversals whose report is not stored yet
    /// (for up to [`REVERSAL_WAIT_MS`]) or could not be read.
    async fn reverse_trades(
        &self,
        core: &Core,
        fills: &[FeedFill],
        accounts: &HashMap<&str, Option<String>>,
    ) -> Result<HashSet<usize>, FeedError> {
        let mut waiting = HashSet::new();
        for (index, entry) in fills.iter().enumerate() {
            let (Some(ticket), Some(signal_id)) = (entry.reverses_ticket, entry.signal_id) else {
                continue;
            };
            let Some(Some(account_id)) = accounts.get(entry.device_id.as_str()) else {
                continue;
            };
            let reversal = TradeReversal {
                user_id: account_id.clone(),
                device_id: entry.device_id.clone(),
                seq: entry.seq,
                signal_id: signal_id.to_string(),
                ticket,
            };
            let now = self.now_ms();
            // Most reversals are of fills that earned nothing: decided under
            // a read lock, written only when there is something to write.
            if self
                .ledger
                .read()
                .trade_reversed(&reversal, now)
                .0
                .facts
                .is_empty()
            {
                continue;
            }
            let stored = match core.reports.report_at(&entry.device_id, entry.seq).await {
                Ok(stored) => stored,
                // Unread is not unstored: it waits, however old, for a
                // store that answers.
                Err(e) => {
                    tracing::warn!(device = %entry.device_id, seq = entry.seq, error = %e, "a reversal's report could not be read; it waits");
                    waiting.insert(index);
                    continue;
                }
            };
            match stored {
                Some(report)
                    if report.kind == ReportKind::Reversed
                        && report.ticket == Some(ticket)
                        && report.signal_id == signal_id => {}
                Some(_) => {
                    tracing::warn!(device = %entry.device_id, seq = entry.seq, "a reversal in the fill feed is not the report stored under its number: ignored");
                    continue;
                }
                // Stored at wall-clock time, as the feed entry says.
                None if crate::clock::unix_ms().saturating_sub(entry.stored_at_ms)
                    < REVERSAL_WAIT_MS =>
                {
                    waiting.insert(index);
                    continue;
                }
                None => {
                    tracing::warn!(device = %entry.device_id, seq = entry.seq, "a reversal in the fill feed was never stored: ignored");
                    continue;
                }
            }
            let mut problem = None;
            self.journal(|programme| {
                let (decided, out_of_range) = programme.trade_reversed(&reversal, now);
                problem = out_of_range;
                decided
            })
            .await?;
            if let Some(problem) = problem {
                tracing::warn!(device = %entry.device_id, seq = entry.seq, %problem, "a reversed fill's commission could not be taken back");
            }
        }
        Ok(waiting)
    }

    /// Counts each fill of a customer an affiliate referred for the
    /// wash-trading check: its signal's symbol and side (opening trades
    /// only: a close names no side), its lots, its UTC day.
    async fn count_trades(
        &self,
        core: &Core,
        fills: &[FeedFill],
        accounts: &HashMap<&str, Option<String>>,
        signals: &mut SignalCache,
    ) -> Result<(), FeedError> {
        for (fill, signal_id, volume, account_id) in known_fills(fills, accounts) {
            // Most accounts are nobody's referral: no signal lookup for them.
            if !self.ledger.read().watches_trades(account_id) {
                continue;
            }
            let Some((symbol, Some(side))) = signals.traded(core, signal_id).await? else {
                continue;
            };
            let volume_e8 = lots_e8(volume);
            let fill_key = (fill.device_id.as_str(), fill.seq);
            let day = eagate_affiliates::calendar::day_of(fill.stored_at_ms);
            let now = self.now_ms();
            let counted = self
                .ledger
                .read()
                .trade_seen(account_id, fill_key, &symbol, side, volume_e8, day, now);
            if counted.facts.is_empty() {
                continue;
            }
            self.journal(|programme| {
                programme.trade_seen(account_id, fill_key, &symbol, side, volume_e8, day, now)
            })
            .await?;
        }
        Ok(())
    }

    /// Says a device was registered, revoked or given a new secret: the
    /// journal compares the registry with what it knows now.
    pub fn devices_changed(&self) {
        self.devices_changed.notify_one();
    }

    /// Journals every registration, secret replacement and revocation in
    /// the device registry it had not seen (a page of devices at a time);
    /// returns how many devices it recorded something of.
    pub async fn observe_devices(&self, core: &Core) -> Result<usize, FeedError> {
        let mut after: Option<String> = None;
        let mut changed = 0;
        loop {
            let page = core
                .registry
                .list_page(None, after.as_deref(), DEVICE_PAGE)
                .await?;
            for record in &page {
                let device = eagate_affiliates::programme::ObservedDevice {
                    device_id: record.device_id.clone(),
                    account_id: record.account_id.clone(),
                    registered_at_ms: record.created_at_ms,
                    secret_digest: secret_digest(&record.sealed_secret),
                    revoked_at_ms: record.revoked_at_ms,
                };
                if self.ledger.read().knows_device(&device) {
                    continue;
                }
                let now = self.now_ms();
                let decided = self
                    .journal(|programme| programme.device_observed(&device, now))
                    .await?;
                if !decided.facts.is_empty() {
                    changed += 1;
                }
            }
            match page.last() {
                Some(last) if page.len() == DEVICE_PAGE => after = Some(last.device_id.clone()),
                _ => return Ok(changed),
            }
        }
    }

    /// Compares the registry with the journal at start, whenever an admin
    /// changes a device, and every [`DEVICE_SWEEP`] (for changes made
    /// outside this sidecar), until the process stops.
    pub async fn follow_devices(self, core: Arc<Core>) {
        loop {
            if let Err(e) = self.observe_devices(&core).await {
                tracing::warn!(error = %e, "comparing the device registry with the journal failed; retrying");
            }
            let _ = tokio::time::timeout(DEVICE_SWEEP, self.devices_changed.notified()).await;
        }
    }

    /// Reads the fill feed until the process stops.
    pub async fn follow_fills(self, core: Arc<Core>) {
        let mut tick = tokio::time::interval(FEED_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            loop {
                match self.take_fills(&core).await {
                    // A backlog: read on at once. Else at the next round,
                    // so reversals that wait are not read again and again.
                    Ok(n) if n >= FEED_BATCH => continue,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the fill feed failed; retrying");
                        break;
                    }
                }
            }
        }
    }

    /// Runs payouts once: see [`PayoutRunner::run`].
    pub async fn run_payouts(
        &self,
        trigger: Trigger,
        actor: &eagate_affiliates::Actor,
    ) -> Result<RunReport, RunError> {
        self.payouts
            .run(&self.ledger, &*self.clock, trigger, actor)
            .await
    }

    /// Runs the day's batch if its time has passed and it has not run:
    /// see [`PayoutRunner::run_daily_if_due`].
    pub async fn run_daily_if_due(&self) -> Option<Result<RunReport, RunError>> {
        self.payouts
            .run_daily_if_due(&self.ledger, &*self.clock)
            .await
    }

    /// Runs the daily batch at the configured UTC time until the process
    /// stops: see [`PayoutRunner::run_daily_if_due`]. A sidecar started
    /// after the day's time runs the day's batch at once.
    pub async fn schedule_payouts(self) {
        if self.payouts.settings().daily_at_minute.is_none() {
            return;
        }
        let mut tick = tokio::time::interval(SCHEDULER_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.run_daily_if_due().await {
                None => {}
                Some(Ok(report)) => {
                    tracing::info!(batch = ?report.batch_id, resumed = report.resumed.len(), "daily payout run finished");
                }
                // Another run (by hand, or another sidecar's) has it.
                Some(Err(RunError::Busy)) => {}
                Some(Err(e)) => {
                    tracing::error!(error = %e, "the daily payout run failed; retrying next tick");
                }
            }
        }
    }
}
