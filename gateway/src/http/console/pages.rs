//! The console's HTML, rendered on the server (maud): plain forms and
//! links, so every page works with JavaScript off; the one script copies a
//! secret to the clipboard.

use eagate_affiliates::calendar;
use maud::{DOCTYPE, Markup, html};

use super::session::{Role, SignedIn};
use crate::api_schema::variant_names;
use crate::http::affiliates::{
    AffiliateRow, AffiliateView, AuditPage, Batches, CaseView, Commissions, OwedStatus,
    PayoutHistory, PeriodView, StatsView,
};
use crate::http::{DeviceExecution, DeviceView, ExecutionStatus, Executions};
use crate::reports::ReportKind;
use eagate_affiliates::Currency;

/// The stylesheet: readable on a phone and a desktop, contrast above WCAG
/// AA, status shown in words and not by colour alone.
pub(super) const STYLE: &str = r#"
:root { --ink: #1b1f24; --muted: #4a5360; --line: #c9ced6; --paper: #ffffff;
        --band: #f2f4f7; --accent: #0b57d0; --danger: #a50e0e; --ok: #146c2e; }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: var(--ink); background: var(--paper); }
header { display: flex; flex-wrap: wrap; align-items: center; gap: .5rem 1.5rem;
         padding: .75rem 1rem; background: var(--ink); color: #fff; }
header a { color: #fff; }
header .brand { font-weight: 700; font-size: 1.15rem; text-decoration: none; }
header nav { display: flex; gap: 1rem; flex: 1; }
header form { margin: 0; }
main { max-width: 72rem; margin: 0 auto; padding: 1rem; }
h1 { font-size: 1.5rem; margin: .5rem 0 1rem; }
a { color: var(--accent); }
a:focus, button:focus, input:focus { outline: 3px solid #f6b100; outline-offset: 2px; }
.table { overflow-x: auto; border: 1px solid var(--line); border-radius: 6px; }
table { border-collapse: collapse; width: 100%; min-width: 40rem; }
caption { text-align: left; padding: .5rem .75rem; color: var(--muted); }
th, td { text-align: left; padding: .5rem .75rem; border-top: 1px solid var(--line);
         vertical-align: top; }
th { background: var(--band); font-weight: 600; }
.id { display: block; font: .85rem/1.4 ui-monospace, monospace; color: var(--muted); }
.status { font-weight: 600; white-space: nowrap; }
.online { color: var(--ok); }
.offline { color: var(--muted); }
.revoked { color: var(--danger); }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .25rem 1rem; }
dt { font-weight: 600; }
dd { margin: 0; overflow-wrap: anywhere; }
form.inline { display: flex; flex-wrap: wrap; gap: .5rem; align-items: end; margin: 1rem 0; }
label { display: block; font-weight: 600; }
input[type=text], input[type=password] { font: inherit; padding: .4rem .5rem;
         border: 1px solid var(--muted); border-radius: 4px; min-width: 16rem; max-width: 100%; }
button, .button { font: inherit; padding: .45rem .9rem; border-radius: 4px; cursor: pointer;
         border: 1px solid var(--accent); background: var(--accent); color: #fff;
         text-decoration: none; display: inline-block; }
button.secondary, .button.secondary { background: #fff; color: var(--accent); }
button.danger, .button.danger { background: var(--danger); border-color: var(--danger); }
header button { background: transparent; border-color: #fff; }
.actions { display: flex; flex-wrap: wrap; gap: .75rem; margin: 1rem 0; }
.notice { border-left: 4px solid var(--accent); background: var(--band); padding: .75rem 1rem; }
.error { border-left-color: var(--danger); }
code.secret { display: block; font-size: 1.05rem; padding: .75rem; background: var(--band);
              border: 1px solid var(--line); overflow-wrap: anywhere; }
.pager { margin: 1rem 0; }
fieldset { border: 1px solid var(--line); border-radius: 6px; margin: 0 0 1rem; padding: .75rem 1rem; }
legend { font-weight: 600; padding: 0 .25rem; }
.fields { display: grid; grid-template-columns: repeat(auto-fill, minmax(12rem, 1fr)); gap: .75rem 1rem; }
.fields input, .fields select { width: 100%; min-width: 0; font: inherit; padding: .4rem .5rem;
         border: 1px solid var(--muted); border-radius: 4px; background: #fff; }
.hint { display: block; font-weight: 400; font-size: .85rem; color: var(--muted); }
.filled { color: var(--ok); }
td.money, th.money { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
textarea { font: inherit; width: 100%; min-height: 3rem; padding: .4rem .5rem;
           border: 1px solid var(--muted); border-radius: 4px; }
.case { border: 1px solid var(--line); border-radius: 6px; padding: .75rem 1rem; margin: 0 0 1rem; }
.case h2 { font-size: 1.1rem; margin: 0 0 .5rem; }
.share { display: flex; flex-wrap: wrap; gap: .5rem; align-items: center; margin: .25rem 0 1rem; }
.share code { font-size: 1rem; padding: .4rem .6rem; background: var(--band);
              border: 1px solid var(--line); border-radius: 4px; overflow-wrap: anywhere; }
.totals { display: grid; grid-template-columns: repeat(auto-fill, minmax(9rem, 1fr)); gap: .75rem; margin: 0 0 1.5rem; }
.totals div { border: 1px solid var(--line); border-radius: 6px; padding: .5rem .75rem; }
.totals dt { font-weight: 400; color: var(--muted); font-size: .9rem; }
.totals dd { font-size: 1.25rem; font-weight: 600; }
.totals dd .status { font-size: 1rem; overflow-wrap: anywhere; }
figure { margin: 0 0 1.5rem; }
figcaption { font-weight: 600; margin-bottom: .25rem; }
svg.chart { width: 100%; height: auto; max-width: 48rem; display: block; }
svg.chart .bar { fill: var(--accent); }
svg.chart .axis { stroke: var(--muted); stroke-width: 1; }
svg.chart text { font: 12px system-ui, sans-serif; fill: var(--ink); }
details { margin: .5rem 0 1.5rem; }
.rejected { color: var(--danger); }
@media (max-width: 40rem) {
  /* On a phone each row is a card, every cell with its column's name. */
  .table { border: 0; }
  table { min-width: 0; }
  thead { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); }
  tr, td, caption { display: block; }
  tr { border: 1px solid var(--line); border-radius: 6px; margin-bottom: .75rem; }
  td { border-top: 0; padding: .25rem .75rem; }
  td:first-child { padding-top: .6rem; }
  td:last-child { padding-bottom: .6rem; }
  td[data-label]::before { content: attr(data-label) ": "; font-weight: 600; }
}
"#;

/// Copies the text of the element a button names (`data-copy`) and says
/// so on the button; without JavaScript the text is there to select.
pub(super) const COPY_SCRIPT: &str = r#"
document.querySelectorAll("button[data-copy]").forEach(function (button) {
  button.hidden = false;
  button.addEventListener("click", function () {
    var text = document.getElementById(button.dataset.copy).textContent.trim();
    navigator.clipboard.writeText(text).then(function () { button.textContent = "Copied"; });
  });
});
"#;

/// A page: the header with navigation and sign-out when signed in.
/// `refresh_s` reloads it (a list watched while devices come and go).
pub(super) fn layout(
    title: &str,
    signed_in: Option<&SignedIn>,
    refresh_s: Option<u32>,
    body: Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(seconds) = refresh_s {
                    meta http-equiv="refresh" content=(seconds);
                }
                title { (title) " · eagate" }
                link rel="stylesheet" href="/console/style.css";
            }
            body {
                header {
                    a.brand href="/console" { "eagate" }
                    @if let Some(session) = signed_in {
                        nav aria-label="Console" {
                            @match &session.role {
                                Role::Admin => {
                                    a href="/console/devices" { "Devices" }
                                    a href="/console/signals" { "Signals" }
                                    a href="/console/affiliates" { "Affiliates" }
                                    a href="/console/fraud" { "Fraud review" }
                                    a href="/console/payouts" { "Payouts" }
                                    a href="/console/audit" { "Audit log" }
                                    a href="/console/health" { "Health" }
                                }
                                Role::Affiliate(affiliate_id) => {
                                    a href={ "/console/portal/" (affiliate_id) } { "Your referrals" }
                                }
                            }
                        }
                        form method="post" action="/console/sign-out" {
                            input type="hidden" name="csrf" value=(session.csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
                script src="/console/copy.js" {}
            }
        }
    }
}

/// A Unix-ms instant as UTC date and time, to the second.
pub(super) fn utc(at_ms: u64) -> String {
    calendar::format_instant(at_ms)
        .replace('T', " ")
        .replace('Z', " UTC")
}

pub(super) fn sign_in(problem: Option<&str>) -> Markup {
    layout(
        "Sign in",
        None,
        None,
        html! {
            h1 { "Sign in to the console" }
            @if let Some(problem) = problem {
                p.notice.error role="alert" { (problem) }
            }
            form method="post" action="/console/sign-in" {
                label for="token" { "Admin token" }
                p { input #token type="password" name="token" required autocomplete="off"; }
                p.id { "Create one on the gateway's machine: eagate token create --scope admin" }
                button type="submit" { "Sign in" }
            }
        },
    )
}

fn status(device: &DeviceView) -> Markup {
    html! {
        @if device.revoked_at_ms.is_some() {
            span.status.revoked { "✕ Revoked" }
        } @else if device.online {
            span.status.online { "● Online" }
        } @else {
            span.status.offline { "○ Offline" }
        }
    }
}

fn last_seen(device: &DeviceView) -> String {
    device
        .last_seen_ms
        .map_or_else(|| "not since the gateway started".to_owned(), utc)
}

fn last_report(device: &DeviceView) -> String {
    match device.last_report_seq {
        0 => "none yet".to_owned(),
        seq => format!("#{seq}"),
    }
}

pub(super) fn devices(
    session: &SignedIn,
    devices: &[DeviceView],
    next_after: Option<&str>,
) -> Markup {
    layout(
        "Devices",
        Some(session),
        Some(5),
        html! {
            h1 { "Devices" }
            div.table {
                table {
                    caption { "Every device, in registration order; this page reloads every 5 seconds." }
                    thead {
                        tr {
                            th scope="col" { "Device" }
                            th scope="col" { "Account" }
                            th scope="col" { "Status" }
                            th scope="col" { "Last seen" }
                            th scope="col" { "Last report" }
                            th scope="col" { "Channels" }
                        }
                    }
                    tbody {
                        @for device in devices {
                            tr data-device=(device.device_id) {
                                td {
                                    a href={ "/console/devices/" (device.device_id) } { (device.name) }
                                    span.id { (device.device_id) }
                                }
                                td data-label="Account" { (device.account_id) }
                                td data-label="Status" { (status(device)) }
                                td data-label="Last seen" { (last_seen(device)) }
                                td data-label="Last report" { (last_report(device)) }
                                td data-label="Channels" { (device.channels.join(", ")) }
                            }
                        }
                        @if devices.is_empty() {
                            tr { td colspan="6" { "No devices yet. Register one with eagate device register." } }
                        }
                    }
                }
            }
            @if let Some(after) = next_after {
                p.pager { a href={ "/console/devices?after=" (after) } { "Next page →" } }
            }
        },
    )
}

pub(super) fn device(session: &SignedIn, device: &DeviceView, problem: Option<&str>) -> Markup {
    let path = format!("/console/devices/{}", device.device_id);
    layout(
        &device.name,
        Some(session),
        None,
        html! {
            p { a href="/console/devices" { "← All devices" } }
            h1 { (device.name) }
            @if let Some(problem) = problem {
                p.notice.error role="alert" { (problem) }
            }
            dl {
                dt { "Status" } dd { (status(device)) }
                dt { "Device id" } dd { code { (device.device_id) } }
                dt { "Account" } dd { (device.account_id) }
                dt { "Registered" } dd { (utc(device.created_at_ms)) }
                @if let Some(revoked) = device.revoked_at_ms {
                    dt { "Revoked" } dd { (utc(revoked)) }
                }
                dt { "Last seen" } dd { (last_seen(device)) }
                dt { "Last report" } dd { (last_report(device)) }
                dt { "Channels" } dd { (device.channels.join(", ")) }
            }
            @if device.revoked_at_ms.is_none() {
                form.inline method="post" action={ (path) "/rename" } {
                    input type="hidden" name="csrf" value=(session.csrf);
                    div {
                        label for="name" { "Name" }
                        input #name type="text" name="name" value=(device.name) required maxlength="64";
                    }
                    button type="submit" { "Rename" }
                }
                div.actions {
                    a.button.secondary href={ (path) "/rotate-secret" } { "Give it a new secret…" }
                    a.button.danger href={ (path) "/revoke" } { "Revoke…" }
                }
            }
        },
    )
}

/// A confirmation step before an action that cannot be undone.
pub(super) fn confirm(
    session: &SignedIn,
    device: &DeviceView,
    action: &str,
    question: &str,
    consequence: &str,
    button: &str,
    danger: bool,
) -> Markup {
    let path = format!("/console/devices/{}", device.device_id);
    layout(
        question,
        Some(session),
        None,
        html! {
            h1 { (question) }
            p.notice { (consequence) }
            form method="post" action={ (path) "/" (action) } {
                input type="hidden" name="csrf" value=(session.csrf);
                div.actions {
                    button.danger[danger] type="submit" { (button) }
                    a.button.secondary href=(path) { "Cancel" }
                }
            }
        },
    )
}

pub(super) fn new_secret(session: &SignedIn, device: &DeviceView, secret: &str) -> Markup {
    layout(
        "New secret",
        Some(session),
        None,
        html! {
            h1 { "New secret for " (device.name) }
            p.notice {
                "Shown this once: put it in the EA's inputs (Device secret) now. "
                "The old secret no longer works; the device's session has ended."
            }
            code.secret #secret { (secret) }
            div.actions {
                button.secondary type="button" data-copy="secret" hidden { "Copy" }
                a.button href={ "/console/devices/" (device.device_id) } { "Done" }
            }
        },
    )
}

/// A page that says why a request was refused.
pub(super) fn refused(signed_in: Option<&SignedIn>, title: &str, why: &str) -> Markup {
    layout(
        title,
        signed_in,
        None,
        html! {
            h1 { (title) }
            p.notice.error role="alert" { (why) }
            p { a href="/console/devices" { "Back to the devices" } }
        },
    )
}

/// What a publish form held, to show it again with what was wrong.
#[derive(Debug, Default)]
pub(super) struct Draft<'a> {
    pub(super) field: std::collections::HashMap<&'a str, &'a str>,
}

impl Draft<'_> {
    fn value(&self, name: &str) -> &str {
        self.field.get(name).copied().unwrap_or_default()
    }
}

/// A labelled input of the publish form.
fn input(draft: &Draft<'_>, name: &str, label: &str, hint: &str, required: bool) -> Markup {
    html! {
        div {
            label for=(name) { (label) span.hint { (hint) } }
            input id=(name) type="text" name=(name) value=(draft.value(name)) required[required];
        }
    }
}

/// A select of an enum's JSON names, `default` chosen when the draft has none.
fn choice(draft: &Draft<'_>, name: &str, label: &str, names: &[&str], default: &str) -> Markup {
    let chosen = match draft.value(name) {
        "" => default,
        value => value,
    };
    html! {
        div {
            label for=(name) { (label) }
            select id=(name) name=(name) {
                @for option in names {
                    option value=(option) selected[*option == chosen] { (option) }
                }
            }
        }
    }
}

pub(super) fn signals(
    session: &SignedIn,
    draft: &Draft<'_>,
    form_key: &str,
    problem: Option<&str>,
) -> Markup {
    layout(
        "Signals",
        Some(session),
        None,
        html! {
            h1 { "Signals" }
            @if let Some(problem) = problem {
                p.notice.error role="alert" { (problem) }
            }
            form method="post" action="/console/signals" {
                input type="hidden" name="csrf" value=(session.csrf);
                // Publishing the same form twice (a double click, a resubmit
                // after Back) publishes one signal.
                input type="hidden" name="form_key" value=(form_key);
                fieldset {
                    legend { "Publish a signal" }
                    div.fields {
                        (input(draft, "channel", "Channel", "its subscribers get it", true))
                        (input(draft, "symbol", "Symbol", "as the terminal names it", true))
                        (choice(draft, "action", "Action", variant_names::<eagate_protocol::Action>(), "OpenBuy"))
                        (choice(draft, "order_type", "Order type", variant_names::<eagate_protocol::OrderType>(), "Market"))
                        (input(draft, "volume", "Volume", "lots, e.g. 0.10; 0 closes all", true))
                        (input(draft, "price", "Price", "limit or stop orders", false))
                        (input(draft, "stop_loss", "Stop loss", "optional", false))
                        (input(draft, "take_profit", "Take profit", "optional", false))
                        (input(draft, "magic", "Magic number", "optional, whole number", false))
                        (input(draft, "comment", "Comment", "optional, up to 64 characters", false))
                        (input(draft, "reference", "Reference", "close, modify, cancel: the signal id", false))
                    }
                }
                button type="submit" { "Publish" }
            }
            form.inline method="get" action="/console/signals/find" {
                div {
                    label for="signal_id" { "A signal's executions" span.hint { "its id, 32 hex digits" } }
                    input #signal_id type="text" name="signal_id" required;
                }
                button.secondary type="submit" { "Show" }
            }
        },
    )
}

fn execution_status(status: ExecutionStatus) -> Markup {
    let (class, text) = match status {
        ExecutionStatus::Pending => ("offline", "○ Pending: not sent yet"),
        ExecutionStatus::Delivered => ("offline", "◐ Delivered, no report yet"),
        ExecutionStatus::Received => ("online", "◑ Received"),
        ExecutionStatus::Filled => ("filled", "● Filled"),
        ExecutionStatus::Rejected => ("rejected", "✕ Rejected"),
        ExecutionStatus::Reversed => ("rejected", "↺ Filled, then reversed"),
    };
    html! { span class={ "status " (class) } { (text) } }
}

fn report_text(device: &DeviceExecution) -> String {
    device
        .reports
        .iter()
        .map(|report| match report.kind {
            ReportKind::Received => format!("#{} received", report.seq),
            ReportKind::Filled => format!(
                "#{} filled {} at {} (ticket {})",
                report.seq,
                report.volume.map(|v| v.to_string()).unwrap_or_default(),
                report.price.map(|p| p.to_string()).unwrap_or_default(),
                report.ticket.unwrap_or_default()
            ),
            ReportKind::Rejected => format!(
                "#{} rejected ({}): {}",
                report.seq,
                report.error_code.unwrap_or_default(),
                report.error_text.as_deref().unwrap_or_default()
            ),
            ReportKind::Reversed => format!(
                "#{} reversed ticket {}",
                report.seq,
                report.ticket.unwrap_or_default()
            ),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

pub(super) fn executions(session: &SignedIn, executions: &Executions) -> Markup {
    let id = executions.signal_id.to_string();
    layout(
        &format!("Signal {id}"),
        Some(session),
        Some(2),
        html! {
            p { a href="/console/signals" { "← Signals" } }
            h1 { "Signal " code { (id) } }
            dl {
                dt { "Channel" } dd { (executions.channel) }
                dt { "Position" } dd { (executions.position) }
            }
            div.table {
                table {
                    caption { "On every device that should have it; this page reloads every 2 seconds." }
                    thead {
                        tr {
                            th scope="col" { "Device" }
                            th scope="col" { "Status" }
                            th scope="col" { "Reports" }
                        }
                    }
                    tbody {
                        @for device in &executions.devices {
                            tr data-device=(device.device_id) {
                                td { a href={ "/console/devices/" (device.device_id) } { (device.device_id) } }
                                td data-label="Status" { (execution_status(device.status)) }
                                td data-label="Reports" { (report_text(device)) }
                            }
                        }
                        @if executions.devices.is_empty() {
                            tr { td colspan="3" { "No device is subscribed to this channel." } }
                        }
                    }
                }
            }
        },
    )
}

fn owed_status(status: OwedStatus) -> &'static str {
    match status {
        OwedStatus::Owed => "Owed",
        OwedStatus::Negative => "Owes the programme",
        OwedStatus::Pending => "Pending",
        OwedStatus::Settled => "Settled",
    }
}

pub(super) fn affiliates(
    session: &SignedIn,
    currency: Currency,
    rows: &[AffiliateRow],
    next_after: Option<u64>,
) -> Markup {
    let money = |minor: i64| format!("{} {currency}", currency.format_major(minor));
    layout(
        "Affiliates",
        Some(session),
        None,
        html! {
            h1 { "Affiliates" }
            div.table {
                table {
                    caption { "What each affiliate is owed now, in enrolment order. Held: money an open fraud case holds." }
                    thead {
                        tr {
                            th scope="col" { "Affiliate" }
                            th scope="col" { "Status" }
                            th.money scope="col" { "Earned" }
                            th.money scope="col" { "Pending" }
                            th.money scope="col" { "Held" }
                            th.money scope="col" { "Payable" }
                            th.money scope="col" { "Paid" }
                            th.money scope="col" { "Reversed" }
                            th scope="col" { "Open cases" }
                            th scope="col" { "Sign-in" }
                        }
                    }
                    tbody {
                        @for row in rows {
                            tr data-affiliate=(row.affiliate_id) {
                                td { (row.user_id) span.id { (row.code) " · " (row.affiliate_id) } }
                                td data-label="Status" { (owed_status(row.status)) }
                                td.money data-label="Earned" { (money(row.earned_minor)) }
                                td.money data-label="Pending" { (money(row.pending_minor)) }
                                td.money.held data-label="Held" { (money(row.held_minor)) }
                                td.money data-label="Payable" { (money(row.payable_minor)) }
                                td.money data-label="Paid" { (money(row.paid_minor)) }
                                td.money data-label="Reversed" { (money(row.reversed_minor)) }
                                td data-label="Open cases" {
                                    @if row.open_cases > 0 {
                                        a href={ "/console/fraud?affiliate_id=" (row.affiliate_id) } { (row.open_cases) " to review" }
                                    } @else { "none" }
                                }
                                td data-label="Sign-in" {
                                    form method="post" action={ "/console/affiliates/" (row.affiliate_id) "/sign-in-link" } {
                                        input type="hidden" name="csrf" value=(session.csrf);
                                        button.secondary type="submit" aria-label={ "A one-time sign-in link for " (row.user_id) } { "Link…" }
                                    }
                                }
                            }
                        }
                        @if rows.is_empty() {
                            tr { td colspan="10" { "No affiliate has enrolled yet." } }
                        }
                    }
                }
            }
            @if let Some(after) = next_after {
                p.pager { a href={ "/console/affiliates?after=" (after) } { "Next page →" } }
            }
        },
    )
}

pub(super) fn fraud(session: &SignedIn, open: bool, cases: &[CaseView]) -> Markup {
    layout(
        "Fraud review",
        Some(session),
        None,
        html! {
            h1 { "Fraud review" }
            p {
                @if open {
                    "Open cases, oldest first. " a href="/console/fraud?status=decided" { "Decided cases" }
                } @else {
                    "Decided cases, oldest first. " a href="/console/fraud" { "Open cases" }
                }
            }
            @for case in cases {
                section.case data-case=(case.case_id) aria-labelledby={ "case-" (case.case_id) } {
                    h2 id={ "case-" (case.case_id) } { "Case " (case.case_id) ": " (case_kind(case)) }
                    dl {
                        dt { "Customer" } dd { (case.user_id) }
                        @if let Some(affiliate) = &case.affiliate_id {
                            dt { "Affiliate" } dd { (affiliate) }
                        }
                        @if let Some(customer) = &case.referring_customer {
                            dt { "Referred by customer" } dd { (customer) }
                        }
                        dt { "Evidence" } dd { (case.evidence) }
                        dt { "Referral" } dd { @if case.refused { "refused" } @else { "held until decided" } }
                        dt { "Opened" } dd { (utc(case.opened_at_ms)) }
                        @if let (Some(by), Some(at)) = (&case.decided_by, case.decided_at_ms) {
                            dt { "Decision" } dd { (case.status) " by " (by) " at " (utc(at)) }
                            dt { "Reason" } dd { (case.reason.clone().unwrap_or_default()) }
                        }
                    }
                    @if case.status == "open" {
                        form method="post" action={ "/console/fraud/" (case.case_id) } {
                            input type="hidden" name="csrf" value=(session.csrf);
                            label for={ "reason-" (case.case_id) } { "Reason, for the record" }
                            textarea id={ "reason-" (case.case_id) } name="reason" required maxlength="500" {}
                            div.actions {
                                button type="submit" name="decision" value="cleared" { "Clear: release the held money" }
                                button.danger type="submit" name="decision" value="confirmed" { "Confirm: reverse unpaid commissions" }
                            }
                        }
                    }
                }
            }
            @if cases.is_empty() {
                p.notice { @if open { "No case waits for review." } @else { "No case has been decided yet." } }
            }
        },
    )
}

fn case_kind(case: &CaseView) -> String {
    json_word(&case.kind)
}

/// A bar chart drawn on the server: one bar per period, each with its
/// value as a tooltip (`title`), the largest value and the first and last
/// periods written on the axes. Integer arithmetic only.
fn bar_chart(caption: &str, bars: &[(String, i64)], value_text: impl Fn(i64) -> String) -> Markup {
    const WIDTH: i64 = 720;
    const HEIGHT: i64 = 200;
    const LEFT: i64 = 90;
    const BOTTOM: i64 = 24;
    let most = bars.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1);
    let count = i64::try_from(bars.len()).unwrap_or(1).max(1);
    let slot = (WIDTH - LEFT) / count;
    let plot = HEIGHT - BOTTOM;
    html! {
        figure {
            figcaption { (caption) }
            svg.chart viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } role="img" aria-label=(caption) {
                text x="0" y="12" { (value_text(most)) }
                text x="0" y=(plot) { (value_text(0)) }
                line.axis x1=(LEFT) y1=(plot) x2=(WIDTH) y2=(plot) {}
                @for (i, (period, value)) in (0i64..).zip(bars) {
                    // In i128: a value near i64::MAX times the plot's height
                    // would overflow i64.
                    @let height = i64::try_from(i128::from((*value).max(0)) * i128::from(plot - 8) / i128::from(most)).unwrap_or(plot - 8);
                    rect.bar x=(LEFT + i * slot + 1) y=(plot - height) width=((slot - 2).max(1)) height=(height) data-period=(period) {
                        title { (period) ": " (value_text(*value)) }
                    }
                }
                @if let (Some((first, _)), Some((last, _))) = (bars.first(), bars.last()) {
                    text x=(LEFT) y=(HEIGHT - 4) { (first) }
                    text x=(WIDTH) y=(HEIGHT - 4) text-anchor="end" { (last) }
                }
            }
        }
    }
}

fn stats_table(caption: &str, stats: &StatsView, money: &impl Fn(i64) -> String) -> Markup {
    html! {
        details {
            summary { (caption) }
            div.table {
                table {
                    thead {
                        tr {
                            th scope="col" { "Period" }
                            th.money scope="col" { "Clicks" }
                            th.money scope="col" { "Signups" }
                            th.money scope="col" { "First payments" }
                            th.money scope="col" { "First trades" }
                            th.money scope="col" { "Earned" }
                        }
                    }
                    tbody {
                        @for period in stats.periods.iter().rev() {
                            tr {
                                td { (period.period) }
                                td.money data-label="Clicks" { (period.clicks) }
                                td.money data-label="Signups" { (period.signups) }
                                td.money data-label="First payments" { (period.conversions) }
                                td.money data-label="First trades" { (period.first_trades) }
                                td.money data-label="Earned" { (money(period.earned_minor)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn total(name: &str, key: &str, value: String) -> Markup {
    html! { div { dt { (name) } dd data-total=(key) { (value) } } }
}

/// Rows the portal's tables show; the CSV has every one.
const LATEST: usize = 20;

/// An affiliate's page; `charted` is the stats the charts show (per day or
/// per month), `months` the last 12 months for the totals.
pub(super) fn portal(
    session: &SignedIn,
    affiliate: &AffiliateView,
    charted: &StatsView,
    months: &StatsView,
    commissions: &Commissions,
    payouts: &PayoutHistory,
    credits: &eagate_affiliates::programme::CreditBalance,
) -> Markup {
    let currency = affiliate.currency;
    let money = |minor: i64| format!("{} {currency}", currency.format_major(minor));
    let series = |value: fn(&PeriodView) -> i64| -> Vec<(String, i64)> {
        charted
            .periods
            .iter()
            .map(|p| (p.period.clone(), value(p)))
            .collect()
    };
    let per_month = charted.granularity == crate::http::affiliates::StatsGranularity::Month;
    let per = if per_month { "month" } else { "day" };
    let range = format!("{} to {}", charted.from, charted.to);
    let totals = &months.totals;
    layout(
        "Your referrals",
        Some(session),
        None,
        html! {
            h1 { "Your referrals" }
            p { "Share your link, or your code for people who type it in at signup." }
            div.share {
                code #link { (affiliate.link) }
                button.secondary type="button" data-copy="link" hidden { "Copy link" }
            }
            div.share {
                code #code { (affiliate.code) }
                button.secondary type="button" data-copy="code" hidden { "Copy code" }
            }
            h2 { "The last 12 months" }
            dl.totals {
                (total("Clicks", "clicks", totals.clicks.to_string()))
                (total("Signups", "signups", totals.signups.to_string()))
                (total("First payments", "conversions", totals.conversions.to_string()))
                (total("First trades", "first-trades", totals.first_trades.to_string()))
                (total("Earned", "earned", money(totals.earned_minor)))
                (total("In holding period", "pending", money(totals.pending_minor)))
                (total("Held for review", "held", money(totals.held_minor)))
                (total("Payable next", "payable", money(totals.payable_minor)))
                (total("Paid", "paid", money(totals.paid_minor)))
            }
            p {
                "Charts: "
                @if per_month {
                    a href={ "/console/portal/" (affiliate.affiliate_id) } { "per day" } " · per month"
                } @else {
                    "per day · " a href={ "/console/portal/" (affiliate.affiliate_id) "?by=month" } { "per month" }
                }
            }
            (bar_chart(&format!("Earned per {per}, {range}"), &series(|p| p.earned_minor), money))
            (bar_chart(&format!("Clicks per {per}, {range}"), &series(|p| count(p.clicks)), |n| n.to_string()))
            (bar_chart(&format!("Signups per {per}, {range}"), &series(|p| count(p.signups)), |n| n.to_string()))
            (bar_chart(&format!("First payments per {per}, {range}"), &series(|p| count(p.conversions)), |n| n.to_string()))
            (bar_chart(&format!("First trades per {per}, {range}"), &series(|p| count(p.first_trades)), |n| n.to_string()))
            (stats_table(&format!("The numbers per {per}"), charted, &money))
            @let tier = &charted.trade_tier;
            h2 { "Your trade commission tier" }
            p { "Each fill of a customer you referred earns you a share of the platform's fee for it, by your tier for the month. "
                "Your tier for " (tier.month) " is set by last month's "
                @if tier.basis == "volume-lots" { "lots traded by your referred customers" } @else { "referred customers who traded" }
                "." }
            dl.totals {
                (total("Tier", "tier", format!("{} ({}.{:02}% of the fee)", tier.tier, tier.rate_bps / 100, tier.rate_bps % 100)))
                (total("Last month", "tier-last-month", tier.last_month.to_string()))
                (total("This month so far", "tier-this-month", tier.this_month.to_string()))
                @if let Some(next) = &tier.next {
                    (total("Next month's tier needs", "tier-needs", format!("{} more for tier {} ({}.{:02}%)", next.needs, next.tier, next.rate_bps / 100, next.rate_bps % 100)))
                }
            }
            h2 { "Your referral credits" }
            p { "Credits your own referrals of friends earned you as a customer, to spend on the platform." }
            dl.totals {
                (total("Available", "credits-available", money(credits.available)))
                (total("In holding period", "credits-pending", money(credits.pending)))
            }
            h2 { "Commissions" }
            p { "The latest " (LATEST.min(commissions.items.len())) " of " (commissions.items.len()) ", newest first. "
                a href={ "/console/portal/" (affiliate.affiliate_id) "/commissions.csv" } { "Download them all (CSV)" } }
            div.table {
                table {
                    thead { tr {
                        th scope="col" { "Earned" }
                        th scope="col" { "Kind" }
                        th scope="col" { "Customer" }
                        th.money scope="col" { "Amount" }
                        th scope="col" { "Status" }
                    } }
                    tbody {
                        @for entry in commissions.items.iter().rev().take(LATEST) {
                            tr data-entry=(entry.entry_id) {
                                td { (utc(entry.earned_at_ms)) }
                                td data-label="Kind" { (json_word(&entry.kind)) }
                                td data-label="Customer" { (entry.user_id) }
                                td.money data-label="Amount" { (money(entry.amount_minor)) }
                                td data-label="Status" { (json_word(&entry.status)) }
                            }
                        }
                        @if commissions.items.is_empty() {
                            tr { td colspan="5" { "No commission yet." } }
                        }
                    }
                }
            }
            h2 { "Payouts" }
            p { a href={ "/console/portal/" (affiliate.affiliate_id) "/payouts.csv" } { "Download them all (CSV)" } }
            div.table {
                table {
                    thead { tr {
                        th scope="col" { "Made" }
                        th scope="col" { "Payout" }
                        th.money scope="col" { "Amount" }
                        th scope="col" { "State" }
                    } }
                    tbody {
                        @for payout in payouts.items.iter().rev().take(LATEST) {
                            tr {
                                td { (utc(payout.paid_at_ms)) }
                                td data-label="Payout" { (payout.payout_id) }
                                td.money data-label="Amount" { (money(payout.amount_minor)) }
                                td data-label="State" { (payout.state.replace('_', " ")) }
                            }
                        }
                        @if payouts.items.is_empty() {
                            tr { td colspan="4" { "No payout yet." } }
                        }
                    }
                }
            }
        },
    )
}

/// An enum's JSON name as words (`first_trade_bonus` → first trade bonus).
fn json_word(value: &impl serde::Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(|text| text.replace('_', " ")))
        .unwrap_or_default()
}

pub(super) fn health(
    session: &SignedIn,
    health: &super::health::Health,
    store: &Result<(), String>,
) -> Markup {
    use super::health::{latency_within, mean_latency, per_minute};
    let now = &health.now;
    layout(
        "Health",
        Some(session),
        Some(5),
        html! {
            h1 { "Gateway health" }
            p { "The counters /metrics exposes; this page reloads every 5 seconds, and rates are over the last minute it was open." }
            dl.totals {
                div { dt { "Store" } dd data-health="store" {
                    @match store {
                        Ok(()) => span.status.online { "● Answering" },
                        Err(why) => span.status.revoked { "✕ Not answering: " (why) },
                    }
                } }
                (total("Devices connected", "connections", now.connections.to_string()))
                (total("Signals delivered", "signals", now.signals_delivered.to_string()))
                (total("Reports stored", "reports", now.reports_stored.to_string()))
                (total("Store errors", "store-errors", now.store_errors.to_string()))
                (total("Refused authentications", "auth-failures", now.auth_failures.to_string()))
            }
            h2 { "Lately" }
            @match &health.recent {
                None => p.notice { "Rates appear a few seconds after the sidecar starts." },
                Some((span, change)) => dl.totals {
                    (total("Signals per minute", "signals-per-minute", per_minute(change.signals_delivered, *span)))
                    (total("Reports per minute", "reports-per-minute", per_minute(change.reports_ingested, *span)))
                    (total("Store errors", "recent-store-errors", change.store_errors.to_string()))
                    (total("Mean ingest latency", "latency-mean", mean_latency(change).unwrap_or_else(|| "no reports".to_owned())))
                    (total("99% of reports stored within", "latency-99", latency_within(change, 99).unwrap_or_else(|| "no reports".to_owned())))
                },
            }
            p { "Ingest latency since start: mean " (mean_latency(now).unwrap_or_else(|| "no reports yet".to_owned()))
                ", 99% within " (latency_within(now, 99).unwrap_or_else(|| "no reports yet".to_owned())) "." }
        },
    )
}

pub(super) fn payouts(session: &SignedIn, batches: &Batches) -> Markup {
    layout(
        "Payouts",
        Some(session),
        None,
        html! {
            h1 { "Payout batches" }
            p { "Each batch with its payouts and where each stands: pending, submitted, needs reconciliation, paid or failed." }
            @for batch in batches.items.iter().rev() {
                section.case data-batch=(batch.batch_id) {
                    h2 { (batch.batch_id) ": " (batch.currency.format_major(batch.total_minor)) " " (batch.currency) " via " (batch.provider) }
                    p.id { "Opened " (utc(batch.opened_at_ms))
                        @if let Some(day) = &batch.scheduled_for { " for " (day) } }
                    div.table {
                        table {
                            thead { tr {
                                th scope="col" { "Payout" }
                                th scope="col" { "Affiliate" }
                                th.money scope="col" { "Amount" }
                                th scope="col" { "State" }
                                th scope="col" { "Detail" }
                            } }
                            tbody {
                                @for payout in &batch.payouts {
                                    tr {
                                        td { (payout.payout_id) }
                                        td data-label="Affiliate" { (payout.affiliate_id) }
                                        td.money data-label="Amount" { (payout.amount) " " (batch.currency) }
                                        td data-label="State" { (payout.state.replace('_', " ")) }
                                        td data-label="Detail" {
                                            (payout.reference.clone().or_else(|| payout.detail.clone()).unwrap_or_default())
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if batches.items.is_empty() {
                p.notice { "No payout batch yet: the daily run opens one at the configured time, or run one with POST /v1/payout-batches." }
            }
        },
    )
}

pub(super) fn audit(
    session: &SignedIn,
    entries: &AuditPage,
    verdict: &Result<eagate_affiliates::AuditReport, String>,
) -> Markup {
    layout(
        "Audit log",
        Some(session),
        None,
        html! {
            h1 { "Audit log" }
            @match verdict {
                Ok(report) if report.problem.is_none() => p.notice data-verified="yes" {
                    span.status.online { "✓ The chain holds" } ": " (report.entries) " entries checked; head hash "
                    code { (report.head) } " (keep it elsewhere to compare later)."
                },
                Ok(report) => p.notice.error data-verified="no" role="alert" {
                    span.status.revoked { "✕ The chain does not hold" } ": "
                    (report.problem.as_ref().map(ToString::to_string).unwrap_or_default())
                },
                Err(why) => p.notice.error data-verified="unknown" role="alert" { "The trail could not be checked: " (why) },
            }
            div.table {
                table {
                    caption { "Every change to money and every fraud decision, oldest first, with who made it and why." }
                    thead { tr {
                        th scope="col" { "#" }
                        th scope="col" { "When" }
                        th scope="col" { "What" }
                        th scope="col" { "Affiliate" }
                        th scope="col" { "Who" }
                        th scope="col" { "Why" }
                    } }
                    tbody {
                        @for entry in &entries.items {
                            tr {
                                td { (entry.seq) }
                                td data-label="When" { (utc(entry.at_ms)) }
                                td data-label="What" { (entry.kind.replace('_', " ")) }
                                td data-label="Affiliate" { (entry.affiliate_id.clone().unwrap_or_default()) }
                                td data-label="Who" { (entry.by) }
                                td data-label="Why" { (entry.why) }
                            }
                        }
                    }
                }
            }
            @if let Some(after) = entries.next_after {
                p.pager { a href={ "/console/audit?after=" (after) } { "Next page →" } }
            }
        },
    )
}

pub(super) fn sign_in_link(session: &SignedIn, affiliate: &AffiliateView, link: &str) -> Markup {
    layout(
        "Sign-in link",
        Some(session),
        None,
        html! {
            h1 { "A sign-in link for " (affiliate.user_id) }
            p.notice {
                "Shown this once. It signs in to " (affiliate.user_id) "'s affiliate page, once, within a day; "
                "send it to them only. A gateway restart voids it."
            }
            code.secret #link { (link) }
            div.actions {
                button.secondary type="button" data-copy="link" hidden { "Copy" }
                a.button href="/console/affiliates" { "Done" }
            }
        },
    )
}

pub(super) fn use_link() -> Markup {
    layout(
        "Sign in",
        None,
        None,
        html! {
            h1 { "Sign in to your affiliate page" }
            p { "This link works once." }
            form method="post" {
                button type="submit" { "Sign in" }
            }
        },
    )
}

/// A count as a chart's value.
fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
