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

    /// TCP address of the HTTP sidecar (admin and platform API). Loopback by
    /// default: expose it only behind something that terminates TLS.
    #[arg(long, env = "EAGATE_HTTP_LISTEN", default_value = "127.0.0.1:7080")]
    pub http_listen: SocketAddr,

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

/// What a config file may set. The master key is not among them: it is a
/// secret, given by `EAGATE_MASTER_KEY` or kept in the data directory.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    quic_listen: Option<SocketAddr>,
    http_listen: Option<SocketAddr>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    hostnames: Option<Vec<String>>,
    skew_window_secs: Option<u64>,
    auth_deadline_secs: Option<u64>,
    signal_queue_len: Option<u64>,
    redis_url: Option<String>,
    redis_prefix: Option<String>,
    signal_retention_hours: Option<u64>,
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
        take!(http_listen);
        take!(tls_cert, optional);
        take!(tls_key, optional);
        take!(hostnames);
        take!(skew_window_secs, 1, 300);
        take!(auth_deadline_secs, 1, 60);
        take!(signal_queue_len, 1, 65_536);
        take!(redis_url, optional);
        take!(redis_prefix);
        take!(signal_retention_hours, 1, 87_600);
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

    /// The effective settings as `key = value` lines, secrets masked.
    pub fn show(&self) -> String {
        let path = |p: &Option<PathBuf>| {
            p.as_ref()
                .map_or("(self-signed in data dir)".to_owned(), |p| {
                    p.display().to_string()
                })
        };
        format!(
            "config_file = {}\ndata_dir = {}\nquic_listen = {}\nhttp_listen = {}\ntls_cert = {}\ntls_key = {}\nhostnames = {}\nskew_window_secs = {}\nauth_deadline_secs = {}\nsignal_queue_len = {}\nsignal_retention_hours = {}\nmaster_key = {}\nredis_url = {}\nredis_prefix = {}\n",
            self.config_file
                .as_ref()
                .map_or("(none)".to_owned(), |p| p.display().to_string()),
            self.data_dir.display(),
            self.quic_listen,
            self.http_listen,
            path(&self.tls_cert),
            path(&self.tls_key),
            self.hostnames.join(","),
            self.skew_window_secs,
            self.auth_deadline_secs,
            self.signal_queue_len,
            self.signal_retention_hours,
            if self.master_key.is_some() {
                "(set, hidden)"
            } else {
                "(from data dir)"
            },
            self.redis_url
                .as_deref()
                .map_or("(none: embedded store)".to_owned(), mask_password),
            self.redis_prefix,
        )
    }
}

/// A Redis URL with any password replaced, for showing.
fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split_once(':').map_or("", |(user, _)| user);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::mask_password;

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
    }
}
