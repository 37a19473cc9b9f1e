//! The web console (`/ui`) end to end: a real headless Chromium, driven over
//! WebDriver, against the real API, worker and dispatcher (in-process, with
//! their own database and AMQP prefix per test, like the e2e tests). This
//! file holds what the features' modules share.
//!
//! Run: `cargo test -p rdev-tests --test console -- --nocapture` (prints the
//! screenshot path and the 10,000-line timings).

#[path = "console/browser.rs"]
mod browser;
#[path = "console/output.rs"]
mod output;
#[path = "console/secrets.rs"]
mod secrets;
#[path = "console/signin.rs"]
mod signin;
#[path = "console/webhooks.rs"]
mod webhooks;

use browser::Browser;
use rdev_tests::{Options, TestApp};
use serde_json::json;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
    img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// A browser signed in to the app's console with `key`.
async fn signed_in(app: &TestApp, key: &str) -> Browser {
    let b = Browser::start().await;
    b.goto(&app.url("/ui")).await;
    b.fill("#signin-key", key).await;
    b.click("#signin-submit").await;
    b.wait_js(
        "the signed-in console",
        "return !document.getElementById('who').hidden && document.getElementById('who-name').textContent",
        vec![],
    )
    .await;
    b
}

/// Shows a page of the console by its hash route and waits for `ready` (CSS).
async fn open(b: &Browser, route: &str, ready: &str) {
    b.js("location.hash = arguments[0];", vec![json!(route)])
        .await;
    b.wait_for(ready).await;
}

/// The command id of the command page shown.
async fn shown_command(b: &Browser) -> String {
    let v = b
        .wait_js(
            "the command page",
            "const m = location.hash.match(/^#\\/commands\\/([0-9a-f-]{36})$/); return m && m[1];",
            vec![],
        )
        .await;
    v.as_str().expect("id").to_owned()
}

/// Waits until the command page shows `status`; a timeout says what the
/// page showed instead (its status and its stream's state).
async fn wait_page_status(b: &Browser, status: &str) {
    b.wait_until(
        &format!("status {status} on the page ([status, stream state])"),
        "const s = document.getElementById('status'); \
         const t = document.getElementById('stream-state'); \
         return [s ? s.dataset.status : null, t ? t.textContent : null];",
        vec![],
        |shown| shown[0] == json!(status),
    )
    .await;
}

fn with_worker() -> Options {
    Options::default()
}
