//! Bad input and resource use: bounded downloads, `Last-Event-ID`, slow
//! bodies, the connection cap, deliveries pages, many projects, `/docs`
//! headers, SSRF ranges.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use rdev_tests::{Options, spawn_app_with};

fn no_worker() -> Options {
    Options {
        worker: false,
        ..Default::default()
    }
}

#[tokio::test]
async fn output_downloads_are_capped_per_key_and_the_slot_returns() {
    let app = spawn_app_with(Options {
        worker: false,
        api: Some(|c| c.output_max_per_key = 1),
        ..Default::default()
    })
    .await;
    app.create_project("p", json!({})).await;
    let id = app.run("p", json!({"command": "true"})).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    // 24 MiB of stored output: more than the socket buffers hold, so a
    // client that does not read keeps its download open.
    let client = app.env.pool.get().await.expect("db");
    client
        .execute(
            "INSERT INTO command_output (command_id, seq, stream, data) \
             SELECT $1::text::uuid, s, 'stdout', decode(repeat('61', 65536), 'hex') \
             FROM generate_series(1, 384) s",
            &[&id],
        )
        .await
        .expect("chunks");
    drop(client);
    let url = app.url(&format!("/v1/commands/{id}/output"));
    let first = app
        .http
        .get(&url)
        .bearer_auth(&app.admin_key)
        .send()
        .await
        .expect("first");
    assert_eq!(first.status(), 200);
    let second = app
        .send(app.http.get(&url).bearer_auth(&app.admin_key))
        .await;
    let p = second.assert_problem(429);
    assert!(
        p["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("download"),
        "{p}"
    );
    drop(first);
    // The slot comes back when the first client goes away.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = app
            .send(app.http.get(&url).bearer_auth(&app.admin_key))
            .await;
        if r.status == 200 {
            assert_eq!(r.body.len(), 384 * 65536);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "slot never returned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_last_event_id_of_i64_max_is_a_clear_400() {
    let app = spawn_app_with(no_worker()).await;
    app.create_project("p", json!({})).await;
    let id = app.run("p", json!({"command": "true"})).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let url = app.url(&format!("/v1/commands/{id}/events"));
    for bad in [i64::MAX.to_string(), (1i64 << 53).to_string(), "-1".into()] {
        let r = app
            .send(
                app.http
                    .get(&url)
                    .bearer_auth(&app.admin_key)
                    .header("last-event-id", bad.as_str()),
            )
            .await;
        let p = r.assert_problem(400);
        assert!(
            p["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("Last-Event-ID"),
            "{p}"
        );
    }
    let r = app
        .http
        .get(&url)
        .bearer_auth(&app.admin_key)
        .header("last-event-id", ((1i64 << 53) - 1).to_string())
        .send()
        .await
        .expect("sse");
    assert_eq!(r.status(), 200);
}

/// Sends raw bytes on a fresh connection and reads the answer's status line
/// (the server closes the connection after it, or the client gives up).
async fn raw_status(addr: &str, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // Far beyond the 1 s body deadline of these tests; a hang fails here.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("no answer: {}", String::from_utf8_lossy(&buf)),
        }
    }
    String::from_utf8_lossy(&buf)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_trickled_body_is_answered_408_and_connections_are_capped() {
    let app = spawn_app_with(Options {
        worker: false,
        api: Some(|c| {
            c.body_read_timeout = Duration::from_secs(1);
            c.max_connections = 3;
        }),
        ..Default::default()
    })
    .await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let head = format!(
        "POST /v1/projects HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"na",
        app.admin_key
    );
    let status = raw_status(&addr, head.as_bytes()).await;
    assert!(status.starts_with("HTTP/1.1 408"), "{status}");

    // Three idle connections take every slot; the fourth is answered 503.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(
            tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect"),
        );
    }
    // The accept loop has taken them once a request on a fourth is refused.
    let status = raw_status(&addr, b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(status.starts_with("HTTP/1.1 503"), "{status}");
    drop(idle);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = raw_status(
            &addr,
            b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await;
        if status.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn deliveries_pages_are_capped_in_bytes() {
    let app = spawn_app_with(no_worker()).await;
    let w = app
        .post(
            "/v1/webhooks",
            json!({"url": "http://127.0.0.1:9/hook", "events": ["*"]}),
        )
        .await
        .json();
    let wid = w["id"].as_str().expect("id").to_owned();
    // 60 deliveries, each with 8 attempts carrying a 20 KB excerpt: ~9.6 MB.
    let client = app.env.pool.get().await.expect("db");
    client
        .batch_execute(&format!(
            "INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, payload, status) \
             SELECT gen_random_uuid(), '{wid}', gen_random_uuid(), 'command.failed', '\\x7b7d', 'dead' \
             FROM generate_series(1, 60);
             INSERT INTO webhook_attempts (delivery_id, status_code, duration_ms, response_excerpt) \
             SELECT d.id, 500, 3, repeat('x', 20000) FROM webhook_deliveries d, generate_series(1, 8);"
        ))
        .await
        .expect("deliveries");
    drop(client);
    let mut seen = std::collections::HashSet::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let q = cursor
            .as_ref()
            .map(|c| format!("&cursor={c}"))
            .unwrap_or_default();
        let r = app
            .get(&format!("/v1/webhooks/{wid}/deliveries?limit=200{q}"))
            .await;
        assert_eq!(r.status, 200);
        assert!(
            r.body.len() <= 1024 * 1024 + 4096,
            "a page of {} bytes",
            r.body.len()
        );
        let page: Value = r.json();
        for d in page["items"].as_array().expect("items") {
            assert!(
                seen.insert(d["id"].as_str().expect("id").to_owned()),
                "no repeats"
            );
            assert_eq!(d["attempts"].as_array().map(Vec::len), Some(8));
        }
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        assert!(pages < 100);
    }
    assert_eq!(seen.len(), 60);
    assert!(pages >= 10, "{pages} pages");
}

#[tokio::test]
async fn a_key_can_name_a_thousand_projects_and_a_missing_one_is_named_by_index() {
    let app = spawn_app_with(no_worker()).await;
    let client = app.env.pool.get().await.expect("db");
    client
        .execute(
            "INSERT INTO projects (id, name, executor, default_timeout_s, max_output_bytes) \
             SELECT gen_random_uuid(), 'p' || s, '{\"kind\":\"local\"}', 60, 1024 \
             FROM generate_series(1, 1000) s",
            &[],
        )
        .await
        .expect("projects");
    drop(client);
    let mut names: Vec<String> = (1..=1000).map(|i| format!("p{i}")).collect();
    let r = app
        .post(
            "/v1/api-keys",
            json!({"name": "wide", "scopes": ["commands:read"], "projects": names}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["projects"].as_array().map(Vec::len), Some(1000));
    names[500] = "nope".into();
    let p = app
        .post(
            "/v1/api-keys",
            json!({"name": "wide", "scopes": ["commands:read"], "projects": names}),
        )
        .await
        .assert_problem(422);
    assert_eq!(p["errors"].as_array().map(Vec::len), Some(1));
    assert_eq!(p["errors"][0]["field"], "projects[500]");
}

#[tokio::test]
async fn the_docs_page_carries_a_policy_and_cannot_be_framed() {
    let app = spawn_app_with(no_worker()).await;
    for path in ["/docs/", "/docs/swagger-initializer.js"] {
        let r = app.send(app.http.get(app.url(path))).await;
        assert_eq!(r.status, 200, "{path}");
        let csp = r.header("content-security-policy").unwrap_or_default();
        assert!(
            csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"),
            "{csp}"
        );
        assert!(!csp.contains("'unsafe-eval'"));
        assert_eq!(r.header("x-frame-options").as_deref(), Some("DENY"));
        assert_eq!(
            r.header("x-content-type-options").as_deref(),
            Some("nosniff")
        );
    }
}

#[tokio::test]
async fn webhook_urls_into_nat64_teredo_or_6to4_relays_are_refused() {
    let app = spawn_app_with(Options {
        worker: false,
        webhook_allow_private: false,
        ..Default::default()
    })
    .await;
    for url in [
        "http://[64:ff9b:1::a00:1]/hook",
        "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/hook",
        "http://192.88.99.1/hook",
        "http://localhost/hook",
    ] {
        let p = app
            .post("/v1/webhooks", json!({"url": url, "events": ["*"]}))
            .await
            .assert_problem(422);
        assert_eq!(p["errors"][0]["field"], "url", "{url}: {p}");
    }
    let r = app
        .request(
            Method::GET,
            "/v1/webhooks",
            Some(&app.admin_key.clone()),
            None,
        )
        .await;
    assert_eq!(r.json()["items"], json!([]));
}

#[tokio::test]
async fn metrics_are_served_only_on_the_operations_listener() {
    let app = spawn_app_with(no_worker()).await;
    let public = app.send(app.http.get(app.url("/metrics"))).await;
    public.assert_problem(404);
    let ops = app
        .send(app.http.get(format!("{}/metrics", app.api_ops)))
        .await;
    assert_eq!(ops.status, 200);
    assert!(String::from_utf8_lossy(&ops.body).contains("http_requests_total"));
    // Probes keep working on the public port.
    assert_eq!(app.send(app.http.get(app.url("/health"))).await.status, 200);
    // (`/ready` answers 503 until the API's broker links are up.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while app.send(app.http.get(app.url("/ready"))).await.status != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
