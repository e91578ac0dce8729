//! The gateway's settings: flags, each overridable by an `EAGATE_*`
//! environment variable, every default safe for a single machine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args};
use serde::Deserialize;

/// Settings of `eagate serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// A TOML file with any of these settings (keys as below, with `_`:
    /// `quic_listen = "0.0.0.0:7443"`). Environment variables override it,
    /// and flags override both.
    #[arg(long = "config", env = "EAGATE_CONFIG")]
    pub config_file: Option<PathBuf>,

    /// Directory for the embedded store, the TLS identity and the master key.
    #[arg(long, env = "EAGATE_DATA_DIR", default_value = "eagate-data")]
    pub data_dir: PathBuf,

    /// UDP address of the QUIC listener for devices.
    #[arg(long, env = "EAGATE_QUIC_LISTEN", default_value = "0.0.0.0:7443")]
    pub quic_listen: SocketAddr,

    /// QUIC endpoints sharing the listener's port (SO_REUSEPORT, Linux),
    /// each with its own socket and thread for its QUIC work: more than one
    /// spreads the packet work over cores. With more than one, a device whose address
    /// changes mid-connection (NAT rebinding) reconnects instead of
    /// migrating, and a second gateway started on the same port with more
    /// than one endpoint too joins the group instead of failing: see
    /// docs/benchmarks.md.
    #[arg(long, env = "EAGATE_QUIC_ENDPOINTS", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub quic_endpoints: u64,

    /// TCP address of the HTTP sidecar (admin and platform API). Loopback by
    /// default: expose it only behind something that terminates TLS.
    #[arg(long, env = "EAGATE_HTTP_LISTEN", default_value = "127.0.0.1:7080")]
    pub http_listen: SocketAddr,

    /// TCP address of the device HTTPS listener, for EAs that may not load
    /// a DLL (signed requests, docs/metatrader.md). Off unless set: terminals
    /// trust only certificates Windows trusts, so it wants a real
    /// certificate (--tls-cert) or a TLS-terminating proxy in front.
    #[arg(long, env = "EAGATE_DEVICE_HTTPS_LISTEN")]
    pub device_https_listen: Option<SocketAddr>,

    /// Worker threads of the device HTTPS listener, a runtime of its own so
    /// that polling EAs never hold up the QUIC devices' signals. 0 (the
    /// default): half the machine's cores, at least one. More serves more
    /// polls at once and leaves fewer cores to the rest of the gateway.
    #[arg(long, env = "EAGATE_DEVICE_HTTPS_THREADS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=256))]
    pub device_https_threads: u64,

    /// PEM certificate chain; without it a self-signed certificate is
    /// generated in the data directory on first start.
    #[arg(long, env = "EAGATE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "EAGATE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Host names the self-signed certificate is valid for.
    #[arg(
        long = "hostname",
        env = "EAGATE_HOSTNAMES",
        value_delimiter = ',',
        default_value = "localhost"
    )]
    pub hostnames: Vec<String>,

    /// Largest accepted difference between a device's clock and the
    /// gateway's, in seconds.
    #[arg(long, env = "EAGATE_SKEW_WINDOW_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub skew_window_secs: u64,

    /// Seconds a connection has to authenticate.
    #[arg(long, env = "EAGATE_AUTH_DEADLINE_SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub auth_deadline_secs: u64,

    /// New device connections one source (an IPv4 address, an IPv6 /64)
    /// may open per minute, and at once; more are refused before their
    /// handshake. Allow for every EA on one host reconnecting together.
    #[arg(long, env = "EAGATE_CONNECTIONS_PER_MINUTE_PER_SOURCE", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub connections_per_minute_per_source: u64,

    /// Device connections not yet authenticated, at most, from all sources
    /// together; more are refused before their handshake (a flood holds
    /// bounded memory: about 43 KB each, 420 MB at the default; lower it on
    /// a small machine).
    #[arg(long, env = "EAGATE_MAX_UNAUTHENTICATED_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_unauthenticated_connections: u64,

    /// HTTP connections the sidecar holds at once, from all sources
    /// together; more are answered 503 and closed at once. Each holds a
    /// file descriptor and about 100 KB (a slow-loris flood holds them up
    /// to the 10 s header deadline); fewer when the process may not open
    /// that many files, so descriptors stay for the store.
    #[arg(long, env = "EAGATE_MAX_HTTP_CONNECTIONS", default_value_t = 2_048, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_http_connections: u64,

    /// HTTP connections one source (an IPv4 address, an IPv6 /64) may hold
    /// at once; more are answered 503 and closed. Raise it when a reverse
    /// proxy sends everything from one address.
    #[arg(long, env = "EAGATE_MAX_HTTP_CONNECTIONS_PER_SOURCE", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_http_connections_per_source: u64,

    /// How many new signals per channel are held for devices that are
    /// momentarily behind; a device further behind reads the log instead, so
    /// memory stays bounded however slow a device is.
    #[arg(long, env = "EAGATE_SIGNAL_QUEUE_LEN", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub signal_queue_len: u64,

    /// The master key sealing device secrets, 64 hex digits. Without it the
    /// key lives in <data-dir>/master.key (mode 0600). Processes sharing a
    /// Redis must all have the same key.
    #[arg(long, env = "EAGATE_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<String>,

    /// Keep devices, signals, reports and nonces in this Redis
    /// (`redis://[:password@]host:port/db`) instead of the embedded store,
    /// so several processes can share them.
    #[arg(long, env = "EAGATE_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// The prefix of every Redis key, so deployments can share a Redis.
    #[arg(long, env = "EAGATE_REDIS_PREFIX", default_value = "eagate")]
    pub redis_prefix: String,

    /// How long published signals are kept for devices that were away, in
    /// hours. A device away longer resumes from the oldest signal kept.
    #[arg(long, env = "EAGATE_SIGNAL_RETENTION_HOURS", default_value_t = 168, value_parser = clap::value_parser!(u64).range(1..=87_600))]
    pub signal_retention_hours: u64,

    /// The embedded store's page cache, in MiB (sled's `cache_capacity`);
    /// the process uses more than this (see docs/reliability.md, soak).
    #[arg(long, env = "EAGATE_STORE_CACHE_MIB", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(8..=1_048_576))]
    pub store_cache_mib: u64,

    /// Where `GET /r/{code}` sends visitors, with `ref=<code>&click=<id>`
    /// added: the platform's signup or landing page.
    #[arg(
        long,
        env = "EAGATE_REFERRAL_LANDING_PAGE",
        default_value = "https://example.com/signup"
    )]
    pub referral_landing_page: String,

    /// The public base address of this sidecar, for the referral links
    /// (`/r/{code}`) shown to affiliates and the console's one-time
    /// sign-in links.
    #[arg(
        long,
        env = "EAGATE_REFERRAL_LINK_BASE",
        default_value = "http://localhost:7080"
    )]
    pub referral_link_base: String,

    /// The affiliate programme's currency (ISO 4217); payments in any other
    /// are refused.
    #[arg(long, env = "EAGATE_AFFILIATE_CURRENCY", default_value = "GBP")]
    pub affiliate_currency: String,

    /// Commission on a referred user's first month, in basis points.
    #[arg(long, env = "EAGATE_FIRST_MONTH_COMMISSION_BPS", default_value_t = 3_000, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub first_month_commission_bps: u64,

    /// Commission on each later month, in basis points.
    #[arg(long, env = "EAGATE_LATER_MONTHS_COMMISSION_BPS", default_value_t = 1_500, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub later_months_commission_bps: u64,

    /// Bonus on the first payment when the referred user first trades, in
    /// basis points.
    #[arg(long, env = "EAGATE_FIRST_TRADE_BONUS_BPS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub first_trade_bonus_bps: u64,

    /// Days a commission stays pending before it can be paid (the refund
    /// window).
    #[arg(long, env = "EAGATE_HOLDING_PERIOD_DAYS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=365))]
    pub holding_period_days: u64,

    /// Days after a click that a signup from it is still attributed.
    #[arg(long, env = "EAGATE_ATTRIBUTION_WINDOW_DAYS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=365))]
    pub attribution_window_days: u64,

    /// Net spend, in minor units, after which a customer referred by a
    /// customer earns both of them credit (with a verified email).
    #[arg(long, env = "EAGATE_CREDIT_THRESHOLD_MINOR", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(0..=1_000_000_000))]
    pub credit_threshold_minor: u64,

    /// Credit for the referring customer, in minor units.
    #[arg(long, env = "EAGATE_REFERRER_CREDIT_MINOR", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(0..=1_000_000_000))]
    pub referrer_credit_minor: u64,

    /// Credit for the referred customer, in minor units.
    #[arg(long, env = "EAGATE_REFERRED_CREDIT_MINOR", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(0..=1_000_000_000))]
    pub referred_credit_minor: u64,

    /// Most customers one customer may refer per UTC day.
    #[arg(long, env = "EAGATE_DAILY_REFERRAL_LIMIT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub daily_referral_limit: u64,

    /// Signups one source address may make within
    /// --shared-address-window-hours before the next referrals from it are
    /// held for fraud review.
    #[arg(long, env = "EAGATE_SHARED_ADDRESS_LIMIT", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub shared_address_limit: u64,

    /// The window of the shared-address fraud check, in hours.
    #[arg(long, env = "EAGATE_SHARED_ADDRESS_WINDOW_HOURS", default_value_t = 24, value_parser = clap::value_parser!(u64).range(1..=720))]
    pub shared_address_window_hours: u64,

    /// How close (basis points of the larger) a referred customer's bought
    /// and sold volume of one symbol on one UTC day must be to hold their
    /// commissions for wash-trading review.
    #[arg(long, env = "EAGATE_WASH_TRADE_TOLERANCE_BPS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub wash_trade_tolerance_bps: u64,

    /// Minutes within which repeated clicks on one referral link from one
    /// address count once (and get the first click's id).
    #[arg(long, env = "EAGATE_CLICK_DEDUPE_MINUTES", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=1_440))]
    pub click_dedupe_minutes: u64,

    /// Referral-link clicks one source address may make per minute; more
    /// are answered 429.
    #[arg(long, env = "EAGATE_CLICK_RATE_PER_MINUTE", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub click_rate_per_minute: u64,

    /// The smallest payout, in minor units of the programme's currency: a
    /// payable balance below it waits for more.
    #[arg(long, env = "EAGATE_PAYOUT_MINIMUM_MINOR", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub payout_minimum_minor: u64,

    /// Days after it happened (its `occurred_at`) that a platform event
    /// (signup, payment, email verification; refunds at any age) is still
    /// taken. At most 26: a first month of subscription is at least 28
    /// days, so no payment that late can change the month of one already
    /// rated.
    #[arg(long, env = "EAGATE_MAX_EVENT_AGE_DAYS", default_value_t = 26, value_parser = clap::value_parser!(u64).range(1..=26))]
    pub max_event_age_days: u64,

    /// The platform's fee per fill by symbol group, for per-trade
    /// commissions: `group:SYMBOL,PREFIX*=250/lot` (minor units per lot) or
    /// `group:SYMBOL=2bp@100000` (basis points of price × lots × contract
    /// size); the first rule that matches a symbol sets its fee. Repeat the
    /// flag, or separate rules with `;`. None (the default): fills earn no
    /// per-trade commission.
    #[arg(long = "trade-fee", env = "EAGATE_TRADE_FEES", value_delimiter = ';')]
    pub trade_fees: Vec<String>,

    /// Per-trade commission tiers, `FROM:BPS,…` lowest first: an affiliate
    /// earns BPS of the platform's fee on each referred fill from FROM
    /// active referred traders (or lots: --tier-basis) in the month before.
    #[arg(
        long,
        env = "EAGATE_TRADE_TIERS",
        default_value = "0:50,10:100,25:150,50:200"
    )]
    pub trade_tiers: String,

    /// What sets an affiliate's tier for a month: `active-traders` (referred
    /// customers with a fill) or `volume-lots` (their whole lots), in the
    /// calendar month before.
    #[arg(long, env = "EAGATE_TIER_BASIS", default_value = "active-traders")]
    pub tier_basis: String,

    /// Lets webhook endpoints point at loopback and private networks (a
    /// receiver on the same machine or LAN); off, they are refused, so an
    /// admin token cannot make the sidecar call internal services.
    #[arg(long, env = "EAGATE_WEBHOOK_ALLOW_PRIVATE")]
    pub webhook_allow_private: bool,

    /// Seconds one webhook POST may take, connecting included.
    #[arg(long, env = "EAGATE_WEBHOOK_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub webhook_timeout_secs: u64,

    /// Seconds before a failed webhook event's first retry, doubled for
    /// each next one up to an hour.
    #[arg(long, env = "EAGATE_WEBHOOK_RETRY_BASE_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub webhook_retry_base_secs: u64,

    /// Seconds after its first attempt a webhook event is retried before
    /// it is recorded as failed and the endpoint moves on (3 days).
    #[arg(long, env = "EAGATE_WEBHOOK_RETRY_WINDOW_SECS", default_value_t = 259_200, value_parser = clap::value_parser!(u64).range(1..=2_592_000))]
    pub webhook_retry_window_secs: u64,

    /// The UTC time of day (HH:MM) the daily payout batch runs, or `off`
    /// to run batches only by hand (`eagate payouts run`).
    #[arg(long, env = "EAGATE_PAYOUT_TIME", default_value = "09:00")]
    pub payout_time: String,

    /// Who pays the batches out: `manual` (an admin pays from the batch's
    /// CSV and confirms each payout) or `stripe` (a transfer to each
    /// affiliate's connected account; the secret key comes from
    /// EAGATE_STRIPE_SECRET_KEY).
    #[arg(long, env = "EAGATE_PAYOUT_PROVIDER", default_value = "manual")]
    pub payout_provider: String,

    /// Stripe's API base URL.
    #[arg(
        long,
        env = "EAGATE_STRIPE_API_BASE",
        default_value = "https://api.stripe.com"
    )]
    pub stripe_api_base: String,

    /// Seconds to wait for Stripe's answer before the payout is left to
    /// reconcile.
    #[arg(long, env = "EAGATE_STRIPE_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub stripe_timeout_secs: u64,

    /// Stripe's secret key: from the environment only, never shown or
    /// logged.
    #[arg(skip = crate::stripe::SecretKey::from_env())]
    pub stripe_secret_key: Option<crate::stripe::SecretKey>,
}

/// Why the configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The file is not valid TOML or has an unknown or mistyped key.
    #[error("config file {0}: {1}")]
    Parse(PathBuf, toml::de::Error),
    /// A value is outside its range.
    #[error("config file {path}: {key} must be between {min} and {max}, not {value}")]
    OutOfRange {
        /// The file.
        path: PathBuf,
        /// The key.
        key: &'static str,
        /// The value found.
        value: u64,
        /// The least allowed.
        min: u64,
        /// The most allowed.
        max: u64,
    },
}

/// The device HTTPS listener's worker threads for the setting `asked`:
/// itself, or for 0 half the machine's cores (one on a machine of up to
/// three).
pub fn device_https_threads(asked: u64) -> usize {
    match asked {
        0 => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
        n => usize::try_from(n).unwrap_or(usize::MAX),
    }
}

/// What a config file may set. The master key is not among them: it is a
/// secret, given by `EAGATE_MASTER_KEY` or kept in the data directory.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    quic_listen: Option<SocketAddr>,
    quic_endpoints: Option<u64>,
    http_listen: Option<SocketAddr>,
    device_https_listen: Option<SocketAddr>,
    device_https_threads: Option<u64>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    hostnames: Option<Vec<String>>,
    skew_window_secs: Option<u64>,
    auth_deadline_secs: Option<u64>,
    connections_per_minute_per_source: Option<u64>,
    max_unauthenticated_connections: Option<u64>,
    max_http_connections: Option<u64>,
    max_http_connections_per_source: Option<u64>,
    signal_queue_len: Option<u64>,
    redis_url: Option<String>,
    redis_prefix: Option<String>,
    signal_retention_hours: Option<u64>,
    store_cache_mib: Option<u64>,
    referral_landing_page: Option<String>,
    referral_link_base: Option<String>,
    affiliate_currency: Option<String>,
    first_month_commission_bps: Option<u64>,
    later_months_commission_bps: Option<u64>,
    first_trade_bonus_bps: Option<u64>,
    holding_period_days: Option<u64>,
    attribution_window_days: Option<u64>,
    credit_threshold_minor: Option<u64>,
    referrer_credit_minor: Option<u64>,
    referred_credit_minor: Option<u64>,
    daily_referral_limit: Option<u64>,
    shared_address_limit: Option<u64>,
    shared_address_window_hours: Option<u64>,
    wash_trade_tolerance_bps: Option<u64>,
    click_dedupe_minutes: Option<u64>,
    click_rate_per_minute: Option<u64>,
    payout_minimum_minor: Option<u64>,
    max_event_age_days: Option<u64>,
    trade_fees: Option<Vec<String>>,
    trade_tiers: Option<String>,
    tier_basis: Option<String>,
    webhook_allow_private: Option<bool>,
    webhook_timeout_secs: Option<u64>,
    webhook_retry_base_secs: Option<u64>,
    webhook_retry_window_secs: Option<u64>,
    payout_time: Option<String>,
    payout_provider: Option<String>,
    stripe_api_base: Option<String>,
    stripe_timeout_secs: Option<u64>,
}

impl ServeConfig {
    /// Fills every setting that neither a flag nor an environment variable
    /// gave (as told by `matches`) from the `--config` file, if any.
    pub fn with_file(mut self, matches: &ArgMatches) -> Result<Self, ConfigError> {
        let Some(path) = self.config_file.clone() else {
            return Ok(self);
        };
        let text =
            std::fs::read_to_string(&path).map_err(|e| ConfigError::Read(path.clone(), e))?;
        let file: FileConfig =
            toml::from_str(&text).map_err(|e| ConfigError::Parse(path.clone(), e))?;
        let unset = |id: &str| {
            matches!(
                matches.value_source(id),
                None | Some(ValueSource::DefaultValue)
            )
        };
        let in_range = |key: &'static str, value: u64, min: u64, max: u64| {
            if (min..=max).contains(&value) {
                Ok(value)
            } else {
                Err(ConfigError::OutOfRange {
                    path: path.clone(),
                    key,
                    value,
                    min,
                    max,
                })
            }
        };
        macro_rules! take {
            ($field:ident) => {
                if let Some(value) = file.$field {
                    if unset(stringify!($field)) {
                        self.$field = value;
                    }
                }
            };
            ($field:ident, optional) => {
                if let Some(value) = file.$field {
                    if unset(stringify!($field)) {
                        self.$field = Some(value);
                    }
                }
            };
            ($field:ident, $min:expr, $max:expr) => {
                if let Some(value) = file.$field {
                    let value = in_range(stringify!($field), value, $min, $max)?;
                    if unset(stringify!($field)) {
                        self.$field = value;
                    }
                }
            };
        }
        take!(data_dir);
        take!(quic_listen);
        take!(quic_endpoints, 1, 64);
        take!(http_listen);
        take!(device_https_listen, optional);
        take!(device_https_threads, 0, 256);
        take!(tls_cert, optional);
        take!(tls_key, optional);
        take!(hostnames);
        take!(skew_window_secs, 1, 300);
        take!(auth_deadline_secs, 1, 60);
        take!(connections_per_minute_per_source, 1, 1_000_000);
        take!(max_unauthenticated_connections, 1, 1_000_000);
        take!(max_http_connections, 1, 1_000_000);
        take!(max_http_connections_per_source, 1, 1_000_000);
        take!(signal_queue_len, 1, 65_536);
        take!(redis_url, optional);
        take!(redis_prefix);
        take!(signal_retention_hours, 1, 87_600);
        take!(store_cache_mib, 8, 1_048_576);
        take!(referral_landing_page);
        take!(referral_link_base);
        take!(affiliate_currency);
        take!(first_month_commission_bps, 0, 10_000);
        take!(later_months_commission_bps, 0, 10_000);
        take!(first_trade_bonus_bps, 0, 10_000);
        take!(holding_period_days, 0, 365);
        take!(attribution_window_days, 1, 365);
        take!(credit_threshold_minor, 0, 1_000_000_000);
        take!(referrer_credit_minor, 0, 1_000_000_000);
        take!(referred_credit_minor, 0, 1_000_000_000);
        take!(daily_referral_limit, 1, 10_000);
        take!(shared_address_limit, 1, 10_000);
        take!(shared_address_window_hours, 1, 720);
        take!(wash_trade_tolerance_bps, 0, 10_000);
        take!(click_dedupe_minutes, 1, 1_440);
        take!(click_rate_per_minute, 1, 100_000);
        take!(payout_minimum_minor, 1, 1_000_000_000);
        take!(trade_fees);
        take!(trade_tiers);
        take!(tier_basis);
        take!(webhook_allow_private);
        take!(webhook_timeout_secs, 1, 60);
        take!(webhook_retry_base_secs, 1, 3_600);
        take!(webhook_retry_window_secs, 1, 2_592_000);
        take!(payout_time);
        take!(payout_provider);
        take!(stripe_api_base);
        take!(stripe_timeout_secs, 1, 300);
        take!(
            max_event_age_days,
            1,
            eagate_affiliates::config::LONGEST_EVENT_AGE_DAYS
        );
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::Parse(
                path,
                serde::de::Error::custom("tls_cert and tls_key go together"),
            ));
        }
        Ok(self)
    }

    /// The skew window.
    pub fn skew_window(&self) -> Duration {
        Duration::from_secs(self.skew_window_secs)
    }

    /// How long signals are kept.
    pub fn signal_retention(&self) -> Duration {
        Duration::from_secs(self.signal_retention_hours * 3600)
    }

    /// The authentication deadline.
    pub fn auth_deadline(&self) -> Duration {
        Duration::from_secs(self.auth_deadline_secs)
    }

    /// The affiliate programme's rules, checked.
    pub fn programme(&self) -> Result<eagate_affiliates::ProgrammeConfig, String> {
        use eagate_affiliates::config::DAY_MS;
        use eagate_affiliates::{Bps, Currency};
        let currency: Currency = self
            .affiliate_currency
            .parse()
            .map_err(|e| format!("affiliate_currency: {e}"))?;
        for (key, url) in [
            ("referral_landing_page", &self.referral_landing_page),
            ("referral_link_base", &self.referral_link_base),
        ] {
            if !(url.starts_with("https://") || url.starts_with("http://"))
                || url.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(format!("{key} must be an http(s) URL, not {url:?}"));
            }
        }
        // Ranges are checked by clap and the file reader; these fit.
        let bps = |value: u64| Bps(value as u32);
        Ok(eagate_affiliates::ProgrammeConfig {
            currency,
            first_month_rate: bps(self.first_month_commission_bps),
            later_months_rate: bps(self.later_months_commission_bps),
            first_trade_bonus_rate: bps(self.first_trade_bonus_bps),
            holding_period_ms: self.holding_period_days * DAY_MS,
            attribution_window_ms: self.attribution_window_days * DAY_MS,
            credit_threshold: self.credit_threshold_minor as i64,
            referrer_credit: self.referrer_credit_minor as i64,
            referred_credit: self.referred_credit_minor as i64,
            daily_referral_limit: self.daily_referral_limit as u32,
            shared_address_limit: self.shared_address_limit as u32,
            shared_address_window_ms: self.shared_address_window_hours * 3_600_000,
            wash_trade_tolerance_bps: self.wash_trade_tolerance_bps as u32,
            click_dedupe_ms: self.click_dedupe_minutes * 60 * 1_000,
            payout_minimum: self.payout_minimum_minor as i64,
            max_event_age_ms: self.max_event_age_days * DAY_MS,
            trade_fees: self
                .trade_fees
                .iter()
                .filter(|rule| !rule.trim().is_empty())
                .map(|rule| rule.parse())
                .collect::<Result<_, _>>()?,
            trade_tiers: eagate_affiliates::trade_fees::parse_tiers(&self.trade_tiers)?,
            tier_basis: self.tier_basis.parse()?,
        })
    }

    /// The effective settings as `key = value` lines, secrets masked.
    pub fn show(&self) -> String {
        let path = |p: &Option<PathBuf>| {
            p.as_ref()
                .map_or("(self-signed in data dir)".to_owned(), |p| {
                    p.display().to_string()
                })
        };
        format!(
            "config_file = {}\ndata_dir = {}\nquic_listen = {}\nquic_endpoints = {}\nhttp_listen = {}\ndevice_https_listen = {}\ndevice_https_threads = {}\ntls_cert = {}\ntls_key = {}\nhostnames = {}\nskew_window_secs = {}\nauth_deadline_secs = {}\nconnections_per_minute_per_source = {}\nmax_unauthenticated_connections = {}\nmax_http_connections = {}\nmax_http_connections_per_source = {}\nsignal_queue_len = {}\nsignal_retention_hours = {}\nstore_cache_mib = {}\nmaster_key = {}\nredis_url = {}\nredis_prefix = {}\nreferral_landing_page = {}\nreferral_link_base = {}\naffiliate_currency = {}\nfirst_month_commission_bps = {}\nlater_months_commission_bps = {}\nfirst_trade_bonus_bps = {}\nholding_period_days = {}\nattribution_window_days = {}\ncredit_threshold_minor = {}\nreferrer_credit_minor = {}\nreferred_credit_minor = {}\ndaily_referral_limit = {}\nshared_address_limit = {}\nshared_address_window_hours = {}\nwash_trade_tolerance_bps = {}\nclick_dedupe_minutes = {}\nclick_rate_per_minute = {}\npayout_minimum_minor = {}\nmax_event_age_days = {}\ntrade_fees = {}\ntrade_tiers = {}\ntier_basis = {}\nwebhook_allow_private = {}\nwebhook_timeout_secs = {}\nwebhook_retry_base_secs = {}\nwebhook_retry_window_secs = {}\npayout_time = {}\npayout_provider = {}\nstripe_api_base = {}\nstripe_timeout_secs = {}\nstripe_secret_key = {}\n",
            self.config_file
                .as_ref()
                .map_or("(none)".to_owned(), |p| p.display().to_string()),
            self.data_dir.display(),
            self.quic_listen,
            self.quic_endpoints,
            self.http_listen,
            self.device_https_listen
                .map_or("(off)".to_owned(), |addr| addr.to_string()),
            match self.device_https_threads {
                0 => format!("0 ({} here: half the cores)", device_https_threads(0)),
                n => n.to_string(),
            },
            path(&self.tls_cert),
            path(&self.tls_key),
            self.hostnames.join(","),
            self.skew_window_secs,
            self.auth_deadline_secs,
            self.connections_per_minute_per_source,
            self.max_unauthenticated_connections,
            self.max_http_connections,
            self.max_http_connections_per_source,
            self.signal_queue_len,
            self.signal_retention_hours,
            self.store_cache_mib,
            if self.master_key.is_some() {
                "(set, hidden)"
            } else {
                "(from data dir)"
            },
            self.redis_url
                .as_deref()
                .map_or("(none: embedded store)".to_owned(), mask_password),
            self.redis_prefix,
            self.referral_landing_page,
            self.referral_link_base,
            self.affiliate_currency,
            self.first_month_commission_bps,
            self.later_months_commission_bps,
            self.first_trade_bonus_bps,
            self.holding_period_days,
            self.attribution_window_days,
            self.credit_threshold_minor,
            self.referrer_credit_minor,
            self.referred_credit_minor,
            self.daily_referral_limit,
            self.shared_address_limit,
            self.shared_address_window_hours,
            self.wash_trade_tolerance_bps,
            self.click_dedupe_minutes,
            self.click_rate_per_minute,
            self.payout_minimum_minor,
            self.max_event_age_days,
            if self.trade_fees.is_empty() {
                "(none)".to_owned()
            } else {
                self.trade_fees.join(";")
            },
            self.trade_tiers,
            self.tier_basis,
            self.webhook_allow_private,
            self.webhook_timeout_secs,
            self.webhook_retry_base_secs,
            self.webhook_retry_window_secs,
            self.payout_time,
            self.payout_provider,
            self.stripe_api_base,
            self.stripe_timeout_secs,
            if self.stripe_secret_key.is_some() {
                "(set, hidden)"
            } else {
                "(not set)"
            },
        )
    }

    /// The payout settings, checked: the daily batch's time (minutes after
    /// midnight UTC, none when off), the provider, and Stripe when its
    /// secret key is set (also to finish Stripe payouts after a switch to
    /// manual).
    pub fn payouts(&self) -> Result<crate::payouts::PayoutSettings, String> {
        use eagate_affiliates::PayoutProvider;
        let daily_at_minute = parse_time_of_day(&self.payout_time)?;
        let provider = match self.payout_provider.as_str() {
            "manual" => PayoutProvider::Manual,
            "stripe" => PayoutProvider::Stripe,
            other => {
                return Err(format!(
                    "payout_provider must be manual or stripe, not {other:?}"
                ));
            }
        };
        let base = &self.stripe_api_base;
        if !(base.starts_with("https://") || base.starts_with("http://"))
            || base.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "stripe_api_base must be an http(s) URL, not {base:?}"
            ));
        }
        let stripe = self.stripe_secret_key.clone().map(|key| {
            crate::stripe::StripeClient::new(
                base,
                key,
                Duration::from_secs(self.stripe_timeout_secs),
            )
        });
        if provider == PayoutProvider::Stripe && stripe.is_none() {
            return Err(format!(
                "payout_provider = stripe needs Stripe's secret key in {}",
                crate::stripe::SECRET_KEY_ENV
            ));
        }
        Ok(crate::payouts::PayoutSettings {
            daily_at_minute,
            provider,
            stripe,
        })
    }
}

/// `HH:MM` (UTC) as minutes after midnight, or `off`.
fn parse_time_of_day(text: &str) -> Result<Option<u32>, String> {
    if text == "off" {
        return Ok(None);
    }
    let bad = || format!("payout_time must be HH:MM (UTC) or off, not {text:?}");
    let (hours, minutes) = text.split_once(':').ok_or_else(bad)?;
    if hours.len() != 2 || minutes.len() != 2 {
        return Err(bad());
    }
    let hours: u32 = hours.parse().map_err(|_| bad())?;
    let minutes: u32 = minutes.parse().map_err(|_| bad())?;
    if hours > 23 || minutes > 59 {
        return Err(bad());
    }
    Ok(Some(hours * 60 + minutes))
}

/// A Redis URL with any password replaced, for showing: in the authority
/// (`redis://user:pw@host`) and in the query (`redis+unix:///sock?pass=pw`).
fn mask_password(url: &str) -> String {
    let (url, query) = match url.split_once('?') {
        Some((url, query)) => (url, Some(query)),
        None => (url, None),
    };
    let mut shown = match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((credentials, host)) => {
                let user = credentials.split_once(':').map_or("", |(user, _)| user);
                format!("{scheme}://{user}:***@{host}")
            }
            None => url.to_owned(),
        },
        None => url.to_owned(),
    };
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _))
                    if name.eq_ignore_ascii_case("pass")
                        || name.eq_ignore_ascii_case("password") =>
                {
                    format!("{name}=***")
                }
                _ => pair.to_owned(),
            })
            .collect();
        shown.push('?');
        shown.push_str(&pairs.join("&"));
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::{mask_password, parse_time_of_day};

    #[test]
    fn a_redis_password_is_masked_and_the_rest_kept() {
        assert_eq!(
            mask_password("redis://:s3cret@10.0.0.5:6379/2"),
            "redis://:***@10.0.0.5:6379/2"
        );
        assert_eq!(
            mask_password("rediss://app:s3cret@cache:6380"),
            "rediss://app:***@cache:6380"
        );
        assert_eq!(
            mask_password("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            mask_password("redis+unix:///run/redis.sock?db=2&pass=s3cret"),
            "redis+unix:///run/redis.sock?db=2&pass=***"
        );
        assert_eq!(
            mask_password("unix:///run/redis.sock?password=s3cret"),
            "unix:///run/redis.sock?password=***"
        );
    }

    #[test]
    fn the_payout_time_is_hours_and_minutes_utc_or_off() {
        assert_eq!(parse_time_of_day("09:00"), Ok(Some(540)));
        assert_eq!(parse_time_of_day("23:59"), Ok(Some(1439)));
        assert_eq!(parse_time_of_day("00:00"), Ok(Some(0)));
        assert_eq!(parse_time_of_day("off"), Ok(None));
        for bad in ["24:00", "9:00", "09:60", "0900", "", "noon", "-1:00"] {
            assert!(parse_time_of_day(bad).is_err(), "{bad} was taken");
        }
    }
}
