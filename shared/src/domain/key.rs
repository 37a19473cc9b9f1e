//! An API key as stored, and its request budget.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Scope;

/// A request budget: at most `requests` per sliding window of `window_s` seconds.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Requests allowed per window.
    pub requests: i32,
    /// Window length in seconds.
    pub window_s: i32,
}

impl RateLimit {
    /// Largest accepted window: one day (retention keeps two windows of rows).
    pub const MAX_WINDOW_S: i32 = 86_400;
    /// Largest accepted budget per window.
    pub const MAX_REQUESTS: i32 = 1_000_000;

    /// Checks the bounds; the message names the failing part.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=Self::MAX_REQUESTS).contains(&self.requests) {
            return Err(format!("requests must be 1-{}", Self::MAX_REQUESTS));
        }
        if !(1..=Self::MAX_WINDOW_S).contains(&self.window_s) {
            return Err(format!("window_s must be 1-{}", Self::MAX_WINDOW_S));
        }
        Ok(())
    }
}

impl FromStr for RateLimit {
    type Err = String;
    /// Parses `N/<duration>`, e.g. `600/60s` or `100/1m`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (n, d) = s
            .split_once('/')
            .ok_or_else(|| format!("expected N/<duration>, e.g. 600/60s, got `{s}`"))?;
        let requests: i32 = n
            .trim()
            .parse()
            .map_err(|_| format!("invalid request count in `{s}`"))?;
        let window = crate::config::parse_duration(d)?;
        if window.subsec_nanos() != 0 || window.as_secs() == 0 {
            return Err(format!(
                "the window of `{s}` must be a whole number of seconds"
            ));
        }
        let window_s = i32::try_from(window.as_secs()).map_err(|_| "window too long".to_owned())?;
        let rl = RateLimit { requests, window_s };
        rl.validate()?;
        Ok(rl)
    }
}

/// An API key as stored (never the secret).
#[derive(Clone, Debug, PartialEq)]
pub struct ApiKey {
    /// Key id.
    pub id: Uuid,
    /// Human name.
    pub name: String,
    /// First characters of the secret.
    pub prefix: String,
    /// Granted scopes.
    pub scopes: Vec<Scope>,
    /// Projects it may touch; none = all.
    pub project_ids: Option<Vec<Uuid>>,
    /// Client networks it may be used from; none = any.
    pub allowed_ips: Option<Vec<ipnet::IpNet>>,
    /// Its own rate limit; none = the server default.
    pub rate_limit: Option<RateLimit>,
    /// Expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// Revocation time.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Last authenticated use (approximate).
    pub last_used_at: Option<DateTime<Utc>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// The key that made it (none: made from the command line).
    pub created_by: Option<Uuid>,
}

impl ApiKey {
    /// Whether the key holds `scope` (directly or through `admin`).
    pub fn has_scope(&self, scope: Scope) -> bool {
        scope.granted_by(&self.scopes)
    }

    /// Whether the key may see the project.
    pub fn can_access_project(&self, project_id: Uuid) -> bool {
        self.project_ids
            .as_ref()
            .is_none_or(|ids| ids.contains(&project_id))
    }

    /// Whether the key is usable now.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > now)
    }

    /// Whether a request from `ip` may use the key (no allowlist = any address;
    /// an unknown address never passes an allowlist).
    pub fn allows_ip(&self, ip: Option<std::net::IpAddr>) -> bool {
        match (&self.allowed_ips, ip) {
            (None, _) => true,
            (Some(nets), Some(ip)) => {
                let ip = canonical_ip(ip);
                nets.iter().any(|n| n.contains(&ip))
            }
            (Some(_), None) => false,
        }
    }
}

/// Maps IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, as a dual-stack socket
/// reports IPv4 peers) to plain IPv4, so IPv4 allowlists match them.
pub fn canonical_ip(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_parse_from_config() {
        let rl: RateLimit = "600/60s".parse().expect("default");
        assert_eq!((rl.requests, rl.window_s), (600, 60));
        let rl: RateLimit = "10/2m".parse().expect("minutes");
        assert_eq!((rl.requests, rl.window_s), (10, 120));
        for bad in ["600", "0/60s", "5/0s", "5/500ms", "x/1s", "5/2d"] {
            assert!(bad.parse::<RateLimit>().is_err(), "{bad}");
        }
    }
}
