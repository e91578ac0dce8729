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

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use std::time::Duration;

use eagate_protocol::{ChannelName, SignalId};

/// A connection to the shared Redis, and the prefix of every key.
#[derive(Clone)]
pub struct RedisStores {
    client: redis::Client,
    connection: ConnectionManager,
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
    pub async fn connect(url: &str, prefix: &str) -> redis::RedisResult<Self> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT)
            .set_number_of_retries(2)
            .set_max_delay(500);
        let deadline = tokio::time::Instant::now() + START_DEADLINE;
        let connection = loop {
            match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
                Ok(connection) => break connection,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, "Redis is not reachable yet; trying again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        };
        Ok(Self {
            report_batches: batches::ReportBatches::start(connection.clone()),
            connection,
            client,
            prefix: prefix.to_owned(),
        })
    }

    /// The shared connection, for work beside the stores (leases).
    pub fn connection(&self) -> &ConnectionManager {
        &self.connection
    }

    /// The client, for connections of their own (pub/sub).
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
