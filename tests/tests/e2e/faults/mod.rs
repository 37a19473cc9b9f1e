//! Issue 15: no stuck, lost or doubled work under faults. One test per
//! finding; each failed on the code before its fix. The findings are
//! grouped by what fails: the broker and queues, claims and reaping,
//! event streams, and storage (retention, schema).

mod claims;
mod queues;
mod storage;
mod streams;

use std::time::Duration;

use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

fn at(c: &Value, k: &str) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(c[k].as_str().expect("time")).expect("rfc3339")
}

fn rabbit() -> std::net::SocketAddr {
    "127.0.0.1:5672".parse().expect("addr")
}
