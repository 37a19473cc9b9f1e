//! Logging set-up shared by every binary.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global tracing subscriber: `RUST_LOG` filters (default
/// `info`), text or JSON lines on stderr. Safe to call more than once (later
/// calls do nothing), which tests rely on.
pub fn init(cfg: &LogConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let filter = never_log_query_parameters(filter);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cfg.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// `tokio_postgres` logs every statement's parameters at DEBUG: command
/// environments, stdin, key hashes. Cap that target at INFO whatever
/// `RUST_LOG` says, so no log level can leak them.
fn never_log_query_parameters(filter: EnvFilter) -> EnvFilter {
    match "tokio_postgres::query=info".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    }
}
