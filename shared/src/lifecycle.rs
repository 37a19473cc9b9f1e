//! How every rdev service starts and stops: one [`CancellationToken`] per
//! process asks everything to stop, [`shutdown_signal`] cancels it on
//! SIGTERM or SIGINT, and `start(cfg, shutdown)` of each binary crate
//! (`rdev_api::start`, `rdev_worker::start`, `rdev_dispatcher::start`)
//! binds its listeners and returns a [`Running`] once they accept. Tests
//! and each `main.rs` start the services the same way.

use std::net::SocketAddr;

pub use tokio_util::sync::CancellationToken;

/// A service that has started: its listeners accept, and `task` completes
/// once it has stopped after its `shutdown` token was cancelled.
#[derive(Debug)]
pub struct Running {
    /// The main listener's address (the HTTP API's for `rdev-api`, the
    /// operations endpoints' for the worker and the dispatcher). Useful
    /// with port 0.
    pub addr: SocketAddr,
    /// Where `/health`, `/ready` and `/metrics` answer: the operations
    /// listener of `rdev-api`, the same as `addr` for the others.
    pub ops_addr: SocketAddr,
    /// Completes when the service has stopped.
    pub task: tokio::task::JoinHandle<()>,
}

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C). Where SIGTERM cannot be
/// listened for, only SIGINT stops the process, and the log says so.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM; only SIGINT stops this process");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    tracing::info!("shutdown requested");
}

/// A token cancelled by [`shutdown_signal`]: what each `main.rs` hands to
/// its service's `start`.
pub fn on_shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        cancel.cancel();
    });
    token
}
