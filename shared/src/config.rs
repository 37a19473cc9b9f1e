//! Configuration shared by every binary, read from the environment (README.md, "Configuration")
//! through `clap` so each value is also a flag and shows in `--help`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A string that must never reach a log: `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is handed to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// PostgreSQL settings.
#[derive(clap::Args, Clone, Debug)]
pub struct DbConfig {
    /// PostgreSQL connection URL.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/rdev",
        hide_default_value = false
    )]
    pub database_url: Secret,
    /// PostgreSQL URL of the role that owns the schema, used only to apply
    /// migrations (default: `DATABASE_URL`). Lets the services run as a
    /// role with DML rights only (see docs/operations/security.md).
    #[arg(long = "migrate-database-url", env = "RDEV_MIGRATE_DATABASE_URL")]
    pub migrate_database_url: Option<Secret>,
    /// Maximum connections in this process's pool.
    #[arg(long = "db-pool-size", env = "RDEV_DB_POOL_SIZE", default_value_t = 16)]
    pub pool_size: usize,
    /// Longest a statement may run before PostgreSQL cancels it (seconds,
    /// `statement_timeout` of every pooled connection; 0 = none). Keeps a
    /// stuck statement (a lock never released) from holding a heartbeat or
    /// a request. Migrations run without it.
    #[arg(
        long = "db-statement-timeout-s",
        env = "RDEV_DB_STATEMENT_TIMEOUT_S",
        default_value_t = 30
    )]
    pub statement_timeout_s: u64,
}

/// RabbitMQ settings.
#[derive(clap::Args, Clone, Debug)]
pub struct AmqpConfig {
    /// RabbitMQ connection URL.
    #[arg(
        long = "amqp-url",
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: Secret,
    /// Prefix of every exchange and queue name, so tenants and tests can share a broker.
    #[arg(long = "amqp-prefix", env = "RDEV_AMQP_PREFIX", default_value = "rdev", value_parser = parse_prefix)]
    pub prefix: String,
    /// PEM file of the CA(s) that sign the broker's certificate, for an
    /// `amqps://` URL whose server is not signed by a public CA.
    #[arg(long = "amqp-ca-file", env = "RDEV_AMQP_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
}

fn parse_prefix(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err("must be 1-64 characters of [A-Za-z0-9._-]".into())
    }
}

/// Log output format.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging settings.
#[derive(clap::Args, Clone, Debug)]
pub struct LogConfig {
    /// `text` or `json`. Filter with `RUST_LOG`.
    #[arg(long = "log-format", env = "RDEV_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

/// Parses durations written as `500ms`, `5s`, `5m`, `2h`, `90d` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| format!("invalid duration `{s}`"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86_400),
        _ => {
            return Err(format!(
                "invalid duration unit in `{s}` (use ms, s, m, h or d)"
            ));
        }
    };
    Ok(d)
}

/// Parses a boolean flag written `1/0/true/false/yes/no/on/off`.
pub fn parse_flag(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!("expected 1 or 0, got `{s}`")),
    }
}

/// Removes the password from a connection URL so it can be logged.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}://{}:***@{}", &url[..scheme_end], user, &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_duration("5w").is_err());
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn redaction_hides_password_only() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("postgres://127.0.0.1/rdev"),
            "postgres://127.0.0.1/rdev"
        );
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "***");
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(parse_prefix("rdev").is_ok());
        assert!(parse_prefix("t_0a1b.x-y").is_ok());
        assert!(parse_prefix("").is_err());
        assert!(parse_prefix("a b").is_err());
    }
}
