//! Server-Sent Events: replay, live relay, resume, end.

use std::time::Duration;

use serde_json::json;

use rdev_tests::{spawn_app, sse_seqs, sse_text};

const WAIT: Duration = Duration::from_secs(30);

fn assert_contiguous(seqs: &[i64], first: i64) {
    let expected: Vec<i64> = (first..first + seqs.len() as i64).collect();
    assert_eq!(
        seqs,
        expected.as_slice(),
        "seqs must be contiguous and ordered"
    );
}

#[tokio::test]
async fn live_output_arrives_complete_in_order_then_end() {
    let app = spawn_app().await;
    app.create_project("p", json!({})).await;
    let c = app
        .run(
            "p",
            json!({"command": "for i in 1 2 3 4 5 6; do echo out$i; echo err$i >&2; sleep 0.1; done; exit 4"}),
        )
        .await;
    let id = c["id"].as_str().expect("id");
    let events = app.events(id, None, None).await;

    assert_eq!(events.first().map(|e| e.event.as_str()), Some("status"));
    let end = events.last().expect("events");
    assert_eq!(end.event, "end");
    assert_eq!(
        (end.data["status"].as_str(), end.data["exit_code"].as_i64()),
        (Some("failed"), Some(4))
    );
    let out: String = (1..=6).map(|i| format!("out{i}\n")).collect();
    let err: String = (1..=6).map(|i| format!("err{i}\n")).collect();
    assert_eq!(sse_text(&events, "stdout"), out);
    assert_eq!(sse_text(&events, "stderr"), err);
    assert_contiguous(&sse_seqs(&events), 1);
    // Every output event carries its seq as the SSE id.
    for e in events.iter().filter(|e| e.event == "output") {
        assert_eq!(e.id, e.data["seq"].to_string());
    }
    assert!(
        events
            .iter()
            .any(|e| e.event == "status" && e.data["status"] == "running")
    );
}

#[tokio::test]
async fn a_finished_command_replays_the_same_stream() {
    let app = spawn_app().await;
    app.create_project("p", json!({})).await;
    let c = app
        .run("p", json!({"command": "seq 1 3000; echo done >&2"}))
        .await;
    let id = c["id"].as_str().expect("id");
    let live = app.events(id, None, None).await;
    app.wait_terminal(id, WAIT).await;
    let replay = app.events(id, None, None).await;
    let expected: String = (1..=3000).map(|i| format!("{i}\n")).collect();
    assert_eq!(sse_text(&replay, "stdout"), expected);
    assert_eq!(sse_text(&replay, "stderr"), "done\n");
    assert_eq!(sse_text(&live, "stdout"), expected);
    assert_eq!(sse_seqs(&live), sse_seqs(&replay));
    assert_contiguous(&sse_seqs(&replay), 1);
    assert_eq!(replay.last().map(|e| e.event.as_str()), Some("end"));
}

#[tokio::test]
async fn last_event_id_resumes_exactly_after_that_chunk() {
    let app = spawn_app().await;
    app.create_project("p", json!({})).await;
    let c = app
        .run(
            "p",
            json!({"command": "for i in $(seq 1 40); do echo line$i; sleep 0.02; done"}),
        )
        .await;
    let id = c["id"].as_str().expect("id");
    // Read a few chunks live, drop the connection, resume from the last id.
    let first = app.events(id, None, Some(3)).await;
    let seqs = sse_seqs(&first);
    assert_eq!(seqs.len(), 3);
    let last = *seqs.last().expect("seq");
    let rest = app.events(id, Some(last), None).await;
    let rest_seqs = sse_seqs(&rest);
    assert_eq!(
        rest_seqs.first().copied(),
        Some(last + 1),
        "resumes right after {last}"
    );
    assert_contiguous(&rest_seqs, last + 1);
    let all = format!(
        "{}{}",
        sse_text(&first, "stdout"),
        sse_text(&rest, "stdout")
    );
    let expected: String = (1..=40).map(|i| format!("line{i}\n")).collect();
    assert_eq!(
        all, expected,
        "no byte lost or repeated across the reconnect"
    );

    // Resuming a finished command from its middle works the same.
    let whole = app.events(id, None, None).await;
    let mid = sse_seqs(&whole)[sse_seqs(&whole).len() / 2];
    let tail = app.events(id, Some(mid), None).await;
    assert_eq!(sse_seqs(&tail).first().copied(), Some(mid + 1));
}

#[tokio::test]
async fn a_truncated_output_shows_a_gap_event() {
    let app = spawn_app().await;
    app.create_project("p", json!({"max_output_bytes": 2000}))
        .await;
    let c = app
        .run(
            "p",
            json!({"command": "for i in $(seq 1 200); do seq 1 30; done"}),
        )
        .await;
    let id = c["id"].as_str().expect("id");
    app.wait_terminal(id, WAIT).await;
    let events = app.events(id, None, None).await;
    let gaps: Vec<_> = events.iter().filter(|e| e.event == "gap").collect();
    assert_eq!(gaps.len(), 1, "one gap between head and tail");
    let g = &gaps[0].data;
    assert!(g["from_seq"].as_i64() <= g["to_seq"].as_i64(), "{g}");
    let seqs = sse_seqs(&events);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(
        events.last().map(|e| e.data["truncated"].clone()),
        Some(json!(true))
    );
}

#[tokio::test]
async fn a_chunk_stored_after_subscribing_without_a_live_message_still_arrives() {
    // The window: the worker publishes a chunk live before its batch is in
    // PostgreSQL; a watcher subscribing in between misses the live message
    // and must still find the chunk in PostgreSQL while the command runs on.
    let app = rdev_tests::spawn_app_with(rdev_tests::Options {
        worker: false,
        ..Default::default()
    })
    .await;
    app.create_project("p", json!({})).await;
    let c = app.run("p", json!({"command": "sleep 300"})).await;
    let id: uuid::Uuid = c["id"].as_str().expect("id").parse().expect("uuid");
    let client = app.env.pool.get().await.expect("db");
    client
        .execute(
            "UPDATE commands SET status = 'running', started_at = now() WHERE id = $1",
            &[&id],
        )
        .await
        .expect("running");
    let watcher = {
        let app_http = app.http.clone();
        let url = app.url(&format!("/v1/commands/{id}/events"));
        let key = app.admin_key.clone();
        tokio::spawn(async move {
            use eventsource_stream::Eventsource;
            use futures::StreamExt;
            let resp = app_http
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .expect("sse");
            let mut events = resp.bytes_stream().eventsource();
            while let Some(Ok(ev)) = events.next().await {
                if ev.event == "output" {
                    return ev.data;
                }
            }
            String::new()
        })
    };
    // Let the watcher subscribe and do its first read, then store a chunk
    // without publishing it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    client
        .execute(
            "INSERT INTO command_output (command_id, seq, stream, data) VALUES ($1, 1, 'stdout', 'late\n')",
            &[&id],
        )
        .await
        .expect("chunk");
    let data = tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .expect("delivered")
        .expect("task");
    assert!(data.contains("late"), "{data}");
}

/// Reads a connection until the server closes it (a hang fails here).
async fn read_to_close(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut all = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut all))
        .await
        .expect("the server closes the connection")
        .expect("read");
    all
}

/// Splits an HTTP/1.1 answer into its head and its de-chunked body, checking
/// the chunk framing (sizes, CRLFs, the last chunk) on the way.
fn dechunk(answer: &[u8]) -> (String, Vec<u8>) {
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head");
    let head = String::from_utf8(answer[..split].to_vec()).expect("ascii head");
    let mut rest = &answer[split + 4..];
    let mut body = Vec::new();
    loop {
        let line = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a size line");
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..line]).expect("hex"), 16)
            .expect("a chunk size");
        rest = &rest[line + 2..];
        if size == 0 {
            assert_eq!(rest, b"\r\n", "nothing after the last chunk");
            return (head, body);
        }
        body.extend_from_slice(&rest[..size]);
        assert_eq!(&rest[size..size + 2], b"\r\n", "a chunk ends with CRLF");
        rest = &rest[size + 2..];
    }
}

#[tokio::test]
async fn an_event_stream_is_its_connections_one_answer_and_other_requests_keep_alive() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app().await;
    app.create_project("p", json!({})).await;
    let c = app.run("p", json!({"command": "echo one; echo two"})).await;
    let id = c["id"].as_str().expect("id").to_owned();
    app.wait_terminal(&id, WAIT).await;
    let addr = app.base.trim_start_matches("http://").to_owned();

    // The head arrives in two parts; the stream is written as chunks, ends
    // with the last chunk, and the server closes the connection.
    let mut s = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let head = format!(
        "GET /v1/commands/{id}/events HTTP/1.1\r\nhost: rdev\r\nauthorization: Bearer {}\r\n\r\n",
        app.admin_key
    );
    let (first, second) = head.split_at(20);
    s.write_all(first.as_bytes()).await.expect("write");
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(second.as_bytes()).await.expect("write");
    let (head, body) = dechunk(&read_to_close(&mut s).await);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let head = head.to_ascii_lowercase();
    for h in [
        "content-type: text/event-stream",
        "transfer-encoding: chunked",
        "connection: close",
        "date: ",
    ] {
        assert!(head.contains(h), "{h} missing: {head}");
    }
    let body = String::from_utf8(body).expect("utf-8");
    assert!(body.starts_with("event: status\n"), "{body}");
    for part in ["event: output\n", "one\\n", "two\\n"] {
        assert!(body.contains(part), "{part:?} missing: {body}");
    }
    assert!(body.contains("event: end\n"), "{body}");

    // Refused the same way: a problem, chunked, then closed.
    let mut s = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    s.write_all(format!("GET /v1/commands/{id}/events HTTP/1.1\r\nhost: rdev\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let (head, body) = dechunk(&read_to_close(&mut s).await);
    assert!(head.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/problem+json"),
        "{head}"
    );
    let problem: serde_json::Value = serde_json::from_slice(&body).expect("a problem");
    assert_eq!(problem["status"], 401);

    // Anything else is hyper's, even when its head arrives in parts, and the
    // connection stays open for the next request.
    let mut s = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    s.write_all(b"GET /hea").await.expect("write");
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(b"lth HTTP/1.1\r\nhost: rdev\r\n\r\n")
        .await
        .expect("write");
    s.write_all(b"GET /health HTTP/1.1\r\nhost: rdev\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let answers = String::from_utf8(read_to_close(&mut s).await).expect("utf-8");
    assert_eq!(
        answers.matches("HTTP/1.1 200 OK\r\n").count(),
        2,
        "{answers}"
    );
}
