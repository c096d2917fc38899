//! The kernel-side verdict cache on a real fanotify mark: after the scanner
//! allows a file, the agent puts an ignore mark on its inode and later opens
//! raise no fanotify event at all; any modification makes the next open
//! checked again; the marks go at the verdict TTL and at the entry bound.
//! The counters of the agent's final stats line are the proof (`events`
//! counts every permission event the agent received, answered from its own
//! cache or not). Skips like `onaccess.rs` when not root or without fanotify
//! permission events.

use crate::common;

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use common::{
    Agent, EICAR, EPERM, Scanner, base_args, denied, eventually, final_stat, md5_signature_dir,
    read, setup, state_dir,
};

const WARM_OPENS: u64 = 200;

/// [`base_args`] with periodic stats off, then `extra`.
fn args<'a>(url: &'a str, watch: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = base_args(url, watch);
    a.extend(["--stats-interval-secs", "0"]);
    a.extend_from_slice(extra);
    a
}

fn warm_opens(path: &Path, n: u64, expect: &[u8]) {
    for _ in 0..n {
        assert_eq!(read(path).unwrap(), expect);
    }
}

/// The final counters `events`, `allowed_by_scanner`, `ignore_marks`,
/// `ignore_mark_flushes` of a finished agent.
fn counters(log: &str) -> [u64; 4] {
    [
        "events",
        "allowed_by_scanner",
        "ignore_marks",
        "ignore_mark_flushes",
    ]
    .map(|name| final_stat(log, name))
}

#[test]
fn warm_opens_of_an_allowed_file_raise_no_event_and_no_kernel_cache_keeps_them() {
    let Some(mnt) = setup("warm_opens_raise_no_event") else {
        return;
    };
    let state = state_dir();
    let scanner = Scanner::start("tcp://127.0.0.1:0", state.path(), &[]);
    let clean = mnt.join("clean.txt");
    std::fs::write(&clean, b"clean\n").unwrap();
    let watch = mnt.path().to_str().unwrap();

    let mut agent = Agent::start(state.path(), &args(&scanner.url, watch, &[]));
    warm_opens(&clean, 1 + WARM_OPENS, b"clean\n");
    assert!(agent.terminate().success());
    let log = agent.log_text();
    let [events, scanned, marks, _] = counters(&log);
    assert_eq!(scanned, 1, "{log}");
    assert_eq!(marks, 1, "{log}");
    // The first open, and none of the warm ones (a few spare for the
    // agent's own start-up).
    assert!(events < 10, "warm opens raised events: {events}\n{log}");
    assert!(log.contains("kernel verdict cache on"), "{log}");

    let mut agent = Agent::start(
        state.path(),
        &args(&scanner.url, watch, &["--no-kernel-cache"]),
    );
    warm_opens(&clean, 1 + WARM_OPENS, b"clean\n");
    assert!(agent.terminate().success());
    let log = agent.log_text();
    let [events, _, marks, flushes] = counters(&log);
    assert!(
        events > WARM_OPENS,
        "every open is an event: {events}\n{log}"
    );
    assert_eq!((marks, flushes), (0, 0), "{log}");
    assert!(final_stat(&log, "cache_hits") >= WARM_OPENS, "{log}");
}

#[test]
fn a_marked_file_modified_by_write_truncate_or_rewrite_is_checked_again() {
    let Some(mnt) = setup("marked_file_modified_is_checked_again") else {
        return;
    };
    let state = state_dir();
    // A hash signature for the bytes a truncation leaves.
    let marker = b"thinagent truncate marker\n";
    let sigs = md5_signature_dir(
        state.path(),
        "truncate.hdb",
        marker,
        "ThinAgent.Test.Truncate",
    );
    let scanner = Scanner::start("tcp://127.0.0.1:0", state.path(), &[sigs]);
    let rewritten = mnt.join("rewritten.txt");
    let truncated = mnt.join("truncated.txt");
    let written = mnt.join("written.txt");
    let mut long = marker.to_vec();
    long.extend_from_slice(b"and more text: the whole file is clean\n");
    std::fs::write(&rewritten, b"clean\n").unwrap();
    std::fs::write(&truncated, &long).unwrap();
    std::fs::write(&written, b"clean\n").unwrap();
    let watch = mnt.path().to_str().unwrap();
    let mut agent = Agent::start(state.path(), &args(&scanner.url, watch, &[]));
    warm_opens(&rewritten, 3, b"clean\n");
    warm_opens(&truncated, 3, &long);
    warm_opens(&written, 3, b"clean\n");

    // Rewritten whole (open with O_TRUNC, write, close).
    std::fs::write(&rewritten, EICAR).unwrap();
    assert!(denied(&rewritten), "rewritten to EICAR: denied");

    // truncate(2) by path: no open, no close-after-write; only the kernel's
    // clearing of the ignore mask on modification brings the next open back.
    nix::unistd::truncate(&truncated, marker.len() as i64).unwrap();
    assert_eq!(read(&truncated), Err(EPERM), "truncated to a listed hash");

    // Written through a descriptor that stays open: no close-after-write yet.
    let mut w = std::fs::OpenOptions::new()
        .write(true)
        .open(&written)
        .unwrap();
    w.seek(SeekFrom::Start(0)).unwrap();
    w.write_all(EICAR).unwrap();
    assert_eq!(read(&written), Err(EPERM), "written, still open: denied");
    drop(w);
    assert!(denied(&written));

    assert!(agent.terminate().success());
    let log = agent.log_text();
    assert_eq!(final_stat(&log, "ignore_marks"), 3, "{log}");
    assert!(final_stat(&log, "denied_by_scanner") >= 3, "{log}");
    assert!(
        scanner
            .audit_with("ThinAgent.Test.Truncate")
            .contains("ThinAgent.Test.Truncate"),
        "{}",
        scanner.audit_text()
    );
}

#[test]
fn ignore_marks_are_flushed_at_the_verdict_ttl_then_the_file_is_scanned_again() {
    let Some(mnt) = setup("ignore_marks_flushed_at_the_ttl") else {
        return;
    };
    let state = state_dir();
    let scanner = Scanner::start_with("tcp://127.0.0.1:0", state.path(), &[], |c| {
        c.cache.guest_ttl_secs = 1;
    });
    let clean = mnt.join("clean.txt");
    std::fs::write(&clean, b"clean\n").unwrap();
    let watch = mnt.path().to_str().unwrap();
    let mut agent = Agent::start(
        state.path(),
        &args(&scanner.url, watch, &["--log-level", "debug"]),
    );
    warm_opens(&clean, 1, b"clean\n");
    assert!(
        eventually(Duration::from_secs(10), || agent.log_text().contains(
            "kernel verdict cache flushed (verdict TTL reached): 1 ignore marks"
        )),
        "the TTL flush:\n{}",
        agent.log_text()
    );
    // Marked again after the next scan, and flushed again a second later.
    warm_opens(&clean, 1 + WARM_OPENS, b"clean\n");
    assert!(agent.terminate().success());
    let log = agent.log_text();
    let [events, scanned, marks, flushes] = counters(&log);
    assert!(scanned >= 2, "scanned again after the flush:\n{log}");
    assert!(marks >= 2 && flushes >= 1, "{log}");
    // The warm opens after the second scan raised (almost) no events: only
    // those after a further TTL flush, if the opens took that long.
    assert!(events < 2 + WARM_OPENS, "{log}");
}

#[test]
fn the_entry_bound_flushes_every_mark() {
    let Some(mnt) = setup("the_entry_bound_flushes_every_mark") else {
        return;
    };
    let state = state_dir();
    let scanner = Scanner::start("tcp://127.0.0.1:0", state.path(), &[]);
    let files: Vec<_> = (0..5).map(|i| mnt.join(&format!("f{i}"))).collect();
    for f in &files {
        std::fs::write(f, b"clean\n").unwrap();
    }
    let watch = mnt.path().to_str().unwrap();
    let mut agent = Agent::start(
        state.path(),
        &args(&scanner.url, watch, &["--kernel-cache-entries", "2"]),
    );
    // Marks f0 f1; f2 flushes them; marks f2 f3; f4 flushes them; marks f4.
    for f in &files {
        warm_opens(f, 1, b"clean\n");
    }
    // f0..f3 raise events again (answered from the agent's cache), f4 not.
    for f in &files {
        warm_opens(f, 20, b"clean\n");
    }
    assert!(agent.terminate().success());
    let log = agent.log_text();
    let [events, scanned, marks, flushes] = counters(&log);
    assert_eq!((scanned, marks, flushes), (5, 5, 2), "{log}");
    assert!(events >= 5 + 4 * 20, "{log}");
    assert!(
        events < 5 + 5 * 20,
        "the last marked file raised none:\n{log}"
    );
    assert!(
        log.contains("kernel verdict cache flushed (entry bound reached): 2 ignore marks removed"),
        "{log}"
    );
}
