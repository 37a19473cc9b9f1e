//! Prometheus metrics. Each process builds one [`Metrics`] (its own
//! registry, so several services in one test process do not share
//! counters) and renders it at `/metrics` in the text exposition format.
//! Names follow https://prometheus.io/docs/practices/naming/.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use std::sync::Arc;

use crate::domain::CommandStatus;
use deadpool_postgres::Pool;

/// Buckets for request and delivery latencies, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets for command durations, in seconds.
const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// Every metric rdev exports. All binaries register all of them (a metric a
/// binary never touches stays at zero), so dashboards and alerts can rely on
/// the names existing.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// HTTP requests by route template and status code.
    pub http_requests_total: IntCounterVec,
    /// HTTP request latency by route template.
    pub http_request_duration_seconds: HistogramVec,
    /// Open SSE connections on this instance.
    pub sse_connections_active: IntGauge,
    /// Commands running on this worker.
    pub commands_active: IntGauge,
    /// Commands finished, by terminal status.
    pub commands_total: IntCounterVec,
    /// Wall-clock run time of finished commands.
    pub command_duration_seconds: Histogram,
    /// Bytes of output produced by commands (stored or not).
    pub command_output_bytes_total: IntCounter,
    /// Messages published, by exchange kind.
    pub amqp_published_total: IntCounterVec,
    /// Messages consumed, by queue kind.
    pub amqp_consumed_total: IntCounterVec,
    /// Outbox rows not yet published.
    pub outbox_pending: IntGauge,
    /// Webhook delivery attempts, by outcome.
    pub webhook_deliveries_total: IntCounterVec,
    /// Webhook attempt latency.
    pub webhook_delivery_duration_seconds: Histogram,
    /// Circuit breaker state by target (0 closed, 1 open, 2 half-open).
    pub circuit_breaker_state: IntGaugeVec,
    /// Cache hits by cache.
    pub cache_hits_total: IntCounterVec,
    /// Cache misses by cache.
    pub cache_misses_total: IntCounterVec,
    /// Database pool connections by state (`idle`, `in_use`, `max`).
    pub db_pool_connections: IntGaugeVec,
    /// Resident memory of this process.
    pub process_resident_memory_bytes: IntGauge,
    /// Rows deleted by retention, by kind.
    pub retention_deleted_total: IntCounterVec,
    /// The worker's batched statements (`claim`, `finish`) written.
    pub db_batches_total: IntCounterVec,
    /// Commands those statements carried: divided by
    /// `db_batches_total`, the mean batch size.
    pub db_batched_commands_total: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
    // Names are constants and unique: registration cannot fail.
    let _ = r.register(Box::new(m.clone()));
    m
}

impl Metrics {
    /// A fresh registry for `service` (added as a constant label).
    pub fn new(service: &str) -> Self {
        let registry = Registry::new_custom(
            None,
            Some(std::iter::once(("service".to_owned(), service.to_owned())).collect()),
        )
        .unwrap_or_default();
        let r = &registry;
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(
                r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let m = Metrics {
            http_requests_total: counter_vec(
                "http_requests_total",
                "HTTP requests by route and status.",
                &["route", "status"],
            ),
            http_request_duration_seconds: reg(
                r,
                HistogramVec::new(
                    HistogramOpts::new("http_request_duration_seconds", "HTTP request latency.")
                        .buckets(LATENCY_BUCKETS.to_vec()),
                    &["route"],
                )
                .expect("valid metric"),
            ),
            sse_connections_active: reg(
                r,
                IntGauge::new("sse_connections_active", "Open SSE connections.").expect("valid"),
            ),
            commands_active: reg(
                r,
                IntGauge::new("commands_active", "Commands running on this worker.")
                    .expect("valid"),
            ),
            commands_total: counter_vec(
                "commands_total",
                "Finished commands by status.",
                &["status"],
            ),
            command_duration_seconds: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "command_duration_seconds",
                        "Run time of finished commands.",
                    )
                    .buckets(DURATION_BUCKETS.to_vec()),
                )
                .expect("valid"),
            ),
            command_output_bytes_total: reg(
                r,
                IntCounter::new(
                    "command_output_bytes_total",
                    "Bytes of command output produced.",
                )
                .expect("valid"),
            ),
            amqp_published_total: counter_vec(
                "amqp_published_total",
                "AMQP messages published by exchange kind.",
                &["exchange"],
            ),
            amqp_consumed_total: counter_vec(
                "amqp_consumed_total",
                "AMQP messages consumed by queue kind.",
                &["queue"],
            ),
            outbox_pending: reg(
                r,
                IntGauge::new("outbox_pending", "Outbox rows not yet published.").expect("valid"),
            ),
            webhook_deliveries_total: counter_vec(
                "webhook_deliveries_total",
                "Webhook delivery attempts by outcome.",
                &["outcome"],
            ),
            webhook_delivery_duration_seconds: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "webhook_delivery_duration_seconds",
                        "Webhook attempt latency.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                )
                .expect("valid"),
            ),
            circuit_breaker_state: reg(
                r,
                IntGaugeVec::new(
                    Opts::new("circuit_breaker_state", "0 closed, 1 open, 2 half-open."),
                    &["target"],
                )
                .expect("valid"),
            ),
            cache_hits_total: counter_vec("cache_hits_total", "Cache hits.", &["cache"]),
            cache_misses_total: counter_vec("cache_misses_total", "Cache misses.", &["cache"]),
            db_pool_connections: reg(
                r,
                IntGaugeVec::new(
                    Opts::new("db_pool_connections", "Database pool connections by state."),
                    &["state"],
                )
                .expect("valid"),
            ),
            process_resident_memory_bytes: reg(
                r,
                IntGauge::new(
                    "process_resident_memory_bytes",
                    "Resident memory size in bytes.",
                )
                .expect("valid"),
            ),
            retention_deleted_total: counter_vec(
                "retention_deleted_total",
                "Rows deleted by retention, by kind.",
                &["kind"],
            ),
            db_batches_total: counter_vec(
                "db_batches_total",
                "Batched claim or finish statements written by the worker, by kind.",
                &["kind"],
            ),
            db_batched_commands_total: counter_vec(
                "db_batched_commands_total",
                "Commands carried by the worker's batched statements, by kind.",
                &["kind"],
            ),
            registry,
        };
        // Labelled series exist from the start (zero), so they are scrapeable.
        for s in CommandStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            m.commands_total.with_label_values(&[s.as_str()]);
        }
        for x in ["commands", "events", "output", "control"] {
            m.amqp_published_total.with_label_values(&[x]);
        }
        for kind in ["claim", "finish"] {
            m.db_batches_total.with_label_values(&[kind]);
            m.db_batched_commands_total.with_label_values(&[kind]);
        }
        for q in ["commands", "webhooks", "output", "control"] {
            m.amqp_consumed_total.with_label_values(&[q]);
        }
        for o in ["succeeded", "failed", "dead", "skipped"] {
            m.webhook_deliveries_total.with_label_values(&[o]);
        }
        for c in ["api_keys", "projects", "pods", "rate_budgets"] {
            m.cache_hits_total.with_label_values(&[c]);
            m.cache_misses_total.with_label_values(&[c]);
        }
        for s in ["idle", "in_use", "max"] {
            m.db_pool_connections.with_label_values(&[s]);
        }
        m
    }

    /// Renders the text exposition, refreshing the pool and memory gauges.
    pub fn render(&self, pool: Option<&Pool>) -> String {
        if let Some(pool) = pool {
            let st = pool.status();
            let idle = i64::try_from(st.available).unwrap_or(0);
            let size = i64::try_from(st.size).unwrap_or(0);
            self.db_pool_connections
                .with_label_values(&["idle"])
                .set(idle);
            self.db_pool_connections
                .with_label_values(&["in_use"])
                .set(size - idle);
            self.db_pool_connections
                .with_label_values(&["max"])
                .set(i64::try_from(st.max_size).unwrap_or(0));
        }
        if let Some(rss) = resident_memory_bytes() {
            self.process_resident_memory_bytes.set(rss);
        }
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Resident set size from `/proc/self/statm` (Linux).
pub fn resident_memory_bytes() -> Option<i64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // The page size is 4 KiB on the platforms rdev targets (x86_64, aarch64 Linux defaults).
    Some(pages * 4096)
}

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `/metrics` route of every rdev service: `metrics` in the text
/// exposition format, with `pool`'s connection gauges brought up to date.
pub fn route<S>(metrics: Arc<Metrics>, pool: Pool) -> axum::routing::MethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    axum::routing::get(move || {
        let body = metrics.render(Some(&pool));
        std::future::ready(([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], body))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_metric_is_exported() {
        let m = Metrics::new("test");
        m.sse_connections_active.inc();
        // Series with free-form labels appear once observed.
        m.http_requests_total
            .with_label_values(&["/health", "200"])
            .inc();
        m.http_request_duration_seconds
            .with_label_values(&["/health"])
            .observe(0.001);
        m.circuit_breaker_state
            .with_label_values(&["example.com"])
            .set(0);
        let text = m.render(None);
        for name in [
            "sse_connections_active",
            "commands_active",
            "commands_total",
            "command_duration_seconds",
            "command_output_bytes_total",
            "http_requests_total",
            "http_request_duration_seconds",
            "amqp_published_total",
            "circuit_breaker_state",
            "amqp_consumed_total",
            "outbox_pending",
            "webhook_deliveries_total",
            "webhook_delivery_duration_seconds",
            "cache_hits_total",
            "cache_misses_total",
            "db_pool_connections",
            "process_resident_memory_bytes",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
        assert!(
            text.contains("sse_connections_active{service=\"test\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("commands_total{status=\"timed_out\",service=\"test\"} 0"),
            "{text}"
        );
    }
}
