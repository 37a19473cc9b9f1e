//! Secrets at rest and in transit.

use serde_json::json;

use rdev_tests::{Options, spawn_app_with};

#[tokio::test]
async fn project_env_values_are_write_only() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    let r = app
        .post(
            "/v1/projects",
            json!({"name": "p", "env": {"TOKEN": "hunter2-secret", "A": "1"}}),
        )
        .await;
    assert_eq!(r.status, 201);
    let answers = [
        r,
        app.get("/v1/projects/p").await,
        app.get("/v1/projects").await,
        app.request(
            reqwest::Method::PATCH,
            "/v1/projects/p",
            Some(&app.admin_key.clone()),
            Some(json!({"env": {"TOKEN": "hunter3-secret"}})),
        )
        .await,
    ];
    for a in &answers {
        assert_eq!(
            a.status,
            200.max(a.status.min(201)),
            "{}",
            String::from_utf8_lossy(&a.body)
        );
        let text = String::from_utf8_lossy(&a.body);
        assert!(!text.contains("hunter"), "a value leaked: {text}");
        assert!(text.contains("\"env_names\""), "{text}");
    }
    assert_eq!(answers[1].json()["env_names"], json!(["A", "TOKEN"]));
    assert_eq!(answers[3].json()["env_names"], json!(["TOKEN"]));
    assert!(answers[1].json().get("env").is_none());
}

#[tokio::test]
async fn secrets_are_sealed_at_rest_and_reencrypt_moves_them_to_the_new_key() {
    use rdev_shared::crypto::KeyRing;
    use std::time::Duration;
    let app = spawn_app_with(Options::default()).await;
    let r = app
        .post(
            "/v1/projects",
            json!({"name": "p", "env": {"PTOK": "project-secret-1"}}),
        )
        .await;
    assert_eq!(r.status, 201);
    let w = app
        .post(
            "/v1/webhooks",
            json!({"url": "http://127.0.0.1:9/hook", "events": ["*"],
                   "secret": "whsec_c2VjcmV0LXNpZ25pbmcta2V5LTI0LWJ5dGVzISE="}),
        )
        .await;
    assert_eq!(w.status, 201, "{}", String::from_utf8_lossy(&w.body));
    let c = app
        .run(
            "p",
            json!({"command": "cat; echo \" $PTOK $CTOK\"", "env": {"CTOK": "command-secret-2"},
                   "stdin": "stdin-secret-3"}),
        )
        .await;
    let id = c["id"].as_str().expect("id").to_owned();
    let s = app
        .request(
            reqwest::Method::PUT,
            "/v1/projects/p/secrets/PSECRET",
            Some(&app.admin_key.clone()),
            Some(json!({"value": "project-secret-4"})),
        )
        .await;
    assert_eq!(s.status, 201, "{}", String::from_utf8_lossy(&s.body));
    let done = app.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    // Input typed into an interactive command is sealed too.
    let typed = app
        .run("p", json!({"command": "cat", "stdin": "pipe"}))
        .await;
    let typed = typed["id"].as_str().expect("id").to_owned();
    let r = app
        .send(
            app.http
                .post(app.url(&format!("/v1/commands/{typed}/stdin?eof=true")))
                .bearer_auth(&app.admin_key)
                .body("typed-secret-5\n"),
        )
        .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let done = app.wait_terminal(&typed, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(app.output(&typed, None).await, b"typed-secret-5\n");
    // The worker opened them: the command saw the plaintext.
    let out = String::from_utf8_lossy(&app.output(&id, None).await).into_owned();
    assert_eq!(
        out.trim(),
        "stdin-secret-3 project-secret-1 command-secret-2"
    );

    // At rest, every one of them is sealed.
    let client = app.env.pool.get().await.expect("db");
    let row = client
        .query_one(
            "SELECT (SELECT env::text FROM projects), c.env::text, convert_from(c.stdin, 'UTF8'), \
             (SELECT secret FROM webhooks), \
             (SELECT convert_from(data, 'UTF8') FROM command_input WHERE kind = 'data'), \
             (SELECT value FROM project_secrets) \
             FROM commands c WHERE c.stdin IS NOT NULL",
            &[],
        )
        .await
        .expect("row");
    for i in 0..6 {
        let v: String = row.get(i);
        assert!(!v.contains("secret"), "column {i} holds plaintext: {v}");
        assert!(
            v.trim_matches('"').starts_with("enc:v1:test1:"),
            "column {i}: {v}"
        );
    }

    // Rotation: a new key first, the old one still decrypts; reencrypt
    // moves every value to the new key.
    let ring = KeyRing::parse(&format!(
        "{},{}",
        KeyRing::generate_entry("test2"),
        rdev_tests::TEST_ENCRYPTION_KEYS
    ))
    .expect("ring");
    let report = rdev_shared::db::reencrypt::run(&client, &ring)
        .await
        .expect("reencrypt");
    assert_eq!(
        (
            report.project_env,
            report.command_env,
            report.command_stdin,
            report.webhook_secret,
            report.command_input,
            report.project_secret
        ),
        // Two command env values: the typed command's (empty) env is
        // sealed too.
        (1, 2, 1, 1, 1, 1)
    );
    let again = rdev_shared::db::reencrypt::run(&client, &ring)
        .await
        .expect("again");
    assert_eq!(again, Default::default(), "idempotent");
    let secret: String = client
        .query_one("SELECT secret FROM webhooks", &[])
        .await
        .expect("row")
        .get(0);
    assert!(secret.starts_with("enc:v1:test2:"), "{secret}");
    let value: String = client
        .query_one("SELECT value FROM project_secrets", &[])
        .await
        .expect("row")
        .get(0);
    assert_eq!(
        ring.open_str(&value, rdev_shared::db::secrets::VALUE_FIELD)
            .expect("opens"),
        "project-secret-4"
    );
    assert_eq!(
        ring.open_str(&secret, rdev_shared::db::webhooks::SECRET_FIELD)
            .expect("opens"),
        "whsec_c2VjcmV0LXNpZ25pbmcta2V5LTI0LWJ5dGVzISE="
    );
}

#[tokio::test]
async fn a_rotated_webhook_secret_signs_beside_the_new_one_during_the_overlap() {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use rdev_shared::webhook_sign;

    type Seen = Arc<Mutex<Vec<(axum::http::HeaderMap, bytes::Bytes)>>>;
    let seen: Seen = Arc::default();
    let app_seen = seen.clone();
    let receiver =
        axum::Router::new().fallback(move |headers: axum::http::HeaderMap, body: bytes::Bytes| {
            let seen = app_seen.clone();
            async move {
                seen.lock().expect("lock").push((headers, body));
                "ok"
            }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, receiver).await;
    });

    let app = spawn_app_with(Options {
        worker: false,
        dispatcher: true,
        ..Default::default()
    })
    .await;
    let old = "whsec_b2xkLXNlY3JldC1vZi10aGUtcmVjZWl2ZXItMzI=";
    let w = app
        .post(
            "/v1/webhooks",
            json!({"url": format!("http://{addr}/hook"), "events": ["*"], "secret": old}),
        )
        .await
        .json();
    let id = w["id"].as_str().expect("id").to_owned();
    assert_eq!(w["previous_secret_expires_at"], serde_json::Value::Null);
    let r = app
        .post(&format!("/v1/webhooks/{id}/rotate-secret"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let rotated = r.json();
    let new = rotated["secret"].as_str().expect("new secret").to_owned();
    assert_ne!(new, old);
    let until: chrono::DateTime<chrono::Utc> = rotated["previous_secret_expires_at"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("overlap end");
    let overlap = until - chrono::Utc::now();
    assert!(overlap > chrono::Duration::hours(23) && overlap <= chrono::Duration::hours(24));
    // The secret is never shown again.
    assert!(
        app.get(&format!("/v1/webhooks/{id}"))
            .await
            .json()
            .get("secret")
            .is_none()
    );

    let r = app
        .post(&format!("/v1/webhooks/{id}/test"), json!({}))
        .await;
    assert_eq!(r.status, 202);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (headers, body) = loop {
        if let Some(hit) = seen.lock().expect("lock").first().cloned() {
            break hit;
        }
        assert!(tokio::time::Instant::now() < deadline, "no delivery");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let signatures = h("webhook-signature");
    assert_eq!(
        signatures
            .split(' ')
            .filter(|s| s.starts_with("v1,"))
            .count(),
        2,
        "{signatures}"
    );
    let now = chrono::Utc::now().timestamp();
    for secret in [old, new.as_str()] {
        webhook_sign::verify(
            secret,
            &h("webhook-id"),
            &h("webhook-timestamp"),
            &signatures,
            &body,
            now,
            300,
        )
        .unwrap_or_else(|e| panic!("{secret}: {e}"));
    }
}
