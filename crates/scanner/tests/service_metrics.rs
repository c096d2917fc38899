//! Metrics and log lines of the running `thinagent-scanner` binary, read
//! where an operator reads them: `/metrics` and stderr.
// Linux only, like service_e2e.rs (SIGHUP, Unix-only test helpers).
#![cfg(target_os = "linux")]

use crate::common;

use std::time::Duration;

use common::{
    FileSpec, HostFrame, ScannerProcess, connect, file_event, hello_v1, metric, read_until, scrape,
};
use thinagent_protocol::Decision;
use tokio::io::AsyncWriteExt;

/// The built-in set: three hash signatures (MD5, SHA-1, SHA-256 of the
/// EICAR file) and the EICAR content check.
const BUILTIN: f64 = 4.0;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn wait_for_metric(addr: &str, key: &str, want: f64) -> String {
    let mut text = String::new();
    for _ in 0..200 {
        text = scrape(addr).await;
        if metric(&text, key) == want {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{key} never became {want}:\n{text}");
}

/// `thinagent_scanner_signatures_loaded` counts every signature of the
/// active set, the built-in ones included, the same way at start and after
/// a reload.
#[test]
fn signatures_loaded_counts_the_whole_active_set_at_start_and_reload() {
    let tmp = tempfile::tempdir().unwrap();
    let loaded = "thinagent_scanner_signatures_loaded";

    // Built-in set alone.
    let scanner = ScannerProcess::start(
        &[
            "--listen",
            "tcp://127.0.0.1:0",
            "--metrics",
            "tcp://127.0.0.1:0",
        ],
        tmp.path(),
        1,
    );
    let addr = scanner.metrics.clone().unwrap();
    rt().block_on(async {
        let text = scrape(&addr).await;
        assert_eq!(metric(&text, loaded), BUILTIN, "{text}");
    });
    drop(scanner);

    // Built-in set, one hash file of two lines and one YARA rule; then a
    // reload that adds a hash line.
    let sigs = tmp.path().join("sigs");
    std::fs::create_dir_all(&sigs).unwrap();
    std::fs::write(
        sigs.join("a.hdb"),
        "5241dbb51231025ef3dd87f377f8eaba:28:Test.A\nfd6e1801ad0304aeeb00077bad52a9c6:14:Test.B\n",
    )
    .unwrap();
    let mut yara_rules = 0.0;
    if cfg!(feature = "yara") {
        std::fs::write(
            sigs.join("r.yar"),
            "rule Test_R { strings: $a = \"marker\" condition: $a }\n",
        )
        .unwrap();
        yara_rules = 1.0;
    }
    let scanner = ScannerProcess::start(
        &[
            "--listen",
            "tcp://127.0.0.1:0",
            "--signatures",
            sigs.to_str().unwrap(),
            "--metrics",
            "tcp://127.0.0.1:0",
        ],
        tmp.path(),
        1,
    );
    let addr = scanner.metrics.clone().unwrap();
    rt().block_on(async {
        let text = scrape(&addr).await;
        assert_eq!(metric(&text, loaded), BUILTIN + 2.0 + yara_rules, "{text}");
        std::fs::write(
            sigs.join("b.hdb"),
            "44d88612fea8a8f36de82e1278abb02e:68:Test.C\n",
        )
        .unwrap();
        scanner.signal("HUP");
        wait_for_metric(
            &addr,
            "thinagent_scanner_signature_reloads_total{result=\"ok\"}",
            2.0,
        )
        .await;
        let text = scrape(&addr).await;
        assert_eq!(metric(&text, loaded), BUILTIN + 3.0 + yara_rules, "{text}");
    });
}

/// A query whose scan budget expires (the guest never sends the content it
/// is asked for) gets the policy.timeout verdict, a warning naming guest,
/// path, elapsed time and budget, and a count in
/// `thinagent_scanner_policy_verdicts_total{reason="timeout"}`.
#[test]
fn a_scan_budget_timeout_is_logged_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let scanner = ScannerProcess::start(
        &[
            "--listen",
            "tcp://127.0.0.1:0",
            "--metrics",
            "tcp://127.0.0.1:0",
            "--request-timeout-ms",
            "300",
            "--on-timeout",
            "allow",
        ],
        tmp.path(),
        1,
    );
    let addr = scanner.metrics.clone().unwrap();
    let url = scanner.url("tcp://").to_string();
    rt().block_on(async {
        let mut s = connect(&url).await;
        s.write_all(&hello_v1("slowpoke")).await.unwrap();
        let big = vec![b'a'; 1 << 20];
        s.write_all(&file_event(
            &FileSpec::new("/guest/never-sent.bin", 1, 1, &big),
            7,
        ))
        .await
        .unwrap();
        // Read requests come and are never answered.
        let frames = read_until(&mut s, Duration::from_secs(30), |f| {
            f.iter().any(|f| matches!(f, HostFrame::Verdict { .. }))
        })
        .await;
        assert!(
            frames.iter().any(|f| matches!(
                f,
                HostFrame::Verdict {
                    id: 7,
                    decision: Decision::AllowNoCache,
                    ..
                }
            )),
            "{frames:?}"
        );
        let text = wait_for_metric(
            &addr,
            "thinagent_scanner_policy_verdicts_total{reason=\"timeout\"}",
            1.0,
        )
        .await;
        assert_eq!(
            metric(
                &text,
                "thinagent_scanner_verdicts_total{decision=\"allow_no_cache\"}"
            ),
            1.0,
            "{text}"
        );
        drop(s);
    });
    let log = scanner.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("scan budget"))
        .unwrap_or_else(|| panic!("no scan-budget warning in the log:\n{log}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("/guest/never-sent.bin"), "{line}");
    assert!(line.contains("slowpoke"), "{line}");
    assert!(line.contains("budget_ms=300"), "{line}");
    let elapsed: u64 = line
        .split("elapsed_ms=")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no elapsed_ms in {line}"));
    assert!(elapsed >= 300, "{line}");
}
