//! The settings the harness starts each service with: the documented
//! defaults (`Config::local`), on the test's database and AMQP prefix, with
//! what tests need changed (port 0, short timers).

use std::path::Path;
use std::time::Duration;

use rdev_api::config::ApiConfig;
use rdev_shared::config::{AmqpConfig, Secret};
use rdev_shared::test_support::TestEnv;

use crate::app::Options;

/// The API's settings for `opts`.
pub fn api_config(env: &TestEnv, opts: &Options, workspace: &Path) -> ApiConfig {
    let mut api_amqp = env.amqp.clone();
    if let Some(url) = &opts.api_amqp_url {
        api_amqp = AmqpConfig {
            amqp_url: Secret::new(url.clone()),
            ..env.amqp.clone()
        };
    }
    let mut cfg = ApiConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        ops_listen: "127.0.0.1:0".parse().expect("addr"),
        migrate: false,
        max_body_bytes: opts.max_body_bytes,
        max_timeout_s: 86_400,
        sse_keepalive: Duration::from_secs(1),
        sse_poll: Duration::from_millis(500),
        webhook_allow_private: opts.webhook_allow_private,
        sse_max_connections: opts.sse_max_connections,
        sse_max_per_key: opts.sse_max_per_key,
        sse_max_lifetime: opts.sse_max_lifetime,
        cache_ttl: Duration::from_secs(30),
        trusted_proxies: opts.trusted_proxies.parse().expect("trusted proxies"),
        rate_limit: opts.rate_limit.parse().expect("rate limit"),
        executors: opts.executors.parse().expect("executors"),
        limits: rdev_shared::containment::LimitsConfig {
            max: opts.limits_max.parse().expect("limits max"),
            ..Default::default()
        },
        // Tests hammer the API from one address with made-up keys.
        auth_failure_limit: "1000000/60s".parse().expect("auth failure limit"),
        // The files API serves the worker's workspace (one volume).
        workspace_root: Some(workspace.to_path_buf()),
        ..ApiConfig::local(env.db.clone(), api_amqp)
    };
    if let Some(tweak) = opts.api {
        tweak(&mut cfg);
    }
    cfg
}

/// A worker's settings: local executor, short heartbeat and drain.
pub fn worker_config(env: &TestEnv, workspace: &Path, kill_grace_s: u64) -> rdev_worker::Config {
    rdev_worker::Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        workspace_root: workspace.to_path_buf(),
        heartbeat_s: 1,
        kill_grace_s,
        drain_s: 2,
        executors: "local".parse().expect("executors"),
        ..rdev_worker::Config::local(env.db.clone(), env.amqp.clone())
    }
}

/// A dispatcher's settings: fast relay and delivery loop, loopback
/// webhooks allowed, a short retry schedule.
pub fn dispatcher_config(env: &TestEnv) -> rdev_dispatcher::config::Config {
    rdev_dispatcher::config::Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        relay_interval: Duration::from_millis(100),
        relay_min_age: Duration::ZERO,
        webhook_retry_schedule: rdev_dispatcher::webhooks::schedule::parse_schedule("0s,1s,1s")
            .expect("schedule"),
        webhook_timeout_s: 5,
        webhook_allow_private: true,
        webhook_disable_after: Duration::from_secs(3600),
        webhook_poll: Duration::from_millis(100),
        // High: tests that want the breaker set their own threshold.
        webhook_breaker_threshold: 1000,
        ..rdev_dispatcher::config::Config::local(env.db.clone(), env.amqp.clone())
    }
}
