//! End-to-end tests: real API, worker and dispatcher against real PostgreSQL
//! and RabbitMQ. Each test has its own database and AMQP prefix.

mod access;
mod api_errors;
mod commands;
mod containment;
mod cutproxy;
mod faults;
mod files;
mod fleet;
mod group_commit;
mod interactive;
mod kube_files;
mod observability;
mod openapi;
mod projects;
mod secrets;
mod sse;
mod wait;
mod webhooks;

/// The same allocator and profiling settings as `rdev-api`, so the in-process
/// API can serve heap profiles.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[allow(non_upper_case_globals)]
#[unsafe(export_name = "malloc_conf")]
pub static malloc_conf: &[u8] =
    b"prof:true,prof_active:true,lg_prof_sample:19,background_thread:true,dirty_decay_ms:1000\0";
