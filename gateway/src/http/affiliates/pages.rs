//! How the ledgers are read: a page of JSON after an id, or the whole
//! filtered ledger as CSV that a spreadsheet opens safely.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use eagate_affiliates::calendar;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::http::ApiError;

/// Which page of a ledger, from which days, and in which form. A ledger's
/// other filters are its own query type, read from the same query string.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(in crate::http) struct PageQuery {
    /// The next_after of the previous page.
    pub(super) after: Option<u64>,
    /// 1 to 1000 per JSON page (default 100); CSV has every matching row
    /// unless limited.
    #[param(minimum = 1)]
    limit: Option<usize>,
    /// csv for a CSV export (or send Accept: text/csv).
    #[param(inline)]
    format: Option<LedgerFormat>,
    /// Only rows made on or after this UTC day, YYYY-MM-DD.
    #[param(format = Date)]
    pub(super) from: Option<String>,
    /// Only rows made on or before this UTC day, YYYY-MM-DD.
    #[param(format = Date)]
    pub(super) to: Option<String>,
}

/// The forms a ledger is read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(in crate::http) enum LedgerFormat {
    /// A page of JSON.
    Json,
    /// Every matching row as CSV.
    Csv,
}

/// The most rows one JSON page holds.
const MAX_PAGE: usize = 1_000;

/// Whether the caller asked for CSV (`?format=csv` or `Accept: text/csv`).
pub(super) fn wants_csv(query: &PageQuery, headers: &HeaderMap) -> bool {
    match query.format {
        Some(format) => format == LedgerFormat::Csv,
        None => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/csv")),
    }
}

/// The name JSON gives an enum's value, for the same column in CSV.
pub(super) fn json_name(value: impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => String::new(),
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
