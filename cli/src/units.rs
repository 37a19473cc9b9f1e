//! The CLI's bottom module: how values are written on the command line and
//! in URLs. Everything else may import it; it imports nothing of the CLI.
//!
//! Durations and sizes are written as the services' configuration writes
//! them (`rdev_shared::config::parse_duration`,
//! `rdev_shared::containment::parse_bytes`), so `RDEV_…=5m` and
//! `--duration 5m` mean the same thing. The CLI ships alone and depends on
//! no rdev crate, so it keeps its own copy of those two small parsers; the
//! tests below hold the copies to the originals (a dev-dependency).

use std::time::Duration;

/// A duration: `500ms`, `10s`, `2m`, `1h`, `1d` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| format!("invalid duration `{s}`"))?;
    let secs = |mult: u64| {
        n.checked_mul(mult)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("duration `{s}` is too large"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => Err(format!(
            "invalid duration unit in `{s}` (use ms, s, m, h or d)"
        )),
    }
}

/// A byte count or rate: `1048576`, `64K`, `10M`, `1G`, `1T` (powers of
/// 1024), optionally followed by `B`/`iB` and, for rates, `/s`: `64KiB`,
/// `10MB/s`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, ""),
    };
    let n: u64 = num.parse().map_err(|_| format!("invalid size `{s}`"))?;
    let mult: u64 = match unit {
        "" => 1,
        "K" | "k" => 1 << 10,
        "M" | "m" => 1 << 20,
        "G" | "g" => 1 << 30,
        "T" | "t" => 1 << 40,
        _ => return Err(format!("invalid size unit in `{s}` (use K, M, G or T)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size `{s}` is too large"))
}

/// Escapes a value for use as one URL path segment (RFC 3986 unreserved
/// characters stay, every other byte is percent-encoded).
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_the_services_configuration() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    /// The copies accept exactly what the services' parsers accept, with
    /// the same values.
    #[test]
    fn the_copies_agree_with_the_services_parsers() {
        for s in [
            "0", "7", "250ms", "10s", "5m", "2h", "2d", " 3s ", "5w", "1.5s", "-1s", "", "s",
            "10M", "64K", "64KiB", "1G", "2T", "123", "1B", "10X", "1.5M", "-1",
        ] {
            assert_eq!(
                parse_duration(s).ok(),
                rdev_shared::config::parse_duration(s).ok(),
                "duration {s:?}"
            );
            assert_eq!(
                parse_bytes(s).ok(),
                rdev_shared::containment::parse_bytes(s)
                    .ok()
                    .map(|n| n as u64),
                "size {s:?}"
            );
        }
    }

    #[test]
    fn sizes_and_rates_parse() {
        assert_eq!(parse_bytes("10M"), Ok(10 * 1024 * 1024));
        assert_eq!(parse_bytes("64KiB"), Ok(64 * 1024));
        assert_eq!(parse_bytes("1MB/s"), Ok(1024 * 1024));
        assert_eq!(parse_bytes("123"), Ok(123));
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("10X").is_err());
    }

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(seg("a b/c"), "a%20b%2Fc");
        assert_eq!(seg("ok-1_2.3~"), "ok-1_2.3~");
        assert_eq!(seg("é"), "%C3%A9");
    }
}
