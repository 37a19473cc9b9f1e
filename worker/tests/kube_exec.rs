//! The `kubernetes` executor against the fake Kubernetes API server of
//! `support/fake_kube.rs`, which runs the requested commands locally, so
//! output, exit codes and kills are real.

#[path = "support/fake_kube.rs"]
#[allow(dead_code)]
mod fake_kube;

use fake_kube::*;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdev_shared::breaker::{BreakerConfig, BreakerState};
use rdev_shared::domain::{
    CommandSpec, ExecutorConfig, KubernetesSettings as KubeProject, OutputStream,
};
use rdev_shared::interactive::{Input, InputSignal, TtySize};
use rdev_worker::executor::{Executor, Job, KubeSettings, KubernetesExecutor, Outcome};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------

fn settings() -> KubeSettings {
    KubeSettings {
        pod_cache_ttl: Duration::from_secs(60),
        api_timeout: Duration::from_secs(5),
        kill_grace: Duration::from_secs(1),
        breaker: BreakerConfig {
            failure_threshold: 3,
            open_for: Duration::from_secs(60),
        },
    }
}

fn project() -> KubeProject {
    KubeProject {
        namespace: NS.into(),
        selector: SELECTOR.into(),
        container: Some("app".into()),
        workdir: None,
    }
}

fn job(spec: CommandSpec) -> Job {
    Job {
        name: "cmd".into(),
        spec,
        env: BTreeMap::new(),
        stdin: None,
        stdin_pipe: false,
        tty: None,
        executor: ExecutorConfig::Kubernetes(project()),
        project: "web".into(),
        timeout: Duration::from_secs(30),
        network: rdev_shared::containment::NetworkMode::Host,
        limits: rdev_shared::containment::ResourceLimits::default(),
        secrets: Default::default(),
    }
}

fn sh(line: &str) -> Job {
    job(CommandSpec::Shell(line.into()))
}

#[derive(Debug)]
struct Ran {
    outcome: Outcome,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    max_piece: usize,
}

async fn run_with(exec: &KubernetesExecutor, job: Job, cancel: CancellationToken) -> Ran {
    let (tx, mut rx) = mpsc::channel::<(OutputStream, Bytes)>(4);
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
    let run = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(exec.run(job, tx, None, cancel), collect)
    });
    let (outcome, (stdout, stderr, max_piece)) = run.await.expect("the executor returns");
    Ran {
        outcome,
        stdout,
        stderr,
        max_piece,
    }
}

async fn run(exec: &KubernetesExecutor, job: Job) -> Ran {
    run_with(exec, job, CancellationToken::new()).await
}

fn failed_to_start(ran: &Ran) -> &str {
    match &ran.outcome {
        Outcome::FailedToStart(e) => e,
        other => panic!("expected FailedToStart, got {other:?}"),
    }
}

fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

async fn wait_gone(pid: i32) -> bool {
    for _ in 0..200 {
        if process_gone(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn pids(stdout: &[u8]) -> Vec<i32> {
    String::from_utf8_lossy(stdout)
        .split_whitespace()
        .map(|p| p.parse().expect("a pid"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_stderr_env_and_workdir_arrive() {
    for protocol in ["v4.channel.k8s.io", "v5.channel.k8s.io"] {
        let fake = Fake::start(protocol).await;
        let exec = fake.executor(settings());
        let dir =
            std::env::temp_dir().join(format!("rdev kube 'wd' {:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).expect("workdir");
        let mut j = sh("printf '%s|%s' \"$GREETING\" \"$(pwd)\"; printf 'to err' >&2");
        j.env = BTreeMap::from([("GREETING".into(), "it's $HOME `x` \"q\"".into())]);
        j.executor = ExecutorConfig::Kubernetes(KubeProject {
            workdir: Some(dir.display().to_string()),
            ..project()
        });
        let ran = run(&exec, j).await;
        assert_eq!(ran.outcome, Outcome::Exited(0), "{protocol}: {ran:?}");
        assert_eq!(
            String::from_utf8_lossy(&ran.stdout),
            format!("it's $HOME `x` \"q\"|{}", dir.display()),
            "{protocol}"
        );
        assert_eq!(ran.stderr, b"to err", "{protocol}");
        let execs = fake.command_execs();
        assert_eq!(execs.len(), 1);
        assert_eq!(execs[0].pod, "web-0", "first ready pod by name");
        assert_eq!(execs[0].container.as_deref(), Some("app"));
        assert_eq!(execs[0].command[..2], ["/bin/sh", "-c"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_zero_exit_is_reported_with_its_code() {
    let fake = Fake::start("v4.channel.k8s.io").await;
    let exec = fake.executor(settings());
    assert_eq!(run(&exec, sh("exit 3")).await.outcome, Outcome::Exited(3));
    let argv = job(CommandSpec::Argv(vec![
        "sh".into(),
        "-c".into(),
        "echo $0 >&2; exit 4".into(),
        "a b".into(),
    ]));
    let ran = run(&exec, argv).await;
    assert_eq!(ran.outcome, Outcome::Exited(4));
    assert_eq!(ran.stderr, b"a b\n", "argv words stay words");
    let missing = run(
        &exec,
        job(CommandSpec::Argv(vec!["no-such-program-rdev".into()])),
    )
    .await;
    assert_eq!(
        missing.outcome,
        Outcome::Exited(127),
        "the shell's not-found code"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_is_delivered_and_ends() {
    for protocol in ["v4.channel.k8s.io", "v5.channel.k8s.io"] {
        let fake = Fake::start(protocol).await;
        let exec = fake.executor(settings());
        let mut j = sh("cat; echo done");
        j.stdin = Some(b"hello\nworld\n".to_vec());
        let ran = run(&exec, j).await;
        assert_eq!(ran.outcome, Outcome::Exited(0), "{protocol}");
        assert_eq!(ran.stdout, b"hello\nworld\ndone\n", "{protocol}");
        let ran = run(&exec, sh("cat; echo eof")).await;
        assert_eq!(ran.stdout, b"eof\n", "{protocol}: no stdin reads /dev/null");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_output_arrives_in_bounded_pieces() {
    let fake = Fake::start("v4.channel.k8s.io").await;
    let exec = fake.executor(settings());
    let ran = run(
        &exec,
        sh("head -c 3000000 /dev/zero; head -c 1000 /dev/zero >&2"),
    )
    .await;
    assert_eq!(ran.outcome, Outcome::Exited(0));
    assert_eq!(ran.stdout.len(), 3_000_000);
    assert_eq!(ran.stderr.len(), 1000);
    assert!(ran.max_piece <= 64 * 1024, "{}", ran.max_piece);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_closes_the_session_and_kills_the_remote_group() {
    let fake = Fake::start("v4.channel.k8s.io").await;
    let exec = fake.executor(settings());
    // The ignored SIGTERM is inherited: only the SIGKILL after the grace
    // ends them. They would sleep far longer than the test: if they are
    // gone, the stop exec killed them, and it ran before the run ended.
    let mut j =
        sh("trap '' TERM; sleep 3000 & printf '%s ' $!; sleep 3000 & printf '%s ' $!; wait");
    j.timeout = Duration::from_secs(1);
    let ran = run(&exec, j).await;
    assert_eq!(ran.outcome, Outcome::TimedOut);
    assert_eq!(fake.stop_execs(), 1, "the stop exec ran before the end");
    let pids = pids(&ran.stdout);
    assert_eq!(pids.len(), 2, "{ran:?}");
    for pid in pids {
        assert!(
            wait_gone(pid).await,
            "remote process {pid} survived the timeout"
        );
    }
    assert_eq!(fake.stop_execs(), 1, "one stop exec");
    assert!(fake.wait_sessions_closed().await, "exec sessions closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_closes_the_session_and_kills_the_remote_group() {
    let fake = Fake::start("v5.channel.k8s.io").await;
    let exec = fake.executor(settings());
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        trigger.cancel();
    });
    // The command would outlive the test: a run that ends was cancelled,
    // and processes that are gone were killed by the stop exec.
    let ran = run_with(&exec, sh("sleep 3000 & echo $!; sleep 3000"), cancel).await;
    assert_eq!(ran.outcome, Outcome::Cancelled);
    for pid in pids(&ran.stdout) {
        assert!(
            wait_gone(pid).await,
            "remote process {pid} survived the cancel"
        );
    }
    assert!(fake.wait_sessions_closed().await, "exec sessions closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_stream_stops_the_whole_remote_tree_before_the_end_is_recorded() {
    let fake = Fake::start("v5.channel.k8s.io").await;
    *fake.state.drop_after.lock().expect("drop_after") = Some(Duration::from_millis(800));
    let exec = fake.executor(settings());
    let marker = format!("3000.{:06}", rand::random::<u32>() % 1_000_000);
    // One child in the group, one that left it with setsid, one double-forked.
    let line = format!(
        "sleep {marker} & setsid sleep {marker} & (sleep {marker} &); echo started; sleep {marker}"
    );
    let ran = run(&exec, sh(&line)).await;
    assert!(
        matches!(&ran.outcome, Outcome::ExecutorLost(m) if m.contains("was lost")),
        "{:?}",
        ran.outcome
    );
    assert_eq!(fake.stop_execs(), 1, "the stop script ran");
    for _ in 0..60 {
        if marked_processes(&marker).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        marked_processes(&marker),
        Vec::<i32>::new(),
        "remote processes survived"
    );
}

/// Issue 15, finding 7: a worker that dies mid-run (SIGKILL, node lost)
/// never stops its remote command; the run's watchdog in the pod does, once
/// the command's timeout and two grace periods (+5 s) have passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_worker_died_is_stopped_by_its_watchdog() {
    let fake = Fake::start("v5.channel.k8s.io").await;
    let exec = Arc::new(fake.executor(settings()));
    let marker = format!("3000.{:06}", rand::random::<u32>() % 1_000_000);
    let mut job = sh(&format!(
        "sleep {marker} & setsid sleep {marker} & echo started; sleep {marker}"
    ));
    job.timeout = Duration::from_secs(1);
    let (tx, mut rx) = mpsc::channel::<(OutputStream, Bytes)>(4);
    let worker = {
        let exec = exec.clone();
        tokio::spawn(async move { exec.run(job, tx, None, CancellationToken::new()).await })
    };
    // The command runs; then its worker vanishes without stopping it.
    let first = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await;
    assert!(matches!(first, Ok(Some(_))), "{first:?}");
    worker.abort();
    drop(rx);
    assert!(!marked_processes(&marker).is_empty());
    let started = Instant::now();
    while !marked_processes(&marker).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "remote processes outlived their watchdog: {:?}",
            marked_processes(&marker)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Live (not zombie) processes whose command line has `marker`.
fn marked_processes(marker: &str) -> Vec<i32> {
    let mut out = Vec::new();
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
            out.push(pid);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_unready_pods_are_clear_errors() {
    let fake = Fake::start("v4.channel.k8s.io").await;
    let exec = fake.executor(settings());
    let mut none = sh("true");
    none.executor = ExecutorConfig::Kubernetes(KubeProject {
        selector: "app=nothing".into(),
        ..project()
    });
    assert_eq!(
        failed_to_start(&run(&exec, none).await),
        "no pod matches selector app=nothing in namespace dev"
    );

    fake.set_pods(
        "app=sleepy",
        vec![pod("sleepy-0", false), pod("sleepy-1", false)],
    );
    let mut unready = sh("true");
    unready.executor = ExecutorConfig::Kubernetes(KubeProject {
        selector: "app=sleepy".into(),
        ..project()
    });
    assert_eq!(
        failed_to_start(&run(&exec, unready).await),
        "no ready pod matches selector app=sleepy in namespace dev (2 found, none Running and Ready)"
    );

    let mut wrong_container = sh("true");
    wrong_container.executor = ExecutorConfig::Kubernetes(KubeProject {
        container: Some("db".into()),
        ..project()
    });
    assert_eq!(
        failed_to_start(&run(&exec, wrong_container).await),
        "no ready pod matching selector app=web in namespace dev has a container named db"
    );
    assert!(fake.command_execs().is_empty(), "nothing was exec'd");
    assert_eq!(
        exec.breaker_state(),
        BreakerState::Closed,
        "answers are not API failures"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_is_a_clear_error() {
    let fake = Fake::start("v4.channel.k8s.io").await;
    fake.set_mode(Mode::ExecForbidden);
    let exec = fake.executor(settings());
    let err = run(&exec, sh("true")).await;
    assert_eq!(
        failed_to_start(&err),
        "worker's service account may not exec into pods in namespace dev (add a RoleBinding to the rdev-worker role there)"
    );
    fake.set_mode(Mode::ListForbidden);
    let exec = fake.executor(settings());
    let err = run(&exec, sh("true")).await;
    assert!(
        failed_to_start(&err)
            .starts_with("worker's service account may not list pods in namespace dev"),
        "{err:?}"
    );
    assert_eq!(exec.breaker_state(), BreakerState::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_when_the_api_fails_repeatedly() {
    let fake = Fake::start("v4.channel.k8s.io").await;
    fake.set_mode(Mode::Broken);
    let exec = fake.executor(settings());
    let metrics = rdev_shared::metrics::Metrics::new("test");
    let gauge = metrics
        .circuit_breaker_state
        .with_label_values(&["kubernetes"]);
    exec.set_state_gauge(gauge.clone());
    for _ in 0..3 {
        let ran = run(&exec, sh("true")).await;
        assert!(
            failed_to_start(&ran)
                .starts_with("kubernetes API refused to list pods (500): etcd is sad"),
            "{ran:?}"
        );
    }
    assert_eq!(exec.breaker_state(), BreakerState::Open);
    assert_eq!(
        gauge.get(),
        1,
        "circuit_breaker_state{{target=\"kubernetes\"}} shows open"
    );
    let ran = run(&exec, sh("true")).await;
    assert!(
        failed_to_start(&ran).starts_with("kubernetes API circuit open; retry in"),
        "{ran:?}"
    );
    assert_eq!(
        fake.state.lists.load(Ordering::SeqCst),
        3,
        "an open circuit makes no call"
    );

    // Connection refused counts the same way.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let exec = KubernetesExecutor::with_client(client_for(addr), settings());
    for _ in 0..3 {
        let ran = run(&exec, sh("true")).await;
        assert!(
            failed_to_start(&ran).starts_with("kubernetes API unreachable"),
            "{ran:?}"
        );
    }
    let ran = run(&exec, sh("true")).await;
    assert!(
        failed_to_start(&ran).starts_with("kubernetes API circuit open"),
        "{ran:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_busy_ready_pod_is_chosen_and_the_pod_list_is_cached() {
    let fake = Fake::start("v4.channel.k8s.io").await;
    let exec = fake.executor(settings());
    let (a, b) = tokio::join!(run(&exec, sh("sleep 1")), run(&exec, sh("sleep 1")));
    assert_eq!(
        (a.outcome, b.outcome),
        (Outcome::Exited(0), Outcome::Exited(0))
    );
    let mut pods: Vec<String> = fake.command_execs().into_iter().map(|e| e.pod).collect();
    pods.sort();
    assert_eq!(
        pods,
        ["web-0", "web-1"],
        "one each; never the unready web-2"
    );
    run(&exec, sh("true")).await;
    assert_eq!(
        fake.command_execs()[2].pod,
        "web-0",
        "idle again: first by name"
    );
    assert_eq!(
        fake.state.lists.load(Ordering::SeqCst),
        1,
        "pod list served from cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_gone_since_the_cached_list_is_replaced() {
    let fake = Fake::start("v4.channel.k8s.io").await;
    let exec = fake.executor(settings());
    assert_eq!(run(&exec, sh("true")).await.outcome, Outcome::Exited(0));
    // web-0 and web-1 are replaced by web-3 while the list is still cached.
    fake.set_pods(SELECTOR, vec![pod("web-3", true)]);
    let ran = run(&exec, sh("echo hi")).await;
    assert_eq!(ran.outcome, Outcome::Exited(0), "{ran:?}");
    assert_eq!(ran.stdout, b"hi\n");
    let pods: Vec<String> = fake.command_execs().into_iter().map(|e| e.pod).collect();
    assert_eq!(
        pods,
        ["web-0", "web-3"],
        "the 404 on web-0 made it list again"
    );
    assert_eq!(fake.state.lists.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_container_the_default_or_first_one_is_used() {
    let fake = Fake::start("v4.channel.k8s.io").await;
    let mut annotated = pod("db-0", true);
    annotated["metadata"]["annotations"] =
        json!({ "kubectl.kubernetes.io/default-container": "sidecar" });
    fake.set_pods("app=db", vec![annotated]);
    let exec = fake.executor(settings());
    for (selector, expected) in [(SELECTOR, "app"), ("app=db", "sidecar")] {
        let mut j = sh("true");
        j.executor = ExecutorConfig::Kubernetes(KubeProject {
            selector: selector.into(),
            container: None,
            ..project()
        });
        assert_eq!(run(&exec, j).await.outcome, Outcome::Exited(0));
        let last = fake.command_execs().pop().expect("an exec");
        assert_eq!(last.container.as_deref(), Some(expected), "{selector}");
    }
}

// ---------------------------------------------------------------------------
// Interactive commands: input, terminals, signals.

/// Runs `job` as an interactive command: each step waits until stdout holds
/// its text, then sends its input events (in order, as the worker's pump
/// would).
async fn run_driven(
    exec: &KubernetesExecutor,
    mut job: Job,
    steps: Vec<(&str, Vec<Input>)>,
) -> Ran {
    job.stdin_pipe = true;
    let (tx, mut rx) = mpsc::channel::<(OutputStream, Bytes)>(4);
    let (input, input_rx) = mpsc::channel::<Input>(16);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen_by_drive = seen.clone();
    let drive = async move {
        let (mut stdout, mut stderr, mut max_piece) = (Vec::new(), Vec::new(), 0);
        let mut steps = steps.into_iter().peekable();
        loop {
            while let Some((want, _)) = steps.peek()
                && String::from_utf8_lossy(&stdout).contains(want)
            {
                let (_, events) = steps.next().expect("peeked");
                for e in events {
                    input.send(e).await.expect("the executor takes input");
                }
            }
            let Some((stream, data)) = rx.recv().await else {
                break;
            };
            max_piece = max_piece.max(data.len());
            seen_by_drive.lock().expect("seen").extend_from_slice(&data);
            match stream {
                OutputStream::Stdout => stdout.extend_from_slice(&data),
                OutputStream::Stderr => stderr.extend_from_slice(&data),
            }
        }
        assert!(
            steps.next().is_none(),
            "output ended before every step ran: {}",
            String::from_utf8_lossy(&stdout)
        );
        (stdout, stderr, max_piece)
    };
    let run = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(
            exec.run(job, tx, Some(input_rx), CancellationToken::new()),
            drive
        )
    });
    let Ok((outcome, (stdout, stderr, max_piece))) = run.await else {
        panic!(
            "the executor did not return; the output so far: {:?}",
            String::from_utf8_lossy(&seen.lock().expect("seen"))
        );
    };
    Ran {
        outcome,
        stdout,
        stderr,
        max_piece,
    }
}

fn data(s: &str) -> Input {
    Input::Data {
        data: s.as_bytes().to_vec(),
    }
}

#[tokio::test]
async fn piped_input_arrives_in_order_and_eof_closes_it_on_v5() {
    let fake = Fake::start("v5.channel.k8s.io").await;
    fake.set_pods(SELECTOR, vec![pod("web-1", true)]);
    let exec = fake.executor(settings());
    let ran = run_driven(
        &exec,
        sh("while read l; do echo got-$l; done; echo done"),
        vec![
            ("", vec![data("a\n")]),
            ("got-a\n", vec![data("b\n"), Input::Eof]),
        ],
    )
    .await;
    assert!(matches!(ran.outcome, Outcome::Exited(0)), "{ran:?}");
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "got-a\ngot-b\ndone\n");
}

#[tokio::test]
async fn a_terminal_starts_at_its_size_resizes_and_takes_ctrl_c() {
    for protocol in ["v4.channel.k8s.io", "v5.channel.k8s.io"] {
        let fake = Fake::start(protocol).await;
        fake.set_pods(SELECTOR, vec![pod("web-1", true)]);
        let exec = fake.executor(settings());
        // The first `stty size` waits for a line: the runtime starts the
        // process before the client's first resize arrives (as a real one
        // does). kube sends resizes and stdin on separate channels, so the
        // shell polls for the new size instead of reading it after a line.
        let mut j = sh("echo ready; read l; stty size; \
             while [ \"$(stty size)\" != '30 100' ]; do sleep 0.05; done; echo resized; \
             trap 'echo got-int; exit 5' INT; read l; echo bye-$l >&2; \
             while :; do sleep 0.1; done");
        j.tty = Some(TtySize { cols: 90, rows: 20 });
        j.timeout = Duration::from_secs(600);
        let ran = run_driven(
            &exec,
            j,
            vec![
                ("ready", vec![data("go\r")]),
                (
                    "20 90",
                    vec![Input::Resize {
                        size: TtySize {
                            cols: 100,
                            rows: 30,
                        },
                    }],
                ),
                ("resized", vec![data("y\r")]),
                (
                    "bye-y",
                    vec![Input::Signal {
                        signal: InputSignal::Int,
                    }],
                ),
            ],
        )
        .await;
        let text = String::from_utf8_lossy(&ran.stdout);
        // One stream: stderr arrives on the terminal, with its line endings.
        assert!(text.contains("bye-y\r\n"), "{protocol}: {text}");
        assert!(ran.stderr.is_empty(), "{protocol}: {ran:?}");
        // Ctrl-C reached the shell as SIGINT (its trap ran): the terminal
        // turned the key into a signal for the foreground process group.
        assert!(text.contains("got-int"), "{protocol}: {text}");
        assert!(
            matches!(ran.outcome, Outcome::Exited(5)),
            "{protocol}: {ran:?}"
        );
        assert_eq!(
            *fake.state.resizes.lock().expect("resizes"),
            vec![(90, 20), (100, 30)],
            "{protocol}"
        );
    }
}

#[tokio::test]
async fn a_signal_without_a_terminal_reaches_the_command() {
    let fake = Fake::start("v4.channel.k8s.io").await;
    fake.set_pods(SELECTOR, vec![pod("web-1", true)]);
    let exec = fake.executor(settings());
    let ran = run_driven(
        &exec,
        sh("trap 'echo got-usr1; exit 7' USR1; echo ready; while :; do sleep 0.1; done"),
        vec![(
            "ready\n",
            vec![Input::Signal {
                signal: InputSignal::Usr1,
            }],
        )],
    )
    .await;
    assert!(matches!(ran.outcome, Outcome::Exited(7)), "{ran:?}");
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "ready\ngot-usr1\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_travel_on_stdin_never_in_the_exec_request() {
    use rdev_worker::secrets::{JobSecrets, SecretValue};
    let token = "multi\nline 'quoted' $HOME `x` value\n";
    for protocol in ["v4.channel.k8s.io", "v5.channel.k8s.io"] {
        for stdin in [None, Some(b"fixed input".to_vec())] {
            let fake = Fake::start(protocol).await;
            let exec = fake.executor(settings());
            let mut j = sh("printf '[%s][%s]' \"$TOKEN\" \"$OTHER\"; cat");
            j.stdin = stdin.clone();
            j.secrets = JobSecrets {
                env: vec![
                    ("TOKEN".into(), SecretValue::new(token)),
                    ("OTHER".into(), SecretValue::new("second-secret")),
                ],
                files: Vec::new(),
            };
            let ran = run(&exec, j).await;
            assert_eq!(ran.outcome, Outcome::Exited(0), "{protocol}: {ran:?}");
            let rest = String::from_utf8_lossy(stdin.as_deref().unwrap_or_default()).into_owned();
            assert_eq!(
                String::from_utf8_lossy(&ran.stdout),
                format!("[{token}][second-secret]{rest}"),
                "{protocol}"
            );
            for e in fake.command_execs() {
                let line = e.command.join(" ");
                assert!(
                    !line.contains("second-secret") && !line.contains("quoted"),
                    "a value is in the exec request: {line}"
                );
            }
        }
    }
}
