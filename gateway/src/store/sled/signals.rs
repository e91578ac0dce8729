//! Channel logs in sled: each signal under (channel, position) in the
//! `signals` tree, each channel's newest position in `channel_heads`, and
//! `signal_index` from a signal's id to its place.

use eagate_protocol::{ChannelName, Signal, SignalId};

use super::read_u64;
use crate::durable::Durable;
use crate::signals::{
    Appended, LogFuture, SignalDraft, SignalLog, SignalLogError, logged_at_ms, prepare, replay,
};

/// Channel logs in sled: `signals` keyed by (channel, position),
/// `channel_heads`, and `signal_index` from signal id to its place.
#[derive(Debug, Clone)]
pub struct SledSignalLog {
    durable: Durable,
    signals: sled::Tree,
    heads: sled::Tree,
    index: sled::Tree,
    publish_keys: sled::Tree,
}

impl SledSignalLog {
    /// Opens the trees in `db`.
    pub fn open(durable: &Durable) -> sled::Result<Self> {
        let db = durable.db();
        Ok(Self {
            durable: durable.clone(),
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
            self.durable.durable().await?;
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
            self.durable.durable().await?;
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
