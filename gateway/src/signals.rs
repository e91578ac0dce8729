//! Signal channels: an ordered log per channel, and live fan-out to the
//! sessions of subscribed devices.
//!
//! Each channel's log assigns positions 1, 2, 3, … A session follows a
//! channel from a position: it reads the log up to the head, then takes new
//! signals from a bounded broadcast. A device too slow for the broadcast
//! falls behind it ("lags") and simply reads the log again, so a slow device
//! never holds back the others and never makes the gateway buffer without
//! bound.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use eagate_protocol::{
    Action, ChannelName, Decimal, OrderType, Signal, SignalComment, SignalError, SignalId, Symbol,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};

use crate::clock::unix_ms;

/// A signal as a provider publishes it: everything but the channel, the
/// position and the id, which the gateway assigns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalDraft {
    /// The instrument.
    pub symbol: Symbol,
    /// What to do.
    pub action: Action,
    /// How to place an opening order.
    pub order_type: OrderType,
    /// Lots.
    pub volume: Decimal,
    /// Limit or stop price.
    #[serde(default)]
    pub price: Option<Decimal>,
    /// Stop loss.
    #[serde(default)]
    pub stop_loss: Option<Decimal>,
    /// Take profit.
    #[serde(default)]
    pub take_profit: Option<Decimal>,
    /// The EA's magic number.
    #[serde(default)]
    pub magic: u64,
    /// Order comment.
    #[serde(default = "empty_comment")]
    pub comment: SignalComment,
    /// When the provider issued it; the gateway's time when absent.
    #[serde(default)]
    pub issued_at_ms: Option<u64>,
    /// Do not act after this instant.
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
    /// The signal a close, modify or cancel acts on.
    #[serde(default)]
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

/// Channel logs in sled: `signals` keyed by (channel, position),
/// `channel_heads`, and `signal_index` from signal id to its place.
#[derive(Debug, Clone)]
pub struct SledSignalLog {
    db: sled::Db,
    signals: sled::Tree,
    heads: sled::Tree,
    index: sled::Tree,
    publish_keys: sled::Tree,
}

impl SledSignalLog {
    /// Opens the trees in `db`.
    pub fn open(db: &sled::Db) -> sled::Result<Self> {
        Ok(Self {
            db: db.clone(),
            signals: db.open_tree("signals")?,
            heads: db.open_tree("channel_heads")?,
            index: db.open_tree("signal_index")?,
            publish_keys: db.open_tree("publish_keys")?,
        })
    }
}

impl SignalLog for SledSignalLog {
    fn append<'a>(
        &'a self,
        channel: &'a ChannelName,
        draft: SignalDraft,
        idempotency_key: Option<&'a str>,
    ) -> LogFuture<'a, Appended> {
        Box::pin(async move {
            use sled::Transactional;
            use sled::transaction::{ConflictableTransactionError, TransactionError};

            let probe = prepare(channel, &draft)?;
            let signal_id = probe.signal_id;
            let name = channel.as_str().as_bytes();
            let publish_key =
                idempotency_key.map(|key| [&signal_key(channel, 0)[..], key.as_bytes()].concat());
            let outcome = (&self.signals, &self.heads, &self.index, &self.publish_keys)
                .transaction(|(signals, heads, index, keys)| {
                    if let Some(publish_key) = &publish_key
                        && let Some(position) = keys.get(publish_key)?
                    {
                        let stored = signals.get(signal_key(channel, read_u64(&position)))?;
                        return Ok((stored.map(|bytes| bytes.to_vec()), None));
                    }
                    let head = heads.get(name)?.as_deref().map_or(0, read_u64);
                    let position = head + 1;
                    let mut signal = probe.clone();
                    signal.position = position;
                    let key = signal_key(channel, position);
                    let value = serde_json::to_vec(&signal).expect("a signal always serializes");
                    signals.insert(&key[..], value)?;
                    heads.insert(name, &position.to_be_bytes()[..])?;
                    index.insert(&signal_id.0[..], &key[..])?;
                    if let Some(publish_key) = &publish_key {
                        keys.insert(&publish_key[..], &position.to_be_bytes()[..])?;
                    }
                    Ok::<_, ConflictableTransactionError<()>>((None, Some(signal)))
                })
                .map_err(|e| match e {
                    TransactionError::Storage(e) => SignalLogError::Sled(e),
                    TransactionError::Abort(()) => SignalLogError::Corrupt("aborted".into()),
                })?;
            crate::durable::flush(&self.db).await?;
            match outcome {
                (_, Some(signal)) => Ok(Appended {
                    signal,
                    replayed: false,
                }),
                (Some(stored), None) => {
                    let stored: Signal = serde_json::from_slice(&stored)
                        .map_err(|e| SignalLogError::Corrupt(e.to_string()))?;
                    replay(&draft, stored)
                }
                (None, None) => Err(SignalLogError::Corrupt(
                    "idempotency key without its signal".into(),
                )),
            }
        })
    }

    fn read_after<'a>(
        &'a self,
        channel: &'a ChannelName,
        after: u64,
        limit: usize,
    ) -> LogFuture<'a, Vec<Signal>> {
        Box::pin(async move {
            let start = signal_key(channel, after.saturating_add(1));
            let end = signal_key(channel, u64::MAX);
            let mut found = Vec::new();
            for entry in self.signals.range(start..=end).take(limit) {
                let (_, value) = entry?;
                found.push(
                    serde_json::from_slice(&value)
                        .map_err(|e| SignalLogError::Corrupt(e.to_string()))?,
                );
            }
            Ok(found)
        })
    }

    fn locate<'a>(&'a self, signal_id: SignalId) -> LogFuture<'a, Option<(ChannelName, u64)>> {
        Box::pin(async move {
            let Some(key) = self.index.get(signal_id.0)? else {
                return Ok(None);
            };
            let corrupt = || SignalLogError::Corrupt("signal index entry".into());
            let len = usize::from(*key.first().ok_or_else(corrupt)?);
            let name = key.get(1..1 + len).ok_or_else(corrupt)?;
            let channel = std::str::from_utf8(name)
                .ok()
                .and_then(|name| ChannelName::new(name).ok())
                .ok_or_else(corrupt)?;
            let position = key.get(1 + len..).map(read_u64).ok_or_else(corrupt)?;
            Ok(Some((channel, position)))
        })
    }

    fn head<'a>(&'a self, channel: &'a ChannelName) -> LogFuture<'a, u64> {
        Box::pin(async move {
            Ok(self
                .heads
                .get(channel.as_str().as_bytes())?
                .as_deref()
                .map_or(0, read_u64))
        })
    }

    fn trim<'a>(&'a self, cutoff_ms: u64) -> LogFuture<'a, u64> {
        let log = self.clone();
        Box::pin(async move {
            let removed = tokio::task::spawn_blocking(move || log.trim_now(cutoff_ms))
                .await
                .map_err(|e| SignalLogError::Corrupt(format!("trimming task failed: {e}")))??;
            crate::durable::flush(&self.db).await?;
            Ok(removed)
        })
    }
}

impl SledSignalLog {
    fn trim_now(&self, cutoff_ms: u64) -> Result<u64, SignalLogError> {
        let mut removed = 0;
        for head in self.heads.iter() {
            let (name, _) = head?;
            let Some(channel) = std::str::from_utf8(&name)
                .ok()
                .and_then(|name| ChannelName::new(name).ok())
            else {
                continue;
            };
            let mut expired = Vec::new();
            let range = signal_key(&channel, 1)..=signal_key(&channel, u64::MAX);
            for entry in self.signals.range(range) {
                let (key, value) = entry?;
                let signal: Signal = serde_json::from_slice(&value)
                    .map_err(|e| SignalLogError::Corrupt(e.to_string()))?;
                if logged_at_ms(signal.signal_id) >= cutoff_ms {
                    break;
                }
                expired.push((key, signal.signal_id, signal.position));
            }
            let Some(&(_, _, newest)) = expired.last() else {
                continue;
            };
            // Keys first: a retry arriving mid-way publishes anew rather
            // than find a key whose signal is gone.
            for entry in self.publish_keys.scan_prefix(signal_key(&channel, 0)) {
                let (key, position) = entry?;
                if read_u64(&position) <= newest {
                    self.publish_keys.remove(key)?;
                }
            }
            for (key, signal_id, _) in &expired {
                self.signals.remove(key)?;
                self.index.remove(signal_id.0)?;
            }
            removed += expired.len() as u64;
        }
        Ok(removed)
    }
}

fn signal_key(channel: &ChannelName, position: u64) -> Vec<u8> {
    let name = channel.as_str().as_bytes();
    let mut key = Vec::with_capacity(1 + name.len() + 8);
    key.push(name.len() as u8);
    key.extend_from_slice(name);
    key.extend_from_slice(&position.to_be_bytes());
    key
}

fn read_u64(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

/// 48 bits of milliseconds then 80 random bits: unique, and sorting by id
/// sorts by publication time.
fn new_signal_id(now_ms: u64) -> Result<SignalId, SignalLogError> {
    let mut id = [0u8; 16];
    id[..6].copy_from_slice(&now_ms.to_be_bytes()[2..]);
    getrandom::fill(&mut id[6..]).map_err(|_| SignalLogError::Random)?;
    Ok(SignalId(id))
}

/// How often the hub looks at the logs of followed channels for signals
/// it was never told of.
const LOG_RECHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// One channel's live fan-out.
#[derive(Debug)]
struct Feed {
    sender: broadcast::Sender<Arc<Signal>>,
    /// The highest position announced (or found by a recheck).
    announced: u64,
}

/// Live fan-out: one bounded broadcast per channel. Cheap to clone; clones
/// share the channels.
///
/// An announcement can be missed: a publish whose caller vanished mid-way,
/// another process's publish while the pub/sub connection was down. The log
/// is the truth, so [`SignalHub::recheck`] looks at the head of every
/// followed channel now and then (one read per channel, however many
/// followers) and announces the newest signal if it is newer than anything
/// announced; followers that see a gap reread the log.
#[derive(Debug, Clone)]
pub struct SignalHub {
    channels: Arc<Mutex<HashMap<ChannelName, Feed>>>,
    capacity: usize,
}

impl SignalHub {
    /// A hub whose broadcasts hold `capacity` signals each.
    pub fn new(capacity: usize) -> Self {
        Self {
            channels: Arc::new(Mutex::new(HashMap::new())),
            capacity: capacity.max(1),
        }
    }

    /// A receiver of `channel`'s announcements, made under the lock so a
    /// recheck can never drop the feed between creating and subscribing.
    fn subscribe(&self, channel: &ChannelName) -> broadcast::Receiver<Arc<Signal>> {
        self.channels
            .lock()
            .expect("hub lock")
            .entry(channel.clone())
            .or_insert_with(|| Feed {
                sender: broadcast::channel(self.capacity).0,
                announced: 0,
            })
            .sender
            .subscribe()
    }

    /// Hands a published signal to every live follower of its channel.
    pub fn announce(&self, signal: Signal) {
        let mut channels = self.channels.lock().expect("hub lock");
        // Nobody follows the channel here: nothing to do, nothing to keep.
        let Some(feed) = channels.get_mut(&signal.channel) else {
            return;
        };
        feed.announced = feed.announced.max(signal.position);
        // No receiver just means the last follower just left.
        let _ = feed.sender.send(Arc::new(signal));
    }

    /// Every [`LOG_RECHECK`], announces the newest signal of each followed
    /// channel whose log is ahead of its announcements, and forgets
    /// channels nobody follows. Runs until aborted.
    pub async fn recheck(self, log: Arc<dyn SignalLog>) {
        let mut tick = tokio::time::interval(LOG_RECHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let followed: Vec<(ChannelName, u64)> = {
                let mut channels = self.channels.lock().expect("hub lock");
                channels.retain(|_, feed| feed.sender.receiver_count() > 0);
                channels
                    .iter()
                    .map(|(channel, feed)| (channel.clone(), feed.announced))
                    .collect()
            };
            for (channel, announced) in followed {
                let newest = match log.head(&channel).await {
                    Ok(head) if head > announced => log.read_after(&channel, head - 1, 1).await,
                    Ok(_) => continue,
                    Err(e) => Err(e),
                };
                match newest {
                    Ok(batch) => batch.into_iter().for_each(|signal| self.announce(signal)),
                    Err(e) => {
                        tracing::warn!(%channel, error = %e, "rechecking a channel's log failed")
                    }
                }
            }
        }
    }

    /// Follows `channel` from the position after `after`: every signal in
    /// order, without gaps or repeats, into `out`. Returns when `out` is
    /// closed (the session ended) or the log fails.
    pub async fn follow(
        &self,
        log: Arc<dyn SignalLog>,
        channel: ChannelName,
        after: u64,
        out: mpsc::Sender<Arc<Signal>>,
    ) -> Result<(), SignalLogError> {
        // Subscribe before reading the log, so nothing published in between
        // is missed.
        let mut live = self.subscribe(&channel);
        let mut next = after.saturating_add(1);
        loop {
            // Catch up from the log.
            loop {
                let batch = log.read_after(&channel, next - 1, 256).await?;
                if batch.is_empty() {
                    break;
                }
                if let Some(first) = batch.first().filter(|s| s.position > next) {
                    // Only retention leaves holes: the device was away for
                    // longer than signals are kept.
                    tracing::warn!(
                        %channel,
                        expired_from = next,
                        expired_to = first.position - 1,
                        "signals expired before the device resumed"
                    );
                }
                for signal in batch {
                    next = signal.position + 1;
                    if out.send(Arc::new(signal)).await.is_err() {
                        return Ok(());
                    }
                }
            }
            // Then follow live until a gap or lag sends us back to the log.
            // A full `out` (a slow device) makes this follower lag, never
            // the others, and its catching up reads the log, not memory.
            loop {
                match live.recv().await {
                    Ok(signal) if signal.position < next => continue,
                    Ok(signal) if signal.position == next => {
                        next += 1;
                        if out.send(signal).await.is_err() {
                            return Ok(());
                        }
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                }
            }
        }
    }
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

/// Device positions in sled trees: reported (`device_positions`),
/// delivered (`device_deliveries`) and where subscriptions started
/// (`device_subscription_starts`).
#[derive(Debug, Clone)]
pub struct SledPositions {
    db: sled::Db,
    positions: sled::Tree,
    deliveries: sled::Tree,
    starts: sled::Tree,
}

impl SledPositions {
    /// Opens the trees of `db`.
    pub fn open(db: &sled::Db) -> sled::Result<Self> {
        Ok(Self {
            db: db.clone(),
            positions: db.open_tree("device_positions")?,
            deliveries: db.open_tree("device_deliveries")?,
            starts: db.open_tree("device_subscription_starts")?,
        })
    }
}

/// A device's position in a channel, as recorded in `tree`.
fn read_position(
    tree: &sled::Tree,
    device_id: &str,
    channel: &ChannelName,
) -> Result<Option<u64>, SignalLogError> {
    Ok(tree
        .get(position_key(device_id, channel))?
        .as_deref()
        .map(read_u64))
}

/// Raises a device's position in a channel in `tree`, never lowers it.
fn raise(
    tree: &sled::Tree,
    device_id: &str,
    channel: &ChannelName,
    position: u64,
) -> Result<(), SignalLogError> {
    tree.fetch_and_update(position_key(device_id, channel), |old| {
        let current = old.map_or(0, read_u64);
        Some(current.max(position).to_be_bytes().to_vec())
    })?;
    Ok(())
}

impl PositionStore for SledPositions {
    fn get<'a>(
        &'a self,
        device_id: &'a str,
        channel: &'a ChannelName,
    ) -> LogFuture<'a, Option<u64>> {
        Box::pin(async move { read_position(&self.positions, device_id, channel) })
    }

    fn start_subscription<'a>(
        &'a self,
        device_id: &'a str,
        channel: &'a ChannelName,
        position: u64,
    ) -> LogFuture<'a, ()> {
        let key = position_key(device_id, channel);
        Box::pin(async move {
            let value = position.to_be_bytes();
            self.positions.insert(&key, &value[..])?;
            self.starts.insert(&key, &value[..])?;
            // A subscription's start must survive a crash.
            crate::durable::flush(&self.db).await?;
            Ok(())
        })
    }

    fn recorded_start<'a>(
        &'a self,
        device_id: &'a str,
        channel: &'a ChannelName,
    ) -> LogFuture<'a, Option<u64>> {
        Box::pin(async move { read_position(&self.starts, device_id, channel) })
    }

    fn advance<'a>(
        &'a self,
        device_id: &'a str,
        channel: &'a ChannelName,
        position: u64,
    ) -> LogFuture<'a, ()> {
        Box::pin(async move {
            // Not flushed: the report that proves the position is durable,
            // and a position lost in a crash only means the device is sent
            // signals it already has, which it drops by position.
            raise(&self.positions, device_id, channel, position)
        })
    }

    fn mark_delivered<'a>(
        &'a self,
        device_id: &'a str,
        channel: &'a ChannelName,
        position: u64,
    ) -> LogFuture<'a, ()> {
        // Not flushed: a delivery lost in a crash only shows as pending.
        Box::pin(async move { raise(&self.deliveries, device_id, channel, position) })
    }

    fn delivered<'a>(
        &'a self,
        device_id: &'a str,
        channel: &'a ChannelName,
    ) -> LogFuture<'a, Option<u64>> {
        Box::pin(async move { read_position(&self.deliveries, device_id, channel) })
    }
}

fn position_key(device_id: &str, channel: &ChannelName) -> Vec<u8> {
    let id = device_id.as_bytes();
    let mut key = Vec::with_capacity(1 + id.len() + channel.as_str().len());
    key.push(id.len() as u8);
    key.extend_from_slice(id);
    key.extend_from_slice(channel.as_str().as_bytes());
    key
}
