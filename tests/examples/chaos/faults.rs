//! The faults: one every 3-6 s while the workload runs, in a fixed order.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::servers::{Postgres, Rabbit};
use crate::stack::{Kind, Stack};

/// The fault of a round: the quick ones first, so a short run sees most
/// kinds.
fn fault_of(round: u32) -> &'static str {
    match round % 7 {
        1 => "worker SIGKILL",
        2 => "api SIGKILL",
        3 => "dispatcher SIGKILL",
        4 => "postgresql restart",
        5 => "worker SIGTERM",
        6 => "rabbitmq restart",
        _ => "worker SIGKILL",
    }
}

/// Injects one fault.
async fn inject(fault: &str, round: u32, stack: &mut Stack, pg: &Postgres, rabbit: &Rabbit) {
    match fault {
        "rabbitmq restart" => {
            let r = rabbit;
            tokio::task::block_in_place(|| {
                r.down();
                std::thread::sleep(Duration::from_secs(2));
                r.up();
            });
        }
        "postgresql restart" => {
            let p = pg;
            tokio::task::block_in_place(|| p.ctl(&["restart", "-m", "fast", "-w", "-t", "60"]));
        }
        _ => {
            let (kind, sig) = match fault {
                "worker SIGKILL" => (Kind::Worker, nix::sys::signal::Signal::SIGKILL),
                "worker SIGTERM" => (Kind::Worker, nix::sys::signal::Signal::SIGTERM),
                "dispatcher SIGKILL" => (Kind::Dispatcher, nix::sys::signal::Signal::SIGKILL),
                _ => (Kind::Api, nix::sys::signal::Signal::SIGKILL),
            };
            stack.restart(kind, sig, round).await;
        }
    }
}

/// Injects faults until two periods before `run_until` (let the system
/// settle); returns how many of each kind.
pub async fn run(
    seconds: u64,
    run_until: Instant,
    stack: &mut Stack,
    pg: &Postgres,
    rabbit: &Rabbit,
) -> BTreeMap<&'static str, u32> {
    let mut faults: BTreeMap<&'static str, u32> = BTreeMap::new();
    let mut round = 0u32;
    // One fault every 3-6 s (shorter in short runs), none in the last two
    // periods (let the system settle).
    let every = Duration::from_secs_f64((seconds as f64 / 8.0).clamp(3.0, 6.0));
    while Instant::now() + every * 2 < run_until {
        tokio::time::sleep(every).await;
        round += 1;
        let fault = fault_of(round);
        println!(
            "chaos: t+{:>3}s {fault}",
            (run_until - Duration::from_secs(seconds))
                .elapsed()
                .as_secs()
        );
        *faults.entry(fault).or_default() += 1;
        inject(fault, round, stack, pg, rabbit).await;
    }
    faults
}
