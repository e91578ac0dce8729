//! How many HTTP connections the sidecar holds: at most so many from all
//! sources together and from one source (an IPv4 address, an IPv6 /64).
//! Each connection holds a file descriptor and some memory for as long as
//! its client keeps it, and a slow-loris client sends its headers as slowly
//! as the header deadline allows; without a bound, a flood takes every
//! descriptor of the process (the store's reconnections among them) and
//! memory with it. A connection beyond a bound is answered 503 with
//! `Retry-After` and closed at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::core::connection_gate::source_key;

/// The sidecar's open connections, counted against their bounds.
#[derive(Debug)]
pub struct HttpConnections {
    most: usize,
    most_per_source: usize,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    all: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// A connection's place, given back when dropped.
#[derive(Debug)]
pub struct HttpPlace {
    connections: Arc<HttpConnections>,
    source: IpAddr,
}

/// The answer to a connection beyond a bound, written before it is
/// closed: a client learns why, and when to come back.
pub const TURNED_AWAY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: text/plain\r\nContent-Length: 33\r\nConnection: close\r\n\r\ntoo many connections; try again\r\n";

/// Descriptors kept for everything but HTTP connections (the store's
/// files and connections, the QUIC sockets, logs, connections being
/// turned away): this many, or a quarter of a smaller limit.
const RESERVED_DESCRIPTORS: usize = 256;

/// `wanted`, or fewer when the process may not open that many files
/// besides those it keeps for the rest (said in a warning): a flood must
/// meet the sidecar's bound before the process runs out of descriptors.
pub fn within_open_files(wanted: usize) -> usize {
    #[cfg(unix)]
    {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        if let Some(soft) = limit.current {
            let soft = usize::try_from(soft).unwrap_or(usize::MAX);
            let room = soft
                .saturating_sub(RESERVED_DESCRIPTORS.min(soft / 4))
                .max(1);
            if room < wanted {
                tracing::warn!(
                    wanted,
                    open_files_limit = soft,
                    held = room,
                    "the process may open too few files for --max-http-connections; holding fewer (raise LimitNOFILE)"
                );
                return room;
            }
        }
    }
    wanted
}

/// How many connections beyond the bounds are being answered at once;
/// past that, they are closed without an answer, so a flood of them holds
/// no more descriptors than this.
const ANSWERING_AT_MOST: usize = 64;

/// Turns a connection beyond the bounds away: answered (see [`answer`])
/// while fewer than [`ANSWERING_AT_MOST`] are, else closed at once.
pub fn turn_away(stream: tokio::net::TcpStream) {
    static ANSWERING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(ANSWERING_AT_MOST);
    if let Ok(permit) = ANSWERING.try_acquire() {
        tokio::spawn(async move {
            let _permit = permit;
            answer(stream).await;
        });
    }
}

/// Answers a connection beyond the bounds with [`TURNED_AWAY`] and closes
/// it, within 100 ms whatever the client does: what it sent meanwhile is
/// read and dropped, so the close is not a reset that would discard the
/// answer before the client reads it.
async fn answer(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(std::time::Duration::from_millis(100), async {
        stream.write_all(TURNED_AWAY).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        std::io::Result::Ok(())
    })
    .await;
}

impl HttpConnections {
    /// At most `most` connections, `most_per_source` of them from one
    /// source.
    pub fn new(most: usize, most_per_source: usize) -> Arc<Self> {
        Arc::new(Self {
            most: most.max(1),
            most_per_source: most_per_source.max(1),
            open: Mutex::new(Open::default()),
        })
    }

    /// A place for a connection from `peer`, or none (beyond a bound).
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<HttpPlace> {
        let source = source_key(peer);
        let mut open = self.open.lock().expect("not poisoned");
        let from_source = open.per_source.get(&source).copied().unwrap_or(0);
        if open.all >= self.most || from_source >= self.most_per_source {
            return None;
        }
        open.all += 1;
        *open.per_source.entry(source).or_default() += 1;
        Some(HttpPlace {
            connections: self.clone(),
            source,
        })
    }

    /// Connections open now: from all sources, and how many sources.
    pub fn open(&self) -> (usize, usize) {
        let open = self.open.lock().expect("not poisoned");
        (open.all, open.per_source.len())
    }
}

impl Drop for HttpPlace {
    fn drop(&mut self) {
        let mut open = self.connections.open.lock().expect("not poisoned");
        open.all -= 1;
        if let Some(count) = open.per_source.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                open.per_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_its_share_and_the_rest_go_to_others_until_all_are_taken() {
        let connections = HttpConnections::new(5, 2);
        let flood: IpAddr = "203.0.113.7".parse().unwrap();
        let places: Vec<_> = (0..10).filter_map(|_| connections.admit(flood)).collect();
        assert_eq!(places.len(), 2, "one source holds at most its share");
        // The same host by another IPv6 address of its /64 is the same source.
        let v6a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        let a = connections.admit(v6a).unwrap();
        let b = connections.admit(v6b).unwrap();
        assert!(connections.admit(v6a).is_none());
        let other = connections.admit("198.51.100.1".parse().unwrap()).unwrap();
        assert_eq!(connections.open(), (5, 3));
        // All taken: nobody else now.
        assert!(connections.admit("198.51.100.2".parse().unwrap()).is_none());
        // A place given back is free again, and a source that left is
        // forgotten.
        drop(places);
        assert!(connections.admit("198.51.100.2".parse().unwrap()).is_some());
        drop((a, b, other));
        assert_eq!(connections.open(), (0, 0));
    }

    #[test]
    fn the_answer_to_a_connection_turned_away_is_a_complete_503() {
        let text = std::str::from_utf8(TURNED_AWAY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains("\r\nRetry-After: 1"));
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(body.len(), length);
    }
}
