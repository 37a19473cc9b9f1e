//! Choosing the pod and container, and the errors and breaker of the
//! Kubernetes API.

use crate::fake_kube::*;

use std::sync::atomic::Ordering;

use rdev_shared::breaker::BreakerState;
use rdev_shared::domain::{ExecutorConfig, KubernetesSettings as KubeProject};
use rdev_worker::executor::{KubernetesExecutor, Outcome};
use serde_json::json;

use super::{failed_to_start, project, run, settings, sh};

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
