//! Lookup hit in a 4096-entry verdict cache (target: ≤ 100 ns).
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use thinagent_guest::{CachedVerdict, FileKey, Instant, VerdictCache};

fn cache_hit(c: &mut Criterion) {
    let mut cache: Box<VerdictCache<4096>> = Box::default();
    let now = Instant::from_millis(1);
    for id in 0..3000u64 {
        cache.insert(
            FileKey::with_u64_id(7, id, id * 10, id),
            CachedVerdict::Allow,
            now,
            None,
        );
    }
    let key = FileKey::with_u64_id(7, 1234, 12340, 1234);
    assert!(cache.get(&key, now).is_some());
    c.bench_function("cache_hit", |b| {
        b.iter(|| cache.get(black_box(&key), black_box(now)))
    });
}

criterion_group!(benches, cache_hit);
criterion_main!(benches);
