//! Memory stays bounded by construction: one API instance holds idle SSE
//! connections while a command writes a large output watched by 20 clients,
//! 5 of which never read. API and worker run as separate processes
//! (this binary re-executed) so their resident memory can be measured.
//!
//! The project keeps all output (`max_output_bytes` 1 GiB), so a watcher
//! that falls behind catches up from PostgreSQL and still gets every byte.
//!
//! Size: `RDEV_MEMTEST_IDLE` idle connections (default 1,000) and
//! `RDEV_MEMTEST_MB` megabytes of output (default 40) in the suite. The full
//! figure is 2,000 and 200: `RDEV_MEMTEST_IDLE=2000 RDEV_MEMTEST_MB=200 cargo
//! test -p rdev-tests --test memory -- --nocapture` (see docs/BENCHMARKS.md).

use std::process::Stdio;
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use rdev_shared::db::keys;
use rdev_shared::domain::Scope;
use rdev_shared::secret;
use rdev_shared::test_support::TestEnv;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const READERS: usize = 15;
const STALLED: usize = 5;
const LIMIT_MB: u64 = 64;

fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Runs the API or the worker when this binary is re-executed by the test.
#[tokio::test]
async fn service_process_entry() {
    use clap::Parser;
    let Ok(which) = std::env::var("RDEV_MEMTEST_ROLE") else {
        return;
    };
    raise_fd_limit();
    if which == "api" {
        #[derive(Parser)]
        struct Args {
            #[command(flatten)]
            cfg: rdev_api::config::ApiConfig,
        }
        let server = rdev_api::start(
            Args::parse_from(["rdev-api"]).cfg,
            rdev_shared::lifecycle::CancellationToken::new(),
        )
        .await
        .expect("api");
        println!("LISTENING {}", server.addr);
        let _ = server.task.await;
    } else {
        let cfg = rdev_worker::Config::parse_from(["rdev-worker"]);
        let worker = rdev_worker::start(cfg, rdev_shared::lifecycle::CancellationToken::new())
            .await
            .expect("worker");
        let _ = worker.task.await;
    }
}

fn spawn_role(
    env: &TestEnv,
    role: &str,
    workspace: &std::path::Path,
    extra: &[(&str, &std::ffi::OsStr)],
) -> tokio::process::Child {
    rdev_tests::spawn(
        tokio::process::Command::new(std::env::current_exe().expect("exe"))
            .args(["--exact", "service_process_entry", "--nocapture"])
            .envs(extra.iter().copied())
            .env("RDEV_MEMTEST_ROLE", role)
            .env("DATABASE_URL", env.db.database_url.expose())
            .env("AMQP_URL", env.amqp.amqp_url.expose())
            .env("RDEV_AMQP_PREFIX", &env.amqp.prefix)
            .env("RDEV_LISTEN", "127.0.0.1:0")
            .env("RDEV_OPS_LISTEN", "127.0.0.1:0")
            .env("RDEV_MIGRATE", "0")
            .env("RDEV_WORKSPACE_ROOT", workspace)
            .env("RDEV_SSE_MAX_PER_KEY", "10000")
            .env("RDEV_RATE_LIMIT", "1000000/1s")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true),
    )
    .expect("spawn")
}

#[tokio::test]
async fn memory_stays_bounded_under_idle_connections_and_large_watched_output() {
    if std::env::var("RDEV_MEMTEST_ROLE").is_ok() {
        return;
    }
    raise_fd_limit();
    let mb: usize = std::env::var("RDEV_MEMTEST_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let idle_connections: usize = std::env::var("RDEV_MEMTEST_IDLE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let env = TestEnv::new().await;
    let workspace = std::env::temp_dir().join(format!("rdev-memtest-{}", env.topology.prefix()));
    std::fs::create_dir_all(&workspace).expect("workspace");
    let g = secret::generate_key();
    let client = env.pool.get().await.expect("db");
    keys::insert(
        &client,
        &keys::NewKey {
            name: "mem".into(),
            prefix: g.prefix.clone(),
            hash: g.hash,
            scopes: vec![Scope::Admin],
            project_ids: None,
        },
    )
    .await
    .expect("key");
    drop(client);
    let key = g.secret;

    let mut api = spawn_role(&env, "api", &workspace, &[]);
    // Killed at the end: what it leaves is removed after it.
    let leftovers = rdev_tests::KilledWorker::new();
    let mut worker = spawn_role(&env, "worker", &workspace, &leftovers.env());
    let mut lines = BufReader::new(api.stdout.take().expect("stdout")).lines();
    let addr = loop {
        let l = lines.next_line().await.expect("line").expect("api started");
        if let Some(a) = l.strip_prefix("LISTENING ") {
            break a.to_owned();
        }
    };
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();
    let post = |path: &str, body: serde_json::Value| {
        http.post(format!("{base}{path}"))
            .bearer_auth(&key)
            .json(&body)
            .send()
    };
    assert_eq!(
        post(
            "/v1/projects",
            json!({"name": "mem", "max_output_bytes": 1_073_741_824})
        )
        .await
        .expect("p")
        .status(),
        201
    );
    // Warm up both processes with one command before the baseline.
    let warm: serde_json::Value =
        post("/v1/projects/mem/commands", json!({"command": "echo warm"}))
            .await
            .expect("c")
            .json()
            .await
            .expect("j");
    let warm_id = warm["id"].as_str().expect("id").to_owned();
    loop {
        let c: serde_json::Value = http
            .get(format!("{base}/v1/commands/{warm_id}"))
            .bearer_auth(&key)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        if c["status"] == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (api_pid, worker_pid) = (api.id().expect("pid"), worker.id().expect("pid"));
    let api_base = rss_bytes(api_pid);
    let worker_base = rss_bytes(worker_pid);

    // 2,000 idle SSE connections on a command that prints nothing.
    let idle: serde_json::Value =
        post("/v1/projects/mem/commands", json!({"command": "sleep 600"}))
            .await
            .expect("c")
            .json()
            .await
            .expect("j");
    let idle_id = idle["id"].as_str().expect("id").to_owned();
    let open_raw = |id: String| {
        let addr = addr.clone();
        let key = key.clone();
        async move {
            let mut s = tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect");
            let req = format!(
                "GET /v1/commands/{id}/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await.expect("write");
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).await.expect("read");
            assert!(
                buf[..n].starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&buf[..n])
            );
            s
        }
    };
    let mut idle_conns = Vec::with_capacity(idle_connections);
    for _ in 0..idle_connections {
        idle_conns.push(open_raw(idle_id.clone()).await);
    }
    let api_idle = rss_bytes(api_pid);

    // The big command: `mb` MB of text in 64 KiB writes.
    let total = mb * 1024 * 1024;
    let big: serde_json::Value = post(
        "/v1/projects/mem/commands",
        json!({"command": format!("sleep 1; yes 0123456789abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXY | head -c {total}")}),
    )
    .await
    .expect("c")
    .json()
    .await
    .expect("j");
    let big_id = big["id"].as_str().expect("id").to_owned();
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        stalled.push(open_raw(big_id.clone()).await);
    }
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let resp = http
            .get(format!("{base}/v1/commands/{big_id}/events"))
            .bearer_auth(&key)
            .send()
            .await
            .expect("sse");
        readers.push(tokio::spawn(async move {
            let mut events = resp.bytes_stream().eventsource();
            let (mut bytes, mut last_seq, mut in_order) = (0usize, 0i64, true);
            while let Some(Ok(ev)) = events.next().await {
                match ev.event.as_str() {
                    "output" => {
                        let v: serde_json::Value = serde_json::from_str(&ev.data).expect("json");
                        let seq = v["seq"].as_i64().expect("seq");
                        in_order &= seq == last_seq + 1;
                        last_seq = seq;
                        bytes += v["data"].as_str().expect("data").len();
                    }
                    "end" => break,
                    _ => {}
                }
            }
            (bytes, in_order)
        }));
    }
    let started = Instant::now();
    let (mut api_peak, mut worker_peak) = (api_idle, worker_base);
    while !readers.iter().all(|r| r.is_finished()) {
        api_peak = api_peak.max(rss_bytes(api_pid));
        worker_peak = worker_peak.max(rss_bytes(worker_pid));
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "watchers did not finish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    let mut results = Vec::new();
    for r in readers {
        results.push(r.await.expect("reader"));
    }
    let mib = |b: u64| b as f64 / 1048576.0;
    println!(
        "memory: {idle_connections} idle SSE + {mb} MB watched by {READERS} readers and {STALLED} stalled clients in {took:.1?}: \
         API RSS {:.1} MiB → {:.1} MiB with idle connections → peak {:.1} MiB (growth {:.1} MiB); \
         worker RSS {:.1} MiB → peak {:.1} MiB (growth {:.1} MiB)",
        mib(api_base),
        mib(api_idle),
        mib(api_peak),
        mib(api_peak.saturating_sub(api_base)),
        mib(worker_base),
        mib(worker_peak),
        mib(worker_peak.saturating_sub(worker_base)),
    );
    for (bytes, in_order) in results {
        assert!(in_order, "chunks out of order or missing");
        assert_eq!(bytes, total, "a reading watcher got every byte");
    }
    assert!(
        api_peak.saturating_sub(api_base) < LIMIT_MB * 1024 * 1024,
        "API grew past {LIMIT_MB} MiB"
    );
    assert!(
        worker_peak.saturating_sub(worker_base) < LIMIT_MB * 1024 * 1024,
        "worker grew past {LIMIT_MB} MiB"
    );
    drop(stalled);
    drop(idle_conns);
    let _ = api.start_kill();
    let _ = worker.start_kill();
    let _ = api.wait().await;
    let _ = worker.wait().await;
    let _ = std::fs::remove_dir_all(&workspace);
}

/// The allocator and settings of the real `rdev-api` binary, so the measured
/// resident memory is what production sees.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[allow(non_upper_case_globals)]
#[unsafe(export_name = "malloc_conf")]
pub static malloc_conf: &[u8] =
    b"prof:true,prof_active:true,lg_prof_sample:19,background_thread:true,dirty_decay_ms:1000\0";
