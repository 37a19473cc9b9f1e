//! Issue 15: no stuck, lost or doubled work under faults. One test per
//! finding; each failed on the code before its fix.

use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::cutproxy::CutProxy;
use rdev_tests::{
    Options, Sse, TestApp, first_line, marked_processes, sleep_marker, spawn_app, spawn_app_with,
    sse_seqs, wait_no_marked,
};

const WAIT: Duration = Duration::from_secs(60);

fn at(c: &Value, k: &str) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(c[k].as_str().expect("time")).expect("rfc3339")
}

fn rabbit() -> std::net::SocketAddr {
    "127.0.0.1:5672".parse().expect("addr")
}

/// Finding 1: a deferred command waits in the delay queue, holding no
/// worker slot, so a project at its `max_concurrency` with a backlog does
/// not make other projects' commands wait behind it.
#[tokio::test]
async fn a_project_at_its_limit_does_not_starve_other_projects() {
    let app = spawn_app_with(Options {
        concurrency: 2,
        ..Default::default()
    })
    .await;
    app.create_project("a", json!({"max_concurrency": 1})).await;
    app.create_project("b", json!({})).await;
    let mut a = Vec::new();
    for _ in 0..10 {
        a.push(app.run("a", json!({"command": "sleep 3"})).await["id"].clone());
    }
    let first = a[0].as_str().expect("id");
    app.wait_status(first, "running", WAIT).await;
    let b = app.run("b", json!({"command": "echo b"})).await;
    let b = app
        .wait_terminal(b["id"].as_str().expect("id"), Duration::from_secs(15))
        .await;
    assert_eq!(b["status"], "succeeded", "{b}");
    // B did not queue behind A's backlog: it ended before any of A's
    // waiting commands (which wait for A's first) had even started.
    for id in &a[1..] {
        let waiting = app
            .get(&format!("/v1/commands/{}", id.as_str().expect("id")))
            .await
            .json();
        assert!(
            waiting["started_at"].is_null() || at(&b, "finished_at") < at(&waiting, "started_at"),
            "b ended {} after a's waiting command started {}",
            b["finished_at"],
            waiting["started_at"]
        );
    }
    // A's waiting commands sit in the delay queue, not in a worker's slot
    // (which would sleep and hand the message straight back).
    let conn = rdev_shared::mq::connect(&app.env.amqp, "test")
        .await
        .expect("amqp");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let ch = conn.create_channel().await.expect("channel");
        let q = ch
            .queue_declare(
                app.env.topology.commands_delay_queue().as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await
            .expect("the delay queue exists");
        if q.message_count() > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing waits in the delay queue"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // B ran while A's first command still ran: it did not queue behind A.
    let a1 = app.wait_terminal(first, WAIT).await;
    assert!(
        at(&b, "finished_at") < at(&a1, "finished_at"),
        "b ended {} after a's first command {}",
        b["finished_at"],
        a1["finished_at"]
    );
}

/// Marks a running command failed `worker_lost` the way the reaper does.
async fn reap_by_hand(app: &TestApp, id: &str) {
    let id: uuid::Uuid = id.parse().expect("uuid");
    let client = app.env.pool.get().await.expect("db");
    let n = client
        .execute(
            "UPDATE commands SET status = 'failed', error = 'worker_lost', reason = 'worker_lost', \
             finished_at = now() WHERE id = $1 AND status = 'running'",
            &[&id],
        )
        .await
        .expect("reap");
    assert_eq!(n, 1);
}

/// Finding 3: a command reaped while its worker still runs it (a
/// PostgreSQL outage longer than `RDEV_LOST_AFTER_S`, a stuck heartbeat)
/// is stopped by that worker, and nothing it prints afterwards is stored.
#[tokio::test]
async fn a_reaped_command_is_stopped_and_its_later_output_refused() {
    let app = spawn_app().await;
    app.create_project("p", json!({})).await;
    let m = sleep_marker();
    let c = app
        .run(
            "p",
            json!({"command": format!("(while :; do echo tick; sleep 0.05; done) & exec sleep {m}")}),
        )
        .await;
    let id = c["id"].as_str().expect("id");
    first_line(&app, id).await;
    assert!(!marked_processes(&m).is_empty());
    reap_by_hand(&app, id).await;
    // The heartbeat (1 s in tests) learns the command is no longer its own.
    wait_no_marked(&m).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let uuid: uuid::Uuid = id.parse().expect("uuid");
    let client = app.env.pool.get().await.expect("db");
    let late: i64 = client
        .query_one(
            "SELECT count(*) FROM command_output o JOIN commands c ON c.id = o.command_id \
             WHERE o.command_id = $1 AND o.at > c.finished_at + interval '200 milliseconds'",
            &[&uuid],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(late, 0, "chunks stored after the terminal status");
    let c = app.get(&format!("/v1/commands/{id}")).await.json();
    assert_eq!(
        (c["status"].as_str(), c["error"].as_str()),
        (Some("failed"), Some("worker_lost")),
        "{c}"
    );
}

/// Finding 3: statements have a timeout, so a stuck statement (a lock
/// held forever, a hung server) cannot hold a heartbeat or a request.
#[tokio::test]
async fn statements_time_out() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    let mut db = app.env.db.clone();
    db.statement_timeout_s = 1;
    let pool = rdev_shared::db::pool(&db).expect("pool");
    let client = pool.get().await.expect("db");
    // Cancelled, not finished: the statement timeout stopped the sleep
    // (no bound on the elapsed time needed).
    let err = client
        .simple_query("SELECT pg_sleep(20)")
        .await
        .expect_err("the statement should time out");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{err}"
    );
}

/// Reads an event stream, recording when each event arrived, until `end`,
/// `reconnect`, the stream's close or `limit`.
async fn read_events(
    app: &TestApp,
    id: &str,
    last: Option<i64>,
    limit: Duration,
) -> Vec<(Instant, Sse)> {
    let mut req = app
        .http
        .get(app.url(&format!("/v1/commands/{id}/events")))
        .bearer_auth(&app.admin_key);
    if let Some(l) = last {
        req = req.header("Last-Event-ID", l.to_string());
    }
    let resp = req.send().await.expect("sse");
    assert_eq!(resp.status().as_u16(), 200);
    let mut stream = resp.bytes_stream().eventsource();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while let Ok(Some(Ok(ev))) = tokio::time::timeout_at(deadline, stream.next()).await {
        let data: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
        let stop = ev.event == "end" || ev.event == "reconnect";
        out.push((
            Instant::now(),
            Sse {
                event: ev.event,
                id: ev.id,
                data,
            },
        ));
        if stop {
            break;
        }
    }
    out
}

/// Finding 5: a finished command's stream never says `end` unless it
/// replayed every stored chunk; when a catch-up read fails it closes, and
/// the client resumes with `Last-Event-ID` and gets the rest.
#[tokio::test]
async fn a_failed_catch_up_read_never_ends_the_stream() {
    let app = spawn_app().await;
    app.create_project("p", json!({})).await;
    let c = app
        .run(
            "p",
            json!({"command": "for i in $(seq 1 20); do echo line$i; sleep 0.01; done"}),
        )
        .await;
    let id = c["id"].as_str().expect("id");
    let c = app.wait_terminal(id, WAIT).await;
    assert_eq!(c["status"], "succeeded");
    let client = app.env.pool.get().await.expect("db");
    client
        .batch_execute("ALTER TABLE command_output RENAME TO command_output_away")
        .await
        .expect("rename");
    let broken: Vec<Sse> = read_events(&app, id, None, Duration::from_secs(10))
        .await
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    client
        .batch_execute("ALTER TABLE command_output_away RENAME TO command_output")
        .await
        .expect("rename back");
    assert!(
        broken.iter().all(|e| e.event != "end"),
        "`end` without the output: {broken:?}"
    );
    // Resuming gets everything, once, in order, and then `end`.
    let mut events = broken;
    let last = sse_seqs(&events).last().copied();
    events.extend(app.events(id, last, None).await);
    let seqs = sse_seqs(&events);
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    let text: String = events
        .iter()
        .filter(|e| e.event == "output")
        .map(|e| e.data["data"].as_str().unwrap_or_default())
        .collect();
    let want: String = (1..=20).map(|i| format!("line{i}\n")).collect();
    assert_eq!(text, want);
    assert_eq!(events.last().map(|e| e.event.as_str()), Some("end"));
}

/// Finding 4: while the API's link to RabbitMQ is down, watchers keep
/// receiving output (read from PostgreSQL on every poll), and get all of
/// it, in order, once the link is back.
#[tokio::test]
async fn sse_keeps_flowing_while_the_api_has_no_broker() {
    let proxy = CutProxy::start(rabbit()).await;
    let app = spawn_app_with(Options {
        api_amqp_url: Some(proxy.amqp_url()),
        ..Default::default()
    })
    .await;
    app.create_project("p", json!({})).await;
    let c = app
        .run(
            "p",
            json!({"command": "for i in $(seq 1 100); do echo line$i; sleep 0.1; done"}),
        )
        .await;
    let id = c["id"].as_str().expect("id").to_owned();
    first_line(&app, &id).await;
    let reader = {
        let app_http = app.http.clone();
        let url = app.url(&format!("/v1/commands/{id}/events"));
        let key = app.admin_key.clone();
        tokio::spawn(async move {
            let resp = app_http
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .expect("sse");
            let mut stream = resp.bytes_stream().eventsource();
            let mut out = Vec::new();
            while let Ok(Some(Ok(ev))) =
                tokio::time::timeout(Duration::from_secs(60), stream.next()).await
            {
                let data: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
                let end = ev.event == "end";
                out.push((Instant::now(), ev.event, data));
                if end {
                    break;
                }
            }
            out
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cut_at = Instant::now();
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let restored_at = Instant::now();
    proxy.restore();
    let events = reader.await.expect("reader");
    // Output kept arriving during the outage, after the first second of it.
    let during = events
        .iter()
        .filter(|(t, e, _)| {
            e == "output" && *t > cut_at + Duration::from_secs(2) && *t < restored_at
        })
        .count();
    assert!(during >= 5, "only {during} chunks during the outage");
    let seqs: Vec<i64> = events
        .iter()
        .filter(|(_, e, _)| e == "output")
        .filter_map(|(_, _, d)| d["seq"].as_i64())
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    let lines = events
        .iter()
        .filter(|(_, e, _)| e == "output")
        .map(|(_, _, d)| d["data"].as_str().unwrap_or_default().matches('\n').count())
        .sum::<usize>();
    assert_eq!(lines, 100);
    assert_eq!(events.last().map(|(_, e, _)| e.as_str()), Some("end"));
}

/// Finding 6: after its consumer reconnects, a worker whose slots are held
/// by commands it still runs takes no more messages than it has free slots,
/// so idle workers run the rest.
#[tokio::test]
async fn a_reconnected_busy_worker_leaves_new_commands_to_idle_workers() {
    let proxy = CutProxy::start(rabbit()).await;
    let mut app = spawn_app_with(Options {
        concurrency: 2,
        worker_amqp_url: Some(proxy.amqp_url()),
        ..Default::default()
    })
    .await;
    app.create_project("p", json!({})).await;
    // Both of its slots stay held by commands started before the cut.
    let mut long = Vec::new();
    for _ in 0..2 {
        let c = app.run("p", json!({"command": "sleep 12"})).await;
        long.push(c["id"].as_str().expect("id").to_owned());
    }
    for id in &long {
        app.wait_status(id, "running", WAIT).await;
    }
    app.start_worker(2, CancellationToken::new());
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.restore();
    // The busy worker reconnects (its backoff is 0.5 s, then 1 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut short = Vec::new();
    for _ in 0..4 {
        let c = app.run("p", json!({"command": "echo hi"})).await;
        short.push(c["id"].as_str().expect("id").to_owned());
    }
    let first_long = app.wait_terminal(&long[0], WAIT).await;
    for id in &short {
        let c = app.wait_terminal(id, WAIT).await;
        assert_eq!(c["status"], "succeeded", "{c}");
        assert!(
            at(&c, "finished_at") < at(&first_long, "finished_at"),
            "{id} waited for the busy worker: ended {} after {}",
            c["finished_at"],
            first_long["finished_at"]
        );
    }
}

/// Issue 15 (smaller): a multi-byte character that reaches the worker in
/// two reads is not cut between two chunks, so SSE (text) shows it whole.
#[tokio::test]
async fn a_character_split_across_reads_arrives_whole() {
    let app = spawn_app().await;
    app.create_project("p", json!({})).await;
    let c = app
        .run(
            "p",
            json!({"command": "printf 'caf\\303'; sleep 0.3; printf '\\251 \\342\\202'; sleep 0.3; printf '\\254\\n'"}),
        )
        .await;
    let id = c["id"].as_str().expect("id");
    let events = app.events(id, None, None).await;
    let text = rdev_tests::sse_text(&events, "stdout");
    assert_eq!(text, "café €\n", "{events:?}");
    assert_eq!(app.output(id, None).await, "café €\n".as_bytes());
}

/// Issue 15 (smaller): a client that stops reading its event stream loses
/// it after the write timeout, so it cannot hold its SSE slot (or the
/// graceful shutdown) forever.
#[tokio::test]
async fn a_client_that_stops_reading_loses_its_stream() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app_with(Options {
        sse_max_per_key: 1,
        api: Some(|c| c.write_timeout = Duration::from_secs(1)),
        ..Default::default()
    })
    .await;
    app.create_project("p", json!({})).await;
    let c = app
        .run(
            "p",
            json!({"command": "yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c 30000000; sleep 60"}),
        )
        .await;
    let id = c["id"].as_str().expect("id").to_owned();
    first_line(&app, &id).await;
    // A client that sends its request and then never reads.
    let addr: std::net::SocketAddr = app
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("addr");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut stalled = socket.connect(addr).await.expect("connect");
    stalled
        .write_all(
            format!(
                "GET /v1/commands/{id}/events HTTP/1.1\r\nhost: rdev\r\nauthorization: Bearer {}\r\n\r\n",
                app.admin_key
            )
            .as_bytes(),
        )
        .await
        .expect("request");
    // Its stream takes the key's only slot; once the server gave up writing
    // to it, the slot is free again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = app
            .http
            .get(app.url(&format!("/v1/commands/{id}/events")))
            .bearer_auth(&app.admin_key)
            .send()
            .await
            .expect("sse");
        if r.status().as_u16() == 200 {
            break;
        }
        assert_eq!(r.status().as_u16(), 429);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled client still holds its slot"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(stalled);
    app.post(&format!("/v1/commands/{id}/cancel"), json!({}))
        .await;
}

/// Issue 15 (smaller): a queued command whose run message was lost (the
/// queue purged, the broker's disk lost) is republished by the dispatcher's
/// sweep and runs, once.
#[tokio::test]
async fn a_command_whose_message_was_lost_still_runs_once() {
    let mut app = spawn_app_with(Options {
        worker: false,
        dispatcher: true,
        requeue_after: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    app.create_project("p", json!({})).await;
    let c = app
        .run("p", json!({"command": "echo ran >> ran.txt"}))
        .await;
    let id = c["id"].as_str().expect("id").to_owned();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let conn = rdev_shared::mq::connect(&app.env.amqp, "test")
        .await
        .expect("amqp");
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_purge(
        app.env.topology.commands_queue().as_str().into(),
        lapin::options::QueuePurgeOptions::default(),
    )
    .await
    .expect("purge");
    app.start_worker(2, CancellationToken::new());
    let c = app.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(c["status"], "succeeded", "{c}");
    // Republished more than once meanwhile: still ran once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ran = std::fs::read_to_string(app.workspace.join("p/ran.txt")).expect("marker");
    assert_eq!(ran, "ran\n");
}

/// Issue 15 (smaller): a black-holed broker (connections open, nothing
/// answers) costs an enqueue at most one confirm timeout, once; later
/// enqueues do not each wait for it, and every command still runs (the
/// outbox relay publishes them once the broker is back).
#[tokio::test]
async fn a_black_holed_broker_does_not_stall_every_enqueue() {
    let proxy = CutProxy::start(rabbit()).await;
    let app = spawn_app_with(Options {
        api_amqp_url: Some(proxy.amqp_url()),
        dispatcher: true,
        ..Default::default()
    })
    .await;
    app.create_project("p", json!({})).await;
    let mut ids = vec![app.run("p", json!({"command": "true"})).await["id"].clone()];
    proxy.freeze();
    // The first enqueue waits for its confirm (5 s) and gives up; the
    // publisher then drops that connection.
    ids.push(app.run("p", json!({"command": "true"})).await["id"].clone());
    for _ in 0..4 {
        let started = Instant::now();
        ids.push(app.run("p", json!({"command": "true"})).await["id"].clone());
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "an enqueue took {took:?}");
    }
    proxy.restore();
    for id in &ids {
        let c = app.wait_terminal(id.as_str().expect("id"), WAIT).await;
        assert_eq!(c["status"], "succeeded", "{c}");
    }
}

/// Finding 10: retention removes, per kind and in batches, what outlived
/// it: published outbox rows, stored output, finished commands (a project
/// may keep its own), settled webhook deliveries; nothing still in use.
#[tokio::test]
async fn retention_prunes_each_kind_and_keeps_what_is_in_use() {
    let app = spawn_app().await;
    app.create_project("p", json!({})).await;
    // q keeps output longer than the default and commands shorter.
    app.create_project(
        "q",
        json!({"output_retention_s": 100 * 86_400, "command_retention_s": 3600}),
    )
    .await;
    let q = app.get("/v1/projects/q").await.json();
    assert_eq!(q["output_retention_s"], 100 * 86_400, "{q}");
    let bad = app
        .post(
            "/v1/projects",
            json!({"name": "r", "output_retention_s": 5}),
        )
        .await;
    bad.assert_problem(422);
    let mut ids = Vec::new();
    for project in ["p", "p", "q", "q"] {
        let c = app.run(project, json!({"command": "echo kept"})).await;
        let id = c["id"].as_str().expect("id").to_owned();
        app.wait_terminal(&id, WAIT).await;
        ids.push(id.parse::<uuid::Uuid>().expect("uuid"));
    }
    let client = app.env.pool.get().await.expect("db");
    let age = |id: uuid::Uuid, days: f64| {
        let client = &client;
        async move {
            client
                .execute(
                    "UPDATE commands SET finished_at = now() - make_interval(secs => $2) WHERE id = $1",
                    &[&id, &(days * 86_400.0)],
                )
                .await
                .expect("age");
        }
    };
    age(ids[0], 40.0).await; // p: output goes (30 d), command stays (90 d)
    age(ids[1], 100.0).await; // p: command goes
    age(ids[2], 40.0).await; // q: command goes (1 h); so would its output
    client
        .execute(
            "UPDATE commands SET finished_at = now() - interval '10 minutes' WHERE id = $1",
            &[&ids[3]],
        )
        .await
        .expect("age"); // q: kept
    client
        .batch_execute(
            "UPDATE outbox SET published_at = now() - interval '2 days' WHERE published_at IS NOT NULL; \
             INSERT INTO outbox (exchange, routing_key, payload, headers, created_at) \
             SELECT exchange, routing_key, payload, headers, now() - interval '3 days' FROM outbox LIMIT 1;",
        )
        .await
        .expect("outbox");
    let hook = app
        .post(
            "/v1/webhooks",
            json!({"url": "http://127.0.0.1:9/hook", "events": ["command.succeeded"]}),
        )
        .await;
    assert_eq!(hook.status, 201, "{}", String::from_utf8_lossy(&hook.body));
    let hook: uuid::Uuid = hook.json()["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    for (status, days) in [
        ("succeeded", 40),
        ("dead", 40),
        ("pending", 40),
        ("succeeded", 1),
    ] {
        client
            .execute(
                "INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, payload, status, updated_at) \
                 VALUES ($1, $2, $3, 'command.succeeded', '\\x7b7d', $4, now() - make_interval(days => $5))",
                &[&uuid::Uuid::now_v7(), &hook, &uuid::Uuid::now_v7(), &status, &days],
            )
            .await
            .expect("delivery");
    }

    let cfg = rdev_tests::dispatcher_config(&app.env);
    let pruned = rdev_dispatcher::retention::run_once(&app.env.pool, &cfg.retention())
        .await
        .expect("retention");
    assert_eq!(pruned.commands, 2, "{pruned:?}");
    assert_eq!(pruned.webhook_deliveries, 2, "{pruned:?}");
    assert!(pruned.output >= 1 && pruned.outbox >= 1, "{pruned:?}");
    let exists = |id: uuid::Uuid| {
        let client = &client;
        async move {
            client
                .query_one(
                    "SELECT (SELECT count(*) FROM commands WHERE id = $1), \
                     (SELECT count(*) FROM command_output WHERE command_id = $1)",
                    &[&id],
                )
                .await
                .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)))
                .expect("q")
        }
    };
    assert_eq!(
        exists(ids[0]).await,
        (1, 0),
        "p's old command keeps its row"
    );
    assert_eq!(exists(ids[1]).await, (0, 0));
    assert_eq!(exists(ids[2]).await, (0, 0), "q keeps commands 1 h");
    assert_eq!(exists(ids[3]).await, (1, 1));
    let unpublished: i64 = client
        .query_one(
            "SELECT count(*) FROM outbox WHERE published_at IS NULL",
            &[],
        )
        .await
        .expect("q")
        .get(0);
    assert_eq!(unpublished, 1, "the relay still owes it");
    let pending: i64 = client
        .query_one(
            "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'",
            &[],
        )
        .await
        .expect("q")
        .get(0);
    assert_eq!(pending, 1);
    // The stored output of a pruned command reads as empty, not as an error.
    assert!(app.output(&ids[0].to_string(), None).await.is_empty());
    // A second pass finds nothing more.
    let again = rdev_dispatcher::retention::run_once(&app.env.pool, &cfg.retention())
        .await
        .expect("retention");
    assert_eq!((again.commands, again.output, again.outbox), (0, 0, 0));
}

/// Finding 9: an older binary runs against a newer schema (a rollback, the
/// old half of a rolling upgrade): migrating finds nothing to do instead of
/// refusing to start; a worker or dispatcher waits for the schema it needs;
/// the indexes on big tables are built CONCURRENTLY and valid.
#[tokio::test]
async fn an_older_binary_runs_against_a_newer_schema() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    let pool = &app.env.pool;
    let client = pool.get().await.expect("db");
    let need = rdev_shared::db::schema_version();
    assert!(need >= 12, "{need}");
    // A newer binary applied a migration this one does not know.
    client
        .execute(
            "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) \
             VALUES ($1, 'from_a_newer_binary', '2030-01-01T00:00:00Z', '1')",
            &[&i32::try_from(need + 1).expect("i32")],
        )
        .await
        .expect("newer");
    let applied = rdev_shared::db::migrate(pool)
        .await
        .expect("older binary migrates");
    assert!(applied.is_empty(), "{applied:?}");
    rdev_shared::db::require_schema(pool, Duration::ZERO)
        .await
        .expect("a newer schema serves this binary");
    // A schema older than the binary: it waits, then refuses.
    client
        .execute(
            "DELETE FROM refinery_schema_history WHERE version >= $1",
            &[&i32::try_from(need).expect("i32")],
        )
        .await
        .expect("older");
    let err = rdev_shared::db::require_schema(pool, Duration::from_millis(100))
        .await
        .expect_err("behind");
    assert!(
        matches!(err, rdev_shared::db::DbError::SchemaBehind { .. }),
        "{err}"
    );
    let invalid: Vec<String> = client
        .query(
            "SELECT c.relname::text FROM pg_class c LEFT JOIN pg_index i ON i.indexrelid = c.oid \
             WHERE c.relname = ANY($1) AND i.indisvalid",
            &[&rdev_shared::db::indexes::INDEXES
                .iter()
                .map(|(n, _)| (*n).to_owned())
                .collect::<Vec<_>>()],
        )
        .await
        .expect("indexes")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        invalid.len(),
        rdev_shared::db::indexes::INDEXES.len(),
        "{invalid:?}"
    );
}

/// Issue 15 (smaller): a claim whose commit succeeded but whose answer was
/// lost (the connection dropped) is retried by the worker with the same
/// token, finds the command running under it and runs it, instead of
/// leaving it `running` with no process until the reaper fails it.
#[tokio::test]
async fn a_claim_whose_answer_was_lost_is_resumed_by_its_retry() {
    use rdev_shared::db::commands::{self, ClaimOutcome};
    let app = spawn_app_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    app.create_project("p", json!({})).await;
    let c = app.run("p", json!({"command": "true"})).await;
    let id: uuid::Uuid = c["id"].as_str().expect("id").parse().expect("uuid");
    let token = uuid::Uuid::now_v7();
    let pool = app.env.pool.clone();
    let claim = |token| {
        let pool = pool.clone();
        async move {
            let mut client = pool.get().await.expect("db");
            let tx = client.transaction().await.expect("tx");
            let out = commands::claim(&tx, id, "w1", token).await.expect("claim");
            tx.commit().await.expect("commit");
            out
        }
    };
    // The first attempt commits; its answer is "lost".
    assert!(matches!(claim(token).await, ClaimOutcome::Claimed(_)));
    // The retry of the same claim takes it up again…
    match claim(token).await {
        ClaimOutcome::Resumed(c) => assert_eq!(c.command.id, id),
        other => panic!("expected Resumed, got {other:?}"),
    }
    // …while any other claim (a redelivered message) still skips it.
    assert!(matches!(
        claim(uuid::Uuid::now_v7()).await,
        ClaimOutcome::NotQueued
    ));
}

/// Issue 15 (smaller): a chunk published live before a watcher subscribed,
/// whose store was held up (the worker retries a batch for up to ~16 s),
/// still reaches the watcher once stored, without waiting for the next
/// live chunk: the settle reads cover the worker's retry window.
#[tokio::test]
async fn a_chunk_stored_late_reaches_a_new_watcher_without_more_output() {
    let app = spawn_app().await;
    app.create_project("p", json!({})).await;
    let mut client = app.env.pool.get().await.expect("db");
    // Stores wait (reads do not) while this lock is held.
    let tx = client.transaction().await.expect("tx");
    tx.batch_execute("LOCK TABLE command_output IN EXCLUSIVE MODE")
        .await
        .expect("lock");
    let c = app
        .run("p", json!({"command": "echo first; sleep 14; echo second"}))
        .await;
    let id = c["id"].as_str().expect("id").to_owned();
    app.wait_status(&id, "running", WAIT).await;
    tokio::time::sleep(Duration::from_millis(700)).await; // `first` was published live
    let subscribed = Instant::now();
    let reader = {
        let (http, url, key) = (
            app.http.clone(),
            app.url(&format!("/v1/commands/{id}/events")),
            app.admin_key.clone(),
        );
        tokio::spawn(async move {
            let resp = http.get(url).bearer_auth(key).send().await.expect("sse");
            let mut events = resp.bytes_stream().eventsource();
            while let Ok(Some(Ok(ev))) =
                tokio::time::timeout(Duration::from_secs(60), events.next()).await
            {
                if ev.event == "output" {
                    return Some((Instant::now(), ev.data));
                }
            }
            None
        })
    };
    // The store is held up past the first settle reads (3 s).
    tokio::time::sleep(Duration::from_secs(5)).await;
    tx.commit().await.expect("unlock");
    let (at, data) = reader.await.expect("reader").expect("an output event");
    assert!(data.contains("first"), "{data}");
    let took = at - subscribed;
    assert!(
        took < Duration::from_secs(12),
        "`first` arrived after {took:?}, with the next output (14 s), not when stored"
    );
}
