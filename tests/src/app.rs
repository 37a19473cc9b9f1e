//! [`spawn_app`]: the real API (and, when asked, a worker and a dispatcher)
//! on loopback ports, with a fresh database and AMQP prefix. Everything
//! stops and is removed when the [`TestApp`] drops.

use std::path::PathBuf;
use std::time::Duration;

use rdev_api::config::ApiConfig;
use rdev_shared::config::Secret;
use rdev_shared::db::keys;
use rdev_shared::domain::Scope;
use rdev_shared::lifecycle::{CancellationToken, Running};
use rdev_shared::secret;
use rdev_shared::test_support::TestEnv;

use crate::config::{api_config, dispatcher_config, worker_config};

/// What [`spawn_app_with`] starts, and how.
pub struct Options {
    /// Start an in-process worker (default: yes).
    pub worker: bool,
    /// Start an in-process dispatcher (default: no).
    pub dispatcher: bool,
    /// Overrides the API's broker URL (e.g. an unreachable one).
    pub api_amqp_url: Option<String>,
    /// Overrides the in-process worker's broker URL (e.g. through a proxy).
    pub worker_amqp_url: Option<String>,
    pub max_body_bytes: usize,
    pub kill_grace_s: u64,
    /// `RDEV_WEBHOOK_ALLOW_PRIVATE` of the API (receivers in tests are on loopback).
    pub webhook_allow_private: bool,
    pub concurrency: u16,
    pub lost_after_s: u64,
    /// `RDEV_REQUEUE_AFTER` of the dispatcher.
    pub requeue_after: Duration,
    pub sse_max_connections: usize,
    pub sse_max_per_key: usize,
    pub sse_max_lifetime: Duration,
    /// `RDEV_TRUSTED_PROXIES` of the API.
    pub trusted_proxies: &'static str,
    /// `RDEV_RATE_LIMIT` of the API.
    pub rate_limit: &'static str,
    /// `RDEV_EXECUTORS` of the API.
    pub executors: &'static str,
    /// `RDEV_COMMAND_LIMITS_MAX` of the API and the worker.
    pub limits_max: &'static str,
    /// Changes more settings of the API (after the ones above).
    pub api: Option<fn(&mut ApiConfig)>,
    /// Changes more settings of the worker (after the ones above).
    pub worker_cfg: Option<fn(&mut rdev_worker::Config)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            worker: true,
            dispatcher: false,
            api_amqp_url: None,
            worker_amqp_url: None,
            max_body_bytes: 1024 * 1024,
            kill_grace_s: 1,
            webhook_allow_private: true,
            concurrency: 4,
            lost_after_s: 30,
            requeue_after: Duration::from_secs(600),
            sse_max_connections: 10_000,
            sse_max_per_key: 100,
            sse_max_lifetime: Duration::from_secs(3600),
            trusted_proxies: "",
            // Generous: tests poll; rate-limit tests set per-key limits.
            rate_limit: "1000000/60s",
            executors: "local,kubernetes",
            limits_max: rdev_shared::containment::MAX_LIMITS,
            api: None,
            worker_cfg: None,
        }
    }
}

/// The services of one test, and how to talk to them.
pub struct TestApp {
    pub env: TestEnv,
    /// Base URL of the in-process worker's `/health`, `/ready`, `/metrics`.
    pub worker_ops: Option<String>,
    /// Base URL of the in-process dispatcher's ops endpoints.
    pub dispatcher_ops: Option<String>,
    pub base: String,
    /// Base URL of the API's operations listener (`/metrics`).
    pub api_ops: String,
    pub http: reqwest::Client,
    pub admin_key: String,
    pub workspace: PathBuf,
    /// Settings the API was started with (to start more instances alike).
    pub api_cfg: ApiConfig,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// [`spawn_app_with`] the default [`Options`].
pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

/// Starts the API (and the worker and dispatcher `opts` asks for) the way
/// each `main.rs` does, with `start(cfg, token)`, on a fresh database and
/// AMQP prefix, and creates an admin key.
pub async fn spawn_app_with(opts: Options) -> TestApp {
    crate::install_test_crypto();
    let env = TestEnv::new().await;
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    let workspace = std::env::temp_dir().join(format!("rdev-test-{}", env.topology.prefix()));
    std::fs::create_dir_all(&workspace).expect("workspace");

    let cfg = api_config(&env, &opts, &workspace);
    let api = rdev_api::start(cfg.clone(), stop.child_token())
        .await
        .expect("start api");
    let (base, api_ops) = (
        format!("http://{}", api.addr),
        format!("http://{}", api.ops_addr),
    );
    tasks.push(api.task);

    let mut worker_ops = None;
    if opts.worker {
        let mut wcfg = worker_config(&env, &workspace, opts.kill_grace_s);
        wcfg.concurrency = opts.concurrency;
        if let Some(url) = &opts.worker_amqp_url {
            wcfg.amqp.amqp_url = Secret::new(url.clone());
        }
        wcfg.limits.max = opts.limits_max.parse().expect("limits max");
        if let Some(tweak) = opts.worker_cfg {
            tweak(&mut wcfg);
        }
        let worker = rdev_worker::start(wcfg, stop.child_token())
            .await
            .expect("start worker");
        worker_ops = Some(format!("http://{}", worker.addr));
        tasks.push(worker.task);
    }
    let mut dispatcher_ops = None;
    if opts.dispatcher {
        let mut dcfg = dispatcher_config(&env);
        dcfg.lost_after_s = opts.lost_after_s;
        dcfg.requeue_after = opts.requeue_after;
        let d = rdev_dispatcher::start(dcfg, stop.child_token())
            .await
            .expect("start dispatcher");
        dispatcher_ops = Some(format!("http://{}", d.addr));
        tasks.push(d.task);
    }

    TestApp {
        worker_ops,
        dispatcher_ops,
        base,
        api_ops,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http"),
        admin_key: insert_admin_key(&env).await,
        workspace,
        api_cfg: cfg,
        env,
        stop,
        tasks,
    }
}

/// Inserts a key with the `admin` scope; returns its secret.
async fn insert_admin_key(env: &TestEnv) -> String {
    let generated = secret::generate_key();
    let client = env.pool.get().await.expect("db");
    keys::insert(
        &client,
        &keys::NewKey {
            name: "test-admin".into(),
            prefix: generated.prefix.clone(),
            hash: generated.hash,
            scopes: vec![Scope::Admin],
            project_ids: None,
        },
    )
    .await
    .expect("admin key");
    generated.secret
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
        for t in &self.tasks {
            t.abort();
        }
        let _ = std::fs::remove_dir_all(&self.workspace);
    }
}

impl TestApp {
    /// Starts another in-process worker on this app's database and broker
    /// (in the background: this returns at once); it stops when `stop` is
    /// cancelled or the app drops.
    pub fn start_worker(&mut self, concurrency: u16, stop: CancellationToken) {
        let mut cfg = worker_config(&self.env, &self.workspace, 1);
        cfg.concurrency = concurrency;
        let token = self.either_stop(stop);
        self.tasks.push(tokio::spawn(async move {
            let worker = rdev_worker::start(cfg, token)
                .await
                .unwrap_or_else(|e| panic!("worker failed: {e}"));
            let _ = worker.task.await;
        }));
    }

    /// Starts a second API instance on the same database and broker; it
    /// stops when `stop` is cancelled or the app drops.
    pub async fn start_api(
        &mut self,
        stop: CancellationToken,
    ) -> (String, tokio::task::JoinHandle<()>) {
        let token = self.either_stop(stop);
        let api = self.start_api_with(token).await;
        (format!("http://{}", api.addr), api.task)
    }

    /// Starts another API instance on the same database and broker prefix;
    /// returns its base URL. It stops with the `TestApp`.
    pub async fn spawn_api(&mut self) -> String {
        let api = self.start_api_with(self.stop.child_token()).await;
        self.tasks.push(api.task);
        format!("http://{}", api.addr)
    }

    async fn start_api_with(&self, token: CancellationToken) -> Running {
        rdev_api::start(self.api_cfg.clone(), token)
            .await
            .expect("start api")
    }

    /// A token cancelled by `stop` or when the app drops.
    fn either_stop(&self, stop: CancellationToken) -> CancellationToken {
        let token = self.stop.child_token();
        let cancel = token.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => cancel.cancel(),
                () = cancel.cancelled() => {}
            }
        });
        token
    }
}
