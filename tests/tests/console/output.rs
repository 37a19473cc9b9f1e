//! Running commands from the console: live output in order, cancel,
//! reconnects, 10,000 lines, and interactive commands.

use std::time::{Duration, Instant};

use crate::browser::{Browser, WAIT};
use rdev_tests::{Options, spawn_app_with};
use serde_json::{Value, json};

use super::{open, shown_command, signed_in, wait_page_status, with_worker};

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
    // Long enough to still run whenever the browser gets to it (a loaded
    // CI machine once took more than 30 s to sign in and open the page);
    // the test cancels it.
    let id = app.run("demo", json!({ "command": "sleep 600" })).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    // Running for the API first: a timeout below is then the page's.
    app.wait_status(&id, "running", WAIT).await;
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
