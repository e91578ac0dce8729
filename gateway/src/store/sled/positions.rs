//! Device positions in sled: what each device reported per channel, what
//! was delivered to it, and where its subscriptions started, one tree each.

use eagate_protocol::ChannelName;

use super::read_u64;
use crate::durable::Durable;
use crate::signals::{LogFuture, PositionStore, SignalLogError};

/// Device positions in sled trees: reported (`device_positions`),
/// delivered (`device_deliveries`) and where subscriptions started
/// (`device_subscription_starts`).
#[derive(Debug, Clone)]
pub struct SledPositions {
    durable: Durable,
    positions: sled::Tree,
    deliveries: sled::Tree,
    starts: sled::Tree,
}

impl SledPositions {
    /// Opens the trees of `db`.
    pub fn open(durable: &Durable) -> sled::Result<Self> {
        let db = durable.db();
        Ok(Self {
            durable: durable.clone(),
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
            self.durable.durable().await?;
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
