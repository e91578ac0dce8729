//! Making sled writes durable without stalling the async runtime.

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
