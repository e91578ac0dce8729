//! A test device speaking the wire protocol to a real gateway over QUIC.
#![allow(dead_code, unreachable_pub, unused_macros, unused_imports)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub mod desk;
pub mod held;
pub mod https;

use eagate_gateway::config::ServeConfig;
use eagate_gateway::server::Gateway;
use eagate_protocol::*;
use quinn::{Connection, ConnectionError, RecvStream, SendStream};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

pub fn config(dir: &Path) -> ServeConfig {
    ServeConfig {
        config_file: None,
        data_dir: dir.to_owned(),
        quic_listen: "127.0.0.1:0".parse().unwrap(),
        quic_endpoints: 1,
        http_listen: "127.0.0.1:0".parse().unwrap(),
        device_https_listen: Some("127.0.0.1:0".parse().unwrap()),
        device_https_threads: 0,
        tls_cert: None,
        tls_key: None,
        hostnames: vec!["localhost".into()],
        skew_window_secs: 30,
        auth_deadline_secs: 1,
        connections_per_minute_per_source: 300,
        max_unauthenticated_connections: 10_000,
        max_http_connections: 2_048,
        max_http_connections_per_source: 256,
        signal_queue_len: 256,
        master_key: None,
        redis_url: None,
        redis_prefix: "eagate".into(),
        signal_retention_hours: 168,
        store_cache_mib: 64,
        referral_landing_page: "https://platform.example/signup".into(),
        referral_link_base: "https://partners.example".into(),
        affiliate_currency: "GBP".into(),
        first_month_commission_bps: 3_000,
        later_months_commission_bps: 1_500,
        first_trade_bonus_bps: 500,
        holding_period_days: 30,
        attribution_window_days: 30,
        credit_threshold_minor: 5_000,
        referrer_credit_minor: 1_000,
        referred_credit_minor: 1_000,
        daily_referral_limit: 10,
        shared_address_limit: 3,
        shared_address_window_hours: 24,
        wash_trade_tolerance_bps: 1_000,
        click_dedupe_minutes: 60,
        click_rate_per_minute: 60,
        payout_minimum_minor: 10_000,
        max_event_age_days: 26,
        // No per-trade fee: tests that want trade commissions set one.
        trade_fees: Vec::new(),
        trade_tiers: "0:50,10:100,25:150,50:200".into(),
        tier_basis: "active-traders".into(),
        webhook_allow_private: false,
        webhook_timeout_secs: 10,
        webhook_retry_base_secs: 10,
        webhook_retry_window_secs: 259_200,
        // Payouts run when a test runs them: the daily batch would run at
        // once on the wall clock, past 09:00 most of the day.
        payout_time: "off".into(),
        payout_provider: "manual".into(),
        stripe_api_base: "https://api.stripe.com".into(),
        stripe_timeout_secs: 30,
        stripe_secret_key: None,
    }
}

/// Which stores a test's gateway runs on.
#[derive(Debug, Clone)]
pub enum Backend {
    /// The embedded default.
    Sled,
    /// The test command's private Redis, under a prefix of this test's own.
    Redis { prefix: String },
    /// The test command's private Redis Cluster (three primaries), under a
    /// prefix of this test's own.
    RedisCluster { prefix: String },
}

impl Backend {
    /// Redis under a fresh prefix, so tests share nothing.
    pub fn redis() -> Self {
        Self::Redis {
            prefix: fresh_prefix(),
        }
    }

    /// The Redis Cluster under a fresh prefix.
    pub fn redis_cluster() -> Self {
        Self::RedisCluster {
            prefix: fresh_prefix(),
        }
    }

    /// The URL and key prefix of the Redis this backend uses.
    pub fn redis_url_and_prefix(&self) -> Option<(String, &str)> {
        match self {
            Self::Sled => None,
            Self::Redis { prefix } => Some((eagate_tests::redis_url(), prefix)),
            Self::RedisCluster { prefix } => Some((eagate_tests::redis_cluster_url(), prefix)),
        }
    }

    /// A client of the Redis this backend uses (of the whole cluster, for
    /// a cluster), and the prefix.
    pub fn redis_connection(&self) -> Option<(Box<dyn redis::ConnectionLike>, String)> {
        match self {
            Self::Sled => None,
            Self::Redis { prefix } => {
                let client = redis::Client::open(eagate_tests::redis_url()).unwrap();
                Some((Box::new(client.get_connection().unwrap()), prefix.clone()))
            }
            Self::RedisCluster { prefix } => {
                let client =
                    redis::cluster::ClusterClient::new(vec![eagate_tests::redis_cluster_url()])
                        .unwrap();
                Some((Box::new(client.get_connection().unwrap()), prefix.clone()))
            }
        }
    }
}

/// How many reports `gateway` keeps about `signal_id`: a fill sent twice
/// and stored once counts one.
pub async fn stored_count(gateway: &Gateway, signal_id: SignalId) -> usize {
    gateway.reports().for_signal(signal_id).await.unwrap().len()
}

/// A key prefix no other test uses, so tests share nothing.
pub fn fresh_prefix() -> String {
    let mut random = [0u8; 6];
    getrandom::fill(&mut random).unwrap();
    let tag: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("eagate-test-{tag}")
}

/// The test configuration on `backend`; a given backend and directory give
/// the same stores every time, so a test can restart its gateway.
pub fn config_on(backend: &Backend, dir: &Path) -> ServeConfig {
    let mut config = config(dir);
    if let Some((url, prefix)) = backend.redis_url_and_prefix() {
        config.redis_url = Some(url);
        config.redis_prefix = prefix.to_owned();
    }
    config
}

/// Runs an async test fn taking a [`Backend`] as three tests: on sled, on
/// the private Redis and on the private Redis Cluster.
macro_rules! on_both_backends {
    ($test:ident) => {
        mod $test {
            #[tokio::test]
            async fn on_sled() {
                super::$test(super::Backend::Sled).await;
            }

            #[tokio::test]
            async fn on_redis() {
                super::$test(super::Backend::redis()).await;
            }

            #[tokio::test]
            async fn on_redis_cluster() {
                super::$test(super::Backend::redis_cluster()).await;
            }
        }
    };
}
pub(crate) use on_both_backends;

pub struct Device {
    pub id: DeviceId,
    pub secret: DeviceSecret,
}

pub async fn register(gateway: &Gateway) -> Device {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
    let name = format!(
        "VPS {}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let (record, secret) = gateway
        .registry()
        .register(gateway.master_key(), "acct-1", &name)
        .await
        .unwrap();
    Device {
        id: DeviceId::new(&record.device_id).unwrap(),
        secret,
    }
}

pub struct Session {
    pub connection: Connection,
    send: SendStream,
    recv: RecvStream,
    buffer: Vec<u8>,
    pub binding: ChannelBinding,
    /// The gateway's pings heard (and, like a silent device, not answered):
    /// a gateway that has said nothing for a while pings, and the tests
    /// read past them.
    pub pings_heard: u64,
}

pub async fn connect(gateway: &Gateway, data_dir: &Path) -> Session {
    connect_to(
        gateway.quic_addr().expect("the gateway serves devices"),
        data_dir,
    )
    .await
}

/// Connects to the gateway at `addr` whose data directory (holding its
/// self-signed certificate) is `data_dir`.
pub async fn connect_to(addr: std::net::SocketAddr, data_dir: &Path) -> Session {
    connect_with_window(addr, data_dir, None).await
}

/// [`connect_to`], the device taking at most `stream_window` bytes of its
/// stream ahead of reading them (quinn's default when `None`).
pub async fn connect_with_window(
    addr: std::net::SocketAddr,
    data_dir: &Path,
    stream_window: Option<u32>,
) -> Session {
    let connection = try_connect_from(addr, data_dir, "127.0.0.1", stream_window)
        .await
        .unwrap();
    session_over(connection).await
}

/// A session on an open connection: the device's stream opened, nothing
/// sent yet.
pub async fn session_over(connection: Connection) -> Session {
    let mut binding = [0u8; 32];
    connection
        .export_keying_material(&mut binding, CHANNEL_BINDING_LABEL, b"")
        .unwrap();
    let (send, recv) = connection.open_bi().await.unwrap();
    Session {
        connection,
        send,
        recv,
        buffer: Vec::new(),
        pings_heard: 0,
        binding,
    }
}

/// A QUIC connection (handshake done, nothing sent) to the gateway at
/// `addr` from the loopback address `local` (any of 127.0.0.0/8: another
/// source, as the gateway sees it), or why there is none.
pub async fn try_connect_from(
    addr: std::net::SocketAddr,
    data_dir: &Path,
    local: &str,
    stream_window: Option<u32>,
) -> Result<Connection, ConnectionError> {
    try_connect_speaking(addr, data_dir, local, stream_window, &[ALPN]).await
}

/// [`try_connect_from`] offering the application protocols `alpn`.
pub async fn try_connect_speaking(
    addr: std::net::SocketAddr,
    data_dir: &Path,
    local: &str,
    stream_window: Option<u32>,
    alpn: &[&[u8]],
) -> Result<Connection, ConnectionError> {
    let cert = CertificateDer::from_pem_file(data_dir.join("tls/cert.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let local = std::net::SocketAddr::new(local.parse().unwrap(), 0);
    let mut endpoint = quinn::Endpoint::client(local).unwrap();
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    if let Some(window) = stream_window {
        let mut transport = quinn::TransportConfig::default();
        transport
            .stream_receive_window(window.into())
            .receive_window(window.into());
        client.transport_config(Arc::new(transport));
    }
    endpoint.set_default_client_config(client);
    endpoint.connect(addr, "localhost").unwrap().await
}

impl Session {
    pub async fn send(&mut self, message: &DeviceMessage) {
        let mut frame = [0u8; MAX_WIRE_LEN];
        let len = encode_frame(message, &mut frame).unwrap();
        self.send.write_all(&frame[..len]).await.unwrap();
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.unwrap();
    }

    /// Ends the device's side of the stream.
    pub fn finish(&mut self) {
        self.send.finish().unwrap();
    }

    /// The next message but the gateway's pings, or `None` when the gateway
    /// ended the stream or the connection.
    pub async fn receive(&mut self) -> Option<GatewayMessage> {
        self.receive_within(Duration::from_secs(5)).await
    }

    /// [`Session::receive`], allowing the gateway `within` to answer.
    pub async fn receive_within(&mut self, within: Duration) -> Option<GatewayMessage> {
        loop {
            if let Decoded::Frame { message, consumed } =
                decode_frame::<GatewayMessage>(&self.buffer).expect("gateway frames are valid")
            {
                self.buffer.drain(..consumed);
                if matches!(message, GatewayMessage::Ping(_)) {
                    self.pings_heard += 1;
                    continue;
                }
                return Some(message);
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout(within, self.recv.read(&mut chunk))
                .await
                .unwrap_or_else(|_| panic!("the gateway answers or closes within {within:?}"))
            {
                Ok(Some(n)) => self.buffer.extend_from_slice(&chunk[..n]),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    pub fn authenticate_message(
        &self,
        device: &Device,
        timestamp_ms: u64,
        nonce: Nonce,
    ) -> DeviceMessage {
        DeviceMessage::Authenticate(Authenticate::sign(
            device.id.clone(),
            &device.secret,
            timestamp_ms,
            nonce,
            &self.binding,
            heapless::Vec::new(),
        ))
    }

    pub async fn authenticate(&mut self, device: &Device, nonce: Nonce) -> Option<GatewayMessage> {
        let message = self.authenticate_message(device, now_ms(), nonce);
        self.send(&message).await;
        self.receive().await
    }

    /// The application close code the gateway closed the connection with.
    pub async fn close_code(&self) -> u64 {
        match tokio::time::timeout(Duration::from_secs(5), self.connection.closed())
            .await
            .expect("the gateway closes the connection within 5 s")
        {
            ConnectionError::ApplicationClosed(close) => close.error_code.into_inner(),
            other => panic!("closed otherwise: {other}"),
        }
    }
}

/// A market buy of 0.10 XAUUSD with `comment`, as a provider publishes it.
pub fn market_buy(comment: &str) -> eagate_gateway::signals::SignalDraft {
    eagate_gateway::signals::SignalDraft {
        symbol: Symbol::new("XAUUSD").unwrap(),
        action: Action::OpenBuy,
        order_type: OrderType::Market,
        volume: "0.10".parse().unwrap(),
        price: None,
        stop_loss: Some("2300.00".parse().unwrap()),
        take_profit: None,
        magic: 7,
        comment: SignalComment::new(comment).unwrap(),
        issued_at_ms: None,
        expires_at_ms: None,
        reference: None,
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

pub fn fresh_nonce() -> Nonce {
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).unwrap();
    nonce
}

pub async fn start() -> (Gateway, tempfile::TempDir) {
    start_on(&Backend::Sled).await
}

/// The HTTP sidecar of `gateway` (whose data directory is `dir`), as
/// `eagate serve` builds it, for driving through the router.
pub fn sidecar(gateway: &Gateway, dir: &std::path::Path) -> axum::Router {
    eagate_gateway::http::router(eagate_gateway::http::AppState {
        core: gateway.core(),
        tokens: std::sync::Arc::new(eagate_gateway::http::tokens::TokenStore::open(dir)),
        affiliates: gateway
            .affiliates()
            .expect("serve runs the programme")
            .clone(),
        console: Default::default(),
    })
}

pub async fn start_on(backend: &Backend) -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&config_on(backend, dir.path()))
        .await
        .unwrap();
    (gateway, dir)
}

impl Session {
    /// Authenticates and returns the accepted answer, failing the test otherwise.
    pub async fn open(gateway: &Gateway, data_dir: &Path, device: &Device) -> (Self, AuthAccepted) {
        Self::open_as(gateway, data_dir, device, PROTOCOL_VERSION, &[]).await
    }

    /// Authenticates speaking protocol `version` and naming `resume`
    /// points; returns the accepted answer, failing the test otherwise.
    pub async fn open_as(
        gateway: &Gateway,
        data_dir: &Path,
        device: &Device,
        version: u16,
        resume: &[(&str, u64)],
    ) -> (Self, AuthAccepted) {
        let session = connect(gateway, data_dir).await;
        session.accepted_as(device, version, resume).await
    }

    /// [`Session::open`] for a device that takes at most `window` bytes
    /// ahead of reading them.
    pub async fn open_with_window(
        gateway: &Gateway,
        data_dir: &Path,
        device: &Device,
        window: u32,
    ) -> (Self, AuthAccepted) {
        let addr = gateway.quic_addr().expect("the gateway serves devices");
        let session = connect_with_window(addr, data_dir, Some(window)).await;
        session.accepted_as(device, PROTOCOL_VERSION, &[]).await
    }

    async fn accepted_as(
        self,
        device: &Device,
        version: u16,
        resume: &[(&str, u64)],
    ) -> (Self, AuthAccepted) {
        let mut session = self;
        let DeviceMessage::Authenticate(mut auth) =
            session.authenticate_message(device, now_ms(), fresh_nonce())
        else {
            unreachable!()
        };
        auth.protocol_version = version;
        for (channel, position) in resume {
            auth.resume
                .push(ResumePoint {
                    channel: ChannelName::new(channel).unwrap(),
                    position: *position,
                })
                .unwrap();
        }
        session.send(&DeviceMessage::Authenticate(auth)).await;
        match session.receive().await {
            Some(GatewayMessage::AuthAccepted(accepted)) => (session, accepted),
            other => panic!("expected AuthAccepted, got {other:?}"),
        }
    }

    /// The next `n` messages, which must all be signals.
    pub async fn signals(&mut self, n: usize) -> Vec<Signal> {
        let mut signals = Vec::new();
        while signals.len() < n {
            match self.receive().await {
                Some(GatewayMessage::Signal(signal)) => signals.push(signal),
                other => panic!("expected a signal, got {other:?}"),
            }
        }
        signals
    }

    /// Expects the gateway's last word, `GoingAway(reason)`, then the close
    /// with `code`.
    pub async fn expect_goodbye(&mut self, reason: GoingAwayReason, code: u32) {
        assert_eq!(
            self.receive().await,
            Some(GatewayMessage::GoingAway(GoingAway { reason }))
        );
        assert_eq!(self.close_code().await, u64::from(code));
    }

    /// Whether the gateway has closed the connection.
    pub fn is_closed(&self) -> bool {
        self.connection.close_reason().is_some()
    }
}
