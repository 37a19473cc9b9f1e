//! The client's address: the socket peer, unless the peer is a trusted
//! proxy (`RDEV_TRUSTED_PROXIES`); then `X-Forwarded-For` is read from the
//! right, skipping trusted proxies, and the first address that is not one
//! is the client. Entries left of it were written by the client itself and
//! are never believed, so an untrusted peer cannot spoof its address.
//!
//! The header is read as bytes, entry by entry: a client can put any byte
//! in the part it writes, and one non-ASCII byte there must not make the
//! whole header unreadable (the client would then be taken for the proxy).

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;
use rdev_shared::domain::canonical_ip;

fn trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    proxies.iter().any(|n| n.contains(&ip))
}

/// Resolves the client address of a request from `peer`.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, proxies: &[IpNet]) -> IpAddr {
    let mut client = canonical_ip(peer);
    if !trusted(client, proxies) {
        return client;
    }
    // Several X-Forwarded-For headers form one list, in order. Bounded:
    // the header block itself is (hyper's 64 KiB limit).
    let hops: Vec<&[u8]> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .collect();
    for hop in hops.iter().rev() {
        // Some proxies append the port (`1.2.3.4:5678`, `[2001:db8::1]:443`).
        let parsed = std::str::from_utf8(hop).map_err(|_| ()).and_then(|hop| {
            hop.parse::<IpAddr>()
                .or_else(|_| hop.parse::<std::net::SocketAddr>().map(|s| s.ip()))
                .map_err(|_| ())
        });
        match parsed {
            Ok(ip) => {
                client = canonical_ip(ip);
                if !trusted(client, proxies) {
                    return client;
                }
            }
            // A garbled entry: nothing left of it can be trusted; the last
            // trusted hop is the best address known.
            Err(_) => return client,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(xff: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert("x-forwarded-for", xff.parse().expect("header"));
        m
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn a_non_ascii_byte_spoils_only_its_own_entry() {
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let mut m = HeaderMap::new();
        m.insert(
            "x-forwarded-for",
            axum::http::HeaderValue::from_bytes(b"\xff1.2.3.4, 203.0.113.9").expect("obs-text"),
        );
        assert_eq!(resolve(ip("10.0.0.1"), &m, &proxies), ip("203.0.113.9"));
    }

    #[test]
    fn untrusted_peers_cannot_spoof() {
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        assert_eq!(
            resolve(ip("203.0.113.9"), &h("1.2.3.4"), &proxies),
            ip("203.0.113.9")
        );
        assert_eq!(
            resolve(ip("127.0.0.1"), &h("1.2.3.4"), &[]),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn trusted_proxies_are_skipped_from_the_right() {
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        // client-forged, real client, inner proxy; peer = outer proxy.
        assert_eq!(
            resolve(
                ip("10.0.0.1"),
                &h("6.6.6.6, 198.51.100.7, 10.1.1.1"),
                &proxies
            ),
            ip("198.51.100.7")
        );
        assert_eq!(
            resolve(ip("10.0.0.1"), &HeaderMap::new(), &proxies),
            ip("10.0.0.1")
        );
        assert_eq!(
            resolve(ip("10.0.0.1"), &h("junk, 10.2.2.2"), &proxies),
            ip("10.2.2.2")
        );
        assert_eq!(
            resolve(ip("::ffff:10.0.0.1"), &h("198.51.100.7"), &proxies),
            ip("198.51.100.7")
        );
        assert_eq!(
            resolve(ip("10.0.0.1"), &h("198.51.100.7:5678"), &proxies),
            ip("198.51.100.7")
        );
        assert_eq!(
            resolve(ip("10.0.0.1"), &h("[2001:db8::1]:443"), &proxies),
            ip("2001:db8::1")
        );
    }
}
