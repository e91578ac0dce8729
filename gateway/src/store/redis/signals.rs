//! Channel logs in Redis: per channel a stream whose entry ids are the
//! positions, the newest position, and the idempotency keys of publishes;
//! one index from signal id to its place, and the set of channels.

use std::sync::LazyLock;

use redis::{AsyncCommands, Script, Value};

use eagate_protocol::{ChannelName, Signal, SignalId};

use super::RedisStores;
use crate::signals::{Appended, LogFuture, SignalDraft, SignalLog, SignalLogError};

static APPEND_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/append_signal.lua")));

impl SignalLog for RedisStores {
    fn append<'a>(
        &'a self,
        channel: &'a ChannelName,
        draft: SignalDraft,
        idempotency_key: Option<&'a str>,
    ) -> LogFuture<'a, Appended> {
        Box::pin(async move {
            let mut signal = crate::signals::prepare(channel, &draft)?;
            let signal_id = signal.signal_id;
            // Stored with position 0; the stream entry id carries the real one.
            signal.position = 0;
            let json = serde_json::to_string(&signal).expect("a signal always serializes");
            let mut connection = self.connection.clone();
            let (position, replayed): (u64, u8) = APPEND_SCRIPT
                .key(self.channel_key(channel, "head"))
                .key(self.channel_key(channel, "signals"))
                .key(self.channel_key(channel, "publish-keys"))
                .arg(idempotency_key.unwrap_or(""))
                .arg("signal")
                .arg(json)
                .arg("signal_id")
                .arg(signal_id.to_string())
                .arg("symbol")
                .arg(signal.symbol.as_str())
                .arg("action")
                .arg(format!("{:?}", signal.action))
                .arg("volume")
                .arg(signal.volume.to_string())
                .invoke_async(&mut connection)
                .await?;
            let appended = if replayed == 1 {
                let stored = self
                    .read_after(channel, position - 1, 1)
                    .await?
                    .into_iter()
                    .next()
                    .ok_or_else(|| {
                        SignalLogError::Corrupt("idempotency key without its signal".into())
                    })?;
                crate::signals::replay(&draft, stored)?
            } else {
                signal.position = position;
                Appended {
                    signal,
                    replayed: false,
                }
            };
            // Outside the script (other slots); done on replays too, which
            // mends a crash in between.
            let mut index = redis::cmd("HSET");
            index
                .arg(self.signal_index_key())
                .arg(appended.signal.signal_id.to_string())
                .arg(format!("{channel} {}", appended.signal.position));
            let mut channels = redis::cmd("SADD");
            channels.arg(self.channels_key()).arg(channel.as_str());
            connection.send_by_slot(&[index, channels]).await?;
            Ok(appended)
        })
    }

    fn read_after<'a>(
        &'a self,
        channel: &'a ChannelName,
        after: u64,
        limit: usize,
    ) -> LogFuture<'a, Vec<Signal>> {
        Box::pin(async move {
            let Some(first) = after.checked_add(1) else {
                return Ok(Vec::new());
            };
            let mut connection = self.connection.clone();
            let entries: redis::streams::StreamRangeReply = connection
                .xrange_count(
                    self.channel_key(channel, "signals"),
                    format!("{first}-0"),
                    "+",
                    limit,
                )
                .await?;
            let mut found = Vec::with_capacity(entries.ids.len());
            for entry in entries.ids {
                let corrupt = || SignalLogError::Corrupt(format!("signal entry {}", entry.id));
                let position: u64 = entry
                    .id
                    .split_once('-')
                    .and_then(|(position, _)| position.parse().ok())
                    .ok_or_else(corrupt)?;
                let Some(Value::BulkString(json)) = entry.map.get("signal") else {
                    return Err(corrupt());
                };
                let mut signal: Signal = serde_json::from_slice(json).map_err(|_| corrupt())?;
                signal.position = position;
                found.push(signal);
            }
            Ok(found)
        })
    }

    fn locate<'a>(&'a self, signal_id: SignalId) -> LogFuture<'a, Option<(ChannelName, u64)>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let place: Option<String> = connection
                .hget(self.signal_index_key(), signal_id.to_string())
                .await?;
            let Some(place) = place else {
                return Ok(None);
            };
            let corrupt = || SignalLogError::Corrupt(format!("signal index entry {place:?}"));
            let (channel, position) = place.rsplit_once(' ').ok_or_else(corrupt)?;
            Ok(Some((
                ChannelName::new(channel).map_err(|_| corrupt())?,
                position.parse().map_err(|_| corrupt())?,
            )))
        })
    }

    fn head<'a>(&'a self, channel: &'a ChannelName) -> LogFuture<'a, u64> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let head: Option<u64> = connection.get(self.channel_key(channel, "head")).await?;
            Ok(head.unwrap_or(0))
        })
    }

    fn trim<'a>(&'a self, cutoff_ms: u64) -> LogFuture<'a, u64> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let channels: Vec<String> = connection.smembers(self.channels_key()).await?;
            let mut removed = 0;
            for channel in channels {
                let Ok(channel) = ChannelName::new(&channel) else {
                    continue;
                };
                removed += self.trim_channel(&channel, cutoff_ms).await?;
            }
            Ok(removed)
        })
    }
}

impl RedisStores {
    /// Trims one channel; see [`SignalLog::trim`].
    async fn trim_channel(
        &self,
        channel: &ChannelName,
        cutoff_ms: u64,
    ) -> Result<u64, SignalLogError> {
        let mut removed = 0;
        loop {
            let batch = self.read_after(channel, 0, 256).await?;
            let expired: Vec<&Signal> = batch
                .iter()
                .take_while(|s| crate::signals::logged_at_ms(s.signal_id) < cutoff_ms)
                .collect();
            let Some(newest) = expired.last().map(|s| s.position) else {
                return Ok(removed);
            };
            let mut connection = self.connection.clone();
            // Keys first: a retry arriving mid-way publishes anew rather
            // than find a key whose signal is gone.
            let keys: Vec<(String, u64)> = connection
                .hgetall(self.channel_key(channel, "publish-keys"))
                .await?;
            let stale: Vec<&String> = keys
                .iter()
                .filter(|(_, position)| *position <= newest)
                .map(|(key, _)| key)
                .collect();
            if !stale.is_empty() {
                let _: () = connection
                    .hdel(self.channel_key(channel, "publish-keys"), stale)
                    .await?;
            }
            let ids: Vec<String> = expired.iter().map(|s| s.signal_id.to_string()).collect();
            let _: () = connection.hdel(self.signal_index_key(), &ids).await?;
            let _: u64 = redis::cmd("XTRIM")
                .arg(self.channel_key(channel, "signals"))
                .arg("MINID")
                .arg(format!("{}-0", newest + 1))
                .query_async(&mut connection)
                .await?;
            removed += expired.len() as u64;
            if expired.len() < batch.len() {
                return Ok(removed);
            }
        }
    }
}
