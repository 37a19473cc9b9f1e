//! What one local command's start costs end to end, one at a time: `true`
//! through the local executor (the worker's own path from a job to its
//! outcome), with no warm sandbox, so every iteration makes its sandbox,
//! runs the command and takes it down. Five ways: sandboxed with the small
//! init the worker carries (the default), the same with bubblewrap's own
//! `/dev` instead of the prepared one (`RDEV_SANDBOX_PTYS=always`), and
//! with `rdev-sandbox-init`, and with the sandbox off through either
//! launcher. A sixth, `sandboxed/small_init/reused`, runs each `true` in a
//! sandbox that served the one before (`RDEV_SANDBOX_REUSE=on`); each
//! iteration waits, untimed, for the sandbox's return to the pool. Needs bubblewrap and
//! `rdev-sandbox-init` built beside the bench (`cargo build -p
//! rdev-worker --bins --release` first). Run: `cargo bench -p rdev-worker
//! --bench start`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use rdev_shared::containment::{LimitsConfig, NetworkMode, ResourceLimits};
use rdev_shared::domain::{CommandSpec, ExecutorConfig, LocalSettings};
use rdev_worker::executor::{Executor, Job, LocalExecutor, Outcome};
use rdev_worker::sandbox::{PtysMode, Sandbox, SandboxConfig, SandboxMode};
use tokio_util::sync::CancellationToken;

fn job() -> Job {
    Job {
        name: format!("bench-{:016x}", rand::random::<u64>()),
        spec: CommandSpec::Shell("true".into()),
        env: BTreeMap::new(),
        stdin: None,
        stdin_pipe: false,
        tty: None,
        executor: ExecutorConfig::Local(LocalSettings::default()),
        project: "bench".into(),
        timeout: Duration::from_secs(30),
        network: NetworkMode::Host,
        limits: ResourceLimits::default(),
        secrets: Default::default(),
    }
}

async fn run(exec: &LocalExecutor) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let drain = async move { while rx.recv().await.is_some() {} };
    let (outcome, ()) = tokio::join!(exec.run(job(), tx, None, CancellationToken::new()), drain);
    assert_eq!(outcome, Outcome::Exited(0));
}

fn start(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let root =
        std::env::temp_dir().join(format!("rdev-bench-start-{:016x}", rand::random::<u64>()));
    let init: PathBuf =
        rdev_worker::sandbox::init::locate(None).expect("rdev-sandbox-init is built");
    let mut g = c.benchmark_group("start_true");
    let (on, off, dev) = (SandboxMode::On, SandboxMode::Off, PtysMode::Terminal);
    for (name, mode, init, ptys) in [
        ("sandboxed/small_init", on, None, dev),
        ("sandboxed/small_init/bwrap_dev", on, None, PtysMode::Always),
        ("sandboxed/rdev-sandbox-init", on, Some(init.clone()), dev),
        ("sandbox_off/small_init", off, None, dev),
        (
            "sandbox_off/rdev-sandbox-init",
            off,
            Some(init.clone()),
            dev,
        ),
    ] {
        let cfg = SandboxConfig {
            mode,
            init,
            warm: Some(0),
            ptys,
            ..SandboxConfig::default()
        };
        let ws = root.join("ws");
        let exec = rt.block_on(async {
            let worker = format!("bench-{:08x}", rand::random::<u32>());
            let sandbox = Sandbox::start(&cfg, LimitsConfig::default(), &worker, &ws).await;
            LocalExecutor::new(ws, Duration::from_millis(500), Arc::new(sandbox))
        });
        g.bench_function(name, |b| b.iter(|| rt.block_on(run(&exec))));
    }
    let reused = SandboxConfig {
        warm: Some(1),
        ..SandboxConfig::default()
    };
    let ws = root.join("ws");
    let exec = rt.block_on(async {
        let worker = format!("bench-{:08x}", rand::random::<u32>());
        let sandbox = Sandbox::start(&reused, LimitsConfig::default(), &worker, &ws).await;
        assert_eq!(sandbox.status().reuse.as_deref(), Some("on"));
        let exec = LocalExecutor::new(ws, Duration::from_millis(500), Arc::new(sandbox));
        // Its end leaves the pool a sandbox of the bench's workdir.
        run(&exec).await;
        exec
    });
    g.bench_function("sandboxed/small_init/reused", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    while exec.sandbox().warm_ready() == 0 {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                    let t = std::time::Instant::now();
                    run(&exec).await;
                    spent += t.elapsed();
                }
                spent
            })
        });
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&root);
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .sample_size(30)
}

criterion_group! { name = benches; config = config(); targets = start }
criterion_main!(benches);
