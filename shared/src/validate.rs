//! Field checks used by more than one endpoint, each pushing
//! [`FieldError`]s so a response lists every bad field at once. (Older
//! checks of names, workdirs and env maps live in [`crate::domain`].)

use ipnet::IpNet;

use crate::domain::{FieldError, canonical_ip};

/// Most CIDRs in one allowlist.
pub const MAX_CIDRS: usize = 100;

/// Checks a display name: 1-200 characters, no control characters.
pub fn name(field: &str, value: &str, errors: &mut Vec<FieldError>) {
    if value.trim().is_empty() || value.chars().count() > 200 || value.chars().any(char::is_control)
    {
        errors.push(FieldError::new(
            field,
            "must be 1-200 characters without control characters",
        ));
    }
}

/// Parses a CIDR list (`10.0.0.0/8`, `2001:db8::/32`; a bare address means a
/// single host) into canonical networks, host bits cleared; errors name
/// `field[i]`.
pub fn cidrs(field: &str, values: &[String], errors: &mut Vec<FieldError>) -> Vec<IpNet> {
    if values.len() > MAX_CIDRS {
        errors.push(FieldError::new(
            field,
            format!("at most {MAX_CIDRS} entries"),
        ));
        return Vec::new();
    }
    let mut out = Vec::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        match parse_cidr(v) {
            Some(n) => out.push(n),
            None => errors.push(FieldError::new(
                format!("{field}[{i}]"),
                "must be an IP address or CIDR, e.g. 10.0.0.0/8",
            )),
        }
    }
    out
}

/// Parses one CIDR or bare address.
pub fn parse_cidr(v: &str) -> Option<IpNet> {
    let v = v.trim();
    if let Ok(n) = v.parse::<IpNet>() {
        return Some(match n {
            IpNet::V6(v6) => match v6.addr().to_ipv4_mapped() {
                // `::ffff:10.0.0.0/104` is the IPv4 network 10.0.0.0/8.
                Some(v4) if v6.prefix_len() >= 96 => {
                    IpNet::new(v4.into(), v6.prefix_len() - 96).ok()?.trunc()
                }
                _ => IpNet::V6(v6).trunc(),
            },
            n => n.trunc(),
        });
    }
    v.parse::<std::net::IpAddr>()
        .ok()
        .map(|ip| IpNet::from(canonical_ip(ip)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_are_canonicalised_and_errors_are_per_entry() {
        let mut errs = Vec::new();
        let nets = cidrs(
            "allowed_ips",
            &[
                "10.1.2.3/8".into(),
                "127.0.0.1".into(),
                "nope".into(),
                "::1/128".into(),
            ],
            &mut errs,
        );
        let shown: Vec<String> = nets.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.0.0/8", "127.0.0.1/32", "::1/128"]);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "allowed_ips[2]");
    }

    #[test]
    fn names_refuse_blank_and_control_characters() {
        let mut errs = Vec::new();
        name("name", "ci bot", &mut errs);
        name("name", " ", &mut errs);
        name("name", "a\u{7}", &mut errs);
        assert_eq!(errs.len(), 2);
    }
}
