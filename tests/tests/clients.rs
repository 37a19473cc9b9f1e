//! The client SDKs in `clients/` against a live stack: the API, a worker
//! and a dispatcher in-process (their own database and AMQP prefix, as the
//! e2e tests), an admin key, and a proxy that cuts every event stream.
//! Each SDK's own suite runs as a child process with the addresses in
//! `RDEV_TEST_URL`, `RDEV_TEST_FLAKY_URL` and `RDEV_TEST_API_KEY`, and this
//! test fails when it fails.
//!
//! Needs `scripts/clients.sh` (the Python venv and `node_modules`, in the
//! target directory); `scripts/test` and `.ci/run` call it. Run alone:
//! `scripts/clients.sh && cargo test -p rdev-tests --test clients -- --nocapture`.

#[path = "clients/proxy.rs"]
mod proxy;
#[path = "clients/tools.rs"]
mod tools;

use proxy::CuttingProxy;
use rdev_tests::{Options, TestApp, spawn_app_with};

/// Output events each proxied stream carries before it is cut.
const CUT_AFTER: usize = 25;

async fn live_stack() -> (TestApp, CuttingProxy) {
    let app = spawn_app_with(Options {
        dispatcher: true,
        concurrency: 8,
        ..Default::default()
    })
    .await;
    let addr = app
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("API address");
    let proxy = CuttingProxy::start(addr, CUT_AFTER).await;
    (app, proxy)
}

fn with_stack(cmd: &mut tokio::process::Command, app: &TestApp, proxy: &CuttingProxy) {
    cmd.env("RDEV_TEST_URL", &app.base)
        .env("RDEV_TEST_FLAKY_URL", &proxy.url)
        .env("RDEV_TEST_API_KEY", &app.admin_key)
        .env_remove("RDEV_URL")
        .env_remove("RDEV_API_KEY");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_suite_passes_against_a_live_stack() {
    let (app, proxy) = live_stack().await;
    let dir = tools::repo_root().join("clients/python");
    let python = tools::venv_python("python-sdk");
    // Installed from its folder on every run (offline: the build backend is
    // in the venv), so the suite tests this checkout's code as a user gets it.
    let mut install = tokio::process::Command::new(&python);
    install
        .args(["-m", "pip", "install", "--quiet", "--no-deps", "--no-index"])
        .args(["--no-build-isolation", "--force-reinstall", "."])
        .current_dir(&dir);
    tools::run_suite("pip install clients/python", install).await;

    let mut pytest = tokio::process::Command::new(&python);
    pytest
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
        .current_dir(&dir);
    with_stack(&mut pytest, &app, &proxy);
    tools::run_suite("pytest clients/python", pytest).await;
    assert!(proxy.cuts() >= 2, "the proxy cut {} streams", proxy.cuts());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_sdk_suite_passes_against_a_live_stack() {
    let (app, proxy) = live_stack().await;
    let dir = tools::repo_root().join("clients/typescript");
    assert!(
        dir.join("node_modules").exists(),
        "clients/typescript/node_modules is missing: run scripts/clients.sh"
    );
    // `npm test` compiles (tsc, from node_modules) and runs `node --test`.
    let mut npm = tokio::process::Command::new("npm");
    npm.args(["test", "--silent"]).current_dir(&dir);
    with_stack(&mut npm, &app, &proxy);
    tools::run_suite("npm test (clients/typescript)", npm).await;
    assert!(proxy.cuts() >= 2, "the proxy cut {} streams", proxy.cuts());
}
