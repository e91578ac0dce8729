//! Which store failures mean "away for now": a store that is unreachable,
//! silent past its deadline or restarting may well answer the same call in
//! a moment, and a device's session waits for it (holding the device's
//! reports) rather than end; any other failure would only repeat.

/// Whether `e` says Redis is away for now (unreachable, silent past its
/// deadline, loading its data after a restart, a cluster failing over), so
/// the same call may well succeed in a moment; anything else (a damaged
/// key, a refused command) would fail again. A device's session rides an
/// outage out and tries again; other failures end it.
pub fn is_outage(e: &redis::RedisError) -> bool {
    use redis::ErrorKind;
    e.is_io_error()
        || matches!(
            e.kind(),
            ErrorKind::BusyLoadingError
                | ErrorKind::TryAgain
                | ErrorKind::ClusterDown
                | ErrorKind::MasterDown
                | ErrorKind::ClusterConnectionNotFound
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unreachable_silent_or_restarting_redis_counts_as_an_outage() {
        use redis::{ErrorKind, RedisError};
        let io = |kind| RedisError::from(std::io::Error::from(kind));
        assert!(is_outage(&io(std::io::ErrorKind::ConnectionRefused)));
        assert!(is_outage(&io(std::io::ErrorKind::TimedOut)));
        assert!(is_outage(&io(std::io::ErrorKind::BrokenPipe)));
        let answered = |kind, what| RedisError::from((kind, what));
        assert!(is_outage(&answered(ErrorKind::BusyLoadingError, "LOADING")));
        assert!(is_outage(&answered(ErrorKind::ClusterDown, "CLUSTERDOWN")));
        assert!(!is_outage(&answered(
            ErrorKind::ResponseError,
            "ERR damaged"
        )));
        assert!(!is_outage(&answered(ErrorKind::TypeError, "WRONGTYPE")));
        assert!(!is_outage(&answered(ErrorKind::NoScriptError, "NOSCRIPT")));
    }
}
