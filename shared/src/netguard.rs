//! SSRF protection for webhook URLs (docs/operations/security.md, "Access and secrets"): only `http`/`https`, and
//! no destination that reaches inside the network rdev runs in — loopback,
//! private (RFC 1918, ULA), link-local (cloud metadata at 169.254.169.254),
//! CGNAT, unspecified, multicast, reserved, and IPv6 forms embedding such an
//! IPv4 address. The API checks at create/update; the dispatcher checks again
//! on every connection (a name can resolve differently later: DNS rebinding).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Longest accepted webhook URL.
pub const MAX_URL_LEN: usize = 2048;
/// How long a name may take to resolve at validation time.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a destination is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not a URL, or not one rdev sends to.
    #[error("{0}")]
    BadUrl(String),
    /// The name does not resolve.
    #[error("host `{0}` does not resolve")]
    Unresolvable(String),
    /// The address is internal.
    #[error("address {0} is not publicly routable")]
    Forbidden(IpAddr),
}

/// Whether `ip` must never be a webhook destination.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_forbidden_v4(v4),
        IpAddr::V6(v6) => is_forbidden_v6(v6),
    }
}

fn is_forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64.0.0/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast 192.88.99.0/24 (RFC 7526)
        || (a == 198 && (b == 18 || b == 19)) // benchmarking 198.18.0.0/15
        || a >= 240 // reserved 240.0.0.0/4
}

fn is_forbidden_v6(ip: Ipv6Addr) -> bool {
    // IPv4-mapped (::ffff:a.b.c.d) and the deprecated IPv4-compatible form
    // (::a.b.c.d) reach the embedded IPv4 address.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_forbidden_v4(v4);
    }
    let seg = ip.segments();
    if seg[..6].iter().all(|&s| s == 0) {
        // ::/96 (IPv4-compatible) includes :: and ::1.
        return ip.is_unspecified() || ip.is_loopback() || is_forbidden_v4(embedded_v4(seg));
    }
    // NAT64 well-known prefix 64:ff9b::/96 translates to the embedded IPv4.
    if seg[0] == 0x64 && seg[1] == 0xff9b && seg[2..6].iter().all(|&s| s == 0) {
        return is_forbidden_v4(embedded_v4(seg));
    }
    // Local-use NAT64 prefix 64:ff9b:1::/48 (RFC 8215): translated by the
    // operator's own NAT64, to whatever IPv4 it maps, private ones included.
    if seg[0] == 0x64 && seg[1] == 0xff9b && seg[2] == 0x0001 {
        return true;
    }
    // Teredo 2001::/32 (RFC 4380) tunnels to an obfuscated IPv4 address
    // through a relay: never a legitimate webhook destination.
    if seg[0] == 0x2001 && seg[1] == 0x0000 {
        return true;
    }
    // 6to4 2002::/16 embeds an IPv4 address in bits 16..48.
    if seg[0] == 0x2002 {
        let v4 = Ipv4Addr::new(
            (seg[1] >> 8) as u8,
            seg[1] as u8,
            (seg[2] >> 8) as u8,
            seg[2] as u8,
        );
        if is_forbidden_v4(v4) {
            return true;
        }
    }
    ip.is_multicast()
        || (seg[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (seg[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (seg[0] & 0xffc0) == 0xfec0 // deprecated site-local fec0::/10
        || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
        || (seg[0] == 0x0100 && seg[1..4].iter().all(|&s| s == 0)) // discard-only 100::/64
}

fn embedded_v4(seg: [u16; 8]) -> Ipv4Addr {
    Ipv4Addr::new(
        (seg[6] >> 8) as u8,
        seg[6] as u8,
        (seg[7] >> 8) as u8,
        seg[7] as u8,
    )
}

/// A parsed webhook destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name or IP literal (without brackets).
    pub host: String,
    /// Port, the scheme's default when the URL names none.
    pub port: u16,
    /// The host is an IP literal.
    pub ip: Option<IpAddr>,
}

/// Checks the shape of a webhook URL: absolute `http`/`https` with a host,
/// no credentials, at most [`MAX_URL_LEN`] bytes.
pub fn parse_url(raw: &str) -> Result<Target, Refusal> {
    if raw.len() > MAX_URL_LEN {
        return Err(Refusal::BadUrl(format!(
            "must be at most {MAX_URL_LEN} bytes"
        )));
    }
    let url = url::Url::parse(raw).map_err(|e| Refusal::BadUrl(format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Refusal::BadUrl(
            "only http and https URLs are allowed".into(),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Refusal::BadUrl("must not carry credentials".into()));
    }
    let port = url
        .port_or_known_default()
        .ok_or_else(|| Refusal::BadUrl("no port".into()))?;
    let (host, ip) = match url.host() {
        Some(url::Host::Domain(d)) => (d.to_owned(), None),
        Some(url::Host::Ipv4(v4)) => (v4.to_string(), Some(IpAddr::V4(v4))),
        Some(url::Host::Ipv6(v6)) => (v6.to_string(), Some(IpAddr::V6(v6))),
        None => return Err(Refusal::BadUrl("must name a host".into())),
    };
    Ok(Target { host, port, ip })
}

/// Resolves a target and keeps only the addresses it may connect to; fails
/// when none is left. With `allow_private`, nothing is filtered.
pub async fn resolve_allowed(
    target: &Target,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, Refusal> {
    let addrs: Vec<SocketAddr> = match target.ip {
        Some(ip) => vec![SocketAddr::new(ip, target.port)],
        None => tokio::time::timeout(
            RESOLVE_TIMEOUT,
            tokio::net::lookup_host((target.host.as_str(), target.port)),
        )
        .await
        .map_err(|_| Refusal::Unresolvable(target.host.clone()))?
        .map_err(|_| Refusal::Unresolvable(target.host.clone()))?
        .collect(),
    };
    filter_allowed(addrs, allow_private, &target.host)
}

/// Resolves a target and requires every address to be allowed: what the API
/// checks when a webhook is created or its URL changed, so a name that
/// resolves to a public and an internal address is refused outright (the
/// dispatcher's connect-time filter would otherwise still pick the public
/// one, but a later answer may order them differently).
pub async fn resolve_all_public(target: &Target) -> Result<Vec<SocketAddr>, Refusal> {
    let addrs: Vec<SocketAddr> = match target.ip {
        Some(ip) => vec![SocketAddr::new(ip, target.port)],
        None => tokio::time::timeout(
            RESOLVE_TIMEOUT,
            tokio::net::lookup_host((target.host.as_str(), target.port)),
        )
        .await
        .map_err(|_| Refusal::Unresolvable(target.host.clone()))?
        .map_err(|_| Refusal::Unresolvable(target.host.clone()))?
        .collect(),
    };
    require_all_public(addrs, &target.host)
}

/// Every address must be allowed; an error naming the first refused one.
pub fn require_all_public(addrs: Vec<SocketAddr>, host: &str) -> Result<Vec<SocketAddr>, Refusal> {
    if addrs.is_empty() {
        return Err(Refusal::Unresolvable(host.to_owned()));
    }
    match addrs.iter().find(|a| is_forbidden(a.ip())) {
        Some(bad) => Err(Refusal::Forbidden(bad.ip())),
        None => Ok(addrs),
    }
}

/// Keeps the allowed addresses; an error naming a refused one when none is left.
pub fn filter_allowed(
    addrs: Vec<SocketAddr>,
    allow_private: bool,
    host: &str,
) -> Result<Vec<SocketAddr>, Refusal> {
    if addrs.is_empty() {
        return Err(Refusal::Unresolvable(host.to_owned()));
    }
    if allow_private {
        return Ok(addrs);
    }
    let first = addrs[0].ip();
    let allowed: Vec<SocketAddr> = addrs
        .into_iter()
        .filter(|a| !is_forbidden(a.ip()))
        .collect();
    if allowed.is_empty() {
        Err(Refusal::Forbidden(first))
    } else {
        Ok(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn internal_addresses_are_forbidden() {
        for s in [
            "127.0.0.1",
            "127.255.0.9",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "198.18.0.1",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "2002:7f00:1::",
            "64:ff9b:1::a00:1",
            "64:ff9b:1::101:101",
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "192.88.99.1",
        ] {
            assert!(is_forbidden(ip(s)), "{s} must be forbidden");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for s in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700:4700::1111",
            "::ffff:1.1.1.1",
            "64:ff9b::1.1.1.1",
        ] {
            assert!(!is_forbidden(ip(s)), "{s} must be allowed");
        }
    }

    #[test]
    fn only_http_urls_with_hosts_parse() {
        let t = parse_url("https://example.com/hook").expect("ok");
        assert_eq!((t.host.as_str(), t.port, t.ip), ("example.com", 443, None));
        let t = parse_url("http://[::1]:8080/x").expect("ok");
        assert_eq!(t.ip, Some(ip("::1")));
        for bad in [
            "file:///etc/passwd",
            "ftp://example.com/",
            "gopher://x/",
            "not a url",
            "http://user:pw@example.com/",
            "/relative",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn filtering_keeps_public_addresses_only() {
        let addrs = vec![
            SocketAddr::new(ip("10.0.0.1"), 80),
            SocketAddr::new(ip("1.1.1.1"), 80),
        ];
        assert_eq!(
            filter_allowed(addrs.clone(), false, "h"),
            Ok(vec![SocketAddr::new(ip("1.1.1.1"), 80)])
        );
        assert_eq!(filter_allowed(addrs.clone(), true, "h"), Ok(addrs));
        assert_eq!(
            filter_allowed(vec![SocketAddr::new(ip("127.0.0.1"), 80)], false, "h"),
            Err(Refusal::Forbidden(ip("127.0.0.1")))
        );
    }

    #[test]
    fn at_create_time_every_address_must_be_public() {
        let mixed = vec![
            SocketAddr::new(ip("1.1.1.1"), 80),
            SocketAddr::new(ip("10.0.0.1"), 80),
        ];
        assert_eq!(
            require_all_public(mixed, "h"),
            Err(Refusal::Forbidden(ip("10.0.0.1")))
        );
        let public = vec![SocketAddr::new(ip("1.1.1.1"), 80)];
        assert_eq!(require_all_public(public.clone(), "h"), Ok(public));
        assert!(require_all_public(Vec::new(), "h").is_err());
    }

    #[tokio::test]
    async fn literal_addresses_are_checked_without_dns() {
        let t = parse_url("http://169.254.169.254/latest/meta-data").expect("parses");
        assert_eq!(
            resolve_allowed(&t, false).await,
            Err(Refusal::Forbidden(ip("169.254.169.254")))
        );
        assert!(resolve_allowed(&t, true).await.is_ok());
    }
}
