//! Notices between the processes of a deployment through Redis pub/sub:
//! one channel, `<prefix>:notices`, JSON payloads, and a listener per
//! process that hands every notice to its core.
//!
//! Pub/sub delivers at most once: a notice can be lost while a listener
//! reconnects. None depends on it alone (see `crate::core::notices`); after
//! every (re)subscription the listener makes up for the endings it may have
//! missed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::RedisConnection;
use futures_util::StreamExt;
use redis::AsyncCommands;
use tracing::{info, warn};

use super::RedisStores;
use crate::core::Core;
use crate::core::notices::{Notice, NoticeBus};

/// Notices published on a deployment's pub/sub channel.
#[derive(Clone)]
pub struct RedisNoticeBus {
    connection: RedisConnection,
    channel: String,
}

impl std::fmt::Debug for RedisNoticeBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisNoticeBus")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl RedisStores {
    /// The pub/sub channel of this deployment's notices.
    pub fn notice_channel(&self) -> String {
        format!("{}:notices", self.prefix)
    }

    /// Where notices between processes go.
    pub fn notice_bus(&self) -> RedisNoticeBus {
        RedisNoticeBus {
            connection: self.connection.clone(),
            channel: self.notice_channel(),
        }
    }
}

impl NoticeBus for RedisNoticeBus {
    fn publish<'a>(
        &'a self,
        notice: &'a Notice,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            let payload = serde_json::to_vec(notice).expect("a notice always serializes");
            let mut connection = self.connection.clone();
            let published: redis::RedisResult<i64> =
                connection.publish(self.channel.as_str(), payload).await;
            published.map(|_| ()).map_err(|e| e.to_string())
        })
    }
}

/// Listens on the deployment's notice channel and hands every notice to
/// this process's sessions; reconnects when Redis goes away. Runs until
/// aborted.
pub async fn listen(client: redis::Client, channel: String, context: Arc<Core>) {
    const RETRY: Duration = Duration::from_secs(1);
    loop {
        let mut pubsub = match client.get_async_pubsub().await {
            Ok(pubsub) => pubsub,
            Err(e) => {
                warn!(error = %e, "connecting to Redis for notices failed; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        if let Err(e) = pubsub.subscribe(&channel).await {
            warn!(error = %e, "subscribing to notices failed; retrying");
            tokio::time::sleep(RETRY).await;
            continue;
        }
        info!(%channel, "listening for notices");
        // Anything sent while we were not listening is lost to us: make up
        // for the endings now (signals are reread from the log anyway).
        context.end_stale_sessions().await;
        let notifier = context.notifier();
        let mut messages = pubsub.into_on_message();
        while let Some(message) = messages.next().await {
            match serde_json::from_slice::<Notice>(message.get_payload_bytes()) {
                Ok(notice) => notifier.deliver_locally(notice),
                Err(e) => warn!(error = %e, "ignoring a malformed notice"),
            }
        }
        warn!("the notice subscription ended; reconnecting");
        tokio::time::sleep(RETRY).await;
    }
}
