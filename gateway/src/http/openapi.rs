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

/// The document.
pub(super) fn document() -> Value {
    let device_id = path_param("device_id", "The device's id (dv_…).");
    let channel = path_param("channel", "1 to 64 of A-Z a-z 0-9 . _ -");
    let auth_errors = |mut responses: Value| {
        responses["401"] = problem("No valid bearer token.");
        responses["403"] = problem("The token's scope does not allow this.");
        responses
    };
    json!({
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
            "/healthz": {"get": {"summary": "Liveness.", "security": [], "responses": {"200": {"description": "Alive."}}}},
            "/readyz": {"get": {"summary": "Readiness: the store answers.", "security": [], "responses": {"200": {"description": "Ready."}, "500": problem("Store not ready.")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics.", "security": [], "responses": {"200": {"description": "Prometheus text format."}}}},
            "/openapi.json": {"get": {"summary": "This document.", "security": [], "responses": {"200": {"description": "OpenAPI 3.1."}}}}
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "From `eagate token create --scope admin|platform`."}},
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
    })
}
