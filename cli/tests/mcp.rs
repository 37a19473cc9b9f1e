//! `rdev mcp` against a live stack, driven by a real MCP client: the
//! official MCP Python SDK's stdio client (`cli/tests/mcp/test_mcp.py`,
//! with the `mcp` package from `cli/tests/mcp/requirements.txt`). The API,
//! a worker and a dispatcher run in-process (own database and AMQP prefix);
//! pytest starts this checkout's `rdev mcp` as its server process.
//!
//! Needs `scripts/clients.sh` (the venv); `scripts/test` and `.ci/run`
//! call it. Run alone: `cargo test -p rdev-cli --test mcp -- --nocapture`.

#[path = "../../tests/tests/clients/tools.rs"]
mod tools;

use rdev_tests::spawn_app;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_server_serves_the_official_python_client() {
    let app = spawn_app().await;
    let project = "agent";
    app.create_project(project, json!({})).await;

    let python = tools::venv_python("mcp");
    let mut pytest = tokio::process::Command::new(python);
    pytest
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "test_mcp.py",
        ])
        .current_dir(tools::repo_root().join("cli/tests/mcp"))
        .env("RDEV_BIN", env!("CARGO_BIN_EXE_rdev"))
        .env("RDEV_TEST_URL", &app.base)
        .env("RDEV_TEST_API_KEY", &app.admin_key)
        .env("RDEV_TEST_PROJECT", project);
    tools::run_suite("pytest cli/tests/mcp", pytest).await;
}
