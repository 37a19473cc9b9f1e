//! `rdev-tests`: end-to-end tests of rdev, and the harness every test
//! binary here shares. [`spawn_app`] starts the real API (and a worker and
//! a dispatcher when asked) in-process against real PostgreSQL and
//! RabbitMQ, each test on its own database and AMQP prefix, the way each
//! binary's `main.rs` starts them (`start(cfg, shutdown) -> Running`).
//! The tests live in `tests/` (`e2e/` is the main suite).

mod app;
mod client;
mod config;
mod process;

pub use app::{Options, TestApp, spawn_app, spawn_app_with};
pub use client::{Resp, Sse, sse_seqs, sse_text};
pub use config::{api_config, dispatcher_config, worker_config};
pub use process::{
    KilledWorker, first_line, marked_processes, output_std, process_gone, sleep_marker, spawn,
    spawn_std, wait_no_marked,
};

/// The key ring every in-process service of the tests seals secrets with
/// (`RDEV_ENCRYPTION_KEYS` of a subprocess started by a test).
pub const TEST_ENCRYPTION_KEYS: &str = "test1:dGVzdC1vbmx5LWtleS1mb3ItcmRldi10ZXN0cy0zMmI=";

/// Picks the rustls provider and installs [`TEST_ENCRYPTION_KEYS`] (what
/// each `main.rs` does before starting its service). Idempotent.
pub fn install_test_crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    rdev_shared::crypto::install(
        rdev_shared::crypto::KeyRing::parse(TEST_ENCRYPTION_KEYS).expect("test key ring"),
    );
}
