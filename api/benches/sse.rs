//! SSE event encoding: the API's per-chunk work. The hub encodes each live
//! chunk once per instance, whatever the number of watchers (it used to run
//! once per watcher). Run: `cargo bench -p rdev-api --bench sse`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rdev_api::frames::output as output_event;

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("sse/output_event");
    for size in [64usize, 4096, 65536] {
        let ascii = vec![b'x'; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("ascii", size), &ascii, |b, d| {
            b.iter(|| output_event(black_box(42), "stdout", black_box(d)))
        });
        // Quotes and newlines need JSON escaping.
        let text: Vec<u8> = b"line \"quoted\"\twith\\escapes\n"
            .iter()
            .copied()
            .cycle()
            .take(size)
            .collect();
        g.bench_with_input(BenchmarkId::new("escaped", size), &text, |b, d| {
            b.iter(|| output_event(black_box(42), "stdout", black_box(d)))
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

criterion_group! { name = benches; config = config(); targets = encode }
criterion_main!(benches);
