//! Stopping a run: timeout, cancel, a lost stream, a dead worker's
//! watchdog; each stops the whole remote tree.

use crate::fake_kube::*;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdev_shared::domain::OutputStream;
use rdev_worker::executor::{Executor, Outcome};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{marked_processes, pids, run, run_with, settings, sh, wait_gone};

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
