//! Per-MiB cost of the hashing on the scanner's cold path, before and after
//! issue 16, side by side in one run on the same bytes.
//!
//! * `cold_path/before`: what every file cost before: MD5, SHA-1 and
//!   SHA-256 of every byte (the hash engine computed each kind that had any
//!   signature, whatever the file's size: the built-in set has all three)
//!   plus the SHA-256 content-cache key.
//! * `cold_path/after`: the same file now: the hash engine's planned scan
//!   with the built-in signatures (size 68: a 4 MiB file needs no digest)
//!   plus the BLAKE3 content-cache key, through the crate's own API.
//! * `digest/*`: each digest alone, to see where the cost went.
//!
//! Throughput is reported in bytes, so criterion prints MiB/s (the inverse
//! of the per-MiB cost). Run: `cargo bench -p thinagent-scanner --bench
//! digests`; numbers depend on the machine and its load.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use thinagent_scanner::engine::builtin::builtin_hash_engine;
use thinagent_scanner::scan::content_key;

const LEN: usize = 4 << 20;

fn data() -> Vec<u8> {
    // Deterministic, not compressible-looking; the digests do not care.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..LEN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn cold_path(c: &mut Criterion) {
    let data = data();
    let engine = builtin_hash_engine().0;
    assert!(engine.plan(LEN as u64).is_empty());
    let mut group = c.benchmark_group("cold_path");
    group.throughput(Throughput::Bytes(LEN as u64));
    group.bench_function("before", |b| {
        b.iter(|| {
            let d = black_box(&data[..]);
            black_box((
                Md5::digest(d),
                Sha1::digest(d),
                Sha256::digest(d),
                Sha256::digest(d),
            ))
        });
    });
    group.bench_function("after", |b| {
        b.iter(|| {
            let d = black_box(&data[..]);
            black_box((engine.scan_bytes(d), content_key(d)))
        });
    });
    group.finish();

    let mut group = c.benchmark_group("digest");
    group.throughput(Throughput::Bytes(LEN as u64));
    group.bench_function("md5", |b| b.iter(|| Md5::digest(black_box(&data[..]))));
    group.bench_function("sha1", |b| b.iter(|| Sha1::digest(black_box(&data[..]))));
    group.bench_function("sha256", |b| {
        b.iter(|| Sha256::digest(black_box(&data[..])))
    });
    group.bench_function("blake3", |b| b.iter(|| content_key(black_box(&data[..]))));
    group.finish();
}

criterion_group!(benches, cold_path);
criterion_main!(benches);
