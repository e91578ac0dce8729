//! How the ledgers are read: a page of JSON after an id, or the whole
//! filtered ledger as CSV that a spreadsheet opens safely.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use eagate_affiliates::calendar;
use serde::Deserialize;

use crate::http::ApiError;

#[derive(Debug, Deserialize)]
pub(super) struct PageQuery {
    pub(super) after: Option<u64>,
    limit: Option<usize>,
    format: Option<String>,
    pub(super) status: Option<String>,
    pub(super) kind: Option<String>,
    pub(super) from: Option<String>,
    pub(super) to: Option<String>,
}

/// The most rows one JSON page holds.
const MAX_PAGE: usize = 1_000;

/// Whether the caller asked for CSV (`?format=csv` or `Accept: text/csv`).
pub(super) fn wants_csv(query: &PageQuery, headers: &HeaderMap) -> Result<bool, ApiError> {
    match query.format.as_deref() {
        Some("csv") => Ok(true),
        Some("json") => Ok(false),
        Some(other) => Err(ApiError::Unprocessable(format!(
            "format must be json or csv, not {other:?}"
        ))),
        None => Ok(headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/csv"))),
    }
}

pub(super) fn page_limit(query: &PageQuery, csv: bool) -> Result<usize, ApiError> {
    match query.limit {
        None if csv => Ok(usize::MAX),
        None => Ok(100),
        Some(n) if (1..=MAX_PAGE).contains(&n) || (csv && n > 0) => Ok(n),
        Some(n) => Err(ApiError::Unprocessable(format!(
            "limit must be between 1 and {MAX_PAGE}, not {n}"
        ))),
    }
}

pub(super) fn date_bound(field: &str, value: Option<&str>) -> Result<Option<i64>, ApiError> {
    value
        .map(|text| {
            calendar::parse_date(text).ok_or_else(|| {
                ApiError::Unprocessable(format!(
                    "{field} must be a date like 2026-11-23, not {text:?}"
                ))
            })
        })
        .transpose()
}

/// One CSV field, quoted when it must be. Text a spreadsheet would run as
/// a formula (`=`, `+`, `-`, `@` first) gets a leading `'`; numbers, even
/// negative ones, are left alone.
fn csv_field(text: &str) -> String {
    let formula = text.starts_with(['=', '+', '@', '\t', '\r'])
        || (text.starts_with('-')
            && !(text.len() > 1 && text[1..].bytes().all(|b| b.is_ascii_digit() || b == b'.')));
    let text = if formula {
        format!("'{text}")
    } else {
        text.to_owned()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

pub(super) fn csv_response(filename: &str, header_line: &str, rows: Vec<Vec<String>>) -> Response {
    let mut body = String::from(header_line);
    body.push('\n');
    for row in rows {
        let fields: Vec<String> = row.iter().map(|f| csv_field(f)).collect();
        body.push_str(&fields.join(","));
        body.push('\n');
    }
    let disposition = format!("attachment; filename=\"{filename}\"");
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::csv_field;

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused_but_numbers_kept() {
        assert_eq!(csv_field("u1"), "u1");
        assert_eq!(csv_field("-900"), "-900");
        assert_eq!(csv_field("-9.00"), "-9.00");
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_field("+1"), "'+1");
        assert_eq!(csv_field("@sum"), "'@sum");
        assert_eq!(csv_field("-cmd"), "'-cmd");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
    }
}
