//! End-to-end tests of the `rdev` binary against the real system: the API
//! and a worker in-process (real PostgreSQL and RabbitMQ, a fresh database
//! and AMQP prefix per test), and the CLI run as a child process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdev_api::config::ApiConfig;
use rdev_shared::db::{keys, projects};
use rdev_shared::domain::{ExecutorConfig, LocalSettings, Scope};
use rdev_shared::secret;
use rdev_shared::test_support::TestEnv;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const PROJECT: &str = "demo";

/// The API and a worker on loopback ports, a project `demo` and an admin key.
struct System {
    env: TestEnv,
    addr: SocketAddr,
    key: String,
    workspace: PathBuf,
    config_home: PathBuf,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Knobs of the system under test.
struct Opts {
    /// How long the worker waits between SIGTERM and SIGKILL.
    kill_grace_s: u64,
    /// The API closes every event stream after this long.
    sse_max_lifetime: Duration,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            kill_grace_s: 1,
            sse_max_lifetime: Duration::from_secs(3600),
        }
    }
}

async fn start() -> System {
    start_with(Opts::default()).await
}

async fn start_with(opts: Opts) -> System {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let env = TestEnv::new().await;
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    let base = std::env::temp_dir().join(format!("rdev-cli-test-{}", env.topology.prefix()));
    let workspace = base.join("ws");
    let config_home = base.join("config");
    std::fs::create_dir_all(&workspace).expect("workspace");
    std::fs::create_dir_all(&config_home).expect("config home");

    let server = rdev_api::start(
        ApiConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            ops_listen: "127.0.0.1:0".parse().expect("addr"),
            migrate: false,
            sse_poll: Duration::from_millis(500),
            sse_max_lifetime: opts.sse_max_lifetime,
            rate_limit: "1000000/60s".parse().expect("rate limit"),
            workspace_root: Some(workspace.clone()),
            ..ApiConfig::local(env.db.clone(), env.amqp.clone())
        },
        stop.clone(),
    )
    .await
    .expect("start api");
    let addr = server.addr;
    tasks.push(tokio::spawn(async move {
        let _ = server.task.await;
    }));

    let wcfg = rdev_worker::Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        workspace_root: workspace.clone(),
        heartbeat_s: 1,
        kill_grace_s: opts.kill_grace_s,
        drain_s: 2,
        executors: "local".parse().expect("executors"),
        ..rdev_worker::Config::local(env.db.clone(), env.amqp.clone())
    };
    let worker = rdev_worker::start(wcfg, stop.clone())
        .await
        .expect("start worker");
    tasks.push(worker.task);

    let generated = secret::generate_key();
    let client = env.pool.get().await.expect("db");
    keys::insert(
        &client,
        &keys::NewKey {
            name: "cli-admin".into(),
            prefix: generated.prefix.clone(),
            hash: generated.hash,
            scopes: vec![Scope::Admin],
            project_ids: None,
        },
    )
    .await
    .expect("admin key");
    projects::insert(
        &client,
        &projects::NewProject {
            name: PROJECT.into(),
            description: "CLI tests".into(),
            executor: ExecutorConfig::Local(LocalSettings { workdir: None }),
            env: Default::default(),
            default_timeout_s: 60,
            max_output_bytes: 10 * 1024 * 1024,
            max_concurrency: None,
            allowed_commands: None,
            network: Default::default(),
            limits: Default::default(),
            allowed_secrets: None,
            command_retention_s: None,
            output_retention_s: None,
            max_file_bytes: None,
        },
    )
    .await
    .expect("project");
    drop(client);

    System {
        env,
        addr,
        key: generated.secret,
        workspace: base,
        config_home,
        stop,
        tasks,
    }
}

impl Drop for System {
    fn drop(&mut self) {
        self.stop.cancel();
        for t in &self.tasks {
            t.abort();
        }
        let _ = std::fs::remove_dir_all(&self.workspace);
        let _ = &self.env;
    }
}

impl System {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `rdev ARGS` against `url`, with no configuration but the environment.
    fn rdev_at(&self, url: &str, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(rdev_bin());
        c.args(args)
            .env("RDEV_URL", url)
            .env("RDEV_API_KEY", &self.key)
            .env_remove("RDEV_PROFILE")
            .env_remove("NO_COLOR")
            .env("XDG_CONFIG_HOME", &self.config_home)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    fn rdev(&self, args: &[&str]) -> tokio::process::Command {
        self.rdev_at(&self.url(), args)
    }

    /// Runs `rdev ARGS` to completion (at most a minute).
    async fn output(&self, args: &[&str]) -> Output {
        finish(self.rdev(args)).await
    }

    async fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.output(&all).await;
        assert_eq!(out.status.code(), Some(0), "{}", show(&out));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", show(&out)))
    }

    /// Waits until the project has a command in `status`; returns it.
    async fn wait_for_command(&self, status: &str) -> Value {
        for _ in 0..200 {
            let list = self
                .json(&["ls", "--project", PROJECT, "--status", status])
                .await;
            if let Some(c) = list["items"].as_array().and_then(|a| a.first()) {
                return c.clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no {status} command appeared");
    }
}

/// The `rdev` binary under test. `CARGO_BIN_EXE_rdev` is `target/debug/rdev`,
/// which another checkout sharing `CARGO_TARGET_DIR` can overwrite with its
/// own build; say so plainly instead of failing every test obscurely.
fn rdev_bin() -> &'static str {
    static CHECKED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    let bin = env!("CARGO_BIN_EXE_rdev");
    CHECKED.get_or_init(|| {
        let help = rdev_tests::output_std(std::process::Command::new(bin).arg("--help"))
            .expect("run rdev --help");
        assert!(
            String::from_utf8_lossy(&help.stdout).contains("Exit codes"),
            "{bin} is not this checkout's rdev (another checkout sharing \
             CARGO_TARGET_DIR built over it); rerun the tests"
        );
    });
    bin
}

async fn finish(cmd: tokio::process::Command) -> Output {
    finish_or(cmd, String::new).await
}

/// Runs `cmd` to completion (at most a minute). On a timeout the panic shows
/// what rdev wrote so far and `diagnose()` (e.g. a proxy's connection log).
async fn finish_or(mut cmd: tokio::process::Command, diagnose: impl Fn() -> String) -> Output {
    let mut child = rdev_tests::spawn(&mut cmd).expect("spawn rdev");
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = match tokio::time::timeout(Duration::from_secs(60), child.wait()).await {
        Ok(status) => status.expect("rdev status"),
        Err(_) => {
            let _ = child.kill().await;
            let partial = |b: &Arc<Mutex<Vec<u8>>>| {
                String::from_utf8_lossy(&b.lock().expect("lock")).into_owned()
            };
            panic!(
                "rdev did not finish within a minute\n--- stdout so far\n{}\n--- stderr so far\n{}\n--- diagnosis\n{}",
                partial(&stdout.1),
                partial(&stderr.1),
                diagnose()
            );
        }
    };
    let take = |(task, buf): (tokio::task::JoinHandle<()>, Arc<Mutex<Vec<u8>>>)| async move {
        let _ = task.await;
        std::mem::take(&mut *buf.lock().expect("lock"))
    };
    Output {
        status,
        stdout: take(stdout).await,
        stderr: take(stderr).await,
    }
}

/// Reads a child's pipe to its end in the background.
fn drain(
    pipe: Option<impl tokio::io::AsyncRead + Unpin + Send + 'static>,
) -> (tokio::task::JoinHandle<()>, Arc<Mutex<Vec<u8>>>) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = buf.clone();
    let task = tokio::spawn(async move {
        let Some(mut pipe) = pipe else { return };
        let mut chunk = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            sink.lock().expect("lock").extend_from_slice(&chunk[..n]);
        }
    });
    (task, buf)
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_prints_the_exact_bytes_of_each_stream_and_exits_zero() {
    let sys = start().await;
    // Several arguments: run as argv. Tabs, CR, non-ASCII, NUL, no trailing newline.
    let out = sys
        .output(&[
            "run",
            "-p",
            PROJECT,
            "--",
            "sh",
            "-c",
            r"printf 'out\tü\r\000x'; printf 'err: no newline' >&2",
        ])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(out.stdout, b"out\t\xc3\xbc\r\0x", "{}", show(&out));
    assert_eq!(out.stderr, b"err: no newline", "{}", show(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_exits_with_the_commands_exit_code() {
    let sys = start().await;
    // One argument: a shell command line.
    let out = sys
        .output(&["run", "-p", PROJECT, "--", "echo out; echo err >&2; exit 3"])
        .await;
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    assert_eq!(out.stdout, b"out\n");
    // The command's stderr, then rdev's note of why it ended.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (own, note) = stderr.split_once('\n').expect("two lines");
    assert_eq!(own, "err", "{}", show(&out));
    assert!(
        note.starts_with("rdev: command ") && note.ends_with(" failed (exited, exit code 3)\n"),
        "{}",
        show(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_exits_124_when_the_command_times_out() {
    let sys = start().await;
    let out = sys
        .output(&[
            "run",
            "-p",
            PROJECT,
            "--timeout",
            "1",
            "--",
            "echo started; sleep 30",
        ])
        .await;
    assert_eq!(out.status.code(), Some(124), "{}", show(&out));
    assert_eq!(out.stdout, b"started\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_neither_lose_nor_repeat_output() {
    let sys = start().await;
    // Cut the first three event streams, each in the middle of its fifth
    // output event, and close the two connections after each cut at once
    // (the API "down" for a moment); later connections pass untouched.
    let proxy = Proxy::start(sys.addr, 3, 5).await;
    proxy.refuse_after_cut(2);
    let script = "for i in $(seq 1 60); do echo \"line $i\"; echo \"err $i\" >&2; sleep 0.02; done; printf end";
    let out = finish_or(
        sys.rdev_at(&proxy.url(), &["run", "-p", PROJECT, "--", script]),
        || proxy.log(),
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let want_out: String = (1..=60).map(|i| format!("line {i}\n")).collect::<String>() + "end";
    let want_err: String = (1..=60).map(|i| format!("err {i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout), want_out);
    assert_eq!(String::from_utf8_lossy(&out.stderr), want_err);
    assert_eq!(
        proxy.cuts_done(),
        3,
        "the proxy should have cut three streams"
    );
    assert_eq!(proxy.refused(), 6, "and refused two connections after each");
    let resumed = proxy
        .requests()
        .iter()
        .filter(|r| r.to_ascii_lowercase().contains("last-event-id: "))
        .count();
    assert!(resumed >= 3, "reconnects must resume with Last-Event-ID");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_closed_by_the_api_are_resumed_seamlessly() {
    // The API ends every event stream after a second; a 3 s command needs
    // several connections.
    let sys = start_with(Opts {
        sse_max_lifetime: Duration::from_secs(1),
        ..Opts::default()
    })
    .await;
    let script = "for i in $(seq 1 30); do echo \"tick $i\"; sleep 0.1; done";
    let proxy = Proxy::start(sys.addr, 0, 0).await; // only to count requests
    let out = finish(sys.rdev_at(&proxy.url(), &["run", "-p", PROJECT, "--", script])).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let want: String = (1..=30).map(|i| format!("tick {i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
    assert_eq!(out.stderr, b"");
    let streams = proxy
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET /v1/commands/") && r.contains("/events "))
        .count();
    assert!(streams >= 2, "expected reconnects, saw {streams} stream(s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_enqueue_answer_is_retried_without_running_twice() {
    let sys = start().await;
    let proxy = Proxy::start(sys.addr, 0, 0).await;
    proxy.lose_next_202();
    let out = finish(sys.rdev_at(&proxy.url(), &["run", "-p", PROJECT, "--", "echo once"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(out.stdout, b"once\n");
    let posts: Vec<String> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("POST /v1/projects/"))
        .collect();
    assert_eq!(posts.len(), 2, "one retry: {posts:?}");
    let key = |r: &str| {
        r.lines()
            .find(|l| l.to_ascii_lowercase().starts_with("idempotency-key:"))
            .map(str::to_owned)
    };
    assert!(key(&posts[0]).is_some());
    assert_eq!(key(&posts[0]), key(&posts[1]), "the retry reuses the key");
    let list = sys.json(&["ls", "-p", PROJECT]).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_asks_rdev_to_cancel_and_a_second_one_leaves_it_running() {
    // A command that ignores SIGTERM stays running through the worker's
    // 30 s grace period: time for the second Ctrl-C.
    let sys = start_with(Opts {
        kill_grace_s: 30,
        ..Opts::default()
    })
    .await;
    let proxy = Proxy::start(sys.addr, 0, 0).await;
    let script = "trap '' TERM; echo ready; while :; do sleep 0.2; done";
    let mut child =
        rdev_tests::spawn(&mut sys.rdev_at(&proxy.url(), &["run", "-p", PROJECT, "--", script]))
            .expect("spawn");
    // Streaming has begun once the first line is through.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0u8; 6];
    tokio::time::timeout(Duration::from_secs(20), stdout.read_exact(&mut first))
        .await
        .expect("first output within 20 s")
        .expect("read");
    assert_eq!(&first, b"ready\n");
    let pid = nix::unistd::Pid::from_raw(child.id().expect("pid") as i32);
    let cmd = sys.wait_for_command("running").await;
    let id = cmd["id"].as_str().expect("id").to_owned();

    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let cancel_line = format!("POST /v1/commands/{id}/cancel ");
    let mut asked = false;
    for _ in 0..100 {
        if proxy.requests().iter().any(|r| r.starts_with(&cancel_line)) {
            asked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(asked, "the first Ctrl-C must POST {cancel_line}");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("second SIGINT");
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("rdev exits at once after the second Ctrl-C")
        .expect("output");
    assert_eq!(out.status.code(), Some(130), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cancelling {id}")), "{err}");
    assert!(err.contains(&format!("left {id} running")), "{err}");
    // The remote command is still in its grace period.
    assert_eq!(sys.json(&["status", &id]).await["status"], "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_cancels_the_remote_command_and_exits_130() {
    let sys = start().await;
    let mut child =
        rdev_tests::spawn(&mut sys.rdev(&["run", "-p", PROJECT, "--", "echo ready; sleep 30"]))
            .expect("spawn");
    // The command has started once its first line is through.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0u8; 6];
    tokio::time::timeout(Duration::from_secs(20), stdout.read_exact(&mut first))
        .await
        .expect("first output within 20 s")
        .expect("read");
    assert_eq!(&first, b"ready\n");
    let pid = nix::unistd::Pid::from_raw(child.id().expect("pid") as i32);
    let cmd = sys.wait_for_command("running").await;
    let started = std::time::Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("rdev exits once the command is cancelled")
        .expect("output");
    assert_eq!(out.status.code(), Some(130), "{}", show(&out));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "not the 30 s sleep"
    );
    let id = cmd["id"].as_str().expect("id");
    let after = sys.json(&["status", id]).await;
    assert_eq!(after["status"], "cancelled", "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_subcommand_cancels_and_run_reports_130() {
    let sys = start().await;
    let child =
        rdev_tests::spawn(&mut sys.rdev(&["run", "-p", PROJECT, "--", "sleep 30"])).expect("spawn");
    let cmd = sys.wait_for_command("running").await;
    let id = cmd["id"].as_str().expect("id");
    let cancel = sys.output(&["cancel", id]).await;
    assert_eq!(cancel.status.code(), Some(0), "{}", show(&cancel));
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("run ends")
        .expect("output");
    assert_eq!(out.status.code(), Some(130), "{}", show(&out));
    // Cancelling a finished command is a conflict, explained.
    let again = sys.output(&["cancel", id]).await;
    assert_eq!(again.status.code(), Some(1), "{}", show(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("Conflict (409)"),
        "{}",
        show(&again)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detach_logs_and_status_work_together() {
    let sys = start().await;
    let out = sys
        .output(&[
            "run",
            "-p",
            PROJECT,
            "--detach",
            "--",
            // Pauses order the chunks (two pipes have no order of their own);
            // `env printf` because the shell may buffer its builtin's output.
            "env printf a; sleep 0.2; env printf b >&2; sleep 0.2; env printf c",
        ])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(id.len(), 36, "detach prints the id: {}", show(&out));

    // `logs -f` follows to the end; then the stored output is complete.
    let follow = sys.output(&["logs", "-f", &id]).await;
    assert_eq!(follow.status.code(), Some(0), "{}", show(&follow));
    assert_eq!(follow.stdout, b"ac");
    assert_eq!(follow.stderr, b"b");
    let all = sys.output(&["logs", &id]).await;
    assert_eq!(all.stdout, b"abc");
    let err = sys.output(&["logs", &id, "--stream", "stderr"]).await;
    assert_eq!(err.stdout, b"b");

    let status = sys.json(&["status", &id]).await;
    assert_eq!(status["status"], "succeeded");
    assert_eq!(status["project"], PROJECT);
    let human = sys.output(&["status", &id]).await;
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("status:") && text.contains("succeeded"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_exits_with_the_commands_exit_code_or_75_while_it_runs() {
    let sys = start().await;
    let detach = |cmd: &'static str| {
        let sys = &sys;
        async move {
            let out = sys
                .output(&["run", "-p", PROJECT, "--detach", "--", cmd])
                .await;
            assert_eq!(out.status.code(), Some(0), "{}", show(&out));
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        }
    };
    let failing = detach("sleep 0.3; exit 3").await;
    let waited = sys.output(&["wait", &failing]).await;
    assert_eq!(waited.status.code(), Some(3), "{}", show(&waited));
    let text = String::from_utf8_lossy(&waited.stdout);
    assert!(text.contains("failed"), "{text}");

    // Still running when --timeout passes: 75, and the status is said.
    let long = detach("sleep 300").await;
    let waited = sys.output(&["wait", &long, "--timeout", "1s"]).await;
    assert_eq!(waited.status.code(), Some(75), "{}", show(&waited));
    let err = String::from_utf8_lossy(&waited.stderr);
    assert!(err.contains(&format!("{long} is still")), "{err}");
    // Ended meanwhile: its exit code, as `rdev run` gives it (130: cancelled).
    let cancel = sys.output(&["cancel", &long]).await;
    assert_eq!(cancel.status.code(), Some(0), "{}", show(&cancel));
    let waited = sys.output(&["--json", "wait", &long]).await;
    assert_eq!(waited.status.code(), Some(130), "{}", show(&waited));
    let cmd: Value = serde_json::from_slice(&waited.stdout).expect("json");
    assert_eq!(cmd["status"], "cancelled", "{cmd}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_parses_and_tables_are_for_people() {
    let sys = start().await;
    let created = sys
        .json(&[
            "projects",
            "create",
            "web",
            "--description",
            "site",
            "-e",
            "A=1",
        ])
        .await;
    assert_eq!(created["name"], "web");
    assert_eq!(created["env_names"], json!(["A"]));
    let list = sys.json(&["projects", "ls"]).await;
    let names: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(names.contains(&"web") && names.contains(&PROJECT), "{list}");
    assert_eq!(
        sys.json(&["projects", "get", "web"]).await["description"],
        "site"
    );

    let run = sys.json(&["run", "-p", PROJECT, "--", "true"]).await;
    assert_eq!(run["status"], "succeeded");
    let cmds = sys.json(&["ls", "--limit", "5"]).await;
    assert_eq!(cmds["items"][0]["id"], run["id"]);

    let table = sys.output(&["projects", "ls"]).await;
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("NAME"), "{text}");
    assert!(
        !text.contains('\x1b'),
        "no colour when not a terminal: {text}"
    );

    let deleted = sys.output(&["projects", "delete", "web"]).await;
    assert_eq!(deleted.status.code(), Some(0), "{}", show(&deleted));
    let gone = sys.output(&["projects", "get", "web"]).await;
    assert_eq!(gone.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("Not Found (404)"),
        "{}",
        show(&gone)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_errors_name_the_fields() {
    let sys = start().await;
    let out = sys.output(&["projects", "create", "Bad_Name"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("(422)") && err.contains("name:"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_and_bad_keys_are_explained() {
    let sys = start().await;
    // A port nobody listens on.
    let free = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dead = format!("http://{}", free.local_addr().expect("addr"));
    drop(free);
    let out = finish(sys.rdev_at(&dead, &["projects", "ls"])).await;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!("rdev: cannot reach rdev at {dead}: connection refused — is rdev-api running?")
    );

    let mut bad = sys.rdev(&["projects", "ls"]);
    bad.env("RDEV_API_KEY", "rdev_wrong");
    let out = finish(bad).await;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("rdev: unauthorized: "), "{err}");
    assert!(err.contains("RDEV_API_KEY"), "{err}");

    let usage = sys.output(&["run", "--", "true"]).await;
    assert_eq!(usage.status.code(), Some(2), "{}", show(&usage));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_in_the_config_file_configure_the_client() {
    let sys = start().await;
    let dir = sys.config_home.join("rdev");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("config.toml"),
        format!(
            "default_profile = \"broken\"\n\
             [profiles.broken]\nurl = \"http://127.0.0.1:1\"\n\
             [profiles.test]\nurl = \"{}\"\napi_key = \"{}\"\n",
            sys.url(),
            sys.key
        ),
    )
    .expect("write config");
    let mut cmd = sys.rdev(&["--profile", "test", "--json", "projects", "ls"]);
    cmd.env_remove("RDEV_URL").env_remove("RDEV_API_KEY");
    let out = finish(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));

    // The environment wins over the default profile's URL.
    let mut cmd = sys.rdev(&["projects", "ls"]);
    cmd.env_remove("RDEV_API_KEY");
    let out = finish(cmd).await;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unauthorized"),
        "{}",
        show(&out)
    );

    let mut cmd = sys.rdev(&["--profile", "nope", "projects", "ls"]);
    cmd.env_remove("RDEV_URL");
    let out = finish(cmd).await;
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
}

/// A TCP proxy between the CLI and the API. It records what clients send,
/// and cuts the first `cuts` event streams in the middle of their
/// `after`-th output event (closing both sides).
struct Proxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

struct ProxyState {
    target: SocketAddr,
    after: usize,
    cuts_left: Mutex<usize>,
    cuts_done: Mutex<usize>,
    /// Connections to close unanswered after each cut.
    refuse_per_cut: Mutex<usize>,
    refuse_left: Mutex<usize>,
    refused: Mutex<usize>,
    /// Swallow the answer to the next accepted (202) request.
    lose_next_202: Mutex<bool>,
    requests: Mutex<Vec<String>>,
    /// What happened on each connection, for a failing test's message.
    log: Mutex<Vec<String>>,
    connections: Mutex<usize>,
    started: std::time::Instant,
}

impl ProxyState {
    /// Notes what connection `conn` did.
    fn note(&self, conn: usize, what: impl std::fmt::Display) {
        let at = self.started.elapsed().as_millis();
        let mut log = self.log.lock().expect("lock");
        // Bounded: a stuck test must not also eat the memory.
        if log.len() < 2000 {
            log.push(format!("{at:>6} ms  c{conn}: {what}"));
        }
    }
}

/// The SSE event names and ids in a piece of a response, for the log.
fn events_in(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter(|l| {
            l.starts_with("event:")
                || l.starts_with("id:")
                || l.starts_with("HTTP/")
                || l.starts_with(':')
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

impl Proxy {
    async fn start(target: SocketAddr, cuts: usize, after: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(ProxyState {
            target,
            after,
            cuts_left: Mutex::new(cuts),
            cuts_done: Mutex::new(0),
            refuse_per_cut: Mutex::new(0),
            refuse_left: Mutex::new(0),
            refused: Mutex::new(0),
            lose_next_202: Mutex::new(false),
            requests: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            connections: Mutex::new(0),
            started: std::time::Instant::now(),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((inbound, _)) => {
                        tokio::spawn(relay(inbound, st.clone()));
                    }
                    // A connection reset before it was accepted fails this
                    // accept, not the listener: keep accepting.
                    Err(e) => {
                        st.note(0, format_args!("accept failed: {e}"));
                    }
                }
            }
        });
        Self { addr, state, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<String> {
        self.state.requests.lock().expect("lock").clone()
    }

    fn cuts_done(&self) -> usize {
        *self.state.cuts_done.lock().expect("lock")
    }

    fn refuse_after_cut(&self, n: usize) {
        *self.state.refuse_per_cut.lock().expect("lock") = n;
    }

    fn lose_next_202(&self) {
        *self.state.lose_next_202.lock().expect("lock") = true;
    }

    fn refused(&self) -> usize {
        *self.state.refused.lock().expect("lock")
    }

    /// Every connection's story so far.
    fn log(&self) -> String {
        self.state.log.lock().expect("lock").join("\n")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(inbound: TcpStream, st: Arc<ProxyState>) {
    let conn = {
        let mut n = st.connections.lock().expect("lock");
        *n += 1;
        *n
    };
    {
        let mut left = st.refuse_left.lock().expect("lock");
        if *left > 0 {
            *left -= 1;
            *st.refused.lock().expect("lock") += 1;
            drop(inbound);
            st.note(conn, "refused");
            return;
        }
    }
    st.note(conn, "connecting to the API");
    let Ok(outbound) = TcpStream::connect(st.target).await else {
        st.note(conn, "could not reach the API");
        return;
    };
    st.note(conn, "accepted");
    let (mut client_rx, mut client_tx) = inbound.into_split();
    let (mut server_rx, mut server_tx) = outbound.into_split();
    let up_state = st.clone();
    let up = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match client_rx.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    up_state.note(conn, "the client closed");
                    break;
                }
                Ok(n) => n,
            };
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            let resume = request
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("last-event-id:"))
                .unwrap_or("");
            let line = request.lines().next().unwrap_or("").to_owned();
            up_state.note(conn, format_args!("request {line} {resume}"));
            up_state.requests.lock().expect("lock").push(request);
            if server_tx.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = server_tx.shutdown().await;
    });
    let marker = b"event: output";
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match server_rx.read(&mut buf).await {
            Ok(0) => {
                st.note(conn, "the API closed");
                break;
            }
            Err(e) => {
                st.note(conn, format_args!("read from the API failed: {e}"));
                break;
            }
            Ok(n) => n,
        };
        st.note(conn, format_args!("{n} bytes: {}", events_in(&buf[..n])));
        if buf[..n].starts_with(b"HTTP/1.1 202")
            && std::mem::take(&mut *st.lose_next_202.lock().expect("lock"))
        {
            // The server acted; the client never hears of it.
            up.abort();
            return;
        }
        let start = seen.len();
        seen.extend_from_slice(&buf[..n]);
        // Where the `after`-th output event of this connection starts, if it has.
        let cut_at = (st.after > 0)
            .then(|| {
                seen.windows(marker.len())
                    .enumerate()
                    .filter(|(_, w)| *w == marker)
                    .nth(st.after - 1)
                    .map(|(i, _)| i + marker.len() + 3)
            })
            .flatten()
            .filter(|at| *at <= seen.len());
        if let Some(at) = cut_at {
            let take = {
                let mut left = st.cuts_left.lock().expect("lock");
                let take = *left > 0;
                if take {
                    *left -= 1;
                }
                take
            };
            if take {
                let _ = client_tx.write_all(&seen[start..at.max(start)]).await;
                *st.cuts_done.lock().expect("lock") += 1;
                st.note(conn, format_args!("cut at byte {at}"));
                // Added, not set: a cut may come on a pooled connection
                // before the previous cut's refusals were used up.
                *st.refuse_left.lock().expect("lock") += *st.refuse_per_cut.lock().expect("lock");
                up.abort();
                let _ = client_tx.shutdown().await;
                return;
            }
        }
        if client_tx.write_all(&buf[..n]).await.is_err() {
            st.note(conn, "the client is gone");
            break;
        }
    }
    let _ = client_tx.shutdown().await;
    up.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_truncated_output_notes_the_gap() {
    let sys = start().await;
    let created = sys
        .output(&["projects", "create", "tiny", "--max-output-bytes", "100"])
        .await;
    assert_eq!(created.status.code(), Some(0), "{}", show(&created));
    let script = "for i in $(seq 1 30); do echo \"line $i\"; sleep 0.01; done";
    let out = sys
        .output(&["run", "-p", "tiny", "--detach", "--", script])
        .await;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    for _ in 0..200 {
        if sys.json(&["status", &id]).await["status"] == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Finished: the stream replays what PostgreSQL kept, head and tail.
    let follow = sys.output(&["logs", "-f", &id]).await;
    assert_eq!(follow.status.code(), Some(0), "{}", show(&follow));
    let text = String::from_utf8_lossy(&follow.stdout);
    assert!(text.starts_with("line 1\n"), "{text}");
    assert!(text.ends_with("line 30\n"), "{text}");
    assert!(!text.contains("line 15\n"), "the middle was cut: {text}");
    let err = String::from_utf8_lossy(&follow.stderr);
    assert!(
        err.starts_with("rdev: output truncated: chunks "),
        "{}",
        show(&follow)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_set_from_stdin_listed_used_redacted_and_removed() {
    let sys = start().await;
    let value = "cli-secret-value-42";
    let mut set = sys.rdev(&["secrets", "set", "-p", PROJECT, "CLI_TOKEN"]);
    set.stdin(Stdio::piped());
    let mut child = rdev_tests::spawn(&mut set).expect("spawn rdev");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(format!("{value}\n").as_bytes())
            .await
            .expect("write");
    }
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("in time")
        .expect("output");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(!show(&out).contains(value), "{}", show(&out));

    let list = sys.json(&["secrets", "ls", "-p", PROJECT]).await;
    assert_eq!(list["items"][0]["name"], "CLI_TOKEN", "{list}");
    assert_eq!(list["items"][0]["version"], 1, "{list}");

    // The command sees the value (its length proves the newline was cut);
    // the output shows the name.
    let out = sys
        .output(&[
            "run",
            "-p",
            PROJECT,
            "--secret",
            "CLI_TOKEN",
            "--",
            r#"echo "$CLI_TOKEN ${#CLI_TOKEN}""#,
        ])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("***CLI_TOKEN*** {}\n", value.len())
    );

    let out = sys
        .output(&["secrets", "rm", "-p", PROJECT, "CLI_TOKEN"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let list = sys.json(&["secrets", "ls", "-p", PROJECT]).await;
    assert_eq!(list["items"], serde_json::json!([]), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cp_copies_trees_both_ways_and_ls_lists_them() {
    let sys = start().await;
    let local = sys.workspace.join("local");
    let src = local.join("src");
    std::fs::create_dir_all(src.join("sub dir")).expect("dirs");
    let binary: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(src.join("bin.dat"), &binary).expect("write");
    std::fs::write(src.join("sub dir/ünï.txt"), b"hello\n").expect("write");
    std::fs::write(src.join("empty"), b"").expect("write");
    let target = format!("{PROJECT}:up");
    let out = sys
        .output(&["cp", src.to_str().expect("utf-8"), &target])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let list = sys.json(&["ls", &target]).await;
    let names: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| e["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["bin.dat", "empty", "sub dir"], "{list}");
    let back = local.join("back");
    let out = sys
        .output(&["cp", &target, back.to_str().expect("utf-8")])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(std::fs::read(back.join("bin.dat")).expect("bin"), binary);
    assert_eq!(
        std::fs::read(back.join("sub dir/ünï.txt")).expect("txt"),
        b"hello\n"
    );
    assert_eq!(std::fs::read(back.join("empty")).expect("empty"), b"");
    // One file into an existing directory keeps its name.
    let out = sys
        .output(&[
            "cp",
            &format!("{PROJECT}:up/bin.dat"),
            local.to_str().expect("utf-8"),
        ])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(std::fs::read(local.join("bin.dat")).expect("bin"), binary);
    let out = sys.output(&["cp", "a", "b"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
}

/// The local side of `rdev run -it`: a real pseudo-terminal whose slave is
/// `rdev`'s controlling terminal; the test types on the master and reads
/// what `rdev` writes.
struct LocalTerminal {
    master: std::fs::File,
    /// A copy of the slave, to read its settings (raw or not) from outside.
    slave: std::os::fd::OwnedFd,
    seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl LocalTerminal {
    fn open(cols: u16, rows: u16) -> Self {
        let ws = nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pair = nix::pty::openpty(Some(&ws), None).expect("openpty");
        let master = std::fs::File::from(pair.master);
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (mut reader, sink) = (master.try_clone().expect("clone"), seen.clone());
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            // EIO once the last slave descriptor closes.
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                sink.lock().expect("seen").extend_from_slice(&buf[..n]);
            }
        });
        Self {
            master,
            slave: pair.slave,
            seen,
        }
    }

    /// `rdev ARGS` with this terminal as stdin, stdout, stderr and
    /// controlling terminal.
    fn spawn(&self, sys: &System, args: &[&str]) -> tokio::process::Child {
        let mut cmd = sys.rdev(args);
        let fd = || Stdio::from(self.slave.try_clone().expect("slave"));
        cmd.stdin(fd())
            .stdout(fd())
            .stderr(fd())
            .env("TERM", "xterm");
        // SAFETY: setsid and ioctl are async-signal-safe; nothing else runs
        // between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()?;
                if nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        rdev_tests::spawn(&mut cmd).expect("spawn rdev")
    }

    fn type_keys(&mut self, keys: &[u8]) {
        use std::io::Write;
        self.master.write_all(keys).expect("type");
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().expect("seen")).into_owned()
    }

    async fn wait_for(&self, want: &str) {
        for _ in 0..600 {
            if self.text().contains(want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{want:?} never showed on the terminal:\n{}", self.text());
    }

    fn raw(&self) -> bool {
        let t = nix::sys::termios::tcgetattr(&self.slave).expect("tcgetattr");
        !t.local_flags
            .intersects(nix::sys::termios::LocalFlags::ICANON | nix::sys::termios::LocalFlags::ECHO)
    }

    fn resize(&self, cols: u16, rows: u16) {
        use std::os::fd::AsRawFd;
        let ws = nix::libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
        let r = unsafe { nix::libc::ioctl(self.master.as_raw_fd(), nix::libc::TIOCSWINSZ, &ws) };
        assert_eq!(r, 0, "TIOCSWINSZ");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_it_drives_a_remote_terminal_in_raw_mode_and_restores_the_local_one() {
    let sys = start().await;
    let mut term = LocalTerminal::open(101, 33);
    assert!(!term.raw(), "a fresh terminal is cooked");
    let mut rdev = term.spawn(&sys, &["run", "-it", "-p", PROJECT, "--", "sh"]);

    // The remote terminal has the local one's size; keys go through raw.
    term.type_keys(b"stty size\r");
    term.wait_for("33 101").await;
    assert!(term.raw(), "rdev put the local terminal in raw mode");
    // A window change reaches the remote terminal.
    term.resize(120, 40);
    tokio::time::sleep(Duration::from_millis(300)).await;
    term.type_keys(b"stty size\r");
    term.wait_for("40 120").await;
    // Ctrl-C is a key for the remote foreground program, not for rdev.
    term.type_keys(b"sleep 60; echo not-$((6*7))\r");
    tokio::time::sleep(Duration::from_millis(700)).await;
    term.type_keys(&[0x03]);
    term.type_keys(b"echo alive-$((40+2))\r");
    term.wait_for("alive-42").await;
    assert!(!term.text().contains("not-42"), "{}", term.text());
    term.type_keys(b"exit 3\r");

    let status = tokio::time::timeout(Duration::from_secs(60), rdev.wait())
        .await
        .expect("rdev ends with the remote shell")
        .expect("status");
    assert_eq!(status.code(), Some(3), "{}", term.text());
    assert!(!term.raw(), "the local terminal was restored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_i_streams_stdin_and_closes_it() {
    let sys = start().await;
    let mut cmd = sys.rdev(&["run", "-i", "-p", PROJECT, "--", "wc", "-c"]);
    cmd.stdin(Stdio::piped());
    let mut child = rdev_tests::spawn(&mut cmd).expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    use tokio::io::AsyncWriteExt;
    stdin.write_all(&[b'x'; 100_000]).await.expect("write");
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("rdev ends")
        .expect("output");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "100000");
}
