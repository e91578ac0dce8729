//! The stores on Redis, for several gateways sharing one Redis (or a Redis
//! Cluster: every key of one device, or of one channel, carries the same
//! hash tag, so each script touches one slot).
//!
//! The keys and how to read them with `redis-cli` are in docs/redis.md.

use std::sync::LazyLock;

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script, Value};

use eagate_protocol::{ChannelName, DeviceId, Nonce, Signal, SignalId};

use crate::nonces::{NonceFuture, NonceStore};
use crate::registry::{
    DeviceRecord, DeviceStore, Modified, RecordChange, RegistryError, RegistryFuture, encode,
};
use crate::reports::{
    FeedFill, Ingested, MAX_REPORT_GAP, ReportKind, ReportStore, ReportStoreError, SessionEpoch,
    StoreFuture, StoredReport,
};
use crate::signals::{Appended, LogFuture, PositionStore, SignalDraft, SignalLog, SignalLogError};

/// A connection to the shared Redis, and the prefix of every key.
#[derive(Clone)]
pub struct RedisStores {
    client: redis::Client,
    connection: ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for RedisStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStores")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStores {
    /// Connects to `url` (`redis://host:port/db`); every key starts with
    /// `prefix` (default `eagate`), so deployments or tests can share a Redis.
    pub async fn connect(url: &str, prefix: &str) -> redis::RedisResult<Self> {
        let client = redis::Client::open(url)?;
        Ok(Self {
            connection: ConnectionManager::new(client.clone()).await?,
            client,
            prefix: prefix.to_owned(),
        })
    }

    /// The client, for connections of their own (pub/sub).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The prefix of every key.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Where notices between processes go (see [`crate::notices`]).
    pub fn notices(&self) -> crate::notices::Notices {
        crate::notices::Notices::Redis {
            connection: self.connection.clone(),
            channel: crate::notices::redis_channel(&self.prefix),
        }
    }

    /// Records `check` (a [`crate::seal::MasterKey::check_value`]) as the
    /// deployment's master key on first use; returns whether it matches the
    /// one recorded.
    pub async fn same_master_key(&self, check: &str) -> redis::RedisResult<bool> {
        let key = format!("{}:master-key-check", self.prefix);
        let mut connection = self.connection.clone();
        let _: bool = connection.set_nx(&key, check).await?;
        let recorded: String = connection.get(&key).await?;
        Ok(recorded == check)
    }

    fn device_key(&self, device_id: &str, what: &str) -> String {
        format!("{}:{{dev:{device_id}}}:{what}", self.prefix)
    }

    fn channel_key(&self, channel: &ChannelName, what: &str) -> String {
        format!("{}:{{ch:{channel}}}:{what}", self.prefix)
    }

    fn signal_reports_key(&self, signal_id: SignalId) -> String {
        format!("{}:signal:{signal_id}:reports", self.prefix)
    }

    fn fill_feed_key(&self) -> String {
        format!("{}:fill-feed", self.prefix)
    }

    fn signal_index_key(&self) -> String {
        format!("{}:signal-index", self.prefix)
    }

    fn channels_key(&self) -> String {
        format!("{}:channels", self.prefix)
    }

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

/// Hashed once; invoked by EVALSHA, loaded on a NOSCRIPT answer.
static INGEST_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("redis_scripts/ingest_report.lua")));
static BEGIN_SESSION_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("redis_scripts/begin_session.lua")));
const RENEW_PRESENCE: &str = include_str!("redis_scripts/renew_presence.lua");
static RENEW_PRESENCE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RENEW_PRESENCE));
static APPEND_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(APPEND));

fn stream_fields(report: &StoredReport) -> Vec<(String, String)> {
    let mut fields = vec![
        ("device_id".to_owned(), report.device_id.clone()),
        ("seq".to_owned(), report.seq.to_string()),
        ("signal_id".to_owned(), report.signal_id.to_string()),
        (
            "kind".to_owned(),
            match report.kind {
                ReportKind::Received => "received",
                ReportKind::Filled => "filled",
                ReportKind::Rejected => "rejected",
            }
            .to_owned(),
        ),
        ("at_ms".to_owned(), report.at_ms.to_string()),
        ("stored_at_ms".to_owned(), report.stored_at_ms.to_string()),
    ];
    let optional = [
        ("ticket", report.ticket.map(|t| t.to_string())),
        ("price", report.price.map(|p| p.to_string())),
        ("volume", report.volume.map(|v| v.to_string())),
        ("error_code", report.error_code.map(|c| c.to_string())),
        ("error_text", report.error_text.clone()),
    ];
    fields.extend(
        optional
            .into_iter()
            .filter_map(|(name, value)| Some((name.to_owned(), value?))),
    );
    fields
}

impl ReportStore for RedisStores {
    fn ingest<'a>(
        &'a self,
        report: &'a StoredReport,
        epoch: Option<SessionEpoch>,
    ) -> StoreFuture<'a, Ingested> {
        Box::pin(async move {
            if report.seq == 0 {
                return Err(ReportStoreError::ZeroSequence);
            }
            let json = serde_json::to_string(report).expect("a report always serializes");
            let mut script = INGEST_SCRIPT.prepare_invoke();
            script
                .key(self.device_key(&report.device_id, "reports"))
                .key(self.device_key(&report.device_id, "watermark"))
                .key(self.device_key(&report.device_id, "executions"))
                .key(self.device_key(&report.device_id, "session"))
                .arg(report.seq)
                .arg(json)
                .arg(MAX_REPORT_GAP)
                .arg(epoch.map_or(0, |SessionEpoch(epoch)| epoch));
            for (name, value) in stream_fields(report) {
                script.arg(name).arg(value);
            }
            let mut connection = self.connection.clone();
            // The fill feed first, on every attempt: once the script has
            // run, the watermark may confirm this report to the device, which
            // then never resends it; a feed entry written after it could be
            // lost to a crash. A duplicate entry is harmless (the reader is
            // idempotent), and so is the entry of a fill the script then
            // refuses (a replaced session's, or one under a number taken by
            // another installation): it is a real trade of the device's
            // account, which the device stores later under a number of its own.
            if report.kind == ReportKind::Filled {
                let fill = FeedFill::of(report);
                let _: String = connection
                    .xadd(
                        self.fill_feed_key(),
                        "*",
                        &[
                            ("device_id", fill.device_id),
                            ("seq", fill.seq.to_string()),
                            ("stored_at_ms", fill.stored_at_ms.to_string()),
                        ],
                    )
                    .await?;
            }
            let (stored, watermark, existing): (i8, u64, Option<String>) =
                script.invoke_async(&mut connection).await?;
            match stored {
                -2 => return Ok(Ingested::Superseded),
                -1 => {
                    return Err(ReportStoreError::TooFarAhead {
                        seq: report.seq,
                        confirmed: watermark,
                    });
                }
                _ => {}
            }
            let ingested = match existing {
                Some(existing) => {
                    crate::reports::resend_outcome(existing.as_bytes(), report, watermark)?
                }
                None => Ingested::Stored {
                    confirmed_up_to: watermark,
                },
            };
            // Outside the script: the index key is in another slot. Added on
            // every attempt that finds the report stored, so a crash between
            // the two is mended by the device's resend of the unconfirmed
            // report; never for a conflict, whose number holds another
            // signal's report.
            if !matches!(ingested, Ingested::Conflict { .. }) {
                let _: () = connection
                    .sadd(
                        self.signal_reports_key(report.signal_id),
                        format!("{} {}", report.device_id, report.seq),
                    )
                    .await?;
            }
            Ok(ingested)
        })
    }

    fn begin_session<'a>(&'a self, device_id: &'a str) -> StoreFuture<'a, (SessionEpoch, u64)> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let (epoch, watermark): (u64, u64) = BEGIN_SESSION_SCRIPT
                .key(self.device_key(device_id, "session"))
                .key(self.device_key(device_id, "watermark"))
                .invoke_async(&mut connection)
                .await?;
            Ok((SessionEpoch(epoch), watermark))
        })
    }

    fn current_session<'a>(&'a self, device_id: &'a str) -> StoreFuture<'a, SessionEpoch> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let epoch: Option<u64> = connection
                .get(self.device_key(device_id, "session"))
                .await?;
            Ok(SessionEpoch(epoch.unwrap_or(0)))
        })
    }

    fn confirmed_up_to<'a>(&'a self, device_id: &'a str) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let watermark: Option<u64> = connection
                .get(self.device_key(device_id, "watermark"))
                .await?;
            Ok(watermark.unwrap_or(0))
        })
    }

    fn for_signal<'a>(&'a self, signal_id: SignalId) -> StoreFuture<'a, Vec<StoredReport>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let members: Vec<String> = connection
                .smembers(self.signal_reports_key(signal_id))
                .await?;
            let mut places: Vec<(String, u64)> = members
                .iter()
                .filter_map(|m| {
                    let (device, seq) = m.rsplit_once(' ')?;
                    Some((device.to_owned(), seq.parse().ok()?))
                })
                .collect();
            places.sort();
            let mut found = Vec::with_capacity(places.len());
            for (device, seq) in places {
                let json: Option<String> = connection
                    .hget(self.device_key(&device, "reports"), seq)
                    .await?;
                if let Some(json) = json {
                    found.push(
                        serde_json::from_str(&json)
                            .map_err(|e| ReportStoreError::Corrupt(e.to_string()))?,
                    );
                }
            }
            Ok(found)
        })
    }

    fn unclaimed_fills(&self, limit: usize) -> StoreFuture<'_, Vec<FeedFill>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let reply: redis::streams::StreamRangeReply = connection
                .xrange_count(self.fill_feed_key(), "-", "+", limit)
                .await?;
            Ok(reply
                .ids
                .into_iter()
                .map(|entry| {
                    let field = |name: &str| entry.get::<String>(name);
                    let number = |name: &str| field(name)?.parse::<u64>().ok();
                    let read = || {
                        Some(FeedFill {
                            device_id: field("device_id")?,
                            seq: number("seq")?,
                            stored_at_ms: number("stored_at_ms")?,
                            mark: Vec::new(),
                        })
                    };
                    let mut fill = read().unwrap_or_else(|| {
                        tracing::error!(entry = %entry.id, "a fill feed entry is damaged; skipping it");
                        FeedFill::damaged()
                    });
                    fill.mark = entry.id.clone().into_bytes();
                    fill
                })
                .collect())
        })
    }

    fn claim_fills<'a>(&'a self, fills: &'a [FeedFill]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if fills.is_empty() {
                return Ok(());
            }
            let ids: Vec<String> = fills
                .iter()
                .map(|fill| String::from_utf8_lossy(&fill.mark).into_owned())
                .collect();
            let mut connection = self.connection.clone();
            let _: u64 = connection.xdel(self.fill_feed_key(), &ids).await?;
            Ok(())
        })
    }
}

/// Appends a signal at the channel's next position; the stream entry id is
/// the position, so XRANGE by position needs no index. With an idempotency
/// key (ARGV[1], empty for none) already used, appends nothing and returns
/// the position that key published.
const APPEND: &str = r"
if ARGV[1] ~= '' then
  local published = redis.call('HGET', KEYS[3], ARGV[1])
  if published then return {tonumber(published), 1} end
end
local position = redis.call('INCR', KEYS[1])
local fields = {}
for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[2], position .. '-0', unpack(fields))
if ARGV[1] ~= '' then redis.call('HSET', KEYS[3], ARGV[1], position) end
return {position, 0}
";

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
            let _: () = redis::pipe()
                .hset(
                    self.signal_index_key(),
                    appended.signal.signal_id.to_string(),
                    format!("{channel} {}", appended.signal.position),
                )
                .ignore()
                .sadd(self.channels_key(), channel.as_str())
                .ignore()
                .query_async(&mut connection)
                .await?;
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

impl NonceStore for RedisStores {
    fn claim<'a>(
        &'a self,
        device_id: &'a DeviceId,
        nonce: &'a Nonce,
        _now_ms: u64,
        ttl_ms: u64,
    ) -> NonceFuture<'a, bool> {
        Box::pin(async move {
            let hex: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
            let key = self.device_key(device_id.as_str(), &format!("nonce:{hex}"));
            let mut connection = self.connection.clone();
            // SET NX PX: atomic, expiring, shared by every gateway.
            let set: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms.max(1))
                .query_async(&mut connection)
                .await?;
            Ok(set.is_some())
        })
    }
}

/// Compare-and-set of one device record with its name index. KEYS: the
/// records hash, the names hash. ARGV: device id, the record as read ('' for
/// none), the new record, its old name key ('' for none), its new name key.
/// Returns 1 when written, 0 when the record changed since it was read, -1
/// when another device holds the name.
const MODIFY_DEVICE: &str = r"
local current = redis.call('HGET', KEYS[1], ARGV[1])
if (current or '') ~= ARGV[2] then return 0 end
local holder = redis.call('HGET', KEYS[2], ARGV[5])
if holder and holder ~= ARGV[1] then return -1 end
if ARGV[4] ~= '' and ARGV[4] ~= ARGV[5] then redis.call('HDEL', KEYS[2], ARGV[4]) end
redis.call('HSET', KEYS[2], ARGV[5], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
";
static MODIFY_DEVICE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(MODIFY_DEVICE));

/// A writer racing this many others in a row gives up rather than spin.
const MODIFY_ATTEMPTS: usize = 32;

impl RedisStores {
    /// The registry's keys share one hash tag: a registry is small and
    /// rarely written, and one slot lets a script keep names unique
    /// atomically even on a Redis Cluster.
    fn registry_key(&self, what: &str) -> String {
        format!("{}:{{registry}}:{what}", self.prefix)
    }

    fn decode_device(device_id: &str, json: &str) -> Result<DeviceRecord, RegistryError> {
        serde_json::from_str(json).map_err(|_| RegistryError::Corrupt(device_id.to_owned()))
    }
}

impl DeviceStore for RedisStores {
    fn get<'a>(&'a self, device_id: &'a str) -> RegistryFuture<'a, Option<DeviceRecord>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let json: Option<String> = connection
                .hget(self.registry_key("devices"), device_id)
                .await?;
            json.map(|json| Self::decode_device(device_id, &json))
                .transpose()
        })
    }

    fn list<'a>(&'a self, account_id: Option<&'a str>) -> RegistryFuture<'a, Vec<DeviceRecord>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let all: Vec<(String, String)> =
                connection.hgetall(self.registry_key("devices")).await?;
            let mut found = Vec::with_capacity(all.len());
            for (device_id, json) in all {
                let record = Self::decode_device(&device_id, &json)?;
                if account_id.is_none_or(|account| account == record.account_id) {
                    found.push(record);
                }
            }
            found.sort_by(|a, b| a.device_id.cmp(&b.device_id));
            Ok(found)
        })
    }

    fn modify<'a>(
        &'a self,
        device_id: &'a str,
        change: RecordChange,
    ) -> RegistryFuture<'a, Modified> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            for _ in 0..MODIFY_ATTEMPTS {
                let read: Option<String> = connection
                    .hget(self.registry_key("devices"), device_id)
                    .await?;
                let before = read
                    .as_deref()
                    .map(|json| Self::decode_device(device_id, json))
                    .transpose()?;
                let after = change(before.as_ref())?;
                let old_name = before
                    .as_ref()
                    .map(|b| name_key_text(&b.account_id, &b.name))
                    .unwrap_or_default();
                let written: i8 = MODIFY_DEVICE_SCRIPT
                    .key(self.registry_key("devices"))
                    .key(self.registry_key("names"))
                    .arg(device_id)
                    .arg(read.as_deref().unwrap_or(""))
                    .arg(String::from_utf8(encode(&after)).expect("JSON is UTF-8"))
                    .arg(old_name)
                    .arg(name_key_text(&after.account_id, &after.name))
                    .invoke_async(&mut connection)
                    .await?;
                match written {
                    1 => return Ok(Modified { before, after }),
                    -1 => return Err(RegistryError::NameTaken(after.name)),
                    // Changed under us: read it again and reapply.
                    _ => continue,
                }
            }
            Err(RegistryError::Contended(device_id.to_owned()))
        })
    }
}

/// The name index's field: the account's length, so no account can run
/// into a name, then the account and the name.
fn name_key_text(account_id: &str, name: &str) -> String {
    format!("{}:{account_id}:{name}", account_id.len())
}

/// Raises a device's position in a channel, never lowers it.
const ADVANCE_POSITION: &str = r"
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > current then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 0
";
static ADVANCE_POSITION_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(ADVANCE_POSITION));

impl RedisStores {
    /// A device's position in a channel from its `what` hash.
    async fn read_position(
        &self,
        what: &str,
        device_id: &str,
        channel: &ChannelName,
    ) -> Result<Option<u64>, SignalLogError> {
        let mut connection = self.connection.clone();
        Ok(connection
            .hget(self.device_key(device_id, what), channel.as_str())
            .await?)
    }

    /// Raises a device's position in a channel in its `what` hash.
    async fn raise_position(
        &self,
        what: &str,
        device_id: &str,
        channel: &ChannelName,
        position: u64,
    ) -> Result<(), SignalLogError> {
        let mut connection = self.connection.clone();
        let _: i64 = ADVANCE_POSITION_SCRIPT
            .key(self.device_key(device_id, what))
            .arg(channel.as_str())
            .arg(position)
            .invoke_async(&mut connection)
            .await?;
        Ok(())
    }
}

impl PositionStore for RedisStores {
    fn get<'a>(
        &'a self,
        device_id: &'a str,
        channel: &'a ChannelName,
    ) -> LogFuture<'a, Option<u64>> {
        Box::pin(self.read_position("positions", device_id, channel))
    }

    fn start_subscription<'a>(
        &'a self,
        device_id: &'a str,
        channel: &'a ChannelName,
        position: u64,
    ) -> LogFuture<'a, ()> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let _: () = redis::pipe()
                .atomic()
                .hset(
                    self.device_key(device_id, "positions"),
                    channel.as_str(),
                    position,
                )
                .ignore()
                .hset(
                    self.device_key(device_id, "starts"),
                    channel.as_str(),
                    position,
                )
                .ignore()
                .query_async(&mut connection)
                .await?;
            Ok(())
        })
    }

    fn recorded_start<'a>(
        &'a self,
        device_id: &'a str,
        channel: &'a ChannelName,
    ) -> LogFuture<'a, Option<u64>> {
        Box::pin(self.read_position("starts", device_id, channel))
    }

    fn advance<'a>(
        &'a self,
        device_id: &'a str,
        channel: &'a ChannelName,
        position: u64,
    ) -> LogFuture<'a, ()> {
        Box::pin(self.raise_position("positions", device_id, channel, position))
    }

    fn mark_delivered<'a>(
        &'a self,
        device_id: &'a str,
        channel: &'a ChannelName,
        position: u64,
    ) -> LogFuture<'a, ()> {
        Box::pin(self.raise_position("delivered", device_id, channel, position))
    }

    fn delivered<'a>(
        &'a self,
        device_id: &'a str,
        channel: &'a ChannelName,
    ) -> LogFuture<'a, Option<u64>> {
        Box::pin(self.read_position("delivered", device_id, channel))
    }
}

/// How long a gateway's word that a device is connected lasts unless it is
/// renewed: a gateway that dies stops renewing, and its devices show offline
/// this long after.
pub const PRESENCE_TTL_MS: u64 = 30_000;

impl RedisStores {
    /// Records that `device_id` is connected to the gateway `instance` (or
    /// no longer is), and that it was seen now.
    pub async fn mark_presence(
        &self,
        device_id: &str,
        instance: &str,
        connected: bool,
        now_ms: u64,
    ) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        if connected {
            pipe.hset(
                self.device_key(device_id, "presence"),
                instance,
                now_ms + PRESENCE_TTL_MS,
            );
        } else {
            pipe.hdel(self.device_key(device_id, "presence"), instance);
        }
        pipe.ignore()
            .set(self.device_key(device_id, "last-seen"), now_ms)
            .ignore();
        let mut connection = self.connection.clone();
        pipe.query_async(&mut connection).await
    }

    /// Renews the presence of every device connected to `instance`, one
    /// script call each in one pipeline; a device whose entry is already
    /// gone (its session just ended) is left out.
    pub async fn renew_presence(
        &self,
        devices: &[String],
        instance: &str,
        now_ms: u64,
    ) -> redis::RedisResult<()> {
        if devices.is_empty() {
            return Ok(());
        }
        let mut connection = self.connection.clone();
        // Loaded first, so the pipelined EVALSHAs find it.
        let _: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(RENEW_PRESENCE)
            .query_async(&mut connection)
            .await?;
        let mut pipe = redis::pipe();
        for device_id in devices {
            pipe.cmd("EVALSHA")
                .arg(RENEW_PRESENCE_SCRIPT.get_hash())
                .arg(1)
                .arg(self.device_key(device_id, "presence"))
                .arg(instance)
                .arg(now_ms + PRESENCE_TTL_MS)
                .ignore();
        }
        pipe.query_async(&mut connection).await
    }

    /// The newest session epoch of each device, in order.
    pub async fn session_epochs(&self, devices: &[&str]) -> redis::RedisResult<Vec<SessionEpoch>> {
        let mut pipe = redis::pipe();
        for device_id in devices {
            pipe.get(self.device_key(device_id, "session"));
        }
        let mut connection = self.connection.clone();
        let epochs: Vec<Option<u64>> = pipe.query_async(&mut connection).await?;
        Ok(epochs
            .into_iter()
            .map(|epoch| SessionEpoch(epoch.unwrap_or(0)))
            .collect())
    }

    /// How many gateways other than `instance` hold a live session of
    /// `device_id` now.
    pub async fn presence_elsewhere(
        &self,
        device_id: &str,
        instance: &str,
        now_ms: u64,
    ) -> redis::RedisResult<usize> {
        let mut connection = self.connection.clone();
        let gateways: Vec<(String, u64)> = connection
            .hgetall(self.device_key(device_id, "presence"))
            .await?;
        Ok(gateways
            .iter()
            .filter(|(gateway, until)| gateway != instance && *until > now_ms)
            .count())
    }

    /// How many gateways hold a live session of `device_id`, and when it
    /// was last seen.
    pub async fn presence(
        &self,
        device_id: &str,
        now_ms: u64,
    ) -> redis::RedisResult<(usize, Option<u64>)> {
        let mut connection = self.connection.clone();
        let (gateways, last_seen): (Vec<(String, u64)>, Option<u64>) = redis::pipe()
            .hgetall(self.device_key(device_id, "presence"))
            .get(self.device_key(device_id, "last-seen"))
            .query_async(&mut connection)
            .await?;
        let live = gateways.iter().filter(|(_, until)| *until > now_ms).count();
        Ok((live, last_seen))
    }
}
