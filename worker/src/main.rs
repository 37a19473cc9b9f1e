//! `rdev-worker`: parse the configuration, set up logging, run until SIGTERM or SIGINT.

use clap::Parser;
use rdev_shared::crypto::{self, CryptoConfig};
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
    let Cli { cfg, crypto: keys } = Cli::parse();
    let _telemetry = rdev_shared::telemetry::init(&cfg.log, "rdev-worker");
    // Refuses to start without a key unless RDEV_ALLOW_UNENCRYPTED=1.
    crypto::install(keys.ring()?);
    rdev_worker::run(cfg, shutdown_signal()).await?;
    Ok(())
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the worker");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
