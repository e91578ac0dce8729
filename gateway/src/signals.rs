//! Signal channels: what a published signal is, each channel's ordered log
//! (positions 1, 2, 3, …) and where each device stands in it: the store
//! traits, with the rules every backend shares (`crate::store` holds the
//! backends; the live fan-out to sessions is `crate::core::fanout`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use eagate_protocol::{
    Action, ChannelName, Decimal, OrderType, Signal, SignalComment, SignalError, SignalId, Symbol,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api_schema;
use crate::clock::unix_ms;

/// A signal as a provider publishes it: everything but the channel, the
/// position and the id, which the gateway assigns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalDraft {
    /// The instrument.
    #[schema(value_type = String, min_length = 1, max_length = 32)]
    pub symbol: Symbol,
    /// What to do.
    #[schema(value_type = api_schema::Action)]
    pub action: Action,
    /// How to place an opening order.
    #[schema(value_type = api_schema::OrderType)]
    pub order_type: OrderType,
    /// Lots.
    #[schema(value_type = api_schema::Decimal)]
    pub volume: Decimal,
    /// Limit or stop price.
    #[serde(default)]
    #[schema(value_type = Option<api_schema::Decimal>)]
    pub price: Option<Decimal>,
    /// Stop loss.
    #[serde(default)]
    #[schema(value_type = Option<api_schema::Decimal>)]
    pub stop_loss: Option<Decimal>,
    /// Take profit.
    #[serde(default)]
    #[schema(value_type = Option<api_schema::Decimal>)]
    pub take_profit: Option<Decimal>,
    /// The EA's magic number.
    #[serde(default)]
    pub magic: u64,
    /// Order comment.
    #[serde(default = "empty_comment")]
    #[schema(value_type = String, max_length = 64)]
    pub comment: SignalComment,
    /// When the provider issued it; the gateway's time when absent.
    #[serde(default)]
    pub issued_at_ms: Option<u64>,
    /// Do not act after this instant.
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
    /// The signal a close, modify or cancel acts on.
    #[serde(default)]
    #[schema(value_type = Option<api_schema::SignalId>)]
    pub reference: Option<SignalId>,
}

fn empty_comment() -> SignalComment {
    SignalComment::new("").expect("the empty comment is valid")
}

impl SignalDraft {
    /// The full signal at `position` of `channel`.
    pub fn into_signal(
        self,
        channel: ChannelName,
        position: u64,
        signal_id: SignalId,
        now_ms: u64,
    ) -> Signal {
        Signal {
            channel,
            position,
            signal_id,
            symbol: self.symbol,
            action: self.action,
            order_type: self.order_type,
            volume: self.volume,
            price: self.price,
            stop_loss: self.stop_loss,
            take_profit: self.take_profit,
            magic: self.magic,
            comment: self.comment,
            issued_at_ms: self.issued_at_ms.unwrap_or(now_ms),
            expires_at_ms: self.expires_at_ms,
            reference: self.reference,
        }
    }
}

/// What an append did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The signal, as logged.
    pub signal: Signal,
    /// `true` when the idempotency key had already published it, so this
    /// append stored nothing.
    pub replayed: bool,
}

/// The signal `draft` would be at `stored`'s place: equal to `stored` exactly
/// when a retried publish carries the same signal.
fn same_draft(draft: &SignalDraft, stored: &Signal) -> bool {
    let candidate = draft.clone().into_signal(
        stored.channel.clone(),
        stored.position,
        stored.signal_id,
        stored.issued_at_ms,
    );
    candidate == *stored
}

/// The signal `draft` becomes in `channel`: a fresh id, issued now unless
/// the draft says when, validated. Position 1 stands in until the log
/// assigns the real one. Both backends start every append here.
pub(crate) fn prepare(
    channel: &ChannelName,
    draft: &SignalDraft,
) -> Result<Signal, SignalLogError> {
    let now = unix_ms();
    let signal = draft
        .clone()
        .into_signal(channel.clone(), 1, new_signal_id(now)?, now);
    signal.validate()?;
    Ok(signal)
}

/// Resolves a replayed key: the stored signal, unless the draft differs.
pub(crate) fn replay(draft: &SignalDraft, stored: Signal) -> Result<Appended, SignalLogError> {
    if same_draft(draft, &stored) {
        Ok(Appended {
            signal: stored,
            replayed: true,
        })
    } else {
        Err(SignalLogError::KeyReused)
    }
}

/// Why a signal could not be published or read.
#[derive(Debug, thiserror::Error)]
pub enum SignalLogError {
    /// The signal breaks a rule between its fields.
    #[error("invalid signal: {0}")]
    Invalid(#[from] SignalError),
    /// sled failed.
    #[error("signal log: {0}")]
    Sled(#[from] sled::Error),
    /// Redis failed.
    #[error("signal log: {0}")]
    Redis(#[from] redis::RedisError),
    /// A stored signal could not be decoded.
    #[error("a stored signal is damaged: {0}")]
    Corrupt(String),
    /// The operating system's random source failed.
    #[error("no randomness from the operating system")]
    Random,
    /// The idempotency key already published a different signal.
    #[error("this idempotency key already published a different signal on this channel")]
    KeyReused,
}

impl SignalLogError {
    /// Whether the store is only away for now (see
    /// [`crate::outage::is_outage`]): the same call may succeed in a
    /// moment.
    pub fn is_outage(&self) -> bool {
        matches!(self, Self::Redis(e) if crate::outage::is_outage(e))
    }
}

/// A boxed future, so logs can be used as `dyn SignalLog`.
pub type LogFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, SignalLogError>> + Send + 'a>>;

/// Where channels' signals are kept in order.
pub trait SignalLog: Send + Sync + std::fmt::Debug {
    /// Validates `draft`, gives it the next position and a fresh id, and
    /// stores it durably. With an idempotency key already used on this
    /// channel, stores nothing and returns the signal that key published
    /// (or [`SignalLogError::KeyReused`] if the draft differs from it).
    fn append<'a>(
        &'a self,
        channel: &'a ChannelName,
        draft: SignalDraft,
        idempotency_key: Option<&'a str>,
    ) -> LogFuture<'a, Appended>;

    /// Up to `limit` signals of `channel` after position `after`, in order.
    fn read_after<'a>(
        &'a self,
        channel: &'a ChannelName,
        after: u64,
        limit: usize,
    ) -> LogFuture<'a, Vec<Signal>>;

    /// The channel and position of a signal, if it exists.
    fn locate<'a>(&'a self, signal_id: SignalId) -> LogFuture<'a, Option<(ChannelName, u64)>>;

    /// The position of the newest signal of `channel` (0 when empty).
    fn head<'a>(&'a self, channel: &'a ChannelName) -> LogFuture<'a, u64>;

    /// Retention: removes, from the oldest end of every channel, the
    /// signals logged before `cutoff_ms` (with their index entries and the
    /// idempotency keys that published them). Positions are never reused: a
    /// channel's head stays where it is. Returns how many were removed.
    fn trim<'a>(&'a self, cutoff_ms: u64) -> LogFuture<'a, u64>;
}

/// When the log took a signal, Unix ms: the first 48 bits of its id.
pub fn logged_at_ms(signal_id: SignalId) -> u64 {
    let mut millis = [0u8; 8];
    millis[2..].copy_from_slice(&signal_id.0[..6]);
    u64::from_be_bytes(millis)
}

/// Removes signals logged before the retention window, now and every ten
/// minutes, until aborted.
pub async fn enforce_retention(log: Arc<dyn SignalLog>, retention: std::time::Duration) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(600));
    loop {
        tick.tick().await;
        let cutoff = crate::clock::unix_ms().saturating_sub(retention.as_millis() as u64);
        match log.trim(cutoff).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "signals past retention removed"),
            Err(e) => tracing::warn!(error = %e, "removing signals past retention failed"),
        }
    }
}

/// 48 bits of milliseconds then 80 random bits: unique, and sorting by id
/// sorts by publication time.
fn new_signal_id(now_ms: u64) -> Result<SignalId, SignalLogError> {
    let mut id = [0u8; 16];
    id[..6].copy_from_slice(&now_ms.to_be_bytes()[2..]);
    getrandom::fill(&mut id[6..]).map_err(|_| SignalLogError::Random)?;
    Ok(SignalId(id))
}

/// The gateway's record of how far each device has got in each channel,
/// from its reports. Used when a device names no resume point for a channel.
pub trait PositionStore: Send + Sync + std::fmt::Debug {
    /// The last position recorded for the device in the channel.
    fn get<'a>(
        &'a self,
        device_id: &'a str,
        channel: &'a ChannelName,
    ) -> LogFuture<'a, Option<u64>>;

    /// Records that the device's subscription to the channel starts after
    /// `position` (the channel's head when it subscribed): durably, as the
    /// position recorded for it whatever was recorded before, and as the
    /// subscription's start, below which the device is never sent anything
    /// whatever resume point it names.
    fn start_subscription<'a>(
        &'a self,
        device_id: &'a str,
        channel: &'a ChannelName,
        position: u64,
    ) -> LogFuture<'a, ()>;

    /// The start recorded by [`PositionStore::start_subscription`], if any.
    fn recorded_start<'a>(
        &'a self,
        device_id: &'a str,
        channel: &'a ChannelName,
    ) -> LogFuture<'a, Option<u64>>;

    /// Where the device's current (or last) subscription to the channel
    /// started; `None` if it never subscribed to it.
    fn subscription_start<'a>(
        &'a self,
        device_id: &'a str,
        channel: &'a ChannelName,
    ) -> LogFuture<'a, Option<u64>> {
        Box::pin(async move {
            // Subscriptions made before starts were recorded have only the
            // position recorded at subscription: they started at most there.
            match self.recorded_start(device_id, channel).await? {
                Some(start) => Ok(Some(start)),
                None => Ok(self.get(device_id, channel).await?.map(|_| 0)),
            }
        })
    }

    /// Records `position` unless a later one is already recorded.
    fn advance<'a>(
        &'a self,
        device_id: &'a str,
        channel: &'a ChannelName,
        position: u64,
    ) -> LogFuture<'a, ()>;

    /// Records that the gateway has written the channel's signals up to
    /// `position` to the device (whether or not it has reported on them
    /// yet), unless a later one is already recorded.
    fn mark_delivered<'a>(
        &'a self,
        device_id: &'a str,
        channel: &'a ChannelName,
        position: u64,
    ) -> LogFuture<'a, ()>;

    /// Up to which position the channel's signals were written to the
    /// device.
    fn delivered<'a>(
        &'a self,
        device_id: &'a str,
        channel: &'a ChannelName,
    ) -> LogFuture<'a, Option<u64>>;
}

/// A market buy of gold at position 7, for unit tests.
#[cfg(test)]
pub(crate) fn sample_signal() -> Signal {
    Signal {
        channel: ChannelName::new("gold").expect("a valid name"),
        position: 7,
        signal_id: SignalId([3; 16]),
        symbol: eagate_protocol::Symbol::new("XAUUSD").expect("a valid symbol"),
        action: eagate_protocol::Action::OpenBuy,
        order_type: eagate_protocol::OrderType::Market,
        volume: "0.10".parse().expect("a valid volume"),
        price: None,
        stop_loss: Some("2300.00".parse().expect("a valid price")),
        take_profit: None,
        magic: 7,
        comment: SignalComment::new("t1").expect("a valid comment"),
        issued_at_ms: 1_700_000_000_000,
        expires_at_ms: None,
        reference: None,
    }
}
