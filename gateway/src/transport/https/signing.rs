//! The signature layer of the device routes (`DEVICE-HTTP.md`): every
//! request is checked before a route sees it, and every answer to a
//! checked request is signed back.
//!
//! A request's checks are the core's (`Core::check_request`): the same nonce
//! store, skew window and slow-down as QUIC. What fails them gets one generic
//! answer, unsigned, whatever failed: signing an answer for a request whose
//! MAC did not verify would hand anyone a signed answer for a nonce of their
//! choosing, which a device could be made to accept for its own request with
//! that nonce. The one exception is the clock-skew answer, which only goes to
//! a request whose MAC verified, and is signed, so an EA can trust the time
//! it corrects its clock by.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use eagate_protocol::http_signing::{
    AnswerToSign, DEVICE_HEADER, NONCE_HEADER, RequestToSign, SIGNATURE_HEADER, TIMESTAMP_HEADER,
    body_sha256, lower_hex, parse_lower_hex, parse_timestamp,
};
use eagate_protocol::{DeviceId, DeviceSecret, Nonce};
use serde::Serialize;

use crate::core::Core;
use crate::core::signed_requests::{RequestClaim, RequestDenial};

/// The largest request body a device may send: a full batch of reports
/// (256, each well under 256 bytes of JSON) with room to spare.
pub const MAX_REQUEST_BODY: usize = 128 * 1024;

/// How long a request's body may take to arrive after its headers: as
/// long as the listener gives its headers.
pub const BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Who signed the request a route is answering: the device, checked.
#[derive(Debug, Clone)]
pub struct SignedBy {
    /// The device.
    pub device_id: DeviceId,
}

/// RFC 9457 problem details as the device routes write them: `type`,
/// `title`, `status` in that order, with nothing else unless the answer
/// carries more (the gateway's time, after a clock-skew answer).
#[derive(Debug, Serialize)]
pub struct DeviceProblem {
    r#type: &'static str,
    title: String,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway_time_ms: Option<u64>,
}

impl DeviceProblem {
    /// A problem of `status`, described by `title`.
    pub fn new(status: StatusCode, title: impl Into<String>) -> Self {
        Self {
            r#type: "about:blank",
            title: title.into(),
            status: status.as_u16(),
            gateway_time_ms: None,
        }
    }

    /// The answer carrying it.
    pub fn answer(&self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(self).expect("a problem serialises");
        (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            )],
            body,
        )
            .into_response()
    }
}

/// The one answer to every request that failed its checks (but a skewed
/// clock): nothing in it tells which check failed.
pub fn refused() -> Response {
    DeviceProblem::new(StatusCode::UNAUTHORIZED, "authentication failed").answer()
}

/// The store could not be asked: come back in a moment.
fn unavailable() -> Response {
    let mut answer = DeviceProblem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the gateway's store is unavailable; try again",
    )
    .answer();
    answer
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    answer
}

/// The request's signing headers, read and well formed.
struct SigningHeaders {
    device_id: DeviceId,
    timestamp_ms: u64,
    nonce: Nonce,
    signature: [u8; 32],
}

impl SigningHeaders {
    fn read(headers: &HeaderMap) -> Option<Self> {
        let one = |name: &str| {
            let mut values = headers.get_all(name).iter();
            let value = values.next()?;
            // Two of one header: which one was signed?
            if values.next().is_some() {
                return None;
            }
            value.to_str().ok()
        };
        Some(Self {
            device_id: DeviceId::new(one(DEVICE_HEADER)?).ok()?,
            timestamp_ms: parse_timestamp(one(TIMESTAMP_HEADER)?)?,
            nonce: parse_lower_hex(one(NONCE_HEADER)?)?,
            signature: parse_lower_hex(one(SIGNATURE_HEADER)?)?,
        })
    }
}

/// Checks a device request as `DEVICE-HTTP.md` says, runs the route, and
/// signs its answer.
pub async fn check_and_sign(
    State(core): State<Arc<Core>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let Some(signing) = SigningHeaders::read(&parts.headers) else {
        core.metrics
            .auth_failure(crate::core::checks::FailureReason::Malformed);
        return refused();
    };
    // The spec signs the target as sent on the request line: the origin
    // form (`/v1/…?…`). An absolute-form request is not one a device sends.
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        core.metrics
            .auth_failure(crate::core::checks::FailureReason::Malformed);
        return refused();
    }
    // A body is read with a deadline, as headers are: a client that
    // announces one and never sends it is not held.
    let body =
        tokio::time::timeout(BODY_DEADLINE, axum::body::to_bytes(body, MAX_REQUEST_BODY)).await;
    let body = match body {
        Ok(Ok(body)) => body,
        Err(_late) => {
            return DeviceProblem::new(
                StatusCode::REQUEST_TIMEOUT,
                "the request's body did not arrive in time",
            )
            .answer();
        }
        // Too large, or cut off: nothing was checked, so nothing is signed.
        Ok(Err(_)) => {
            return DeviceProblem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a device request's body is at most {MAX_REQUEST_BODY} bytes"),
            )
            .answer();
        }
    };
    let body_hash = body_sha256(&body);
    let target = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path(), |target| target.as_str());
    let to_sign = RequestToSign {
        method: parts.method.as_str(),
        target,
        device_id: signing.device_id.as_str(),
        timestamp_ms: signing.timestamp_ms,
        nonce: &signing.nonce,
        body_sha256: &body_hash,
    };
    let claim = RequestClaim {
        device_id: &signing.device_id,
        timestamp_ms: signing.timestamp_ms,
        nonce: &signing.nonce,
    };
    let checked = core
        .check_request(
            claim,
            |secret| to_sign.verify(secret, &signing.signature),
            peer.ip(),
        )
        .await;
    let secret = match checked {
        Ok(secret) => secret,
        Err(RequestDenial::ClockSkew {
            gateway_time_ms,
            secret,
        }) => {
            let problem = DeviceProblem {
                gateway_time_ms: Some(gateway_time_ms),
                ..DeviceProblem::new(StatusCode::UNAUTHORIZED, "clock skew")
            };
            return sign(problem.answer(), &signing.nonce, &secret).await;
        }
        Err(RequestDenial::Failed) => return refused(),
        Err(RequestDenial::StoreUnavailable) => return unavailable(),
    };
    parts.extensions.insert(SignedBy {
        device_id: signing.device_id.clone(),
    });
    let answer = next.run(Request::from_parts(parts, Body::from(body))).await;
    sign(answer, &signing.nonce, &secret).await
}

/// `answer` with its `Eagate-Signature`, bound to the request's nonce.
async fn sign(answer: Response, nonce: &Nonce, secret: &DeviceSecret) -> Response {
    let (mut parts, body) = answer.into_parts();
    // The routes' own answers: small and already whole.
    let body: Bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        Err(e) => {
            tracing::warn!(error = %e, "reading a device answer to sign failed");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let signature = AnswerToSign {
        nonce,
        status: parts.status.as_u16(),
        body_sha256: &body_sha256(&body),
    }
    .signature(secret);
    let hex: [u8; 64] = lower_hex(&signature);
    parts.headers.insert(
        SIGNATURE_HEADER,
        HeaderValue::from_bytes(&hex).expect("hex is a valid header value"),
    );
    Response::from_parts(parts, Body::from(body))
}
