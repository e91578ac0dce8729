//! The OpenAPI 3.1 description of the sidecar, served at `/openapi.json`.
//! A test walks every operation in it against the router, so the document
//! and the routes cannot drift apart silently.

use serde_json::{Value, json};

fn problem(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    })
}

fn ok(description: &str, schema: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}
    })
}

fn body(schema: &str) -> Value {
    json!({
        "required": true,
        "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}
    })
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description, "schema": {"type": "string"}})
}

fn page_params(filters: bool) -> Value {
    let mut params = vec![
        json!({"name": "after", "in": "query", "required": false, "description": "The next_after of the previous page.", "schema": {"type": "integer"}}),
        json!({"name": "limit", "in": "query", "required": false, "description": "1 to 1000 per JSON page (default 100); CSV has every matching row unless limited.", "schema": {"type": "integer"}}),
        json!({"name": "format", "in": "query", "required": false, "description": "csv for a CSV export (or send Accept: text/csv).", "schema": {"enum": ["json", "csv"]}}),
    ];
    if filters {
        params.extend([
            json!({"name": "status", "in": "query", "required": false, "schema": {"enum": ["pending", "payable", "paid", "reversed"]}}),
            json!({"name": "kind", "in": "query", "required": false, "schema": {"enum": ["subscription", "first_trade_bonus", "clawback"]}}),
            json!({"name": "from", "in": "query", "required": false, "description": "Made on or after this UTC day, YYYY-MM-DD.", "schema": {"type": "string", "format": "date"}}),
            json!({"name": "to", "in": "query", "required": false, "description": "Made on or before this UTC day, YYYY-MM-DD.", "schema": {"type": "string", "format": "date"}}),
        ]);
    }
    Value::Array(params)
}

fn affiliate_schemas() -> Value {
    let minor = json!({"type": "integer", "description": "Minor units (pence) of the programme's currency."});
    let period = json!({"type": "object", "properties": {
        "period": {"type": "string", "description": "YYYY-MM, YYYY-MM-DD, or total."},
        "clicks": {"type": "integer"}, "signups": {"type": "integer"}, "conversions": {"type": "integer"},
        "conversion_rate_bps": {"type": "integer", "description": "Conversions per signup in basis points, rounded down."},
        "earned_minor": minor, "pending_minor": minor, "payable_minor": minor, "paid_minor": minor, "reversed_minor": minor}});
    json!({
        "NewAffiliate": {"type": "object", "additionalProperties": false, "required": ["user_id"], "properties": {"user_id": {"type": "string", "maxLength": 128}}},
        "Affiliate": {"type": "object", "properties": {
            "affiliate_id": {"type": "string"}, "user_id": {"type": "string"},
            "code": {"type": "string", "examples": ["K7QM2-XR4HD"]}, "link": {"type": "string"},
            "currency": {"type": "string"}, "enrolled_at_ms": {"type": "integer"}}},
        "AffiliateWithToken": {"type": "object", "properties": {
            "affiliate": {"$ref": "#/components/schemas/Affiliate"},
            "token": {"type": "string", "description": "eaf_…, shown only in this answer; reads this affiliate's data."}}},
        "CodeOwner": {"type": "object", "properties": {
            "code": {"type": "string"}, "kind": {"enum": ["affiliate", "customer"]},
            "affiliate_id": {"type": "string"}, "user_id": {"type": "string"}}},
        "NewReferral": {"type": "object", "additionalProperties": false,
            "required": ["user_id", "code", "source_address", "email_sha256", "email_verified"], "properties": {
            "user_id": {"type": "string", "maxLength": 128}, "code": {"type": "string"},
            "click_id": {"type": "string", "description": "The click parameter the landing page received; its click must be within the attribution window."},
            "source_address": {"type": "string", "description": "The signup's IP address."},
            "email_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"}, "email_verified": {"type": "boolean"}}},
        "NewPayment": {"type": "object", "additionalProperties": false,
            "required": ["payment_id", "user_id", "amount_minor", "currency", "billing_period"], "properties": {
            "payment_id": {"type": "string", "maxLength": 128}, "user_id": {"type": "string", "maxLength": 128},
            "amount_minor": {"type": "integer", "minimum": 1, "maximum": 1_000_000_000_000_i64},
            "currency": {"type": "string", "pattern": "^[A-Z]{3}$"}, "billing_period": {"type": "integer", "minimum": 1}}},
        "NewRefund": {"type": "object", "additionalProperties": false,
            "required": ["refund_id", "payment_id", "amount_minor", "currency"], "properties": {
            "refund_id": {"type": "string", "maxLength": 128}, "payment_id": {"type": "string", "maxLength": 128},
            "amount_minor": {"type": "integer", "minimum": 1}, "currency": {"type": "string", "pattern": "^[A-Z]{3}$"}}},
        "EmailVerification": {"type": "object", "additionalProperties": false, "required": ["user_id"], "properties": {"user_id": {"type": "string"}}},
        "NewPayout": {"type": "object", "additionalProperties": false, "required": ["payout_id"], "properties": {"payout_id": {"type": "string", "maxLength": 128}}},
        "Recorded": {"type": "object", "properties": {
            "replayed": {"type": "boolean", "description": "true when this request repeats one already recorded: nothing changed."},
            "facts": {"type": "array", "items": {"type": "object", "description": "A recorded fact, tagged by `fact` (payment_received, commission_earned, commission_reversed, clawback_entered, payout_made, credit_granted, referred, …)."}}}},
        "CustomerCode": {"type": "object", "properties": {"user_id": {"type": "string"}, "code": {"type": "string"}, "link": {"type": "string"}}},
        "Credits": {"type": "object", "properties": {
            "user_id": {"type": "string"}, "currency": {"type": "string"}, "balance_minor": minor,
            "items": {"type": "array", "items": {"type": "object", "properties": {
                "credit_id": {"type": "integer"}, "amount_minor": minor,
                "reason": {"enum": ["referred_a_customer", "was_referred"]},
                "referred_user_id": {"type": "string"}, "at_ms": {"type": "integer"}}}},
            "next_after": {"type": ["integer", "null"]}}},
        "Commissions": {"type": "object", "properties": {
            "affiliate_id": {"type": "string"}, "currency": {"type": "string"},
            "items": {"type": "array", "items": {"type": "object", "properties": {
                "entry_id": {"type": "integer"}, "kind": {"enum": ["subscription", "first_trade_bonus", "clawback"]},
                "billing_period": {"type": "integer"}, "rate_bps": {"type": "integer"}, "base_minor": minor,
                "amount_minor": {"type": "integer", "description": "Negative for clawbacks."}, "reversed_minor": minor,
                "status": {"enum": ["pending", "payable", "paid", "reversed"]},
                "user_id": {"type": "string"}, "payment_id": {"type": "string"},
                "of_entry": {"type": "integer"}, "refund_id": {"type": "string"},
                "created_at_ms": {"type": "integer"}, "payable_at_ms": {"type": "integer"},
                "payout_id": {"type": "string"}, "paid_at_ms": {"type": "integer"}}}},
            "next_after": {"type": ["integer", "null"]}}},
        "AffiliateStats": {"type": "object", "properties": {
            "affiliate_id": {"type": "string"}, "currency": {"type": "string"},
            "granularity": {"enum": ["day", "month"]}, "from": {"type": "string"}, "to": {"type": "string"},
            "totals": period, "periods": {"type": "array", "items": period}}}
    })
}

/// The document.
pub(super) fn document() -> Value {
    let device_id = path_param("device_id", "The device's id (dv_…).");
    let channel = path_param("channel", "1 to 64 of A-Z a-z 0-9 . _ -");
    let affiliate_id = path_param("affiliate_id", "The affiliate's id (af_…).");
    let user_id = path_param("user_id", "The platform's user id.");
    let auth_errors = |mut responses: Value| {
        responses["401"] = problem("No valid bearer token.");
        responses["403"] = problem("The token's scope does not allow this.");
        responses
    };
    let mut document = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "eagate sidecar",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Devices, signals and executions of an eagate gateway. Prices and volumes are decimal strings, never JSON numbers."
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/devices": {
                "post": {
                    "summary": "Register a device; the answer shows its secret, once.",
                    "requestBody": body("NewDevice"),
                    "responses": auth_errors(json!({
                        "201": ok("Registered.", "DeviceWithSecret"),
                        "409": problem("The account already has a device with this name."),
                        "413": problem("Body too large."),
                        "422": problem("Invalid input.")
                    }))
                },
                "get": {
                    "summary": "List devices, optionally of one account.",
                    "parameters": [{"name": "account_id", "in": "query", "required": false, "schema": {"type": "string"}}],
                    "responses": auth_errors(json!({
                        "200": {"description": "Devices.", "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/Device"}}}}}
                    }))
                }
            },
            "/v1/devices/{device_id}": {
                "parameters": [device_id],
                "get": {
                    "summary": "One device, with online status and last seen.",
                    "responses": auth_errors(json!({"200": ok("The device.", "Device"), "404": problem("No such device.")}))
                },
                "patch": {
                    "summary": "Rename a device.",
                    "requestBody": body("Rename"),
                    "responses": auth_errors(json!({
                        "200": ok("Renamed.", "Device"),
                        "404": problem("No such device."),
                        "409": problem("The account already has a device with this name."),
                        "422": problem("Invalid input.")
                    }))
                }
            },
            "/v1/devices/{device_id}/revoke": {
                "parameters": [device_id],
                "post": {
                    "summary": "Revoke a device; its live sessions end at once.",
                    "responses": auth_errors(json!({"200": ok("Revoked.", "Device"), "404": problem("No such device.")}))
                }
            },
            "/v1/devices/{device_id}/rotate-secret": {
                "parameters": [device_id],
                "post": {
                    "summary": "Give a device a new secret, shown once.",
                    "responses": auth_errors(json!({"200": ok("Rotated.", "DeviceWithSecret"), "404": problem("No such device.")}))
                }
            },
            "/v1/devices/{device_id}/subscriptions/{channel}": {
                "parameters": [device_id, channel],
                "put": {
                    "summary": "Subscribe a device to a channel, from now on.",
                    "responses": auth_errors(json!({
                        "200": ok("Subscribed.", "Device"),
                        "404": problem("No such device."),
                        "422": problem("Invalid channel name, or already 16 channels.")
                    }))
                },
                "delete": {
                    "summary": "Unsubscribe a device from a channel.",
                    "responses": auth_errors(json!({"200": ok("Unsubscribed.", "Device"), "404": problem("No such device.")}))
                }
            },
            "/v1/channels/{channel}/signals": {
                "parameters": [channel],
                "post": {
                    "summary": "Publish a signal to a channel (admin or platform token).",
                    "parameters": [{
                        "name": "Idempotency-Key", "in": "header", "required": false,
                        "description": "Makes the publish safe to retry: a second publish with the same key on this channel stores nothing and answers 200 with the first signal.",
                        "schema": {"type": "string", "minLength": 1, "maxLength": 128}
                    }],
                    "requestBody": body("SignalDraft"),
                    "responses": auth_errors(json!({
                        "201": ok("Published, with its position and id.", "Signal"),
                        "200": ok("Already published with this Idempotency-Key; the same signal.", "Signal"),
                        "409": problem("The Idempotency-Key already published a different signal."),
                        "413": problem("Body too large."),
                        "422": problem("Invalid signal.")
                    }))
                }
            },
            "/v1/signals/{signal_id}/executions": {
                "parameters": [path_param("signal_id", "32 hex digits.")],
                "get": {
                    "summary": "What happened to a signal on every device (admin or platform token).",
                    "responses": auth_errors(json!({
                        "200": ok("Per device: pending, delivered, received, filled or rejected.", "Executions"),
                        "404": problem("No such signal."),
                        "422": problem("Malformed signal id.")
                    }))
                }
            },
            "/v1/affiliates": {
                "post": {
                    "summary": "A platform user becomes an affiliate: a referral code, a link, and an API token shown once (platform or admin token).",
                    "requestBody": body("NewAffiliate"),
                    "responses": auth_errors(json!({
                        "201": ok("Enrolled; the answer shows the affiliate's token, once.", "AffiliateWithToken"),
                        "409": problem("The user already is an affiliate."),
                        "413": problem("Body too large."),
                        "422": problem("Invalid input.")
                    }))
                }
            },
            "/v1/affiliates/{affiliate_id}": {
                "parameters": [affiliate_id.clone()],
                "get": {
                    "summary": "An affiliate: code and link (admin, or the affiliate's own token).",
                    "responses": auth_errors(json!({"200": ok("The affiliate.", "Affiliate"), "404": problem("No such affiliate.")}))
                }
            },
            "/v1/affiliates/{affiliate_id}/token": {
                "parameters": [affiliate_id.clone()],
                "post": {
                    "summary": "Replace an affiliate's API token; the old one stops working, the new one is shown once (admin).",
                    "responses": auth_errors(json!({"200": ok("Replaced.", "AffiliateWithToken"), "404": problem("No such affiliate.")}))
                }
            },
            "/v1/affiliates/{affiliate_id}/stats": {
                "parameters": [affiliate_id.clone()],
                "get": {
                    "summary": "Clicks, signups, conversions, conversion rate and earnings (pending, payable, paid, reversed), in total and per period (admin, or the affiliate's own token).",
                    "parameters": [
                        {"name": "granularity", "in": "query", "required": false, "schema": {"enum": ["day", "month"], "default": "month"}},
                        {"name": "from", "in": "query", "required": false, "description": "First UTC day, YYYY-MM-DD (default: 30 days or 12 months back).", "schema": {"type": "string", "format": "date"}},
                        {"name": "to", "in": "query", "required": false, "description": "Last UTC day, YYYY-MM-DD (default: today).", "schema": {"type": "string", "format": "date"}}
                    ],
                    "responses": auth_errors(json!({
                        "200": ok("Stats; money in minor units of the programme's currency.", "AffiliateStats"),
                        "404": problem("No such affiliate."),
                        "422": problem("Invalid range or granularity.")
                    }))
                }
            },
            "/v1/affiliates/{affiliate_id}/commissions": {
                "parameters": [affiliate_id.clone()],
                "get": {
                    "summary": "The affiliate's ledger: commissions and clawbacks, paginated and filterable, as JSON or CSV (admin, or the affiliate's own token).",
                    "parameters": page_params(true),
                    "responses": auth_errors(json!({
                        "200": {"description": "A page of entries, or every matching entry as CSV.", "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Commissions"}},
                            "text/csv": {"schema": {"type": "string"}}}},
                        "404": problem("No such affiliate."),
                        "422": problem("Invalid filter.")
                    }))
                }
            },
            "/v1/affiliates/{affiliate_id}/payouts": {
                "parameters": [affiliate_id],
                "post": {
                    "summary": "Record a payout of every payable entry, clawbacks netted (admin). The same payout_id again changes nothing.",
                    "requestBody": body("NewPayout"),
                    "responses": auth_errors(json!({
                        "201": ok("Paid; the PayoutMade fact holds the net amount.", "Recorded"),
                        "200": ok("This payout was already recorded.", "Recorded"),
                        "404": problem("No such affiliate."),
                        "409": problem("Nothing payable, or the payout id belongs to another affiliate."),
                        "422": problem("Invalid input.")
                    }))
                }
            },
            "/v1/referral-codes/{code}": {
                "parameters": [path_param("code", "A referral code; case, spaces and hyphens do not matter.")],
                "get": {
                    "summary": "Who owns a referral code, for the signup form (platform or admin token).",
                    "responses": auth_errors(json!({
                        "200": ok("The owner.", "CodeOwner"),
                        "404": problem("No one has this code."),
                        "422": problem("Not a referral code.")
                    }))
                }
            },
            "/v1/referrals": {
                "post": {
                    "summary": "A signup with a referral code (platform or admin token). The first valid referral of a user stands; the same one again changes nothing.",
                    "requestBody": body("NewReferral"),
                    "responses": auth_errors(json!({
                        "201": ok("Attributed.", "Recorded"),
                        "200": ok("Already attributed to this code.", "Recorded"),
                        "409": problem("The user was already referred with another code."),
                        "422": problem("Unknown or expired code, self-referral, or invalid input."),
                        "429": problem("The referring customer reached today's referral limit.")
                    }))
                }
            },
            "/v1/payments": {
                "post": {
                    "summary": "A subscription payment (platform or admin token); idempotent on payment_id.",
                    "requestBody": body("NewPayment"),
                    "responses": auth_errors(json!({
                        "201": ok("Recorded, with any commission or credit it earned.", "Recorded"),
                        "200": ok("Already recorded.", "Recorded"),
                        "409": problem("payment_id was recorded with other details."),
                        "422": problem("Invalid amount, currency or period.")
                    }))
                }
            },
            "/v1/refunds": {
                "post": {
                    "summary": "A full or partial refund (platform or admin token); idempotent on refund_id. Claws back the matching commission.",
                    "requestBody": body("NewRefund"),
                    "responses": auth_errors(json!({
                        "201": ok("Recorded, with the reversals or clawbacks it caused.", "Recorded"),
                        "200": ok("Already recorded.", "Recorded"),
                        "409": problem("refund_id was recorded with other details."),
                        "422": problem("Unknown payment, more than is left to refund, or invalid input.")
                    }))
                }
            },
            "/v1/email-verifications": {
                "post": {
                    "summary": "A user verified their email (platform or admin token); may release referral credits.",
                    "requestBody": body("EmailVerification"),
                    "responses": auth_errors(json!({
                        "201": ok("Recorded.", "Recorded"),
                        "200": ok("Already verified.", "Recorded"),
                        "422": problem("Invalid input.")
                    }))
                }
            },
            "/v1/customers/{user_id}/referral-code": {
                "parameters": [user_id.clone()],
                "post": {
                    "summary": "A customer's referral code for referral credits; a customer keeps the code they have (platform or admin token).",
                    "responses": auth_errors(json!({
                        "201": ok("Issued.", "CustomerCode"),
                        "200": ok("The code the customer already has.", "CustomerCode"),
                        "422": problem("Invalid user id.")
                    }))
                }
            },
            "/v1/customers/{user_id}/credits": {
                "parameters": [user_id],
                "get": {
                    "summary": "A customer's credit balance and credit ledger, paginated, as JSON or CSV (platform or admin token).",
                    "parameters": page_params(false),
                    "responses": auth_errors(json!({
                        "200": {"description": "Balance and a page of entries, or every entry as CSV.", "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Credits"}},
                            "text/csv": {"schema": {"type": "string"}}}},
                        "422": problem("Invalid paging.")
                    }))
                }
            },
            "/r/{code}": {
                "parameters": [path_param("code", "The referral code from the link.")],
                "get": {
                    "summary": "A referral link: records the click (time, source address, user agent) and redirects to the landing page with ref=<code>&click=<click id>. An unknown code redirects without them.",
                    "security": [],
                    "responses": {"303": {"description": "To the landing page."}, "500": problem("The click could not be recorded.")}
                }
            },
            "/healthz": {"get": {"summary": "Liveness.", "security": [], "responses": {"200": {"description": "Alive."}}}},
            "/readyz": {"get": {"summary": "Readiness: the store answers.", "security": [], "responses": {"200": {"description": "Ready."}, "500": problem("Store not ready.")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics.", "security": [], "responses": {"200": {"description": "Prometheus text format."}}}},
            "/openapi.json": {"get": {"summary": "This document.", "security": [], "responses": {"200": {"description": "OpenAPI 3.1."}}}}
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "From `eagate token create --scope admin|platform`, or an affiliate's own token (eaf_…) from enrolment."}},
            "schemas": {
                "Problem": {"type": "object", "required": ["type", "title", "status", "detail"], "properties": {
                    "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"}, "detail": {"type": "string"}}},
                "Decimal": {"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,18})?$", "examples": ["1.08543"]},
                "NewDevice": {"type": "object", "additionalProperties": false, "required": ["account_id", "name"], "properties": {
                    "account_id": {"type": "string", "maxLength": 128}, "name": {"type": "string", "maxLength": 64}}},
                "Rename": {"type": "object", "additionalProperties": false, "required": ["name"], "properties": {"name": {"type": "string", "maxLength": 64}}},
                "Device": {"type": "object", "properties": {
                    "device_id": {"type": "string"}, "account_id": {"type": "string"}, "name": {"type": "string"},
                    "created_at_ms": {"type": "integer"}, "revoked_at_ms": {"type": ["integer", "null"]},
                    "channels": {"type": "array", "items": {"type": "string"}}, "online": {"type": "boolean"},
                    "last_seen_ms": {"type": ["integer", "null"]}, "last_report_seq": {"type": "integer"}}},
                "DeviceWithSecret": {"type": "object", "properties": {
                    "device": {"$ref": "#/components/schemas/Device"},
                    "secret": {"type": "string", "description": "egs_…, shown only in this answer."}}},
                "SignalDraft": {"type": "object", "additionalProperties": false, "required": ["symbol", "action", "order_type", "volume"], "properties": {
                    "symbol": {"type": "string", "maxLength": 32},
                    "action": {"enum": ["OpenBuy", "OpenSell", "Close", "Modify", "Cancel"]},
                    "order_type": {"enum": ["Market", "Limit", "Stop"]},
                    "volume": {"$ref": "#/components/schemas/Decimal"},
                    "price": {"$ref": "#/components/schemas/Decimal"},
                    "stop_loss": {"$ref": "#/components/schemas/Decimal"},
                    "take_profit": {"$ref": "#/components/schemas/Decimal"},
                    "magic": {"type": "integer", "minimum": 0},
                    "comment": {"type": "string", "maxLength": 64},
                    "issued_at_ms": {"type": "integer"}, "expires_at_ms": {"type": "integer"},
                    "reference": {"type": "string", "description": "The signal id a close, modify or cancel acts on."}}},
                "Signal": {"type": "object", "description": "A SignalDraft with channel, position (1, 2, 3, …) and signal_id (32 hex digits) added."},
                "Executions": {"type": "object", "properties": {
                    "signal_id": {"type": "string"}, "channel": {"type": "string"}, "position": {"type": "integer"},
                    "devices": {"type": "array", "items": {"type": "object", "properties": {
                        "device_id": {"type": "string"},
                        "status": {"enum": ["pending", "delivered", "received", "filled", "rejected"]},
                        "reports": {"type": "array", "items": {"type": "object"}}}}}}}
            }
        }
    });
    if let (Some(schemas), Value::Object(more)) = (
        document["components"]["schemas"].as_object_mut(),
        affiliate_schemas(),
    ) {
        schemas.extend(more);
    }
    document
}
