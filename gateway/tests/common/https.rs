//! A test device speaking signed requests (`DEVICE-HTTP.md`) to a real
//! gateway over HTTPS on loopback: TLS by tokio-rustls, HTTP/1.1 written by
//! hand, so a test controls every byte (the target as sent, duplicated
//! headers, a body changed after signing).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use eagate_protocol::http_signing::{
    AnswerToSign, RequestToSign, body_sha256, lower_hex, parse_lower_hex,
};
use eagate_protocol::{DeviceId, DeviceSecret, Nonce};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An answer as the device received it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Whether the answer carries a valid signature for the request with
    /// `nonce`, under `secret`: what a client checks before acting on it.
    pub fn signed_for(&self, nonce: &Nonce, secret: &DeviceSecret) -> bool {
        let Some(signature) = self
            .header("Eagate-Signature")
            .and_then(parse_lower_hex::<32>)
        else {
            return false;
        };
        AnswerToSign {
            nonce,
            status: self.status,
            body_sha256: &body_sha256(&self.body),
        }
        .verify(secret, &signature)
    }
}

/// A request to send, signed or not, exactly as given.
#[derive(Debug, Clone)]
pub struct RawRequest {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What a device needs to reach the gateway over HTTPS.
#[derive(Clone)]
pub struct HttpsClient {
    pub addr: SocketAddr,
    connector: tokio_rustls::TlsConnector,
}

impl HttpsClient {
    /// A client of the listener at `addr`, trusting the gateway's
    /// self-signed certificate in `data_dir`.
    pub fn new(addr: SocketAddr, data_dir: &Path) -> Self {
        let cert = CertificateDer::from_pem_file(data_dir.join("tls/cert.pem")).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Self {
            addr,
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        }
    }

    /// Sends `request` on a connection of its own and reads the answer.
    pub async fn send(&self, request: &RawRequest) -> Answer {
        self.send_announcing(request, request.body.len()).await
    }

    /// [`HttpsClient::send`], or the error of a gateway that cannot be
    /// reached (killed, say).
    pub async fn try_send(&self, request: &RawRequest) -> std::io::Result<Answer> {
        tokio::net::TcpStream::connect(self.addr).await?;
        Ok(self.send(request).await)
    }

    /// [`HttpsClient::send`] with a `Content-Length` of `announced`,
    /// whatever the body holds: more than it holds is a stalled body.
    pub async fn send_announcing(&self, request: &RawRequest, announced: usize) -> Answer {
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let mut tls = self
            .connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
            request.method, request.target, announced
        );
        for (name, value) in &request.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.write_all(&request.body).await.unwrap();
        tls.flush().await.unwrap();
        if announced > request.body.len() {
            // The rest never comes: the answer is all the gateway may send.
            let mut raw = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                match tls.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        raw.extend_from_slice(&chunk[..n]);
                        if raw.windows(4).any(|w| w == b"\r\n\r\n") && complete(&raw) {
                            break;
                        }
                    }
                }
            }
            return parse_answer(&raw);
        }
        let mut raw = Vec::new();
        // The gateway closes after answering (`Connection: close`); a
        // close without TLS close_notify still leaves the whole answer.
        let _ = tls.read_to_end(&mut raw).await;
        parse_answer(&raw)
    }
}

/// Whether `raw` holds a whole answer with a `Content-Length`.
fn complete(raw: &[u8]) -> bool {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    head.lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .is_some_and(|n| raw.len() >= split + 4 + n)
}

fn parse_answer(raw: &[u8]) -> Answer {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.trim().to_owned(), value.trim().to_owned())
        })
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Answer {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap().trim(), 16)
                .unwrap();
        rest = &rest[line_end + 2..];
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// A device that signs its requests.
#[derive(Clone)]
pub struct HttpsDevice {
    pub client: HttpsClient,
    pub id: DeviceId,
    pub secret: DeviceSecret,
    /// Added to this machine's clock for every timestamp (a skewed VPS).
    pub clock_offset_ms: i64,
}

/// A signed request, with the nonce its answer must be signed for.
#[derive(Debug, Clone)]
pub struct Signed {
    pub request: RawRequest,
    pub nonce: Nonce,
}

impl HttpsDevice {
    pub fn new(client: HttpsClient, id: DeviceId, secret: DeviceSecret) -> Self {
        Self {
            client,
            id,
            secret,
            clock_offset_ms: 0,
        }
    }

    /// `method target` with `body`, signed now with a fresh nonce.
    pub fn sign(&self, method: &str, target: &str, body: &[u8]) -> Signed {
        let nonce = super::fresh_nonce();
        let timestamp_ms = super::now_ms().saturating_add_signed(self.clock_offset_ms);
        self.sign_with(method, target, body, timestamp_ms, nonce)
    }

    pub fn sign_with(
        &self,
        method: &str,
        target: &str,
        body: &[u8],
        timestamp_ms: u64,
        nonce: Nonce,
    ) -> Signed {
        let body_hash = body_sha256(body);
        let signature = RequestToSign {
            method,
            target,
            device_id: self.id.as_str(),
            timestamp_ms,
            nonce: &nonce,
            body_sha256: &body_hash,
        }
        .signature(&self.secret);
        let hex =
            |bytes: &[u8; 16]| String::from_utf8(lower_hex::<16, 32>(bytes).to_vec()).unwrap();
        let signature: [u8; 64] = lower_hex(&signature);
        Signed {
            request: RawRequest {
                method: method.to_owned(),
                target: target.to_owned(),
                headers: vec![
                    ("Eagate-Device".into(), self.id.to_string()),
                    ("Eagate-Timestamp".into(), timestamp_ms.to_string()),
                    ("Eagate-Nonce".into(), hex(&nonce)),
                    (
                        "Eagate-Signature".into(),
                        String::from_utf8(signature.to_vec()).unwrap(),
                    ),
                ],
                body: body.to_vec(),
            },
            nonce,
        }
    }

    /// Sends a signed request and checks its answer's signature, as a
    /// client must before acting on it.
    pub async fn call(&self, method: &str, target: &str, body: &[u8]) -> Answer {
        let signed = self.sign(method, target, body);
        let answer = self.client.send(&signed.request).await;
        assert!(
            answer.signed_for(&signed.nonce, &self.secret),
            "{method} {target}: the answer ({} {}) is not signed for its request",
            answer.status,
            answer.text()
        );
        answer
    }

    /// Sends `method target` with `body`, signed, and asserts the answer
    /// tells the device to come back later (503, `Retry-After: 1`) within
    /// `within`. Whether that answer is signed for the request: it is when
    /// the request passed its checks.
    pub async fn told_to_come_back_within(
        &self,
        method: &str,
        target: &str,
        body: &[u8],
        within: std::time::Duration,
    ) -> bool {
        let asked = std::time::Instant::now();
        let signed = self.sign(method, target, body);
        let answer = self.client.send(&signed.request).await;
        assert_eq!(answer.status, 503, "{method} {target}: {}", answer.text());
        assert_eq!(answer.header("Retry-After"), Some("1"));
        assert!(
            asked.elapsed() < within,
            "{method} {target} took {:?}",
            asked.elapsed()
        );
        answer.signed_for(&signed.nonce, &self.secret)
    }

    /// Opens a session: its token.
    pub async fn open_session(&self) -> String {
        let answer = self.call("POST", "/v1/device/session", b"").await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        answer.json()["session"].as_str().unwrap().to_owned()
    }

    /// Polls for signals after `after` (`gold:3,silver:1`), waiting up to
    /// `wait` seconds.
    pub async fn poll(&self, session: &str, after: &str, wait: u64) -> Answer {
        let target = if after.is_empty() {
            format!("/v1/device/signals?session={session}&wait={wait}")
        } else {
            format!("/v1/device/signals?session={session}&after={after}&wait={wait}")
        };
        self.call("GET", &target, b"").await
    }

    /// [`HttpsDevice::poll`] in a task of its own: a poll left waiting
    /// while the test does something else.
    pub fn poll_in_background(
        &self,
        session: &str,
        after: &str,
        wait: u64,
    ) -> tokio::task::JoinHandle<Answer> {
        let (device, session, after) = (self.clone(), session.to_owned(), after.to_owned());
        tokio::spawn(async move { device.poll(&session, &after, wait).await })
    }

    /// Sends reports (a JSON array of report objects).
    pub async fn report(&self, session: &str, reports: serde_json::Value) -> Answer {
        let body = serde_json::to_vec(&serde_json::json!({ "reports": reports })).unwrap();
        self.call(
            "POST",
            &format!("/v1/device/reports?session={session}"),
            &body,
        )
        .await
    }
}

/// Serves `core`'s device routes over TLS on a loopback port, as the
/// gateway's listener does, for a core built by hand around stores the test
/// holds: a self-signed identity is written to `data_dir`, where
/// [`HttpsClient::new`] finds the certificate to trust. Serves until the
/// test's runtime ends.
pub async fn serve_device_routes(
    core: Arc<eagate_gateway::core::Core>,
    data_dir: &Path,
) -> SocketAddr {
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;
    let identity =
        eagate_gateway::tls::ServerIdentity::load_or_generate(data_dir, &["localhost".to_owned()])
            .unwrap();
    let tls = eagate_gateway::transport::https::tls_acceptor(&identity).unwrap();
    let app = eagate_gateway::transport::https::routes::router(core);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, peer) = listener.accept().await.unwrap();
            let service = TowerToHyperService::new(
                app.clone()
                    .layer(axum::Extension(axum::extract::ConnectInfo(peer))),
            );
            let tls = tls.clone();
            tokio::spawn(async move {
                let Ok(stream) = tls.accept(stream).await else {
                    return;
                };
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}
