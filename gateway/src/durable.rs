//! Making sled writes durable together, and opening sled, without stalling
//! the async runtime.
//!
//! Every store of the embedded backend writes into one sled database and
//! then waits on [`Durable::durable`] before it answers (a report confirmed,
//! a nonce claimed, a signal published). One flusher thread serves all of
//! them: it flushes whenever somebody waits, and every write made before a
//! flush began is on disk when it ends. Writers that arrive while a flush
//! runs wait for the next one, which takes all of them at once: a group
//! commit, with one `fsync` per batch instead of one per write.
//!
//! A batch closes when the previous flush ends; under load (the previous
//! batch had more than one writer) the flusher also lingers up to
//! [`LINGER`] for more writers, or until [`BATCH_CLOSE`] are waiting, since a
//! flush costs the same for one write as for hundreds. A lone writer on an
//! idle gateway is flushed at once.
//!
//! A failed flush poisons the database for good: after a failed `fsync` the
//! kernel may have dropped the dirty pages, so a later flush that succeeds
//! proves nothing about earlier writes. Nothing more is confirmed until the
//! gateway restarts and sled recovers from its log.

use std::sync::{Arc, Condvar, Mutex, PoisonError};

use tokio::sync::watch;

/// How long the flusher waits for more writers under load.
pub const LINGER: std::time::Duration = std::time::Duration::from_micros(500);

/// How many waiting writers close a batch at once, lingering or not.
pub const BATCH_CLOSE: u64 = 512;

/// How long opening the store waits for a previous opening's lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The embedded database, with the group commit that makes its writes
/// durable. Cheap to clone; the flusher thread ends once the last clone is
/// dropped, after a last flush of anything still waited for.
#[derive(Debug, Clone)]
pub struct Durable {
    db: sled::Db,
    commit: Arc<Commit>,
}

/// The writers' side of the flusher.
#[derive(Debug)]
struct Commit {
    shared: Arc<Shared>,
    flushed: watch::Receiver<Flushed>,
}

/// What the writers and the flusher thread share.
#[derive(Debug)]
struct Shared {
    state: Mutex<Requests>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct Requests {
    /// Tickets handed out: each writer waiting takes the next number.
    requested: u64,
    /// Tickets up to here are being flushed or are flushed.
    taken: u64,
    /// The flusher sleeps until woken (writers wake it only then, or when
    /// a lingering batch is full: not once per write).
    flusher: FlusherState,
    /// The last handle is gone: flush what is waited for, then stop.
    closing: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum FlusherState {
    #[default]
    Idle,
    Lingering,
    Flushing,
}

/// The flusher's progress: every ticket up to `through` is on disk, unless
/// `failure` says the database was poisoned first.
#[derive(Debug, Clone, Default)]
struct Flushed {
    through: u64,
    failure: Option<Arc<str>>,
}

impl Durable {
    /// Opens the sled database at `path`. sled's background writer threads
    /// may hold the directory's lock for a moment after the last handle of a
    /// previous opening is dropped (a restart within one process); this
    /// waits for that, briefly, before reporting the directory as taken by
    /// another process.
    pub async fn open(path: &std::path::Path, cache_bytes: u64) -> sled::Result<Self> {
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        loop {
            match sled::Config::new()
                .path(path)
                .cache_capacity(cache_bytes)
                .open()
            {
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                opened => return opened.and_then(Self::new),
            }
        }
    }

    /// Takes over an open database, starting its flusher thread.
    pub fn new(db: sled::Db) -> sled::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(Requests::default()),
            wake: Condvar::new(),
        });
        let (report, flushed) = watch::channel(Flushed::default());
        let flusher_db = db.clone();
        let flusher_shared = shared.clone();
        std::thread::Builder::new()
            .name("eagate-sled-commit".into())
            .spawn(move || flush_while_wanted(&flusher_db, &flusher_shared, &report))
            .map_err(sled::Error::Io)?;
        Ok(Self {
            db,
            commit: Arc::new(Commit { shared, flushed }),
        })
    }

    /// The database, to open trees and write.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Resolves once everything written before the call is on disk,
    /// sharing one flush with every other writer waiting at the time. The
    /// flush is asked for at the call, not when the future is first polled,
    /// so a writer may hold several of these while it goes on writing.
    pub fn durable(&self) -> impl Future<Output = sled::Result<()>> + Send + 'static {
        let (ticket, wake) = {
            let mut requests = self.commit.shared.lock();
            requests.requested += 1;
            let wake = match requests.flusher {
                FlusherState::Idle => true,
                FlusherState::Lingering => requests.requested - requests.taken >= BATCH_CLOSE,
                FlusherState::Flushing => false,
            };
            (requests.requested, wake)
        };
        if wake {
            self.commit.shared.wake.notify_one();
        }
        let mut flushed = self.commit.flushed.clone();
        async move {
            let outcome = flushed
                .wait_for(|f| f.through >= ticket || f.failure.is_some())
                .await
                .map(|f| (f.through, f.failure.clone()));
            match outcome {
                Ok((through, _)) if through >= ticket => Ok(()),
                Ok((_, Some(failure))) => Err(sled::Error::Io(std::io::Error::other(format!(
                    "the embedded store failed to flush earlier ({failure}); nothing more is confirmed until the gateway restarts"
                )))),
                _ => Err(sled::Error::Io(std::io::Error::other(
                    "the embedded store's flusher stopped",
                ))),
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Requests> {
        // The lock guards two integers that are never left half-changed.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Commit {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
    }
}

/// The flusher thread: sleeps until a writer waits, flushes once for every
/// writer waiting by then (lingering for more under load), tells them, and
/// again; ends when the last handle is gone and nothing is waited for.
fn flush_while_wanted(db: &sled::Db, shared: &Shared, report: &watch::Sender<Flushed>) {
    let mut last_batch = 0;
    loop {
        let target = {
            let mut requests = shared.lock();
            requests.flusher = FlusherState::Idle;
            while requests.requested == requests.taken && !requests.closing {
                requests = shared
                    .wake
                    .wait(requests)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if requests.requested == requests.taken {
                return;
            }
            if last_batch > 1 && !requests.closing {
                requests.flusher = FlusherState::Lingering;
                let deadline = std::time::Instant::now() + LINGER;
                while requests.requested - requests.taken < BATCH_CLOSE && !requests.closing {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    requests = shared
                        .wake
                        .wait_timeout(requests, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
            requests.flusher = FlusherState::Flushing;
            last_batch = requests.requested - requests.taken;
            requests.taken = requests.requested;
            requests.requested
        };
        // Every ticket up to `target` was taken after its write: this flush
        // covers them all.
        match db.flush() {
            Ok(_) => report.send_modify(|f| f.through = target),
            Err(e) => {
                tracing::error!(error = %e, "flushing the embedded store failed; nothing more is confirmed until the gateway restarts");
                report.send_modify(|f| f.failure = Some(e.to_string().into()));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temporary() -> Durable {
        Durable::new(sled::Config::new().temporary(true).open().unwrap()).unwrap()
    }

    #[tokio::test]
    async fn a_write_waited_for_is_durable_and_concurrent_waiters_share_flushes() {
        let durable = temporary();
        let tree = durable.db().open_tree("t").unwrap();
        let mut waiting = tokio::task::JoinSet::new();
        for i in 0u32..200 {
            let durable = durable.clone();
            let tree = tree.clone();
            waiting.spawn(async move {
                tree.insert(i.to_be_bytes(), &b"x"[..]).unwrap();
                durable.durable().await
            });
        }
        while let Some(done) = waiting.join_next().await {
            done.unwrap().unwrap();
        }
        assert_eq!(tree.len(), 200);
        // Nothing is left waiting: one more write is flushed on its own.
        tree.insert(b"last", &b"y"[..]).unwrap();
        durable.durable().await.unwrap();
    }

    #[tokio::test]
    async fn the_flusher_thread_ends_with_the_last_handle_and_releases_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let durable = Durable::open(&path, 64 << 20).await.unwrap();
        durable
            .db()
            .open_tree("t")
            .unwrap()
            .insert(b"k", &b"v"[..])
            .unwrap();
        durable.durable().await.unwrap();
        drop(durable);
        // Reopening waits for the lock, which only the flusher's handle
        // could still hold.
        let again = Durable::open(&path, 64 << 20).await.unwrap();
        let value = again.db().open_tree("t").unwrap().get(b"k").unwrap();
        assert_eq!(value.as_deref(), Some(&b"v"[..]));
    }
}
