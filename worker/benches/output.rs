//! The worker's per-chunk work before any I/O: numbering and splitting a
//! chunk into head/tail pieces (`HeadTail::admit`), slicing the bytes,
//! copying stored pieces into the batch, and encoding the live AMQP
//! message. Run: `cargo bench -p rdev-worker --bench output`.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rdev_shared::db::output::Chunk;
use rdev_shared::domain::OutputStream;
use rdev_shared::mq::OutputEvent;
use rdev_worker::head_tail::HeadTail;

/// Chunks per iteration: 4 MiB of output in 4 KiB reads (a pipe's usual size).
const CHUNKS: usize = 1024;
const CHUNK: usize = 4096;

/// What `OutputSink::push` does per chunk, minus the publish and the write.
fn sequence(r: &mut HeadTail, data: &Bytes, batch: &mut Vec<Chunk>) -> usize {
    let plan = r.admit(data.len());
    let mut headers = 0;
    for piece in plan.pieces {
        let bytes = data.slice(piece.range);
        let event = OutputEvent::Chunk {
            seq: piece.seq,
            stream: OutputStream::Stdout,
            data: bytes.clone(),
        };
        headers += black_box(event.encode()).1.inner().len();
        if piece.store {
            batch.push(Chunk {
                seq: piece.seq,
                stream: OutputStream::Stdout,
                data: bytes.to_vec(),
            });
        }
    }
    if batch.len() >= 64 {
        batch.clear();
    }
    headers + plan.evict.len()
}

fn head_tail(c: &mut Criterion) {
    let data = Bytes::from(vec![b'x'; CHUNK]);
    let mut g = c.benchmark_group("output");
    g.throughput(Throughput::Bytes((CHUNKS * CHUNK) as u64));
    // Under the cap: every piece stored (head only).
    g.bench_function("admit/4MiB_under_cap", |b| {
        b.iter_batched_ref(
            || HeadTail::new(64 * 1024 * 1024),
            |r| {
                (0..CHUNKS)
                    .map(|_| r.admit(CHUNK).pieces.len())
                    .sum::<usize>()
            },
            BatchSize::SmallInput,
        )
    });
    // Over a 1 MiB cap: the tail evicts a piece per chunk.
    g.bench_function("admit/4MiB_over_1MiB_cap", |b| {
        b.iter_batched_ref(
            || HeadTail::new(1024 * 1024),
            |r| {
                (0..CHUNKS)
                    .map(|_| r.admit(CHUNK).evict.len())
                    .sum::<usize>()
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("sequence+encode+batch/4MiB", |b| {
        b.iter_batched_ref(
            || (HeadTail::new(1024 * 1024), Vec::with_capacity(64)),
            |(r, batch)| {
                (0..CHUNKS)
                    .map(|_| sequence(r, &data, batch))
                    .sum::<usize>()
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

criterion_group! { name = benches; config = config(); targets = head_tail }
criterion_main!(benches);
