//! `spawn_app()`: the real API (and, when asked, a worker and a dispatcher)
//! on loopback ports, with a fresh database and AMQP prefix, plus request
//! helpers. Everything stops and is removed when the `TestApp` drops.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use rdev_api::config::ApiConfig;
use rdev_shared::config::{AmqpConfig, Secret};
use rdev_shared::db::keys;
use rdev_shared::domain::Scope;
use rdev_shared::secret;
use rdev_shared::test_support::TestEnv;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub struct Options {
    pub worker: bool,
    pub dispatcher: bool,
    /// Overrides the API's broker URL (e.g. an unreachable one).
    pub api_amqp_url: Option<String>,
    pub max_body_bytes: usize,
    pub kill_grace_s: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            worker: true,
            dispatcher: false,
            api_amqp_url: None,
            max_body_bytes: 1024 * 1024,
            kill_grace_s: 1,
        }
    }
}

pub struct TestApp {
    pub env: TestEnv,
    pub base: String,
    pub http: reqwest::Client,
    pub admin_key: String,
    pub workspace: PathBuf,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub async fn spawn_app_with(opts: Options) -> TestApp {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let env = TestEnv::new().await;
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    let workspace = std::env::temp_dir().join(format!("rdev-test-{}", env.topology.prefix()));
    std::fs::create_dir_all(&workspace).expect("workspace");

    let mut api_amqp = env.amqp.clone();
    if let Some(url) = &opts.api_amqp_url {
        api_amqp = AmqpConfig {
            amqp_url: Secret::new(url.clone()),
            prefix: env.amqp.prefix.clone(),
        };
    }
    let cfg = ApiConfig {
        db: env.db.clone(),
        amqp: api_amqp,
        listen: "127.0.0.1:0".parse().expect("addr"),
        migrate: false,
        max_body_bytes: opts.max_body_bytes,
        max_timeout_s: 86_400,
        sse_keepalive: Duration::from_secs(15),
        sse_poll: Duration::from_millis(500),
    };
    let server = rdev_api::start(cfg, stop.clone().cancelled_owned())
        .await
        .expect("start api");
    let addr: SocketAddr = server.addr;
    tasks.push(tokio::spawn(async move {
        let _ = server.task.await;
    }));

    if opts.worker {
        let wcfg = worker_config(&env, &workspace, opts.kill_grace_s);
        let s = stop.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = rdev_worker::run(wcfg, s.cancelled_owned()).await {
                panic!("worker failed: {e}");
            }
        }));
    }
    if opts.dispatcher {
        let dcfg = dispatcher_config(&env);
        let d = rdev_dispatcher::start(dcfg, stop.clone().cancelled_owned())
            .await
            .expect("dispatcher");
        tasks.push(tokio::spawn(async move {
            let _ = d.task.await;
        }));
    }

    let generated = secret::generate_key();
    let client = env.pool.get().await.expect("db");
    keys::insert(
        &client,
        &keys::NewKey {
            name: "test-admin".into(),
            prefix: generated.prefix.clone(),
            hash: generated.hash,
            scopes: vec![Scope::Admin],
            project_ids: None,
        },
    )
    .await
    .expect("admin key");
    drop(client);

    TestApp {
        base: format!("http://{addr}"),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http"),
        admin_key: generated.secret,
        workspace,
        env,
        stop,
        tasks,
    }
}

pub fn worker_config(
    env: &TestEnv,
    workspace: &std::path::Path,
    kill_grace_s: u64,
) -> rdev_worker::Config {
    rdev_worker::Config {
        db: env.db.clone(),
        amqp: env.amqp.clone(),
        log: rdev_shared::config::LogConfig {
            log_format: rdev_shared::config::LogFormat::Text,
        },
        listen: "127.0.0.1:0".parse().expect("addr"),
        workspace_root: workspace.to_path_buf(),
        concurrency: 4,
        heartbeat_s: 1,
        kill_grace_s,
        worker_id: None,
        drain_s: 2,

        kube_enabled: false,
        kube_pod_cache_ttl_s: 5,
        kube_api_timeout_s: 15,
    }
}

pub fn dispatcher_config(env: &TestEnv) -> rdev_dispatcher::config::Config {
    rdev_dispatcher::config::Config {
        db: env.db.clone(),
        amqp: env.amqp.clone(),
        log: rdev_shared::config::LogConfig {
            log_format: rdev_shared::config::LogFormat::Text,
        },
        listen: "127.0.0.1:0".parse().expect("addr"),
        relay_interval: Duration::from_millis(100),
        relay_min_age: Duration::ZERO,
        lost_after_s: 30,
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
        for t in &self.tasks {
            t.abort();
        }
        let _ = std::fs::remove_dir_all(&self.workspace);
    }
}

/// A response read whole: status, headers, body.
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: bytes::Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// Asserts a problem+json error with this status.
    pub fn assert_problem(&self, status: u16) -> Value {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(
            self.header("content-type").as_deref(),
            Some("application/problem+json")
        );
        let p = self.json();
        assert_eq!(p["status"], status);
        assert!(p["type"].as_str().is_some_and(|t| !t.is_empty()), "{p}");
        assert!(p["title"].as_str().is_some(), "{p}");
        assert!(p["detail"].as_str().is_some_and(|d| !d.is_empty()), "{p}");
        p
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Resp {
        let r = req.send().await.expect("request");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.bytes().await.expect("body");
        Resp {
            status,
            headers,
            body,
        }
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let mut req = self.http.request(method, self.url(path));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.send(req).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.request(
            reqwest::Method::GET,
            path,
            Some(&self.admin_key.clone()),
            None,
        )
        .await
    }

    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.request(
            reqwest::Method::POST,
            path,
            Some(&self.admin_key.clone()),
            Some(body),
        )
        .await
    }

    pub async fn create_project(&self, name: &str, extra: Value) -> Value {
        let mut body = json!({ "name": name, "executor": { "kind": "local", "workdir": name } });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        let r = self.post("/v1/projects", body).await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        r.json()
    }

    pub async fn run(&self, project: &str, body: Value) -> Value {
        let r = self
            .post(&format!("/v1/projects/{project}/commands"), body)
            .await;
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        r.json()
    }

    /// Polls until the command is terminal (or panics after `limit`).
    pub async fn wait_terminal(&self, id: &str, limit: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let c = self.get(&format!("/v1/commands/{id}")).await.json();
            let s = c["status"].as_str().unwrap_or_default().to_owned();
            if !matches!(s.as_str(), "queued" | "running") {
                return c;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "command {id} still {s}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn output(&self, id: &str, stream: Option<&str>) -> Vec<u8> {
        let q = stream.map(|s| format!("?stream={s}")).unwrap_or_default();
        let r = self.get(&format!("/v1/commands/{id}/output{q}")).await;
        assert_eq!(r.status, 200);
        r.body.to_vec()
    }

    /// Reads SSE events until `end` (or until `stop_after` output events).
    pub async fn events(
        &self,
        id: &str,
        last_event_id: Option<i64>,
        stop_after: Option<usize>,
    ) -> Vec<Sse> {
        use eventsource_stream::Eventsource;
        let mut req = self
            .http
            .get(self.url(&format!("/v1/commands/{id}/events")))
            .bearer_auth(&self.admin_key);
        if let Some(l) = last_event_id {
            req = req.header("Last-Event-ID", l.to_string());
        }
        let resp = req.send().await.expect("sse");
        assert_eq!(resp.status().as_u16(), 200);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap_or("")
                .starts_with("text/event-stream")
        );
        let mut stream = resp.bytes_stream().eventsource();
        let mut out = Vec::new();
        let mut outputs = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, stream.next()).await {
            let ev = ev.expect("sse parse");
            let data: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
            let done = ev.event == "end";
            if ev.event == "output" {
                outputs += 1;
            }
            out.push(Sse {
                event: ev.event,
                id: ev.id,
                data,
            });
            if done || stop_after.is_some_and(|n| outputs >= n) {
                break;
            }
        }
        out
    }
}

#[derive(Debug, Clone)]
pub struct Sse {
    pub event: String,
    pub id: String,
    pub data: Value,
}

/// Concatenates the `data` of `output` events of one stream.
pub fn sse_text(events: &[Sse], stream: &str) -> String {
    events
        .iter()
        .filter(|e| e.event == "output" && e.data["stream"] == stream)
        .map(|e| e.data["data"].as_str().unwrap_or_default())
        .collect()
}

/// Output events' seqs in order.
pub fn sse_seqs(events: &[Sse]) -> Vec<i64> {
    events
        .iter()
        .filter(|e| e.event == "output")
        .filter_map(|e| e.data["seq"].as_i64())
        .collect()
}
