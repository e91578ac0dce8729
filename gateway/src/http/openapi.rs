//! The OpenAPI 3.1 document of the sidecar, served at `/openapi.json`.
//! Nothing in it is written twice: its paths come from the routed handlers'
//! `#[utoipa::path]` and its schemas from the request and answer types, so
//! a route or a field added in the code appears here by itself. This file
//! holds only what belongs to no handler: the document's root, and how it
//! is served.

use std::sync::OnceLock;

use axum::body::Bytes;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, OpenApi as Document, Ref, RefOr};
use utoipa::{Modify, OpenApi, ToSchema};

use super::problem::Problem;

/// The document's root; `router()` adds every routed handler's operation.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "eagate sidecar",
        version = env!("CARGO_PKG_VERSION"),
        description = "Devices, signals and executions of an eagate gateway, and its affiliate programme. Prices and volumes are decimal strings, never JSON numbers.",
    ),
    security(("bearer" = [])),
    components(schemas(Problem)),
    modifiers(&BearerTokens),
)]
pub(super) struct Sidecar;

/// The `bearer` scheme every operation needs unless it says otherwise.
struct BearerTokens;

impl Modify for BearerTokens {
    fn modify(&self, document: &mut Document) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "From `eagate token create --scope admin|platform`, or an affiliate's own token (eaf_…) from enrolment.",
            ))
            .build();
        document
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// Every error answer is an `ApiError`, rendered as problem details, so the
/// handlers list only an error's status and meaning; this gives each its
/// body.
fn with_problem_bodies(document: &mut Document) {
    let problem = RefOr::Ref(Ref::from_schema_name(Problem::name()));
    for item in document.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            for (status, response) in &mut operation.responses.responses {
                if let RefOr::T(response) = response
                    && (status.starts_with('4') || status.starts_with('5'))
                    && response.content.is_empty()
                {
                    response.content.insert(
                        "application/problem+json".to_owned(),
                        RefOr::T(Content::new(Some(problem.clone()))),
                    );
                }
            }
        }
    }
}

/// The finished document, serialized once: it is the same for every router
/// the process builds, since it is derived from the code alone.
static SERVED: OnceLock<Bytes> = OnceLock::new();

/// Finishes `document` and keeps it for serving (the first one built wins;
/// every later one is the same).
pub(super) fn serve(mut document: Document) {
    SERVED.get_or_init(|| {
        with_problem_bodies(&mut document);
        Bytes::from(
            document
                .to_json()
                .expect("an OpenAPI document always serializes"),
        )
    });
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    summary = "This document.",
    security(),
    responses((status = 200, description = "OpenAPI 3.1.", body = Object, content_type = "application/json"))
)]
pub(super) async fn openapi_document() -> Response {
    let json = SERVED.get().cloned().unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], json).into_response()
}
