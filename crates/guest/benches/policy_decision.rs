//! A `Check` decision against 16 excluded path prefixes.
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use thinagent_guest::{OpenDecision, OpenPolicy, OpenRequest, PathRef, PathStyle};

fn policy_decision(c: &mut Criterion) {
    let mut policy = Box::new(OpenPolicy::new(PathStyle::Windows));
    for i in 0..16 {
        let p = format!("\\Device\\HarddiskVolume2\\Excluded{i}\\Sub");
        policy.add_excluded_prefix(PathRef::Utf8(&p)).unwrap();
    }
    for e in ["log", "tmp", "etl", "evtx"] {
        policy.add_excluded_extension(PathRef::Utf8(e)).unwrap();
    }
    let path: Vec<u16> = "\\Device\\HarddiskVolume2\\Users\\alice\\Downloads\\setup.exe"
        .encode_utf16()
        .collect();
    let req = OpenRequest::read(PathRef::Utf16(&path), 4242);
    assert_eq!(policy.decide(&req), OpenDecision::Check);
    c.bench_function("policy_decision", |b| {
        b.iter(|| policy.decide(black_box(&req)))
    });
}

criterion_group!(benches, policy_decision);
criterion_main!(benches);
