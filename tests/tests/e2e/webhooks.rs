//! Webhooks end to end: real receivers (axum on loopback) recording what
//! they get, the real dispatcher(s), PostgreSQL and RabbitMQ.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use rdev_dispatcher::webhooks::schedule::parse_schedule;
use rdev_shared::lifecycle::CancellationToken;
use rdev_shared::webhook_sign;
use reqwest::Method;
use serde_json::{Value, json};

use rdev_tests::{Options, TestApp, dispatcher_config, spawn_app_with};

const WAIT: Duration = Duration::from_secs(60);

// ---- receivers ------------------------------------------------------------

/// One request a receiver got.
#[derive(Clone, Debug)]
struct Hit {
    at: Instant,
    headers: HeaderMap,
    body: Bytes,
}

impl Hit {
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }
}

/// Chooses the answer: (index of this request overall, index among the
/// requests with the same `webhook-id`) → status.
type Answer = Arc<dyn Fn(usize, usize) -> u16 + Send + Sync>;

#[derive(Clone)]
struct RecvState {
    hits: Arc<Mutex<Vec<Hit>>>,
    answer: Arc<Mutex<Answer>>,
    /// `Retry-After` sent with every answer, when set.
    retry_after: Arc<Mutex<Option<String>>>,
    /// How long to wait before answering.
    delay: Arc<Mutex<Duration>>,
}

struct Receiver {
    url: String,
    state: RecvState,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(
    State(st): State<RecvState>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap) {
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let (n, per_id) = {
        let mut hits = st.hits.lock().expect("hits");
        let per_id = hits.iter().filter(|h| h.header("webhook-id") == id).count();
        hits.push(Hit {
            at: Instant::now(),
            headers,
            body,
        });
        (hits.len() - 1, per_id)
    };
    let delay = *st.delay.lock().expect("delay");
    tokio::time::sleep(delay).await;
    let answer = st.answer.lock().expect("answer").clone();
    let status =
        StatusCode::from_u16(answer(n, per_id)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut out = HeaderMap::new();
    if let Some(v) = st.retry_after.lock().expect("retry-after").clone() {
        out.insert("retry-after", v.parse().expect("header value"));
    }
    (status, out)
}

impl Receiver {
    async fn start(answer: impl Fn(usize, usize) -> u16 + Send + Sync + 'static) -> Self {
        let state = RecvState {
            hits: Arc::default(),
            answer: Arc::new(Mutex::new(Arc::new(answer))),
            retry_after: Arc::default(),
            delay: Arc::default(),
        };
        let app = Router::new().fallback(record).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{addr}/hook"),
            state,
            task,
        }
    }

    /// Always answers `status`.
    async fn always(status: u16) -> Self {
        Self::start(move |_, _| status).await
    }

    fn answer_with(&self, answer: impl Fn(usize, usize) -> u16 + Send + Sync + 'static) {
        *self.state.answer.lock().expect("answer") = Arc::new(answer);
    }

    fn answer_after(&self, delay: Duration) {
        *self.state.delay.lock().expect("delay") = delay;
    }

    fn send_retry_after(&self, value: &str) {
        *self.state.retry_after.lock().expect("retry-after") = Some(value.to_owned());
    }

    fn hits(&self) -> Vec<Hit> {
        self.state.hits.lock().expect("hits").clone()
    }

    async fn wait_hits(&self, n: usize) -> Vec<Hit> {
        let deadline = Instant::now() + WAIT;
        loop {
            let hits = self.hits();
            if hits.len() >= n {
                return hits;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} requests",
                hits.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A port nothing listens on.
async fn dead_url() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr: SocketAddr = l.local_addr().expect("addr");
    drop(l);
    format!("http://{addr}/hook")
}

// ---- dispatchers ----------------------------------------------------------

struct RunningDispatcher {
    addr: SocketAddr,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningDispatcher {
    async fn start(cfg: rdev_dispatcher::config::Config) -> Self {
        let stop = CancellationToken::new();
        let d = rdev_dispatcher::start(cfg, stop.clone())
            .await
            .expect("dispatcher");
        Self {
            addr: d.addr,
            stop,
            task: Some(d.task),
        }
    }

    /// The value of the series `name{…label…}` on the ops server's `/metrics`.
    async fn metric(&self, name: &str, label: &str) -> f64 {
        let text = reqwest::get(format!("http://{}/metrics", self.addr))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body");
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
            .find_map(|l| l.rsplit(' ').next().and_then(|v| v.parse().ok()))
            .unwrap_or_else(|| panic!("no {name} {label} in:\n{text}"))
    }

    /// Graceful stop: in-flight attempts finish and are recorded.
    async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            tokio::time::timeout(WAIT, t)
                .await
                .expect("dispatcher stops")
                .expect("dispatcher task");
        }
    }
}

impl Drop for RunningDispatcher {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

// ---- API helpers ----------------------------------------------------------

async fn create_webhook(app: &TestApp, body: Value) -> Value {
    let r = app.post("/v1/webhooks", body).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().expect("id").to_owned()
}

async fn send_test(app: &TestApp, webhook: &str) -> String {
    let r = app
        .post(&format!("/v1/webhooks/{webhook}/test"), json!({}))
        .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    r.json()["delivery_id"]
        .as_str()
        .expect("delivery")
        .to_owned()
}

async fn deliveries(app: &TestApp, webhook: &str, query: &str) -> Vec<Value> {
    let r = app
        .get(&format!("/v1/webhooks/{webhook}/deliveries{query}"))
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["items"].as_array().cloned().unwrap_or_default()
}

async fn delivery(app: &TestApp, webhook: &str, id: &str) -> Value {
    deliveries(app, webhook, "?limit=200")
        .await
        .into_iter()
        .find(|d| d["id"] == id)
        .unwrap_or_else(|| panic!("delivery {id} not listed"))
}

/// Polls a delivery until `done` holds.
async fn wait_delivery(
    app: &TestApp,
    webhook: &str,
    id: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let d = delivery(app, webhook, id).await;
        if done(&d) {
            return d;
        }
        assert!(Instant::now() < deadline, "delivery never got there: {d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn status_is(s: &'static str) -> impl Fn(&Value) -> bool {
    move |d: &Value| d["status"] == s
}

fn attempt_codes(d: &Value) -> Vec<Option<i64>> {
    d["attempts"]
        .as_array()
        .map(|a| a.iter().map(|x| x["status_code"].as_i64()).collect())
        .unwrap_or_default()
}

async fn total_attempts(app: &TestApp) -> i64 {
    let c = app.env.pool.get().await.expect("db");
    c.query_one("SELECT count(*) FROM webhook_attempts", &[])
        .await
        .expect("count")
        .get(0)
}

fn opts(dispatcher: bool) -> Options {
    Options {
        dispatcher,
        ..Options::default()
    }
}

fn assert_spacing(hits: &[Hit], at_least: Duration) {
    for pair in hits.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= at_least, "attempts only {gap:?} apart");
    }
}

// ---- tests ----------------------------------------------------------------

#[tokio::test]
async fn delivered_events_verify_and_follow_type_and_project_filters() {
    let app = spawn_app_with(opts(true)).await;
    app.create_project("p", json!({})).await;
    app.create_project("other", json!({})).await;
    let succeeded_only = Receiver::always(200).await;
    let all = Receiver::always(204).await;
    let elsewhere = Receiver::always(200).await;
    let w = create_webhook(
        &app,
        json!({"url": succeeded_only.url, "events": ["command.succeeded"], "project": "p"}),
    )
    .await;
    let secret = w["secret"]
        .as_str()
        .expect("secret shown on create")
        .to_owned();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(w["project"], "p");
    assert_eq!(w["enabled"], true);
    create_webhook(&app, json!({"url": all.url, "events": ["*"]})).await;
    create_webhook(
        &app,
        json!({"url": elsewhere.url, "events": ["*"], "project": "other"}),
    )
    .await;
    let listed = app.get(&format!("/v1/webhooks/{}", id_of(&w))).await.json();
    assert!(
        listed.get("secret").is_none(),
        "secret only in the create answer"
    );

    let cmd = app.run("p", json!({"command": "true"})).await;
    let cmd = app
        .wait_terminal(cmd["id"].as_str().expect("id"), WAIT)
        .await;

    let hit = succeeded_only.wait_hits(1).await.remove(0);
    let body: Value = serde_json::from_slice(&hit.body).expect("json body");
    assert_eq!(body["type"], "command.succeeded");
    assert_eq!(body["data"]["id"], cmd["id"]);
    assert_eq!(body["data"]["project"], "p");
    assert_eq!(hit.header("content-type"), "application/json");
    assert_eq!(
        hit.header("webhook-id"),
        body["id"].as_str().expect("event id")
    );
    let now = chrono::Utc::now().timestamp();
    webhook_sign::verify(
        &secret,
        &hit.header("webhook-id"),
        &hit.header("webhook-timestamp"),
        &hit.header("webhook-signature"),
        &hit.body,
        now,
        300,
    )
    .expect("signature verifies with the Standard Webhooks algorithm");
    assert!(
        webhook_sign::verify(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            &hit.header("webhook-id"),
            &hit.header("webhook-timestamp"),
            &hit.header("webhook-signature"),
            &hit.body,
            now,
            300,
        )
        .is_err(),
        "another secret does not verify"
    );

    // `*` gets both lifecycle events; the other project's endpoint nothing.
    let types: Vec<String> = all
        .wait_hits(2)
        .await
        .iter()
        .map(|h| serde_json::from_slice::<Value>(&h.body).expect("json")["type"].to_string())
        .collect();
    assert!(
        types.contains(&"\"command.started\"".to_owned()),
        "{types:?}"
    );
    assert!(
        types.contains(&"\"command.succeeded\"".to_owned()),
        "{types:?}"
    );
    let d = deliveries(&app, &id_of(&w), "").await;
    assert_eq!(d.len(), 1, "only command.succeeded matches: {d:?}");
    let d = wait_delivery(
        &app,
        &id_of(&w),
        d[0]["id"].as_str().expect("id"),
        status_is("succeeded"),
    )
    .await;
    assert_eq!(attempt_codes(&d), vec![Some(200)]);
    assert_eq!(succeeded_only.hits().len(), 1);
    assert!(elsewhere.hits().is_empty());
}

#[tokio::test]
async fn receiver_failing_twice_gets_three_attempts_at_the_scheduled_spacing() {
    let app = spawn_app_with(opts(true)).await; // schedule 0s,1s,1s
    let rx = Receiver::start(|n, _| if n < 2 { 500 } else { 200 }).await;
    let w = create_webhook(&app, json!({"url": rx.url, "events": ["*"]})).await;
    let d = send_test(&app, &id_of(&w)).await;

    let d = wait_delivery(&app, &id_of(&w), &d, status_is("succeeded")).await;
    assert_eq!(attempt_codes(&d), vec![Some(500), Some(500), Some(200)]);
    let hits = rx.hits();
    assert_eq!(hits.len(), 3);
    // 1 s minus the 10% jitter.
    assert_spacing(&hits, Duration::from_millis(900));
    let ids: Vec<String> = hits.iter().map(|h| h.header("webhook-id")).collect();
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "webhook-id is stable across retries"
    );
    assert_eq!(d["next_attempt_at"], Value::Null);
}

#[tokio::test]
async fn receiver_that_never_succeeds_ends_dead_after_the_schedule() {
    let app = spawn_app_with(opts(true)).await;
    let rx = Receiver::always(503).await;
    let w = create_webhook(&app, json!({"url": rx.url, "events": ["*"]})).await;
    let d = send_test(&app, &id_of(&w)).await;
    let d = wait_delivery(&app, &id_of(&w), &d, status_is("dead")).await;
    assert_eq!(attempt_codes(&d), vec![Some(503); 3]);
    assert_eq!(rx.hits().len(), 3);
    let dead = deliveries(&app, &id_of(&w), "?status=dead").await;
    assert_eq!(dead.len(), 1);
    assert!(
        deliveries(&app, &id_of(&w), "?status=pending")
            .await
            .is_empty()
    );
    let r = app
        .get(&format!(
            "/v1/webhooks/{}/deliveries?status=nope",
            id_of(&w)
        ))
        .await;
    r.assert_problem(422);
}

#[tokio::test]
async fn retry_after_on_503_and_429_is_honoured_up_to_the_cap() {
    let app = spawn_app_with(opts(false)).await;
    let mut cfg = dispatcher_config(&app.env); // schedule 0s,1s,1s
    cfg.webhook_retry_after_max = Duration::from_secs(3);
    let _d = RunningDispatcher::start(cfg).await;

    // Retry-After: 2 beats the 1 s (±10%) scheduled delay.
    let rx = Receiver::start(|n, _| if n == 0 { 503 } else { 200 }).await;
    rx.send_retry_after("2");
    let w = create_webhook(&app, json!({"url": rx.url, "events": ["*"]})).await;
    let d = send_test(&app, &id_of(&w)).await;
    wait_delivery(&app, &id_of(&w), &d, status_is("succeeded")).await;
    assert_spacing(&rx.hits(), Duration::from_millis(1950));

    // An hour is capped at 3 s: the retry still comes, after the cap.
    let rx = Receiver::start(|n, _| if n == 0 { 429 } else { 200 }).await;
    rx.send_retry_after("3600");
    let w = create_webhook(&app, json!({"url": rx.url, "events": ["*"]})).await;
    let d = send_test(&app, &id_of(&w)).await;
    wait_delivery(&app, &id_of(&w), &d, status_is("succeeded")).await;
    assert_spacing(&rx.hits(), Duration::from_millis(2950));
}

#[tokio::test]
async fn restarting_the_dispatcher_mid_schedule_loses_and_doubles_no_attempt() {
    let app = spawn_app_with(opts(false)).await;
    let mut cfg = dispatcher_config(&app.env);
    cfg.webhook_retry_schedule = parse_schedule("0s,2s,2s,2s").expect("schedule");
    let rx = Receiver::start(|n, _| if n < 3 { 500 } else { 200 }).await;
    let w = create_webhook(&app, json!({"url": rx.url, "events": ["*"]})).await;
    let d = send_test(&app, &id_of(&w)).await;

    let first = RunningDispatcher::start(cfg.clone()).await;
    rx.wait_hits(1).await;
    first.shutdown().await;
    let after_stop = rx.hits().len();
    let second = RunningDispatcher::start(cfg.clone()).await;
    let d = wait_delivery(&app, &id_of(&w), &d, status_is("succeeded")).await;
    assert_eq!(
        second
            .metric("webhook_deliveries_total", "outcome=\"succeeded\"")
            .await,
        1.0
    );
    second.shutdown().await;

    assert!(after_stop >= 1);
    assert_eq!(
        attempt_codes(&d),
        vec![Some(500), Some(500), Some(500), Some(200)]
    );
    let hits = rx.hits();
    assert_eq!(hits.len(), 4, "every attempt sent exactly once");
    assert_spacing(&hits, Duration::from_millis(1800));
}

#[tokio::test]
async fn two_dispatchers_deliver_each_endpoint_and_event_once_per_attempt() {
    let app = spawn_app_with(opts(false)).await;
    app.create_project("p", json!({})).await;
    let cfg = dispatcher_config(&app.env);
    // The first request of every event fails, the second succeeds.
    let rx = Receiver::start(|_, per_id| if per_id == 0 { 500 } else { 200 }).await;
    let w = create_webhook(&app, json!({"url": rx.url, "events": ["*"]})).await;
    let a = RunningDispatcher::start(cfg.clone()).await;
    let b = RunningDispatcher::start(cfg).await;

    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(app.run("p", json!({"command": "true"})).await["id"].clone());
    }
    for id in &ids {
        app.wait_terminal(id.as_str().expect("id"), WAIT).await;
    }
    // 8 commands × (started, succeeded) = 16 events, 2 attempts each.
    let hits = rx.wait_hits(32).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let ds = deliveries(&app, &id_of(&w), "?limit=200").await;
        if ds.len() == 16 && ds.iter().all(|d| d["status"] == "succeeded") {
            for d in &ds {
                assert_eq!(attempt_codes(d), vec![Some(500), Some(200)], "{d}");
            }
            break;
        }
        assert!(Instant::now() < deadline, "not all delivered: {ds:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let hits_after = rx.hits();
    assert_eq!(
        hits_after.len(),
        32,
        "no extra sends (had {} at first)",
        hits.len()
    );
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for h in &hits_after {
        *per_id.entry(h.header("webhook-id")).or_default() += 1;
    }
    assert_eq!(per_id.len(), 16);
    assert!(per_id.values().all(|&n| n == 2), "{per_id:?}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn the_circuit_breaker_stops_sends_to_a_dead_host() {
    let app = spawn_app_with(opts(false)).await;
    let mut cfg = dispatcher_config(&app.env);
    cfg.webhook_retry_schedule =
        parse_schedule("0s,100ms,100ms,100ms,100ms,100ms,100ms,100ms").expect("schedule");
    cfg.webhook_breaker_threshold = 2;
    cfg.webhook_breaker_open = Duration::from_secs(600);
    cfg.webhook_concurrency = 1;
    let url = dead_url().await;
    let w = create_webhook(&app, json!({"url": url, "events": ["*"]})).await;
    for _ in 0..3 {
        send_test(&app, &id_of(&w)).await;
    }
    let _d = RunningDispatcher::start(cfg).await;

    let deadline = Instant::now() + WAIT;
    while total_attempts(&app).await < 2 {
        assert!(Instant::now() < deadline, "no attempts");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Without the breaker, 3 deliveries × 8 attempts 100 ms apart would all
    // be dead within a second or two. With it, the count stays put.
    let opened = total_attempts(&app).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        total_attempts(&app).await,
        opened,
        "sends continued while open"
    );
    assert_eq!(opened, 2, "the circuit opened after the threshold");
    let ds = deliveries(&app, &id_of(&w), "").await;
    assert_eq!(ds.len(), 3);
    assert!(ds.iter().all(|d| d["status"] == "pending"), "{ds:?}");
    let errors: Vec<&str> = ds
        .iter()
        .flat_map(|d| d["attempts"].as_array().cloned().unwrap_or_default())
        .map(|a| a["error"].as_str().unwrap_or_default().to_owned())
        .map(|e| if e.is_empty() { "none" } else { "some" })
        .collect();
    assert!(
        errors.iter().all(|e| *e == "some"),
        "connection errors are recorded"
    );
}

#[tokio::test]
async fn ssrf_targets_are_refused_with_problem_json() {
    let app = spawn_app_with(Options {
        worker: false,
        webhook_allow_private: false,
        ..Options::default()
    })
    .await;
    for url in [
        "http://127.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "file:///etc/passwd",
        "http://10.0.0.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://100.64.0.1/",
        "http://localhost:8080/",
        "ftp://example.com/",
    ] {
        let r = app
            .post("/v1/webhooks", json!({"url": url, "events": ["*"]}))
            .await;
        let p = r.assert_problem(422);
        assert_eq!(p["errors"][0]["field"], "url", "{url}: {p}");
    }
    // A public literal is accepted; changing it to an internal one is not.
    let w = create_webhook(&app, json!({"url": "http://1.1.1.1/hook", "events": ["*"]})).await;
    let r = app
        .request(
            Method::PATCH,
            &format!("/v1/webhooks/{}", id_of(&w)),
            Some(&app.admin_key),
            Some(json!({"url": "http://192.168.0.10/"})),
        )
        .await;
    assert_eq!(r.assert_problem(422)["errors"][0]["field"], "url");
    let r = app
        .post(
            "/v1/webhooks",
            json!({"url": "https://example.com/", "events": ["command.queued"], "bogus": 1}),
        )
        .await;
    assert!(r.status == 422 || r.status == 400, "{}", r.status);
    let r = app
        .post(
            "/v1/webhooks",
            json!({"url": "http://1.1.1.1/", "events": ["command.queued"], "secret": "x"}),
        )
        .await;
    let p = r.assert_problem(422);
    let fields: Vec<&str> = p["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    assert_eq!(fields, vec!["events[0]", "secret"], "{p}");
}

#[tokio::test]
async fn redeliver_and_recover_bring_failed_deliveries_back() {
    let app = spawn_app_with(opts(true)).await;
    let rx = Receiver::always(500).await;
    let w = create_webhook(&app, json!({"url": rx.url, "events": ["*"]})).await;
    let wid = id_of(&w);
    let since = chrono::Utc::now() - chrono::Duration::seconds(1);
    let one = send_test(&app, &wid).await;
    let two = send_test(&app, &wid).await;
    let three = send_test(&app, &wid).await;
    for d in [&one, &two, &three] {
        wait_delivery(&app, &wid, d, status_is("dead")).await;
    }

    // Redeliver: one new attempt now.
    rx.answer_with(|_, _| 200);
    let r = app
        .post(
            &format!("/v1/webhooks/{wid}/deliveries/{one}/redeliver"),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["status"], "pending");
    let d = wait_delivery(&app, &wid, &one, status_is("succeeded")).await;
    assert_eq!(attempt_codes(&d).len(), 4);

    // A failed manual redelivery is not retried.
    rx.answer_with(|_, _| 500);
    app.post(
        &format!("/v1/webhooks/{wid}/deliveries/{two}/redeliver"),
        json!({}),
    )
    .await;
    let d = wait_delivery(&app, &wid, &two, status_is("failed")).await;
    assert_eq!(attempt_codes(&d).len(), 4);

    // Recover: every failed/dead delivery since then, with a fresh schedule.
    rx.answer_with(|_, _| 200);
    let r = app
        .post(
            &format!("/v1/webhooks/{wid}/recover"),
            json!({"since": since.to_rfc3339()}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["recovered"], 2);
    for d in [&two, &three] {
        wait_delivery(&app, &wid, d, status_is("succeeded")).await;
    }
    let r = app
        .post(
            &format!("/v1/webhooks/{wid}/deliveries/{}/redeliver", uuid_nil()),
            json!({}),
        )
        .await;
    r.assert_problem(404);

    let c = app.env.pool.get().await.expect("db");
    let actions: Vec<String> = c
        .query(
            "SELECT action FROM audit_log WHERE target_type = 'webhook' ORDER BY id",
            &[],
        )
        .await
        .expect("audit")
        .iter()
        .map(|r| r.get(0))
        .collect();
    for a in [
        "webhook.create",
        "webhook.test",
        "webhook.redeliver",
        "webhook.recover",
    ] {
        assert!(actions.iter().any(|x| x == a), "{a} audited: {actions:?}");
    }
}

fn uuid_nil() -> &'static str {
    "00000000-0000-0000-0000-000000000000"
}

#[tokio::test]
async fn gone_disables_the_endpoint_and_patch_re_enables_it() {
    let app = spawn_app_with(opts(true)).await;
    let rx = Receiver::start(|n, _| if n == 0 { 410 } else { 200 }).await;
    let w = create_webhook(&app, json!({"url": rx.url, "events": ["*"]})).await;
    let wid = id_of(&w);
    let d = send_test(&app, &wid).await;
    let d = wait_delivery(&app, &wid, &d, status_is("failed")).await;
    assert_eq!(attempt_codes(&d), vec![Some(410)]);
    let w = app.get(&format!("/v1/webhooks/{wid}")).await.json();
    assert_eq!(w["enabled"], false);
    assert!(
        w["disabled_reason"]
            .as_str()
            .is_some_and(|r| r.contains("410")),
        "{w}"
    );
    let r = app
        .post(&format!("/v1/webhooks/{wid}/test"), json!({}))
        .await;
    r.assert_problem(409);

    let r = app
        .request(
            Method::PATCH,
            &format!("/v1/webhooks/{wid}"),
            Some(&app.admin_key),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(r.status, 200);
    let w = r.json();
    assert_eq!(w["enabled"], true);
    assert_eq!(w["disabled_reason"], Value::Null);
    assert_eq!(w["failing_since"], Value::Null);
    let d = send_test(&app, &wid).await;
    wait_delivery(&app, &wid, &d, status_is("succeeded")).await;
    assert_eq!(rx.hits().len(), 2);

    // Deliveries page newest first with a cursor.
    let first = app
        .get(&format!("/v1/webhooks/{wid}/deliveries?limit=1"))
        .await
        .json();
    assert_eq!(first["items"][0]["id"], d);
    let cursor = first["next_cursor"].as_str().expect("cursor");
    let second = app
        .get(&format!(
            "/v1/webhooks/{wid}/deliveries?limit=1&cursor={cursor}"
        ))
        .await
        .json();
    assert_eq!(second["items"][0]["status"], "failed");

    // Other fields change; disabling by hand says so.
    let r = app
        .request(
            Method::PATCH,
            &format!("/v1/webhooks/{wid}"),
            Some(&app.admin_key),
            Some(json!({"events": ["command.failed", "command.failed"], "enabled": false})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let w = r.json();
    assert_eq!(w["events"], json!(["command.failed"]));
    assert_eq!(w["enabled"], false);
    assert_eq!(w["disabled_reason"], "disabled through the API");

    let r = app
        .request(
            Method::DELETE,
            &format!("/v1/webhooks/{wid}"),
            Some(&app.admin_key),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    app.get(&format!("/v1/webhooks/{wid}"))
        .await
        .assert_problem(404);
}

#[tokio::test]
async fn an_endpoint_failing_past_the_limit_is_disabled() {
    let app = spawn_app_with(opts(false)).await;
    let mut cfg = dispatcher_config(&app.env);
    cfg.webhook_retry_schedule = parse_schedule("0s,1s,1s,1s,1s,1s").expect("schedule");
    cfg.webhook_disable_after = Duration::from_secs(2);
    let _d = RunningDispatcher::start(cfg).await;
    let rx = Receiver::always(500).await;
    let w = create_webhook(&app, json!({"url": rx.url, "events": ["*"]})).await;
    let wid = id_of(&w);
    let d = send_test(&app, &wid).await;
    let d = wait_delivery(&app, &wid, &d, status_is("failed")).await;
    assert!(attempt_codes(&d).len() >= 3, "{d}");
    let w = app.get(&format!("/v1/webhooks/{wid}")).await.json();
    assert_eq!(w["enabled"], false);
    assert!(
        w["disabled_reason"]
            .as_str()
            .is_some_and(|r| r.contains("failing continuously")),
        "{w}"
    );
    assert!(w["failing_since"].is_string());
    let sent = rx.hits().len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.hits().len(), sent, "no sends once disabled");
}

#[tokio::test]
async fn a_project_restricted_key_sees_only_its_projects_webhooks() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    app.create_project("mine", json!({})).await;
    app.create_project("theirs", json!({})).await;
    let global = create_webhook(
        &app,
        json!({"url": "http://127.0.0.1:9/a", "events": ["*"]}),
    )
    .await;
    let theirs = create_webhook(
        &app,
        json!({"url": "http://127.0.0.1:9/b", "events": ["*"], "project": "theirs"}),
    )
    .await;
    let own = create_webhook(
        &app,
        json!({"url": "http://127.0.0.1:9/c", "events": ["*"], "project": "mine"}),
    )
    .await;

    let c = app.env.pool.get().await.expect("db");
    let project_id: uuid::Uuid = c
        .query_one("SELECT id FROM projects WHERE name = 'mine'", &[])
        .await
        .expect("project")
        .get(0);
    let k = rdev_shared::secret::generate_key();
    rdev_shared::db::keys::insert(
        &c,
        &rdev_shared::db::keys::NewKey {
            name: "restricted".into(),
            prefix: k.prefix.clone(),
            hash: k.hash,
            scopes: vec![rdev_shared::domain::Scope::WebhooksManage],
            project_ids: Some(vec![project_id]),
        },
    )
    .await
    .expect("key");
    let key = k.secret;

    let r = app
        .request(Method::GET, "/v1/webhooks", Some(&key), None)
        .await;
    let ids: Vec<String> = r.json()["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(ids, vec![id_of(&own)]);
    for other in [&global, &theirs] {
        let r = app
            .request(
                Method::GET,
                &format!("/v1/webhooks/{}", id_of(other)),
                Some(&key),
                None,
            )
            .await;
        r.assert_problem(404);
    }
    let r = app
        .request(
            Method::POST,
            "/v1/webhooks",
            Some(&key),
            Some(json!({"url": "http://127.0.0.1:9/d", "events": ["*"]})),
        )
        .await;
    r.assert_problem(403);
    let r = app
        .request(
            Method::POST,
            "/v1/webhooks",
            Some(&key),
            Some(json!({"url": "http://127.0.0.1:9/d", "events": ["*"], "project": "theirs"})),
        )
        .await;
    assert_eq!(r.assert_problem(422)["errors"][0]["field"], "project");
}

#[tokio::test]
async fn a_claim_lost_to_a_crash_is_retried_after_its_lease_and_counted_once() {
    use rdev_shared::db::webhooks::{self as repo, AttemptRecord, Next};

    let app = spawn_app_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let w = create_webhook(&app, json!({"url": "http://127.0.0.1:9/", "events": ["*"]})).await;
    let d = send_test(&app, &id_of(&w)).await;
    let c = app.env.pool.get().await.expect("db");

    // A dispatcher claims the delivery, then "crashes" (never records).
    let first = repo::claim_due(&c, 10, Duration::from_millis(300))
        .await
        .expect("claim");
    assert_eq!(first.len(), 1);
    assert!(
        repo::claim_due(&c, 10, Duration::from_secs(30))
            .await
            .expect("claim")
            .is_empty(),
        "a leased delivery is not claimed twice"
    );
    // After the lease, another dispatcher gets it.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = repo::claim_due(&c, 10, Duration::from_secs(30))
        .await
        .expect("claim");
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].id.to_string(), d);

    let record = |token| AttemptRecord {
        delivery_id: second[0].id,
        lease_token: token,
        at: chrono::Utc::now(),
        status_code: Some(200),
        duration_ms: 1,
        error: None,
        response_excerpt: None,
        next: Next::Succeeded,
    };
    // The crashed holder's late write is refused; the live holder's counts.
    assert!(
        !repo::record_attempt(&c, &record(first[0].lease_token))
            .await
            .expect("record")
    );
    assert!(
        repo::record_attempt(&c, &record(second[0].lease_token))
            .await
            .expect("record")
    );
    assert!(
        !repo::record_attempt(&c, &record(second[0].lease_token))
            .await
            .expect("record")
    );
    let d = delivery(&app, &id_of(&w), &d).await;
    assert_eq!(d["status"], "succeeded");
    assert_eq!(attempt_codes(&d), vec![Some(200)]);
}

/// Issue 15, finding 8: an endpoint disabled (by the API) while a
/// dispatcher records an attempt of one of its deliveries. The API locks
/// the endpoint, then its pending deliveries; the dispatcher must take them
/// in the same order, or PostgreSQL finds a deadlock and aborts one side
/// (an attempt unrecorded, a 410 lost, or a 500).
#[tokio::test]
async fn disabling_an_endpoint_while_an_attempt_is_recorded_does_not_deadlock() {
    let app = spawn_app_with(opts(true)).await;
    let rx = Receiver::always(410).await;
    rx.answer_after(Duration::from_millis(800));
    let w = create_webhook(&app, json!({"url": rx.url, "events": ["*"]})).await;
    let wid: uuid::Uuid = id_of(&w).parse().expect("uuid");
    let mut client = app.env.pool.get().await.expect("db");
    let before = deadlocks(&client).await;
    send_test(&app, &wid.to_string()).await;
    rx.wait_hits(1).await;
    // The API's disable, by hand so it can be held open: the endpoint
    // first; the receiver then answers and the dispatcher records.
    let tx = client.transaction().await.expect("tx");
    tx.execute(
        "UPDATE webhooks SET enabled = false, disabled_reason = 'by hand', updated_at = now() WHERE id = $1",
        &[&wid],
    )
    .await
    .expect("lock the endpoint");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Then its pending deliveries (`stop_pending`).
    tx.execute(
        "UPDATE webhook_deliveries SET status = 'failed', updated_at = now() \
         WHERE webhook_id = $1 AND status = 'pending'",
        &[&wid],
    )
    .await
    .expect("no deadlock on the API's side");
    tx.commit().await.expect("commit");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // pg_stat counters are flushed by backends at the end of transactions
    // (and at most every second): give them a moment.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let after = deadlocks(&client).await;
    assert_eq!(after - before, 0, "PostgreSQL found a deadlock");
}

async fn deadlocks(c: &rdev_shared::db::Client) -> i64 {
    c.query_one(
        "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
        &[],
    )
    .await
    .expect("stats")
    .get::<_, i64>(0)
}
