//! The affiliate programme in a sidecar process: its ledger in
//! `<data-dir>/affiliates` (sled of its own, so the sidecar keeps it
//! whichever store devices use), the settings its routes need, and the
//! reader of the fill feed that turns a referred user's first fill into
//! their first trade.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use eagate_affiliates::{JournalError, Ledger, ReferralCode, WriteError};

use crate::config::ServeConfig;
use crate::core::Core;
use crate::registry::RegistryError;
use crate::reports::ReportStoreError;

/// Where the programme reads the time: the wall clock, or a test's.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The ledger's directory inside the data directory.
pub const LEDGER_DIR: &str = "affiliates";

/// How often the fill feed is read.
const FEED_INTERVAL: Duration = Duration::from_millis(500);

/// Fills read from the feed per round.
const FEED_BATCH: usize = 256;

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
}

impl AffiliateDesk {
    /// Opens the ledger in `config`'s data directory, on the wall clock.
    pub fn open(config: &ServeConfig) -> Result<Self, DeskError> {
        let programme = config.programme().map_err(DeskError::Settings)?;
        let ledger = Ledger::open(&config.data_dir.join(LEDGER_DIR), programme)?;
        Ok(Self {
            ledger: Arc::new(ledger),
            landing_page: config.referral_landing_page.clone(),
            link_base: config.referral_link_base.trim_end_matches('/').to_owned(),
            click_limit: Arc::new(crate::click_limit::ClickLimit::new(
                config.click_rate_per_minute as u32,
            )),
            clock: Arc::new(crate::clock::unix_ms),
        })
    }

    /// The same desk reading the time from `clock`.
    pub fn with_clock(&self, clock: Clock) -> Self {
        Self {
            clock,
            ..self.clone()
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

    /// Reads one batch of the fill feed: each fill's device account is a
    /// user, whose first trade it may be. Claims the batch only once the
    /// ledger has it on disk, so a crash between the two rereads it (and
    /// the programme ignores a second first trade). Returns how many fills
    /// were read.
    pub async fn take_fills(&self, core: &Core) -> Result<usize, FeedError> {
        let fills = core.reports.unclaimed_fills(FEED_BATCH).await?;
        // A device's account never changes: one registry read per device
        // per batch, however many fills it reported.
        let mut accounts: HashMap<&str, Option<String>> = HashMap::new();
        for fill in &fills {
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
            let written = self
                .ledger
                .write(|programme| {
                    Ok::<_, Infallible>(programme.first_trade(&account_id, &fill.device_id, now))
                })
                .await;
            match written {
                Ok(_) => {}
                Err(WriteError::Journal(e)) => return Err(e.into()),
                Err(WriteError::Refused(never)) => match never {},
            }
        }
        core.reports.claim_fills(&fills).await?;
        Ok(fills.len())
    }

    /// Reads the fill feed until the process stops.
    pub async fn follow_fills(self, core: Arc<Core>) {
        let mut tick = tokio::time::interval(FEED_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            loop {
                match self.take_fills(&core).await {
                    Ok(n) if n == FEED_BATCH => continue,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the fill feed failed; retrying");
                        break;
                    }
                }
            }
        }
    }
}
