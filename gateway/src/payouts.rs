//! The payout run: the IO driver around the ledger's payout decisions.
//!
//! A run first finishes what an earlier one left (a crash, a timeout), then
//! opens a batch and, with the `stripe` provider, sends each payout. Every
//! step is journaled before the next one starts:
//!
//! 1. the batch opens: each payout `pending`, its entries tied to it;
//! 2. `submitted`, with the idempotency key, *before* the request goes;
//! 3. the answer: `paid` (the transfer id), `failed` (refused: the entries
//!    are payable again), or `needs_reconciliation` (no clear answer).
//!
//! A payout found `submitted` or `needs_reconciliation` is never sent
//! blindly again: the run asks Stripe for the transfer made under its
//! idempotency key (its transfer group). Found: paid. Not found: sent again
//! under the *same* key, which Stripe answers with the first request's
//! transfer if that one got through after all. No answer: it stays to
//! reconcile.
//!
//! One run at a time: a lock in the process (the scheduler and `eagate
//! payouts run` share it), and with a Redis a lease there, so sidecars
//! sharing it take turns; sidecars sharing a data directory cannot both
//! open its ledger.

use std::sync::Arc;
use std::time::Duration;

use eagate_affiliates::audit::Actor;
use eagate_affiliates::calendar::day_of;
use eagate_affiliates::config::DAY_MS;
use eagate_affiliates::money::TotalOutOfRange;
use eagate_affiliates::programme::{PayoutOutcome, PayoutState, SettleError};
use eagate_affiliates::{Decided, Fact, JournalError, Ledger, PayoutProvider, WriteError};

use crate::stripe::{Lookup, SecretKey, StripeClient, TransferAnswer, TransferRequest};

/// How long a Redis lease lasts unless renewed (each step renews it).
const LEASE_MS: u64 = 10 * 60 * 1000;

/// The payout settings, checked.
#[derive(Debug, Clone)]
pub struct PayoutSettings {
    /// Minutes after midnight UTC the daily batch runs; none: by hand only.
    pub daily_at_minute: Option<u32>,
    /// Who pays new batches out.
    pub provider: PayoutProvider,
    /// Stripe, when a secret key is set (also to finish Stripe payouts
    /// after a switch to manual).
    pub stripe: Option<StripeClient>,
}

impl PayoutSettings {
    /// Manual payouts, by hand only (tests, tools).
    pub fn manual() -> Self {
        Self {
            daily_at_minute: None,
            provider: PayoutProvider::Manual,
            stripe: None,
        }
    }

    /// Stripe at `base` with `key`.
    pub fn stripe(base: &str, key: SecretKey, timeout: Duration) -> Self {
        Self {
            daily_at_minute: None,
            provider: PayoutProvider::Stripe,
            stripe: Some(StripeClient::new(base, key, timeout)),
        }
    }
}

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The daily batch of this UTC day (days since 1970-01-01): at most one
    /// per day, however many runs ask.
    Daily(i64),
    /// An admin (`eagate payouts run`, `POST /v1/payout-batches`): a batch
    /// of its own.
    ByHand,
}

/// A point in a run where a test may stop it, as a crash would.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunStep {
    /// The batch and its pending payouts are journaled.
    BatchOpened,
    /// `submitted` is journaled; the request has not gone.
    Submitted,
    /// The provider answered; the answer is not journaled.
    Answered,
    /// The answer is journaled.
    Recorded,
}

/// Decides, for each step and payout, whether the run stops there.
pub type StopAt = Arc<dyn Fn(RunStep, &str) -> bool + Send + Sync>;

/// Why a run stopped early.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Another run holds the lock or the lease.
    #[error("a payout run is already in progress; try again when it has finished")]
    Busy,
    /// The ledger failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A payout's state could not change (another actor settled it first).
    #[error(transparent)]
    Settle(#[from] SettleError),
    /// A total passed the ledger's limit.
    #[error(transparent)]
    Total(#[from] TotalOutOfRange),
    /// Stripe payouts wait and no secret key is set.
    #[error(
        "Stripe payouts are waiting to be sent or reconciled, but no Stripe secret key is set ({})",
        crate::stripe::SECRET_KEY_ENV
    )]
    NoStripeKey,
    /// The Redis lease failed.
    #[error("the payout lease in Redis: {0}")]
    Lease(#[from] redis::RedisError),
    /// A test stopped the run here.
    #[error("stopped at {0:?}")]
    Stopped(RunStep),
}

impl<E: Into<RunError>> From<WriteError<E>> for RunError {
    fn from(e: WriteError<E>) -> Self {
        match e {
            WriteError::Refused(e) => e.into(),
            WriteError::Journal(e) => Self::Journal(e),
        }
    }
}

impl From<std::convert::Infallible> for RunError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunReport {
    /// The batch it opened; none when the day's batch existed already.
    pub batch_id: Option<String>,
    /// Payouts it finished from earlier runs.
    pub resumed: Vec<String>,
    /// Payouts from earlier runs it could not take further (see the log).
    pub stuck: Vec<String>,
}

/// The lease that lets one of several sidecars sharing a Redis run payouts.
#[derive(Clone)]
pub struct RunnerLease {
    redis: crate::store::redis::RedisConnection,
    key: String,
}

impl std::fmt::Debug for RunnerLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerLease")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// Deletes the lease only if it is still ours.
const RELEASE: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";
/// Extends the lease only if it is still ours.
const RENEW: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";

impl RunnerLease {
    /// The lease under `<prefix>:payouts:runner`.
    pub fn new(redis: crate::store::redis::RedisConnection, prefix: &str) -> Self {
        Self {
            redis,
            key: format!("{prefix}:payouts:runner"),
        }
    }

    async fn acquire(&self) -> Result<Option<HeldLease>, redis::RedisError> {
        let mut token = [0u8; 16];
        getrandom::fill(&mut token).map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::IoError, "no randomness", e.to_string()))
        })?;
        let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
        let taken: Option<String> = redis::cmd("SET")
            .arg(&self.key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(LEASE_MS)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(taken.map(|_| HeldLease {
            lease: self.clone(),
            token,
        }))
    }
}

struct HeldLease {
    lease: RunnerLease,
    token: String,
}

impl HeldLease {
    /// Extends the lease; a run that lost it stops.
    async fn renew(&self) -> Result<(), RunError> {
        let kept: i64 = redis::Script::new(RENEW)
            .key(&self.lease.key)
            .arg(&self.token)
            .arg(LEASE_MS)
            .invoke_async(&mut self.lease.redis.clone())
            .await?;
        if kept == 1 {
            Ok(())
        } else {
            Err(RunError::Busy)
        }
    }

    async fn release(self) {
        let released: Result<i64, _> = redis::Script::new(RELEASE)
            .key(&self.lease.key)
            .arg(&self.token)
            .invoke_async(&mut self.lease.redis.clone())
            .await;
        if let Err(e) = released {
            tracing::warn!(error = %e, "releasing the payout lease failed; it expires by itself");
        }
    }
}

/// The runner's share of the desk.
#[derive(Clone)]
pub struct PayoutRunner {
    settings: Arc<PayoutSettings>,
    running: Arc<tokio::sync::Mutex<()>>,
    lease: Option<RunnerLease>,
    stop_at: Option<StopAt>,
}

impl std::fmt::Debug for PayoutRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayoutRunner")
            .field("settings", &self.settings)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl PayoutRunner {
    /// A runner with these settings, one run at a time in this process.
    pub fn new(settings: PayoutSettings) -> Self {
        Self {
            settings: Arc::new(settings),
            running: Arc::new(tokio::sync::Mutex::new(())),
            lease: None,
            stop_at: None,
        }
    }

    /// The same runner, also taking turns through `lease`.
    pub fn with_lease(mut self, lease: RunnerLease) -> Self {
        self.lease = Some(lease);
        self
    }

    /// The same runner, stopping where `stop_at` says (crash tests).
    pub fn stopping_at(mut self, stop_at: StopAt) -> Self {
        self.stop_at = Some(stop_at);
        self
    }

    /// The settings.
    pub fn settings(&self) -> &PayoutSettings {
        &self.settings
    }

    fn stop(&self, step: RunStep, payout_id: &str) -> Result<(), RunError> {
        match &self.stop_at {
            Some(stop) if stop(step, payout_id) => Err(RunError::Stopped(step)),
            _ => Ok(()),
        }
    }
}

/// What a run reads the time from.
pub type Now<'a> = &'a (dyn Fn() -> u64 + Send + Sync);

impl PayoutRunner {
    /// Runs payouts once: finishes unsettled Stripe payouts, then opens a
    /// batch (a daily one only if its day has none) and sends its Stripe
    /// payouts. Refused with [`RunError::Busy`] while another run is on.
    pub async fn run(
        &self,
        ledger: &Ledger,
        now: Now<'_>,
        trigger: Trigger,
        actor: &Actor,
    ) -> Result<RunReport, RunError> {
        let _running = self.running.try_lock().map_err(|_| RunError::Busy)?;
        let lease = match &self.lease {
            Some(lease) => Some(lease.acquire().await?.ok_or(RunError::Busy)?),
            None => None,
        };
        let ran = self
            .run_holding_lease(ledger, now, trigger, actor, lease.as_ref())
            .await;
        if let Some(lease) = lease {
            lease.release().await;
        }
        ran
    }

    async fn run_holding_lease(
        &self,
        ledger: &Ledger,
        now: Now<'_>,
        trigger: Trigger,
        actor: &Actor,
        lease: Option<&HeldLease>,
    ) -> Result<RunReport, RunError> {
        let mut report = RunReport::default();
        // What an earlier run left: Stripe payouts not yet settled.
        let waiting: Vec<String> = {
            let programme = ledger.read();
            programme
                .unsettled_payouts()
                .filter(|p| programme.provider_of(p.payout_id) == PayoutProvider::Stripe)
                .map(|p| p.payout_id.to_owned())
                .collect()
        };
        for payout_id in waiting {
            if let Some(lease) = lease {
                lease.renew().await?;
            }
            match self
                .drive_stripe_payout(ledger, now, &payout_id, actor)
                .await
            {
                Ok(()) => report.resumed.push(payout_id),
                // One payout that cannot go on (no key, settled meanwhile)
                // does not hold up everyone else's batch.
                Err(e @ (RunError::NoStripeKey | RunError::Settle(_))) => {
                    tracing::error!(payout = %payout_id, error = %e, "an unsettled payout cannot go on; the batch runs without it");
                    report.stuck.push(payout_id);
                }
                Err(e) => return Err(e),
            }
        }
        let scheduled_day = match trigger {
            Trigger::Daily(day) => Some(day),
            Trigger::ByHand => None,
        };
        let provider = self.settings.provider;
        let at = now();
        let decided: Decided = ledger
            .write_by(actor, |p| p.open_batch(provider, scheduled_day, at))
            .await?;
        let Some(Fact::PayoutBatchOpened { batch_id, .. }) = decided.facts.first() else {
            return Ok(report);
        };
        report.batch_id = Some(batch_id.clone());
        let payout_ids: Vec<String> = decided
            .facts
            .iter()
            .filter_map(|f| match f {
                Fact::PayoutPending { payout_id, .. } => Some(payout_id.clone()),
                _ => None,
            })
            .collect();
        tracing::info!(batch = %batch_id, payouts = payout_ids.len(), provider = provider.as_str(), "payout batch opened");
        self.stop(RunStep::BatchOpened, batch_id)?;
        if provider == PayoutProvider::Stripe {
            for payout_id in &payout_ids {
                if let Some(lease) = lease {
                    lease.renew().await?;
                }
                self.drive_stripe_payout(ledger, now, payout_id, actor)
                    .await?;
            }
        }
        Ok(report)
    }

    /// Takes one Stripe payout as far as it goes: sends a pending one,
    /// reconciles a submitted one.
    async fn drive_stripe_payout(
        &self,
        ledger: &Ledger,
        now: Now<'_>,
        payout_id: &str,
        actor: &Actor,
    ) -> Result<(), RunError> {
        let stripe = self.settings.stripe.clone().ok_or(RunError::NoStripeKey)?;
        let (state, request) = {
            let programme = ledger.read();
            let Some(payout) = programme.payout(payout_id) else {
                return Ok(());
            };
            let request = TransferRequest {
                amount_minor: payout.amount_minor,
                currency: programme.config().currency.to_string(),
                destination: payout.destination.unwrap_or_default().to_owned(),
                payout_id: payout_id.to_owned(),
            };
            (payout.state, request)
        };
        let outcome = match state {
            PayoutState::Paid | PayoutState::Failed => return Ok(()),
            PayoutState::Pending => {
                let at = now();
                let submitted = ledger
                    .write_by(actor, |p| p.submit_payout(payout_id, at))
                    .await?;
                if let Some(Fact::PayoutFailed { reason, .. }) = submitted.facts.first() {
                    tracing::warn!(payout = %payout_id, reason = %reason, "payout not sent; its commissions are payable again");
                    return Ok(());
                }
                self.stop(RunStep::Submitted, payout_id)?;
                let answer = send(stripe, &request).await;
                self.stop(RunStep::Answered, payout_id)?;
                outcome_of(answer, &request)
            }
            PayoutState::Submitted | PayoutState::NeedsReconciliation => {
                let lookup_client = stripe.clone();
                let id = payout_id.to_owned();
                let lost = Lookup::Unknown {
                    detail: lost_answer(),
                };
                match blocking(move || lookup_client.find(&id), lost).await {
                    Lookup::Found(transfer) => {
                        tracing::info!(payout = %payout_id, transfer = %transfer.id, "reconciled: Stripe made the transfer");
                        check_transfer(transfer, &request)
                    }
                    Lookup::NotFound => {
                        // No transfer under this key: asking again under the
                        // same key cannot make a second one.
                        tracing::info!(payout = %payout_id, "reconciling: Stripe has no transfer; asking again under the same idempotency key");
                        let answer = send(stripe, &request).await;
                        self.stop(RunStep::Answered, payout_id)?;
                        outcome_of(answer, &request)
                    }
                    Lookup::Unknown { detail } => PayoutOutcome::Unknown { detail },
                }
            }
        };
        match &outcome {
            PayoutOutcome::Paid { reference } => {
                tracing::info!(payout = %payout_id, transfer = %reference, "payout paid");
            }
            PayoutOutcome::Failed { reason } => {
                tracing::warn!(payout = %payout_id, reason = %reason, "payout failed; its commissions are payable again");
            }
            PayoutOutcome::Unknown { detail } => {
                tracing::warn!(payout = %payout_id, detail = %detail, "payout needs reconciliation; the next run asks Stripe");
            }
        }
        let at = now();
        ledger
            .write_by(actor, |p| p.record_answer(payout_id, outcome, at))
            .await?;
        self.stop(RunStep::Recorded, payout_id)?;
        Ok(())
    }

    /// One look at the clock: if today's payout time has passed and today
    /// has no daily batch, runs it. `None`: nothing was due (or payouts
    /// run by hand only).
    pub async fn run_daily_if_due(
        &self,
        ledger: &Ledger,
        now: Now<'_>,
    ) -> Option<Result<RunReport, RunError>> {
        let minute = self.settings.daily_at_minute?;
        let at = now();
        let day = day_of(at);
        let due_at = u64::try_from(day)
            .unwrap_or(0)
            .saturating_mul(DAY_MS)
            .saturating_add(u64::from(minute) * 60_000);
        if at < due_at
            || ledger
                .read()
                .batches()
                .any(|b| b.scheduled_day == Some(day))
        {
            return None;
        }
        Some(
            self.run(ledger, now, Trigger::Daily(day), &Actor::system())
                .await,
        )
    }
}

/// A found transfer settles the payout only if it is the one asked for.
fn check_transfer(transfer: crate::stripe::Transfer, request: &TransferRequest) -> PayoutOutcome {
    if transfer.amount == request.amount_minor
        && transfer.destination == request.destination
        && transfer.currency.eq_ignore_ascii_case(&request.currency)
    {
        PayoutOutcome::Paid {
            reference: transfer.id,
        }
    } else {
        PayoutOutcome::Unknown {
            detail: format!(
                "Stripe's transfer {} for this payout is {} {} to {}, not {} {} to {}: check it by hand",
                transfer.id,
                transfer.amount,
                transfer.currency,
                transfer.destination,
                request.amount_minor,
                request.currency,
                request.destination
            ),
        }
    }
}

fn outcome_of(answer: TransferAnswer, request: &TransferRequest) -> PayoutOutcome {
    match answer {
        TransferAnswer::Made(transfer) => check_transfer(transfer, request),
        TransferAnswer::Refused { code, message } => PayoutOutcome::Failed {
            reason: format!("Stripe refused the transfer ({code}): {message}"),
        },
        TransferAnswer::Unknown { detail } => PayoutOutcome::Unknown { detail },
    }
}

/// Runs a blocking provider call on tokio's blocking pool; `lost` stands
/// for an answer that never came back (the runtime stopping).
async fn blocking<T: Send + 'static>(call: impl FnOnce() -> T + Send + 'static, lost: T) -> T {
    match tokio::task::spawn_blocking(call).await {
        Ok(answer) => answer,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => lost,
    }
}

fn lost_answer() -> String {
    "the request's answer was lost: the process is stopping".to_owned()
}

/// Asks Stripe for the transfer, off the async threads.
async fn send(stripe: StripeClient, request: &TransferRequest) -> TransferAnswer {
    let sent = request.clone();
    blocking(
        move || stripe.transfer(&sent),
        TransferAnswer::Unknown {
            detail: lost_answer(),
        },
    )
    .await
}
