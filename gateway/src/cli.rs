//! `eagate device …` and `eagate signal …`: thin clients of a running
//! gateway's HTTP sidecar, so they work while the gateway holds the store.

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

/// Where the sidecar is and how to authenticate to it.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// The sidecar's base URL.
    #[arg(
        long = "api",
        env = "EAGATE_API_URL",
        default_value = "http://127.0.0.1:7080",
        global = true
    )]
    pub url: String,
    /// A bearer token from `eagate token create`.
    #[arg(long, env = "EAGATE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

/// Device administration.
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Register a device and print its id and secret (shown this once).
    Register {
        /// The platform user the device belongs to.
        #[arg(long)]
        account: String,
        /// A name unique within the account, e.g. "London VPS".
        #[arg(long)]
        name: String,
    },
    /// List devices.
    List {
        /// Only this account's devices.
        #[arg(long)]
        account: Option<String>,
    },
    /// Subscribe a device to a channel.
    Subscribe {
        /// The device id.
        device_id: String,
        /// The channel.
        channel: String,
    },
    /// Revoke a device; its live sessions end at once.
    Revoke {
        /// The device id.
        device_id: String,
    },
}

/// Signal publishing.
#[derive(Debug, Subcommand)]
pub enum SignalCommand {
    /// Publish a signal to a channel.
    Publish(PublishArgs),
}

/// Affiliate payouts.
#[derive(Debug, Subcommand)]
pub enum PayoutsCommand {
    /// Run payouts now: finish what an earlier run left, then open a batch
    /// paying every affiliate whose payable balance reaches the minimum and
    /// who has no open fraud case. Prints the batch.
    Run,
    /// Confirm a manual payout paid, with the provider's reference.
    Confirm {
        /// The payout id (from the batch).
        payout_id: String,
        /// The bank or provider reference.
        #[arg(long)]
        reference: String,
    },
    /// Mark a payout failed: its commissions are payable again.
    Fail {
        /// The payout id.
        payout_id: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
}

/// A signal on the command line. Prices and volumes are decimal text.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The channel.
    #[arg(long)]
    channel: String,
    /// The symbol, e.g. EURUSD.
    #[arg(long)]
    symbol: String,
    /// What to do.
    #[arg(long, value_enum)]
    action: ActionArg,
    /// Lots, e.g. 0.10.
    #[arg(long)]
    volume: String,
    /// How to place an opening order.
    #[arg(long, value_enum, default_value = "market")]
    order_type: OrderTypeArg,
    /// Limit or stop price.
    #[arg(long)]
    price: Option<String>,
    /// Stop loss price.
    #[arg(long)]
    stop_loss: Option<String>,
    /// Take profit price.
    #[arg(long)]
    take_profit: Option<String>,
    /// The EA's magic number.
    #[arg(long, default_value_t = 0)]
    magic: u64,
    /// Order comment.
    #[arg(long, default_value = "")]
    comment: String,
    /// For close, modify, cancel: the signal id acted on.
    #[arg(long)]
    reference: Option<String>,
    /// A key of your choosing (1 to 128 visible ASCII characters) that makes
    /// retrying safe: publishing again with the same key and signal stores
    /// nothing new and prints the signal the first attempt published.
    #[arg(long)]
    idempotency_key: Option<String>,
}

/// `--action` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum ActionArg {
    OpenBuy,
    OpenSell,
    Close,
    Modify,
    Cancel,
}

/// `--order-type` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum OrderTypeArg {
    Market,
    Limit,
    Stop,
}

/// Why a sidecar call failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// No token given.
    #[error(
        "a token is needed: pass --token or set EAGATE_TOKEN (create one with `eagate token create --scope admin`)"
    )]
    NoToken,
    /// The sidecar could not be reached.
    #[error("cannot reach the eagate sidecar at {url}: {reason} (is `eagate serve` running?)")]
    Unreachable {
        /// The base URL tried.
        url: String,
        /// The transport error.
        reason: String,
    },
    /// The sidecar refused the request.
    #[error("{status}: {detail}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The problem's detail.
        detail: String,
    },
}

struct Api {
    agent: ureq::Agent,
    url: String,
    token: String,
}

impl Api {
    fn new(args: &ApiArgs) -> Result<Self, CliError> {
        let token = args.token.clone().ok_or(CliError::NoToken)?;
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Self {
            agent,
            url: args.url.trim_end_matches('/').to_owned(),
            token,
        })
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, CliError> {
        self.call_with(method, path, body, None)
            .map(|(_, value)| value)
    }

    /// A call with an optional `Idempotency-Key`; returns the status too.
    fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        idempotency_key: Option<&str>,
    ) -> Result<(u16, Value), CliError> {
        let url = format!("{}{path}", self.url);
        let auth = format!("Bearer {}", self.token);
        let unreachable = |e: ureq::Error| CliError::Unreachable {
            url: self.url.clone(),
            reason: e.to_string(),
        };
        let response = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            (_, Some(body)) => {
                let mut request = self
                    .agent
                    .post(&url)
                    .header("Authorization", &auth)
                    .content_type("application/json");
                if let Some(key) = idempotency_key {
                    request = request.header("Idempotency-Key", key);
                }
                request.send(body.to_string())
            }
            ("PUT", None) => self
                .agent
                .put(&url)
                .header("Authorization", &auth)
                .send_empty(),
            (_, None) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_empty(),
        }
        .map_err(unreachable)?;
        let status = response.status().as_u16();
        let text = response.into_body().read_to_string().map_err(unreachable)?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status >= 400 {
            let detail = value["detail"]
                .as_str()
                .unwrap_or("request failed")
                .to_owned();
            return Err(CliError::Refused { status, detail });
        }
        Ok((status, value))
    }
}

/// Runs a device subcommand and returns what to print.
pub fn device(args: &ApiArgs, command: DeviceCommand) -> Result<String, CliError> {
    let api = Api::new(args)?;
    Ok(match command {
        DeviceCommand::Register { account, name } => {
            let created = api.call(
                "POST",
                "/v1/devices",
                Some(json!({"account_id": account, "name": name})),
            )?;
            format!(
                "device id: {}\nsecret:    {}\nThe secret is shown only now. Put both in the EA's inputs or the bot's config.\n",
                created["device"]["device_id"].as_str().unwrap_or("?"),
                created["secret"].as_str().unwrap_or("?"),
            )
        }
        DeviceCommand::List { account } => {
            // Every page, in order.
            let mut devices = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let mut path = "/v1/devices?limit=1000".to_owned();
                if let Some(account) = &account {
                    path.push_str(&format!("&account_id={}", encode(account)));
                }
                if let Some(after) = &after {
                    path.push_str(&format!("&after={}", encode(after)));
                }
                let page = api.call("GET", &path, None)?;
                devices.extend(page["items"].as_array().into_iter().flatten().cloned());
                match page["next_after"].as_str() {
                    Some(next) => after = Some(next.to_owned()),
                    None => break,
                }
            }
            let mut out = format!(
                "{:<30} {:<16} {:<24} {:<8} {}\n",
                "DEVICE", "ACCOUNT", "NAME", "STATE", "CHANNELS"
            );
            for device in &devices {
                let state = if !device["revoked_at_ms"].is_null() {
                    "revoked"
                } else if device["online"] == true {
                    "online"
                } else {
                    "offline"
                };
                let channels: Vec<&str> = device["channels"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                out.push_str(&format!(
                    "{:<30} {:<16} {:<24} {:<8} {}\n",
                    device["device_id"].as_str().unwrap_or("?"),
                    device["account_id"].as_str().unwrap_or("?"),
                    device["name"].as_str().unwrap_or("?"),
                    state,
                    channels.join(",")
                ));
            }
            out
        }
        DeviceCommand::Subscribe { device_id, channel } => {
            api.call(
                "PUT",
                &format!(
                    "/v1/devices/{}/subscriptions/{}",
                    encode(&device_id),
                    encode(&channel)
                ),
                None,
            )?;
            format!("{device_id} is subscribed to {channel}\n")
        }
        DeviceCommand::Revoke { device_id } => {
            api.call(
                "POST",
                &format!("/v1/devices/{}/revoke", encode(&device_id)),
                None,
            )?;
            format!("{device_id} is revoked; its sessions have ended\n")
        }
    })
}

/// Runs a signal subcommand and returns what to print.
pub fn signal(args: &ApiArgs, command: SignalCommand) -> Result<String, CliError> {
    let api = Api::new(args)?;
    let SignalCommand::Publish(signal) = command;
    let action = match signal.action {
        ActionArg::OpenBuy => "OpenBuy",
        ActionArg::OpenSell => "OpenSell",
        ActionArg::Close => "Close",
        ActionArg::Modify => "Modify",
        ActionArg::Cancel => "Cancel",
    };
    let order_type = match signal.order_type {
        OrderTypeArg::Market => "Market",
        OrderTypeArg::Limit => "Limit",
        OrderTypeArg::Stop => "Stop",
    };
    let body = json!({
        "symbol": signal.symbol,
        "action": action,
        "order_type": order_type,
        "volume": signal.volume,
        "price": signal.price,
        "stop_loss": signal.stop_loss,
        "take_profit": signal.take_profit,
        "magic": signal.magic,
        "comment": signal.comment,
        "reference": signal.reference,
    });
    let (status, published) = api.call_with(
        "POST",
        &format!("/v1/channels/{}/signals", encode(&signal.channel)),
        Some(body),
        signal.idempotency_key.as_deref(),
    )?;
    // 201: stored now; 200: this key had already published it.
    let verb = if status == 201 {
        "published"
    } else {
        "already published (same idempotency key)"
    };
    Ok(format!(
        "{verb} {} at position {} of {}\n",
        published["signal_id"].as_str().unwrap_or("?"),
        published["position"],
        signal.channel
    ))
}

/// Runs a payouts subcommand and returns what to print.
pub fn payouts(args: &ApiArgs, command: PayoutsCommand) -> Result<String, CliError> {
    let api = Api::new(args)?;
    match command {
        PayoutsCommand::Run => {
            let run = api.call("POST", "/v1/payout-batches", None)?;
            let mut out = String::new();
            for resumed in run["resumed"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "finished from an earlier run: {}\n",
                    resumed.as_str().unwrap_or("?")
                ));
            }
            let batch = &run["batch"];
            out.push_str(&format!(
                "batch {} ({}): {} payouts, {} {} in minor units\n",
                batch["batch_id"].as_str().unwrap_or("?"),
                batch["provider"].as_str().unwrap_or("?"),
                batch["payouts"].as_array().map_or(0, Vec::len),
                batch["total_minor"],
                batch["currency"].as_str().unwrap_or("?"),
            ));
            out.push_str(&format!(
                "{:<40} {:<24} {:>14} {}\n",
                "PAYOUT", "AFFILIATE", "AMOUNT", "STATE"
            ));
            for payout in batch["payouts"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "{:<40} {:<24} {:>14} {}\n",
                    payout["payout_id"].as_str().unwrap_or("?"),
                    payout["affiliate_id"].as_str().unwrap_or("?"),
                    payout["amount"].as_str().unwrap_or("?"),
                    payout["state"].as_str().unwrap_or("?"),
                ));
            }
            Ok(out)
        }
        PayoutsCommand::Confirm {
            payout_id,
            reference,
        } => {
            api.call(
                "POST",
                &format!("/v1/payouts/{}/outcome", encode(&payout_id)),
                Some(json!({"outcome": "paid", "reference": reference})),
            )?;
            Ok(format!("{payout_id} is paid ({reference})\n"))
        }
        PayoutsCommand::Fail { payout_id, reason } => {
            api.call(
                "POST",
                &format!("/v1/payouts/{}/outcome", encode(&payout_id)),
                Some(json!({"outcome": "failed", "reason": reason})),
            )?;
            Ok(format!(
                "{payout_id} is failed; its commissions are payable again\n"
            ))
        }
    }
}

/// Percent-encodes a path or query segment.
fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
