//! Device authentication against a real gateway over QUIC on loopback.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use eagate_gateway::config::ServeConfig;
use eagate_gateway::quic::close_code;
use eagate_gateway::server::Gateway;
use eagate_protocol::*;
use quinn::{Connection, ConnectionError, RecvStream, SendStream};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

fn config(dir: &Path) -> ServeConfig {
    ServeConfig {
        data_dir: dir.to_owned(),
        quic_listen: "127.0.0.1:0".parse().unwrap(),
        tls_cert: None,
        tls_key: None,
        hostnames: vec!["localhost".into()],
        skew_window_secs: 30,
        auth_deadline_secs: 1,
        master_key: None,
    }
}

struct Device {
    id: DeviceId,
    secret: DeviceSecret,
}

fn register(gateway: &Gateway) -> Device {
    let (record, secret) = gateway
        .registry()
        .register(gateway.master_key(), "acct-1", "London VPS")
        .unwrap();
    Device {
        id: DeviceId::new(&record.device_id).unwrap(),
        secret,
    }
}

struct Session {
    connection: Connection,
    send: SendStream,
    recv: RecvStream,
    buffer: Vec<u8>,
    binding: ChannelBinding,
}

async fn connect(gateway: &Gateway, data_dir: &Path) -> Session {
    let cert = CertificateDer::from_pem_file(data_dir.join("tls/cert.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let connection = endpoint
        .connect(gateway.quic_addr(), "localhost")
        .unwrap()
        .await
        .unwrap();
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
        binding,
    }
}

impl Session {
    async fn send(&mut self, message: &DeviceMessage) {
        let mut frame = [0u8; MAX_WIRE_LEN];
        let len = encode_frame(message, &mut frame).unwrap();
        self.send.write_all(&frame[..len]).await.unwrap();
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.unwrap();
    }

    /// The next message, or `None` when the gateway ended the stream or the
    /// connection.
    async fn receive(&mut self) -> Option<GatewayMessage> {
        loop {
            if let Decoded::Frame { message, consumed } =
                decode_frame::<GatewayMessage>(&self.buffer).expect("gateway frames are valid")
            {
                self.buffer.drain(..consumed);
                return Some(message);
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout(Duration::from_secs(5), self.recv.read(&mut chunk))
                .await
                .expect("the gateway answers or closes within 5 s")
            {
                Ok(Some(n)) => self.buffer.extend_from_slice(&chunk[..n]),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    fn authenticate_message(
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

    async fn authenticate(&mut self, device: &Device, nonce: Nonce) -> Option<GatewayMessage> {
        let message = self.authenticate_message(device, now_ms(), nonce);
        self.send(&message).await;
        self.receive().await
    }

    /// The application close code the gateway closed the connection with.
    async fn close_code(&self) -> u64 {
        match tokio::time::timeout(Duration::from_secs(5), self.connection.closed())
            .await
            .expect("the gateway closes the connection within 5 s")
        {
            ConnectionError::ApplicationClosed(close) => close.error_code.into_inner(),
            other => panic!("closed otherwise: {other}"),
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn fresh_nonce() -> Nonce {
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).unwrap();
    nonce
}

async fn start() -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&config(dir.path())).await.unwrap();
    (gateway, dir)
}

#[tokio::test]
async fn device_with_the_right_secret_is_accepted_with_the_gateway_time() {
    let (gateway, dir) = start().await;
    let device = register(&gateway);
    let mut session = connect(&gateway, dir.path()).await;
    let before = now_ms();
    match session.authenticate(&device, fresh_nonce()).await {
        Some(GatewayMessage::AuthAccepted(accepted)) => {
            assert!(accepted.gateway_time_ms >= before - 1000);
            assert!(accepted.gateway_time_ms <= now_ms() + 1000);
            assert_eq!(accepted.session.max_frame_len as usize, MAX_FRAME_LEN);
        }
        other => panic!("expected AuthAccepted, got {other:?}"),
    }
    // The session is live: a ping is answered.
    session.send(&DeviceMessage::Ping(Ping { token: 77 })).await;
    assert_eq!(
        session.receive().await,
        Some(GatewayMessage::Pong(Pong { token: 77 }))
    );
}

#[tokio::test]
async fn wrong_secret_is_refused_generically_and_the_connection_closed() {
    let (gateway, dir) = start().await;
    let mut device = register(&gateway);
    device.secret = DeviceSecret::from_bytes([9; 32]);
    let mut session = connect(&gateway, dir.path()).await;
    assert_eq!(
        session.authenticate(&device, fresh_nonce()).await,
        Some(GatewayMessage::AuthRefused(Refusal::Failed))
    );
    assert_eq!(session.close_code().await, close_code::AUTH_REFUSED as u64);
}

#[tokio::test]
async fn unknown_device_is_refused_with_the_same_generic_answer() {
    let (gateway, dir) = start().await;
    let stranger = Device {
        id: DeviceId::new("dv_NOBODY").unwrap(),
        secret: DeviceSecret::from_bytes([1; 32]),
    };
    let mut session = connect(&gateway, dir.path()).await;
    assert_eq!(
        session.authenticate(&stranger, fresh_nonce()).await,
        Some(GatewayMessage::AuthRefused(Refusal::Failed))
    );
    assert_eq!(session.close_code().await, close_code::AUTH_REFUSED as u64);
}

#[tokio::test]
async fn revoked_device_with_the_right_secret_is_told_it_is_revoked() {
    let (gateway, dir) = start().await;
    let device = register(&gateway);
    gateway.registry().revoke(device.id.as_str()).unwrap();
    let mut session = connect(&gateway, dir.path()).await;
    assert_eq!(
        session.authenticate(&device, fresh_nonce()).await,
        Some(GatewayMessage::AuthRefused(Refusal::Revoked))
    );
}

#[tokio::test]
async fn timestamp_outside_the_window_gets_clock_skew_with_the_gateway_time() {
    let (gateway, dir) = start().await;
    let device = register(&gateway);
    let mut session = connect(&gateway, dir.path()).await;
    let skewed = now_ms() - 31_000;
    let message = session.authenticate_message(&device, skewed, fresh_nonce());
    session.send(&message).await;
    match session.receive().await {
        Some(GatewayMessage::AuthRefused(Refusal::ClockSkew(skew))) => {
            assert!(skew.gateway_time_ms.abs_diff(now_ms()) < 5_000);
        }
        other => panic!("expected ClockSkew, got {other:?}"),
    }
}

#[tokio::test]
async fn replayed_nonce_is_refused_also_after_a_gateway_restart() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&config(dir.path())).await.unwrap();
    let device = register(&gateway);
    let nonce = fresh_nonce();
    let mut first = connect(&gateway, dir.path()).await;
    assert!(matches!(
        first.authenticate(&device, nonce).await,
        Some(GatewayMessage::AuthAccepted(_))
    ));
    // Same nonce, correctly signed for a new connection: a replay.
    let mut second = connect(&gateway, dir.path()).await;
    assert_eq!(
        second.authenticate(&device, nonce).await,
        Some(GatewayMessage::AuthRefused(Refusal::Failed))
    );
    drop((first, second));
    gateway.shutdown().await;

    let restarted = Gateway::start(&config(dir.path())).await.unwrap();
    let mut third = connect(&restarted, dir.path()).await;
    assert_eq!(
        third.authenticate(&device, nonce).await,
        Some(GatewayMessage::AuthRefused(Refusal::Failed))
    );
    let mut fourth = connect(&restarted, dir.path()).await;
    assert!(matches!(
        fourth.authenticate(&device, fresh_nonce()).await,
        Some(GatewayMessage::AuthAccepted(_))
    ));
}

#[tokio::test]
async fn authentication_captured_on_one_connection_is_refused_on_another() {
    let (gateway, dir) = start().await;
    let device = register(&gateway);
    let victim = connect(&gateway, dir.path()).await;
    let captured = victim.authenticate_message(&device, now_ms(), fresh_nonce());
    let mut attacker = connect(&gateway, dir.path()).await;
    attacker.send(&captured).await;
    assert_eq!(
        attacker.receive().await,
        Some(GatewayMessage::AuthRefused(Refusal::Failed))
    );
}

#[tokio::test]
async fn garbage_closes_the_connection_and_the_gateway_keeps_serving() {
    let (gateway, dir) = start().await;
    let device = register(&gateway);
    let mut garbage = connect(&gateway, dir.path()).await;
    garbage
        .send_raw(&[0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff])
        .await;
    assert_eq!(garbage.receive().await, None);
    assert_eq!(
        garbage.close_code().await,
        close_code::PROTOCOL_VIOLATION as u64
    );
    let mut honest = connect(&gateway, dir.path()).await;
    assert!(matches!(
        honest.authenticate(&device, fresh_nonce()).await,
        Some(GatewayMessage::AuthAccepted(_))
    ));
}

#[tokio::test]
async fn oversized_frame_is_refused_before_its_body_is_read() {
    let (gateway, dir) = start().await;
    let mut session = connect(&gateway, dir.path()).await;
    session.send_raw(&u32::MAX.to_be_bytes()).await;
    assert_eq!(session.receive().await, None);
    assert_eq!(
        session.close_code().await,
        close_code::PROTOCOL_VIOLATION as u64
    );
}

#[tokio::test]
async fn anything_but_authenticate_first_is_a_protocol_violation() {
    let (gateway, dir) = start().await;
    let mut session = connect(&gateway, dir.path()).await;
    session.send(&DeviceMessage::Ping(Ping { token: 1 })).await;
    assert_eq!(session.receive().await, None);
    assert_eq!(
        session.close_code().await,
        close_code::PROTOCOL_VIOLATION as u64
    );
}

#[tokio::test]
async fn connection_that_does_not_authenticate_is_closed_at_the_deadline() {
    let (gateway, dir) = start().await;
    let session = connect(&gateway, dir.path()).await;
    // Opened the stream but sends nothing; the deadline in the test config
    // is one second.
    let started = std::time::Instant::now();
    assert_eq!(session.close_code().await, close_code::AUTH_TIMEOUT as u64);
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn unsupported_protocol_version_is_told_the_supported_range() {
    let (gateway, dir) = start().await;
    let device = register(&gateway);
    let mut session = connect(&gateway, dir.path()).await;
    let DeviceMessage::Authenticate(mut auth) =
        session.authenticate_message(&device, now_ms(), fresh_nonce())
    else {
        unreachable!()
    };
    auth.protocol_version = 2;
    session.send(&DeviceMessage::Authenticate(auth)).await;
    assert_eq!(
        session.receive().await,
        Some(GatewayMessage::AuthRefused(Refusal::UnsupportedVersion(
            SupportedVersions { min: 1, max: 1 }
        )))
    );
}

#[tokio::test]
async fn revoking_a_connected_device_cuts_it_off_within_one_second() {
    let (gateway, dir) = start().await;
    let device = register(&gateway);
    let bystander = register(&gateway);
    let mut session = connect(&gateway, dir.path()).await;
    let mut other = connect(&gateway, dir.path()).await;
    assert!(matches!(
        session.authenticate(&device, fresh_nonce()).await,
        Some(GatewayMessage::AuthAccepted(_))
    ));
    assert!(matches!(
        other.authenticate(&bystander, fresh_nonce()).await,
        Some(GatewayMessage::AuthAccepted(_))
    ));
    let revoked_at = std::time::Instant::now();
    gateway.revoke(device.id.as_str()).unwrap();
    assert_eq!(
        session.receive().await,
        Some(GatewayMessage::GoingAway(GoingAway {
            reason: GoingAwayReason::Revoked
        }))
    );
    session.close_code().await;
    assert!(
        revoked_at.elapsed() < Duration::from_secs(1),
        "cut off after {:?}",
        revoked_at.elapsed()
    );
    // Another device's session is untouched.
    other.send(&DeviceMessage::Ping(Ping { token: 5 })).await;
    assert_eq!(
        other.receive().await,
        Some(GatewayMessage::Pong(Pong { token: 5 }))
    );
}

#[tokio::test]
async fn shutdown_tells_connected_devices_the_gateway_is_going_away() {
    let (gateway, dir) = start().await;
    let device = register(&gateway);
    let mut session = connect(&gateway, dir.path()).await;
    assert!(matches!(
        session.authenticate(&device, fresh_nonce()).await,
        Some(GatewayMessage::AuthAccepted(_))
    ));
    let stopping = tokio::spawn(gateway.shutdown());
    assert_eq!(
        session.receive().await,
        Some(GatewayMessage::GoingAway(GoingAway {
            reason: GoingAwayReason::Shutdown
        }))
    );
    assert_eq!(session.close_code().await, close_code::SHUTDOWN as u64);
    stopping.await.unwrap();
}
