//! The web console (`/ui`) end to end: a real headless Chromium, driven over
//! WebDriver, against the real API, worker and dispatcher (in-process, with
//! their own database and AMQP prefix per test, like the e2e tests).
//!
//! Run: `cargo test -p rdev-tests --test console -- --nocapture` (prints the
//! screenshot path and the 10,000-line timings).

#[path = "console/browser.rs"]
mod browser;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::HeaderMap;
use browser::Browser;
use rdev_tests::{Options, TestApp, spawn_app_with};
use serde_json::{Value, json};

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

/// Waits until the command page shows `status`.
async fn wait_page_status(b: &Browser, status: &str) {
    b.wait_js(
        &format!("status {status} on the page"),
        "const s = document.getElementById('status'); return !!s && s.dataset.status === arguments[0];",
        vec![json!(status)],
    )
    .await;
}

fn with_worker() -> Options {
    Options::default()
}

#[tokio::test]
async fn sign_in_create_a_project_and_read_a_refusal() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;

    // The page and its files carry the policy.
    for path in ["/ui", "/ui/app.js", "/ui/app.css"] {
        let r = app.send(app.http.get(app.url(path))).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-security-policy").as_deref(), Some(CSP));
        assert_eq!(
            r.header("x-content-type-options").as_deref(),
            Some("nosniff")
        );
        assert_eq!(r.header("referrer-policy").as_deref(), Some("no-referrer"));
    }

    let b = signed_in(&app, &app.admin_key).await;
    assert!(b.text("#who-name").await.contains("test-admin"));
    // The key is in this tab's sessionStorage only, never in the URL.
    let url = b.client.current_url().await.expect("url").to_string();
    assert!(!url.contains(&app.admin_key), "{url}");
    let stored = b
        .js(
            "return [sessionStorage.getItem('rdev.key'), localStorage.length, document.cookie];",
            vec![],
        )
        .await;
    assert_eq!(stored, json!([app.admin_key, 0, ""]));

    // Create a project with the form.
    b.wait_for("#project-form").await;
    b.fill("#project-name", "web").await;
    b.fill("#project-description", "the web app").await;
    b.click("#project-create").await;
    b.wait_for("tr[data-project='web']").await;
    let p = app.get("/v1/projects/web").await;
    assert_eq!(p.status, 200);
    assert_eq!(p.json()["description"], "the web app");

    // A refused request is explained: problem+json title, detail and fields.
    b.fill("#project-name", "Not A Slug").await;
    b.click("#project-create").await;
    let problem = b.wait_for(".problem").await.text().await.expect("text");
    assert!(problem.contains("Validation Failed (422)"), "{problem}");
    assert!(problem.contains("must match"), "{problem}");
    assert!(problem.contains("name"), "{problem}");
    // The same name twice: a conflict, said in words.
    b.fill("#project-name", "web").await;
    b.click("#project-create").await;
    b.wait_js(
        "a 409 explanation",
        "const p = document.querySelector('.problem'); return !!p && p.textContent.includes('(409)');",
        vec![],
    )
    .await;

    // The scripts ran from 'self' (the page works) without any policy
    // violation; and the policy is enforced: an injected inline script does
    // not run, and that is reported.
    let before = b.console_messages().await;
    assert!(
        !before
            .iter()
            .any(|m| m.contains("Content Security Policy") || m.contains("CSP")),
        "{before:#?}"
    );
    let ran = b
        .js(
            "const s = document.createElement('script'); s.textContent = 'window.inlineRan = true;'; \
             document.head.appendChild(s); return window.inlineRan === true;",
            vec![],
        )
        .await;
    assert_eq!(ran, json!(false), "inline script must be blocked");
    let after = b.console_messages().await;
    assert!(
        after.iter().any(|m| m.contains("Content Security Policy")),
        "the blocked script is reported: {after:#?}"
    );

    // Signing out forgets the key.
    b.click("#sign-out").await;
    b.wait_for("#signin-key").await;
    let key = b
        .js("return sessionStorage.getItem('rdev.key');", vec![])
        .await;
    assert_eq!(key, Value::Null);
    b.close().await;
}

#[tokio::test]
async fn run_form_streams_output_live_in_order() {
    let app = spawn_app_with(with_worker()).await;
    app.create_project("demo", json!({})).await;
    let b = signed_in(&app, &app.admin_key).await;
    open(&b, "#/projects/demo", "#run-form").await;
    b.fill(
        "#run-command",
        "for i in 1 2 3 4 5; do echo line$i; sleep 0.4; done; \
         printf '\\033[1;32mgreen\\033[0m\\n'; echo oops >&2",
    )
    .await;
    b.fill("#run-priority", "7").await;
    b.fill("#run-timeout", "60").await;
    b.click("#run-submit").await;
    let id = shown_command(&b).await;

    // The first lines are on the page while the command still runs.
    b.wait_js(
        "line1 on the page",
        "return document.getElementById('output').textContent.includes('line1');",
        vec![],
    )
    .await;
    let seen_at = Instant::now();
    let status = app.get(&format!("/v1/commands/{id}")).await.json();
    assert_eq!(
        status["status"], "running",
        "the first line must show before the command ends"
    );
    assert_eq!(status["priority"], 7);
    assert_eq!(status["timeout_s"], 60);
    let partial = b.text("#output").await;
    assert!(!partial.contains("oops"), "not finished yet: {partial:?}");

    wait_page_status(&b, "succeeded").await;
    println!(
        "first line shown {:?} before the page saw the end",
        seen_at.elapsed()
    );
    let text = b.text("#output").await;
    assert_eq!(text, "line1\nline2\nline3\nline4\nline5\ngreen\noops\n");
    // stderr is told apart; ANSI colours are classes, the codes are gone.
    assert_eq!(b.text("#output .err").await, "oops\n");
    let green = b
        .js(
            "return [...document.querySelectorAll('#output span')].find(s => s.textContent === 'green')?.className;",
            vec![],
        )
        .await;
    assert_eq!(green, json!("b f2"));
    let facts = b.text(".facts").await;
    assert!(facts.contains("Exit code0"), "{facts}");
    assert!(
        !facts.contains("null") && !facts.contains("undefined"),
        "{facts}"
    );
    assert!(
        b.find("#cancel")
            .await
            .attr("disabled")
            .await
            .expect("attr")
            .is_some()
    );

    let shot = b.screenshot("console-command.png").await;
    println!("screenshot of the command page: {}", shot.display());

    // The project page lists it, with its exit code and duration.
    open(&b, "#/projects/demo", &format!("tr[data-command='{id}']")).await;
    let row = b.text(&format!("tr[data-command='{id}']")).await;
    assert!(row.contains("succeeded") && row.contains(" s"), "{row}");
    // The status filter asks the API, and is kept in the URL.
    let filter = b.find("#filter-status").await;
    filter.select_by_value("failed").await.expect("select");
    b.wait_js(
        "an empty filtered list",
        "return !document.querySelector('tr[data-command]') && !document.querySelector('.empty').hidden;",
        vec![],
    )
    .await;
    filter.select_by_value("succeeded").await.expect("select");
    b.wait_for(&format!("tr[data-command='{id}']")).await;
    let url = b.client.current_url().await.expect("url");
    assert_eq!(url.fragment(), Some("/projects/demo?status=succeeded"));
    b.close().await;
}

#[tokio::test]
async fn cancel_button_stops_a_running_command() {
    let app = spawn_app_with(with_worker()).await;
    app.create_project("demo", json!({})).await;
    let id = app.run("demo", json!({ "command": "sleep 30" })).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let b = signed_in(&app, &app.admin_key).await;
    open(&b, &format!("#/commands/{id}"), "#output").await;
    wait_page_status(&b, "running").await;
    b.wait_js(
        "an enabled cancel button",
        "return !document.getElementById('cancel').disabled;",
        vec![],
    )
    .await;
    let started = Instant::now();
    b.click("#cancel").await;
    wait_page_status(&b, "cancelled").await;
    println!("cancelled on the page after {:?}", started.elapsed());
    // Why it ended is on the page too.
    b.wait_js(
        "the reason among the facts",
        "return [...document.querySelectorAll('.facts div')].some((d) => d.textContent === 'Reasoncancelled');",
        vec![],
    )
    .await;
    let c = app.get(&format!("/v1/commands/{id}")).await.json();
    assert_eq!(c["status"], "cancelled");
    assert!(
        b.find("#cancel")
            .await
            .attr("disabled")
            .await
            .expect("attr")
            .is_some()
    );
    assert_eq!(
        b.text("#stream-state").await,
        "ended",
        "the stream ended with the command"
    );
    b.close().await;
}

/// A webhook receiver on loopback that answers 200 and counts requests by
/// `webhook-id`.
struct Receiver {
    url: String,
    hits: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Self {
        let hits: Arc<Mutex<Vec<String>>> = Arc::default();
        let h = hits.clone();
        let app = Router::new().fallback(move |headers: HeaderMap| {
            let h = h.clone();
            async move {
                let id = headers
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                h.lock().expect("hits").push(id);
                "ok"
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{addr}/hook"),
            hits,
            task,
        }
    }

    fn hits(&self) -> Vec<String> {
        self.hits.lock().expect("hits").clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn webhook_deliveries_are_listed_and_redelivered() {
    let app = spawn_app_with(Options {
        worker: false,
        dispatcher: true,
        ..Default::default()
    })
    .await;
    let receiver = Receiver::start().await;
    let b = signed_in(&app, &app.admin_key).await;
    open(&b, "#/webhooks", "#webhook-form").await;
    b.fill("#webhook-url", &receiver.url).await;
    b.click("#webhook-create").await;
    let notice = b
        .wait_for("#webhook-secret")
        .await
        .text()
        .await
        .expect("text");
    assert!(
        notice.contains("whsec_"),
        "the secret is shown once: {notice}"
    );
    let link = "tr[data-webhook] a[href^='#/webhooks/']";
    b.wait_for(link).await;
    b.click(link).await;
    b.wait_for("#webhook-test").await;

    // A test event: one delivery with one successful attempt.
    b.click("#webhook-test").await;
    b.wait_for("tr.delivery[data-status='succeeded'][data-attempts='1']")
        .await;
    let row = b.text("tr.delivery").await;
    assert!(row.contains("webhook.test") && row.contains("200"), "{row}");
    assert_eq!(receiver.hits().len(), 1);

    // Redeliver: a second attempt of the same event.
    b.click("tr.delivery button.redeliver").await;
    b.wait_for("tr.delivery[data-status='succeeded'][data-attempts='2']")
        .await;
    let hits = receiver.hits();
    assert_eq!(hits.len(), 2, "{hits:?}");
    assert_eq!(hits[0], hits[1], "the same event id on both attempts");
    assert_eq!(
        b.js(
            "return document.querySelectorAll('tr.delivery tr.attempt').length;",
            vec![]
        )
        .await,
        json!(2)
    );
    let shot = b.screenshot("console-webhook.png").await;
    println!("screenshot of the deliveries page: {}", shot.display());
    b.close().await;
}

#[tokio::test]
async fn a_read_only_key_sees_disabled_buttons_that_say_why() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    app.create_project("demo", json!({})).await;
    // No worker: the command stays queued, so cancelling would be possible.
    let id = app.run("demo", json!({ "command": "true" })).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (_, reader) = app
        .create_key(json!({
            "name": "reader",
            "scopes": ["projects:read", "commands:read", "audit:read"],
        }))
        .await;
    let b = signed_in(&app, &reader).await;

    let disabled = |css: &'static str| {
        let b = &b;
        async move {
            let e = b.wait_for(css).await;
            assert!(
                !e.is_enabled().await.expect("enabled?"),
                "{css} is disabled"
            );
            e.attr("title").await.expect("title").unwrap_or_default()
        }
    };
    b.wait_for("tr[data-project='demo']").await;
    let why = disabled("#project-create").await;
    assert!(why.contains("projects:write"), "{why}");

    open(&b, "#/projects/demo", &format!("tr[data-command='{id}']")).await;
    let why = disabled("#run-submit").await;
    assert!(why.contains("commands:run"), "{why}");
    let shot = b.screenshot("console-read-only.png").await;
    println!(
        "screenshot of a project page with a read-only key: {}",
        shot.display()
    );

    open(&b, &format!("#/commands/{id}"), "#output").await;
    wait_page_status(&b, "queued").await;
    let why = disabled("#cancel").await;
    assert!(why.contains("commands:run"), "{why}");
    // Clicking it does nothing.
    let _ = b.find("#cancel").await.click().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.get(&format!("/v1/commands/{id}")).await.json()["status"],
        "queued"
    );

    // Webhooks need webhooks:manage even to read: the refusal is explained.
    open(&b, "#/webhooks", "#webhook-form").await;
    let problem = b.wait_for(".problem").await.text().await.expect("text");
    assert!(
        problem.contains("Forbidden (403)") && problem.contains("webhooks:manage"),
        "{problem}"
    );
    let why = disabled("#webhook-create").await;
    assert!(why.contains("webhooks:manage"), "{why}");

    // The audit log is readable, and filters.
    open(&b, "#/audit", "#audit-form").await;
    b.wait_for("tr.audit-entry").await;
    b.fill("#audit-action", "project.create").await;
    b.click("#audit-apply").await;
    b.wait_js(
        "only project.create entries",
        "const rows = [...document.querySelectorAll('tr.audit-entry')]; \
         return rows.length > 0 && rows.every(r => r.textContent.includes('project.create'));",
        vec![],
    )
    .await;
    assert!(
        b.client
            .current_url()
            .await
            .expect("url")
            .fragment()
            .is_some_and(|f| f.contains("action=project.create")),
        "filters are kept in the URL's fragment"
    );
    b.close().await;
}

#[tokio::test]
async fn live_output_resumes_after_reconnects_without_duplicates() {
    // Streams end every 700 ms (`reconnect`), so the page must resume from
    // its last seq several times while the command prints.
    let app = spawn_app_with(Options {
        sse_max_lifetime: Duration::from_millis(700),
        ..Default::default()
    })
    .await;
    app.create_project("demo", json!({})).await;
    let b = signed_in(&app, &app.admin_key).await;
    let id = app
        .run(
            "demo",
            json!({ "command": "for i in $(seq 1 10); do echo step$i; sleep 0.4; done" }),
        )
        .await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    open(&b, &format!("#/commands/{id}"), "#output").await;
    wait_page_status(&b, "succeeded").await;
    let expected: String = (1..=10).map(|i| format!("step{i}\n")).collect();
    assert_eq!(b.text("#output").await, expected);
    let connections: u32 = b
        .js(
            "return document.getElementById('stream-state').dataset.connections;",
            vec![],
        )
        .await
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(connections >= 3, "resumed {connections} times");
    b.close().await;
}

/// 10,000 coloured lines, printed in 100 bursts: checks the page holds them
/// all, in order, and prints how long they took to appear and how long the
/// page's main thread was busy (live, then on a fresh page load).
#[tokio::test]
async fn ten_thousand_lines_arrive_in_order_and_the_page_stays_responsive() {
    let app = spawn_app_with(with_worker()).await;
    app.create_project("demo", json!({})).await;
    let b = signed_in(&app, &app.admin_key).await;
    let script = "for b in $(seq 0 99); do seq $((b*100+1)) $((b*100+100)) | \
        awk '{ printf \"\\033[3%dm%05d\\033[0m lorem ipsum dolor sit amet, consectetur adipiscing elit\\n\", $1 % 7 + 1, $1 }'; \
        sleep 0.01; done";
    let id = app.run("demo", json!({ "command": script })).await["id"]
        .as_str()
        .expect("id")
        .to_owned();

    // Live: the page is open while the command prints.
    b.goto(&app.url(&format!("/ui#/commands/{id}"))).await;
    let live = measure(&b).await;
    check_lines(&b).await;
    assert_eq!(
        app.get(&format!("/v1/commands/{id}")).await.json()["status"],
        "succeeded"
    );
    // Replay: a fresh load of the finished command's page.
    b.goto("about:blank").await;
    b.goto(&app.url(&format!("/ui#/commands/{id}"))).await;
    let replay = measure(&b).await;
    check_lines(&b).await;

    // Responsiveness after the load: scrolling up stops following (the
    // "Follow output" button appears); a click on it is handled at once and
    // jumps back to the end; the next frame comes promptly.
    b.js("document.getElementById('output').scrollTop = 0;", vec![])
        .await;
    let follow = b.wait_for("#follow").await;
    let t = Instant::now();
    follow.click().await.expect("click follow");
    let at_end = b
        .js(
            "const o = document.getElementById('output'); \
             return document.getElementById('follow').hidden \
               && o.scrollHeight - o.scrollTop - o.clientHeight < 8;",
            vec![],
        )
        .await;
    let click = t.elapsed();
    assert_eq!(at_end, json!(true), "following the end again");
    let frame = b
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1]; const t = performance.now(); \
             requestAnimationFrame(() => setTimeout(() => done(performance.now() - t), 0));",
            vec![],
        )
        .await
        .expect("frame");
    println!("10,000 lines, live (page open while the command printed): {live}");
    println!("10,000 lines, page load of the finished command: {replay}");
    println!(
        "after load: WebDriver click on \"Follow output\" and check {click:?}; \
         requestAnimationFrame round trip {frame} ms"
    );
    b.close().await;
}

/// Waits for the page's `rdev:output-complete` mark while sampling frame
/// gaps; answers a summary (ms since the page's navigation start).
async fn measure(b: &Browser) -> Value {
    b.client
        .execute_async(
            r"
            const done = arguments[arguments.length - 1];
            const loaf = [];
            try {
              new PerformanceObserver((l) => loaf.push(...l.getEntries()))
                .observe({ type: 'long-animation-frame', buffered: true });
            } catch (_) {}
            const longtasks = [];
            try {
              new PerformanceObserver((l) => longtasks.push(...l.getEntries()))
                .observe({ type: 'longtask', buffered: true });
            } catch (_) {}
            let maxGap = 0, prev = performance.now();
            function tick(now) {
              maxGap = Math.max(maxGap, now - prev); prev = now;
              const m = performance.getEntriesByName('rdev:output-complete')[0];
              if (!m) { requestAnimationFrame(tick); return; }
              setTimeout(() => {
                const nav = performance.getEntriesByType('navigation')[0];
                const max = (xs) => Math.round(Math.max(0, ...xs.map((e) => e.duration)));
                const worst = loaf.sort((a, b) => b.duration - a.duration).slice(0, 3).map((f) => ({
                  at: Math.round(f.startTime),
                  ms: Math.round(f.duration),
                  script_ms: Math.round(f.scripts.reduce((s, x) => s + x.duration, 0)),
                  layout_ms: Math.round(f.startTime + f.duration - f.styleAndLayoutStart),
                  scripts: f.scripts.map((x) => `${x.invoker}:${Math.round(x.duration)}`).join(' '),
                }));
                done({
                  all_lines_at_ms: Math.round(m.startTime),
                  dom_content_loaded_ms: nav ? Math.round(nav.domContentLoadedEventEnd) : null,
                  lines: document.getElementById('output').dataset.lines,
                  blocks: document.querySelectorAll('#output .blk').length,
                  spans: document.querySelectorAll('#output span').length,
                  max_frame_gap_after_load_ms: Math.round(maxGap),
                  long_animation_frames: loaf.length,
                  longest_animation_frame_ms: max(loaf),
                  long_tasks: longtasks.length,
                  longest_task_ms: max(longtasks),
                  worst_frames: worst,
                });
              }, 100);
            }
            requestAnimationFrame(tick);
            ",
            vec![],
        )
        .await
        .expect("measure")
}

/// All 10,000 lines are on the page, in order, coloured.
async fn check_lines(b: &Browser) {
    let v = b
        .js(
            r"
            const text = document.getElementById('output').textContent;
            const lines = text.split('\n');
            if (lines.pop() !== '') return 'no final newline';
            if (lines.length !== 10000) return `${lines.length} lines`;
            for (let i = 0; i < lines.length; i++) {
              const want = String(i + 1).padStart(5, '0') + ' lorem ipsum dolor sit amet, consectetur adipiscing elit';
              if (lines[i] !== want) return `line ${i + 1}: ${JSON.stringify(lines[i])}`;
            }
            if (text.includes('\x1b')) return 'escape codes left in the text';
            return document.querySelectorAll('#output span.f1').length;
            ",
            vec![],
        )
        .await;
    assert!(
        v.as_u64().is_some_and(|n| n > 1000),
        "output check failed: {v}"
    );
}

/// Waits until the output pane shows `text`.
async fn wait_output(b: &Browser, text: &str) {
    b.wait_js(
        &format!("{text:?} in the output"),
        "return document.getElementById('output').textContent.includes(arguments[0]);",
        vec![json!(text)],
    )
    .await;
}

#[tokio::test]
async fn an_interactive_command_takes_lines_keys_and_ctrl_c_and_its_terminal_fits_the_pane() {
    let app = spawn_app_with(with_worker()).await;
    app.create_project("demo", json!({})).await;
    let b = signed_in(&app, &app.admin_key).await;

    // A pipe: lines from the input field, then the end of input.
    let id = app
        .run(
            "demo",
            json!({"command": "while read l; do echo \"got $l\"; done; echo bye", "stdin": "pipe"}),
        )
        .await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    open(&b, &format!("#/commands/{id}"), "#stdin-line").await;
    b.fill("#stdin-line", "hello world").await;
    b.click("#stdin-send").await;
    wait_output(&b, "got hello world\n").await;
    b.fill("#stdin-line", "again").await;
    b.click("#stdin-send").await;
    wait_output(&b, "got again\n").await;
    b.click("#stdin-eof").await;
    wait_page_status(&b, "succeeded").await;
    assert_eq!(
        app.output(&id, None).await,
        b"got hello world\ngot again\nbye\n"
    );

    // A terminal: its size follows the pane, keys typed on the pane go to
    // it, Ctrl-C interrupts the foreground program.
    let id = app
        .run(
            "demo",
            json!({"command": "sh -i", "tty": {"cols": 20, "rows": 5}}),
        )
        .await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    open(&b, &format!("#/commands/{id}"), "#stdin-line").await;
    let size = b
        .wait_js(
            "the pane's terminal size",
            "return document.getElementById('output').dataset.size;",
            vec![],
        )
        .await;
    let (cols, rows) = size
        .as_str()
        .and_then(|s| s.split_once('x'))
        .expect("COLSxROWS");
    assert_ne!((cols, rows), ("20", "5"), "resized to the pane");
    let pane = b.find("#output").await;
    pane.click().await.expect("focus the terminal");
    // U+E007 is WebDriver's Enter key.
    pane.send_keys("stty size\u{E007}").await.expect("type");
    wait_output(&b, &format!("{rows} {cols}\n")).await;
    pane.send_keys("sleep 30; echo not-$((6*7))\u{E007}")
        .await
        .expect("type");
    tokio::time::sleep(Duration::from_millis(700)).await;
    b.click("#signal-int").await;
    pane.click().await.expect("focus the terminal");
    pane.send_keys("echo alive-$((40+2))\u{E007}")
        .await
        .expect("type");
    wait_output(&b, "alive-42\n").await;
    assert!(!b.text("#output").await.contains("not-42"));
    pane.send_keys("exit 3\u{E007}").await.expect("type");
    wait_page_status(&b, "failed").await;
    let c = app.get(&format!("/v1/commands/{id}")).await.json();
    assert_eq!(c["exit_code"], 3, "{c}");
    // The panel lives within the console's unchanged CSP.
    let messages = b.console_messages().await;
    assert!(
        !messages
            .iter()
            .any(|m| m.contains("Content Security Policy")),
        "{messages:#?}"
    );
    b.close().await;
}

#[tokio::test]
async fn secrets_are_set_listed_and_deleted_and_their_values_never_shown() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    app.create_project("app", json!({})).await;
    let b = signed_in(&app, &app.admin_key).await;
    open(&b, "#/projects/app", "#secrets-link").await;
    b.click("#secrets-link").await;
    b.wait_for("#secret-form").await;
    for (value, version) in [("first-s3cr3t-value", 1), ("second-s3cr3t-value", 2)] {
        b.fill("#secret-name", "NPM_TOKEN").await;
        b.fill("#secret-value", value).await;
        b.click("#secret-set").await;
        b.wait_for(&format!(
            "tr.secret[data-name='NPM_TOKEN'][data-version='{version}']"
        ))
        .await;
    }
    let row = b.text("tr.secret").await;
    assert!(row.contains("NPM_TOKEN") && row.contains('2'), "{row}");
    // Nowhere on the page: not in its text, not in an input.
    let page = b
        .js(
            "return document.documentElement.outerHTML + '|' + \
             [...document.querySelectorAll('input')].map((i) => i.value).join('|');",
            vec![],
        )
        .await;
    assert!(!page.as_str().expect("page").contains("s3cr3t"), "{page}");
    // Too short: the API's refusal is shown, nothing is set.
    b.fill("#secret-name", "SHORT").await;
    b.fill("#secret-value", "abc").await;
    b.js(
        "document.getElementById('secret-value').removeAttribute('minlength');",
        vec![],
    )
    .await;
    b.click("#secret-set").await;
    let problem = b.wait_for("#secret-result .problem").await;
    assert!(problem.text().await.expect("text").contains("422"));
    // Delete takes two clicks.
    b.click("tr.secret[data-name='NPM_TOKEN'] button.delete")
        .await;
    b.click("tr.secret[data-name='NPM_TOKEN'] button.delete")
        .await;
    b.wait_js(
        "the row gone",
        "return !document.querySelector('tr.secret');",
        vec![],
    )
    .await;
    let listed = app.get("/v1/projects/app/secrets").await.json();
    assert_eq!(listed["items"], json!([]));
    b.close().await;

    // Without secrets:manage: no link, and the page says why.
    let (_, reader) = app
        .create_key(json!({ "name": "reader", "scopes": ["projects:read", "commands:read"] }))
        .await;
    let b = signed_in(&app, &reader).await;
    open(&b, "#/projects/app/secrets", "#secrets-denied").await;
    open(&b, "#/projects/app", "#run-form").await;
    assert_eq!(
        b.js("return !!document.getElementById('secrets-link');", vec![])
            .await,
        json!(false)
    );
    b.close().await;
}
