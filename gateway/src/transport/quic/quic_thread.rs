//! quinn on tokio, each endpoint on a thread of its own: the endpoint's
//! driver (the task that drains the UDP socket and routes each datagram to
//! its connection) and its connections' drivers (packets in and out, loss
//! recovery, encryption) run on one single-threaded runtime, while the
//! sessions (authentication, the store, fan-out) stay on the gateway's
//! shared runtime and talk to their connections through quinn's streams.
//!
//! Why: on the shared runtime the endpoint's driver was one task among
//! thousands. It reads the socket for at most 50 µs per turn (quinn's
//! bound), then waits for every other runnable task to get a turn, and
//! under a flood of signals a round of the sessions' work (the store's
//! writes above all) took long enough for the socket's receive buffer to
//! fill: the kernel dropped the devices' reports and acknowledgements,
//! QUIC's loss recovery backed off on the connections that lost most, and
//! the gateway closed them for silence. On their own thread the QUIC tasks
//! only wait for each other, which is cheap work, and the kernel schedules
//! the thread as soon as a datagram arrives; what the sessions cannot keep
//! up with waits in quinn's streams, bounded by flow control, instead of
//! being dropped at the socket. Running only the endpoint's driver there
//! was measured too: every datagram then woke its connection across
//! threads, which cost a third more CPU per message.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use quinn::{AsyncTimer, AsyncUdpSocket, Runtime, TokioRuntime};

/// quinn's [`Runtime`] for one endpoint: a single-threaded tokio runtime
/// that registers the endpoint's socket and runs its driver and its
/// connections, on a thread of its own from the moment the endpoint's
/// driver is spawned until it ends (the endpoint closed and every
/// connection gone).
#[derive(Debug)]
pub(super) struct QuicThread {
    /// The runtime, until the endpoint's driver takes it to its thread.
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    /// Where the connections are spawned and their timers made.
    handle: tokio::runtime::Handle,
    /// What the thread is called.
    thread_name: String,
}

impl QuicThread {
    /// A runtime for one endpoint, run by a thread called `thread_name`.
    pub(super) fn new(thread_name: String) -> io::Result<Arc<Self>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        Ok(Arc::new(Self {
            handle: runtime.handle().clone(),
            runtime: Mutex::new(Some(runtime)),
            thread_name,
        }))
    }
}

impl Drop for QuicThread {
    fn drop(&mut self) {
        // Still here only if no driver ever took it (the endpoint failed
        // to start). Dropping a runtime blocks, which tokio forbids on its
        // own threads, where this is dropped: let it go in the background.
        let runtime = self.runtime.get_mut().map(Option::take);
        if let Ok(Some(runtime)) = runtime {
            runtime.shutdown_background();
        }
    }
}

impl Runtime for QuicThread {
    fn new_timer(&self, at: Instant) -> Pin<Box<dyn AsyncTimer>> {
        // On this runtime's clock whoever asks: a connection's timers are
        // polled by its driver, here.
        let _here = self.handle.enter();
        TokioRuntime.new_timer(at)
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        // quinn spawns the endpoint's driver first, once, right after
        // wrapping its socket: it takes the runtime to the thread, which
        // runs it (and every connection spawned onto it) until the driver
        // ends. Every later future is a connection's driver.
        let runtime = self.runtime.lock().expect("QUIC runtime lock").take();
        let Some(runtime) = runtime else {
            self.handle.spawn(future);
            return;
        };
        let started = std::thread::Builder::new()
            .name(self.thread_name.clone())
            .spawn(move || runtime.block_on(future));
        if let Err(e) = started {
            // The driver went down with the thread that was never made:
            // the endpoint reports itself gone and accepts nothing.
            tracing::error!(error = %e, "no thread for a QUIC endpoint");
        }
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        // Registered with this runtime's reactor: the thread that reads the
        // socket is the one its readiness wakes.
        let _here = self.handle.enter();
        TokioRuntime.wrap_udp_socket(socket)
    }

    fn now(&self) -> Instant {
        TokioRuntime.now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_runtime_no_endpoint_took_is_let_go_on_a_tokio_thread_without_panicking() {
        let runtime = QuicThread::new("eagate-quic-test".into()).unwrap();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // Wrapped, as an endpoint that then failed to start would have.
        let _wrapped = runtime.wrap_udp_socket(socket).unwrap();
        assert!(runtime.runtime.lock().unwrap().is_some());
        drop(runtime);
    }

    #[tokio::test]
    async fn an_endpoint_and_its_connections_run_on_the_endpoints_own_thread() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let runtime = QuicThread::new("eagate-quic-test".into()).unwrap();
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            socket,
            runtime.clone(),
        )
        .unwrap();
        // The driver took the runtime to its thread.
        assert!(runtime.runtime.lock().unwrap().is_none());
        // A later spawn (a connection's driver) runs on that thread too.
        let (tx, rx) = tokio::sync::oneshot::channel();
        runtime.spawn(Box::pin(async move {
            let _ = tx.send(std::thread::current().name().map(str::to_owned));
        }));
        assert_eq!(rx.await.unwrap().as_deref(), Some("eagate-quic-test"));
        drop(endpoint);
    }
}
