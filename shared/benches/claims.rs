//! The worker's claims and finishes against a real PostgreSQL: 16 commands
//! claimed (or finished) one statement each, as a worker with nothing to
//! batch does, against one statement for all 16 (`claim_many_alone`,
//! `finish_many_alone`), as its batch writer does under load.
//!
//! Needs PostgreSQL (`RDEV_TEST_DATABASE_URL`, as the tests; a database of
//! its own is made and dropped). Run: `cargo bench -p rdev-shared --features
//! test-support --bench claims`.

use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rdev_shared::db::commands::{self, Finish};
use rdev_shared::domain::{CommandStatus, EndReason};
use rdev_shared::test_support::TestEnv;
use tokio::runtime::Runtime;
use uuid::Uuid;

const N: usize = 16;
const WORKER: &str = "bench-worker";
const STARTED: &str = "command.started";
const SUCCEEDED: &str = "command.succeeded";

fn succeeded() -> Finish {
    Finish {
        status: CommandStatus::Succeeded,
        exit_code: Some(0),
        error: None,
        reason: EndReason::Exited,
        signal: None,
        output_bytes: 0,
        truncated: false,
    }
}

fn claims_and_finishes(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let env = rt.block_on(TestEnv::new());
    let project = rt.block_on(env.insert_project("bench"));
    let pool = &env.pool;
    let mut g = c.benchmark_group("worker_db");
    g.throughput(Throughput::Elements(N as u64));

    g.bench_function("claim/one_statement_each", |b| {
        b.iter_batched(
            || rt.block_on(env.insert_commands(project, N, "queued", None)),
            |ids| {
                rt.block_on(async {
                    let client = pool.get().await.expect("db");
                    for id in ids {
                        let claimed =
                            commands::claim_alone(&client, id, WORKER, Uuid::now_v7(), STARTED)
                                .await
                                .expect("claim");
                        assert!(claimed.is_some());
                    }
                });
            },
            BatchSize::PerIteration,
        );
    });
    g.bench_function("claim/one_statement_for_16", |b| {
        b.iter_batched(
            || rt.block_on(env.insert_commands(project, N, "queued", None)),
            |ids| {
                rt.block_on(async {
                    let client = pool.get().await.expect("db");
                    let pairs: Vec<(Uuid, Uuid)> =
                        ids.iter().map(|id| (*id, Uuid::now_v7())).collect();
                    let claimed = commands::claim_many_alone(&client, WORKER, &pairs, STARTED)
                        .await
                        .expect("claim");
                    assert_eq!(claimed.len(), N);
                });
            },
            BatchSize::PerIteration,
        );
    });
    let end = succeeded();
    g.bench_function("finish/one_statement_each", |b| {
        b.iter_batched(
            || rt.block_on(env.insert_commands(project, N, "running", Some(WORKER))),
            |ids| {
                rt.block_on(async {
                    let client = pool.get().await.expect("db");
                    for id in ids {
                        let done = commands::finish_alone(&client, id, WORKER, &end, SUCCEEDED)
                            .await
                            .expect("finish");
                        assert!(done.is_some());
                    }
                });
            },
            BatchSize::PerIteration,
        );
    });
    g.bench_function("finish/one_statement_for_16", |b| {
        b.iter_batched(
            || rt.block_on(env.insert_commands(project, N, "running", Some(WORKER))),
            |ids| {
                rt.block_on(async {
                    let client = pool.get().await.expect("db");
                    let ends: Vec<(Uuid, &Finish, &str)> =
                        ids.iter().map(|id| (*id, &end, SUCCEEDED)).collect();
                    let done = commands::finish_many_alone(&client, WORKER, &ends)
                        .await
                        .expect("finish");
                    assert_eq!(done.len(), N);
                });
            },
            BatchSize::PerIteration,
        );
    });
    g.finish();
    // The database is dropped with `env`, inside the runtime.
    rt.block_on(async move { drop(env) });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = claims_and_finishes
}
criterion_main!(benches);
