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
//!
//! Its parts live in `chaos/`: `servers.rs` (the private PostgreSQL and
//! RabbitMQ), `stack.rs` (the rdev processes), `receiver.rs` (the webhook
//! receiver), `watch.rs` (the SSE watchers), `load.rs` (the workload),
//! `faults.rs` (the faults) and `checks.rs` (the final accounting).

#[path = "chaos/checks.rs"]
mod checks;
#[path = "chaos/faults.rs"]
mod faults;
#[path = "chaos/load.rs"]
mod load;
#[path = "chaos/receiver.rs"]
mod receiver;
#[path = "chaos/servers.rs"]
mod servers;
#[path = "chaos/stack.rs"]
mod stack;
#[path = "chaos/watch.rs"]
mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdev_shared::config::{DbConfig, Secret};
use rdev_shared::db::keys;
use rdev_shared::domain::Scope;
use serde_json::{Value, json};

use crate::load::Submitter;
use crate::receiver::Received;
use crate::servers::{Postgres, Rabbit, run};
use crate::stack::Stack;
use crate::watch::WatchStats;

const ENCRYPTION_KEYS: &str = "chaos1:dGVzdC1vbmx5LWtleS1mb3ItcmRldi10ZXN0cy0zMmI=";
const PREFIX: &str = "chaos";

type Failures = Arc<Mutex<Vec<String>>>;

fn fail(f: &Failures, msg: String) {
    eprintln!("chaos: FAIL {msg}");
    f.lock().expect("failures").push(msg);
}

/// The run's length: the first argument, else `RDEV_CHAOS_SECONDS`, else 180.
fn seconds() -> u64 {
    std::env::args()
        .nth(1)
        .or_else(|| std::env::var("RDEV_CHAOS_SECONDS").ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(180)
}

/// The directory of the rdev binaries.
fn bin_dir() -> PathBuf {
    PathBuf::from(std::env::var("RDEV_CHAOS_BIN").unwrap_or_else(|_| {
        format!(
            "{}/debug",
            std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into())
        )
    }))
}

/// The run's directory (state and logs) and, in it, the logs and the
/// commands' workspace.
fn make_dirs() -> (PathBuf, PathBuf, PathBuf) {
    let root = std::env::temp_dir().join(format!("rdev-chaos-{}", std::process::id()));
    std::fs::create_dir_all(&root).expect("root");
    run(std::process::Command::new("chmod").arg("755").arg(&root));
    let logs = root.join("logs");
    std::fs::create_dir_all(&logs).expect("logs");
    let workspace = root.join("workspace");
    std::fs::create_dir_all(&workspace).expect("workspace");
    (root, logs, workspace)
}

/// Migrates the private database and creates an admin key; returns a pool
/// and the key.
async fn prepare_db(bin: &Path, pg: &Postgres) -> (rdev_shared::db::Pool, String) {
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
    (pool, key.secret)
}

/// Waits (up to 60 s) for every API to be ready.
async fn wait_ready(http: &reqwest::Client, apis: &[String]) {
    let ready_by = Instant::now() + Duration::from_secs(60);
    for api in apis {
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
}

/// Creates the two projects (one limited to one command at a time) and a
/// webhook on every event to the receiver.
async fn configure(http: &reqwest::Client, api: &str, admin: &str, hook_addr: SocketAddr) {
    let post = |base: &str, path: &str, body: Value| {
        http.post(format!("{base}{path}"))
            .bearer_auth(admin)
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
        let r = post(api, "/v1/projects", body).await.expect("project");
        assert_eq!(r.status().as_u16(), 201, "{:?}", r.text().await);
    }
    let r = post(
        api,
        "/v1/webhooks",
        json!({"url": format!("http://{hook_addr}/hook"), "events": ["*"]}),
    )
    .await
    .expect("webhook");
    assert_eq!(r.status().as_u16(), 201, "{:?}", r.text().await);
}

/// What the report prints.
struct Summary {
    seconds: u64,
    faults: BTreeMap<&'static str, u32>,
    accepted: usize,
    ran: usize,
    by_status: BTreeMap<String, u32>,
    by_reason: BTreeMap<String, u32>,
    checked: u32,
    unstored_tails: u32,
    webhooks: checks::Webhooks,
    left: usize,
    rss: Vec<String>,
}

fn report(s: &Summary, stats: &WatchStats, received: &Mutex<Received>) {
    let Summary {
        seconds,
        faults,
        ran,
        by_status,
        by_reason,
        checked,
        unstored_tails,
        ..
    } = s;
    println!("\nchaos: {seconds} s, faults: {faults:?}");
    println!(
        "chaos: commands accepted {}, ran {ran}, by status {by_status:?}, not succeeded by reason {by_reason:?}",
        s.accepted
    );
    println!(
        "chaos: SSE watchers: {checked} reached `end` and were compared byte for byte \
         ({unstored_tails} of a lost worker also saw its unstored last chunks), {} gave up, {} resumes",
        stats.gave_up.load(Ordering::Relaxed),
        stats.resumes.load(Ordering::Relaxed)
    );
    let dups = s.webhooks.dups;
    println!(
        "chaos: webhook events {}, delivered {}, delivered more than once {dups}, receiver requests {}",
        s.webhooks.events,
        s.webhooks.events - s.webhooks.missing,
        received.lock().expect("received").requests
    );
    println!("chaos: processes left: {}", s.left);
    for r in &s.rss {
        println!("chaos: RSS {r}");
    }
}

/// Stops the stack and the private servers, then ends the run: OK (and the
/// run's directory removed), or the failures and exit status 1.
fn finish(
    failures: &Failures,
    stack: Stack,
    rabbit: Rabbit,
    pg: Postgres,
    root: &Path,
    logs: &Path,
) {
    let failures = failures.lock().expect("failures").clone();
    drop(stack);
    drop(rabbit);
    drop(pg);
    if failures.is_empty() {
        println!("chaos: OK");
        let _ = std::fs::remove_dir_all(root);
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

#[tokio::main]
async fn main() {
    let seconds = seconds();
    let bin = bin_dir();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let (root, logs, workspace) = make_dirs();
    println!("chaos: {seconds} s; state and logs in {}", root.display());

    // ---- set-up: the private servers, the stack, projects and webhook ----
    let pg = Postgres::start(&root);
    let rabbit = Rabbit::start(&root);
    println!(
        "chaos: private PostgreSQL on :{}, RabbitMQ on :{}",
        pg.port, rabbit.port
    );
    let (pool, admin) = prepare_db(&bin, &pg).await;
    let (received, hook_addr) = receiver::start().await;
    let (mut stack, apis) = Stack::start(bin, &logs, &workspace, &pg, &rabbit);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("http");
    wait_ready(&http, &apis).await;
    configure(&http, &apis[0], &admin, hook_addr).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stack.note_first_rss();

    // ---- workload and faults ----
    let failures: Failures = Arc::default();
    let stats = Arc::new(WatchStats::default());
    let run_until = Instant::now() + Duration::from_secs(seconds);
    let watch_until = run_until + Duration::from_secs(240);
    let load = Submitter::new(
        http.clone(),
        apis.clone(),
        admin.clone(),
        stats.clone(),
        failures.clone(),
        watch_until,
    )
    .start();
    let faults = faults::run(seconds, run_until, &mut stack, &pg, &rabbit).await;
    let mut subs = load.stop().await;

    // ---- the checks ----
    let statuses = checks::settle(&http, &apis[0], &admin, &subs, &failures).await;
    let (by_status, by_reason) = checks::tally(&statuses);
    let ran = checks::ran_once(&workspace, &subs, &statuses, &failures);
    let (checked, unstored_tails) =
        checks::watchers(&http, &apis[1], &admin, &mut subs, &statuses, &failures).await;
    let webhooks = checks::webhooks(&pool, &received, &failures).await;
    // Resident memory, then no process left.
    let rss = stack.rss_report();
    stack.stop_all(&failures).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let left = checks::processes_left(&workspace, &subs);
    for p in &left {
        fail(&failures, format!("process left: {p}"));
    }

    // ---- report ----
    let summary = Summary {
        seconds,
        faults,
        accepted: subs.len(),
        ran,
        by_status,
        by_reason,
        checked,
        unstored_tails,
        webhooks,
        left: left.len(),
        rss,
    };
    report(&summary, &stats, &received);
    finish(&failures, stack, rabbit, pg, &root, &logs);
}
