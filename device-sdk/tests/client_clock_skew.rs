//! The client against a scripted gateway on real QUIC sockets: a device
//! whose clock is an hour behind is told so, corrects itself, signs with
//! the gateway's time on the next attempt, and says so in its events.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eagate_sdk::protocol::{
    ALPN, AuthAccepted, CHANNEL_BINDING_LABEL, CertFingerprint, ClockSkew, Decoded, DeviceMessage,
    DeviceSecret, GatewayMessage, MAX_WIRE_LEN, Refusal, SessionParams, decode_frame, encode_frame,
};
use eagate_sdk::{Client, ClientConfig, Event, ServerTrust};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

const HOUR_MS: u64 = 3_600_000;
const SECRET: [u8; 32] = [42; 32];

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn gateway_endpoint() -> (quinn::Endpoint, CertFingerprint) {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = CertificateDer::from(generated.cert.der().to_vec());
    let fingerprint = CertFingerprint::of(&cert);
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        generated.signing_key.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    (endpoint, fingerprint)
}

/// Accepts one session, checks its authentication (MAC over this
/// connection's channel binding) and answers with `answer(timestamp)`.
async fn one_session(
    endpoint: &quinn::Endpoint,
    answer: impl FnOnce(u64) -> GatewayMessage,
) -> (u64, quinn::Connection) {
    let connection = endpoint.accept().await.unwrap().await.unwrap();
    let mut binding = [0u8; 32];
    connection
        .export_keying_material(&mut binding, CHANNEL_BINDING_LABEL, b"")
        .unwrap();
    let (mut send, mut recv) = connection.accept_bi().await.unwrap();
    let mut buffer = Vec::new();
    let authenticate = loop {
        let mut chunk = [0u8; 4096];
        let n = recv.read(&mut chunk).await.unwrap().expect("a frame");
        buffer.extend_from_slice(&chunk[..n]);
        if let Decoded::Frame { message, .. } = decode_frame::<DeviceMessage>(&buffer).unwrap() {
            let DeviceMessage::Authenticate(authenticate) = message else {
                panic!("authentication comes first, not {message:?}");
            };
            break authenticate;
        }
    };
    assert!(
        authenticate
            .transcript(&binding)
            .verify(&DeviceSecret::from_bytes(SECRET), &authenticate.mac),
        "signed with the secret over this connection's binding"
    );
    let mut frame = [0u8; MAX_WIRE_LEN];
    let len = encode_frame(&answer(authenticate.timestamp_ms), &mut frame).unwrap();
    send.write_all(&frame[..len]).await.unwrap();
    (authenticate.timestamp_ms, connection)
}

#[tokio::test]
async fn a_skew_refusal_corrects_the_clock_and_the_retry_is_accepted() {
    let (endpoint, fingerprint) = gateway_endpoint();
    let address = endpoint.local_addr().unwrap();
    let state = tempfile::tempdir().unwrap();
    let secret = DeviceSecret::from_bytes(SECRET).to_text();
    let mut config = ClientConfig::new(
        address.to_string(),
        "dv_skewed",
        secret.as_str(),
        ServerTrust::Pinned(fingerprint),
        state.path(),
    )
    .unwrap();
    config.server_name = Some("localhost".to_owned());
    let mut client = Client::connect(config).await.unwrap();

    // The gateway's clock runs an hour ahead of this machine's.
    let gateway = tokio::spawn(async move {
        let (first, refused) = one_session(&endpoint, |_| {
            GatewayMessage::AuthRefused(Refusal::ClockSkew(ClockSkew {
                gateway_time_ms: now_ms() + HOUR_MS,
            }))
        })
        .await;
        let (second, accepted) = one_session(&endpoint, |_| {
            GatewayMessage::AuthAccepted(AuthAccepted {
                gateway_time_ms: now_ms() + HOUR_MS,
                session: SessionParams {
                    ping_interval_ms: 5_000,
                    idle_timeout_ms: 10_000,
                    max_frame_len: 4096,
                },
                confirmed_report_seq: 0,
            })
        })
        .await;
        drop(refused);
        (first, second, accepted, endpoint)
    });

    let corrected = tokio::time::timeout(Duration::from_secs(20), client.next_event())
        .await
        .expect("an event in time")
        .expect("an event");
    let Event::ClockCorrected { offset_ms } = corrected else {
        panic!("the correction is announced first, not {corrected:?}");
    };
    assert!(
        offset_ms.abs_diff(HOUR_MS as i64) < 5_000,
        "offset {offset_ms} ms is about an hour"
    );
    let connected = tokio::time::timeout(Duration::from_secs(20), client.next_event())
        .await
        .expect("an event in time")
        .expect("an event");
    assert!(
        matches!(connected, Event::Connected { .. }),
        "{connected:?}"
    );

    let (first, second, _connection, _endpoint) = gateway.await.unwrap();
    assert!(
        first.abs_diff(now_ms()) < 5_000,
        "first signed with the local clock"
    );
    assert!(
        second.abs_diff(now_ms() + HOUR_MS) < 5_000,
        "the retry is signed with the gateway's time"
    );
}
