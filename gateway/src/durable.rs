//! Making sled writes durable, and opening sled, without stalling the async runtime.

/// Flushes the store behind `tree` (the whole sled database, whichever tree
/// it is called on) to disk on a blocking thread. sled's synchronous flush is
/// used rather than `flush_async`, which stalled in our tests when several
/// flushes overlapped (16 concurrent resends of one report).
pub async fn flush(tree: &sled::Tree) -> sled::Result<()> {
    let tree = tree.clone();
    match tokio::task::spawn_blocking(move || tree.flush()).await {
        Ok(flushed) => flushed.map(|_| ()),
        Err(e) => Err(sled::Error::Io(std::io::Error::other(e.to_string()))),
    }
}

/// How long opening the store waits for a previous opening's lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Opens the sled database at `path`. sled's background writer threads may
/// hold the directory's lock for a moment after the last handle of a
/// previous opening is dropped (a restart within one process); this waits
/// for that, briefly, before reporting the directory as taken by another
/// process.
pub async fn open(path: &std::path::Path) -> sled::Result<sled::Db> {
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    loop {
        match sled::open(path) {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            opened => return opened,
        }
    }
}
