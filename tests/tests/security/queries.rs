//! What the database sees: a counting proxy between the API and PostgreSQL
//! (statements by their Bind messages, connections at once), so a test can
//! say "one lookup, not a thousand" and "unknown keys never take the whole
//! pool" without timing anything.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rdev_api::config::ApiConfig;
use rdev_shared::config::Secret;
use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use rdev_tests::{Options, spawn_app_with};

/// Counters of a [`pg_proxy`].
#[derive(Default)]
struct Seen {
    /// Bind messages (one per statement executed with the extended protocol).
    binds: AtomicUsize,
    /// Connections open now, and the most ever open at once.
    open: AtomicUsize,
    peak: AtomicUsize,
}

/// Forwards 127.0.0.1:<port> to `upstream`, counting what clients send.
/// Plaintext only (the test URLs set no sslmode).
async fn pg_proxy(upstream: SocketAddr) -> (u16, Arc<Seen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Seen::default());
    let counters = seen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let seen = counters.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let now = seen.open.fetch_add(1, Ordering::SeqCst) + 1;
                seen.peak.fetch_max(now, Ordering::SeqCst);
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let down = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                });
                // Client → server, parsed message by message: the startup
                // message has no type byte, every later one does.
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 64 * 1024];
                let mut started = false;
                loop {
                    let n = match cr.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if sw.write_all(&chunk[..n]).await.is_err() {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    loop {
                        let head = if started { 5 } else { 4 };
                        if buf.len() < head {
                            break;
                        }
                        let at = head - 4;
                        let len =
                            u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
                                as usize;
                        let total = at + len;
                        if buf.len() < total {
                            break;
                        }
                        if started && buf[0] == b'B' {
                            seen.binds.fetch_add(1, Ordering::SeqCst);
                        }
                        started = true;
                        buf.drain(..total);
                    }
                }
                down.abort();
                seen.open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (port, seen)
}

/// The test database's URL, through the proxy at `port`.
fn through(url: &str, port: u16) -> String {
    let (scheme, rest) = url.split_once("://").expect("scheme");
    let (auth, rest) = rest.rsplit_once('@').map_or(("", rest), |(a, r)| (a, r));
    let path = rest.split_once('/').map_or("", |(_, p)| p);
    let at = if auth.is_empty() {
        String::new()
    } else {
        format!("{auth}@")
    };
    format!("{scheme}://{at}127.0.0.1:{port}/{path}")
}

fn upstream() -> SocketAddr {
    let url = std::env::var("RDEV_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let host = url.rsplit_once('@').map_or(url.as_str(), |(_, h)| h);
    let host = host.split('/').next().unwrap_or("127.0.0.1:5432");
    let host = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5432")
    };
    host.replace("localhost", "127.0.0.1")
        .parse()
        .expect("upstream address")
}

/// An API on the app's database and broker whose every query goes through a
/// counting proxy; `tweak` changes its settings.
async fn counted_api(
    app: &rdev_tests::TestApp,
    tweak: impl FnOnce(&mut ApiConfig),
) -> (String, Arc<Seen>) {
    let (port, seen) = pg_proxy(upstream()).await;
    let mut cfg = app.api_cfg.clone();
    cfg.db.database_url = Secret::new(through(app.env.db.database_url.expose(), port));
    tweak(&mut cfg);
    let server = rdev_api::start(cfg, rdev_shared::lifecycle::CancellationToken::new())
        .await
        .expect("api");
    (format!("http://{}", server.addr), seen)
}

#[tokio::test]
async fn a_key_for_a_thousand_projects_costs_one_project_lookup() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    let client = app.env.pool.get().await.expect("db");
    client
        .execute(
            "INSERT INTO projects (id, name, executor, default_timeout_s, max_output_bytes) \
             SELECT gen_random_uuid(), 'q' || s, '{\"kind\":\"local\"}', 60, 1024 \
             FROM generate_series(1, 1000) s",
            &[],
        )
        .await
        .expect("projects");
    drop(client);
    let (base, seen) = counted_api(&app, |_| {}).await;
    let names: Vec<String> = (1..=1000).map(|i| format!("q{i}")).collect();
    // Warm up (key lookup, rate-limit statement), then count one creation.
    let r = app
        .http
        .get(format!("{base}/v1/whoami"))
        .bearer_auth(&app.admin_key)
        .send()
        .await
        .expect("whoami");
    assert_eq!(r.status(), 200);
    let before = seen.binds.load(Ordering::SeqCst);
    let r = app
        .http
        .request(Method::POST, format!("{base}/v1/api-keys"))
        .bearer_auth(&app.admin_key)
        .json(&json!({"name": "wide", "scopes": ["commands:read"], "projects": names}))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 201);
    let statements = seen.binds.load(Ordering::SeqCst) - before;
    // Rate limit, project ids, transaction (insert, audit, commit), names.
    assert!(
        statements <= 12,
        "{statements} statements for one key of 1,000 projects"
    );
}

#[tokio::test]
async fn unknown_keys_never_hold_more_than_a_quarter_of_the_pool() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    let (base, seen) = counted_api(&app, |c| {
        c.db.pool_size = 8;
        // Many client addresses' worth of failures: the pool share alone.
        c.auth_failure_limit = "1000000/60s".parse().expect("limit");
    })
    .await;
    let flood: Vec<_> = (0..200)
        .map(|i| {
            let (http, url) = (app.http.clone(), format!("{base}/v1/projects"));
            tokio::spawn(async move {
                http.get(url)
                    .bearer_auth(format!("rdev_flood{i:0>39}"))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for f in flood {
        statuses.push(f.await.expect("task"));
    }
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 503),
        "{statuses:?}"
    );
    let peak = seen.peak.load(Ordering::SeqCst);
    // Pool of 8: key lookups may use 2 connections (one more may be the
    // API's own background work); the other 6 stay for authenticated work.
    assert!(peak <= 3, "unknown keys held {peak} connections at once");
    let r = app
        .http
        .get(format!("{base}/v1/projects"))
        .bearer_auth(&app.admin_key)
        .send()
        .await
        .expect("real request");
    assert_eq!(r.status(), 200);
}
