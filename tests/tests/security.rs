//! The security suite (issue 16): one test per hardening item, each against
//! the real API (and, where needed, a second instance, the worker or the
//! dispatcher) on its own database and AMQP prefix.
//!
//! Run: `cargo test -p rdev-tests --test security`.

#[path = "security/access.rs"]
mod access;
#[path = "security/database.rs"]
mod database;
#[path = "security/input.rs"]
mod input;
#[path = "security/queries.rs"]
mod queries;
#[path = "security/secrets.rs"]
mod secrets;
#[path = "security/tls.rs"]
mod tls;

/// The same allocator as `rdev-api`.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
