//! Per-key IP allowlists, behind trusted proxies or not.

use reqwest::Method;
use serde_json::{Value, json};

use rdev_tests::spawn_app_with;

use super::{call, no_worker, wait_rows};

#[tokio::test]
async fn ip_allowlists_use_the_peer_or_trusted_forwarded_for() {
    let mut app = spawn_app_with(no_worker()).await;
    let (_, ten) = app
        .create_key(
            json!({ "name": "ten", "scopes": ["projects:read"], "allowed_ips": ["10.0.0.0/8"] }),
        )
        .await;
    let (_, local) = app
        .create_key(json!({ "name": "local", "scopes": ["projects:read"], "allowed_ips": ["127.0.0.1/32"] }))
        .await;
    // A second instance that trusts 127.0.0.1 as a proxy.
    app.api_cfg.trusted_proxies = "127.0.0.1/32".parse().expect("proxies");
    let proxied = app.spawn_api().await;
    let direct = app.base.clone();
    // (instance, key, X-Forwarded-For, expected, why)
    let cases = [
        (
            &direct,
            &local,
            None,
            200,
            "no proxy: the peer 127.0.0.1 counts",
        ),
        (
            &direct,
            &ten,
            None,
            403,
            "no proxy: 127.0.0.1 is not in 10/8",
        ),
        (
            &direct,
            &ten,
            Some("10.1.2.3"),
            403,
            "spoofed XFF from an untrusted peer",
        ),
        (
            &direct,
            &local,
            Some("10.1.2.3"),
            200,
            "XFF ignored from an untrusted peer",
        ),
        (
            &proxied,
            &ten,
            Some("10.1.2.3"),
            200,
            "trusted proxy: the entry before it",
        ),
        (
            &proxied,
            &ten,
            Some("10.1.2.3, 127.0.0.1"),
            200,
            "trusted hops are skipped",
        ),
        (
            &proxied,
            &local,
            Some("10.1.2.3"),
            403,
            "the client, not the proxy, counts",
        ),
        (
            &proxied,
            &ten,
            None,
            403,
            "no XFF: the proxy itself is the client",
        ),
        (
            &proxied,
            &ten,
            Some("10.9.9.9, 192.0.2.1"),
            403,
            "forged entries left of the client",
        ),
    ];
    for (base, key, xff, expected, why) in cases {
        let r = call(&app, base, Method::GET, "/v1/projects", key, None, xff).await;
        assert_eq!(r.status, expected, "{why}");
    }

    let r = call(
        &app,
        &proxied,
        Method::GET,
        "/v1/projects",
        &ten,
        None,
        Some("192.0.2.1"),
    )
    .await;
    let p = r.assert_problem(403);
    assert!(
        p["detail"].as_str().unwrap_or("").contains("192.0.2.1"),
        "{p}"
    );
    let rows = wait_rows(
        &app,
        "SELECT actor, details FROM audit_log WHERE action = 'auth.denied' AND host(ip) = '192.0.2.1'",
        &[],
    )
    .await;
    assert!(
        !rows.is_empty(),
        "IP denials are audited with the client address"
    );
    let details: Value = rows[0].get(1);
    assert_eq!(rows[0].get::<_, String>(0), "ten");
    assert_eq!(details["reason"], "ip");
}
