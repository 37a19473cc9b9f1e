//! The `kubernetes` executor against the fake Kubernetes API server of
//! `support/fake_kube.rs`, which runs the requested commands locally, so
//! output, exit codes and kills are real. This file holds the helpers the
//! features' modules (`kube_exec/`) share.

#[path = "support/fake_kube.rs"]
#[allow(dead_code)]
mod fake_kube;
#[path = "kube_exec/interactive.rs"]
mod interactive;
#[path = "kube_exec/pods.rs"]
mod pods;
#[path = "kube_exec/runs.rs"]
mod runs;
#[path = "kube_exec/stops.rs"]
mod stops;

use fake_kube::*;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rdev_shared::breaker::BreakerConfig;
use rdev_shared::domain::{
    CommandSpec, ExecutorConfig, KubernetesSettings as KubeProject, OutputStream,
};
use rdev_shared::interactive::Input;
use rdev_worker::executor::{Executor, Job, KubeSettings, KubernetesExecutor, Outcome};
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
