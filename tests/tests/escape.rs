//! The escape suite (containment, issue 14): commands that try to get out of
//! their sandbox, each of which must fail or find nothing, against the real
//! stack (API, worker, PostgreSQL, RabbitMQ).
//!
//! It runs twice, one worker after the other (the two share the host's
//! `nobody` user, whose process count the rlimit fallback measures):
//!
//! - a worker in this process, running as this test's user (root in CI, so
//!   commands drop to `nobody`, limits come from cgroups where they can);
//! - when this test runs as root, a worker *process* started as `nobody`
//!   (commands run as the worker's own user, limits from rlimits, since
//!   `nobody` may not manage cgroups). Run as a non-root user, the first
//!   pass is already the unprivileged case and the second is skipped with a
//!   note: switching users needs root.
//!
//! Run: `cargo test -p rdev-tests --test escape -- --nocapture`.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rdev_tests::{
    Options, TestApp, marked_processes, sleep_marker, spawn_app_with, wait_no_marked,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const NOBODY: u32 = 65534;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_cannot_escape_their_sandbox() {
    let app = spawn_app_with(Options {
        concurrency: 4,
        ..Options::default()
    })
    .await;
    let ops = app.worker_ops.clone().expect("in-process worker");
    eprintln!(
        "escape suite: worker in-process (uid {})",
        nix::unistd::Uid::effective()
    );
    escape_suite(&app, &ops, &[]).await;
    drop(app);

    if !nix::unistd::Uid::effective().is_root() {
        eprintln!(
            "escape suite: not root, so no second pass with a worker running as another \
             user; the first pass ran the worker unprivileged"
        );
        return;
    }
    let app = spawn_app_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let worker = UnprivilegedWorker::start(&app).await;
    eprintln!("escape suite: worker process as nobody ({})", worker.ops);
    // That worker's environment holds the real connection URLs: they must
    // be found nowhere a command can read.
    let urls = [
        app.env.db.database_url.expose().to_owned(),
        app.env.amqp.amqp_url.expose().to_owned(),
    ];
    escape_suite(&app, &worker.ops, &urls).await;
}

/// Every escape attempt against one stack. `secrets` are strings of the
/// worker's own configuration besides those derived here.
async fn escape_suite(app: &TestApp, ops: &str, secrets: &[String]) {
    let ready: Value = reqwest::get(format!("{ops}/ready"))
        .await
        .expect("worker /ready")
        .json()
        .await
        .expect("ready json");
    let sandbox = &ready["details"]["local_sandbox"];
    assert_eq!(sandbox["mode"], "bwrap", "the sandbox runs here: {ready}");
    // The suite runs against the small init the worker carries.
    assert_eq!(sandbox["starter"], "built-in", "{ready}");
    let cgroups = sandbox["limits"]
        .as_str()
        .unwrap_or("")
        .starts_with("cgroup");
    eprintln!("escape suite: sandbox {sandbox}");

    // The test database's name is as secret as DATABASE_URL itself.
    let db_name = app
        .env
        .db
        .database_url
        .expose()
        .rsplit('/')
        .next()
        .expect("database name")
        .to_owned();
    // So is the key ring that seals secrets at rest (its key part).
    let ring_key = rdev_tests::TEST_ENCRYPTION_KEYS
        .split_once(':')
        .map(|(_, k)| k.to_owned())
        .expect("id:key");
    let mut needles = vec![
        db_name,
        ring_key,
        "DATABASE_URL=".to_owned(),
        "AMQP_URL=".to_owned(),
        "RDEV_ENCRYPTION_KEYS=".to_owned(),
    ];
    needles.extend(secrets.iter().cloned());

    app.create_project("victim", json!({})).await;
    app.create_project("attacker", json!({})).await;
    app.create_project(
        "isolated",
        json!({"network": "none", "limits": {"memory_bytes": 64 << 20, "pids": 256}}),
    )
    .await;

    // Another project's files: written by the victim, looked for by the attacker.
    let victim_secret = format!("victim-secret-{}", sleep_marker());
    let c = run(app, "victim", &format!("echo {victim_secret} > secret.txt")).await;
    assert_eq!(c["status"], "succeeded", "{c}");

    runs_unprivileged(app).await;
    sees_no_worker_process_or_its_environment(app, &needles).await;
    finds_no_secret_anywhere_it_can_read(app, &needles, &victim_secret).await;
    sees_none_of_the_host(app).await;
    writes_nowhere_but_its_workdir_and_tmp(app).await;
    network_none_reaches_nothing(app).await;
    nothing_survives_exit_timeout_or_cancel(app).await;
    no_sandbox_is_shared_across_projects_or_leaves_anything(app, sandbox).await;
    a_fork_bomb_does_not_stop_other_commands(app).await;
    a_memory_hog_is_stopped_at_its_limit(app, cgroups).await;
}

async fn run(app: &TestApp, project: &str, line: &str) -> Value {
    run_with(app, project, json!({ "command": line })).await
}

async fn run_with(app: &TestApp, project: &str, body: Value) -> Value {
    let c = app.run(project, body).await;
    app.wait_terminal(c["id"].as_str().expect("id"), WAIT).await
}

async fn output(app: &TestApp, c: &Value) -> String {
    String::from_utf8_lossy(&app.output(c["id"].as_str().expect("id"), None).await).into_owned()
}

async fn runs_unprivileged(app: &TestApp) {
    let c = run(app, "attacker", "id -u; grep CapEff /proc/self/status").await;
    let out = output(app, &c).await;
    let mut lines = out.lines();
    let uid = lines.next().unwrap_or("");
    assert_ne!(uid, "0", "a command ran as root: {out}");
    assert_eq!(
        lines.next(),
        Some("CapEff:\t0000000000000000"),
        "a command holds capabilities: {out}"
    );
}

/// Runs `script` with the needles on its standard input, saved as
/// `/tmp/needles` (so they never appear in a command line the search reads).
async fn search(app: &TestApp, needles: &[String], script: &str) -> String {
    let stdin: String = needles.iter().map(|n| format!("{n}\n")).collect();
    let c = run_with(
        app,
        "attacker",
        json!({"command": format!("cat > /tmp/needles; {script}"), "stdin": stdin}),
    )
    .await;
    output(app, &c).await
}

async fn sees_no_worker_process_or_its_environment(app: &TestApp, needles: &[String]) {
    let script = "ls /proc | grep -c '^[0-9]'; \
         for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do cat $f 2>/dev/null; echo; done \
           | tr '\\0' '\\n' | grep -c -F -f /tmp/needles; \
         cat /proc/1/environ >/dev/null 2>&1 && echo READ-INIT-ENV; true";
    let out = search(app, needles, script).await;
    let lines: Vec<&str> = out.lines().collect();
    let pids: usize = lines
        .first()
        .and_then(|l| l.parse().ok())
        .expect("pid count");
    assert!(pids <= 5, "the command sees {pids} processes:\n{out}");
    assert_eq!(
        lines.get(1),
        Some(&"0"),
        "worker configuration in /proc:\n{out}"
    );
    assert!(!out.contains("READ-INIT-ENV"), "{out}");
}

async fn finds_no_secret_anywhere_it_can_read(app: &TestApp, needles: &[String], victim: &str) {
    // Everything but /usr (the host's packages, too big to read in a test)
    // and /proc (above). Each file found is printed.
    let mut all = needles.to_vec();
    all.push(victim.to_owned());
    let script = "grep -r -l -s --devices=skip -F -f /tmp/needles / \
                  --exclude-dir=proc --exclude-dir=usr --exclude-dir=sys --exclude=needles; \
                  echo searched";
    let out = search(app, &all, script).await;
    assert_eq!(out, "searched\n", "the command found secrets:\n{out}");
}

async fn sees_none_of_the_host(app: &TestApp) {
    let line = "ls -A /; echo ---; \
                for d in /root /home /srv /opt /var /run /mnt /media /var/run/secrets/kubernetes.io \
                         /workspace/../victim /sys/fs/cgroup; do \
                  ls -A $d >/dev/null 2>&1 && echo LISTED $d; \
                done; echo done";
    let c = run(app, "attacker", line).await;
    let out = output(app, &c).await;
    let (root, rest) = out.split_once("---\n").expect("two parts");
    let allowed = [
        ".rdev",
        "bin",
        "dev",
        "etc",
        "lib",
        "lib32",
        "lib64",
        "libx32",
        "proc",
        "sbin",
        "tmp",
        "usr",
        "workspace",
    ];
    for entry in root.lines() {
        assert!(allowed.contains(&entry), "`/{entry}` is visible:\n{out}");
    }
    assert_eq!(rest, "done\n", "host directories are visible:\n{out}");
}

async fn writes_nowhere_but_its_workdir_and_tmp(app: &TestApp) {
    let host_tmp_marker = format!("rdev-escape-{}", sleep_marker());
    let line = format!(
        "for p in /x /etc/x /usr/x /bin/x /dev/x /proc/x /.rdev/x /workspace/../x; do \
           touch $p 2>/dev/null && echo WROTE $p; \
         done; touch /tmp/{host_tmp_marker} /workspace/own && echo wrote-own"
    );
    let c = run(app, "attacker", &line).await;
    let out = output(app, &c).await;
    assert_eq!(out, "wrote-own\n", "{out}");
    assert!(
        !Path::new("/tmp").join(&host_tmp_marker).exists(),
        "the sandbox's /tmp is the host's"
    );
    assert!(
        app.workspace.join("attacker/own").exists(),
        "the workdir is writable"
    );
    let entries: Vec<String> = std::fs::read_dir(&app.workspace)
        .expect("workspace root")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(".rdev-probe"))
        .collect();
    for e in &entries {
        assert!(
            ["victim", "attacker", "isolated", "bomb"].contains(&e.as_str()),
            "`{e}` appeared in the workspace root: {entries:?}"
        );
    }
}

async fn network_none_reaches_nothing(app: &TestApp) {
    // PostgreSQL listens on 127.0.0.1:5432 for the tests themselves.
    let probe =
        "bash -c 'echo > /dev/tcp/127.0.0.1/5432' 2>/dev/null && echo connected || echo refused";
    let c = run(app, "attacker", probe).await;
    assert_eq!(
        output(app, &c).await,
        "connected\n",
        "control: host network"
    );
    let c = run(app, "isolated", probe).await;
    assert_eq!(
        output(app, &c).await,
        "refused\n",
        "network none reached PostgreSQL"
    );
}

async fn nothing_survives_exit_timeout_or_cancel(app: &TestApp) {
    let spawn_all = |m: &str| format!("sleep {m} & setsid sleep {m} & (setsid sleep {m} &);");

    let m = sleep_marker();
    let c = run(app, "attacker", &format!("{} echo bye", spawn_all(&m))).await;
    assert_eq!(
        (c["status"].as_str(), c["reason"].as_str()),
        (Some("succeeded"), Some("exited")),
        "{c}"
    );
    wait_no_marked(&m).await;

    let m = sleep_marker();
    let c = run_with(
        app,
        "attacker",
        json!({"command": format!("{} sleep {m}", spawn_all(&m)), "timeout_s": 1}),
    )
    .await;
    assert_eq!(c["reason"], "timed_out", "{c}");
    wait_no_marked(&m).await;

    let m = sleep_marker();
    let started = app
        .run(
            "attacker",
            json!({"command": format!("{} echo up; sleep {m}", spawn_all(&m))}),
        )
        .await;
    let id = started["id"].as_str().expect("id");
    assert_eq!(rdev_tests::first_line(app, id).await, "up");
    assert!(!marked_processes(&m).is_empty(), "control: the sleeps run");
    let r = app
        .post(&format!("/v1/commands/{id}/cancel"), json!({}))
        .await;
    assert_eq!(r.status, 202);
    let c = app.wait_terminal(id, WAIT).await;
    assert_eq!(c["reason"], "cancelled", "{c}");
    wait_no_marked(&m).await;
}

/// Where sandboxes are reused (`details.local_sandbox.reuse`), another
/// project's command never runs in the attacker's, and the attacker's next
/// commands find nothing of its first (the worker's lib tests show the
/// same on one sandbox, deterministically).
async fn no_sandbox_is_shared_across_projects_or_leaves_anything(app: &TestApp, sandbox: &Value) {
    eprintln!("escape suite: reuse {}", sandbox["reuse"]);
    let ns = "echo ns $(readlink /proc/self/ns/pid)";
    let m = sleep_marker();
    let c = run(
        app,
        "attacker",
        &format!("{ns}; setsid sleep {m} & touch /tmp/left /dev/shm/left; echo bye"),
    )
    .await;
    assert_eq!(c["status"], "succeeded", "{c}");
    let attacker = output(app, &c).await;
    let attacker = attacker.lines().next().unwrap_or_default().to_owned();
    wait_no_marked(&m).await;
    for _ in 0..3 {
        let c = run(app, "victim", ns).await;
        assert_ne!(
            output(app, &c).await.trim(),
            attacker,
            "another project's sandbox"
        );
        let c = run(
            app,
            "attacker",
            &format!("{ns}; ls -A /tmp /dev/shm | grep -c left"),
        )
        .await;
        assert_eq!(c["reason"], "exited", "{c}");
        let out = output(app, &c).await;
        assert!(
            out.ends_with("\n0\n"),
            "found what an earlier command left:\n{out}"
        );
    }
}

async fn a_fork_bomb_does_not_stop_other_commands(app: &TestApp) {
    app.create_project("bomb", json!({"limits": {"pids": 128}}))
        .await;
    let bomb = app
        .run(
            "bomb",
            json!({"command": "b() { b | b & }; b; sleep 3", "timeout_s": 20}),
        )
        .await;
    let id = bomb["id"].as_str().expect("id");
    app.wait_status(id, "running", WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = run(app, "attacker", "echo still-alive").await;
    assert_eq!(c["status"], "succeeded", "{c}");
    assert_eq!(output(app, &c).await, "still-alive\n");
    let b = app.wait_terminal(id, WAIT).await;
    eprintln!(
        "escape suite: fork bomb ended {} ({})",
        b["status"], b["reason"]
    );
    let c = run(app, "attacker", "echo after").await;
    assert_eq!(
        c["status"], "succeeded",
        "the worker runs commands after the bomb: {c}"
    );
}

async fn a_memory_hog_is_stopped_at_its_limit(app: &TestApp, cgroups: bool) {
    let c = run(
        app,
        "isolated",
        "x=$(head -c 400000000 /dev/zero | tr '\\0' a); echo survived",
    )
    .await;
    assert_eq!(c["status"], "failed", "{c}");
    assert!(!output(app, &c).await.contains("survived"), "{c}");
    if cgroups {
        assert_eq!(c["reason"], "memory_limit", "{c}");
    }
    eprintln!(
        "escape suite: memory hog ended {} ({})",
        c["status"], c["reason"]
    );
}

/// `rdev-worker` as a separate process running as `nobody`, on the app's
/// database and broker.
struct UnprivilegedWorker {
    ops: String,
    _child: tokio::process::Child,
    _dir: TempDir,
}

impl UnprivilegedWorker {
    async fn start(app: &TestApp) -> Self {
        let dir = TempDir::new();
        // Hard links (or copies) of the binaries in a directory `nobody`
        // can reach: the build directory may be under a private home.
        let built = built_binaries_dir();
        for name in ["rdev-worker", "rdev-sandbox-init"] {
            let from = built.join(name);
            assert!(
                from.is_file(),
                "{} is missing: build the worker first (cargo build -p rdev-worker)",
                from.display()
            );
            let to = dir.0.join(name);
            if std::fs::hard_link(&from, &to).is_err() {
                std::fs::copy(&from, &to).expect("copy binary");
            }
        }
        // The app's workspace root becomes this worker's, owned by nobody.
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        // Its temporary directory (where it installs the sandbox's init)
        // inside ours: the worker is killed at the end, so it cannot
        // remove what it made there, and this test leaves nothing behind.
        let tmp = dir.0.join("tmp");
        std::fs::create_dir(&tmp).expect("worker's TMPDIR");
        nix::unistd::chown(
            &tmp,
            Some(nix::unistd::Uid::from_raw(NOBODY)),
            Some(nix::unistd::Gid::from_raw(NOBODY)),
        )
        .expect("chown TMPDIR");
        nix::unistd::chown(
            &app.workspace,
            Some(nix::unistd::Uid::from_raw(NOBODY)),
            Some(nix::unistd::Gid::from_raw(NOBODY)),
        )
        .expect("chown workspace");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = rdev_tests::spawn(
            tokio::process::Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .arg(dir.0.join("rdev-worker"))
                .env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .env("TMPDIR", &tmp)
                .env("DATABASE_URL", app.env.db.database_url.expose())
                .env("AMQP_URL", app.env.amqp.amqp_url.expose())
                .env("RDEV_AMQP_PREFIX", &app.env.amqp.prefix)
                .env("RDEV_WORKSPACE_ROOT", &app.workspace)
                .env("RDEV_LISTEN", format!("127.0.0.1:{port}"))
                .env("RDEV_EXECUTORS", "local")
                .env("RDEV_ENCRYPTION_KEYS", rdev_tests::TEST_ENCRYPTION_KEYS)
                .env("RDEV_HEARTBEAT_S", "1")
                .env("RDEV_KILL_GRACE_S", "1")
                .env("RUST_LOG", "warn")
                .current_dir(&dir.0)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .kill_on_drop(true),
        )
        .expect("start the worker as nobody");
        let ops = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(r) = reqwest::get(format!("{ops}/ready")).await
                && r.status().is_success()
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the worker never became ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            ops,
            _child: child,
            _dir: dir,
        }
    }
}

/// `target/<profile>`: this test binary lives in its `deps/`.
fn built_binaries_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf()
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("rdev-escape-{}", sleep_marker()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
