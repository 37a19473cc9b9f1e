//! A headless Chromium driven over WebDriver: each [`Browser`] starts its own
//! `chromedriver` on a free loopback port, with a fresh profile directory,
//! and kills both (the whole process group) and removes the profile when
//! dropped, also when a test fails.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`scripts/browser.sh`
//! installs them; `scripts/test` and `.ci/run` call it).

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, SemaphorePermit};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long a wait for the page may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// Browsers open at once in this test binary: each Chromium takes a few
/// hundred MB and a core while loading, and the rest of the suite runs too.
static SLOTS: Semaphore = Semaphore::const_new(2);

/// The chromedriver process (and through its process group, Chromium).
struct Driver {
    child: Child,
    profile: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // chromedriver and the Chromium it starts share the process group
        // made for chromedriver: kill them all.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let group = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            let _ = self.child.wait();
            // Until the group's last process is gone (and reaped).
            let deadline = Instant::now() + Duration::from_secs(5);
            while nix::sys::signal::killpg(group, None).is_ok() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

pub struct Browser {
    pub client: Client,
    /// chromedriver's base URL.
    driver_url: String,
    // Dropped after `client`: the session ends before its browser is killed.
    _driver: Driver,
    _slot: SemaphorePermit<'static>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session.
    pub async fn start() -> Self {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: run scripts/browser.sh (apt-get install chromium chromium-driver)"
            );
        }
        let slot = SLOTS.acquire().await.expect("semaphore open");
        let port = free_port();
        let profile =
            std::env::temp_dir().join(format!("rdev-console-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&profile).expect("profile dir");
        let child = rdev_tests::spawn_std(
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0),
        )
        .expect("start chromedriver");
        let driver = Driver { child, profile };
        let url = format!("http://127.0.0.1:{port}");
        wait_until_up(&url).await;

        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-background-networking",
                    "--disable-extensions",
                    "--no-first-run",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", driver.profile.display()),
                ],
            }),
        );
        caps.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL" }));
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&url)
            .await
            .expect("WebDriver session");
        Self {
            client,
            driver_url: url,
            _driver: driver,
            _slot: slot,
        }
    }

    /// Ends the session (Chromium quits); the driver is killed on drop.
    pub async fn close(self) {
        let Self {
            client,
            driver_url: _,
            _driver,
            _slot,
        } = self;
        let _ = client.close().await;
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("goto");
    }

    /// Runs `script` (a function body; `return` answers) in the page.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Runs `script` until it returns something other than `null`/`false`
    /// (polled every 20 ms); panics with `what` after [`WAIT`].
    pub async fn wait_js(&self, what: &str, script: &str, args: Vec<Value>) -> Value {
        self.wait_until(what, script, args, |v| {
            !matches!(v, Value::Null | Value::Bool(false))
        })
        .await
    }

    /// Runs `script` (polled every 20 ms) until `ready` accepts what it
    /// returns; panics with `what` and the last answer after [`WAIT`].
    pub async fn wait_until(
        &self,
        what: &str,
        script: &str,
        args: Vec<Value>,
        ready: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.js(script, args.clone()).await;
            if ready(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the page last answered {v}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until an element matches `css` and is shown.
    pub async fn wait_for(&self, css: &str) -> fantoccini::elements::Element {
        let js = "const e = document.querySelector(arguments[0]); \
                  return !!e && !e.closest('[hidden]') && e.getClientRects().length > 0;";
        self.wait_js(css, js, vec![json!(css)]).await;
        self.find(css).await
    }

    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
    }

    /// `textContent` of the first element matching `css` ("" if none).
    pub async fn text(&self, css: &str) -> String {
        self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';",
            vec![json!(css)],
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Types into an input (after clearing it).
    pub async fn fill(&self, css: &str, text: &str) {
        let e = self.wait_for(css).await;
        e.clear().await.expect("clear");
        e.send_keys(text).await.expect("type");
    }

    pub async fn click(&self, css: &str) {
        self.wait_for(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// The browser console's messages since the last call (chromedriver's
    /// `POST /session/{id}/se/log`, kept by `goog:loggingPrefs`).
    pub async fn console_messages(&self) -> Vec<String> {
        let id = self
            .client
            .session_id()
            .await
            .expect("session id")
            .expect("a session");
        let v: Value = reqwest::Client::new()
            .post(format!("{}/session/{id}/se/log", self.driver_url))
            .json(&json!({ "type": "browser" }))
            .send()
            .await
            .expect("browser log")
            .json()
            .await
            .expect("browser log JSON");
        v["value"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                format!(
                    "{} {}",
                    e["level"].as_str().unwrap_or_default(),
                    e["message"].as_str().unwrap_or_default()
                )
            })
            .collect()
    }

    /// Saves a PNG screenshot under the target directory's `test-artifacts/`
    /// and returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        // CARGO_TARGET_TMPDIR is `<target dir>/tmp`.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("target dir")
            .join("test-artifacts");
        std::fs::create_dir_all(&dir).expect("artifact dir");
        let path = dir.join(name);
        std::fs::write(&path, png).expect("write screenshot");
        path
    }
}

async fn wait_until_up(url: &str) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = http.get(format!("{url}/status")).send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "chromedriver did not answer on {url}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
