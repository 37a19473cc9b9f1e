//! Metrics on every binary, the SSE gauge and limits, and secrets kept out
//! of logs.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use rdev_tests::{Options, TestApp, spawn_app_with};

const WAIT: Duration = Duration::from_secs(30);

pub(crate) async fn scrape(app: &TestApp, base: &str) -> String {
    let r = app.send(app.http.get(format!("{base}/metrics"))).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain"))
    );
    String::from_utf8(r.body.to_vec()).expect("utf8")
}

pub(crate) fn gauge(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in metrics"))
}

#[tokio::test]
async fn every_binary_exports_its_metrics() {
    let app = spawn_app_with(Options {
        dispatcher: true,
        ..Default::default()
    })
    .await;
    app.create_project("p", json!({})).await;
    let c = app.run("p", json!({"command": "echo metrics"})).await;
    app.wait_terminal(c["id"].as_str().expect("id"), WAIT).await;

    let common = [
        "commands_active",
        "commands_total",
        "command_duration_seconds",
        "command_output_bytes_total",
        "amqp_published_total",
        "amqp_consumed_total",
        "outbox_pending",
        "webhook_deliveries_total",
        "webhook_delivery_duration_seconds",
        "cache_hits_total",
        "cache_misses_total",
        "db_pool_connections",
        "process_resident_memory_bytes",
        "sse_connections_active",
        "db_batches_total",
        "db_batched_commands_total",
    ];
    let api = scrape(&app, &app.api_ops).await;
    let worker = scrape(&app, app.worker_ops.as_deref().expect("worker")).await;
    let dispatcher = scrape(&app, app.dispatcher_ops.as_deref().expect("dispatcher")).await;
    for (who, text) in [
        ("api", &api),
        ("worker", &worker),
        ("dispatcher", &dispatcher),
    ] {
        for name in common {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{who} lacks {name}"
            );
        }
        assert!(
            gauge(text, "process_resident_memory_bytes") > 1e6,
            "{who} reports its memory"
        );
    }
    for name in ["http_requests_total", "http_request_duration_seconds"] {
        assert!(api.contains(&format!("# TYPE {name} ")), "api lacks {name}");
    }
    // Route templates, not raw ids, label the requests.
    assert!(api.contains(r#"route="/v1/commands/{id}""#), "{api}");
    assert!(
        worker.contains(r#"commands_total{status="succeeded",service="rdev-worker"} 1"#),
        "{worker}"
    );
    assert!(gauge(&worker, "command_output_bytes_total") >= 8.0);
    // The one command's claim and finish, each a batch of one. A run
    // message may arrive twice (the relay republishes a row whose mark is
    // late, as on a loaded machine): each delivery is claimed, alone.
    let series = |name: &str, kind: &str| {
        let prefix = format!(r#"{name}{{kind="{kind}",service="rdev-worker"}} "#);
        worker
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{prefix}not in {worker}"))
    };
    let deliveries = worker
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"amqp_consumed_total{queue="commands",service="rdev-worker"} "#)
        })
        .and_then(|v| v.parse::<f64>().ok())
        .expect("deliveries");
    let claims = series("db_batches_total", "claim");
    assert_eq!(
        series("db_batched_commands_total", "claim"),
        claims,
        "{worker}"
    );
    assert!((1.0..=deliveries).contains(&claims), "{worker}");
    for name in ["db_batches_total", "db_batched_commands_total"] {
        assert_eq!(series(name, "finish"), 1.0, "{worker}");
    }
    // Every request after the first authenticates from the key cache.
    assert!(gauge(&api, "cache_hits_total") >= 1.0, "{api}");
    assert!(
        api.contains(r#"amqp_published_total{exchange="commands",service="rdev-api"} 1"#),
        "{api}"
    );
}

/// Opens an SSE connection over a raw socket and returns it once the
/// response has started.
async fn raw_sse(app: &TestApp, id: &str) -> tokio::net::TcpStream {
    let addr = app.base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "GET /v1/commands/{id}/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nAccept: text/event-stream\r\n\r\n",
        app.admin_key
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("event: status") {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("read")
            .expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    s
}

#[tokio::test]
async fn the_sse_gauge_returns_to_zero_after_connections_are_reset() {
    let app = spawn_app_with(Options::default()).await;
    app.create_project("p", json!({})).await;
    let c = app.run("p", json!({"command": "sleep 300"})).await;
    let id = c["id"].as_str().expect("id").to_owned();
    let mut conns = Vec::new();
    for _ in 0..5 {
        conns.push(raw_sse(&app, &id).await);
    }
    assert_eq!(
        gauge(&scrape(&app, &app.api_ops).await, "sse_connections_active"),
        5.0
    );
    // Abort with a TCP reset (SO_LINGER 0), not a clean close.
    for c in conns {
        // Deprecated because a non-zero linger blocks on drop; zero resets at once.
        #[allow(deprecated)]
        c.set_linger(Some(Duration::ZERO)).expect("linger");
        drop(c);
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let g = gauge(&scrape(&app, &app.api_ops).await, "sse_connections_active");
        if g == 0.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "gauge stuck at {g}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.post(&format!("/v1/commands/{id}/cancel"), json!({}))
        .await;
}

#[tokio::test]
async fn sse_connections_past_the_per_key_cap_get_429() {
    let app = spawn_app_with(Options {
        sse_max_per_key: 2,
        ..Default::default()
    })
    .await;
    app.create_project("p", json!({})).await;
    let c = app.run("p", json!({"command": "sleep 300"})).await;
    let id = c["id"].as_str().expect("id").to_owned();
    let _a = raw_sse(&app, &id).await;
    let _b = raw_sse(&app, &id).await;
    let r = app.get(&format!("/v1/commands/{id}/events")).await;
    let p = r.assert_problem(429);
    assert!(
        p["detail"].as_str().unwrap_or("").contains("maximum of 2"),
        "{p}"
    );
    assert!(r.header("retry-after").is_some());
    app.post(&format!("/v1/commands/{id}/cancel"), json!({}))
        .await;
}

#[tokio::test]
async fn an_sse_connection_past_its_lifetime_is_told_to_reconnect() {
    let app = spawn_app_with(Options {
        sse_max_lifetime: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    app.create_project("p", json!({})).await;
    let c = app
        .run("p", json!({"command": "echo one; sleep 300"}))
        .await;
    let id = c["id"].as_str().expect("id").to_owned();
    let events = app.events(&id, None, None).await;
    assert_eq!(
        events.last().map(|e| e.event.as_str()),
        Some("reconnect"),
        "{events:?}"
    );
    // Resuming continues after what was seen.
    let mut last = rdev_tests::sse_seqs(&events).last().copied().unwrap_or(0);
    app.post(&format!("/v1/commands/{id}/cancel"), json!({}))
        .await;
    // The command may take longer than one 1 s lifetime to end on a busy
    // machine: each stream resumes where the last one stopped, until `end`.
    let mut ended = false;
    for _ in 0..20 {
        let rest = app.events(&id, Some(last), None).await;
        let seqs = rdev_tests::sse_seqs(&rest);
        assert!(seqs.iter().all(|s| *s > last), "{rest:?}");
        last = seqs.last().copied().unwrap_or(last);
        match rest.last().map(|e| e.event.as_str()) {
            Some("end") => {
                ended = true;
                break;
            }
            Some("reconnect") => {}
            other => panic!("the stream ended with {other:?}"),
        }
    }
    assert!(ended, "the command never ended");
}

/// Serves the API in this process when started by
/// `secrets_never_reach_the_logs`; does nothing in a normal run.
#[tokio::test]
async fn api_process_entry() {
    if std::env::var("RDEV_E2E_API_PROCESS").is_err() {
        return;
    }
    use clap::Parser;
    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        cfg: rdev_api::config::ApiConfig,
        #[command(flatten)]
        log: rdev_shared::config::LogConfig,
    }
    let args = Args::parse_from(["rdev-api"]);
    let _telemetry = rdev_shared::telemetry::init(&args.log, "rdev-api");
    let server = rdev_api::start(args.cfg, rdev_shared::lifecycle::CancellationToken::new())
        .await
        .expect("api");
    println!("LISTENING {}", server.addr);
    let _ = server.task.await;
}

#[tokio::test]
async fn secrets_never_reach_the_logs() {
    let app = spawn_app_with(Options::default()).await;
    let password = "pw-do-not-log-4e1f";
    let db_url =
        app.env
            .db
            .database_url
            .expose()
            .replacen("postgres@", &format!("postgres:{password}@"), 1);
    assert!(db_url.contains(password), "{db_url}");
    let exe = std::env::current_exe().expect("test binary");
    let mut child = rdev_tests::spawn(
        tokio::process::Command::new(exe)
            .args(["--exact", "observability::api_process_entry", "--nocapture"])
            .env("RDEV_E2E_API_PROCESS", "1")
            .env("DATABASE_URL", &db_url)
            .env("AMQP_URL", app.env.amqp.amqp_url.expose())
            .env("RDEV_AMQP_PREFIX", &app.env.amqp.prefix)
            .env("RDEV_LISTEN", "127.0.0.1:0")
            .env("RDEV_OPS_LISTEN", "127.0.0.1:0")
            .env("RDEV_MIGRATE", "0")
            .env("RDEV_LOG_FORMAT", "json")
            .env(
                "RUST_LOG",
                "trace,lapin=info,amq_protocol=info,hyper=info,h2=info",
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true),
    )
    .expect("api process");
    // Drain stderr as it comes: a full pipe would stall the process.
    let mut stderr = child.stderr.take().expect("stderr");
    let logs = tokio::spawn(async move {
        let mut logs = String::new();
        let _ = stderr.read_to_string(&mut logs).await;
        logs
    });
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr = loop {
        let line = tokio::time::timeout(WAIT, stdout.next_line())
            .await
            .expect("start")
            .expect("line")
            .expect("eof");
        if let Some(a) = line.strip_prefix("LISTENING ") {
            break a.to_owned();
        }
    };
    let base = format!("http://{addr}");
    let key = app.admin_key.clone();
    // Authenticated traffic, a failing key, and a command with a secret-looking env.
    let ok = app
        .send(
            app.http
                .post(format!("{base}/v1/projects"))
                .bearer_auth(&key)
                .json(&json!({"name": "p"})),
        )
        .await;
    assert_eq!(ok.status, 201);
    let forged = format!("rdev_{}", "Z".repeat(43));
    let r = app
        .send(
            app.http
                .get(format!("{base}/v1/projects"))
                .bearer_auth(&forged),
        )
        .await;
    assert_eq!(r.status, 401);
    let r = app
        .send(
            app.http
                .post(format!("{base}/v1/projects/p/commands"))
                .bearer_auth(&key)
                .json(&json!({"command": "true", "env": {"TOKEN": "env-secret-9c2"}})),
        )
        .await;
    assert_eq!(r.status, 202);
    // A project secret set and named by a command (issue 19).
    let r = app
        .send(
            app.http
                .put(format!("{base}/v1/projects/p/secrets/DEPLOY_TOKEN"))
                .bearer_auth(&key)
                .json(&json!({"value": "project-secret-do-not-log-77"})),
        )
        .await;
    assert_eq!(r.status, 201);
    let r = app
        .send(
            app.http
                .post(format!("{base}/v1/projects/p/commands"))
                .bearer_auth(&key)
                .json(&json!({"command": "true", "secrets": ["DEPLOY_TOKEN"]})),
        )
        .await;
    assert_eq!(r.status, 202);
    child.start_kill().expect("kill");
    let _ = child.wait().await;
    let logs = logs.await.expect("logs");
    assert!(
        logs.len() > 1000,
        "the process logged (at trace level): {} bytes",
        logs.len()
    );
    for secret in [
        key.as_str(),
        forged.as_str(),
        password,
        "env-secret-9c2",
        "project-secret-do-not-log-77",
    ] {
        let line = logs.lines().find(|l| l.contains(secret));
        assert!(
            line.is_none(),
            "`{secret}` appears in the logs: {}",
            line.unwrap_or_default()
        );
    }
    assert!(
        !logs.contains("Bearer rdev_"),
        "an Authorization header was logged"
    );
}

#[tokio::test]
async fn one_trace_follows_a_command_from_the_request_to_the_worker() {
    let Some(exporter) = rdev_shared::test_support::traces::install() else {
        panic!("another tracing subscriber was installed first");
    };
    let app = spawn_app_with(Options {
        dispatcher: true,
        ..Options::default()
    })
    .await;
    app.create_project("traced", json!({})).await;
    // Nothing listens there: the attempt fails, but it is made, in the trace.
    let r = app
        .post(
            "/v1/webhooks",
            json!({"url": "http://127.0.0.1:9/", "events": ["command.started", "command.succeeded"]}),
        )
        .await;
    assert_eq!(r.status, 201);
    let hook = r.json()["id"].as_str().expect("webhook id").to_owned();
    let c = app.run("traced", json!({"command": "echo traced"})).await;
    let id = c["id"].as_str().expect("id").to_owned();
    app.wait_terminal(&id, WAIT).await;

    let deadline = tokio::time::Instant::now() + WAIT;
    let (request, execute) = loop {
        let spans = rdev_shared::test_support::traces::spans(exporter);
        let request = spans.iter().find(|s| {
            s.name == "http.request"
                && s.attributes.iter().any(|kv| {
                    kv.key.as_str() == "path" && kv.value.as_str() == "/v1/projects/traced/commands"
                })
        });
        let execute = spans.iter().find(|s| {
            s.name == "command.execute"
                && s.attributes
                    .iter()
                    .any(|kv| kv.key.as_str() == "command_id" && kv.value.as_str() == id.as_str())
        });
        if let (Some(r), Some(e)) = (request, execute) {
            break (r.clone(), e.clone());
        }
        assert!(tokio::time::Instant::now() < deadline, "spans not found");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        request.span_context.trace_id(),
        execute.span_context.trace_id(),
        "the worker's span belongs to the request's trace"
    );
    // The lifecycle events carry the same trace on to the dispatcher.
    let client = app.env.pool.get().await.expect("db");
    let headers: Vec<serde_json::Value> = client
        .query(
            "SELECT trace_headers FROM webhook_deliveries ORDER BY id",
            &[],
        )
        .await
        .expect("q")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(headers.len(), 2, "the claim's event and the finish's");
    let trace = request.span_context.trace_id().to_string();
    for h in headers {
        let tp = h["traceparent"].as_str().unwrap_or_default();
        assert!(
            tp.contains(&trace),
            "event headers {h} continue trace {trace}"
        );
    }
    // …and the dispatcher's webhook attempt joins it. The exporter is the
    // process's: other tests' attempts are in it too, so ours is found by
    // its endpoint.
    let deadline = tokio::time::Instant::now() + WAIT;
    let ours = [
        ("webhook_id", hook.as_str()),
        ("event_type", "command.succeeded"),
    ];
    let deliver = loop {
        let spans = rdev_shared::test_support::traces::spans(exporter);
        if let Some(s) = spans.iter().find(|s| {
            s.name == "webhook.deliver"
                && ours.iter().all(|(key, value)| {
                    s.attributes
                        .iter()
                        .any(|kv| kv.key.as_str() == *key && kv.value.as_str() == *value)
                })
        }) {
            break s.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "no webhook span");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        deliver.span_context.trace_id(),
        request.span_context.trace_id(),
        "the webhook attempt belongs to the request's trace"
    );
}

#[tokio::test]
async fn admins_get_a_pprof_heap_profile() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    let r = app.get("/debug/pprof/heap").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(&r.body[..2], &[0x1f, 0x8b], "a gzipped pprof protobuf");
    assert!(r.body.len() > 100);
    app.request(reqwest::Method::GET, "/debug/pprof/heap", None, None)
        .await
        .assert_problem(401);
}
