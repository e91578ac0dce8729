//! One error type for the HTTP API, rendered as RFC 9457 problem details.
//! Client errors say what is wrong; internal ones say only that something
//! failed, while the detail goes to the log.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::registry::RegistryError;
use crate::reports::ReportStoreError;
use crate::signals::SignalLogError;

/// An API error.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No valid bearer token.
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// The token's scope does not allow this.
    #[error("this token's scope does not allow this operation")]
    Forbidden,
    /// No such resource.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The request is well-formed HTTP but its content is not valid.
    #[error("{0}")]
    Unprocessable(String),
    /// A limit was reached; the detail says when it resets.
    #[error("{0}")]
    TooManyRequests(String),
    /// Too many requests from one source for now; `Retry-After` says when
    /// to come back.
    #[error("too many requests from this address; try again in {retry_after_s} s")]
    RateLimited {
        /// Seconds until the limit lets the source in again.
        retry_after_s: u64,
    },
    /// The body is larger than the API accepts.
    #[error("the request body is larger than {} bytes", super::MAX_BODY_BYTES)]
    PayloadTooLarge,
    /// A part this request needs is away for now (the store): try again.
    #[error("{0}")]
    Unavailable(String),
    /// A service this request needs (a payout provider, the shared Redis)
    /// failed; the detail says which and how, without secrets.
    #[error("{0}")]
    BadGateway(String),
    /// Something failed inside; the detail is logged, not returned.
    #[error("internal error")]
    Internal(String),
}

/// RFC 9457 problem details: the body of every error answer.
#[derive(Serialize, ToSchema)]
pub(super) struct Problem {
    /// `/problems/<kind>`, one per kind of error.
    r#type: String,
    /// The kind of error, for people.
    title: &'static str,
    /// The HTTP status code.
    status: u16,
    /// What went wrong with this request.
    detail: String,
}

/// An error answer that is not problem details yet (a framework's own
/// rejection: a path that is not UTF-8, a method not allowed), made one:
/// the same status and headers, its text as the detail.
pub(super) async fn problems_only(response: Response) -> Response {
    let status = response.status();
    let answered = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/problem+json") || v.starts_with("text/html"));
    // The console's pages answer their errors as pages.
    if !(status.is_client_error() || status.is_server_error()) || answered {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).trim().to_owned();
    let title = status.canonical_reason().unwrap_or("Error");
    let problem = Problem {
        r#type: format!("/problems/{}", title.to_ascii_lowercase().replace(' ', "-")),
        title,
        status: status.as_u16(),
        detail: if text.is_empty() {
            title.to_owned()
        } else {
            text
        },
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    Response::from_parts(parts, axum::body::Body::from(body))
}

impl ApiError {
    /// The answer's status, the problem type's last part, and its title.
    pub(super) fn classify(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            Self::Forbidden => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            Self::Unprocessable(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-request",
                "Invalid request",
            ),
            Self::TooManyRequests(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "limit-reached",
                "Limit reached",
            ),
            Self::RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
            ),
            Self::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
            ),
            Self::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Unavailable for now",
            ),
            Self::BadGateway(_) => (
                StatusCode::BAD_GATEWAY,
                "upstream-failed",
                "A service this needs failed",
            ),
            Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(detail) = &self {
            tracing::error!(%detail, "request failed");
        }
        let (status, kind, title) = self.classify();
        let problem = Problem {
            r#type: format!("/problems/{kind}"),
            title,
            status: status.as_u16(),
            detail: self.to_string(),
        };
        let mut response = (status, Json(problem)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Self::RateLimited { retry_after_s } = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<eagate_affiliates::JournalError> for ApiError {
    fn from(error: eagate_affiliates::JournalError) -> Self {
        match error {
            eagate_affiliates::JournalError::NotDurable(_) => Self::Unavailable(error.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> Self {
        match error {
            RegistryError::NotFound(id) => Self::NotFound(format!("no device {id}")),
            RegistryError::NameTaken(_) => Self::Conflict(error.to_string()),
            RegistryError::TooManyChannels => Self::Unprocessable(error.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<SignalLogError> for ApiError {
    fn from(error: SignalLogError) -> Self {
        match error {
            SignalLogError::Invalid(e) => Self::Unprocessable(format!("invalid signal: {e}")),
            SignalLogError::KeyReused => Self::Conflict(error.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<ReportStoreError> for ApiError {
    fn from(error: ReportStoreError) -> Self {
        Self::Internal(error.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::PayloadTooLarge
        } else {
            Self::Unprocessable(rejection.body_text())
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::Unprocessable(rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::Unprocessable(rejection.body_text())
    }
}
