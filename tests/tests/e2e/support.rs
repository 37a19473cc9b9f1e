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
    /// Overrides the in-process worker's broker URL (e.g. through a proxy).
    pub worker_amqp_url: Option<String>,
    pub max_body_bytes: usize,
    pub kill_grace_s: u64,
    /// `RDEV_WEBHOOK_ALLOW_PRIVATE` of the API (receivers in tests are on loopback).
    pub webhook_allow_private: bool,
    pub concurrency: u16,
    pub lost_after_s: u64,
    /// `RDEV_REQUEUE_AFTER` of the dispatcher.
    pub requeue_after: Duration,
    pub sse_max_connections: usize,
    pub sse_max_per_key: usize,
    pub sse_max_lifetime: Duration,
    /// `RDEV_TRUSTED_PROXIES` of the API.
    pub trusted_proxies: &'static str,
    /// `RDEV_RATE_LIMIT` of the API.
    pub rate_limit: &'static str,
    /// `RDEV_EXECUTORS` of the API.
    pub executors: &'static str,
    /// `RDEV_COMMAND_LIMITS_MAX` of the API and the worker.
    pub limits_max: &'static str,
    /// Changes more settings of the API (after the ones above).
    pub api: Option<fn(&mut ApiConfig)>,
    /// Changes more settings of the worker (after the ones above).
    pub worker_cfg: Option<fn(&mut rdev_worker::Config)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            worker: true,
            dispatcher: false,
            api_amqp_url: None,
            worker_amqp_url: None,
            max_body_bytes: 1024 * 1024,
            kill_grace_s: 1,
            webhook_allow_private: true,
            concurrency: 4,
            lost_after_s: 30,
            requeue_after: Duration::from_secs(600),
            sse_max_connections: 10_000,
            sse_max_per_key: 100,
            sse_max_lifetime: Duration::from_secs(3600),
            trusted_proxies: "",
            // Generous: tests poll; rate-limit tests set per-key limits.
            rate_limit: "1000000/60s",
            executors: "local,kubernetes",
            limits_max: rdev_shared::containment::MAX_LIMITS,
            api: None,
            worker_cfg: None,
        }
    }
}

pub struct TestApp {
    pub env: TestEnv,
    /// Base URL of the in-process worker's `/health`, `/ready`, `/metrics`.
    pub worker_ops: Option<String>,
    /// Base URL of the in-process dispatcher's ops endpoints.
    pub dispatcher_ops: Option<String>,
    pub base: String,
    /// Base URL of the API's operations listener (`/metrics`).
    pub api_ops: String,
    pub http: reqwest::Client,
    pub admin_key: String,
    pub workspace: PathBuf,
    /// Settings the API was started with (to start more instances alike).
    pub api_cfg: ApiConfig,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

/// The key ring every in-process service of the tests seals secrets with
/// (`RDEV_ENCRYPTION_KEYS` of a subprocess started by a test).
pub const TEST_ENCRYPTION_KEYS: &str = "test1:dGVzdC1vbmx5LWtleS1mb3ItcmRldi10ZXN0cy0zMmI=";

pub async fn spawn_app_with(opts: Options) -> TestApp {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    rdev_shared::crypto::install(
        rdev_shared::crypto::KeyRing::parse(TEST_ENCRYPTION_KEYS).expect("test key ring"),
    );
    let env = TestEnv::new().await;
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    let workspace = std::env::temp_dir().join(format!("rdev-test-{}", env.topology.prefix()));
    std::fs::create_dir_all(&workspace).expect("workspace");

    let mut api_amqp = env.amqp.clone();
    if let Some(url) = &opts.api_amqp_url {
        api_amqp = AmqpConfig {
            amqp_url: Secret::new(url.clone()),
            ..env.amqp.clone()
        };
    }
    let mut cfg = ApiConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        ops_listen: "127.0.0.1:0".parse().expect("addr"),
        migrate: false,
        max_body_bytes: opts.max_body_bytes,
        max_timeout_s: 86_400,
        sse_keepalive: Duration::from_secs(1),
        sse_poll: Duration::from_millis(500),
        webhook_allow_private: opts.webhook_allow_private,
        sse_max_connections: opts.sse_max_connections,
        sse_max_per_key: opts.sse_max_per_key,
        sse_max_lifetime: opts.sse_max_lifetime,
        cache_ttl: Duration::from_secs(30),
        trusted_proxies: opts.trusted_proxies.parse().expect("trusted proxies"),
        rate_limit: opts.rate_limit.parse().expect("rate limit"),
        executors: opts.executors.parse().expect("executors"),
        limits: rdev_shared::containment::LimitsConfig {
            max: opts.limits_max.parse().expect("limits max"),
            ..Default::default()
        },
        // Tests hammer the API from one address with made-up keys.
        auth_failure_limit: "1000000/60s".parse().expect("auth failure limit"),
        // The files API serves the worker's workspace (one volume).
        workspace_root: Some(workspace.clone()),
        ..ApiConfig::local(env.db.clone(), api_amqp)
    };
    if let Some(tweak) = opts.api {
        tweak(&mut cfg);
    }
    let server = rdev_api::start(cfg.clone(), stop.clone().cancelled_owned())
        .await
        .expect("start api");
    let addr: SocketAddr = server.addr;
    let api_ops = format!("http://{}", server.ops_addr);
    tasks.push(tokio::spawn(async move {
        let _ = server.task.await;
    }));

    let mut worker_ops = None;
    let mut dispatcher_ops = None;
    if opts.worker {
        let mut wcfg = worker_config(&env, &workspace, opts.kill_grace_s);
        wcfg.concurrency = opts.concurrency;
        if let Some(url) = &opts.worker_amqp_url {
            wcfg.amqp.amqp_url = Secret::new(url.clone());
        }
        wcfg.limits.max = opts.limits_max.parse().expect("limits max");
        if let Some(tweak) = opts.worker_cfg {
            tweak(&mut wcfg);
        }
        let s = stop.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = rdev_worker::run_with_addr(wcfg, s.cancelled_owned(), Some(tx)).await {
                panic!("worker failed: {e}");
            }
        }));
        worker_ops = rx.await.ok().map(|a| format!("http://{a}"));
    }
    if opts.dispatcher {
        let mut dcfg = dispatcher_config(&env);
        dcfg.lost_after_s = opts.lost_after_s;
        dcfg.requeue_after = opts.requeue_after;
        let d = rdev_dispatcher::start(dcfg, stop.clone().cancelled_owned())
            .await
            .expect("dispatcher");
        dispatcher_ops = Some(format!("http://{}", d.addr));
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
        worker_ops,
        dispatcher_ops,
        base: format!("http://{addr}"),
        api_ops,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http"),
        admin_key: generated.secret,
        workspace,
        api_cfg: cfg,
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
        listen: "127.0.0.1:0".parse().expect("addr"),
        workspace_root: workspace.to_path_buf(),
        heartbeat_s: 1,
        kill_grace_s,
        drain_s: 2,
        executors: "local".parse().expect("executors"),
        ..rdev_worker::Config::local(env.db.clone(), env.amqp.clone())
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
        requeue_after: Duration::from_secs(600),
        audit_retention: Duration::from_secs(90 * 86_400),
        outbox_retention: Duration::from_secs(86_400),
        output_retention: Duration::from_secs(30 * 86_400),
        command_retention: Duration::from_secs(90 * 86_400),
        webhook_retention: Duration::from_secs(30 * 86_400),
        retention_interval: Duration::from_secs(300),
        webhook_retry_schedule: rdev_dispatcher::webhooks::schedule::parse_schedule("0s,1s,1s")
            .expect("schedule"),
        webhook_timeout_s: 5,
        webhook_allow_private: true,
        webhook_disable_after: Duration::from_secs(3600),
        webhook_concurrency: 32,
        webhook_poll: Duration::from_millis(100),
        // High: tests that want the breaker set their own threshold.
        webhook_breaker_threshold: 1000,
        webhook_breaker_open: Duration::from_secs(30),
        webhook_retry_after_max: Duration::from_secs(3600),
        webhook_prefetch: 64,
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
    /// Starts another in-process worker on this app's database and broker;
    /// it stops when `stop` is cancelled or the app drops.
    pub fn start_worker(&mut self, concurrency: u16, stop: CancellationToken) {
        let mut cfg = worker_config(&self.env, &self.workspace, 1);
        cfg.concurrency = concurrency;
        let all = self.stop.clone();
        self.tasks.push(tokio::spawn(async move {
            let stopped = async move {
                tokio::select! { () = stop.cancelled() => {}, () = all.cancelled() => {} }
            };
            if let Err(e) = rdev_worker::run(cfg, stopped).await {
                panic!("worker failed: {e}");
            }
        }));
    }

    /// Starts a second API instance on the same database and broker.
    pub async fn start_api(
        &mut self,
        stop: CancellationToken,
    ) -> (String, tokio::task::JoinHandle<()>) {
        let cfg = self.api_cfg.clone();
        let all = self.stop.clone();
        let stopped = async move {
            tokio::select! { () = stop.cancelled() => {}, () = all.cancelled() => {} }
        };
        let server = rdev_api::start(cfg, stopped).await.expect("start api");
        let base = format!("http://{}", server.addr);
        let task = tokio::spawn(async move {
            let _ = server.task.await;
        });
        (base, task)
    }

    /// Starts another API instance on the same database and broker prefix;
    /// returns its base URL. It stops with the `TestApp`.
    pub async fn spawn_api(&mut self) -> String {
        let server = rdev_api::start(self.api_cfg.clone(), self.stop.clone().cancelled_owned())
            .await
            .expect("start api");
        let addr = server.addr;
        self.tasks.push(tokio::spawn(async move {
            let _ = server.task.await;
        }));
        format!("http://{addr}")
    }

    /// Creates a key through the API with the admin key; returns (id, secret).
    pub async fn create_key(&self, body: Value) -> (String, String) {
        let r = self.post("/v1/api-keys", body).await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        let k = r.json();
        (
            k["id"].as_str().expect("id").to_owned(),
            k["secret"].as_str().expect("secret").to_owned(),
        )
    }

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

    /// Polls until the command has the given status.
    pub async fn wait_status(&self, id: &str, status: &str, limit: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let c = self.get(&format!("/v1/commands/{id}")).await.json();
            if c["status"] == status {
                return c;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "command {id} is {} not {status}",
                c["status"]
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
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

/// Whether a process no longer runs (absent, or a zombie awaiting its reaper).
pub fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

/// Waits until a command has printed its first line, and returns it.
pub async fn first_line(app: &TestApp, id: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = app.output(id, None).await;
        let text = String::from_utf8_lossy(&out);
        if let Some(line) = text
            .split_inclusive('\n')
            .next()
            .filter(|l| l.ends_with('\n'))
        {
            return line.trim_end().to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing printed by {id}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A `sleep` duration unique to one test (`300.123456`): commands run in a
/// PID namespace of their own, so the pids they print mean nothing on the
/// host, but a process whose command line has this marker can be found.
pub fn sleep_marker() -> String {
    format!("300.{:06}", uuid::Uuid::now_v7().as_u128() % 1_000_000)
}

/// Host pids of live (not zombie) processes with `marker` as an argument.
pub fn marked_processes(marker: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if !process_gone(pid) && cmdline.split(|&b| b == 0).any(|a| a == marker.as_bytes()) {
            out.push(pid);
        }
    }
    out
}

/// Waits (up to 5 s) until no process carries `marker`.
pub async fn wait_no_marked(marker: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = marked_processes(marker);
        if left.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "processes with `{marker}` still run: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
