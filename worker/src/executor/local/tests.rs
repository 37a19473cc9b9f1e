use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use bytes::Bytes;
use rdev_shared::containment::{Limit, LimitsConfig, NetworkMode, ResourceLimits};
use rdev_shared::db::output::MAX_CHUNK_BYTES;
use rdev_shared::domain::LocalSettings;
use rdev_shared::interactive::TtySize;
use tokio::sync::mpsc;

use super::*;
use crate::sandbox::{PtysMode, SandboxConfig, SandboxMode};
use crate::test_dir::TempDir;

fn job(spec: CommandSpec) -> Job {
    Job {
        name: format!("test-{:016x}", rand::random::<u64>()),
        spec,
        env: BTreeMap::new(),
        stdin: None,
        stdin_pipe: false,
        tty: None,
        executor: ExecutorConfig::Local(LocalSettings::default()),
        project: "proj".into(),
        timeout: Duration::from_secs(30),
        network: NetworkMode::Host,
        limits: ResourceLimits::default(),
        secrets: Default::default(),
    }
}

fn sh(line: &str) -> Job {
    job(CommandSpec::Shell(line.into()))
}

struct Ran {
    outcome: Outcome,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    max_piece: usize,
}

impl Ran {
    fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

async fn run_with(
    exec: &LocalExecutor,
    job: Job,
    capacity: usize,
    cancel: CancellationToken,
) -> Ran {
    let (tx, mut rx) = mpsc::channel::<(OutputStream, Bytes)>(capacity);
    let collect = async move {
        let (mut stdout, mut stderr, mut max_piece) = (Vec::new(), Vec::new(), 0);
        while let Some((stream, data)) = rx.recv().await {
            max_piece = max_piece.max(data.len());
            match stream {
                OutputStream::Stdout => stdout.extend_from_slice(&data),
                OutputStream::Stderr => stderr.extend_from_slice(&data),
            }
        }
        (stdout, stderr, max_piece)
    };
    // Only a bound on a hang (above every job's own timeout here): the
    // commands these tests stop would run far longer by themselves
    // (`sleep <marker>` is 1,000 s).
    let (outcome, (stdout, stderr, max_piece)) =
        tokio::time::timeout(Duration::from_secs(120), async {
            tokio::join!(exec.run(job, tx, None, cancel), collect)
        })
        .await
        .expect("the executor returns");
    Ran {
        outcome,
        stdout,
        stderr,
        max_piece,
    }
}

async fn run(exec: &LocalExecutor, job: Job) -> Ran {
    run_with(exec, job, 16, CancellationToken::new()).await
}

async fn executor_with(root: &TempDir, cfg: SandboxConfig) -> LocalExecutor {
    let ws = root.0.join("ws");
    let worker = format!("test-{:08x}", rand::random::<u32>());
    let sandbox = Sandbox::start(&cfg, LimitsConfig::default(), &worker, &ws).await;
    LocalExecutor::new(ws, Duration::from_millis(500), Arc::new(sandbox))
}

/// The default, sandboxed executor; the sandbox must work on test machines.
async fn executor(root: &TempDir) -> LocalExecutor {
    let exec = executor_with(root, SandboxConfig::default()).await;
    let status = exec.sandbox().status();
    assert_eq!(
        status.mode, "bwrap",
        "the sandbox must work here: {status:?}"
    );
    exec
}

/// A `sleep` whose command line is unique, so the host's process list
/// tells whether it survived.
fn marker() -> String {
    format!("1000.{:06}", rand::random::<u32>() % 1_000_000)
}

/// Host pids of `sleep <marker>` processes, zombies excluded.
fn survivors(marker: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .map(|st| {
                st.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if !zombie && cmdline.split(|&b| b == 0).any(|a| a == marker.as_bytes()) {
            found.push(pid);
        }
    }
    found
}

async fn gone(marker: &str) -> bool {
    for _ in 0..40 {
        if survivors(marker).is_empty() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn stdout_and_stderr_arrive_exactly() {
    let tmp = TempDir::new();
    let ran = run(
        &executor(&tmp).await,
        sh("printf 'out\\0put'; printf 'err' >&2; printf ' more'"),
    )
    .await;
    assert_eq!(ran.outcome, Outcome::Exited(0));
    assert_eq!(ran.stdout, b"out\0put more");
    assert_eq!(ran.stderr, b"err");
}

#[tokio::test]
async fn exit_codes_and_signals_are_reported() {
    let tmp = TempDir::new();
    let exec = executor(&tmp).await;
    assert_eq!(run(&exec, sh("true")).await.outcome, Outcome::Exited(0));
    assert_eq!(run(&exec, sh("exit 3")).await.outcome, Outcome::Exited(3));
    assert_eq!(
        run(&exec, sh("exit 137")).await.outcome,
        Outcome::Exited(137)
    );
    assert_eq!(
        run(&exec, sh("kill -9 $$")).await.outcome,
        Outcome::Signaled(9)
    );
    let argv = job(CommandSpec::Argv(vec![
        "sh".into(),
        "-c".into(),
        "exit 4".into(),
    ]));
    assert_eq!(run(&exec, argv).await.outcome, Outcome::Exited(4));
}

/// The executors of both inits: the small one the worker carries (the
/// default) and `rdev-sandbox-init`, which it falls back to, named.
async fn executors_of_both_inits(tmp: &TempDir) -> [(&'static str, LocalExecutor); 2] {
    let init = crate::sandbox::init::locate(None).expect("rdev-sandbox-init is built");
    let std_init = executor_with(
        tmp,
        SandboxConfig {
            init: Some(init),
            ..SandboxConfig::default()
        },
    )
    .await;
    let status = std_init.sandbox().status();
    assert_eq!(status.mode, "bwrap", "{status:?}");
    assert_eq!(status.starter, Some("rdev-sandbox-init"), "{status:?}");
    let small = executor(tmp).await;
    let status = small.sandbox().status();
    assert_eq!(status.starter, Some("built-in"), "{status:?}");
    [("built-in", small), ("rdev-sandbox-init", std_init)]
}

/// Both inits report alike: exit codes, signals, a program that cannot
/// run, standard error apart, a warm sandbox's command with its own
/// environment, and nothing left behind when the main process ends.
#[tokio::test]
async fn both_inits_run_a_command_alike() {
    let tmp = TempDir::new();
    for (name, exec) in executors_of_both_inits(&tmp).await {
        assert_eq!(
            run(&exec, sh("exit 3")).await.outcome,
            Outcome::Exited(3),
            "{name}"
        );
        assert_eq!(
            run(&exec, sh("kill -9 $$")).await.outcome,
            Outcome::Signaled(9),
            "{name}"
        );
        fails_naming_the_missing_program(&exec).await;
        let mut j = sh("printf out; printf err >&2; printf \"$ONLY_HERE\"");
        j.env = BTreeMap::from([("ONLY_HERE".into(), format!(" {name}"))]);
        // Twice: the second runs in the sandbox made after the first.
        for _ in 0..2 {
            let ran = run(&exec, j.clone()).await;
            assert_eq!(ran.outcome, Outcome::Exited(0), "{name}");
            assert_eq!(ran.stdout, format!("out {name}").as_bytes(), "{name}");
            assert_eq!(ran.stderr, b"err", "{name}");
        }
        let m = marker();
        let ran = run(&exec, sh(&format!("setsid sleep {m} & echo started"))).await;
        assert_eq!(ran.outcome, Outcome::Exited(0), "{name}");
        assert!(gone(&m).await, "{name}: survived: {:?}", survivors(&m));
    }
}

/// Runs a program that does not exist: it fails to start, named.
async fn fails_naming_the_missing_program(exec: &LocalExecutor) {
    let ran = run(
        exec,
        job(CommandSpec::Argv(vec!["no-such-program-rdev".into()])),
    )
    .await;
    assert!(
        matches!(&ran.outcome, Outcome::FailedToStart(m) if m.contains("no-such-program-rdev")),
        "{:?}",
        ran.outcome
    );
}

#[tokio::test]
async fn missing_program_fails_to_start() {
    let tmp = TempDir::new();
    let exec = executor(&tmp).await;
    fails_naming_the_missing_program(&exec).await;
    let ran = run(&exec, job(CommandSpec::Argv(vec![]))).await;
    assert_eq!(ran.outcome, Outcome::FailedToStart("empty argv".into()));
}

#[tokio::test]
async fn timeout_kills_every_process_of_the_command() {
    let tmp = TempDir::new();
    let m = marker();
    let mut j = sh(&format!("sleep {m} & setsid sleep {m} & sleep {m}"));
    j.timeout = Duration::from_secs(1);
    let ran = run(&executor(&tmp).await, j).await;
    // The sleeps would outlive the test: gone means the timeout killed them.
    assert_eq!(ran.outcome, Outcome::TimedOut);
    assert!(
        gone(&m).await,
        "processes survived the timeout: {:?}",
        survivors(&m)
    );
}

#[tokio::test]
async fn term_is_followed_by_kill_after_the_grace_period() {
    let tmp = TempDir::new();
    let m = marker();
    // The ignored SIGTERM is inherited by `sleep`: only SIGKILL ends them.
    let mut j = sh(&format!("trap '' TERM; sleep {m} & sleep {m}"));
    j.timeout = Duration::from_millis(300);
    let started = Instant::now();
    let ran = run(&executor(&tmp).await, j).await;
    assert_eq!(ran.outcome, Outcome::TimedOut);
    // The grace period was honoured (a lower bound: load cannot break it);
    // that SIGKILL came after it is what `gone` shows.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(750), "took {took:?}");
    assert!(gone(&m).await, "survived SIGKILL: {:?}", survivors(&m));
}

#[tokio::test]
async fn cancel_stops_the_command() {
    let tmp = TempDir::new();
    let exec = executor(&tmp).await;
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        trigger.cancel();
    });
    let m = marker();
    let ran = run_with(
        &exec,
        sh(&format!("setsid sleep {m} & sleep {m}")),
        16,
        cancel,
    )
    .await;
    assert_eq!(ran.outcome, Outcome::Cancelled);
    assert!(gone(&m).await, "survived the cancel: {:?}", survivors(&m));
}

#[tokio::test]
async fn background_processes_end_with_the_main_process() {
    let tmp = TempDir::new();
    let m = marker();
    let line = format!("sleep {m} & setsid sleep {m} & (sleep {m} &) ; echo started");
    // The run ends with the main process (within `run`'s bound on a hang),
    // not with the background sleeps, which would take 1,000 s.
    let ran = run(&executor(&tmp).await, sh(&line)).await;
    assert_eq!(ran.outcome, Outcome::Exited(0));
    assert_eq!(ran.stdout, b"started\n");
    assert!(
        gone(&m).await,
        "background processes survived: {:?}",
        survivors(&m)
    );
}

#[tokio::test]
async fn environment_is_built_from_scratch() {
    let tmp = TempDir::new();
    let mut j = sh("env");
    j.env = BTreeMap::from([
        ("FOO".into(), "bar".into()),
        ("PROJECT_VAR".into(), "x y".into()),
    ]);
    let ran = run(&executor(&tmp).await, j).await;
    assert_eq!(ran.outcome, Outcome::Exited(0));
    let text = ran.out();
    let vars: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let allowed: BTreeSet<&str> = [
        "PATH",
        "HOME",
        "LANG",
        "PWD",
        "SHLVL",
        "_",
        "OLDPWD",
        "FOO",
        "PROJECT_VAR",
    ]
    .into();
    for name in vars.keys() {
        assert!(
            allowed.contains(name),
            "unexpected variable {name} in the command's env"
        );
    }
    assert_eq!(vars.get("PATH"), Some(&PATH));
    assert_eq!(vars.get("LANG"), Some(&"C.UTF-8"));
    assert_eq!(vars.get("FOO"), Some(&"bar"));
    assert_eq!(vars.get("PROJECT_VAR"), Some(&"x y"));
    assert_eq!(vars.get("HOME"), Some(&"/workspace"));
}

#[tokio::test]
async fn command_runs_in_its_workdir() {
    let tmp = TempDir::new();
    let mut j = sh("pwd; touch made-here");
    j.executor = ExecutorConfig::Local(LocalSettings {
        workdir: Some("a/b".into()),
    });
    let ran = run(&executor(&tmp).await, j).await;
    assert_eq!(ran.outcome, Outcome::Exited(0));
    assert_eq!(ran.out(), "/workspace\n");
    assert!(tmp.0.join("ws/a/b/made-here").exists());
}

#[test]
fn an_existing_workdir_resolves_as_the_slow_path_does() {
    let tmp = TempDir::new();
    // The root itself reached through a symlink: the result is canonical.
    std::fs::create_dir_all(tmp.0.join("real-ws/a/b")).expect("dirs");
    std::os::unix::fs::symlink(tmp.0.join("real-ws"), tmp.0.join("ws")).expect("root link");
    let root = tmp.0.join("ws");
    let canonical = std::fs::canonicalize(tmp.0.join("real-ws/a/b")).expect("canonical");
    assert_eq!(existing_workdir(&root, "a/b"), Some(canonical.clone()));
    assert_eq!(workdir_in(&root, "a/b"), Ok(canonical));
    // Missing: the slow path creates it.
    assert_eq!(existing_workdir(&root, "c"), None);
    let made = workdir_in(&root, "c").expect("created");
    assert!(made.is_dir() && made.ends_with("real-ws/c"));
    // A symlink that stays inside the root: not the fast path's, still
    // accepted by the slow one, resolved.
    std::os::unix::fs::symlink(tmp.0.join("real-ws/a"), tmp.0.join("real-ws/link")).expect("link");
    assert_eq!(existing_workdir(&root, "link/b"), None);
    assert_eq!(
        workdir_in(&root, "link/b"),
        Ok(std::fs::canonicalize(tmp.0.join("real-ws/a/b")).expect("canonical"))
    );
    // A file is not a workdir.
    std::fs::write(tmp.0.join("real-ws/file"), b"").expect("file");
    assert_eq!(existing_workdir(&root, "file"), None);
}

#[test]
fn a_workspace_root_that_is_gone_is_not_made_again() {
    let tmp = TempDir::new();
    let root = tmp.0.join("ws");
    let err = workdir_in(&root, "p").expect_err("no root");
    assert!(err.contains("workspace root"), "{err}");
    assert!(!root.exists(), "the root was made again");
}

#[tokio::test]
async fn a_workdir_already_given_to_the_command_user_is_not_rewritten() {
    use std::os::unix::fs::MetadataExt;
    let tmp = TempDir::new();
    let exec = executor(&tmp).await;
    let in_w = || {
        let mut j = sh("true");
        j.executor = ExecutorConfig::Local(LocalSettings {
            workdir: Some("w".into()),
        });
        j
    };
    assert_eq!(run(&exec, in_w()).await.outcome, Outcome::Exited(0));
    let changed = || {
        let m = std::fs::metadata(tmp.0.join("ws/w")).expect("workdir");
        (m.ctime(), m.ctime_nsec(), m.uid())
    };
    let before = changed();
    assert_eq!(run(&exec, in_w()).await.outcome, Outcome::Exited(0));
    // `chown` to the same owner would still have set the change time.
    assert_eq!(changed(), before);
}

#[tokio::test]
async fn symlink_out_of_the_workspace_is_refused() {
    let tmp = TempDir::new();
    let outside = tmp.0.join("outside");
    std::fs::create_dir_all(&outside).expect("outside dir");
    std::fs::create_dir_all(tmp.0.join("ws")).expect("root");
    std::os::unix::fs::symlink(&outside, tmp.0.join("ws/evil")).expect("symlink");
    let exec = executor(&tmp).await;
    for dir in ["evil", "evil/sub"] {
        let mut j = sh("touch pwned");
        j.executor = ExecutorConfig::Local(LocalSettings {
            workdir: Some(dir.into()),
        });
        let ran = run(&exec, j).await;
        assert_eq!(
            ran.outcome,
            Outcome::FailedToStart(ESCAPE_ERROR.into()),
            "{dir}"
        );
    }
    assert!(
        !outside.join("sub").exists(),
        "nothing is created through the symlink"
    );
    assert!(!outside.join("pwned").exists());
    let mut j = sh("true");
    j.executor = ExecutorConfig::Local(LocalSettings {
        workdir: Some("../x".into()),
    });
    assert!(matches!(
        run(&exec, j).await.outcome,
        Outcome::FailedToStart(_)
    ));
}

#[tokio::test]
async fn stdin_is_delivered_and_closed() {
    let tmp = TempDir::new();
    let exec = executor(&tmp).await;
    let mut j = sh("cat; echo done");
    j.stdin = Some(b"hello\nworld\n".to_vec());
    let ran = run(&exec, j).await;
    assert_eq!(ran.outcome, Outcome::Exited(0));
    assert_eq!(ran.stdout, b"hello\nworld\ndone\n");
    // Without stdin the command reads /dev/null and does not hang.
    let ran = run(&exec, sh("cat; echo eof")).await;
    assert_eq!(ran.stdout, b"eof\n");
}

#[tokio::test]
async fn large_output_flows_through_a_small_channel() {
    let tmp = TempDir::new();
    let five_mb = 5 * 1024 * 1024;
    let j = sh(&format!(
        "head -c {five_mb} /dev/zero; head -c 1000 /dev/zero >&2"
    ));
    let ran = run_with(&executor(&tmp).await, j, 1, CancellationToken::new()).await;
    assert_eq!(ran.outcome, Outcome::Exited(0));
    assert_eq!(ran.stdout.len(), five_mb);
    assert_eq!(ran.stderr.len(), 1000);
    assert!(ran.max_piece <= MAX_CHUNK_BYTES);
}

#[tokio::test]
async fn the_command_sees_nothing_of_the_worker_or_the_host() {
    let tmp = TempDir::new();
    std::fs::create_dir_all(tmp.0.join("ws/other-project")).expect("other workdir");
    std::fs::write(tmp.0.join("ws/other-project/secret"), "x").expect("secret");
    let exec = executor(&tmp).await;
    let script = "\
        id -u; \
        ls /proc | grep -c '^[0-9]'; \
        ls /; \
        ls /root /home 2>/dev/null && echo SAW-HOME; \
        cat /proc/1/environ 2>/dev/null && echo SAW-INIT-ENV; \
        touch /etc/x /usr/x /x 2>/dev/null && echo WROTE-SYSTEM; \
        ls /tmp | wc -l; touch /tmp/ok && echo tmp-ok; \
        cat /etc/shadow 2>/dev/null && echo SAW-SHADOW; \
        ls -A /etc/ssl/private 2>/dev/null | grep -q . && echo SAW-SSL-PRIVATE; \
        ls ../other-project /workspace/../other-project 2>/dev/null && echo SAW-OTHER; \
        echo done";
    let ran = run(&exec, sh(script)).await;
    assert_eq!(
        ran.outcome,
        Outcome::Exited(0),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let out = ran.out();
    let lines: Vec<&str> = out.lines().collect();
    assert_ne!(lines[0], "0", "runs as root");
    let pids: usize = lines[1].parse().expect("pid count");
    assert!(pids <= 6, "sees {pids} processes");
    for word in [
        "SAW-HOME",
        "SAW-INIT-ENV",
        "WROTE-SYSTEM",
        "SAW-SHADOW",
        "SAW-SSL-PRIVATE",
        "SAW-OTHER",
        "root",
        "home",
        "srv",
    ] {
        assert!(!lines.contains(&word), "{word} in:\n{out}");
    }
    assert!(out.contains("\n0\ntmp-ok\n"), "private empty /tmp:\n{out}");
    assert!(out.ends_with("done\n"));
}

/// What a command's `/dev` holds, as a shell sees it: the devices, the
/// links, whether it is read-only, a private `/dev/shm`, and whether
/// pseudo-terminals can be opened (`PTMX`; `OPENPTY` where the host has a
/// Python to try it with).
const DEV_PROBE: &str = "\
    for d in null zero full random urandom tty; do [ -c /dev/$d ] || echo MISSING-$d; done; \
    echo x > /dev/null && head -c 3 /dev/zero | wc -c && head -c 5 /dev/urandom | wc -c; \
    (echo x > /dev/full) 2>/dev/null && echo WROTE-FULL; \
    readlink /dev/fd /dev/stdin /dev/stdout /dev/stderr; \
    touch /dev/x 2>/dev/null && echo WROTE-DEV; \
    echo shm > /dev/shm/s && cat /dev/shm/s; \
    [ -c /dev/ptmx ] && echo PTMX; \
    [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import os; os.openpty(); print(\"OPENPTY\")' 2>/dev/null; \
    echo done";

/// A command without a terminal binds the `/dev` the worker prepared:
/// the devices bwrap's `--dev` gives work, `/dev` is read-only, `/dev/shm`
/// is its own, and no pseudo-terminal can be opened; one with a terminal
/// (or any, with `RDEV_SANDBOX_PTYS=always`) gets bwrap's `/dev` with a
/// devpts of its own. Nothing a command does reaches the prepared copy.
#[tokio::test]
async fn dev_is_prepared_and_pseudo_terminals_come_with_a_terminal() {
    let tmp = TempDir::new();
    let exec = executor(&tmp).await;
    let status = exec.sandbox().status();
    // Tests run as root on a filesystem that honours device nodes.
    assert_eq!(status.dev.as_deref(), Some("prepared"), "{status:?}");
    let python = Path::new("/usr/bin/python3").exists();
    for round in 0..2 {
        // The second runs in the warm sandbox made after the first.
        let ran = run(&exec, sh(DEV_PROBE)).await;
        assert_eq!(
            ran.outcome,
            Outcome::Exited(0),
            "{}",
            String::from_utf8_lossy(&ran.stderr)
        );
        assert_eq!(
            ran.out(),
            "3\n5\n/proc/self/fd\n/proc/self/fd/0\n/proc/self/fd/1\n/proc/self/fd/2\nshm\ndone\n",
            "round {round}"
        );
    }
    let mut with_tty = sh(DEV_PROBE);
    with_tty.tty = Some(TtySize { cols: 80, rows: 24 });
    let ran = run(&exec, with_tty).await;
    assert_eq!(ran.outcome, Outcome::Exited(0));
    let out = ran.out().replace('\r', "");
    assert!(out.contains("\nPTMX\n"), "{out}");
    assert!(!python || out.contains("\nOPENPTY\n"), "{out}");
    assert!(!out.contains("MISSING") && !out.contains("WROTE"), "{out}");
    // The other sandboxes' /dev is as it was.
    let ran = run(&exec, sh("ls -A /dev/shm; ls /dev | wc -l")).await;
    assert_eq!(ran.out(), "11\n", "{}", ran.out());

    let always = executor_with(
        &tmp,
        SandboxConfig {
            ptys: PtysMode::Always,
            ..SandboxConfig::default()
        },
    )
    .await;
    let status = always.sandbox().status();
    assert_eq!(
        status.dev.as_deref(),
        Some("bwrap (RDEV_SANDBOX_PTYS=always)")
    );
    let out = run(&always, sh(DEV_PROBE)).await.out();
    assert!(out.contains("\nPTMX\n"), "{out}");
    assert!(!python || out.contains("\nOPENPTY\n"), "{out}");
    assert!(!out.contains("MISSING") && !out.contains("WROTE"), "{out}");
}

#[tokio::test]
async fn network_none_reaches_nothing() {
    let tmp = TempDir::new();
    let exec = executor(&tmp).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = listener.local_addr().expect("addr").port();
    let probe = format!(
        "bash -c 'echo > /dev/tcp/127.0.0.1/{port}' 2>/dev/null && echo connected || echo refused"
    );
    let ran = run(&exec, sh(&probe)).await;
    assert_eq!(ran.out(), "connected\n", "host network by default");
    let mut j = sh(&probe);
    j.network = NetworkMode::None;
    let ran = run(&exec, j).await;
    assert_eq!(ran.out(), "refused\n", "network none");
}

/// Waits (a bound on a hang, not a timing) until a warm sandbox is ready.
async fn warm_ready(exec: &LocalExecutor) {
    for _ in 0..1000 {
        if exec.sandbox().warm_ready() > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no warm sandbox was made within 10 s");
}

/// Counts the executor's warm sandbox hits and misses.
fn warm_counters(exec: &LocalExecutor) -> (prometheus::IntCounter, prometheus::IntCounter) {
    let hits = prometheus::IntCounter::new("hits", "hits").expect("counter");
    let misses = prometheus::IntCounter::new("misses", "misses").expect("counter");
    exec.sandbox()
        .set_warm_counters(hits.clone(), misses.clone());
    (hits, misses)
}

/// An executor whose project ran `first` (which must succeed) and now has
/// a warm sandbox ready, with its hit and miss counters.
async fn warmed(
    tmp: &TempDir,
    first: &str,
) -> (
    LocalExecutor,
    prometheus::IntCounter,
    prometheus::IntCounter,
) {
    let exec = executor(tmp).await;
    let (hits, misses) = warm_counters(&exec);
    assert_eq!(run(&exec, sh(first)).await.outcome, Outcome::Exited(0));
    warm_ready(&exec).await;
    (exec, hits, misses)
}

/// A project's next command runs in a sandbox made ahead of it, and sees
/// exactly what a sandbox made for it shows: its own arguments,
/// environment, input, directory, pid and exit code, and an empty /tmp
/// (a command with piped input gets a sandbox of its own).
#[tokio::test]
async fn the_next_command_runs_in_a_warm_sandbox_as_in_a_new_one() {
    let tmp = TempDir::new();
    let exec = executor(&tmp).await;
    let (hits, misses) = warm_counters(&exec);
    // `fds` lists the descriptors `ls` has open: the command's three and
    // the directory `ls` reads. Nothing of the worker's (the workdir it
    // holds open for a warm sandbox, its sockets) reaches the command.
    let mut j = sh(
        "echo $$; env | sort; pwd; ls -A /tmp | wc -l; touch /tmp/left; \
         echo fds $(ls /proc/self/fd); cat; exit 7",
    );
    j.env = BTreeMap::from([
        ("FOO".into(), "bar baz".into()),
        ("EMPTY".into(), String::new()),
        ("EQ".into(), "a=b".into()),
    ]);
    j.stdin = Some(b"input\n".to_vec());
    let cold = run(&exec, j.clone()).await;
    assert_eq!((hits.get(), misses.get()), (0, 1), "the first one is cold");
    assert_eq!(cold.outcome, Outcome::Exited(7));
    warm_ready(&exec).await;
    let warm = run(&exec, j.clone()).await;
    assert_eq!((hits.get(), misses.get()), (1, 1), "the second one is warm");
    assert_eq!(warm.outcome, Outcome::Exited(7));
    assert_eq!(warm.out(), cold.out());
    assert_eq!(warm.stderr, cold.stderr);
    let out = warm.out();
    for line in [
        "2",
        "FOO=bar baz",
        "EMPTY=",
        "EQ=a=b",
        "/workspace",
        "0",
        "fds 0 1 2 3",
        "input",
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "{line:?} missing in:\n{out}"
        );
    }
    // Another network mode is another sandbox: cold.
    warm_ready(&exec).await;
    j.network = NetworkMode::None;
    assert_eq!(run(&exec, j).await.outcome, Outcome::Exited(7));
    assert_eq!((hits.get(), misses.get()), (1, 2));
}

/// The pid namespace a command ran in (`pidns:[N]`), from its output's
/// line after `ns `.
fn namespace_of(ran: &Ran) -> String {
    ran.out()
        .lines()
        .find_map(|l| l.strip_prefix("ns "))
        .unwrap_or_else(|| panic!("no namespace in {:?}", ran.out()))
        .to_owned()
}

/// A sandbox serves its workdir's commands one after another (it is
/// reused), and a command in it finds nothing of the one before: no
/// process (not even one in a session of its own), nothing in `/tmp` or
/// `/dev/shm`, not its environment; its own streams and exit code. A
/// command that left a System V IPC object, or was stopped, ends its
/// sandbox: the next command gets a new one.
#[tokio::test]
async fn a_sandbox_serves_the_next_commands_and_they_find_nothing_left() {
    let tmp = TempDir::new();
    let exec = executor(&tmp).await;
    assert_eq!(
        exec.sandbox().status().reuse.as_deref(),
        Some("on"),
        "the built-in init serves here"
    );
    let (hits, _) = warm_counters(&exec);
    let ns = "echo ns $(readlink /proc/self/ns/pid)";
    let m = marker();
    // Links to a host directory, for a cleaner that would follow them.
    let canary = tmp.0.join("canary");
    std::fs::create_dir(&canary).expect("canary dir");
    std::fs::write(canary.join("keep"), "").expect("canary file");
    let c = canary.display();
    let mut first = sh(&format!(
        "{ns}; sleep {m} & echo $! > pids; setsid sleep {m} & echo $! >> pids; \\
         mkdir -p /tmp/d/e; touch /tmp/d/e/f /tmp/.h /dev/shm/left; ln -s {c} /tmp/host; \\
         ln -s {c} /tmp/d/host; chmod 0 /tmp/d; echo err >&2; exit 4"
    ));
    first.env = BTreeMap::from([("ONLY_FIRST".into(), "1".into())]);
    let ran = run(&exec, first).await;
    assert_eq!(ran.outcome, Outcome::Exited(4));
    assert_eq!(ran.stderr, b"err\n");
    let sandbox = namespace_of(&ran);
    assert!(gone(&m).await, "survived its command: {:?}", survivors(&m));

    warm_ready(&exec).await;
    let probe = format!(
        "{ns}; echo tmp $(ls -A /tmp /dev/shm | grep -v : | wc -w); \
         echo env ${{ONLY_FIRST-unset}}; for p in $(cat pids); do \\
         [ -e /proc/$p ] && echo alive $p; done; echo pids $(wc -l < pids); exit 5"
    );
    let ran = run(&exec, sh(&probe)).await;
    assert_eq!(ran.outcome, Outcome::Exited(5));
    assert_eq!(namespace_of(&ran), sandbox, "the same sandbox");
    assert_eq!(hits.get(), 1);
    let out = ran.out();
    assert!(!out.contains("alive"), "{out}");
    for line in ["tmp 0", "env unset", "pids 2"] {
        assert!(
            out.lines().any(|l| l == line),
            "{line:?} missing in:\n{out}{}",
            String::from_utf8_lossy(&ran.stderr)
        );
    }
    assert!(
        canary.join("keep").exists(),
        "a link in /tmp was followed out of the sandbox"
    );

    // A System V object would outlive its command in the sandbox's IPC
    // namespace: that sandbox is not used again.
    warm_ready(&exec).await;
    let ran = run(&exec, sh(&format!("{ns}; ipcmk -M 4096 >/dev/null"))).await;
    assert_eq!(
        ran.outcome,
        Outcome::Exited(0),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    assert_eq!(namespace_of(&ran), sandbox);
    let ran = run(&exec, sh(&format!("{ns}; ipcs -m | grep -c 0x"))).await;
    let next = namespace_of(&ran);
    assert_ne!(next, sandbox, "a new sandbox after the IPC object");
    assert_eq!(ran.outcome, Outcome::Exited(1), "no segment: {}", ran.out());

    // A stopped command's sandbox goes with it.
    warm_ready(&exec).await;
    let mut slow = sh(&format!("{ns}; sleep {m}"));
    slow.timeout = Duration::from_millis(300);
    let ran = run(&exec, slow).await;
    assert_eq!(ran.outcome, Outcome::TimedOut);
    let stopped = namespace_of(&ran);
    // (The pool may hold more than one sandbox of the workdir by now.)
    for _ in 0..3 {
        let ran = run(&exec, sh(ns)).await;
        assert_ne!(
            namespace_of(&ran),
            stopped,
            "the stopped command's sandbox ran another"
        );
        warm_ready(&exec).await;
    }
}

/// Adds (`add`) or looks for (`find`) a key in the session and user key
/// rings, with Python's `ctypes` (no `keyctl` program on test machines).
fn key_ring_script(what: &str) -> String {
    let py = r#"
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
for ring, name in ((-3, b"session"), (-4, b"user")):
    if sys.argv[1] == "add":
        r = libc.syscall(248, b"user", b"rdev-" + name, b"left", 4, ring)
        print("added" if r > 0 else "refused", name.decode())
    else:
        r = libc.syscall(250, 10, ring, b"user", b"rdev-" + name, 0)
        print("found" if r > 0 else "none", name.decode())
"#;
    format!("/usr/bin/python3 -c '{py}' {what}")
}

/// A key a command leaves in its key rings reaches no later command: not
/// the next one in the same (reused) sandbox, not another project's, even
/// where the worker has a session key ring of its own (a service's, a
/// container's) that every sandbox inherits. With either init.
#[tokio::test]
async fn commands_share_no_key_ring() {
    // As systemd or a container runtime would give the worker.
    // SAFETY: KEYCTL_JOIN_SESSION_KEYRING with a NUL-terminated name.
    let joined =
        unsafe { nix::libc::syscall(nix::libc::SYS_keyctl, 1, c"rdev-test-worker".as_ptr()) };
    assert!(joined > 0, "{}", std::io::Error::last_os_error());
    let tmp = TempDir::new();
    for (name, exec) in executors_of_both_inits(&tmp).await {
        let ran = run(&exec, sh(&key_ring_script("add"))).await;
        assert_eq!(
            ran.out(),
            "added session\nadded user\n",
            "{name}: {:?}",
            ran.stderr
        );
        warm_ready(&exec).await;
        let mut other = sh(&key_ring_script("find"));
        other.project = "other".into();
        for j in [sh(&key_ring_script("find")), other] {
            let ran = run(&exec, j).await;
            assert_eq!(
                ran.out(),
                "none session\nnone user\n",
                "{name}: {:?}",
                ran.stderr
            );
        }
    }
}

/// With `RDEV_SANDBOX_REUSE=off` every command gets a sandbox of its own.
#[tokio::test]
async fn reuse_can_be_turned_off() {
    let tmp = TempDir::new();
    let exec = executor_with(
        &tmp,
        SandboxConfig {
            reuse: crate::sandbox::ReuseMode::Off,
            ..SandboxConfig::default()
        },
    )
    .await;
    assert_eq!(
        exec.sandbox().status().reuse.as_deref(),
        Some("off (RDEV_SANDBOX_REUSE=off)")
    );
    let ns = "readlink /proc/self/ns/pid; touch /tmp/left";
    let mut seen = BTreeSet::new();
    for _ in 0..3 {
        let ran = run(&exec, sh(&format!("{ns}; ls /tmp"))).await;
        assert_eq!(ran.outcome, Outcome::Exited(0));
        assert!(seen.insert(ran.out()), "a sandbox ran two commands");
        warm_ready(&exec).await;
    }
}

/// A descriptor the worker inherited without close-on-exec (a
/// supervisor's pipe, say) does not reach a command, in a new sandbox or
/// a warm one: the command has its three standard streams only.
#[tokio::test]
async fn a_command_gets_no_descriptor_the_worker_inherited() {
    let tmp = TempDir::new();
    let exec = executor(&tmp).await;
    // Left open across exec on purpose, as a careless parent would.
    let (leak_r, leak_w) = nix::unistd::pipe().expect("pipe");
    let probe = "echo $(ls /proc/self/fd)";
    let cold = run(&exec, sh(probe)).await;
    warm_ready(&exec).await;
    let warm = run(&exec, sh(probe)).await;
    drop((leak_r, leak_w));
    for ran in [cold, warm] {
        assert_eq!(ran.outcome, Outcome::Exited(0));
        // 3: the directory `ls` reads.
        assert_eq!(ran.out(), "0 1 2 3\n");
    }
}

/// A workdir removed and made again (a project deleted and created anew)
/// is another directory: the sandbox made for the old one is not used.
#[tokio::test]
async fn a_workdir_made_again_gets_a_new_sandbox() {
    let tmp = TempDir::new();
    let (exec, hits, misses) = warmed(&tmp, "touch old").await;
    let dir = tmp.0.join("ws/proj");
    std::fs::remove_dir_all(&dir).expect("remove the workdir");
    std::fs::create_dir(&dir).expect("make it again");
    std::fs::write(dir.join("new"), "").expect("a file");
    let ran = run(&exec, sh("ls")).await;
    assert_eq!(ran.outcome, Outcome::Exited(0));
    assert_eq!(ran.out(), "new\n", "the new workdir");
    assert_eq!((hits.get(), misses.get()), (0, 2));
}

/// A warm sandbox ends its command as a new one does: a program that is
/// not there, a signal, a cancel right after the start (the init holds it
/// until the command runs) and every process it left.
#[tokio::test]
async fn warm_sandboxes_fail_signal_and_stop_like_new_ones() {
    let tmp = TempDir::new();
    let (exec, hits, _) = warmed(&tmp, "true").await;
    fails_naming_the_missing_program(&exec).await;
    warm_ready(&exec).await;
    assert_eq!(
        run(&exec, sh("kill -9 $$")).await.outcome,
        Outcome::Signaled(9)
    );
    warm_ready(&exec).await;
    let m = marker();
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::task::yield_now().await;
        trigger.cancel();
    });
    let ran = run_with(
        &exec,
        sh(&format!("setsid sleep {m} & sleep {m}")),
        16,
        cancel,
    )
    .await;
    assert_eq!(ran.outcome, Outcome::Cancelled);
    assert!(gone(&m).await, "survived the cancel: {:?}", survivors(&m));
    assert_eq!(hits.get(), 3);
}

/// A warm sandbox nobody takes within the TTL is discarded; with
/// `RDEV_SANDBOX_WARM=0` none is made.
#[tokio::test]
async fn warm_sandboxes_expire_and_can_be_turned_off() {
    let tmp = TempDir::new();
    // Long enough for the next sandbox to be made within it on a loaded
    // machine: one made later than its TTL is discarded as it is put in
    // the pool (a CI run had none ready after 10 s with 100 ms).
    let cfg = SandboxConfig {
        warm_ttl: Duration::from_secs(1),
        ..SandboxConfig::default()
    };
    let exec = executor_with(&tmp, cfg).await;
    assert_eq!(run(&exec, sh("true")).await.outcome, Outcome::Exited(0));
    warm_ready(&exec).await;
    // The sweep runs every second at the least (a bound on a hang).
    for _ in 0..1000 {
        if exec.sandbox().warm_ready() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(exec.sandbox().warm_ready(), 0, "expired");

    let off = executor_with(
        &tmp,
        SandboxConfig {
            warm: Some(0),
            ..SandboxConfig::default()
        },
    )
    .await;
    let (hits, misses) = warm_counters(&off);
    for _ in 0..2 {
        assert_eq!(run(&off, sh("true")).await.outcome, Outcome::Exited(0));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(off.sandbox().warm_ready(), 0);
    assert_eq!((hits.get(), misses.get()), (0, 0), "not even looked for");
}

#[tokio::test]
async fn limits_end_commands_with_a_reason() {
    let tmp = TempDir::new();
    let exec = executor(&tmp).await;
    let limits = exec.sandbox().status().limits;
    let cgroups = limits.starts_with("cgroup");

    let mut hog = sh("x=$(head -c 400000000 /dev/zero | tr '\\0' a); echo survived");
    hog.limits.memory_bytes = Some(64 << 20);
    let ran = run(&exec, hog).await;
    if cgroups {
        assert!(
            matches!(
                ran.outcome,
                Outcome::Limit {
                    limit: Limit::Memory,
                    ..
                }
            ),
            "{:?}",
            ran.outcome
        );
    } else {
        assert!(
            !matches!(ran.outcome, Outcome::Exited(0)),
            "{:?}",
            ran.outcome
        );
    }

    let mut bomb = sh("i=0; while [ $i -lt 200 ]; do sleep 5 & i=$((i+1)); done; echo survived");
    bomb.limits.pids = Some(32);
    bomb.timeout = Duration::from_secs(20);
    let ran = run(&exec, bomb).await;
    assert!(!ran.out().contains("survived"), "{}", ran.out());
    if cgroups {
        assert!(
            matches!(
                ran.outcome,
                Outcome::Limit {
                    limit: Limit::Pids,
                    ..
                }
            ),
            "{:?}",
            ran.outcome
        );
    }

    let mut spin = sh("while :; do :; done");
    spin.limits.cpu_s = Some(1);
    spin.timeout = Duration::from_secs(60);
    let ran = run(&exec, spin).await;
    assert!(
        matches!(
            ran.outcome,
            Outcome::Limit {
                limit: Limit::Cpu,
                ..
            }
        ),
        "{:?}",
        ran.outcome
    );

    let mut big = job(CommandSpec::Argv(
        ["dd", "if=/dev/zero", "of=big", "bs=1M", "count=4"]
            .map(String::from)
            .to_vec(),
    ));
    big.limits.file_size_bytes = Some(1 << 20);
    let ran = run(&exec, big).await;
    assert!(
        matches!(
            ran.outcome,
            Outcome::Limit {
                limit: Limit::FileSize,
                ..
            }
        ),
        "{:?}",
        ran.outcome
    );
}

#[tokio::test]
async fn without_a_working_sandbox_local_commands_are_refused() {
    let tmp = TempDir::new();
    let cfg = SandboxConfig {
        bwrap: PathBuf::from("/nonexistent/bwrap"),
        ..SandboxConfig::default()
    };
    let exec = executor_with(&tmp, cfg).await;
    let status = exec.sandbox().status();
    assert_eq!(status.mode, "unavailable");
    let ran = run(&exec, sh("echo should-not-run")).await;
    assert!(
        matches!(ran.outcome, Outcome::SandboxUnavailable(_)),
        "{:?}",
        ran.outcome
    );
    assert!(ran.stdout.is_empty());
}

#[tokio::test]
async fn sandbox_off_runs_plain_processes_still_unprivileged() {
    let tmp = TempDir::new();
    let cfg = SandboxConfig {
        mode: SandboxMode::Off,
        ..SandboxConfig::default()
    };
    let exec = executor_with(&tmp, cfg).await;
    assert_eq!(exec.sandbox().status().mode, "off");
    let m = marker();
    let ran = run(&exec, sh(&format!("id -u; pwd; sleep {m} & echo bg"))).await;
    assert_eq!(ran.outcome, Outcome::Exited(0));
    let out = ran.out();
    let lines: Vec<&str> = out.lines().collect();
    assert_ne!(lines[0], "0", "never root");
    assert!(lines[1].ends_with("/ws/proj"), "{out}");
    assert!(gone(&m).await, "the process group is killed at the end");
}

#[tokio::test]
async fn sandbox_off_commands_start_through_the_launcher_as_they_did_forked() {
    let tmp = TempDir::new();
    let cfg = SandboxConfig {
        mode: SandboxMode::Off,
        ..SandboxConfig::default()
    };
    let exec = executor_with(&tmp, cfg).await;
    assert!(
        exec.sandbox().plain_launcher().is_some(),
        "the init binary is beside the test binaries"
    );
    assert_eq!(run(&exec, sh("exit 3")).await.outcome, Outcome::Exited(3));
    assert_eq!(
        run(&exec, sh("kill -9 $$")).await.outcome,
        Outcome::Signaled(9)
    );
    let ran = run(&exec, sh("printf out; printf err >&2")).await;
    assert_eq!(
        (ran.stdout.as_slice(), ran.stderr.as_slice()),
        (&b"out"[..], &b"err"[..])
    );
    // Found on the command's PATH, as a forked child would have, and
    // given the name it was asked for as `$0`.
    let argv = job(CommandSpec::Argv(vec![
        "sh".into(),
        "-c".into(),
        "echo $0; exit 4".into(),
    ]));
    let ran = run(&exec, argv).await;
    assert_eq!(ran.out(), "sh\n");
    assert_eq!(ran.outcome, Outcome::Exited(4));
    let ran = run(
        &exec,
        job(CommandSpec::Argv(vec!["no-such-program-rdev".into()])),
    )
    .await;
    assert!(
        matches!(&ran.outcome, Outcome::FailedToStart(m) if m.contains("no-such-program-rdev")),
        "{:?}",
        ran.outcome
    );
    let mut with_input = sh("cat");
    with_input.stdin = Some(b"fed".to_vec());
    let ran = run(&exec, with_input).await;
    assert_eq!(ran.out(), "fed");
    assert_eq!(ran.outcome, Outcome::Exited(0));
    // The limits still apply (here the file size one, a per-process rlimit).
    let mut limited = sh("ulimit -f");
    limited.limits.file_size_bytes = Some(1024 * 1024);
    let ran = run(&exec, limited).await;
    assert_eq!(ran.out(), "2048\n", "1 MiB in 512-byte blocks");
}
