//! The shared backend: every store in one Redis (or a Redis Cluster), for
//! any number of gateways and one sidecar sharing it. One file per domain
//! here; the Lua scripts are in `scripts/`, each with its keys and
//! arguments in a header comment.
//!
//! Every key of one device, or of one channel, carries the same hash tag
//! (`{dev:…}`, `{ch:…}`), so each script touches one slot. The keys and how to
//! read them with `redis-cli` are in docs/redis.md.

mod batches;
mod nonces;
mod notices;
mod positions;
mod presence;
mod registry;
mod reports;
mod signals;

pub use notices::{RedisNoticeBus, listen};

use futures_util::future::join_all;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncCommands, Cmd, RedisFuture, Value};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::time::Duration;

use eagate_protocol::{ChannelName, SignalId};

/// A connection to the shared Redis, and the prefix of every key.
#[derive(Clone)]
pub struct RedisStores {
    client: redis::Client,
    connection: RedisConnection,
    prefix: String,
    /// Reports of every session, written to Redis in batches.
    report_batches: batches::ReportBatches,
}

impl std::fmt::Debug for RedisStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStores")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// How long one connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long any one Redis call may take before it fails (and the
/// connection is made again).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a process keeps trying to reach Redis at start.
pub const START_DEADLINE: Duration = Duration::from_secs(10);

impl RedisStores {
    /// Connects to `url` (`redis://host:port/db`); every key starts with
    /// `prefix` (default `eagate`), so deployments or tests can share a Redis.
    /// Starts, on the current runtime, the task that writes reports in
    /// batches; it ends with the last clone.
    ///
    /// Every call has a deadline ([`RESPONSE_TIMEOUT`]) and a lost
    /// connection is made again promptly; at start, an unreachable Redis is
    /// tried again (a log line each time) until [`START_DEADLINE`], then
    /// reported.
    ///
    /// `url` may name any node of a Redis Cluster: a node that says it is
    /// in cluster mode is asked for the others, and every call is then
    /// sent to the node holding its key's slot.
    pub async fn connect(url: &str, prefix: &str) -> redis::RedisResult<Self> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT)
            .set_number_of_retries(2)
            .set_max_delay(500);
        let deadline = tokio::time::Instant::now() + START_DEADLINE;
        let single = loop {
            match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
                Ok(connection) => break connection,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, "Redis is not reachable yet; trying again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let connection = if in_cluster_mode(&mut single.clone()).await? {
            let cluster = redis::cluster::ClusterClientBuilder::new(vec![url])
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT)
                .retries(2)
                .max_retry_wait(500)
                .build()?;
            // A cluster still agreeing on its slots refuses at first.
            let cluster = loop {
                match cluster.get_async_connection().await {
                    Ok(connection) => break connection,
                    Err(e) if tokio::time::Instant::now() < deadline => {
                        tracing::warn!(error = %e, "the Redis Cluster does not serve every slot yet; trying again");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => return Err(e),
                }
            };
            tracing::info!("Redis is a cluster: each call goes to its key's node");
            RedisConnection::Cluster(AtHome::here(cluster))
        } else {
            RedisConnection::Single(AtHome::here(single))
        };
        Ok(Self {
            report_batches: batches::ReportBatches::start(connection.clone()),
            connection,
            client,
            prefix: prefix.to_owned(),
        })
    }

    /// The shared connection, for work beside the stores (leases).
    pub fn connection(&self) -> &RedisConnection {
        &self.connection
    }

    /// The client of the node named at start, for connections of their own
    /// (pub/sub: a cluster passes every message published on any node to
    /// the subscribers of each).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The prefix of every key.
    pub fn prefix(&self) -> &str {
        &self.prefix
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

    pub(super) fn device_key(&self, device_id: &str, what: &str) -> String {
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
}

/// Whether the node behind `connection` runs in cluster mode.
async fn in_cluster_mode(connection: &mut ConnectionManager) -> redis::RedisResult<bool> {
    let info: String = redis::cmd("INFO")
        .arg("cluster")
        .query_async(connection)
        .await?;
    Ok(info.lines().any(|line| line.trim() == "cluster_enabled:1"))
}

/// The shared connection: to one Redis, or to every primary of a Redis
/// Cluster. Both reconnect by themselves and give every call a deadline.
#[derive(Clone)]
pub enum RedisConnection {
    /// One Redis (or a primary behind a proxy).
    Single(AtHome<ConnectionManager>),
    /// A Redis Cluster: each command goes to the node of its key's slot.
    Cluster(AtHome<ClusterConnection>),
}

/// A connection whose calls run in the runtime it was made on (its home),
/// wherever they are polled from. The redis crate spawns a lost
/// connection's replacement, and the task that then carries every call of
/// the process, on whatever runtime makes the call that finds it lost: from
/// the device HTTPS listener's runtime (`server::start_device_https`) that
/// would move all Redis traffic onto the listener's threads, and end it
/// when the listener stops.
#[derive(Clone)]
pub struct AtHome<C> {
    connection: C,
    home: tokio::runtime::Handle,
}

impl<C> AtHome<C> {
    /// `connection`, at home in the current runtime, which must outlive
    /// its use: a call made once its home has shut down fails.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn here(connection: C) -> Self {
        Self {
            connection,
            home: tokio::runtime::Handle::current(),
        }
    }
}

impl<C> std::fmt::Debug for AtHome<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtHome").finish_non_exhaustive()
    }
}

/// A call polled inside its connection's home runtime.
struct Homed<'a, F> {
    home: &'a tokio::runtime::Handle,
    call: F,
}

impl<F: std::future::Future + Unpin> std::future::Future for Homed<'_, F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = &mut *self;
        let _home = this.home.enter();
        std::pin::Pin::new(&mut this.call).poll(cx)
    }
}

impl<C: ConnectionLike + Send> AtHome<C> {
    /// The call `make` makes on the connection, made and polled at home.
    fn homed<'a, T: 'a>(
        &'a mut self,
        make: impl FnOnce(&'a mut C) -> RedisFuture<'a, T>,
    ) -> RedisFuture<'a, T> {
        let Self { connection, home } = self;
        let call = {
            let _home = home.enter();
            make(connection)
        };
        Box::pin(Homed { home, call })
    }
}

impl<C: ConnectionLike + Send> ConnectionLike for AtHome<C> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.homed(|connection| connection.req_packed_command(cmd))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.homed(|connection| connection.req_packed_commands(pipeline, offset, count))
    }

    fn get_db(&self) -> i64 {
        self.connection.get_db()
    }
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "RedisConnection::Single",
            Self::Cluster(_) => "RedisConnection::Cluster",
        })
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}

impl RedisConnection {
    /// Sends `commands`, each of one key, and answers them in order. To one
    /// Redis that is one pipeline; a cluster takes a pipeline only within
    /// one slot, so there the commands go as one pipeline per slot (in
    /// their order within it), all at once.
    pub(crate) async fn send_by_slot<C: Borrow<Cmd>>(
        &self,
        commands: &[C],
    ) -> redis::RedisResult<Vec<Value>> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        let cluster = match self {
            Self::Single(connection) => {
                let mut pipe = redis::pipe();
                for command in commands {
                    pipe.add_command(command.borrow().clone());
                }
                return pipe.query_async(&mut connection.clone()).await;
            }
            Self::Cluster(connection) => connection,
        };
        let mut by_slot: HashMap<u16, (Vec<usize>, redis::Pipeline)> = HashMap::new();
        for (place, command) in commands.iter().enumerate() {
            let command = command.borrow();
            let (places, pipe) = by_slot
                .entry(command_slot(command))
                .or_insert_with(|| (Vec::new(), redis::pipe()));
            places.push(place);
            pipe.add_command(command.clone());
        }
        let sent = join_all(by_slot.into_values().map(|(places, pipe)| {
            let mut connection = cluster.clone();
            async move {
                let answers: Vec<Value> = pipe.query_async(&mut connection).await?;
                Ok::<_, redis::RedisError>(places.into_iter().zip(answers))
            }
        }))
        .await;
        let mut answers = vec![Value::Nil; commands.len()];
        for answered in sent {
            for (place, answer) in answered? {
                answers[place] = answer;
            }
        }
        Ok(answers)
    }

    /// [`RedisConnection::send_by_slot`] for calls (`EVALSHA`) of `script`:
    /// a node without it (restarted, or new to a cluster) says so, and then
    /// the script is loaded on every node and the calls sent again.
    pub(crate) async fn send_script_calls_by_slot<C: Borrow<Cmd>>(
        &self,
        script: &redis::Script,
        calls: &[C],
    ) -> redis::RedisResult<Vec<Value>> {
        match self.send_by_slot(calls).await {
            Err(e) if e.kind() == redis::ErrorKind::NoScriptError => {
                let _: String = script
                    .prepare_invoke()
                    .load_async(&mut self.clone())
                    .await?;
                self.send_by_slot(calls).await
            }
            sent => sent,
        }
    }
}

/// The cluster slot of a command's key: the first key of `EVALSHA`/`EVAL`,
/// otherwise the first argument after the command's name (every command
/// this backend sends in bulk names one key there).
fn command_slot(command: &Cmd) -> u16 {
    let mut args = command.args_iter().map(|arg| match arg {
        redis::Arg::Simple(bytes) => bytes,
        redis::Arg::Cursor => &[][..],
    });
    let name = args.next().unwrap_or_default();
    let key = if name.eq_ignore_ascii_case(b"EVALSHA") || name.eq_ignore_ascii_case(b"EVAL") {
        args.nth(2)
    } else {
        args.next()
    };
    key_slot(key.unwrap_or_default())
}

/// Redis Cluster's slot of `key`: CRC16 (XMODEM) of the key's hash tag
/// (the part between the first `{` and the next `}`, when not empty) or
/// of the whole key, modulo 16384.
fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let tag = &key[open + 1..];
            let close = tag.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &tag[..close])
        })
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for &byte in hashed {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_the_cluster_specification() {
        // The examples of the Redis Cluster specification and `CLUSTER
        // KEYSLOT` answers.
        // CRC16/XMODEM of "123456789" is 0x31C3, below 16384.
        assert_eq!(key_slot(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"eagate:{dev:d-1}:reports"), 11239);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        // An empty tag hashes the whole key.
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b""));
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
    }

    #[test]
    fn a_script_call_is_placed_by_its_first_key() {
        let mut call = redis::cmd("EVALSHA");
        call.arg("0123abcd")
            .arg(1)
            .arg("eagate:{dev:d-1}:reports")
            .arg("x");
        let mut set = redis::cmd("HSET");
        set.arg("eagate:{dev:d-1}:presence").arg("a").arg(1);
        assert_eq!(command_slot(&call), key_slot(b"dev:d-1"));
        assert_eq!(command_slot(&set), key_slot(b"dev:d-1"));
    }
}
