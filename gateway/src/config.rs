//! The gateway's settings: flags, each overridable by an `EAGATE_*`
//! environment variable, every default safe for a single machine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// Settings of `eagate serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
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
    /// key lives in <data-dir>/master.key (mode 0600).
    #[arg(long, env = "EAGATE_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<String>,
}

impl ServeConfig {
    /// The skew window.
    pub fn skew_window(&self) -> Duration {
        Duration::from_secs(self.skew_window_secs)
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
            "data_dir = {}\nquic_listen = {}\nhttp_listen = {}\ntls_cert = {}\ntls_key = {}\nhostnames = {}\nskew_window_secs = {}\nauth_deadline_secs = {}\nsignal_queue_len = {}\nmaster_key = {}\n",
            self.data_dir.display(),
            self.quic_listen,
            self.http_listen,
            path(&self.tls_cert),
            path(&self.tls_key),
            self.hostnames.join(","),
            self.skew_window_secs,
            self.auth_deadline_secs,
            self.signal_queue_len,
            if self.master_key.is_some() {
                "(set, hidden)"
            } else {
                "(from data dir)"
            },
        )
    }
}
