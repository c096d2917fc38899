//! Unit tests and proptests of the sans-IO core against a scripted host.

use std::collections::HashMap;

use proptest::prelude::*;
use thinagent_guest::PathStyle;
use thinagent_protocol::{
    Decoded, GoodbyeReason, HelloAck, MAX_FRAME_LEN, Message, PROTOCOL_VERSION, ReadRequest,
    Verdict, decode_frame,
};

use super::*;

const OWN: u32 = 100;
const TIMEOUT_MS: u64 = 2000;

fn ms(v: u64) -> Instant {
    Instant::from_millis(v)
}

fn core(fail_mode: FailMode) -> AgentCore {
    core_with_marks(fail_mode, 0)
}

fn core_with_marks(fail_mode: FailMode, kernel_cache_entries: usize) -> AgentCore {
    let mut policy = OpenPolicy::new(PathStyle::Posix);
    policy.add_excluded_prefix(PathRef::Utf8("/skip")).unwrap();
    policy.set_max_file_size(Some(1 << 20));
    AgentCore::new(CoreConfig {
        fail_mode,
        timeout: Duration::from_millis(TIMEOUT_MS),
        guest_name: "test-vm".into(),
        policy,
        own_pid: OWN,
        kernel_cache_entries,
        inline_content: true,
        host_actions: true,
        pinned: PolicyFields::default(),
    })
}

fn stat(ino: u64, size: u64, mtime: u64) -> FileStat {
    FileStat {
        dev: 7,
        ino,
        size,
        mtime_ns: mtime,
        file_type: FileType::Regular,
    }
}

fn ev(token: Token, path: &str, pid: u32, st: FileStat) -> PermEvent<'_> {
    PermEvent {
        token,
        access: Access::Open,
        pid,
        path: path.as_bytes(),
        image: None,
        stat: Some(st),
        content: InlineContent::NONE,
    }
}

fn actions(c: &mut AgentCore) -> Vec<Action> {
    std::iter::from_fn(|| c.poll_action()).collect()
}

fn enc(msg: Message<'_>, id: u64) -> Vec<u8> {
    encv(msg, id, PROTOCOL_VERSION)
}

/// `msg` in a frame of protocol `version`.
fn encv(msg: Message<'_>, id: u64, version: u16) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    let n = msg.encode_for(version, id, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

/// What the guest sent, summarised.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sent {
    Hello(u64),
    FileEvent {
        id: u64,
        path: String,
    },
    /// A version-2 `FileEvent` with inline content.
    InlineEvent {
        id: u64,
        content: Vec<u8>,
        whole_file: bool,
    },
    ReadData {
        id: u64,
        data: Vec<u8>,
    },
    Goodbye,
    Other,
}

fn sent(c: &mut AgentCore) -> Vec<Sent> {
    let bytes = c.pending_tx().to_vec();
    c.consume_tx(bytes.len());
    let mut out = Vec::new();
    let mut rest = &bytes[..];
    while let Ok(Decoded::Frame { frame, consumed }) = decode_frame(rest) {
        out.push(match frame.message {
            Message::Hello(_) => Sent::Hello(frame.request_id),
            Message::FileEvent(e) if !e.content.is_none() => Sent::InlineEvent {
                id: frame.request_id,
                content: e.content.bytes.to_vec(),
                whole_file: e.content.whole_file,
            },
            Message::FileEvent(e) => Sent::FileEvent {
                id: frame.request_id,
                path: match e.path {
                    FilePath::Utf8(p) => p.to_string(),
                    _ => String::new(),
                },
            },
            Message::ReadData(d) => Sent::ReadData {
                id: frame.request_id,
                data: match d.outcome {
                    ReadOutcome::Data(b) | ReadOutcome::EndOfFile(b) => b.to_vec(),
                    _ => Vec::new(),
                },
            },
            Message::Goodbye(_) => Sent::Goodbye,
            _ => Sent::Other,
        });
        rest = &rest[consumed..];
    }
    out
}

/// The request id of the one frame sent since the last look, which must be
/// a `FileEvent`.
fn sent_file_event_id(c: &mut AgentCore) -> u64 {
    let [Sent::FileEvent { id, .. }] = sent(c)[..] else {
        panic!("one FileEvent")
    };
    id
}

fn ack() -> HelloAck {
    HelloAck {
        version: PROTOCOL_VERSION,
        max_frame_len: MAX_FRAME_LEN as u32,
        max_events_in_flight: 16,
        max_read_chunk: 4096,
        heartbeat_interval_ms: 0,
        idle_timeout_ms: 0,
        query_timeout_ms: 1000,
        max_inline_len: 0,
    }
}

fn connect(c: &mut AgentCore, now: Instant) {
    c.on_connected(now);
    let hello = sent(c);
    let [Sent::Hello(id)] = hello[..] else {
        panic!("{hello:?}")
    };
    c.on_receive(&enc(Message::HelloAck(ack()), id), now);
    assert_eq!(actions(c), [Action::Connected { version: 1 }]);
}

fn verdict(decision: Decision, ttl: u32, threat: &str, id: u64) -> Vec<u8> {
    enc(
        Message::Verdict(Verdict {
            decision,
            cache_ttl_secs: ttl,
            threat_name: threat,
        }),
        id,
    )
}

fn respond(token: Token, allow: bool, why: Why) -> Action {
    Action::Respond { token, allow, why }
}

#[test]
fn policy_skips_answer_at_once_without_the_scanner() {
    let mut c = core(FailMode::Closed);
    c.on_perm_event(&ev(1, "/data/a", OWN, stat(1, 10, 1)), ms(0));
    c.on_perm_event(&ev(2, "/skip/a", 5, stat(2, 10, 1)), ms(0));
    c.on_perm_event(&ev(3, "/data/big", 5, stat(3, 2 << 20, 1)), ms(0));
    let fifo = FileStat {
        file_type: FileType::Other,
        ..stat(4, 0, 1)
    };
    c.on_perm_event(&ev(4, "/data/fifo", 5, fifo), ms(0));
    assert_eq!(
        actions(&mut c),
        [
            respond(1, true, Why::Skipped(SkipReason::OwnIo)),
            respond(2, true, Why::Skipped(SkipReason::ExcludedPath)),
            respond(3, true, Why::Skipped(SkipReason::TooLarge)),
            respond(4, true, Why::NotRegularFile),
        ]
    );
    assert_eq!(c.stats().skipped, 3);
    assert_eq!(c.pending(), 0);
}

#[test]
fn disconnected_events_follow_the_fail_mode_and_are_counted() {
    for (mode, allow) in [(FailMode::Open, true), (FailMode::Closed, false)] {
        let mut c = core(mode);
        c.on_perm_event(&ev(1, "/data/a", 5, stat(1, 10, 1)), ms(0));
        c.on_perm_event(&ev(2, "/data/b", 5, stat(2, 10, 1)), ms(0));
        assert_eq!(
            actions(&mut c),
            [
                respond(1, allow, Why::Disconnected),
                respond(2, allow, Why::Disconnected)
            ]
        );
        assert_eq!(c.stats().fail_mode_disconnected, 2);
        assert_eq!(c.stats().fail_mode_total(), 2);
        assert!(c.pending_tx().is_empty());
    }
}

#[test]
fn scanner_reads_through_the_event_then_denies_and_the_deny_is_cached() {
    let mut c = core(FailMode::Open);
    connect(&mut c, ms(0));
    c.on_perm_event(&ev(1, "/data/eicar.com", 5, stat(1, 68, 9)), ms(1));
    assert!(actions(&mut c).is_empty(), "waits for the scanner");
    let [Sent::FileEvent { id, ref path }] = sent(&mut c)[..] else {
        panic!()
    };
    assert_eq!(path, "/data/eicar.com");
    let req = ReadRequest {
        event_id: id,
        offset: 0,
        length: 68,
    };
    c.on_receive(&enc(Message::ReadRequest(req), 500), ms(2));
    assert_eq!(
        actions(&mut c),
        [Action::Read {
            token: 1,
            read_id: 500,
            offset: 0,
            length: 68
        }]
    );
    c.read_completed(500, ReadOutcome::EndOfFile(b"content"), ms(3));
    assert_eq!(
        sent(&mut c),
        [Sent::ReadData {
            id: 500,
            data: b"content".to_vec()
        }]
    );
    c.on_receive(
        &verdict(Decision::Deny, 300, "Eicar-Test-Signature", id),
        ms(4),
    );
    assert_eq!(
        actions(&mut c),
        [respond(
            1,
            false,
            Why::Host {
                decision: Decision::Deny,
                threat: "Eicar-Test-Signature".into()
            }
        )]
    );
    // Same file, same version: the cache answers, nothing is sent.
    c.on_perm_event(&ev(2, "/data/eicar.com", 6, stat(1, 68, 9)), ms(5));
    assert_eq!(
        actions(&mut c),
        [respond(
            2,
            false,
            Why::Cached(CachedVerdict::Deny { threat_id: 0 })
        )]
    );
    assert!(sent(&mut c).is_empty());
    // A new version (size/mtime changed) misses the cache.
    c.on_perm_event(&ev(3, "/data/eicar.com", 6, stat(1, 70, 10)), ms(6));
    assert!(matches!(sent(&mut c)[..], [Sent::FileEvent { .. }]));
    let s = c.stats();
    assert_eq!((s.host_denied, s.cache_hits, s.denied), (1, 1, 2));
}

#[test]
fn close_write_invalidates_the_cached_allow() {
    let mut c = core(FailMode::Open);
    connect(&mut c, ms(0));
    let st = stat(1, 5, 1);
    c.on_perm_event(&ev(1, "/data/a", 5, st), ms(1));
    let id = sent_file_event_id(&mut c);
    c.on_receive(&verdict(Decision::Allow, 300, "", id), ms(2));
    assert!(matches!(
        actions(&mut c)[..],
        [Action::Respond { allow: true, .. }]
    ));
    c.on_perm_event(&ev(2, "/data/a", 5, st), ms(3));
    assert_eq!(
        actions(&mut c),
        [respond(2, true, Why::Cached(CachedVerdict::Allow))]
    );
    c.on_close_write(st.dev, st.ino);
    assert_eq!(c.stats().invalidations, 1);
    // Even with an unchanged key (a writer that restored the mtime) the next
    // open goes to the scanner.
    c.on_perm_event(&ev(3, "/data/a", 5, st), ms(4));
    assert!(actions(&mut c).is_empty());
    assert!(matches!(sent(&mut c)[..], [Sent::FileEvent { .. }]));
}

#[test]
fn a_verdict_for_a_file_written_meanwhile_is_not_cached() {
    let mut c = core(FailMode::Open);
    connect(&mut c, ms(0));
    let st = stat(1, 5, 1);
    c.on_perm_event(&ev(1, "/data/a", 5, st), ms(1));
    let id = sent_file_event_id(&mut c);
    c.on_close_write(st.dev, st.ino);
    c.on_receive(&verdict(Decision::Allow, 300, "", id), ms(2));
    assert!(matches!(
        actions(&mut c)[..],
        [Action::Respond { allow: true, .. }]
    ));
    c.on_perm_event(&ev(2, "/data/a", 5, st), ms(3));
    assert!(actions(&mut c).is_empty(), "not from the cache");
}

#[test]
fn hung_scanner_every_event_answered_by_its_deadline_late_verdict_ignored() {
    for (mode, allow) in [(FailMode::Open, true), (FailMode::Closed, false)] {
        let mut c = core(mode);
        connect(&mut c, ms(0));
        c.on_perm_event(&ev(1, "/data/a", 5, stat(1, 5, 1)), ms(10));
        c.on_perm_event(&ev(2, "/data/b", 5, stat(2, 5, 1)), ms(500));
        let ids: Vec<u64> = sent(&mut c)
            .into_iter()
            .filter_map(|s| match s {
                Sent::FileEvent { id, .. } => Some(id),
                _ => None,
            })
            .collect();
        assert_eq!(c.next_deadline(), Some(ms(2010)));
        c.on_timeout(ms(2009));
        assert!(actions(&mut c).is_empty());
        c.on_timeout(ms(2010));
        let a = actions(&mut c);
        assert_eq!(a.len(), 1);
        assert!(
            matches!(&a[0], Action::Respond { token: 1, allow: x, why } if *x == allow && why.is_fail_mode())
        );
        c.on_timeout(ms(2500));
        assert!(matches!(
            actions(&mut c)[..],
            [Action::Respond { token: 2, .. }]
        ));
        for id in ids {
            c.on_receive(&verdict(Decision::Deny, 0, "late", id), ms(3000));
        }
        assert!(actions(&mut c).is_empty(), "answered once only");
        assert!(c.is_connected());
    }
}

#[test]
fn watchdog_answers_even_when_the_session_cannot() {
    // A session stuck in the handshake (no HelloAck): the queries wait in
    // it, and the watchdog still answers at the deadline.
    let mut c = core(FailMode::Closed);
    c.on_connected(ms(0));
    sent(&mut c);
    c.on_perm_event(&ev(1, "/data/a", 5, stat(1, 5, 1)), ms(0));
    c.on_timeout(ms(TIMEOUT_MS));
    let a = actions(&mut c);
    assert!(
        matches!(&a[..], [Action::Respond { token: 1, allow: false, why }] if why.is_fail_mode()),
        "{a:?}"
    );
}

#[test]
fn losing_the_connection_answers_what_was_in_flight() {
    let mut c = core(FailMode::Closed);
    connect(&mut c, ms(0));
    c.on_perm_event(&ev(1, "/data/a", 5, stat(1, 5, 1)), ms(1));
    c.on_disconnected(ms(2));
    assert_eq!(actions(&mut c), [respond(1, false, Why::SessionClosed)]);
    assert!(!c.has_session());
    c.on_perm_event(&ev(2, "/data/a", 5, stat(1, 5, 1)), ms(3));
    assert_eq!(actions(&mut c), [respond(2, false, Why::Disconnected)]);
}

#[test]
fn a_host_goodbye_closes_the_session_and_reports_it() {
    let mut c = core(FailMode::Open);
    connect(&mut c, ms(0));
    c.on_perm_event(&ev(1, "/data/a", 5, stat(1, 5, 1)), ms(1));
    let bye = enc(
        Message::Goodbye(thinagent_protocol::Goodbye {
            reason: GoodbyeReason::Restarting,
        }),
        0,
    );
    c.on_receive(&bye, ms(2));
    let a = actions(&mut c);
    assert_eq!(a[0], respond(1, true, Why::SessionClosed));
    assert!(matches!(a[1], Action::Closed { .. }));
    assert!(!c.has_session());
}

#[test]
fn shutdown_answers_every_pending_event_and_says_goodbye() {
    let mut c = core(FailMode::Open);
    connect(&mut c, ms(0));
    for t in 1..=3 {
        c.on_perm_event(&ev(t, "/data/a", 5, stat(t, 5, 1)), ms(1));
    }
    sent(&mut c);
    c.shutdown(ms(2));
    let mut tokens: Vec<Token> = actions(&mut c)
        .into_iter()
        .map(|a| match a {
            Action::Respond {
                token,
                allow: true,
                why: Why::Shutdown,
            } => token,
            other => panic!("{other:?}"),
        })
        .collect();
    tokens.sort_unstable();
    assert_eq!(tokens, [1, 2, 3]);
    assert_eq!(c.pending(), 0);
    assert_eq!(sent(&mut c), [Sent::Goodbye]);
    assert_eq!(c.stats().fail_mode_shutdown, 3);
}

#[test]
fn scanner_pid_is_excluded_and_replaced_on_reconnect() {
    let mut c = core(FailMode::Closed);
    c.set_scanner_pid(Some(77));
    c.on_perm_event(&ev(1, "/data/a", 77, stat(1, 5, 1)), ms(0));
    c.set_scanner_pid(Some(78));
    c.on_perm_event(&ev(2, "/data/a", 77, stat(1, 5, 1)), ms(0));
    c.on_perm_event(&ev(3, "/data/a", 78, stat(1, 5, 1)), ms(0));
    assert_eq!(
        actions(&mut c),
        [
            respond(1, true, Why::Skipped(SkipReason::ExcludedProcess)),
            respond(2, false, Why::Disconnected),
            respond(3, true, Why::Skipped(SkipReason::ExcludedProcess)),
        ]
    );
    // The agent's own pid stays excluded whatever the scanner's is.
    c.set_scanner_pid(Some(OWN));
    c.set_scanner_pid(None);
    assert!(c.policy().excluded_processes().contains(&OWN));
}

#[test]
fn the_cache_holds_a_working_set_of_twenty_thousand_files() {
    let mut cache = ShardedCache::new();
    let now = ms(0);
    let ttl = Duration::from_secs(300);
    for ino in 0..20_000 {
        cache.insert(stat(ino, 10, 1).key(), CachedVerdict::Allow, now, ttl);
    }
    let hits = (0..20_000)
        .filter(|ino| cache.get(&stat(*ino, 10, 1).key(), now).is_some())
        .count();
    // 8-way sets evict a little before the cache is full, never much.
    assert!(hits >= 19_000, "{hits} of 20000 still cached");
    assert_eq!(cache.invalidate(7, &stat(5, 0, 0).key().file_id), 1);
    assert!(cache.get(&stat(5, 10, 1).key(), now).is_none());
}

/// Sends one open of `st` (pid 5, path `/data/x`) and answers it with
/// `decision` and `ttl`; returns the actions.
fn scanned(
    c: &mut AgentCore,
    token: Token,
    st: FileStat,
    decision: Decision,
    ttl: u32,
    now: Instant,
) -> Vec<Action> {
    c.on_perm_event(&ev(token, "/data/x", 5, st), now);
    let id = sent_file_event_id(c);
    c.on_receive(&verdict(decision, ttl, "", id), now);
    actions(c)
}

fn add_mark(token: Token, expect: FileStat) -> Action {
    Action::AddIgnoreMark { token, expect }
}

#[test]
fn a_host_allow_puts_an_ignore_mark_before_the_answer() {
    let mut c = core_with_marks(FailMode::Open, 8);
    connect(&mut c, ms(0));
    let st = stat(1, 5, 1);
    let a = scanned(&mut c, 1, st, Decision::Allow, 300, ms(1));
    assert_eq!(a[0], add_mark(1, st));
    assert!(matches!(
        a[1],
        Action::Respond {
            token: 1,
            allow: true,
            ..
        }
    ));
    assert_eq!(a.len(), 2);
    c.ignore_mark_result(st.dev, st.ino, true);
    assert_eq!(c.stats().ignore_marks, 1);
    assert_eq!(c.ignore_marks(), 1);
    // The TTL is the next deadline: the marks are flushed then.
    assert_eq!(c.next_deadline(), Some(ms(1) + Duration::from_secs(300)));
}

#[test]
fn no_ignore_mark_for_denies_no_cache_allows_skips_fail_mode_or_when_off() {
    let mut c = core_with_marks(FailMode::Open, 8);
    // Disconnected: the fail mode allows, nothing is marked.
    c.on_perm_event(&ev(1, "/data/a", 5, stat(1, 5, 1)), ms(0));
    assert_eq!(actions(&mut c), [respond(1, true, Why::Disconnected)]);
    connect(&mut c, ms(1));
    // Skipped by the policy.
    c.on_perm_event(&ev(2, "/skip/a", 5, stat(2, 5, 1)), ms(2));
    assert!(matches!(
        actions(&mut c)[..],
        [Action::Respond {
            token: 2,
            allow: true,
            why: Why::Skipped(_)
        }]
    ));
    // Denied, allowed without caching, allowed with TTL 0.
    for (token, d, ttl) in [
        (3, Decision::Deny, 300),
        (4, Decision::AllowNoCache, 0),
        (5, Decision::Allow, 0),
    ] {
        let a = scanned(&mut c, token, stat(token, 5, 1), d, ttl, ms(3));
        assert!(matches!(a[..], [Action::Respond { .. }]), "{a:?}");
    }
    // A file written (closed after a write) while it was scanned.
    let st = stat(6, 5, 1);
    c.on_perm_event(&ev(6, "/data/b", 5, st), ms(4));
    let id = sent_file_event_id(&mut c);
    c.on_close_write(st.dev, st.ino);
    c.on_receive(&verdict(Decision::Allow, 300, "", id), ms(5));
    assert!(matches!(
        actions(&mut c)[..],
        [Action::Respond {
            token: 6,
            allow: true,
            ..
        }]
    ));
    assert_eq!(c.ignore_marks(), 0);
    assert_eq!(c.next_deadline(), None, "no flush scheduled");

    let mut off = core_with_marks(FailMode::Closed, 0);
    connect(&mut off, ms(0));
    let a = scanned(&mut off, 1, stat(1, 5, 1), Decision::Allow, 300, ms(1));
    assert!(
        matches!(a[..], [Action::Respond { allow: true, .. }]),
        "--no-kernel-cache: {a:?}"
    );
}

#[test]
fn a_host_allow_is_marked_in_fail_closed_mode_too() {
    let mut c = core_with_marks(FailMode::Closed, 8);
    connect(&mut c, ms(0));
    let st = stat(1, 5, 1);
    let a = scanned(&mut c, 1, st, Decision::Allow, 60, ms(1));
    assert_eq!(a[0], add_mark(1, st));
}

#[test]
fn ignore_marks_are_flushed_at_the_shortest_ttl() {
    let mut c = core_with_marks(FailMode::Open, 8);
    connect(&mut c, ms(0));
    scanned(&mut c, 1, stat(1, 5, 1), Decision::Allow, 10, ms(0));
    scanned(&mut c, 2, stat(2, 5, 1), Decision::Allow, 2, ms(1000));
    scanned(&mut c, 3, stat(3, 5, 1), Decision::Allow, 300, ms(1500));
    let due = ms(3000);
    assert_eq!(c.next_deadline(), Some(due));
    c.on_timeout(ms(2999));
    assert!(actions(&mut c).is_empty(), "not yet");
    c.on_timeout(due);
    assert_eq!(
        actions(&mut c),
        [Action::FlushIgnoreMarks {
            reason: FlushReason::Ttl,
            marks: 3
        }]
    );
    assert_eq!(c.ignore_marks(), 0);
    assert_eq!(c.stats().ignore_mark_flushes, 1);
    assert_eq!(c.next_deadline(), None);
    // The next mark starts a new period.
    scanned(&mut c, 4, stat(4, 5, 1), Decision::Allow, 5, ms(4000));
    assert_eq!(c.next_deadline(), Some(ms(9000)));
}

#[test]
fn the_entry_bound_flushes_every_mark_before_the_next_one() {
    let mut c = core_with_marks(FailMode::Open, 2);
    connect(&mut c, ms(0));
    scanned(&mut c, 1, stat(1, 5, 1), Decision::Allow, 300, ms(1));
    scanned(&mut c, 2, stat(2, 5, 1), Decision::Allow, 300, ms(2));
    // The same inode again (a new version) does not count twice.
    let a = scanned(&mut c, 3, stat(2, 6, 2), Decision::Allow, 300, ms(3));
    assert_eq!(a[0], add_mark(3, stat(2, 6, 2)));
    assert_eq!(c.ignore_marks(), 2);
    let a = scanned(&mut c, 4, stat(3, 5, 1), Decision::Allow, 300, ms(4));
    assert_eq!(
        a[..2],
        [
            Action::FlushIgnoreMarks {
                reason: FlushReason::Bound,
                marks: 2
            },
            add_mark(4, stat(3, 5, 1)),
        ]
    );
    assert_eq!(c.ignore_marks(), 1);
    // The flush also reset the TTL: the next one counts from the new mark.
    assert_eq!(c.next_deadline(), Some(ms(4) + Duration::from_secs(300)));
}

#[test]
fn a_new_session_flushes_the_marks_a_refused_mark_or_a_write_uncounts_it() {
    let mut c = core_with_marks(FailMode::Open, 8);
    connect(&mut c, ms(0));
    scanned(&mut c, 1, stat(1, 5, 1), Decision::Allow, 300, ms(1));
    scanned(&mut c, 2, stat(2, 5, 1), Decision::Allow, 300, ms(1));
    scanned(&mut c, 3, stat(3, 5, 1), Decision::Allow, 300, ms(1));
    c.ignore_mark_result(7, 1, true);
    c.ignore_mark_result(7, 2, false);
    c.on_close_write(7, 3);
    assert_eq!(c.ignore_marks(), 1);
    assert_eq!(
        (c.stats().ignore_marks, c.stats().ignore_marks_failed),
        (1, 1)
    );
    c.on_disconnected(ms(2));
    assert!(actions(&mut c).is_empty(), "a disconnect alone keeps them");
    c.on_connected(ms(3));
    assert_eq!(
        actions(&mut c),
        [Action::FlushIgnoreMarks {
            reason: FlushReason::Connected,
            marks: 1
        }]
    );
    // Nothing marked: a reconnect has nothing to flush.
    c.on_connected(ms(4));
    assert!(actions(&mut c).is_empty());
}

/// Connects `c` to a version-2 host announcing `max_inline_len`.
fn connect_v2(c: &mut AgentCore, max_inline_len: u32, now: Instant) -> bool {
    c.on_connected(now);
    let bytes = c.pending_tx().to_vec();
    c.consume_tx(bytes.len());
    let Ok(Decoded::Frame { frame, .. }) = decode_frame(&bytes) else {
        panic!("a Hello")
    };
    let Message::Hello(hello) = frame.message else {
        panic!("{frame:?}")
    };
    assert_eq!((hello.version_min, hello.version_max), (1, 2));
    let inline = hello.capabilities.contains(Capabilities::INLINE_CONTENT);
    let ack = HelloAck {
        version: 2,
        max_inline_len,
        ..ack()
    };
    c.on_receive(&enc(Message::HelloAck(ack), frame.request_id), now);
    assert_eq!(actions(c), [Action::Connected { version: 2 }]);
    inline
}

fn with_content<'a>(mut e: PermEvent<'a>, bytes: &'a [u8], whole_file: bool) -> PermEvent<'a> {
    e.content = InlineContent { bytes, whole_file };
    e
}

#[test]
fn a_small_file_goes_inline_whole_and_needs_no_read() {
    let mut c = core(FailMode::Open);
    assert!(
        connect_v2(&mut c, 65_447, ms(0)),
        "INLINE_CONTENT announced"
    );
    assert_eq!(c.max_inline_len(), 65_447);
    let eicar = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
    let st = stat(1, eicar.len() as u64, 9);
    c.on_perm_event(
        &with_content(ev(1, "/data/eicar.com", 5, st), eicar, true),
        ms(1),
    );
    let [
        Sent::InlineEvent {
            id,
            ref content,
            whole_file: true,
        },
    ] = sent(&mut c)[..]
    else {
        panic!()
    };
    assert_eq!(&content[..], &eicar[..]);
    c.on_receive(
        &encv(
            Message::Verdict(Verdict {
                decision: Decision::Deny,
                cache_ttl_secs: 60,
                threat_name: "Eicar",
            }),
            id,
            2,
        ),
        ms(2),
    );
    assert!(matches!(
        actions(&mut c)[..],
        [Action::Respond {
            token: 1,
            allow: false,
            ..
        }]
    ));
    let stats = c.stats();
    assert_eq!(
        (
            stats.inline_whole,
            stats.inline_partial,
            stats.reads,
            stats.host_denied
        ),
        (1, 0, 0, 1)
    );
}

#[test]
fn a_larger_file_sends_its_first_bytes_and_the_scanner_reads_the_rest() {
    let mut c = core(FailMode::Open);
    connect_v2(&mut c, 100, ms(0));
    let data = [b'a'; 200];
    let st = stat(1, 200, 9);
    // The edge read max_inline_len bytes: not the whole file.
    c.on_perm_event(
        &with_content(ev(1, "/data/big", 5, st), &data[..100], false),
        ms(1),
    );
    let [
        Sent::InlineEvent {
            id,
            ref content,
            whole_file: false,
        },
    ] = sent(&mut c)[..]
    else {
        panic!()
    };
    assert_eq!(content.len(), 100);
    let req = ReadRequest {
        event_id: id,
        offset: 100,
        length: 100,
    };
    c.on_receive(&encv(Message::ReadRequest(req), 500, 2), ms(2));
    assert_eq!(
        actions(&mut c),
        [Action::Read {
            token: 1,
            read_id: 500,
            offset: 100,
            length: 100
        }]
    );
    c.read_completed(500, ReadOutcome::EndOfFile(&data[100..]), ms(3));
    let [Sent::ReadData { id: 500, ref data }] = sent(&mut c)[..] else {
        panic!()
    };
    assert_eq!(data.len(), 100);
    let v = Verdict {
        decision: Decision::Allow,
        cache_ttl_secs: 0,
        threat_name: "",
    };
    c.on_receive(&encv(Message::Verdict(v), id, 2), ms(4));
    assert!(matches!(
        actions(&mut c)[..],
        [Action::Respond {
            token: 1,
            allow: true,
            ..
        }]
    ));
    assert_eq!((c.stats().inline_partial, c.stats().reads), (1, 1));
}

#[test]
fn a_version_1_host_or_no_inline_gets_no_content() {
    // Version 1: nothing to read up front, content given anyway is dropped.
    let mut c = core(FailMode::Open);
    connect(&mut c, ms(0));
    assert_eq!(c.max_inline_len(), 0);
    c.on_perm_event(
        &with_content(ev(1, "/data/a", 5, stat(1, 3, 1)), b"abc", true),
        ms(1),
    );
    assert!(matches!(sent(&mut c)[..], [Sent::FileEvent { .. }]));
    // --no-inline: INLINE_CONTENT not announced, a version-2 host's offer
    // unused.
    let mut policy = OpenPolicy::new(PathStyle::Posix);
    policy.set_max_file_size(None);
    let mut c = AgentCore::new(CoreConfig {
        fail_mode: FailMode::Open,
        timeout: Duration::from_millis(TIMEOUT_MS),
        guest_name: "test-vm".into(),
        policy,
        own_pid: OWN,
        kernel_cache_entries: 0,
        inline_content: false,
        host_actions: false,
        pinned: PolicyFields::default(),
    });
    assert!(!connect_v2(&mut c, 65_447, ms(0)));
    assert_eq!(c.max_inline_len(), 0);
    c.on_perm_event(
        &with_content(ev(1, "/data/a", 5, stat(1, 3, 1)), b"abc", true),
        ms(1),
    );
    assert!(matches!(sent(&mut c)[..], [Sent::FileEvent { .. }]));
    assert_eq!(c.stats().inline_whole, 0);
}

/// One step of a random run.
#[derive(Debug, Clone)]
enum Op {
    Event { file: u64, pid: u32, exec: bool },
    Connect { ack: bool, v2: bool },
    Disconnect,
    Garbage,
    Answer { nth: usize, decision: u8, ttl: u32 },
    Request { nth: usize },
    FinishReads,
    CloseWrite { file: u64 },
    Advance { ms: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..6, prop_oneof![Just(5u32), Just(6), Just(OWN)], any::<bool>())
            .prop_map(|(file, pid, exec)| Op::Event { file, pid, exec }),
        1 => (any::<bool>(), any::<bool>()).prop_map(|(ack, v2)| Op::Connect { ack, v2 }),
        1 => Just(Op::Disconnect),
        1 => Just(Op::Garbage),
        3 => (0usize..8, 0u8..3, 0u32..3).prop_map(|(nth, decision, ttl)| Op::Answer { nth, decision, ttl }),
        2 => (0usize..8).prop_map(|nth| Op::Request { nth }),
        1 => Just(Op::FinishReads),
        1 => (0u64..6).prop_map(|file| Op::CloseWrite { file }),
        3 => (0u64..3000).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// A scripted host plus the bookkeeping that checks the core.
struct Run {
    c: AgentCore,
    now: Instant,
    next_token: Token,
    /// Token -> deadline, for events not answered yet.
    open: HashMap<Token, Instant>,
    answered: HashMap<Token, u32>,
    /// FileEvent ids the host has not answered, oldest first.
    host_queue: Vec<u64>,
    hello: Option<u64>,
    reads: Vec<u64>,
    next_read: u64,
    /// Ignore marks in place: (inode, added at, TTL).
    marks: Vec<(u64, Instant, Duration)>,
    /// TTL of the verdict being delivered.
    answer_ttl: u32,
    /// The last action was an `AddIgnoreMark` for this token.
    marking: Option<Token>,
    /// The version the host chose for the current session.
    version: u16,
}

impl Run {
    fn drain(&mut self) {
        while let Some(a) = self.c.poll_action() {
            match a {
                Action::AddIgnoreMark { token, expect } => {
                    assert!(self.marking.is_none());
                    self.marking = Some(token);
                    self.marks.retain(|m| m.0 != expect.ino);
                    self.marks.push((
                        expect.ino,
                        self.now,
                        Duration::from_secs(self.answer_ttl.into()),
                    ));
                    assert!(self.marks.len() <= MARKS, "bound kept");
                    self.c.ignore_mark_result(expect.dev, expect.ino, true);
                }
                Action::FlushIgnoreMarks { .. } => {
                    assert!(self.marking.is_none());
                    self.marks.clear();
                }
                Action::Respond { token, allow, why } => {
                    if let Some(t) = self.marking.take() {
                        assert_eq!(t, token, "the mark comes right before its answer");
                        assert!(
                            allow
                                && matches!(
                                    why,
                                    Why::Host {
                                        decision: Decision::Allow,
                                        ..
                                    }
                                ),
                            "{why:?}"
                        );
                    }
                    *self.answered.entry(token).or_default() += 1;
                    let deadline = self
                        .open
                        .remove(&token)
                        .expect("answered once, known token");
                    assert!(self.now <= deadline, "token {token} answered late");
                }
                Action::Read { read_id, .. } => self.reads.push(read_id),
                Action::Connected { .. }
                | Action::HostRequest(_)
                | Action::ScanCancelled { .. }
                | Action::OnDemandDone { .. }
                | Action::PolicyApplied(_) => {}
                Action::Closed { .. } => {
                    self.host_queue.clear();
                    self.reads.clear();
                }
            }
        }
        for s in sent(&mut self.c) {
            match s {
                Sent::Hello(id) => self.hello = Some(id),
                Sent::FileEvent { id, .. } | Sent::InlineEvent { id, .. } => {
                    self.host_queue.push(id);
                }
                _ => {}
            }
        }
    }

    fn step(&mut self, op: Op) {
        let now = self.now;
        match op {
            Op::Event { file, pid, exec } => {
                let token = self.next_token;
                self.next_token += 1;
                self.open
                    .insert(token, now + Duration::from_millis(TIMEOUT_MS));
                let path = format!("/data/f{file}");
                self.c.on_perm_event(
                    &PermEvent {
                        token,
                        access: if exec { Access::Exec } else { Access::Open },
                        pid,
                        path: path.as_bytes(),
                        image: None,
                        stat: Some(stat(file, 10, 1)),
                        // The whole 10-byte file: inline in a version-2
                        // session, dropped in a version-1 one.
                        content: InlineContent {
                            bytes: b"0123456789",
                            whole_file: true,
                        },
                    },
                    now,
                );
            }
            Op::Connect { ack, v2 } => {
                self.version = 1;
                self.host_queue.clear();
                self.reads.clear();
                self.c.on_connected(now);
                self.drain();
                assert!(self.marks.is_empty(), "a new session flushes the marks");
                if ack && let Some(id) = self.hello.take() {
                    let msg = if v2 {
                        HelloAck {
                            version: 2,
                            max_inline_len: 8,
                            ..ack_msg()
                        }
                    } else {
                        ack_msg()
                    };
                    self.version = msg.version;
                    self.c.on_receive(&enc(Message::HelloAck(msg), id), now);
                }
            }
            Op::Disconnect => {
                self.host_queue.clear();
                self.reads.clear();
                self.c.on_disconnected(now);
            }
            Op::Garbage => {
                self.c.on_receive(b"NOT A FRAME AT ALL!!", now);
            }
            Op::Answer { nth, decision, ttl } => {
                if !self.host_queue.is_empty() {
                    let id = self.host_queue.remove(nth % self.host_queue.len());
                    let d = [Decision::Allow, Decision::Deny, Decision::AllowNoCache]
                        [decision as usize];
                    let ttl = if d == Decision::AllowNoCache { 0 } else { ttl };
                    self.answer_ttl = ttl;
                    let v = Verdict {
                        decision: d,
                        cache_ttl_secs: ttl,
                        threat_name: "T",
                    };
                    self.c
                        .on_receive(&encv(Message::Verdict(v), id, self.version), now);
                }
            }
            Op::Request { nth } => {
                if !self.host_queue.is_empty() {
                    let id = self.host_queue[nth % self.host_queue.len()];
                    self.next_read += 1;
                    let req = ReadRequest {
                        event_id: id,
                        offset: 0,
                        length: 16,
                    };
                    self.c.on_receive(
                        &encv(
                            Message::ReadRequest(req),
                            10_000 + self.next_read,
                            self.version,
                        ),
                        now,
                    );
                }
            }
            Op::FinishReads => {
                for r in std::mem::take(&mut self.reads) {
                    self.c.read_completed(r, ReadOutcome::EndOfFile(b"x"), now);
                }
            }
            Op::CloseWrite { file } => {
                // The edge removes the mark with the event's descriptor.
                self.marks.retain(|m| m.0 != file);
                self.c.on_close_write(7, file);
            }
            Op::Advance { ms } => {
                let target = now + Duration::from_millis(ms);
                while let Some(d) = self.c.next_deadline() {
                    if d > target {
                        break;
                    }
                    self.now = d.max(self.now);
                    self.c.on_timeout(self.now);
                    self.drain();
                }
                self.now = target;
            }
        }
        self.drain();
        assert!(self.marking.is_none());
        // No mark outlives its verdict's TTL.
        for (ino, at, ttl) in &self.marks {
            assert!(
                self.now < *at + *ttl,
                "mark on {ino} from {at:?} past its TTL {ttl:?}"
            );
        }
    }
}

/// The proptest's bound on ignore marks (fewer than its 6 files).
const MARKS: usize = 3;

fn ack_msg() -> HelloAck {
    HelloAck {
        max_events_in_flight: 4,
        ..ack()
    }
}

#[test]
fn terminate_hands_the_group_over_only_when_systemd_holds_it() {
    assert_eq!(
        stop_plan(StopRequest::Terminate, false),
        StopPlan::RemoveMarks
    );
    assert_eq!(stop_plan(StopRequest::Terminate, true), StopPlan::HandOver);
    assert_eq!(stop_plan(StopRequest::ReExec, false), StopPlan::HandOver);
    assert_eq!(stop_plan(StopRequest::ReExec, true), StopPlan::HandOver);
    assert!(supersedes(StopRequest::Terminate, StopRequest::ReExec));
    assert!(!supersedes(StopRequest::ReExec, StopRequest::Terminate));
    assert!(!supersedes(StopRequest::ReExec, StopRequest::ReExec));
    assert!(!supersedes(StopRequest::Terminate, StopRequest::Terminate));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever the order of events, host answers, reads, timeouts and
    /// disconnects: every event is answered exactly once, never after its
    /// deadline, and nothing is left after shutdown.
    #[test]
    fn every_event_answered_exactly_once_within_its_deadline(
        ops in proptest::collection::vec(op(), 1..80),
        closed in any::<bool>(),
    ) {
        let mode = if closed { FailMode::Closed } else { FailMode::Open };
        let mut run = Run {
            c: core_with_marks(mode, MARKS),
            now: Instant::ZERO,
            next_token: 1,
            open: HashMap::new(),
            answered: HashMap::new(),
            host_queue: Vec::new(),
            hello: None,
            reads: Vec::new(),
            next_read: 0,
            marks: Vec::new(),
            answer_ttl: 0,
            marking: None,
            version: 1,
        };
        for op in ops {
            run.step(op);
            prop_assert_eq!(run.c.pending(), run.open.len());
        }
        // Time passes past every deadline: all answered by then.
        run.step(Op::Advance { ms: TIMEOUT_MS + 1 });
        prop_assert!(run.open.is_empty(), "unanswered: {:?}", run.open);
        run.c.shutdown(run.now);
        run.drain();
        prop_assert_eq!(run.c.pending(), 0);
        prop_assert!(run.answered.values().all(|n| *n == 1));
        prop_assert_eq!(run.answered.len() as u64, run.next_token - 1);
    }
}

#[test]
fn host_policy_is_applied_whole_pinned_fields_stay_and_a_misfit_changes_nothing() {
    use thinagent_protocol::ExclusionKind;
    let mut c = AgentCore::new(CoreConfig {
        fail_mode: FailMode::Open,
        timeout: Duration::from_millis(TIMEOUT_MS),
        guest_name: "test-vm".into(),
        policy: OpenPolicy::new(PathStyle::Posix),
        own_pid: OWN,
        kernel_cache_entries: 0,
        inline_content: true,
        host_actions: true,
        pinned: pinned_fields_from_names(&["query-timeout"]).unwrap(),
    });
    let p = HostPolicy {
        version: 4,
        fail_mode: Some(FailMode::Closed),
        exclusions: Some(vec![
            (ExclusionKind::PathPrefix, "/srv/skip/".into()),
            (ExclusionKind::Extension, ".log".into()),
            (ExclusionKind::ProcessImage, "backupd".into()),
        ]),
        query_timeout_ms: Some(50),
        max_scan_size: Some(10),
        ..HostPolicy::default()
    };
    let r = c.apply_policy(&p);
    assert_eq!(r.status, ActionStatus::Done);
    assert_eq!((r.value, r.pinned), (4, PolicyFields::QUERY_TIMEOUT.0));
    assert_eq!(c.fail_mode(), FailMode::Closed);
    assert_eq!(c.timeout(), Duration::from_millis(TIMEOUT_MS), "pinned");
    assert_eq!(c.max_scan_size(), Some(10));
    assert!(c.wants_process_images());
    assert!(c.policy().path_excluded(PathRef::Utf8("/srv/skip/a")));
    assert!(c.policy().extension_excluded(PathRef::Utf8("/x/a.log")));
    assert!(matches!(c.poll_action(), Some(Action::PolicyApplied(_))));
    // An excluded image is let through unchecked; a large file is decided
    // by the fail mode (closed) without a session.
    let mut e = ev(1, "/data/a", 5, stat(1, 3, 1));
    e.image = Some(b"backupd");
    c.on_perm_event(&e, ms(0));
    assert!(matches!(
        c.poll_action(),
        Some(Action::Respond {
            allow: true,
            why: Why::Skipped(SkipReason::ExcludedProcess),
            ..
        })
    ));
    c.on_perm_event(&ev(2, "/data/b", 5, stat(2, 11, 1)), ms(0));
    assert!(matches!(
        c.poll_action(),
        Some(Action::Respond {
            allow: false,
            why: Why::TooLarge,
            ..
        })
    ));
    // Too many prefixes: Rejected, version 4 stays whole.
    let too_many = HostPolicy {
        version: 5,
        fail_mode: Some(FailMode::Open),
        exclusions: Some(
            (0..40)
                .map(|i| (ExclusionKind::PathPrefix, format!("/p{i}")))
                .collect(),
        ),
        ..HostPolicy::default()
    };
    let r = c.apply_policy(&too_many);
    assert_eq!((r.status, r.value), (ActionStatus::Rejected, 4));
    assert_eq!(c.fail_mode(), FailMode::Closed);
    assert!(c.policy().path_excluded(PathRef::Utf8("/srv/skip/a")));
    assert_eq!(c.policy_version(), 4);
    // The same version again: Done, nothing changes.
    let r = c.apply_policy(&HostPolicy {
        version: 4,
        fail_mode: Some(FailMode::Open),
        ..HostPolicy::default()
    });
    assert_eq!((r.status, r.value), (ActionStatus::Done, 4));
    assert_eq!(c.fail_mode(), FailMode::Closed);
    assert!(pinned_fields_from_names(&["fail-mode", "nope"]).is_err());
}
