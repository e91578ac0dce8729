//! Helpers for eagate's end-to-end tests, which run against real processes
//! and real services started by the test command (`scripts/test.sh`).

use std::net::SocketAddr;

/// The environment variable through which the test command hands the URL of
/// its private Redis to the tests.
pub const REDIS_URL_VAR: &str = "EAGATE_TEST_REDIS_URL";

/// The URL of the private Redis that `scripts/test.sh` started.
///
/// # Panics
///
/// When the variable is unset: a test that needs Redis fails rather than
/// skipping, so a missing service can never pass for a green run.
pub fn redis_url() -> String {
    std::env::var(REDIS_URL_VAR).unwrap_or_else(|_| {
        panic!(
            "{REDIS_URL_VAR} is not set: this test needs the private Redis that \
             scripts/test.sh starts; run the suite with scripts/test.sh"
        )
    })
}

/// The `host:port` of a `redis://host:port/…` URL.
///
/// # Panics
///
/// When the URL is not of that form.
pub fn redis_addr(url: &str) -> SocketAddr {
    let rest = url
        .strip_prefix("redis://")
        .unwrap_or_else(|| panic!("not a redis:// URL: {url}"));
    let authority = rest.split('/').next().unwrap_or(rest);
    authority
        .parse()
        .unwrap_or_else(|e| panic!("redis URL {url} has no host:port ({e})"))
}

pub mod process;
