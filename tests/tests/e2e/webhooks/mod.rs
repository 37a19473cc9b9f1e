//! Webhooks end to end: real receivers (axum on loopback) recording what
//! they get, the real dispatcher(s), PostgreSQL and RabbitMQ. This file
//! holds the receivers, dispatchers and API helpers the features' modules
//! share.

mod delivery;
mod endpoints;
mod retries;
mod security;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use rdev_shared::lifecycle::CancellationToken;
use serde_json::{Value, json};

use rdev_tests::{Options, TestApp};

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
