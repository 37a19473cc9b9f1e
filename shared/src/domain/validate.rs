//! Field checks: each reports what is wrong as [`FieldError`]s (pushed onto
//! a list, so an answer names every bad field at once) or as a message the
//! caller attaches to a field.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::Serialize;

use super::key::canonical_ip;
use crate::containment::{ResourceLimits, env_name_denied};

/// One field-level validation failure.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// JSON path of the field, e.g. `executor.workdir`.
    pub field: String,
    /// What is wrong, for a person.
    pub message: String,
}

impl FieldError {
    /// Builds a field error.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Checks a project name against `^[a-z0-9][a-z0-9-]{0,62}$`.
pub fn validate_project_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err("must match ^[a-z0-9][a-z0-9-]{0,62}$".into())
    }
}

/// Checks a workdir is a plain relative path: no `..`, not absolute, no NUL.
/// Symlink escapes are checked again by the worker on the real filesystem.
pub fn validate_workdir(dir: &str) -> Result<(), String> {
    if dir.is_empty() || dir.len() > 255 {
        return Err("must be 1-255 characters".into());
    }
    if dir.starts_with('/') || dir.contains('\0') || dir.contains('\\') {
        return Err("must be a relative path".into());
    }
    if dir.split('/').any(|part| part == "..") {
        return Err("must not contain `..`".into());
    }
    Ok(())
}

/// Checks an environment variable name (`^[A-Za-z_][A-Za-z0-9_]*$`, ≤ 128).
pub fn validate_env_name(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_');
    if ok {
        Ok(())
    } else {
        Err("must match ^[A-Za-z_][A-Za-z0-9_]*$".into())
    }
}

/// Secrets a project may hold (and names an `allowed_secrets` list may have).
pub const MAX_SECRETS_PER_PROJECT: usize = 256;
/// Secrets one command may name (`secrets` and `secret_files` together).
pub const MAX_SECRETS_PER_COMMAND: usize = 64;
/// Longest secret value, in bytes.
pub const MAX_SECRET_VALUE: usize = 32 * 1024;

/// Checks a secret's name: it is also the environment variable a command
/// sees, so an environment variable name that no command or project may
/// set (`LD_PRELOAD`, `PATH`, …; see [`crate::containment::env_name_denied`]).
pub fn validate_secret_name(name: &str) -> Result<(), String> {
    validate_env_name(name)?;
    if crate::containment::env_name_denied(name, true) {
        return Err(format!("`{name}` is a reserved environment variable"));
    }
    Ok(())
}

/// Checks a secret's value: [`crate::redact::MIN_VALUE`] to
/// [`MAX_SECRET_VALUE`] bytes without NUL (a shorter value would make
/// redaction hide ordinary output).
pub fn validate_secret_value(value: &str) -> Result<(), String> {
    let min = crate::redact::MIN_VALUE;
    if value.len() < min {
        return Err(format!(
            "must be at least {min} bytes: a shorter value would be redacted from ordinary output"
        ));
    }
    if value.len() > MAX_SECRET_VALUE || value.contains('\0') {
        return Err(format!(
            "must be at most {MAX_SECRET_VALUE} bytes without NUL"
        ));
    }
    Ok(())
}

/// Checks where a secret file goes: a relative path under the secrets
/// directory, 1-255 bytes, no empty, `.` or `..` component.
pub fn validate_secret_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.len() > 255 {
        return Err("must be 1-255 characters".into());
    }
    if path.starts_with('/') || path.contains('\0') || path.contains('\\') {
        return Err("must be a relative path".into());
    }
    if path
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err("must not contain empty, `.` or `..` components".into());
    }
    Ok(())
}

/// Validates an environment map; `field` is the JSON name of the map.
pub fn validate_env(field: &str, env: &BTreeMap<String, String>, errors: &mut Vec<FieldError>) {
    const MAX_VARS: usize = 256;
    const MAX_VALUE: usize = 32 * 1024;
    if env.len() > MAX_VARS {
        errors.push(FieldError::new(
            field,
            format!("at most {MAX_VARS} variables"),
        ));
    }
    for (k, v) in env {
        if let Err(m) = validate_env_name(k) {
            errors.push(FieldError::new(format!("{field}.{k}"), m));
        }
        if v.len() > MAX_VALUE || v.contains('\0') {
            errors.push(FieldError::new(
                format!("{field}.{k}"),
                format!("value must be at most {MAX_VALUE} bytes without NUL"),
            ));
        }
    }
}

/// Checks a project's resource limits against the server's ceilings.
pub fn validate_limits(
    limits: &ResourceLimits,
    max: &ResourceLimits,
    errors: &mut Vec<FieldError>,
) {
    errors.extend(
        limits
            .violations(max)
            .into_iter()
            .map(|(field, message)| FieldError::new(field, message)),
    );
}

/// Refuses environment variables that change what programs load or run
/// ([`crate::containment::DENIED_ENV`]); `with_policy` (the project has
/// `allowed_commands`) also refuses `PATH`.
pub fn validate_env_denylist(
    field: &str,
    env: &BTreeMap<String, String>,
    with_policy: bool,
    errors: &mut Vec<FieldError>,
) {
    for name in env.keys().filter(|n| env_name_denied(n, with_policy)) {
        errors.push(FieldError::new(
            format!("{field}.{name}"),
            "may not be set: it changes what programs load or run \
             (docs/API.md, \"Environment variables\")",
        ));
    }
}

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
    fn project_names_follow_the_slug_rule() {
        for ok in ["a", "app", "my-app-2", "0abc", &"a".repeat(63)] {
            assert!(validate_project_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "A", "a_b", "a.b", "ä", &"a".repeat(64)] {
            assert!(validate_project_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn workdirs_stay_relative() {
        assert!(validate_workdir("app").is_ok());
        assert!(validate_workdir("a/b/c").is_ok());
        assert!(validate_workdir("a/..b").is_ok());
        for bad in ["", "/etc", "../x", "a/../../x", "a/..", "a\0b"] {
            assert!(validate_workdir(bad).is_err(), "{bad:?}");
        }
    }

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
