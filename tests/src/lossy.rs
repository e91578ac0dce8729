//! A UDP relay that loses, delays and reorders datagrams both ways, for
//! tests of QUIC over a bad network. `tc netem` would do this in the
//! kernel, but the kernels this project's tests run on may lack it (this
//! machine's is built without `CONFIG_NET_SCH_NETEM`); a relay in the test
//! works on any of them and needs no privileges.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the relay does to each datagram, in each direction.
#[derive(Debug, Clone, Copy)]
pub struct Impairment {
    /// Parts per thousand dropped.
    pub loss_per_mille: u32,
    /// Base delay.
    pub delay: Duration,
    /// Each datagram's delay is `delay` ± up to this (uniform): datagrams
    /// overtake each other.
    pub jitter: Duration,
    /// Parts per thousand sent at once, ahead of those still delayed.
    pub jump_ahead_per_mille: u32,
}

impl Impairment {
    /// A perfect network: the relay only forwards (to move a client from
    /// one server to another, say).
    pub const NONE: Self = Self {
        loss_per_mille: 0,
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
        jump_ahead_per_mille: 0,
    };
}

/// What the relay did so far.
#[derive(Debug, Default)]
pub struct RelayCounts {
    /// Datagrams relayed.
    pub relayed: AtomicU64,
    /// Datagrams dropped.
    pub dropped: AtomicU64,
    /// Datagrams sent before one that arrived earlier in the same direction.
    pub reordered: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Direction {
    /// Client to server.
    Up,
    /// Server to client.
    Down,
}

type Queued = Reverse<(Instant, u64, Direction, Vec<u8>)>;

struct Shared {
    queue: Mutex<BinaryHeap<Queued>>,
    wake: Condvar,
    stop: AtomicBool,
    counts: RelayCounts,
    client: Mutex<Option<SocketAddr>>,
    /// Where datagrams from the client go.
    server: Mutex<SocketAddr>,
}

/// A relay on a loopback port in front of one UDP server, for one client;
/// stopped when dropped.
pub struct LossyRelay {
    /// Where the client sends instead of the server.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl LossyRelay {
    /// Starts relaying to `server` with `impairment`, the randomness from
    /// `seed` (print it: a failure can be replayed).
    ///
    /// # Panics
    ///
    /// When no loopback socket can be bound.
    pub fn start(server: SocketAddr, impairment: Impairment, seed: u64) -> Self {
        let facing_client = UdpSocket::bind("127.0.0.1:0").expect("a loopback port");
        let facing_server = UdpSocket::bind("127.0.0.1:0").expect("a loopback port");
        for socket in [&facing_client, &facing_server] {
            socket
                .set_read_timeout(Some(Duration::from_millis(50)))
                .expect("a read timeout");
        }
        let addr = facing_client.local_addr().expect("bound");
        let shared = Arc::new(Shared {
            queue: Mutex::new(BinaryHeap::new()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            counts: RelayCounts::default(),
            client: Mutex::new(None),
            server: Mutex::new(server),
        });
        let sequence = Arc::new(AtomicU64::new(0));
        let facing_client = Arc::new(facing_client);
        let facing_server = Arc::new(facing_server);
        let mut threads = Vec::new();
        for (direction, seed) in [(Direction::Up, seed), (Direction::Down, seed ^ 0x9E37_79B9)] {
            let (shared, sequence) = (shared.clone(), sequence.clone());
            let from = match direction {
                Direction::Up => facing_client.clone(),
                Direction::Down => facing_server.clone(),
            };
            threads.push(std::thread::spawn(move || {
                let mut random = XorShift(seed.max(1));
                let mut buf = vec![0u8; 65_536];
                while !shared.stop.load(Ordering::Relaxed) {
                    let Ok((len, peer)) = from.recv_from(&mut buf) else {
                        continue;
                    };
                    if direction == Direction::Up {
                        *shared.client.lock().expect("not poisoned") = Some(peer);
                    }
                    if random.below(1000) < impairment.loss_per_mille {
                        shared.counts.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let now = Instant::now();
                    let due = if random.below(1000) < impairment.jump_ahead_per_mille {
                        now
                    } else {
                        let jitter = impairment.jitter.as_micros() as u64;
                        let spread = random.below_u64(2 * jitter + 1);
                        now + impairment.delay + Duration::from_micros(spread)
                            - Duration::from_micros(jitter)
                    };
                    let number = sequence.fetch_add(1, Ordering::Relaxed);
                    shared.queue.lock().expect("not poisoned").push(Reverse((
                        due,
                        number,
                        direction,
                        buf[..len].to_vec(),
                    )));
                    shared.wake.notify_one();
                }
            }));
        }
        {
            let shared = shared.clone();
            threads.push(std::thread::spawn(move || {
                let mut newest_sent = [0u64; 2];
                let mut queue = shared.queue.lock().expect("not poisoned");
                while !shared.stop.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    let wait = match queue.peek() {
                        Some(Reverse((due, ..))) if *due <= now => None,
                        Some(Reverse((due, ..))) => Some(*due - now),
                        None => Some(Duration::from_millis(50)),
                    };
                    if let Some(wait) = wait {
                        queue = shared
                            .wake
                            .wait_timeout(queue, wait)
                            .expect("not poisoned")
                            .0;
                        continue;
                    }
                    let Some(Reverse((_, number, direction, datagram))) = queue.pop() else {
                        continue;
                    };
                    let newest = &mut newest_sent[direction as usize];
                    if number < *newest {
                        shared.counts.reordered.fetch_add(1, Ordering::Relaxed);
                    }
                    *newest = (*newest).max(number);
                    let client = *shared.client.lock().expect("not poisoned");
                    let server = *shared.server.lock().expect("not poisoned");
                    let sent = match (direction, client) {
                        (Direction::Up, _) => facing_server.send_to(&datagram, server).is_ok(),
                        (Direction::Down, Some(client)) => {
                            facing_client.send_to(&datagram, client).is_ok()
                        }
                        (Direction::Down, None) => false,
                    };
                    if sent {
                        shared.counts.relayed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        Self {
            addr,
            shared,
            threads,
        }
    }

    /// Sends the client's datagrams to `server` from now on, as a load
    /// balancer does when a server goes away.
    pub fn redirect(&self, server: SocketAddr) {
        *self.shared.server.lock().expect("not poisoned") = server;
    }

    /// What the relay did so far.
    pub fn counts(&self) -> &RelayCounts {
        &self.shared.counts
    }
}

impl std::fmt::Debug for LossyRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LossyRelay")
            .field("addr", &self.addr)
            .field("counts", &self.shared.counts)
            .finish_non_exhaustive()
    }
}

impl Drop for LossyRelay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake.notify_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// xorshift64: enough randomness for a test's network, repeatable by seed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: u32) -> u32 {
        (self.next() % u64::from(bound)) as u32
    }

    fn below_u64(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}
