//! A run's output, exit code and stdin.

use crate::fake_kube::*;

use std::collections::BTreeMap;

use rdev_shared::domain::{CommandSpec, ExecutorConfig, KubernetesSettings as KubeProject};
use rdev_worker::executor::Outcome;

use super::{job, project, run, settings, sh};

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
