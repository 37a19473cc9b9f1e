//! Hot paths of every API request: key hashing and comparison (each
//! authenticated request hashes the presented key) and the rate-limit
//! decision; of every webhook attempt: Standard Webhooks signing; and of
//! every output chunk of a command given secrets: redaction.
//! Run: `cargo bench -p rdev-shared --bench hot_paths`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rdev_shared::domain::RateLimit;
use rdev_shared::ratelimit::{Observation, decide};
use rdev_shared::secret::{constant_time_eq, generate_key, hash_key, looks_like_key};
use rdev_shared::webhook_sign::{generate_secret, sign};

fn keys(c: &mut Criterion) {
    let key = generate_key();
    c.bench_function("secret/generate_key", |b| b.iter(generate_key));
    c.bench_function("secret/hash_key", |b| {
        b.iter(|| hash_key(black_box(&key.secret)))
    });
    c.bench_function("secret/looks_like_key+hash+constant_time_eq", |b| {
        b.iter(|| {
            let token = black_box(key.secret.as_str());
            looks_like_key(token) && constant_time_eq(&hash_key(token), &key.hash)
        })
    });
}

fn rate_limit(c: &mut Criterion) {
    let limit = RateLimit {
        requests: 600,
        window_s: 60,
    };
    let admitted = Observation {
        admitted: true,
        current: 120,
        previous: 480,
        elapsed_s: 12.5,
    };
    let refused = Observation {
        admitted: false,
        ..admitted
    };
    c.bench_function("ratelimit/decide_admitted", |b| {
        b.iter(|| decide(black_box(limit), black_box(admitted)))
    });
    c.bench_function("ratelimit/decide_refused", |b| {
        b.iter(|| decide(black_box(limit), black_box(refused)))
    });
}

/// HMAC-SHA256 over `id.timestamp.body`, base64, once per delivery attempt
/// (the secret is decoded from its `whsec_` form each time, as the sender does).
fn webhook_signing(c: &mut Criterion) {
    let secret = generate_secret();
    let mut g = c.benchmark_group("webhook/sign");
    for size in [512usize, 4096, 65536] {
        let body = vec![b'{'; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &body, |b, body| {
            b.iter(|| {
                sign(
                    black_box(&secret),
                    "msg_01a21f8ae8d6758e96d852e2f530b135",
                    1_790_000_000,
                    black_box(body),
                )
            })
        });
    }
    g.finish();
}

/// The redactor over 64 KiB output chunks (the reader's piece size) of
/// ordinary text, for a command given two secrets (one multi-line), and
/// the worst case for holding back: text made of one value's first byte.
fn redaction(c: &mut Criterion) {
    use rdev_shared::redact::{Redaction, Redactor};
    use std::sync::Arc;
    let key = "-----BEGIN KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeK\n-----END KEY-----";
    let r = Arc::new(Redaction::new([
        ("NPM_TOKEN", "npm_a1B2c3D4e5F6g7H8i9J0".as_bytes()),
        ("KEY", key.as_bytes()),
    ]));
    let text: Vec<u8> = b"compiling crate foo v1.2.3 (/workspace/foo)\n"
        .iter()
        .copied()
        .cycle()
        .take(65536)
        .collect();
    let dashes = vec![b'-'; 65536];
    let mut g = c.benchmark_group("redact/chunk");
    g.throughput(Throughput::Bytes(65536));
    for (name, chunk) in [("text", &text), ("prefix_bytes", &dashes)] {
        g.bench_with_input(BenchmarkId::from_parameter(name), chunk, |b, chunk| {
            let mut red = Redactor::new(r.clone());
            b.iter(|| red.push(black_box(chunk)))
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

criterion_group! { name = benches; config = config(); targets = keys, rate_limit, webhook_signing, redaction }
criterion_main!(benches);
