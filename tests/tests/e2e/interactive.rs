//! Interactive commands end to end: input over HTTP and the attach
//! WebSocket, terminals, signals, resizes, order, and resuming.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use rdev_tests::{Options, TestApp, spawn_app, spawn_app_with};

const WAIT: Duration = Duration::from_secs(60);

async fn stdin(app: &TestApp, id: &str, data: &[u8], eof: bool) -> rdev_tests::Resp {
    let q = if eof { "?eof=true" } else { "" };
    app.send(
        app.http
            .post(app.url(&format!("/v1/commands/{id}/stdin{q}")))
            .bearer_auth(&app.admin_key)
            .header("content-type", "application/octet-stream")
            .body(data.to_vec()),
    )
    .await
}

/// Polls the stored output until `want` appears in it.
async fn wait_output(app: &TestApp, id: &str, want: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let out = String::from_utf8_lossy(&app.output(id, None).await).into_owned();
        if out.contains(want) {
            return out;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "`{want}` never appeared in:\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_shell_is_driven_line_by_line_and_eof_ends_it() {
    let app = spawn_app().await;
    app.create_project("p", json!({})).await;
    let c = app
        .run("p", json!({"command": "sh", "stdin": "pipe"}))
        .await;
    let id = c["id"].as_str().expect("id").to_owned();
    assert_eq!(c["stdin"], "pipe");
    for (line, want) in [("echo $((1+1))\n", "2\n"), ("echo $((6*7))\n", "2\n42\n")] {
        let r = stdin(&app, &id, line.as_bytes(), false).await;
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(wait_output(&app, &id, want).await, want);
    }
    let r = stdin(&app, &id, b"", true).await;
    assert_eq!(r.status, 202);
    let c = app.wait_terminal(&id, WAIT).await;
    assert_eq!(
        (c["status"].as_str(), c["reason"].as_str()),
        (Some("succeeded"), Some("exited")),
        "{c}"
    );
    // Input after the end is refused.
    let p = stdin(&app, &id, b"late\n", false).await.assert_problem(409);
    assert!(p["detail"].as_str().unwrap_or("").contains("ended"), "{p}");
    // A command whose stdin is closed takes none.
    let closed = app.run("p", json!({"command": "cat"})).await;
    let p = stdin(&app, closed["id"].as_str().expect("id"), b"x", false)
        .await
        .assert_problem(409);
    assert!(
        p["detail"].as_str().unwrap_or("").contains("not a pipe")
            || p["detail"].as_str().unwrap_or("").contains("ended"),
        "{p}"
    );
}

#[tokio::test]
async fn input_from_two_sources_is_applied_in_seq_order_once() {
    let app = spawn_app().await;
    app.create_project("p", json!({})).await;
    let c = app
        .run("p", json!({"command": "cat", "stdin": "pipe"}))
        .await;
    let id = c["id"].as_str().expect("id").to_owned();
    let send = |tag: &'static str| {
        let app = &app;
        let id = id.clone();
        async move {
            let mut acks = Vec::new();
            for i in 0..20 {
                let line = format!("{tag}{i}\n");
                let r = stdin(app, &id, line.as_bytes(), false).await;
                assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
                acks.push((r.json()["seq"].as_i64().expect("seq"), line));
            }
            acks
        }
    };
    let (a, b) = tokio::join!(send("a"), send("b"));
    let mut all: Vec<(i64, String)> = a.into_iter().chain(b).collect();
    all.sort();
    let seqs: Vec<i64> = all.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        (1..=40).collect::<Vec<_>>(),
        "one seq per event, none twice"
    );
    let expected: String = all.iter().map(|(_, l)| l.as_str()).collect();
    stdin(&app, &id, b"", true).await;
    let c = app.wait_terminal(&id, WAIT).await;
    assert_eq!(c["status"], "succeeded", "{c}");
    let out = String::from_utf8_lossy(&app.output(&id, None).await).into_owned();
    assert_eq!(out, expected, "applied in seq order, each once");
}

/// A WebSocket attached to a command.
pub(crate) struct Attached {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    /// Output bytes received, by seq.
    chunks: Vec<(i64, Vec<u8>)>,
}

impl Attached {
    pub(crate) async fn open(app: &TestApp, id: &str, from_seq: i64) -> Self {
        let url = format!(
            "{}/v1/commands/{id}/attach?from_seq={from_seq}",
            app.base.replacen("http://", "ws://", 1)
        );
        let mut req = url.into_client_request().expect("request");
        req.headers_mut()
            .insert("sec-websocket-protocol", "rdev.v1".parse().expect("header"));
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {}", app.admin_key).parse().expect("header"),
        );
        let (ws, resp) = tokio_tungstenite::connect_async(req).await.expect("attach");
        assert_eq!(
            resp.headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some("rdev.v1")
        );
        Self {
            ws,
            chunks: Vec::new(),
        }
    }

    pub(crate) fn text(&self) -> String {
        let bytes: Vec<u8> = self.chunks.iter().flat_map(|(_, d)| d.clone()).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Reads frames until the output contains `want` (or a JSON frame of
    /// type `until`); returns the JSON frames seen.
    pub(crate) async fn read_until(
        &mut self,
        want: Option<&str>,
        until: Option<&str>,
    ) -> Vec<Value> {
        let mut json = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if want.is_some_and(|w| self.text().contains(w)) {
                return json;
            }
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "timed out waiting for {want:?}/{until:?}; have {:?}",
                        self.text()
                    )
                });
            match frame {
                Some(Ok(Message::Binary(b))) => {
                    let seq = i64::try_from(u64::from_be_bytes(b[1..9].try_into().expect("seq")))
                        .expect("seq");
                    self.chunks.push((seq, b[9..].to_vec()));
                }
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).expect("json frame");
                    let done = until.is_some_and(|u| v["type"] == u);
                    json.push(v);
                    if done {
                        return json;
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("the socket ended: {other:?}; have {:?}", self.text()),
            }
        }
    }

    pub(crate) async fn send_json(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("send");
    }

    pub(crate) async fn send_bytes(&mut self, b: &[u8]) {
        self.ws
            .send(Message::Binary(b.to_vec().into()))
            .await
            .expect("send");
    }
}

#[tokio::test]
async fn a_terminal_takes_keys_signals_and_resizes() {
    let app = spawn_app().await;
    app.create_project("p", json!({})).await;
    let c = app
        .run(
            "p",
            json!({"command": "sh -i", "tty": {"cols": 80, "rows": 24}}),
        )
        .await;
    let id = c["id"].as_str().expect("id").to_owned();
    assert_eq!(
        (c["stdin"].as_str(), &c["tty"]),
        (Some("pipe"), &json!({"cols": 80, "rows": 24}))
    );
    let mut a = Attached::open(&app, &id, 0).await;
    let first = a.read_until(None, Some("status")).await;
    assert_eq!(first[0]["command"]["id"], id.as_str());

    // The terminal's size, then a new one.
    a.send_bytes(b"stty size\r").await;
    a.read_until(Some("24 80"), None).await;
    a.send_json(json!({"type": "resize", "cols": 100, "rows": 30}))
        .await;
    a.read_until(None, Some("ack")).await;
    a.send_bytes(b"stty size\r").await;
    a.read_until(Some("30 100"), None).await;

    // Ctrl-C (as a signal) interrupts the foreground `sleep`; the shell
    // lives on.
    a.send_bytes(b"sleep 30; echo after-$((6*7))\r").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.send_json(json!({"type": "signal", "signal": "INT"}))
        .await;
    a.send_bytes(b"echo still-$((40+2))\r").await;
    a.read_until(Some("still-42"), None).await;
    assert!(
        !a.text().contains("after-42"),
        "the sleep was not interrupted: {}",
        a.text()
    );

    // Ctrl-C as a key press does the same.
    a.send_bytes(b"sleep 30\r").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.send_bytes(&[0x03]).await;
    a.send_bytes(b"exit 3\r").await;
    let frames = a.read_until(None, Some("end")).await;
    let end = frames.last().expect("end");
    assert_eq!(end["command"]["exit_code"], 3, "{end}");
    let c = app.wait_terminal(&id, WAIT).await;
    assert_eq!(c["reason"], "exited", "{c}");
}

#[tokio::test]
async fn detach_and_reattach_lose_and_repeat_nothing() {
    let app = spawn_app().await;
    app.create_project("p", json!({})).await;
    // Prints a numbered line for each line it reads.
    let c = app
        .run(
            "p",
            json!({"command": "i=0; while read l; do i=$((i+1)); echo \"line $i $l\"; done", "stdin": "pipe"}),
        )
        .await;
    let id = c["id"].as_str().expect("id").to_owned();
    let mut a = Attached::open(&app, &id, 0).await;
    for n in 1..=3 {
        a.send_bytes(format!("x{n}\n").as_bytes()).await;
        a.read_until(Some(&format!("line {n} x{n}\n")), None).await;
    }
    let seen = a.chunks.clone();
    let last = seen.last().map(|c| c.0).expect("a chunk");
    drop(a);
    // Output while nobody is attached.
    for n in 4..=5 {
        let r = stdin(&app, &id, format!("x{n}\n").as_bytes(), false).await;
        assert_eq!(r.status, 202);
    }
    wait_output(&app, &id, "line 5 x5\n").await;
    let mut b = Attached::open(&app, &id, last).await;
    b.send_bytes(b"x6\n").await;
    b.read_until(Some("line 6 x6\n"), None).await;
    b.send_json(json!({"type": "eof"})).await;
    b.read_until(None, Some("end")).await;
    let mut all = seen;
    all.extend(b.chunks.clone());
    let seqs: Vec<i64> = all.iter().map(|c| c.0).collect();
    let expected: Vec<i64> = (1..=*seqs.last().expect("seq")).collect();
    assert_eq!(seqs, expected, "every chunk once, in order");
    let text: String = all
        .iter()
        .map(|c| String::from_utf8_lossy(&c.1).into_owned())
        .collect();
    let want: String = (1..=6).map(|n| format!("line {n} x{n}\n")).collect();
    assert_eq!(text, want);
}

#[tokio::test]
async fn input_needs_its_scope_and_a_read_only_key_only_watches() {
    let app = spawn_app().await;
    app.create_project("p", json!({})).await;
    let c = app
        .run("p", json!({"command": "cat", "stdin": "pipe"}))
        .await;
    let id = c["id"].as_str().expect("id").to_owned();
    let (_, reader) = app
        .create_key(json!({"name": "reader", "scopes": ["commands:read"]}))
        .await;
    let r = app
        .send(
            app.http
                .post(app.url(&format!("/v1/commands/{id}/stdin")))
                .bearer_auth(&reader)
                .body("x"),
        )
        .await;
    assert_eq!(r.status, 403);
    let (_, typist) = app
        .create_key(json!({"name": "typist", "scopes": ["commands:input", "commands:read"]}))
        .await;
    let r = app
        .send(
            app.http
                .post(app.url(&format!("/v1/commands/{id}/stdin?eof=true")))
                .bearer_auth(&typist)
                .body("typed\n"),
        )
        .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let c = app.wait_terminal(&id, WAIT).await;
    assert_eq!(c["status"], "succeeded");
    assert_eq!(app.output(&id, None).await, b"typed\n");
    // Resize of a command without a terminal; unknown signals.
    let c2 = app
        .run("p", json!({"command": "cat", "stdin": "pipe"}))
        .await;
    let id2 = c2["id"].as_str().expect("id");
    app.post(
        &format!("/v1/commands/{id2}/resize"),
        json!({"cols": 80, "rows": 24}),
    )
    .await
    .assert_problem(409);
    app.post(
        &format!("/v1/commands/{id2}/signal"),
        json!({"signal": "STOP"}),
    )
    .await
    .assert_problem(422);
    let r = app
        .post(
            &format!("/v1/commands/{id2}/signal"),
            json!({"signal": "TERM"}),
        )
        .await;
    assert_eq!(r.status, 202);
    let c2 = app.wait_terminal(id2, WAIT).await;
    assert_eq!(
        (c2["reason"].as_str(), c2["signal"].as_i64()),
        (Some("signaled"), Some(15)),
        "{c2}"
    );
}

#[tokio::test]
async fn an_interactive_command_left_alone_ends_idle_and_input_keeps_one_alive() {
    let app = spawn_app_with(Options {
        worker_cfg: Some(|w| w.interactive_idle = Duration::from_secs(3)),
        ..Default::default()
    })
    .await;
    app.create_project("p", json!({})).await;
    // Nobody types, nothing is printed, nobody is attached.
    let alone = app
        .run(
            "p",
            json!({"command": "echo started; cat", "stdin": "pipe"}),
        )
        .await;
    let alone = alone["id"].as_str().expect("id").to_owned();
    // Another one gets a line every second for longer than the limit.
    let fed = app
        .run("p", json!({"command": "cat", "stdin": "pipe"}))
        .await;
    let fed = fed["id"].as_str().expect("id").to_owned();
    for n in 1..=6 {
        let r = stdin(&app, &fed, format!("line {n}\n").as_bytes(), false).await;
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let c = app.wait_terminal(&alone, WAIT).await;
    assert_eq!(
        (c["status"].as_str(), c["reason"].as_str()),
        (Some("timed_out"), Some("idle")),
        "{c}"
    );
    assert_eq!(app.output(&alone, None).await, b"started\n");
    let r = stdin(&app, &fed, b"", true).await;
    assert_eq!(r.status, 202, "the fed command is still running");
    let c = app.wait_terminal(&fed, WAIT).await;
    assert_eq!(
        (c["status"].as_str(), c["reason"].as_str()),
        (Some("succeeded"), Some("exited")),
        "{c}"
    );
}

#[tokio::test]
async fn a_failed_catch_up_read_never_ends_an_attach_session() {
    let app = spawn_app().await;
    app.create_project("p", json!({})).await;
    let c = app
        .run(
            "p",
            json!({"command": "for i in $(seq 1 20); do echo line$i; sleep 0.01; done"}),
        )
        .await;
    let id = c["id"].as_str().expect("id").to_owned();
    let c = app.wait_terminal(&id, WAIT).await;
    assert_eq!(c["status"], "succeeded");
    // The stored output cannot be read for a moment.
    let client = app.env.pool.get().await.expect("db");
    client
        .batch_execute("ALTER TABLE command_output RENAME TO command_output_away")
        .await
        .expect("rename");
    let mut a = Attached::open(&app, &id, 0).await;
    let frames = a.read_until(None, Some("reconnect")).await;
    client
        .batch_execute("ALTER TABLE command_output_away RENAME TO command_output")
        .await
        .expect("rename back");
    assert!(
        frames.iter().all(|f| f["type"] != "end"),
        "`end` without the output: {frames:?}"
    );
    // Resuming gets everything, once, in order, then `end`.
    let last = a.chunks.last().map_or(0, |c| c.0);
    let mut b = Attached::open(&app, &id, last).await;
    b.read_until(None, Some("end")).await;
    let mut all = a.chunks.clone();
    all.extend(b.chunks.clone());
    let seqs: Vec<i64> = all.iter().map(|c| c.0).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    let text: String = all
        .iter()
        .map(|c| String::from_utf8_lossy(&c.1).into_owned())
        .collect();
    let want: String = (1..=20).map(|i| format!("line{i}\n")).collect();
    assert_eq!(text, want);
}
