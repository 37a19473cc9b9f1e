//! The API's group commit against a real PostgreSQL: 16 new commands'
//! rows (command, audit entry, outbox message) in one transaction, written
//! one statement per row (the three inserts of each command pipelined, as
//! the group commit did before) against one multi-row statement per table
//! (`commands::insert_many`, `audit::append_many`, `outbox::insert_many`).
//!
//! Needs PostgreSQL (`RDEV_TEST_DATABASE_URL`, as the tests; a database of
//! its own is made and dropped). Run: `cargo bench -p rdev-shared --features
//! test-support --bench inserts`.

use std::collections::BTreeMap;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rdev_shared::db::audit::{self, AuditEntry};
use rdev_shared::db::commands::{self, NewCommand};
use rdev_shared::db::outbox;
use rdev_shared::domain::CommandSpec;
use rdev_shared::mq::{OutgoingMessage, Topology};
use rdev_shared::test_support::TestEnv;
use serde_json::json;
use tokio::runtime::Runtime;
use uuid::Uuid;

const N: usize = 16;

/// One new command's rows, as the API makes them for `{"command": "true"}`.
fn rows(project: Uuid, topology: &Topology) -> (NewCommand, AuditEntry<'static>, OutgoingMessage) {
    let id = Uuid::now_v7();
    let command = NewCommand {
        id,
        project_id: project,
        api_key_id: None,
        spec: CommandSpec::Shell("true".into()),
        env: BTreeMap::new(),
        stdin: None,
        stdin_pipe: false,
        tty: None,
        priority: 5,
        timeout_s: 60,
        idempotency_key: None,
        idempotency_fingerprint: None,
    };
    let entry = AuditEntry {
        actor_key_id: None,
        actor: "bench",
        ip: Some([127, 0, 0, 1].into()),
        action: "command.create",
        target_type: "command",
        target_id: Some(id.to_string()),
        project_id: Some(project),
        outcome: "success",
        details: json!({
            "priority": 5,
            "timeout_s": 60,
            "allowed_by": null,
            "secrets": [],
            "secret_files": [],
        }),
    };
    (command, entry, topology.run_message(id, 5))
}

fn group_commit(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let env = rt.block_on(TestEnv::new());
    let project = rt.block_on(env.insert_project("bench"));
    let (pool, topology) = (&env.pool, &env.topology);
    let mut g = c.benchmark_group("api_db");
    g.throughput(Throughput::Elements(N as u64));

    g.bench_function("insert/one_statement_per_row", |b| {
        b.iter(|| {
            let batch: Vec<_> = (0..N).map(|_| rows(project, topology)).collect();
            rt.block_on(async {
                let mut client = pool.get().await.expect("db");
                let tx = client.transaction().await.expect("begin");
                let each = batch.iter().map(|(command, entry, message)| {
                    let tx = &tx;
                    async move {
                        let (inserted, audited, outboxed) = tokio::join!(
                            commands::insert(tx, command),
                            audit::append(tx, entry),
                            outbox::insert(tx, message),
                        );
                        assert!(inserted.expect("command").is_some());
                        audited.expect("audit");
                        outboxed.expect("outbox");
                    }
                });
                futures::future::join_all(each).await;
                tx.commit().await.expect("commit");
            });
        });
    });
    g.bench_function("insert/one_statement_per_table", |b| {
        b.iter(|| {
            let batch: Vec<_> = (0..N).map(|_| rows(project, topology)).collect();
            rt.block_on(async {
                let mut client = pool.get().await.expect("db");
                let tx = client.transaction().await.expect("begin");
                let commands: Vec<&NewCommand> = batch.iter().map(|r| &r.0).collect();
                let entries: Vec<AuditEntry<'_>> = batch.iter().map(|r| r.1.clone()).collect();
                let messages: Vec<&OutgoingMessage> = batch.iter().map(|r| &r.2).collect();
                let (inserted, audited, outboxed) = tokio::join!(
                    commands::insert_many(&tx, &commands),
                    audit::append_many(&tx, &entries),
                    outbox::insert_many(&tx, &messages),
                );
                assert_eq!(inserted.expect("commands").len(), N);
                audited.expect("audit");
                assert_eq!(outboxed.expect("outbox").len(), N);
                tx.commit().await.expect("commit");
            });
        });
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
    targets = group_commit
}
criterion_main!(benches);
