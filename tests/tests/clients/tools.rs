//! Running the client SDKs' own test suites (pytest, `node --test`) from a
//! Rust test, against a stack the Rust test started. The tools they need
//! (a Python venv per suite, `node_modules`) are installed beforehand by
//! `scripts/clients.sh` into `<target dir>/clients/`, outside the checkout;
//! these tests never download anything.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// A suite that runs longer than this has hung (the SDK suites take well
/// under a minute); the guard only keeps a hang from blocking CI.
const SUITE_LIMIT: Duration = Duration::from_secs(600);

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crate inside the workspace")
        .to_path_buf()
}

/// `<target dir>/clients`, where `scripts/clients.sh` puts the venvs
/// (`RDEV_CLIENTS_DIR` overrides it, for a script run with another target dir).
pub fn clients_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RDEV_CLIENTS_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    // CARGO_TARGET_TMPDIR is `<target dir>/tmp`.
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("clients")
}

/// The Python of the venv `name` made by `scripts/clients.sh`.
pub fn venv_python(name: &str) -> PathBuf {
    let python = clients_dir().join(name).join("bin").join("python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/clients.sh (with the same CARGO_TARGET_DIR) \
         to create the test venvs and node_modules",
        python.display()
    );
    python
}

/// Runs a test suite to its end; panics with its output when it fails.
/// With `--nocapture` its output shows either way.
pub async fn run_suite(what: &str, mut cmd: tokio::process::Command) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = rdev_tests::spawn(&mut cmd).unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let out = tokio::time::timeout(SUITE_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{what} still running after {SUITE_LIMIT:?}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!(
        "--- {what}: stdout\n{}\n--- {what}: stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({})\n{text}",
        out.status
    );
    println!("{text}");
}
