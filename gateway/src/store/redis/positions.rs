//! Device positions in Redis: per device a hash of what it reported per
//! channel, one of what was delivered to it, and one of where its
//! subscriptions started.

use std::sync::LazyLock;

use redis::{AsyncCommands, Script};

use eagate_protocol::ChannelName;

use super::RedisStores;
use crate::signals::{LogFuture, PositionStore, SignalLogError};

/// Raises a position, never lowers it.
static ADVANCE_POSITION_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/advance_position.lua")));

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
