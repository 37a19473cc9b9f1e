//! Faults around event streams: failed catch-up reads, no broker link,
//! split characters, clients that stop reading, chunks stored late.

use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::cutproxy::CutProxy;
use rdev_tests::{Options, Sse, TestApp, first_line, spawn_app, spawn_app_with, sse_seqs};

use super::{WAIT, rabbit};

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
    // The stream is read while the broker link is cut and restored.
    let (events, (cut_at, restored_at)) = tokio::join!(
        read_events(&app, &id, None, Duration::from_secs(60)),
        async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let cut_at = Instant::now();
            proxy.cut();
            tokio::time::sleep(Duration::from_secs(5)).await;
            let restored_at = Instant::now();
            proxy.restore();
            (cut_at, restored_at)
        }
    );
    // Output kept arriving during the outage, after the first second of it.
    let during = events
        .iter()
        .filter(|(t, e)| {
            e.event == "output" && *t > cut_at + Duration::from_secs(2) && *t < restored_at
        })
        .count();
    assert!(during >= 5, "only {during} chunks during the outage");
    let seqs: Vec<i64> = events
        .iter()
        .filter(|(_, e)| e.event == "output")
        .filter_map(|(_, e)| e.data["seq"].as_i64())
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    let lines = events
        .iter()
        .filter(|(_, e)| e.event == "output")
        .map(|(_, e)| {
            e.data["data"]
                .as_str()
                .unwrap_or_default()
                .matches('\n')
                .count()
        })
        .sum::<usize>();
    assert_eq!(lines, 100);
    assert_eq!(events.last().map(|(_, e)| e.event.as_str()), Some("end"));
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
