use anyhow::Context;
use clap::Parser;
use rdev_dispatcher::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Both rustls crypto backends are compiled in; pick one before any TLS.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cfg = Config::parse();
    let _telemetry = rdev_shared::telemetry::init(&cfg.log, "rdev-dispatcher");
    let d = rdev_dispatcher::start(cfg, shutdown_signal())
        .await
        .context("starting rdev-dispatcher")?;
    d.task.await.context("dispatcher task")?;
    tracing::info!("rdev-dispatcher stopped");
    Ok(())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term => {} }
    tracing::info!("shutdown requested");
}
