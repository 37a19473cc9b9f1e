//! The worker against real PostgreSQL and RabbitMQ: each test has its own
//! database and AMQP prefix (`TestEnv`) and runs `rdev_worker::run` in-process.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdev_shared::db::commands::{self, NewCommand};
use rdev_shared::db::projects::{self, NewProject};
use rdev_shared::db::{outbox, output};
use rdev_shared::domain::{Command, CommandSpec, CommandStatus, ExecutorConfig, OutputStream};
use rdev_shared::lifecycle::CancellationToken;
use rdev_shared::mq::Publisher;
use rdev_shared::test_support::TestEnv;
use rdev_worker::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use uuid::Uuid;

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir =
            std::env::temp_dir().join(format!("rdev-worker-it-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct RunningWorker {
    addr: SocketAddr,
    shutdown: CancellationToken,
    handle: JoinHandle<()>,
}

impl RunningWorker {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("worker stops within 30 s")
            .expect("worker task does not panic");
    }
}

fn config(env: &TestEnv, root: &Path, drain_s: u64) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().expect("address"),
        workspace_root: root.join("workspaces"),
        concurrency: 2,
        heartbeat_s: 1,
        kill_grace_s: 1,
        worker_id: Some(format!("test-worker-{:04x}", rand::random::<u16>())),
        drain_s,
        executors: "local".parse().expect("executors"),
        ..Config::local(env.db.clone(), env.amqp.clone())
    }
}

async fn start_worker(cfg: Config) -> RunningWorker {
    let shutdown = CancellationToken::new();
    let running = rdev_worker::start(cfg, shutdown.clone())
        .await
        .expect("worker starts");
    RunningWorker {
        addr: running.addr,
        shutdown,
        handle: running.task,
    }
}

async fn insert_project(env: &TestEnv, name: &str, max_output_bytes: i64) -> Uuid {
    let client = env.pool.get().await.expect("db client");
    let p = NewProject {
        name: name.into(),
        description: String::new(),
        executor: ExecutorConfig::default(),
        env: BTreeMap::from([("GREETING".into(), "hello from the project".into())]),
        default_timeout_s: 60,
        max_output_bytes,
        max_concurrency: None,
        allowed_commands: None,
        network: Default::default(),
        limits: Default::default(),
        allowed_secrets: None,
        command_retention_s: None,
        output_retention_s: None,
        max_file_bytes: None,
    };
    projects::insert(&client, &p)
        .await
        .expect("insert project")
        .id
}

async fn insert_command(env: &TestEnv, project_id: Uuid, line: &str, timeout_s: i32) -> Uuid {
    let client = env.pool.get().await.expect("db client");
    let c = NewCommand {
        id: Uuid::now_v7(),
        project_id,
        api_key_id: None,
        spec: CommandSpec::Shell(line.into()),
        env: BTreeMap::new(),
        stdin: None,
        stdin_pipe: false,
        tty: None,
        priority: 5,
        timeout_s,
        idempotency_key: None,
        idempotency_fingerprint: None,
    };
    commands::insert(&client, &c)
        .await
        .expect("insert command")
        .expect("new command")
        .id
}

async fn publish_run(env: &TestEnv, publisher: &Arc<Publisher>, id: Uuid) {
    publisher
        .publish_confirmed(&env.topology.run_message(id, 5))
        .await
        .expect("publish run message");
}

async fn get(env: &TestEnv, id: Uuid) -> Command {
    let client = env.pool.get().await.expect("db client");
    commands::get(&client, id)
        .await
        .expect("get command")
        .expect("command exists")
}

async fn wait_for(env: &TestEnv, id: Uuid, done: impl Fn(&Command) -> bool) -> Command {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = get(env, id).await;
        if done(&c) {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "command {id} stuck in {}",
            c.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_terminal(env: &TestEnv, id: Uuid) -> Command {
    wait_for(env, id, |c| c.status.is_terminal()).await
}

async fn stored_output(env: &TestEnv, id: Uuid) -> (Vec<i64>, Vec<u8>) {
    let client = env.pool.get().await.expect("db client");
    let chunks = output::read(&client, id, 0, None, 100_000)
        .await
        .expect("read output");
    let seqs = chunks.iter().map(|c| c.seq).collect();
    let bytes = chunks
        .iter()
        .filter(|c| c.stream == OutputStream::Stdout)
        .flat_map(|c| c.data.clone())
        .collect();
    (seqs, bytes)
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the worker");
    let req = format!("GET {path} HTTP/1.1\r\nHost: worker\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("send request");
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.expect("read response");
    resp
}

#[tokio::test]
async fn redelivered_message_runs_command_once() {
    let env = TestEnv::new().await;
    let tmp = TempDir::new();
    // Commands write only in their project's workdir (`app` under the root).
    let marker = tmp.0.join("workspaces/app/runs.txt");
    let project = insert_project(&env, "app", 1_000_000).await;
    let line = "echo \"$GREETING\"; echo ran >> runs.txt";
    let id = insert_command(&env, project, line, 30).await;
    let publisher = Publisher::new(env.amqp.clone(), "worker-test");
    publish_run(&env, &publisher, id).await;

    let worker = start_worker(config(&env, &tmp.0, 5)).await;
    let c = wait_terminal(&env, id).await;
    assert_eq!(c.status, CommandStatus::Succeeded, "{c:?}");
    assert_eq!(c.exit_code, Some(0));
    assert_eq!(c.error, None);
    assert_eq!(c.attempt, 1);
    assert!(
        c.worker_id
            .as_deref()
            .is_some_and(|w| w.starts_with("test-worker-"))
    );
    assert_eq!(c.output_bytes, "hello from the project\n".len() as i64);
    assert!(!c.truncated);
    let (seqs, bytes) = stored_output(&env, id).await;
    assert_eq!(bytes, b"hello from the project\n");
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());

    let health = http_get(worker.addr, "/health").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let ready = http_get(worker.addr, "/ready").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");

    // The same message again, then a sentinel behind it: once the sentinel
    // has run, the duplicate has been consumed too.
    publish_run(&env, &publisher, id).await;
    let sentinel = insert_command(&env, project, "true", 30).await;
    publish_run(&env, &publisher, sentinel).await;
    assert_eq!(
        wait_terminal(&env, sentinel).await.status,
        CommandStatus::Succeeded
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    let runs = std::fs::read_to_string(&marker).expect("marker file");
    assert_eq!(runs, "ran\n", "the command ran exactly once");
    let again = get(&env, id).await;
    assert_eq!(again.attempt, 1);
    assert_eq!(again.finished_at, c.finished_at);

    // started + succeeded events of both commands were published and marked.
    let client = env.pool.get().await.expect("db client");
    assert_eq!(
        outbox::pending_count(&client).await.expect("outbox count"),
        0
    );
    worker.stop().await;
}

/// A relative `RDEV_WORKSPACE_ROOT` (the default is `./.rdev/workspaces`)
/// names the same directory inside the sandbox, which starts in `/`.
#[tokio::test]
async fn a_relative_workspace_root_works_in_the_sandbox() {
    let env = TestEnv::new().await;
    let tmp = TempDir::new();
    let cwd = std::env::current_dir().expect("cwd");
    let up = "../".repeat(cwd.components().count().saturating_sub(1));
    let relative = PathBuf::from(format!(
        "{up}{}",
        tmp.0
            .strip_prefix("/")
            .expect("absolute temp dir")
            .display()
    ));
    assert!(relative.is_relative());
    let project = insert_project(&env, "app", 1_000_000).await;
    let id = insert_command(&env, project, "echo in the sandbox", 30).await;
    let publisher = Publisher::new(env.amqp.clone(), "worker-test");
    publish_run(&env, &publisher, id).await;
    let worker = start_worker(config(&env, &relative, 5)).await;
    let c = wait_terminal(&env, id).await;
    assert_eq!(c.status, CommandStatus::Succeeded, "{c:?}");
    let (_, bytes) = stored_output(&env, id).await;
    assert_eq!(bytes, b"in the sandbox\n");
    worker.stop().await;
}

#[tokio::test]
async fn large_output_keeps_head_and_tail_within_the_cap() {
    let env = TestEnv::new().await;
    let tmp = TempDir::new();
    let project = insert_project(&env, "loud", 1000).await;
    // 1000 lines of 100 bytes, one write each.
    let id = insert_command(
        &env,
        project,
        "for i in $(seq 1 1000); do printf '%099d\\n' $i; done",
        30,
    )
    .await;
    let expected: String = (1..=1000).map(|i| format!("{i:099}\n")).collect();
    let publisher = Publisher::new(env.amqp.clone(), "worker-test");
    publish_run(&env, &publisher, id).await;

    let worker = start_worker(config(&env, &tmp.0, 5)).await;
    let c = wait_terminal(&env, id).await;
    assert_eq!(c.status, CommandStatus::Succeeded, "{c:?}");
    assert!(c.truncated);
    assert_eq!(c.output_bytes, 100_000);
    let (seqs, stored) = stored_output(&env, id).await;
    assert!(stored.len() <= 1000, "stored {} bytes", stored.len());
    assert!(
        stored.len() >= 500,
        "head and some tail are kept: {} bytes",
        stored.len()
    );
    assert_eq!(
        &stored[..500],
        &expected.as_bytes()[..500],
        "head = start of the output"
    );
    let tail = &stored[500..];
    assert!(!tail.is_empty());
    assert_eq!(
        tail,
        &expected.as_bytes()[expected.len() - tail.len()..],
        "tail = end of the output"
    );
    assert!(
        seqs.windows(2).any(|w| w[1] > w[0] + 1),
        "the dropped middle shows as a seq gap"
    );
    worker.stop().await;
}

#[tokio::test]
async fn timeout_is_recorded_as_timed_out() {
    let env = TestEnv::new().await;
    let tmp = TempDir::new();
    let project = insert_project(&env, "slow", 1_000_000).await;
    let id = insert_command(&env, project, "echo start; sleep 30", 1).await;
    let publisher = Publisher::new(env.amqp.clone(), "worker-test");
    publish_run(&env, &publisher, id).await;

    let worker = start_worker(config(&env, &tmp.0, 5)).await;
    let c = wait_terminal(&env, id).await;
    assert_eq!(c.status, CommandStatus::TimedOut, "{c:?}");
    assert_eq!(c.error.as_deref(), Some("timed out after 1s"));
    assert_eq!(stored_output(&env, id).await.1, b"start\n");
    worker.stop().await;
}

#[tokio::test]
async fn shutdown_stops_commands_still_running_after_the_drain_period() {
    let env = TestEnv::new().await;
    let tmp = TempDir::new();
    let project = insert_project(&env, "drain", 1_000_000).await;
    let id = insert_command(&env, project, "sleep 60", 120).await;
    let publisher = Publisher::new(env.amqp.clone(), "worker-test");
    publish_run(&env, &publisher, id).await;

    let worker = start_worker(config(&env, &tmp.0, 1)).await;
    wait_for(&env, id, |c| c.status == CommandStatus::Running).await;
    worker.stop().await;
    // Failed by the shutdown, not succeeded after its 60 s: the drain
    // period ended it (no bound on the elapsed time needed).
    let c = get(&env, id).await;
    assert_eq!(c.status, CommandStatus::Failed, "{c:?}");
    assert_eq!(c.error.as_deref(), Some("worker shutting down"));
}
