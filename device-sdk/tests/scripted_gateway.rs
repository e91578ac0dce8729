//! The client against a scripted gateway on real QUIC sockets: a device
//! whose clock is an hour behind is told so, corrects itself, signs with
//! the gateway's time on the next attempt, and says so in its events; a
//! device flooded with signals still sends its pings.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eagate_sdk::protocol::{
    ALPN, Action, AuthAccepted, CHANNEL_BINDING_LABEL, CertFingerprint, ChannelName, ClockSkew,
    Decoded, DeviceMessage, DeviceSecret, GatewayMessage, MAX_WIRE_LEN, OrderType, Refusal,
    SessionParams, Signal, SignalComment, SignalId, Symbol, decode_frame, encode_frame,
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
    let (timestamp, connection, _streams) = one_session_streams(endpoint, answer).await;
    (timestamp, connection)
}

/// [`one_session`], keeping the session's streams and what was read after
/// the authentication.
async fn one_session_streams(
    endpoint: &quinn::Endpoint,
    answer: impl FnOnce(u64) -> GatewayMessage,
) -> (
    u64,
    quinn::Connection,
    (quinn::SendStream, quinn::RecvStream, Vec<u8>),
) {
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
        if let Decoded::Frame { message, consumed } =
            decode_frame::<DeviceMessage>(&buffer).unwrap()
        {
            let DeviceMessage::Authenticate(authenticate) = message else {
                panic!("authentication comes first, not {message:?}");
            };
            buffer.drain(..consumed);
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
    (authenticate.timestamp_ms, connection, (send, recv, buffer))
}

/// A client of device `device_id` for the scripted gateway at `endpoint`,
/// with its journal in `state`.
async fn client_of(
    endpoint: &quinn::Endpoint,
    fingerprint: CertFingerprint,
    device_id: &str,
    state: &std::path::Path,
) -> Client {
    let secret = DeviceSecret::from_bytes(SECRET).to_text();
    let mut config = ClientConfig::new(
        endpoint.local_addr().unwrap().to_string(),
        device_id,
        secret.as_str(),
        ServerTrust::Pinned(fingerprint),
        state,
    )
    .unwrap();
    config.server_name = Some("localhost".to_owned());
    Client::connect(config).await.unwrap()
}

#[tokio::test]
async fn a_skew_refusal_corrects_the_clock_and_the_retry_is_accepted() {
    let (endpoint, fingerprint) = gateway_endpoint();
    let state = tempfile::tempdir().unwrap();
    let mut client = client_of(&endpoint, fingerprint, "dv_skewed", state.path()).await;

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

fn signal(position: u64) -> Signal {
    Signal {
        channel: ChannelName::new("gold").unwrap(),
        position,
        signal_id: SignalId([(position % 250) as u8 + 1; 16]),
        symbol: Symbol::new("XAUUSD").unwrap(),
        action: Action::OpenBuy,
        order_type: OrderType::Market,
        volume: "0.10".parse().unwrap(),
        price: None,
        stop_loss: None,
        take_profit: None,
        magic: 1,
        comment: SignalComment::new("flood").unwrap(),
        issued_at_ms: now_ms(),
        expires_at_ms: None,
        reference: None,
    }
}

/// The liveness contract: a device sends something every ping interval
/// however much it hears. A bot that only reads, on a channel that never
/// pauses, must still ping, or the gateway drops it as silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_flooded_with_signals_still_pings_every_interval() {
    const PING_MS: u64 = 100;
    const FLOOD: Duration = Duration::from_secs(3);
    let (endpoint, fingerprint) = gateway_endpoint();
    let state = tempfile::tempdir().unwrap();
    let mut client = client_of(&endpoint, fingerprint, "dv_flooded", state.path()).await;

    let gateway = tokio::spawn(async move {
        let (_, connection, (mut send, mut recv, mut heard)) =
            one_session_streams(&endpoint, |_| {
                GatewayMessage::AuthAccepted(AuthAccepted {
                    gateway_time_ms: now_ms(),
                    session: SessionParams {
                        ping_interval_ms: PING_MS as u32,
                        idle_timeout_ms: 10_000,
                        max_frame_len: 4096,
                    },
                    confirmed_report_seq: 0,
                })
            })
            .await;
        // Signals without a pause, in batches, while the device's messages
        // are counted.
        let flooding = tokio::spawn(async move {
            let started = std::time::Instant::now();
            let mut position = 0;
            let mut frames = Vec::new();
            while started.elapsed() < FLOOD {
                frames.clear();
                for _ in 0..64 {
                    position += 1;
                    let mut frame = [0u8; MAX_WIRE_LEN];
                    let message = GatewayMessage::Signal(signal(position));
                    let len = encode_frame(&message, &mut frame).unwrap();
                    frames.extend_from_slice(&frame[..len]);
                }
                if send.write_all(&frames).await.is_err() {
                    break;
                }
            }
        });
        let mut pings = 0;
        let listening = std::time::Instant::now();
        while listening.elapsed() < FLOOD {
            let mut chunk = [0u8; 4096];
            let read =
                tokio::time::timeout(Duration::from_millis(200), recv.read(&mut chunk)).await;
            if let Ok(Ok(Some(n))) = read {
                heard.extend_from_slice(&chunk[..n]);
            }
            while let Decoded::Frame { message, consumed } =
                decode_frame::<DeviceMessage>(&heard).unwrap()
            {
                heard.drain(..consumed);
                if matches!(message, DeviceMessage::Ping(_)) {
                    pings += 1;
                }
            }
        }
        // The bot has stopped reading by now, so a write may wait forever.
        flooding.abort();
        (pings, connection, endpoint)
    });

    // The bot takes every event as fast as it comes and never reports.
    let mut signals = 0u64;
    let reading = std::time::Instant::now();
    while reading.elapsed() < FLOOD {
        match tokio::time::timeout(Duration::from_millis(500), client.next_event()).await {
            Ok(Some(Event::Signal(_))) => signals += 1,
            Ok(Some(Event::Disconnected { reason, .. })) => panic!("disconnected: {reason}"),
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => break,
        }
    }
    let (pings, _connection, _endpoint) = gateway.await.unwrap();
    client.close().await;
    assert!(
        signals > 100,
        "the flood reached the bot ({signals} signals)"
    );
    // One every 100 ms over 3 s, a few lost to start-up and scheduling
    // (with the timer left to a select branch the flood starves, 7 to 20).
    assert!(
        pings >= 24,
        "{pings} pings in {FLOOD:?} of flood, {signals} signals"
    );
}
