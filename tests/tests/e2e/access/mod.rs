//! Access control and accountability: scopes × routes, key lifecycle across
//! instances, IP allowlists, shared sliding-window rate limits, the audit
//! log and per-project command policy. This file holds what the features'
//! modules share.

mod allowlist;
mod audit;
mod keys;
mod policy;
mod rate_limits;
mod scopes;

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use rdev_tests::{Options, Resp, TestApp};

fn no_worker() -> Options {
    Options {
        worker: false,
        ..Default::default()
    }
}

/// Sends a request to `base` (an API instance) and reads it whole, except
/// event streams, whose status and headers are enough.
async fn call(
    app: &TestApp,
    base: &str,
    method: Method,
    path: &str,
    key: &str,
    body: Option<Value>,
    xff: Option<&str>,
) -> Resp {
    let mut req = app
        .http
        .request(method, format!("{base}{path}"))
        .bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    if let Some(x) = xff {
        req = req.header("x-forwarded-for", x);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let sse = headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let body = if sse {
        bytes::Bytes::new()
    } else {
        r.bytes().await.expect("body")
    };
    Resp {
        status,
        headers,
        body,
    }
}

/// Polls SQL until it returns at least one row, for audit rows written in
/// the background (denials).
async fn wait_rows(
    app: &TestApp,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Vec<tokio_postgres::Row> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let client = app.env.pool.get().await.expect("db");
        let rows = client.query(sql, params).await.expect("query");
        if !rows.is_empty() || Instant::now() > deadline {
            return rows;
        }
        drop(client);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
