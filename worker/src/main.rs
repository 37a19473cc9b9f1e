//! `rdev-worker`: parse the configuration, set up logging, run until SIGTERM or SIGINT.

use clap::Parser;
use rdev_shared::crypto::{self, CryptoConfig};
use rdev_shared::lifecycle;
use rdev_worker::Config;

/// The worker's settings and the key ring it opens command env/stdin with.
#[derive(Parser)]
#[command(
    name = "rdev-worker",
    version,
    about = "Runs rdev commands taken from RabbitMQ"
)]
struct Cli {
    #[command(flatten)]
    cfg: Config,
    #[command(flatten)]
    crypto: CryptoConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Nothing the worker inherited without close-on-exec (a supervisor's
    // pipe or socket) passes on to the processes it starts. Each sandbox's
    // init does the same for its command; this covers RDEV_LOCAL_SANDBOX=off
    // too. Kernels before 5.11 refuse the flag; the init still holds then.
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on this
    // process's descriptors.
    unsafe {
        nix::libc::syscall(
            nix::libc::SYS_close_range,
            3u32,
            u32::MAX,
            nix::libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    let Cli { cfg, crypto: keys } = Cli::parse();
    let _telemetry = rdev_shared::telemetry::init(&cfg.log, "rdev-worker");
    // Refuses to start without a key unless RDEV_ALLOW_UNENCRYPTED=1.
    crypto::install(keys.ring()?);
    let running = rdev_worker::start(cfg, lifecycle::on_shutdown_signal()).await?;
    running.task.await?;
    Ok(())
}
