//! Where a webhook may point: an http(s) URL whose host resolves only to
//! public addresses, unless the operator allows private ones. Otherwise an
//! admin token could make the sidecar POST to the machine's own services
//! (Redis on loopback, a cloud metadata endpoint, the office network).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// Why a URL cannot be a webhook's target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Not an http(s) URL with a host.
    #[error("a webhook URL is http:// or https:// with a host, at most 2000 bytes: {0}")]
    NotHttp(String),
    /// The host does not resolve.
    #[error("the webhook host {0} does not resolve")]
    Unresolved(String),
    /// The host resolves to an address that is not public.
    #[error(
        "the webhook host {host} resolves to {address}, which is not a public address (loopback, private, link-local and the like are refused unless --webhook-allow-private is set)"
    )]
    NotPublic {
        /// The host.
        host: String,
        /// The address it resolved to.
        address: IpAddr,
    },
}

/// The host and port of `url`, checked as a target: every address the host
/// resolves to must be public unless `allow_private`. Resolves (blocking):
/// call it off the async runtime.
pub fn check_target(url: &str, allow_private: bool) -> Result<Vec<SocketAddr>, TargetError> {
    let not_http = || TargetError::NotHttp(url.chars().take(200).collect());
    if url.len() > 2_000 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(not_http());
    }
    let (rest, default_port) = if let Some(rest) = url.strip_prefix("https://") {
        (rest, 443)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (rest, 80)
    } else {
        return Err(not_http());
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    // No credentials in the URL: they would be sent to whoever answers.
    if authority.is_empty() || authority.contains('@') {
        return Err(not_http());
    }
    let (host, port) = split_host_port(authority, default_port).ok_or_else(not_http)?;
    let addresses: Vec<SocketAddr> = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|_| TargetError::Unresolved(host.clone()))?
        .collect();
    if addresses.is_empty() {
        return Err(TargetError::Unresolved(host));
    }
    if !allow_private
        && let Some(address) = addresses
            .iter()
            .map(SocketAddr::ip)
            .find(|ip| !is_public(*ip))
    {
        return Err(TargetError::NotPublic { host, address });
    }
    Ok(addresses)
}

fn split_host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(port) => port.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((host.to_owned(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host.to_owned(), port.parse().ok()?)),
        Some(_) => None,
        None => Some((authority.to_owned(), default_port)),
    }
    .filter(|(host, _)| !host.is_empty())
}

/// Whether `ip` is an address on the public internet.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                // Shared address space (carrier-grade NAT), 100.64/10.
                || (a == 100 && (64..128).contains(&b))
                // Benchmarking, 198.18/15; reserved, 240/4.
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let segments = v6.segments();
            let first = segments[0];
            // Prefixes that reach IPv4 through a translator or a tunnel:
            // NAT64 (64:ff9b::/96, 64:ff9b:1::/48), 6to4 (2002::/16) and
            // the old IPv4-compatible ::a.b.c.d. Refused outright.
            if (first == 0x0064 && segments[1] == 0xff9b)
                || first == 0x2002
                || (segments[..6].iter().all(|s| *s == 0)
                    && !v6.is_loopback()
                    && !v6.is_unspecified())
            {
                return false;
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // Unique local fc00::/7, link-local fe80::/10.
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                // Documentation 2001:db8::/32.
                || (first == 0x2001 && v6.segments()[1] == 0x0db8))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_with_a_host_and_no_credentials_are_targets() {
        for url in [
            "ftp://example.com/hook",
            "https://",
            "https://user:pw@example.com/",
            "https://exa mple.com/",
            "example.com/hook",
            "https://[::1/",
        ] {
            assert!(
                matches!(check_target(url, true), Err(TargetError::NotHttp(_))),
                "{url}"
            );
        }
    }

    #[test]
    fn loopback_private_and_metadata_addresses_are_refused_unless_allowed() {
        for url in [
            "http://127.0.0.1:6379/",
            "http://localhost/",
            "http://10.1.2.3/",
            "http://192.168.0.10/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]:8080/",
            "http://[fd00::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
            "http://[64:ff9b::a00:1]/",
            "http://[2002:a00:1::]/",
            "http://[::a00:1]/",
        ] {
            assert!(
                matches!(check_target(url, false), Err(TargetError::NotPublic { .. })),
                "{url}"
            );
        }
        assert_eq!(
            check_target("http://127.0.0.1:9000/hook", true).unwrap(),
            vec!["127.0.0.1:9000".parse::<SocketAddr>().unwrap()]
        );
        assert!(is_public("93.184.216.34".parse().unwrap()));
        assert!(is_public("2a00:1450:4001::1".parse().unwrap()));
    }
}
