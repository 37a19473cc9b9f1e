//! The chaos run (issue 15): a mixed workload against real `rdev-api`,
//! `rdev-worker` and `rdev-dispatcher` processes on a private PostgreSQL and
//! a private RabbitMQ node, while it kills and restarts workers (SIGKILL and
//! SIGTERM), restarts RabbitMQ and PostgreSQL, and kills the dispatcher and
//! an API instance. At the end it checks and prints:
//!
//! - every accepted command reached a terminal status, and only one (its
//!   webhook events never name two different terminal types);
//! - no command ran twice (each appends a line to a marker file of its own);
//! - every SSE watcher that reached `end` saw every stored byte, in order,
//!   without duplicates (it resumes with `Last-Event-ID` whenever cut);
//! - every lifecycle event was delivered to the webhook receiver (which
//!   fails 20% of requests) at least once, and duplicates carry the same
//!   `webhook-id` and body;
//! - no process of any command is left;
//! - workers' and APIs' resident memory at the end vs the start.
//!
//! It never touches the machine's shared PostgreSQL or RabbitMQ. Run it with
//! `scripts/chaos [SECONDS]` (default 180), which builds the binaries first.
//! Environment: `RDEV_CHAOS_BIN` (directory of the binaries), `RDEV_CHAOS_SECONDS`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use rdev_shared::config::{DbConfig, Secret};
use rdev_shared::db::keys;
use rdev_shared::domain::Scope;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

const ENCRYPTION_KEYS: &str = "chaos1:dGVzdC1vbmx5LWtleS1mb3ItcmRldi10ZXN0cy0zMmI=";
const PREFIX: &str = "chaos";

type Failures = Arc<Mutex<Vec<String>>>;

fn fail(f: &Failures, msg: String) {
    eprintln!("chaos: FAIL {msg}");
    f.lock().expect("failures").push(msg);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn run(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().expect("spawn");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed: {text}");
    text
}

// ---- the private PostgreSQL ------------------------------------------------

struct Postgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
}

impl Postgres {
    fn start(root: &Path) -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL binaries in /usr/lib/postgresql")
            .flatten()
            .map(|e| e.path().join("bin"))
            .find(|b| b.join("initdb").is_file())
            .expect("initdb");
        let dir = root.join("pg");
        std::fs::create_dir_all(&dir).expect("pg dir");
        run(std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir));
        run(std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(dir.join("data")));
        let pg = Self {
            bin,
            dir,
            port: free_port(),
        };
        pg.ctl(&["start", "-w", "-t", "60"]);
        pg
    }

    fn ctl(&self, args: &[&str]) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c max_connections=200",
            self.port,
            self.dir.display()
        );
        run(std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-o", &opts, "-l"])
            .arg(self.dir.join("log"))
            .args(args));
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["stop", "-m", "immediate"])
            .output();
    }
}

// ---- the private RabbitMQ node ---------------------------------------------

struct Rabbit {
    dir: PathBuf,
    node: String,
    port: u16,
    dist_port: u16,
}

impl Rabbit {
    fn start(root: &Path) -> Self {
        let dir = root.join("rabbit");
        std::fs::create_dir_all(&dir).expect("rabbit dir");
        let port = free_port();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("plugins");
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.local = 127.0.0.1:{port}\n"),
        )
        .expect("conf");
        run(std::process::Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&dir));
        let r = Self {
            node: format!("chaos{port}@localhost"),
            dist_port: free_port(),
            dir,
            port,
        };
        r.up();
        r
    }

    fn env(&self, cmd: &mut std::process::Command) {
        let d = &self.dir;
        cmd.env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq"));
    }

    fn up(&self) {
        let mut c = std::process::Command::new("rabbitmq-server");
        self.env(&mut c);
        run(c.arg("-detached"));
        let mut w = std::process::Command::new("rabbitmqctl");
        self.env(&mut w);
        run(w
            .args(["-n", &self.node, "wait"])
            .arg(self.dir.join("pid"))
            .args(["--timeout", "90"]));
    }

    fn down(&self) {
        let mut c = std::process::Command::new("rabbitmqctl");
        self.env(&mut c);
        let _ = c.args(["-n", &self.node, "stop"]).output();
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        self.down();
    }
}

// ---- the services ----------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Api,
    Worker,
    Dispatcher,
}

struct Service {
    kind: Kind,
    name: String,
    env: Vec<(String, String)>,
    args: Vec<String>,
    child: Option<Child>,
    /// RSS (KiB) a few seconds after the first start, and restarts so far.
    first_rss: u64,
    restarts: u32,
    started: Instant,
}

struct Stack {
    bin: PathBuf,
    logs: PathBuf,
    services: Vec<Service>,
}

impl Stack {
    fn spawn(&self, s: &mut Service) {
        let exe = self.bin.join(match s.kind {
            Kind::Api => "rdev-api",
            Kind::Worker => "rdev-worker",
            Kind::Dispatcher => "rdev-dispatcher",
        });
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{}.log", s.name)))
            .expect("log");
        let mut cmd = Command::new(exe);
        cmd.args(&s.args)
            .envs(s.env.iter().cloned())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .kill_on_drop(true);
        s.child = Some(cmd.spawn().expect("spawn service"));
        s.started = Instant::now();
    }

    fn signal(s: &mut Service, sig: nix::sys::signal::Signal) -> Option<Child> {
        let child = s.child.take()?;
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
        }
        Some(child)
    }
}

// ---- the webhook receiver --------------------------------------------------

#[derive(Default)]
struct Received {
    /// webhook-id → (bodies seen, times).
    by_id: HashMap<String, (HashSet<Vec<u8>>, u32)>,
    requests: u64,
}

async fn receive(
    State(st): State<Arc<Mutex<Received>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut st = st.lock().expect("received");
    st.requests += 1;
    // Every fifth request fails: the dispatcher retries.
    if st.requests % 5 == 0 {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let e = st.by_id.entry(id).or_default();
    e.0.insert(body.to_vec());
    e.1 += 1;
    StatusCode::OK
}

// ---- SSE watchers ------------------------------------------------------------

#[derive(Default)]
struct WatchStats {
    ended: AtomicU64,
    gave_up: AtomicU64,
    resumes: AtomicU64,
}

/// Follows a command's events until `end`, resuming with Last-Event-ID on
/// any cut, on a random API instance; returns the bytes seen if it ended.
async fn watch(
    http: reqwest::Client,
    apis: Vec<String>,
    key: String,
    id: String,
    stats: Arc<WatchStats>,
    until: Instant,
    failures: Failures,
) -> Option<Vec<u8>> {
    let mut last: i64 = 0;
    let mut seen: Vec<u8> = Vec::new();
    let mut attempt = 0usize;
    while Instant::now() < until {
        let base = &apis[(attempt + id.len()) % apis.len()];
        attempt += 1;
        let mut req = http
            .get(format!("{base}/v1/commands/{id}/events"))
            .bearer_auth(&key);
        if last > 0 {
            req = req.header("Last-Event-ID", last.to_string());
            stats.resumes.fetch_add(1, Ordering::Relaxed);
        }
        let Ok(resp) = req.send().await else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        if !resp.status().is_success() {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        }
        let mut events = resp.bytes_stream().eventsource();
        while let Ok(Some(Ok(ev))) =
            tokio::time::timeout(Duration::from_secs(30), events.next()).await
        {
            match ev.event.as_str() {
                "output" => {
                    let d: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
                    let seq = d["seq"].as_i64().unwrap_or(0);
                    if seq != last + 1 {
                        fail(
                            &failures,
                            format!("watcher of {id}: seq {seq} after {last} (duplicate or hole)"),
                        );
                    }
                    last = seq;
                    seen.extend_from_slice(d["data"].as_str().unwrap_or_default().as_bytes());
                }
                "gap" => {
                    let d: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
                    last = d["to_seq"].as_i64().unwrap_or(last);
                }
                "end" => {
                    stats.ended.fetch_add(1, Ordering::Relaxed);
                    return Some(seen);
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stats.gave_up.fetch_add(1, Ordering::Relaxed);
    None
}

// ---- main ----------------------------------------------------------------

struct Submitted {
    id: String,
    project: &'static str,
    token: String,
    watched: Option<tokio::task::JoinHandle<Option<Vec<u8>>>>,
}

#[tokio::main]
async fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("RDEV_CHAOS_SECONDS").ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(180);
    let bin = PathBuf::from(std::env::var("RDEV_CHAOS_BIN").unwrap_or_else(|_| {
        format!(
            "{}/debug",
            std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into())
        )
    }));
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let root = std::env::temp_dir().join(format!("rdev-chaos-{}", std::process::id()));
    std::fs::create_dir_all(&root).expect("root");
    run(std::process::Command::new("chmod").arg("755").arg(&root));
    let logs = root.join("logs");
    std::fs::create_dir_all(&logs).expect("logs");
    let workspace = root.join("workspace");
    std::fs::create_dir_all(&workspace).expect("workspace");
    println!("chaos: {seconds} s; state and logs in {}", root.display());

    let pg = Postgres::start(&root);
    let rabbit = Rabbit::start(&root);
    println!(
        "chaos: private PostgreSQL on :{}, RabbitMQ on :{}",
        pg.port, rabbit.port
    );

    run(std::process::Command::new(bin.join("rdev-api"))
        .arg("migrate")
        .env("DATABASE_URL", pg.url()));
    let db = DbConfig {
        database_url: Secret::new(pg.url()),
        migrate_database_url: None,
        pool_size: 4,
        statement_timeout_s: 30,
    };
    let pool = rdev_shared::db::pool(&db).expect("pool");
    let key = rdev_shared::secret::generate_key();
    keys::insert(
        &pool.get().await.expect("db"),
        &keys::NewKey {
            name: "chaos".into(),
            prefix: key.prefix.clone(),
            hash: key.hash,
            scopes: vec![Scope::Admin],
            project_ids: None,
        },
    )
    .await
    .expect("key");
    let admin = key.secret;

    // The receiver.
    let received: Arc<Mutex<Received>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("receiver");
    let hook_addr: SocketAddr = listener.local_addr().expect("addr");
    let app = Router::new().fallback(receive).with_state(received.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let common = vec![
        ("DATABASE_URL".to_owned(), pg.url()),
        ("AMQP_URL".to_owned(), rabbit.url()),
        ("RDEV_AMQP_PREFIX".to_owned(), PREFIX.to_owned()),
        (
            "RDEV_ENCRYPTION_KEYS".to_owned(),
            ENCRYPTION_KEYS.to_owned(),
        ),
        ("RDEV_DB_POOL_SIZE".to_owned(), "8".to_owned()),
    ];
    let with = |extra: &[(&str, String)]| {
        let mut e = common.clone();
        e.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        e
    };
    let mut services = Vec::new();
    let mut apis = Vec::new();
    for i in 0..2 {
        let port = free_port();
        apis.push(format!("http://127.0.0.1:{port}"));
        services.push(Service {
            kind: Kind::Api,
            name: format!("api{i}"),
            env: with(&[
                ("RDEV_LISTEN", format!("127.0.0.1:{port}")),
                ("RDEV_OPS_LISTEN", format!("127.0.0.1:{}", free_port())),
                ("RDEV_MIGRATE", "0".into()),
                ("RDEV_WEBHOOK_ALLOW_PRIVATE", "1".into()),
                ("RDEV_RATE_LIMIT", "1000000/60s".into()),
                ("RDEV_SSE_POLL", "500ms".into()),
            ]),
            args: vec!["serve".into()],
            child: None,
            first_rss: 0,
            restarts: 0,
            started: Instant::now(),
        });
    }
    for i in 0..2 {
        services.push(Service {
            kind: Kind::Worker,
            name: format!("worker{i}"),
            env: with(&[
                ("RDEV_LISTEN", format!("127.0.0.1:{}", free_port())),
                ("RDEV_WORKSPACE_ROOT", workspace.display().to_string()),
                ("RDEV_WORKER_CONCURRENCY", "4".into()),
                ("RDEV_WORKER_ID", format!("chaos-worker{i}")),
                ("RDEV_HEARTBEAT_S", "1".into()),
                ("RDEV_DRAIN_S", "3".into()),
                ("RDEV_KILL_GRACE_S", "1".into()),
                ("RDEV_EXECUTORS", "local".into()),
            ]),
            args: vec![],
            child: None,
            first_rss: 0,
            restarts: 0,
            started: Instant::now(),
        });
    }
    services.push(Service {
        kind: Kind::Dispatcher,
        name: "dispatcher".into(),
        env: with(&[
            ("RDEV_LISTEN", format!("127.0.0.1:{}", free_port())),
            ("RDEV_LOST_AFTER_S", "8".into()),
            ("RDEV_REQUEUE_AFTER", "20s".into()),
            ("RDEV_RELAY_MIN_AGE", "2s".into()),
            ("RDEV_WEBHOOK_ALLOW_PRIVATE", "1".into()),
            (
                "RDEV_WEBHOOK_RETRY_SCHEDULE",
                "0s,1s,2s,3s,5s,5s,5s,5s,5s,5s".into(),
            ),
            ("RDEV_WEBHOOK_POLL", "200ms".into()),
            ("RDEV_WEBHOOK_BREAKER_THRESHOLD", "1000".into()),
        ]),
        args: vec![],
        child: None,
        first_rss: 0,
        restarts: 0,
        started: Instant::now(),
    });
    let mut stack = Stack {
        bin,
        logs: logs.clone(),
        services: Vec::new(),
    };
    for mut s in services {
        stack.spawn(&mut s);
        stack.services.push(s);
    }

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("http");
    // Wait for the APIs.
    let ready_by = Instant::now() + Duration::from_secs(60);
    for api in &apis {
        while !http
            .get(format!("{api}/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(Instant::now() < ready_by, "{api} not ready");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let post = |base: &str, path: &str, body: Value| {
        http.post(format!("{base}{path}"))
            .bearer_auth(&admin)
            .json(&body)
            .send()
    };
    for (name, extra) in [
        ("free", json!({})),
        ("limited", json!({"max_concurrency": 1})),
    ] {
        let mut body = json!({"name": name, "executor": {"kind": "local", "workdir": name}});
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        let r = post(&apis[0], "/v1/projects", body).await.expect("project");
        assert_eq!(r.status().as_u16(), 201, "{:?}", r.text().await);
    }
    let r = post(
        &apis[0],
        "/v1/webhooks",
        json!({"url": format!("http://{hook_addr}/hook"), "events": ["*"]}),
    )
    .await
    .expect("webhook");
    assert_eq!(r.status().as_u16(), 201, "{:?}", r.text().await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    for s in &mut stack.services {
        if let Some(pid) = s.child.as_ref().and_then(Child::id) {
            s.first_rss = rss_kib(pid);
        }
    }

    // ---- workload and faults ----
    let failures: Failures = Arc::default();
    let stats = Arc::new(WatchStats::default());
    let run_until = Instant::now() + Duration::from_secs(seconds);
    let watch_until = run_until + Duration::from_secs(240);
    let stop_load = Arc::new(AtomicBool::new(false));
    let submitted: Arc<Mutex<Vec<Submitted>>> = Arc::default();
    let refused = Arc::new(AtomicU64::new(0));
    let load = {
        let (http, apis, admin) = (http.clone(), apis.clone(), admin.clone());
        let (submitted, stop_load, refused) =
            (submitted.clone(), stop_load.clone(), refused.clone());
        let (stats, failures) = (stats.clone(), failures.clone());
        tokio::spawn(async move {
            let mut n: u64 = 0;
            while !stop_load.load(Ordering::Relaxed) {
                n += 1;
                let token = format!("{:06}", n);
                let (project, line) = match n % 10 {
                    // Long, with output as it goes.
                    0 | 1 => (
                        "free",
                        format!(
                            "echo run >> ran.{token}; for i in 1 2 3 4 5 6; do echo tick $i; sleep 0.5; done; sleep 1.77{token}"
                        ),
                    ),
                    // Big output.
                    2 => (
                        "free",
                        format!(
                            "echo run >> ran.{token}; yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c 2000000"
                        ),
                    ),
                    // The concurrency-limited project.
                    3 | 4 => (
                        "limited",
                        format!("echo run >> ran.{token}; echo limited; sleep 0.77{token}"),
                    ),
                    _ => (
                        "free",
                        format!("echo run >> ran.{token}; echo short {token}"),
                    ),
                };
                let api = &apis[(n as usize) % apis.len()];
                let resp = http
                    .post(format!("{api}/v1/projects/{project}/commands"))
                    .bearer_auth(&admin)
                    .json(&json!({"command": line, "timeout_s": 120}))
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status().as_u16() == 202 => {
                        let c: Value = r.json().await.unwrap_or(Value::Null);
                        let id = c["id"].as_str().unwrap_or_default().to_owned();
                        let watched = n.is_multiple_of(3).then(|| {
                            tokio::spawn(watch(
                                http.clone(),
                                apis.clone(),
                                admin.clone(),
                                id.clone(),
                                stats.clone(),
                                watch_until,
                                failures.clone(),
                            ))
                        });
                        submitted.lock().expect("submitted").push(Submitted {
                            id,
                            project,
                            token,
                            watched,
                        });
                    }
                    _ => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(120)).await;
            }
        })
    };

    let mut faults: BTreeMap<&'static str, u32> = BTreeMap::new();
    let mut round = 0u32;
    // One fault every 3-6 s (shorter in short runs), none in the last two
    // periods (let the system settle).
    let every = Duration::from_secs_f64((seconds as f64 / 8.0).clamp(3.0, 6.0));
    while Instant::now() + every * 2 < run_until {
        tokio::time::sleep(every).await;
        round += 1;
        // The quick ones first, so a short run sees most kinds.
        let fault = match round % 7 {
            1 => "worker SIGKILL",
            2 => "api SIGKILL",
            3 => "dispatcher SIGKILL",
            4 => "postgresql restart",
            5 => "worker SIGTERM",
            6 => "rabbitmq restart",
            _ => "worker SIGKILL",
        };
        println!(
            "chaos: t+{:>3}s {fault}",
            (run_until - Duration::from_secs(seconds))
                .elapsed()
                .as_secs()
        );
        *faults.entry(fault).or_default() += 1;
        match fault {
            "rabbitmq restart" => {
                let r = &rabbit;
                tokio::task::block_in_place(|| {
                    r.down();
                    std::thread::sleep(Duration::from_secs(2));
                    r.up();
                });
            }
            "postgresql restart" => {
                let p = &pg;
                tokio::task::block_in_place(|| p.ctl(&["restart", "-m", "fast", "-w", "-t", "60"]));
            }
            _ => {
                let (kind, sig) = match fault {
                    "worker SIGKILL" => (Kind::Worker, nix::sys::signal::Signal::SIGKILL),
                    "worker SIGTERM" => (Kind::Worker, nix::sys::signal::Signal::SIGTERM),
                    "dispatcher SIGKILL" => (Kind::Dispatcher, nix::sys::signal::Signal::SIGKILL),
                    _ => (Kind::Api, nix::sys::signal::Signal::SIGKILL),
                };
                let candidates: Vec<usize> = stack
                    .services
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.kind == kind)
                    .map(|(i, _)| i)
                    .collect();
                let i = candidates[(round as usize) % candidates.len()];
                let s = &mut stack.services[i];
                if let Some(mut child) = Stack::signal(s, sig) {
                    let _ = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;
                    let _ = child.kill().await;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                let mut s = stack.services.remove(i);
                s.restarts += 1;
                stack.spawn(&mut s);
                stack.services.insert(i, s);
            }
        }
    }
    stop_load.store(true, Ordering::Relaxed);
    let _ = load.await;
    let subs: Vec<Submitted> = std::mem::take(&mut *submitted.lock().expect("submitted"));
    println!(
        "chaos: load over: {} commands accepted, {} refused (a service down)",
        subs.len(),
        refused.load(Ordering::Relaxed)
    );

    // ---- every accepted command ends ----
    let settle_by = Instant::now() + Duration::from_secs(180);
    let mut statuses: HashMap<String, Value> = HashMap::new();
    loop {
        let mut open = 0;
        for s in &subs {
            if statuses
                .get(&s.id)
                .is_some_and(|c| !matches!(c["status"].as_str(), Some("queued" | "running")))
            {
                continue;
            }
            let c = http
                .get(format!("{}/v1/commands/{}", apis[0], s.id))
                .bearer_auth(&admin)
                .send()
                .await;
            let c: Value = match c {
                Ok(r) => r.json().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            if !matches!(
                c["status"].as_str(),
                Some("succeeded" | "failed" | "timed_out" | "cancelled")
            ) {
                open += 1;
            }
            statuses.insert(s.id.clone(), c);
        }
        if open == 0 || Instant::now() > settle_by {
            if open > 0 {
                for s in &subs {
                    let st = &statuses[&s.id]["status"];
                    if !matches!(
                        st.as_str(),
                        Some("succeeded" | "failed" | "timed_out" | "cancelled")
                    ) {
                        fail(
                            &failures,
                            format!("command {} ({}) stuck: {st}", s.id, s.project),
                        );
                    }
                }
            }
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut by_status: BTreeMap<String, u32> = BTreeMap::new();
    let mut by_reason: BTreeMap<String, u32> = BTreeMap::new();
    for c in statuses.values() {
        *by_status
            .entry(c["status"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
        if c["status"] != "succeeded" {
            *by_reason
                .entry(c["reason"].as_str().unwrap_or("?").to_owned())
                .or_default() += 1;
        }
    }

    // ---- none ran twice ----
    let mut ran = 0;
    for s in &subs {
        let marker = workspace.join(s.project).join(format!("ran.{}", s.token));
        let runs = std::fs::read_to_string(&marker)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        ran += usize::from(runs > 0);
        if runs > 1 {
            fail(&failures, format!("command {} ran {runs} times", s.id));
        }
        if runs == 0 && statuses[&s.id]["status"] == "succeeded" {
            fail(
                &failures,
                format!("command {} succeeded without running", s.id),
            );
        }
    }

    // ---- watchers that reached `end` saw every stored byte ----
    let mut checked = 0;
    let mut unstored_tails = 0;
    let mut watched = Vec::new();
    let mut subs = subs;
    for s in &mut subs {
        if let Some(h) = s.watched.take() {
            watched.push((s.id.clone(), h));
        }
    }
    for (id, h) in watched {
        let Ok(Some(seen)) = h.await else { continue };
        let stored = http
            .get(format!("{}/v1/commands/{id}/output", apis[1]))
            .bearer_auth(&admin)
            .send()
            .await;
        let Ok(stored) = stored else {
            fail(&failures, format!("cannot read the output of {id}"));
            continue;
        };
        let stored = stored.bytes().await.unwrap_or_default();
        checked += 1;
        // A worker that dies (or is reaped while cut off) may have published
        // its last chunks live and never stored them: the watcher then saw
        // a tail the database does not have. Every stored byte, in order,
        // is what must have arrived.
        let lost = statuses
            .get(&id)
            .is_some_and(|c| c["reason"] == "worker_lost");
        if stored.as_ref() != seen.as_slice() && lost && seen.starts_with(&stored) {
            unstored_tails += 1;
        } else if stored.as_ref() != seen.as_slice() {
            fail(
                &failures,
                format!(
                    "watcher of {id} saw {} bytes, {} stored",
                    seen.len(),
                    stored.len()
                ),
            );
        }
    }

    // ---- webhooks: every event delivered at least once ----
    let client = pool.get().await.expect("db");
    let events: Vec<(String, String, String)> = client
        .query(
            "SELECT payload FROM outbox WHERE exchange = $1",
            &[&format!("{PREFIX}.events")],
        )
        .await
        .expect("events")
        .iter()
        .filter_map(|r| {
            let p: Vec<u8> = r.get(0);
            let v: Value = serde_json::from_slice(&p).ok()?;
            Some((
                v["id"].as_str()?.to_owned(),
                v["type"].as_str()?.to_owned(),
                v["data"]["id"].as_str()?.to_owned(),
            ))
        })
        .collect();
    let deliver_by = Instant::now() + Duration::from_secs(120);
    let missing = loop {
        let missing: Vec<&(String, String, String)> = {
            let got = received.lock().expect("received");
            events
                .iter()
                .filter(|(id, _, _)| !got.by_id.contains_key(id))
                .collect()
        };
        if missing.is_empty() || Instant::now() > deliver_by {
            break missing;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    for (id, kind, cmd) in &missing {
        fail(
            &failures,
            format!("event {id} ({kind} of {cmd}) never delivered"),
        );
    }
    let (dups, mismatched) = {
        let got = received.lock().expect("received");
        (
            got.by_id.values().filter(|(_, n)| *n > 1).count(),
            got.by_id.values().filter(|(b, _)| b.len() > 1).count(),
        )
    };
    if mismatched > 0 {
        fail(
            &failures,
            format!("{mismatched} webhook-ids arrived with different bodies"),
        );
    }
    // One terminal event type per command.
    let mut terminal: HashMap<&str, HashSet<&str>> = HashMap::new();
    for (_, kind, cmd) in &events {
        if kind != "command.started" {
            terminal
                .entry(cmd.as_str())
                .or_default()
                .insert(kind.as_str());
        }
    }
    for (cmd, kinds) in &terminal {
        if kinds.len() > 1 {
            fail(
                &failures,
                format!("command {cmd} has terminal events {kinds:?}"),
            );
        }
    }

    // ---- resident memory, then no process left ----
    let mut rss = Vec::new();
    for s in &stack.services {
        if s.kind == Kind::Dispatcher {
            continue;
        }
        let now = s.child.as_ref().and_then(Child::id).map_or(0, rss_kib);
        rss.push(format!(
            "{} {} KiB -> {} KiB ({} restarts; this process up {} s)",
            s.name,
            s.first_rss,
            now,
            s.restarts,
            s.started.elapsed().as_secs()
        ));
    }
    for s in &mut stack.services {
        if let Some(mut c) = Stack::signal(s, nix::sys::signal::Signal::SIGTERM)
            && tokio::time::timeout(Duration::from_secs(20), c.wait())
                .await
                .is_err()
        {
            fail(
                &failures,
                format!("{} did not stop on SIGTERM within 20 s", s.name),
            );
            let _ = c.kill().await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut left = Vec::new();
    let me = std::process::id().to_string();
    let workspace_text = workspace.display().to_string();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if pid == me || !pid.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .map(|st| {
                st.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let ours = text.contains(&workspace_text)
            || subs
                .iter()
                .any(|s| text.contains(&format!(".77{}", s.token)));
        if ours && !zombie {
            left.push(format!("{pid}: {text}"));
        }
    }
    for p in &left {
        fail(&failures, format!("process left: {p}"));
    }

    // ---- report ----
    println!("\nchaos: {seconds} s, faults: {faults:?}");
    println!(
        "chaos: commands accepted {}, ran {ran}, by status {by_status:?}, not succeeded by reason {by_reason:?}",
        subs.len()
    );
    println!(
        "chaos: SSE watchers: {checked} reached `end` and were compared byte for byte \
         ({unstored_tails} of a lost worker also saw its unstored last chunks), {} gave up, {} resumes",
        stats.gave_up.load(Ordering::Relaxed),
        stats.resumes.load(Ordering::Relaxed)
    );
    println!(
        "chaos: webhook events {}, delivered {}, delivered more than once {dups}, receiver requests {}",
        events.len(),
        events.len() - missing.len(),
        received.lock().expect("received").requests
    );
    println!("chaos: processes left: {}", left.len());
    for r in &rss {
        println!("chaos: RSS {r}");
    }
    let failures = failures.lock().expect("failures").clone();
    drop(client);
    drop(stack);
    drop(rabbit);
    drop(pg);
    if failures.is_empty() {
        println!("chaos: OK");
        let _ = std::fs::remove_dir_all(&root);
    } else {
        println!(
            "chaos: {} FAILURES (logs in {})",
            failures.len(),
            logs.display()
        );
        for f in failures.iter().take(30) {
            println!("  - {f}");
        }
        std::process::exit(1);
    }
}
