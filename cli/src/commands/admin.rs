//! `rdev keys …`, `rdev webhooks …`, `rdev audit`: administration.

use serde_json::{Map, Value, json};

use super::page_query;
use crate::args::{AuditArgs, KeyCreateArgs, KeysCmd, WebhookCreateArgs, WebhooksCmd};
use crate::client::{Client, ClientError};
use crate::output::{Style, Table, field, note, print_done, print_json, print_list, print_object};
use crate::units::seg;

const KEY_FIELDS: &[&str] = &[
    "id",
    "name",
    "prefix",
    "scopes",
    "projects",
    "allowed_ips",
    "rate_limit",
    "expires_at",
    "revoked_at",
    "last_used_at",
    "created_at",
];

const WEBHOOK_FIELDS: &[&str] = &[
    "id",
    "url",
    "events",
    "project",
    "enabled",
    "disabled_reason",
    "created_at",
];

/// The body of `POST /v1/api-keys`.
pub fn key_body(a: &KeyCreateArgs) -> Value {
    let mut b = Map::new();
    b.insert("name".into(), json!(a.name));
    b.insert("scopes".into(), json!(a.scopes));
    if !a.projects.is_empty() {
        b.insert("projects".into(), json!(a.projects));
    }
    if !a.allowed_ips.is_empty() {
        b.insert("allowed_ips".into(), json!(a.allowed_ips));
    }
    if let Some((requests, window_s)) = a.rate_limit {
        b.insert(
            "rate_limit".into(),
            json!({ "requests": requests, "window_s": window_s }),
        );
    }
    if let Some(e) = &a.expires_at {
        b.insert("expires_at".into(), json!(e));
    }
    Value::Object(b)
}

/// The body of `POST /v1/webhooks`.
pub fn webhook_body(a: &WebhookCreateArgs) -> Value {
    let mut b = Map::new();
    b.insert("url".into(), json!(a.url));
    b.insert("events".into(), json!(a.events));
    if let Some(p) = &a.project {
        b.insert("project".into(), json!(p));
    }
    Value::Object(b)
}

/// Shows an object that carries a once-only `secret`: the secret goes last
/// on stdout (easy to capture) with a warning on stderr.
fn print_with_secret(style: &Style, v: &Value, fields: &[&str]) {
    if style.json {
        return print_json(v);
    }
    print_object(style, v, fields);
    if let Some(s) = v.get("secret").and_then(Value::as_str) {
        note("the secret below is shown only once; store it now");
        crate::output::out(&format!("{s}\n"));
    }
}

/// Runs a `keys` subcommand.
pub async fn keys(client: &Client, style: &Style, cmd: &KeysCmd) -> Result<i32, ClientError> {
    match cmd {
        KeysCmd::Ls(page) => {
            let answer = client.get("/v1/api-keys", &page_query(page)).await?;
            print_list(style, &answer, |items| {
                let mut t = Table::new(&[
                    "ID",
                    "NAME",
                    "PREFIX",
                    "SCOPES",
                    "PROJECTS",
                    "EXPIRES",
                    "REVOKED",
                    "LAST_USED",
                ]);
                for k in items {
                    t.row(vec![
                        field(k, "id"),
                        field(k, "name"),
                        field(k, "prefix"),
                        field(k, "scopes"),
                        field(k, "projects"),
                        field(k, "expires_at"),
                        field(k, "revoked_at"),
                        field(k, "last_used_at"),
                    ]);
                }
                t
            });
        }
        KeysCmd::Create(a) => {
            let k = client.post("/v1/api-keys", &key_body(a)).await?;
            print_with_secret(style, &k, KEY_FIELDS);
        }
        KeysCmd::Revoke { id } => {
            let answer = client.delete(&format!("/v1/api-keys/{}", seg(id))).await?;
            print_done(style, &answer, &format!("revoked key {id}"));
        }
        KeysCmd::Rotate { id } => {
            let k = client
                .post(&format!("/v1/api-keys/{}/rotate", seg(id)), &json!({}))
                .await?;
            print_with_secret(style, &k, KEY_FIELDS);
        }
    }
    Ok(0)
}

/// Runs a `webhooks` subcommand.
pub async fn webhooks(
    client: &Client,
    style: &Style,
    cmd: &WebhooksCmd,
) -> Result<i32, ClientError> {
    match cmd {
        WebhooksCmd::Ls(page) => {
            let answer = client.get("/v1/webhooks", &page_query(page)).await?;
            print_list(style, &answer, webhooks_table);
        }
        WebhooksCmd::Create(a) => {
            let w = client.post("/v1/webhooks", &webhook_body(a)).await?;
            print_with_secret(style, &w, WEBHOOK_FIELDS);
        }
        WebhooksCmd::Delete { id } => {
            let answer = client.delete(&format!("/v1/webhooks/{}", seg(id))).await?;
            print_done(style, &answer, &format!("deleted webhook {id}"));
        }
        WebhooksCmd::Deliveries { id, page } => {
            let answer = client
                .get(
                    &format!("/v1/webhooks/{}/deliveries", seg(id)),
                    &page_query(page),
                )
                .await?;
            print_list(style, &answer, deliveries_table);
        }
        WebhooksCmd::Redeliver { id, delivery_id } => {
            let answer = client
                .post(
                    &format!(
                        "/v1/webhooks/{}/deliveries/{}/redeliver",
                        seg(id),
                        seg(delivery_id)
                    ),
                    &json!({}),
                )
                .await?;
            print_done(
                style,
                &answer,
                &format!("redelivery of {delivery_id} scheduled"),
            );
        }
        WebhooksCmd::Test { id } => {
            let answer = client
                .post(&format!("/v1/webhooks/{}/test", seg(id)), &json!({}))
                .await?;
            print_done(
                style,
                &answer,
                &format!(
                    "test event {} queued for webhook {id}",
                    field(&answer, "event_id")
                ),
            );
        }
    }
    Ok(0)
}

fn webhooks_table(items: &[Value]) -> Table {
    let mut t = Table::new(&["ID", "URL", "EVENTS", "PROJECT", "ENABLED", "REASON"]);
    for w in items {
        t.row(vec![
            field(w, "id"),
            field(w, "url"),
            field(w, "events"),
            field(w, "project"),
            field(w, "enabled"),
            field(w, "disabled_reason"),
        ]);
    }
    t
}

/// Deliveries, with the HTTP status of the last attempt.
fn deliveries_table(items: &[Value]) -> Table {
    let mut t = Table::new(&[
        "ID",
        "EVENT",
        "TYPE",
        "STATUS",
        "ATTEMPTS",
        "LAST_CODE",
        "NEXT_ATTEMPT",
    ]);
    for d in items {
        let attempts = d
            .get("attempts")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let last_code = match d.get("last_status_code") {
            Some(Value::Number(n)) => n.to_string(),
            _ => attempts
                .last()
                .map_or_else(|| "-".to_owned(), |a| field(a, "status_code")),
        };
        t.row(vec![
            field(d, "id"),
            field(d, "event_id"),
            field(d, "event_type"),
            field(d, "status"),
            attempts.len().to_string(),
            last_code,
            field(d, "next_attempt_at"),
        ]);
    }
    t
}

/// `rdev audit`.
pub async fn audit(client: &Client, style: &Style, a: &AuditArgs) -> Result<i32, ClientError> {
    let mut q = page_query(&a.page);
    for (k, v) in [
        ("actor", &a.actor),
        ("action", &a.action),
        ("project", &a.project),
        ("since", &a.since),
        ("until", &a.until),
    ] {
        if let Some(v) = v {
            q.push((k, v.clone()));
        }
    }
    let answer = client.get("/v1/audit", &q).await?;
    print_list(style, &answer, |items| {
        let mut t = Table::new(&[
            "AT", "ACTOR", "ACTION", "TARGET", "PROJECT", "OUTCOME", "IP",
        ]);
        for e in items {
            t.row(vec![
                field(e, "at"),
                field(e, "actor"),
                field(e, "action"),
                format!("{}/{}", field(e, "target_type"), field(e, "target_id")),
                field(e, "project"),
                field(e, "outcome"),
                field(e, "ip"),
            ]);
        }
        t
    });
    Ok(0)
}
