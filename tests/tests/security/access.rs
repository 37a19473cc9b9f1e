//! Keys and access: minting, creator-only rotate/revoke, unauthenticated
//! load, streams of changed keys, `X-Forwarded-For`.

use std::time::Duration;

use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

use rdev_tests::{Options, TestApp, spawn_app_with};

fn no_worker() -> Options {
    Options {
        worker: false,
        ..Default::default()
    }
}

async fn with_key(
    app: &TestApp,
    method: Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> rdev_tests::Resp {
    app.request(method, path, Some(key), body).await
}

#[tokio::test]
async fn a_minted_key_is_never_stronger_than_its_creator_and_reaches_only_its_own_keys() {
    let app = spawn_app_with(no_worker()).await;
    let expires = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let r = app
        .post(
            "/v1/api-keys",
            json!({"name": "mgr", "scopes": ["keys:manage", "commands:read"],
                   "allowed_ips": ["127.0.0.0/8"], "expires_at": expires,
                   "rate_limit": {"requests": 100, "window_s": 60}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let mgr = r.json();
    let mgr_id = mgr["id"].as_str().expect("id").to_owned();
    let mgr_secret = mgr["secret"].as_str().expect("secret").to_owned();
    let mint = |body: Value| {
        let (app, key) = (&app, mgr_secret.clone());
        async move { with_key(app, Method::POST, "/v1/api-keys", &key, Some(body)).await }
    };

    // Absent limits are inherited.
    let r = mint(json!({"name": "child", "scopes": ["commands:read"]})).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let child = r.json();
    assert_eq!(child["allowed_ips"], json!(["127.0.0.0/8"]));
    assert_eq!(
        child["rate_limit"],
        json!({"requests": 100, "window_s": 60})
    );
    assert_eq!(child["expires_at"], mgr["expires_at"]);
    assert_eq!(child["created_by"], json!(mgr_id));

    // Wider ones are refused, axis by axis.
    let later = (chrono::Utc::now() + chrono::Duration::days(30)).to_rfc3339();
    for (body, axis) in [
        (
            json!({"name": "w", "scopes": ["commands:read"], "allowed_ips": ["0.0.0.0/0"]}),
            "allowed_ips",
        ),
        (
            json!({"name": "w", "scopes": ["commands:read"], "expires_at": later}),
            "expires",
        ),
        (
            json!({"name": "w", "scopes": ["commands:read"], "rate_limit": {"requests": 1000, "window_s": 60}}),
            "budget",
        ),
        (
            json!({"name": "w", "scopes": ["commands:read"], "rate_limit": {"requests": 100, "window_s": 30}}),
            "budget",
        ),
    ] {
        let p = mint(body).await.assert_problem(403);
        assert!(
            p["detail"].as_str().unwrap_or_default().contains(axis)
                || p["detail"].as_str().unwrap_or_default().contains("outlive"),
            "{p}"
        );
    }
    // Narrower ones are fine.
    let r = mint(
        json!({"name": "n", "scopes": ["commands:read"], "allowed_ips": ["127.0.0.1"],
                        "rate_limit": {"requests": 10, "window_s": 60}}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));

    // A key the admin made for someone else: visible to mgr (same scopes
    // subset), but not its to rotate or revoke.
    let (victim, victim_secret) = app
        .create_key(json!({"name": "victim", "scopes": ["commands:read"]}))
        .await;
    let path = format!("/v1/api-keys/{victim}/rotate");
    with_key(&app, Method::POST, &path, &mgr_secret, None)
        .await
        .assert_problem(403);
    let path = format!("/v1/api-keys/{victim}");
    with_key(&app, Method::DELETE, &path, &mgr_secret, None)
        .await
        .assert_problem(403);
    let r = with_key(&app, Method::GET, "/v1/commands", &victim_secret, None).await;
    assert_eq!(r.status, 200, "the victim's key still works");

    // Its own child it may rotate and revoke; the admin may touch any.
    let child_id = child["id"].as_str().expect("id");
    let r = with_key(
        &app,
        Method::POST,
        &format!("/v1/api-keys/{child_id}/rotate"),
        &mgr_secret,
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = with_key(
        &app,
        Method::DELETE,
        &format!("/v1/api-keys/{child_id}"),
        &mgr_secret,
        None,
    )
    .await;
    assert_eq!(r.status, 204);
    let r = app
        .request(
            Method::DELETE,
            &format!("/v1/api-keys/{victim}"),
            Some(&app.admin_key.clone()),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    // The refusals are audited.
    let client = app.env.pool.get().await.expect("db");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM audit_log WHERE outcome = 'denied' \
                 AND details->>'reason' IN ('escalation', 'not_creator')",
                &[],
            )
            .await
            .expect("count")
            .get(0);
        if n >= 6 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} denials audited"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn unknown_tokens_are_throttled_per_address_before_any_query() {
    // Behind a trusted proxy, so clients can have their own addresses.
    let app = spawn_app_with(Options {
        worker: false,
        trusted_proxies: "127.0.0.0/8",
        api: Some(|c| c.auth_failure_limit = "5/3600s".parse().expect("limit")),
        ..Default::default()
    })
    .await;
    let from = |ip: &'static str, key: String| {
        app.http
            .get(app.url("/v1/projects"))
            .bearer_auth(key)
            .header("x-forwarded-for", ip)
    };
    let misses = || async {
        let text = app
            .send(app.http.get(format!("{}/metrics", app.api_ops)))
            .await;
        let text = String::from_utf8_lossy(&text.body).into_owned();
        text.lines()
            .find(|l| l.starts_with("cache_misses_total{cache=\"api_keys\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let before = misses().await;
    let mut statuses = Vec::new();
    for i in 0..40 {
        let token = format!("rdev_{i:0>43}");
        let r = app.send(from("203.0.113.66", token)).await;
        statuses.push(r.status);
        if r.status == 429 {
            r.assert_problem(429);
            assert!(r.header("retry-after").is_some());
        }
    }
    let unauthorized = statuses.iter().filter(|s| **s == 401).count();
    assert_eq!(unauthorized, 5, "{statuses:?}");
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        35,
        "{statuses:?}"
    );
    let after = misses().await;
    assert!(
        after - before <= 5.0,
        "{} lookups reached PostgreSQL",
        after - before
    );
    // Other addresses are not affected, even with a key not cached yet.
    let r = app.send(from("198.51.100.1", app.admin_key.clone())).await;
    assert_eq!(r.status, 200);
    let r = app
        .send(from("198.51.100.1", "rdev_unknownkey".into()))
        .await;
    assert_eq!(r.status, 401);
}

/// Reads an event stream until it ends; returns its events (name, data).
async fn read_until_closed(resp: reqwest::Response) -> Vec<(String, Value)> {
    use eventsource_stream::Eventsource;
    let mut stream = resp.bytes_stream().eventsource();
    let mut out = Vec::new();
    // Far below the stream lifetime (1 h): a stream still open then failed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(ev))) => out.push((
                ev.event,
                serde_json::from_str(&ev.data).unwrap_or(Value::Null),
            )),
            Ok(Some(Err(_)) | None) => return out,
            Err(_) => panic!("the stream is still open: {out:?}"),
        }
    }
}

#[tokio::test]
async fn streams_of_a_revoked_rotated_or_expired_key_end_on_every_instance() {
    let mut app = spawn_app_with(no_worker()).await;
    let other = app.spawn_api().await;
    app.create_project("p", json!({})).await;
    // Queued, never run (no worker): its stream stays open.
    let id = app.run("p", json!({"command": "true"})).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let open = |base: String, key: String| {
        let (http, id) = (app.http.clone(), id.clone());
        async move {
            let r = http
                .get(format!("{base}/v1/commands/{id}/events"))
                .bearer_auth(key)
                .send()
                .await
                .expect("sse");
            assert_eq!(r.status(), 200);
            r
        }
    };
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(3)).to_rfc3339();
    let (revoked, revoked_secret) = app
        .create_key(json!({"name": "r", "scopes": ["commands:read"]}))
        .await;
    let (rotated, rotated_secret) = app
        .create_key(json!({"name": "o", "scopes": ["commands:read"]}))
        .await;
    let (_, expiring_secret) = app
        .create_key(json!({"name": "e", "scopes": ["commands:read"], "expires_at": soon}))
        .await;
    let s1 = open(other.clone(), revoked_secret).await;
    let s2 = open(other.clone(), rotated_secret).await;
    let s3 = open(app.base.clone(), expiring_secret).await;
    let r = app
        .request(
            Method::DELETE,
            &format!("/v1/api-keys/{revoked}"),
            Some(&app.admin_key.clone()),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    let r = app
        .post(&format!("/v1/api-keys/{rotated}/rotate"), json!({}))
        .await;
    assert_eq!(r.status, 200);
    for (s, why) in [(s1, "revoked"), (s2, "rotated"), (s3, "expired")] {
        let events = read_until_closed(s).await;
        let (name, data) = events.last().expect("events");
        assert_eq!(name, "reconnect", "{events:?}");
        assert!(
            data["reason"].as_str().unwrap_or_default().contains(why)
                || data["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("expired"),
            "{why}: {data}"
        );
    }
}

#[tokio::test]
async fn a_non_ascii_byte_in_x_forwarded_for_cannot_make_the_client_the_proxy() {
    let app = spawn_app_with(Options {
        worker: false,
        trusted_proxies: "127.0.0.0/8",
        ..Default::default()
    })
    .await;
    // A key usable only from the proxy's own address.
    let (_, key) = app
        .create_key(
            json!({"name": "ops", "scopes": ["projects:read"], "allowed_ips": ["127.0.0.1/32"]}),
        )
        .await;
    let get = |xff: Option<&'static [u8]>| {
        let (app, key) = (&app, key.clone());
        async move {
            let mut req = app.http.get(app.url("/v1/projects")).bearer_auth(key);
            if let Some(x) = xff {
                req = req.header(
                    "x-forwarded-for",
                    reqwest::header::HeaderValue::from_bytes(x).expect("obs-text is allowed"),
                );
            }
            app.send(req).await
        }
    };
    assert_eq!(get(None).await.status, 200, "from the proxy itself");
    get(Some(b"203.0.113.9")).await.assert_problem(403);
    // The client wrote a byte above 0x7f; the proxy appended its address.
    get(Some(b"\xff, 203.0.113.9")).await.assert_problem(403);
    get(Some(b"1.2.3.4\xe9, 203.0.113.9"))
        .await
        .assert_problem(403);
}
