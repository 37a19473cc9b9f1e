//! `rdev bench …`: the benchmark scenarios' options (docs/BENCHMARKS.md).

use clap::builder::TypedValueParser as _;
use clap::{Args, Subcommand};

/// `rdev bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Seed of the workload's randomness (the priorities of enqueued commands)
    #[arg(long, default_value_t = 1, global = true)]
    pub seed: u64,
    /// Project to run in (created, with the local executor, when missing)
    #[arg(long, short, default_value = "bench", global = true)]
    pub project: String,
    /// The scenario.
    #[command(subcommand)]
    pub scenario: BenchCmd,
}

/// `rdev bench` scenarios.
#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// POST commands from N concurrent clients for a while: requests/s, latency, errors
    Enqueue(EnqueueArgs),
    /// N commands from enqueue to terminal status: throughput, queue-to-start, enqueue-to-finish
    E2e(E2eArgs),
    /// W watchers of one command writing B bytes at R bytes/s: completeness, lag, API RSS
    Sse(SseArgs),
    /// An embedded webhook receiver and N commands: deliveries/s, event-to-delivery latency
    Webhooks(WebhooksArgs),
    /// Keystroke-to-echo round trips of a remote terminal over the WebSocket and over HTTP+SSE
    Interactive(InteractiveBenchArgs),
}

/// `rdev bench interactive`.
#[derive(Debug, Args)]
pub struct InteractiveBenchArgs {
    /// Keystrokes the measuring session types (each after the last echo), per transport
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=1_000_000).map(|v| v as usize))]
    pub keys: usize,
    /// Other interactive sessions typing meanwhile (each needs a worker slot)
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=10_000).map(|v| v as usize))]
    pub background: usize,
    /// Keys per second each background session types
    #[arg(long, default_value_t = 5.0)]
    pub rate: f64,
}

/// `rdev bench enqueue`.
#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// Concurrent clients, each sending its next request when the last is answered
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000).map(|v| v as usize))]
    pub concurrency: usize,
    /// How long to send, e.g. 10s
    #[arg(long, default_value = "10s", value_parser = crate::units::parse_duration)]
    pub duration: std::time::Duration,
    /// The command line enqueued
    #[arg(long, default_value = "true")]
    pub command: String,
}

/// `rdev bench e2e`.
#[derive(Debug, Args)]
pub struct E2eArgs {
    /// Commands per round (1 = one command at a time on an idle system, polled by id)
    #[arg(short, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000).map(|v| v as usize))]
    pub n: usize,
    /// Rounds
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100_000).map(|v| v as usize))]
    pub repeat: usize,
    /// Pause between rounds, so each starts on an idle system
    #[arg(long, default_value = "100ms", value_parser = crate::units::parse_duration)]
    pub pause: std::time::Duration,
    /// Concurrent enqueue requests
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=10_000).map(|v| v as usize))]
    pub concurrency: usize,
    /// The command line run
    #[arg(long, default_value = "true")]
    pub command: String,
    /// With -n 1, how the client learns a command ended: `poll` asks for it
    /// every 2 ms, `stream` follows its event stream to the `end` event
    /// (as `rdev run` does), `wait` asks once with `?wait=50`, answered
    /// when it ends
    #[arg(long, value_enum, default_value_t = Follow::Poll)]
    pub follow: Follow,
}

/// How `rdev bench e2e -n 1` waits for each command's end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Follow {
    /// `GET /v1/commands/{id}` every 2 ms.
    Poll,
    /// `GET /v1/commands/{id}/events` until `end`.
    Stream,
    /// `GET /v1/commands/{id}?wait=50`, answered when the command ends.
    Wait,
}

/// `rdev bench sse`.
#[derive(Debug, Args)]
pub struct SseArgs {
    /// Concurrent watchers of the one command
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000).map(|v| v as usize))]
    pub watchers: usize,
    /// Bytes the command writes (rounded up to whole lines), e.g. 10M
    #[arg(long, default_value = "1M", value_parser = crate::units::parse_bytes)]
    pub bytes: u64,
    /// Bytes per second it writes them at, e.g. 10M
    #[arg(long, default_value = "1M", value_parser = crate::units::parse_bytes)]
    pub rate: u64,
    /// Length of each timestamped line, in bytes
    #[arg(long, default_value_t = 1024)]
    pub line_bytes: usize,
    /// The longest the command waits before writing; it starts as soon as
    /// every stream is open and the idle RSS was read [default: 2 s + 10 ms
    /// per watcher]
    #[arg(long, value_parser = crate::units::parse_duration)]
    pub start_delay: Option<std::time::Duration>,
    /// The API's Prometheus page [default: URL/metrics]
    #[arg(long)]
    pub metrics_url: Option<String>,
}

/// `rdev bench webhooks`.
#[derive(Debug, Args)]
pub struct WebhooksArgs {
    /// Commands to run
    #[arg(short, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000).map(|v| v as usize))]
    pub n: usize,
    /// Event types subscribed to (each command yields one of each)
    #[arg(
        long = "event",
        value_delimiter = ',',
        default_value = "command.succeeded"
    )]
    pub events: Vec<String>,
    /// Concurrent enqueue requests
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=10_000).map(|v| v as usize))]
    pub concurrency: usize,
    /// Enqueue each command only once the previous one's deliveries have
    /// arrived: the latency of one event on an otherwise idle stack
    /// (`--concurrency` is then ignored)
    #[arg(long)]
    pub one_at_a_time: bool,
    /// Give up after this long without a delivery (longer when the
    /// dispatcher is held back on purpose, as for a backlog)
    #[arg(long, default_value = "60s", value_parser = crate::units::parse_duration)]
    pub stall: std::time::Duration,
}
