//! Live fan-out of new signals to the sessions following each channel: one
//! bounded broadcast per channel, backed by the channel's log, so a follower
//! that lags or misses an announcement rereads the log and still delivers
//! every signal in order, once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use eagate_protocol::{ChannelName, Signal};
use tokio::sync::{broadcast, mpsc};

use crate::signals::{SignalLog, SignalLogError};

/// How often the hub looks at the logs of followed channels for signals
/// it was never told of.
const LOG_RECHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// A signal on its way to devices, shared by every session that sends it,
/// with its frame in the device protocol encoded once, by the first session
/// that sends it: a signal fanned out to a thousand devices was copied and
/// encoded a thousand times.
#[derive(Debug)]
pub struct OutgoingSignal {
    signal: Signal,
    frame: OnceLock<bytes::Bytes>,
}

impl OutgoingSignal {
    /// `signal`, not encoded yet.
    pub fn new(signal: Signal) -> Self {
        Self {
            signal,
            frame: OnceLock::new(),
        }
    }

    /// The signal's frame in the device protocol, encoded by `encode` the
    /// first time it is asked for. One frame serves every protocol version
    /// (signals are the same in all of them); the QUIC transport is the
    /// only one asking.
    pub fn frame(&self, encode: impl FnOnce(&Signal) -> bytes::Bytes) -> bytes::Bytes {
        self.frame.get_or_init(|| encode(&self.signal)).clone()
    }
}

impl std::ops::Deref for OutgoingSignal {
    type Target = Signal;

    fn deref(&self) -> &Signal {
        &self.signal
    }
}

/// One channel's live fan-out.
#[derive(Debug)]
struct Feed {
    sender: broadcast::Sender<Arc<OutgoingSignal>>,
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
    fn subscribe(&self, channel: &ChannelName) -> broadcast::Receiver<Arc<OutgoingSignal>> {
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
        let _ = feed.sender.send(Arc::new(OutgoingSignal::new(signal)));
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
    /// closed (the session ended) or the log fails; a log that is only away
    /// for now (Redis restarting) is read again until it answers.
    pub async fn follow(
        &self,
        log: Arc<dyn SignalLog>,
        channel: ChannelName,
        after: u64,
        out: mpsc::Sender<Arc<OutgoingSignal>>,
    ) -> Result<(), SignalLogError> {
        // Subscribe before reading the log, so nothing published in between
        // is missed.
        let mut live = self.subscribe(&channel);
        let mut next = after.saturating_add(1);
        loop {
            // Catch up from the log.
            loop {
                let batch = read_riding_out_outages(&*log, &channel, next - 1).await?;
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
                    if out
                        .send(Arc::new(OutgoingSignal::new(signal)))
                        .await
                        .is_err()
                    {
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

/// Bounds of the wait between reads of a log that is away.
const LOG_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(100);
const LOG_RETRY_MOST: std::time::Duration = std::time::Duration::from_secs(2);

/// The next signals of `channel` after `after`, reading again (after a
/// growing wait) while the log is only away for now: the follower is not
/// behind anything but the log, so waiting loses nothing, and its session
/// (and the device's connection) lives on. Any other failure is returned.
async fn read_riding_out_outages(
    log: &dyn SignalLog,
    channel: &ChannelName,
    after: u64,
) -> Result<Vec<Signal>, SignalLogError> {
    let mut wait = LOG_RETRY_FIRST;
    loop {
        match log.read_after(channel, after, 256).await {
            Err(e) if e.is_outage() => {
                tracing::debug!(%channel, error = %e, ?wait, "the signal log is away; reading again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(LOG_RETRY_MOST);
            }
            read => return read,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_sent_to_many_devices_is_encoded_once() {
        let outgoing = OutgoingSignal::new(crate::signals::sample_signal());
        let mut encoded = 0;
        let frames: Vec<_> = (0..1_000)
            .map(|_| {
                outgoing.frame(|signal| {
                    encoded += 1;
                    bytes::Bytes::from(signal.position.to_be_bytes().to_vec())
                })
            })
            .collect();
        assert_eq!(encoded, 1);
        assert!(frames.iter().all(|frame| frame[..] == 7u64.to_be_bytes()));
    }
}
