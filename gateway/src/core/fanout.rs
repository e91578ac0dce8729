//! Live fan-out of new signals to the sessions following each channel: one
//! bounded broadcast per channel, backed by the channel's log, so a follower
//! that lags or misses an announcement rereads the log and still delivers
//! every signal in order, once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use eagate_protocol::{ChannelName, Signal};
use tokio::sync::{broadcast, mpsc};

use crate::signals::{SignalLog, SignalLogError};

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
