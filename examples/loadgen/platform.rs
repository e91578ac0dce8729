//! The platform's side of a load test, through the gateway's HTTP sidecar:
//! registering and subscribing the simulated devices, publishing signals,
//! reading back what was stored, revoking the devices afterwards.

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// The sidecar, with an admin token.
#[derive(Debug, Clone)]
pub(crate) struct Platform {
    api: String,
    token: String,
    agent: ureq::Agent,
}

impl Platform {
    pub(crate) fn new(api: &str, token: &str) -> Self {
        Self {
            api: api.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            agent: ureq::Agent::new_with_defaults(),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.api);
        let authorization = format!("Bearer {}", self.token);
        let mut response = match (method, body) {
            ("GET", _) => self
                .agent
                .get(&url)
                .header("Authorization", &authorization)
                .call(),
            (method, body) => {
                let body = body.map(|b| b.to_string()).unwrap_or_default();
                let request = match method {
                    "POST" => self.agent.post(&url),
                    "PUT" => self.agent.put(&url),
                    other => bail!("no {other} here"),
                };
                request
                    .header("Authorization", &authorization)
                    .header("Content-Type", "application/json")
                    .send(body)
            }
        }
        .with_context(|| format!("{method} {url}"))?;
        let text = response.body_mut().read_to_string()?;
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Registers a device of `account` named `name`: its id and secret.
    pub(crate) fn register(&self, account: &str, name: &str) -> anyhow::Result<(String, String)> {
        let answer = self.call(
            "POST",
            "/v1/devices",
            Some(json!({"account_id": account, "name": name})),
        )?;
        let id = answer["device"]["device_id"]
            .as_str()
            .context("a device id")?;
        let secret = answer["secret"].as_str().context("a secret")?;
        Ok((id.to_owned(), secret.to_owned()))
    }

    pub(crate) fn subscribe(&self, device_id: &str, channel: &str) -> anyhow::Result<()> {
        self.call(
            "PUT",
            &format!("/v1/devices/{device_id}/subscriptions/{channel}"),
            None,
        )?;
        Ok(())
    }

    pub(crate) fn revoke(&self, device_id: &str) -> anyhow::Result<()> {
        self.call("POST", &format!("/v1/devices/{device_id}/revoke"), None)?;
        Ok(())
    }

    /// The device's highest report sequence stored with none missing below.
    pub(crate) fn stored_up_to(&self, device_id: &str) -> anyhow::Result<u64> {
        let device = self.call("GET", &format!("/v1/devices/{device_id}"), None)?;
        device["last_report_seq"].as_u64().context("a sequence")
    }

    /// Publishes a market buy to `channel` carrying `comment`; its id.
    pub(crate) fn publish(&self, channel: &str, comment: &str) -> anyhow::Result<String> {
        let signal = self.call(
            "POST",
            &format!("/v1/channels/{channel}/signals"),
            Some(json!({
                "symbol": "XAUUSD", "action": "OpenBuy", "order_type": "Market",
                "volume": "0.01", "comment": comment,
            })),
        )?;
        Ok(signal["signal_id"]
            .as_str()
            .context("a signal id")?
            .to_owned())
    }
}
