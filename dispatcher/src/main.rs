use anyhow::Context;
use clap::Parser;
use rdev_dispatcher::config::Config;
use rdev_shared::crypto::{self, CryptoConfig};
use rdev_shared::lifecycle;

/// The dispatcher's settings and the key ring it opens webhook secrets with.
#[derive(Parser)]
#[command(
    name = "rdev-dispatcher",
    version,
    about = "rdev-dispatcher: webhook delivery and rdev's background loops (outbox relay, lost-worker reaper)"
)]
struct Cli {
    #[command(flatten)]
    cfg: Config,
    #[command(flatten)]
    crypto: CryptoConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Both rustls crypto backends are compiled in; pick one before any TLS.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let Cli { cfg, crypto: keys } = Cli::parse();
    let _telemetry = rdev_shared::telemetry::init(&cfg.log, "rdev-dispatcher");
    // Refuses to start without a key unless RDEV_ALLOW_UNENCRYPTED=1.
    crypto::install(keys.ring()?);
    let running = rdev_dispatcher::start(cfg, lifecycle::on_shutdown_signal())
        .await
        .context("starting rdev-dispatcher")?;
    running.task.await.context("dispatcher task")?;
    Ok(())
}
