//! Load: 64 concurrent guests × 2,000 opens against the in-process service,
//! half over TCP and half over a Unix socket, mixing clean files shared by
//! every guest (a cloned VM's DLLs: the content cache), infected files, and
//! per-guest files reopened many times (the identity cache). Every query is
//! answered exactly once by the host, every verdict is right, the caches stay
//! within their bounds and the process's memory stays bounded.
// Off Unix (the Windows CI job) this file is skipped: half of the guests use a Unix socket.
#![cfg(unix)]

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::{EICAR, FileSpec, connect, metric, run_guest};
use thinagent_scanner::config::Config;
use thinagent_scanner::service::Service;

const GUESTS: usize = 64;
const OPENS: usize = 2_000;
const SHARED: u64 = 40;
const INFECTED: u64 = 10;
const OWN: u64 = 50;
const IDENTITY_CAP: u64 = 8_192;
const CONTENT_CAP: u64 = 1_024;

/// A guest's files: shared clean (same content and identity on every
/// clone), EICAR copies, and its own clean files. `true` = infected.
fn files_of(guest: usize) -> Vec<(Arc<FileSpec>, bool)> {
    let mut v = Vec::new();
    for i in 0..SHARED {
        let content = format!("shared library {i} {}", "x".repeat(1000 + i as usize));
        v.push((
            FileSpec::new(
                &format!("C:\\Windows\\System32\\lib{i}.dll"),
                i,
                1,
                content.as_bytes(),
            ),
            false,
        ));
    }
    for i in 0..INFECTED {
        let id = 1_000 + i;
        v.push((
            FileSpec::new(
                &format!("C:\\Users\\u\\Downloads\\eicar{i}.com"),
                id,
                1,
                EICAR,
            ),
            true,
        ));
    }
    for i in 0..OWN {
        let id = 2_000 + i;
        let content = format!(
            "guest {guest} document {i} {}",
            "y".repeat(200 + i as usize)
        );
        v.push((
            FileSpec::new(
                &format!("C:\\Users\\u\\doc{i}.txt"),
                id,
                1,
                content.as_bytes(),
            ),
            false,
        ));
    }
    v
}

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[test]
fn sixty_four_guests_two_thousand_opens_each() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("load.sock");
    let mut config = Config {
        listen: vec![
            "tcp://127.0.0.1:0".into(),
            format!("unix://{}", sock.display()),
        ],
        ..Config::default()
    };
    config.cache.identity_entries = IDENTITY_CAP;
    config.cache.content_entries = CONTENT_CAP;
    config.limits.max_in_flight_per_guest = 16;
    // Debug builds on a loaded CI machine: no query may fall to a timeout.
    config.limits.request_timeout_ms = 120_000;
    config.limits.idle_timeout_ms = Some(120_000);
    rt.block_on(async {
        let service = Service::build(&config).await.unwrap();
        let urls: Vec<String> = service.urls().iter().map(ToString::to_string).collect();
        let handle = service.handle();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(service.run(
            async move {
                let _ = stop_rx.await;
            },
            Duration::from_secs(5),
        ));
        let rss_before = rss_kib();
        let mut guests = Vec::new();
        for g in 0..GUESTS {
            let url = urls[g % urls.len()].clone();
            guests.push(tokio::spawn(async move {
                let files = files_of(g);
                // Deterministic pseudo-random order (LCG): repeats galore.
                let mut x = 0x9E37_79B9u64 ^ g as u64;
                let picks: Vec<usize> = (0..OPENS)
                    .map(|_| {
                        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                        ((x >> 33) % files.len() as u64) as usize
                    })
                    .collect();
                let opens: Vec<_> = picks.iter().map(|&i| files[i].0.clone()).collect();
                let report = run_guest(
                    connect(&url).await,
                    &format!("clone-{g}"),
                    &opens,
                    16,
                    Duration::from_secs(240),
                )
                .await;
                report.assert_each_answered_once_by_host();
                let mut found = 0;
                for (n, &i) in picks.iter().enumerate() {
                    let a = report.answers[n].as_ref().unwrap();
                    if files[i].1 {
                        assert!(
                            a.is_found("Eicar-Test-Signature"),
                            "guest {g} open {n}: {a:?}"
                        );
                        found += 1;
                    } else {
                        assert!(a.is_clean(), "guest {g} open {n}: {a:?}");
                    }
                }
                found
            }));
        }
        let mut found = 0;
        let all = async {
            for g in guests {
                found += g.await.unwrap();
            }
        };
        tokio::time::timeout(Duration::from_secs(300), all)
            .await
            .expect("the load finished within 5 minutes");
        assert!(found > 0);
        let m = handle.metrics().encode();
        let total = (GUESTS * OPENS) as f64;
        assert_eq!(metric(&m, "thinagent_scanner_queries_total"), total, "{m}");
        let deny = metric(&m, "thinagent_scanner_verdicts_total{decision=\"deny\"}");
        let allow = metric(&m, "thinagent_scanner_verdicts_total{decision=\"allow\"}");
        assert_eq!(deny, found as f64);
        assert_eq!(deny + allow, total, "no policy verdicts under load: {m}");
        // Most opens never moved content; the shared files were scanned far
        // fewer times than they were opened.
        let guest_hits = metric(&m, "thinagent_scanner_cache_hits_total{kind=\"guest\"}");
        let content_hits = metric(&m, "thinagent_scanner_cache_hits_total{kind=\"content\"}");
        assert!(guest_hits > total / 2.0, "{m}");
        assert!(content_hits > 0.0, "{m}");
        // Bounded memory: caches within their capacity (rounded up to whole
        // shards), process growth bounded.
        let caches = &handle.context().caches;
        assert!(caches.identity.len() as u64 <= IDENTITY_CAP + 16);
        assert!(caches.content.len() as u64 <= CONTENT_CAP + 16);
        if let (Some(before), Some(after)) = (rss_before, rss_kib()) {
            let grown_mib = after.saturating_sub(before) / 1024;
            println!("RSS {} MiB -> {} MiB", before / 1024, after / 1024);
            assert!(grown_mib < 512, "RSS grew by {grown_mib} MiB");
        }
        let _ = stop_tx.send(());
        task.await.unwrap();
    });
}
