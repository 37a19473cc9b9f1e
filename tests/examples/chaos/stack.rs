//! The services under test: two `rdev-api`, two `rdev-worker` and one
//! `rdev-dispatcher` process, started, killed and restarted by the run.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::servers::{Postgres, Rabbit, free_port};
use crate::{ENCRYPTION_KEYS, Failures, PREFIX, fail};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Api,
    Worker,
    Dispatcher,
}

pub struct Service {
    kind: Kind,
    name: String,
    env: Vec<(String, String)>,
    args: Vec<String>,
    child: Option<Child>,
    /// RSS (KiB) a few seconds after the first start, and restarts so far.
    first_rss: u64,
    restarts: u32,
    started: Instant,
}

pub struct Stack {
    bin: PathBuf,
    logs: PathBuf,
    services: Vec<Service>,
}

impl Service {
    fn new(kind: Kind, name: String, env: Vec<(String, String)>, args: Vec<String>) -> Self {
        Self {
            kind,
            name,
            env,
            args,
            child: None,
            first_rss: 0,
            restarts: 0,
            started: Instant::now(),
        }
    }
}

impl Stack {
    fn spawn(&self, s: &mut Service) {
        let exe = self.bin.join(match s.kind {
            Kind::Api => "rdev-api",
            Kind::Worker => "rdev-worker",
            Kind::Dispatcher => "rdev-dispatcher",
        });
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{}.log", s.name)))
            .expect("log");
        let mut cmd = Command::new(exe);
        cmd.args(&s.args)
            .envs(s.env.iter().cloned())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .kill_on_drop(true);
        s.child = Some(cmd.spawn().expect("spawn service"));
        s.started = Instant::now();
    }

    fn signal(s: &mut Service, sig: nix::sys::signal::Signal) -> Option<Child> {
        let child = s.child.take()?;
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
        }
        Some(child)
    }
}

/// The environment every service shares, plus `extra`.
fn env_with(common: &[(String, String)], extra: &[(&str, String)]) -> Vec<(String, String)> {
    let mut e = common.to_vec();
    e.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    e
}

/// The two APIs and their base URLs.
fn apis(common: &[(String, String)]) -> (Vec<Service>, Vec<String>) {
    let mut services = Vec::new();
    let mut apis = Vec::new();
    for i in 0..2 {
        let port = free_port();
        apis.push(format!("http://127.0.0.1:{port}"));
        services.push(Service::new(
            Kind::Api,
            format!("api{i}"),
            env_with(
                common,
                &[
                    ("RDEV_LISTEN", format!("127.0.0.1:{port}")),
                    ("RDEV_OPS_LISTEN", format!("127.0.0.1:{}", free_port())),
                    ("RDEV_MIGRATE", "0".into()),
                    ("RDEV_WEBHOOK_ALLOW_PRIVATE", "1".into()),
                    ("RDEV_RATE_LIMIT", "1000000/60s".into()),
                    ("RDEV_SSE_POLL", "500ms".into()),
                ],
            ),
            vec!["serve".into()],
        ));
    }
    (services, apis)
}

fn worker(i: usize, common: &[(String, String)], workspace: &Path) -> Service {
    // Killed workers cannot remove the sandbox init they installed: keep
    // it in the run's directory, which a passing run removes.
    let tmp = workspace.with_file_name("tmp");
    std::fs::create_dir_all(&tmp).expect("the workers' TMPDIR");
    Service::new(
        Kind::Worker,
        format!("worker{i}"),
        env_with(
            common,
            &[
                ("RDEV_LISTEN", format!("127.0.0.1:{}", free_port())),
                ("RDEV_WORKSPACE_ROOT", workspace.display().to_string()),
                ("TMPDIR", tmp.display().to_string()),
                ("RDEV_WORKER_CONCURRENCY", "4".into()),
                ("RDEV_WORKER_ID", format!("chaos-worker{i}")),
                ("RDEV_HEARTBEAT_S", "1".into()),
                ("RDEV_DRAIN_S", "3".into()),
                ("RDEV_KILL_GRACE_S", "1".into()),
                ("RDEV_EXECUTORS", "local".into()),
            ],
        ),
        vec![],
    )
}

fn dispatcher(common: &[(String, String)]) -> Service {
    Service::new(
        Kind::Dispatcher,
        "dispatcher".into(),
        env_with(
            common,
            &[
                ("RDEV_LISTEN", format!("127.0.0.1:{}", free_port())),
                ("RDEV_LOST_AFTER_S", "8".into()),
                ("RDEV_REQUEUE_AFTER", "20s".into()),
                ("RDEV_RELAY_MIN_AGE", "2s".into()),
                ("RDEV_WEBHOOK_ALLOW_PRIVATE", "1".into()),
                (
                    "RDEV_WEBHOOK_RETRY_SCHEDULE",
                    "0s,1s,2s,3s,5s,5s,5s,5s,5s,5s".into(),
                ),
                ("RDEV_WEBHOOK_POLL", "200ms".into()),
                ("RDEV_WEBHOOK_BREAKER_THRESHOLD", "1000".into()),
            ],
        ),
        vec![],
    )
}

impl Stack {
    /// Starts every service on the private servers; returns the stack and
    /// the APIs' base URLs.
    pub fn start(
        bin: PathBuf,
        logs: &Path,
        workspace: &Path,
        pg: &Postgres,
        rabbit: &Rabbit,
    ) -> (Self, Vec<String>) {
        let common = vec![
            ("DATABASE_URL".to_owned(), pg.url()),
            ("AMQP_URL".to_owned(), rabbit.url()),
            ("RDEV_AMQP_PREFIX".to_owned(), PREFIX.to_owned()),
            (
                "RDEV_ENCRYPTION_KEYS".to_owned(),
                ENCRYPTION_KEYS.to_owned(),
            ),
            ("RDEV_DB_POOL_SIZE".to_owned(), "8".to_owned()),
        ];
        let (mut services, apis) = apis(&common);
        for i in 0..2 {
            services.push(worker(i, &common, workspace));
        }
        services.push(dispatcher(&common));
        let mut stack = Stack {
            bin,
            logs: logs.to_path_buf(),
            services: Vec::new(),
        };
        for mut s in services {
            stack.spawn(&mut s);
            stack.services.push(s);
        }
        (stack, apis)
    }

    /// Notes every service's resident memory as its starting point.
    pub fn note_first_rss(&mut self) {
        for s in &mut self.services {
            if let Some(pid) = s.child.as_ref().and_then(Child::id) {
                s.first_rss = rss_kib(pid);
            }
        }
    }

    /// Kills the `round`-th service of `kind` (modulo their number) with
    /// `sig`, waits for it, and starts it again.
    pub async fn restart(&mut self, kind: Kind, sig: nix::sys::signal::Signal, round: u32) {
        let candidates: Vec<usize> = self
            .services
            .iter()
            .enumerate()
            .filter(|(_, s)| s.kind == kind)
            .map(|(i, _)| i)
            .collect();
        let i = candidates[(round as usize) % candidates.len()];
        let s = &mut self.services[i];
        if let Some(mut child) = Stack::signal(s, sig) {
            let _ = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;
            let _ = child.kill().await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut s = self.services.remove(i);
        s.restarts += 1;
        self.spawn(&mut s);
        self.services.insert(i, s);
    }

    /// One line per API and worker: resident memory at the start and now.
    pub fn rss_report(&self) -> Vec<String> {
        let mut rss = Vec::new();
        for s in &self.services {
            if s.kind == Kind::Dispatcher {
                continue;
            }
            let now = s.child.as_ref().and_then(Child::id).map_or(0, rss_kib);
            rss.push(format!(
                "{} {} KiB -> {} KiB ({} restarts; this process up {} s)",
                s.name,
                s.first_rss,
                now,
                s.restarts,
                s.started.elapsed().as_secs()
            ));
        }
        rss
    }

    /// Stops every service with SIGTERM; one that takes over 20 s is a
    /// failure (and is killed).
    pub async fn stop_all(&mut self, failures: &Failures) {
        for s in &mut self.services {
            if let Some(mut c) = Stack::signal(s, nix::sys::signal::Signal::SIGTERM)
                && tokio::time::timeout(Duration::from_secs(20), c.wait())
                    .await
                    .is_err()
            {
                fail(
                    failures,
                    format!("{} did not stop on SIGTERM within 20 s", s.name),
                );
                let _ = c.kill().await;
            }
        }
    }
}
