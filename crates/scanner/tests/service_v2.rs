//! Protocol version 2 through the real service (in process, over TCP): a
//! scripted version-2 guest sends files whole or partly inline with their
//! `FileEvent`s (docs/protocol.md §5.3.1) and sees exactly which
//! `ReadRequest`s the host sends; a version-1 guest (the real guest
//! `Session`) works unchanged beside it. Verdicts, the identity and content
//! caches, metrics and audit records are checked for inline content.

use crate::common;

use std::time::Duration;

use common::{EICAR, FileSpec, Running, connect, metric, run_guest};
use sha2::{Digest, Sha256};
use thinagent_protocol::{
    AgentVersion, Capabilities, CreateDisposition, Decision, EventKind, FileEvent, FilePath,
    Heartbeat, Hello, HelloAck, InlineContent, MAX_FRAME_LEN, Message, OsKind, PROTOCOL_VERSION,
    ReadData, ReadOutcome, StreamDecoder,
};
use thinagent_scanner::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(30);

/// How a file is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Send {
    /// No content: a version-1-style event, every byte read by the host.
    Nothing,
    /// The whole file inline (`WHOLE_FILE`).
    Whole,
    /// As many first bytes as §5.3.1 allows.
    Prefix,
}

/// What one open saw.
#[derive(Debug)]
struct Seen {
    decision: Decision,
    threat: String,
    ttl: u32,
    /// `(offset, length)` of every ReadRequest for the event.
    reads: Vec<(u64, u32)>,
    /// Content bytes sent inline.
    inline: usize,
}

/// A version-2 guest written against the protocol crate alone (the
/// reference guest session is not needed to speak version 2 here).
struct V2Guest {
    stream: Box<dyn common::Stream>,
    rx: StreamDecoder<Vec<u8>>,
    ack: HelloAck,
    next_id: u64,
}

impl V2Guest {
    async fn connect(url: &str, caps: Capabilities) -> Self {
        let mut stream = connect(url).await;
        let hello = Message::Hello(Hello {
            version_min: 1,
            version_max: 2,
            os: OsKind::Linux,
            agent_version: AgentVersion::default(),
            capabilities: caps,
            max_frame_len: MAX_FRAME_LEN as u32,
            max_reads_in_flight: 4,
            guest_name: "v2-guest",
        });
        stream.write_all(&encode(1, &hello, 1)).await.unwrap();
        let mut g = Self {
            stream,
            rx: StreamDecoder::new(vec![0u8; MAX_FRAME_LEN]),
            ack: HelloAck {
                version: 0,
                max_frame_len: 0,
                max_events_in_flight: 0,
                max_read_chunk: 0,
                heartbeat_interval_ms: 0,
                idle_timeout_ms: 0,
                query_timeout_ms: 0,
                max_inline_len: 0,
            },
            next_id: 1,
        };
        let (version, id, msg) = g.next().await;
        let Owned::HelloAck(ack) = msg else {
            panic!("before HelloAck: {msg:?}")
        };
        assert_eq!((version, id), (PROTOCOL_VERSION, 1), "HelloAck header");
        g.ack = ack;
        // §6.6: from the HelloAck on, the chosen version both ways.
        g.rx.set_session_version(g.ack.version);
        g
    }

    /// The next frame from the host, copied out of the decoder.
    async fn next(&mut self) -> (u16, u64, Owned) {
        loop {
            match self.rx.next_frame() {
                Ok(Some(f)) => {
                    let owned = match f.message {
                        Message::HelloAck(a) => Owned::HelloAck(a),
                        Message::Verdict(v) => {
                            Owned::Verdict(v.decision, v.threat_name.to_string(), v.cache_ttl_secs)
                        }
                        Message::ReadRequest(r) => Owned::Read(r.event_id, r.offset, r.length),
                        Message::Ping(h) => Owned::Ping(h),
                        other => panic!("unexpected from the host: {other:?}"),
                    };
                    return (f.version, f.request_id, owned);
                }
                Ok(None) => {}
                Err(e) => panic!("host sent undecodable bytes: {e}"),
            }
            let spare = self.rx.spare_mut();
            let n = tokio::time::timeout(LIMIT, self.stream.read(spare))
                .await
                .expect("host answers in time")
                .unwrap();
            assert!(n > 0, "host closed the connection");
            self.rx.commit(n);
        }
    }

    /// Opens `f`, sending it as `how` says, serves the host's reads, and
    /// returns what it saw once the Verdict came.
    async fn open(&mut self, f: &FileSpec, how: Send) -> Seen {
        let id = self.next_id;
        self.next_id += 1;
        let path = f.path.as_bytes();
        // §5.3.1: min(file size, max_inline_len, max_frame_len - 24 - 64
        // - path_len) bytes, WHOLE_FILE only when that is the whole file.
        let room = (self.ack.max_frame_len as usize).saturating_sub(24 + 64 + path.len());
        let fits = f
            .content
            .len()
            .min(self.ack.max_inline_len as usize)
            .min(room);
        let content = match how {
            Send::Nothing => InlineContent::NONE,
            Send::Whole => {
                assert_eq!(fits, f.content.len(), "{} does not fit inline", f.path);
                InlineContent {
                    bytes: &f.content,
                    whole_file: true,
                }
            }
            Send::Prefix => InlineContent {
                bytes: &f.content[..fits],
                whole_file: false,
            },
        };
        let event = Message::FileEvent(FileEvent {
            kind: EventKind::Open,
            process_id: 1,
            desired_access: 1,
            create_disposition: CreateDisposition::Open,
            file: f.identity,
            path: FilePath::Utf8(&f.path),
            content,
        });
        let v = self.ack.version;
        self.stream.write_all(&encode(v, &event, id)).await.unwrap();
        let mut reads = Vec::new();
        loop {
            let (version, rid, msg) = self.next().await;
            assert_eq!(version, v, "every host frame carries the session version");
            match msg {
                Owned::Verdict(decision, threat, ttl) => {
                    assert_eq!(rid, id, "a Verdict for another event");
                    return Seen {
                        decision,
                        threat,
                        ttl,
                        reads,
                        inline: content.bytes.len(),
                    };
                }
                Owned::Read(event, offset, length) => {
                    assert_eq!(event, id);
                    reads.push((offset, length));
                    let start = (offset as usize).min(f.content.len());
                    let end = (start + length as usize).min(f.content.len());
                    let data = &f.content[start..end];
                    let outcome = if end == f.content.len() {
                        ReadOutcome::EndOfFile(data)
                    } else {
                        ReadOutcome::Data(data)
                    };
                    let rd = Message::ReadData(ReadData {
                        event_id: event,
                        offset,
                        outcome,
                    });
                    self.stream.write_all(&encode(v, &rd, rid)).await.unwrap();
                }
                Owned::Ping(h) => {
                    let pong = encode(v, &Message::Pong(h), rid);
                    self.stream.write_all(&pong).await.unwrap();
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

#[derive(Debug)]
enum Owned {
    HelloAck(HelloAck),
    Verdict(Decision, String, u32),
    Read(u64, u64, u32),
    Ping(Heartbeat),
}

fn encode(version: u16, msg: &Message<'_>, id: u64) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    let n = msg.encode_for(version, id, &mut buf).expect("encode");
    buf.truncate(n);
    buf
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// 200 KiB, not compressible to a pattern a short prefix would give away.
fn big(seed: u32) -> Vec<u8> {
    (0..200 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

struct Setup {
    svc: Running,
    audit: std::path::PathBuf,
    _dir: tempfile::TempDir,
    big_infected: Vec<u8>,
}

/// The service with the built-in set and one SHA-256 signature of a
/// 200 KiB file, an audit log, and a loopback listener.
async fn start() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let sigs = dir.path().join("sigs");
    std::fs::create_dir(&sigs).unwrap();
    let big_infected = big(7);
    std::fs::write(
        sigs.join("big.hsb"),
        format!(
            "{}:{}:Test.Big-Inline\n",
            sha256_hex(&big_infected),
            big_infected.len()
        ),
    )
    .unwrap();
    let audit = dir.path().join("audit.jsonl");
    let mut config = Config {
        listen: vec!["tcp://127.0.0.1:0".into()],
        signatures: vec![sigs],
        audit_log: Some(audit.clone()),
        ..Config::default()
    };
    // Debug builds on a loaded machine are slow; this is about correctness.
    config.limits.request_timeout_ms = 20_000;
    Setup {
        svc: Running::start(config).await,
        audit,
        _dir: dir,
        big_infected,
    }
}

/// The audit log's records once it holds `n` (its writer is a thread).
async fn audit_records(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    for _ in 0..200 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= n {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the audit log never held {n} records");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_guest_inline_whole_and_partial_and_v1_guest_unchanged() {
    let s = start().await;
    let url = s.svc.url("tcp://").to_string();
    let mut g = V2Guest::connect(
        &url,
        Capabilities(Capabilities::READ_CONTENT.0 | Capabilities::INLINE_CONTENT.0),
    )
    .await;
    assert_eq!(g.ack.version, 2);
    assert_eq!(g.ack.max_inline_len, thinagent_protocol::MAX_INLINE_LEN);

    // EICAR whole inline: denied, no ReadRequest at all.
    let eicar = FileSpec::new("/v2/eicar.com", 1, 1, EICAR);
    let seen = g.open(&eicar, Send::Whole).await;
    assert_eq!(
        (seen.decision, seen.threat.as_str()),
        (Decision::Deny, "Eicar-Test-Signature")
    );
    assert!(seen.reads.is_empty(), "{:?}", seen.reads);
    assert_eq!(seen.ttl, 300);

    // A clean small file whole inline: allowed, no ReadRequest.
    let clean = FileSpec::new("/v2/clean.txt", 2, 1, b"a clean small file\n");
    let seen = g.open(&clean, Send::Whole).await;
    assert_eq!(seen.decision, Decision::Allow);
    assert!(seen.reads.is_empty());

    // An empty file is WHOLE_FILE with no bytes.
    let empty = FileSpec::new("/v2/empty", 3, 1, b"");
    let seen = g.open(&empty, Send::Whole).await;
    assert_eq!(seen.decision, Decision::Allow);
    assert!(seen.reads.is_empty());

    // 200 KiB with its first ~64 KiB inline: the reads begin where the
    // inline bytes end and cover the rest exactly; the signature over the
    // whole file matches only if the host put both parts together.
    let big_bad = FileSpec::new("/v2/big-infected.bin", 4, 1, &s.big_infected);
    let seen = g.open(&big_bad, Send::Prefix).await;
    assert_eq!(
        (seen.decision, seen.threat.as_str()),
        (Decision::Deny, "Test.Big-Inline")
    );
    let prefix = seen.inline;
    assert!(prefix > 60_000 && prefix < 65_536, "{prefix}");
    assert_eq!(seen.reads.first().map(|r| r.0), Some(prefix as u64));
    let mut at = prefix as u64;
    for (offset, length) in &seen.reads {
        assert_eq!(*offset, at, "reads in order, no gap: {:?}", seen.reads);
        at += u64::from(*length);
    }
    assert_eq!(at, s.big_infected.len() as u64);
    let big_clean_content = big(8);
    let big_clean = FileSpec::new("/v2/big-clean.bin", 5, 1, &big_clean_content);
    let seen = g.open(&big_clean, Send::Prefix).await;
    assert_eq!(seen.decision, Decision::Allow);
    // The path is shorter: the frame leaves room for more inline bytes.
    let prefix_clean = seen.inline;
    assert_eq!(prefix_clean, prefix + 3);
    assert_eq!(seen.reads.first().map(|r| r.0), Some(prefix_clean as u64));
    let pulled_big = 2 * 200 * 1024 - (prefix + prefix_clean) as u64;

    // The same EICAR again (same identity): the identity cache answers.
    let seen = g.open(&eicar, Send::Whole).await;
    assert_eq!(seen.decision, Decision::Deny);
    // The same bytes under another identity: the content cache (BLAKE3 of
    // the inline bytes) answers.
    let eicar2 = FileSpec::new("/v2/eicar-copy.com", 6, 1, EICAR);
    let seen = g.open(&eicar2, Send::Whole).await;
    assert_eq!(
        (seen.decision, seen.threat.as_str()),
        (Decision::Deny, "Eicar-Test-Signature")
    );
    // Without inline content a version-2 session reads as version 1 does.
    let plain = FileSpec::new("/v2/plain.txt", 7, 1, b"read the version-1 way\n");
    let seen = g.open(&plain, Send::Nothing).await;
    assert_eq!(seen.decision, Decision::Allow);
    assert_eq!(seen.reads, vec![(0, 23)]);

    let m = s.svc.metrics();
    let inline_total = 3 * EICAR.len() + 19 + prefix + prefix_clean;
    assert_eq!(
        metric(&m, "thinagent_scanner_inline_content_bytes_total"),
        inline_total as f64,
        "{m}"
    );
    assert_eq!(
        metric(&m, "thinagent_scanner_inline_events_total{whole=\"true\"}"),
        5.0
    );
    assert_eq!(
        metric(&m, "thinagent_scanner_inline_events_total{whole=\"false\"}"),
        2.0
    );
    // Pulled bytes are the reads alone, never the inline ones.
    assert_eq!(
        metric(&m, "thinagent_scanner_bytes_read_total"),
        (pulled_big + 23) as f64
    );
    assert_eq!(
        metric(&m, "thinagent_scanner_cache_hits_total{kind=\"guest\"}"),
        1.0
    );
    assert_eq!(
        metric(&m, "thinagent_scanner_cache_hits_total{kind=\"content\"}"),
        1.0
    );

    // A version-1 guest (the reference guest session) beside it, unchanged.
    let opens = vec![
        FileSpec::new("/v1/eicar.com", 101, 1, EICAR),
        FileSpec::new("/v1/clean.txt", 102, 1, b"a clean file, read by the host\n"),
        FileSpec::new("/v1/big-infected.bin", 103, 1, &s.big_infected),
    ];
    let report = run_guest(connect(&url).await, "v1-guest", &opens, 8, LIMIT).await;
    report.assert_each_answered_once_by_host();
    let answers: Vec<_> = report.answers.iter().map(|a| a.clone().unwrap()).collect();
    assert!(answers[0].is_found("Eicar-Test-Signature"), "{answers:?}");
    assert!(answers[1].is_clean(), "{answers:?}");
    // Same bytes as the v2 guest's big file, another guest identity (the
    // name differs on loopback): the content cache, after reading it all.
    assert!(answers[2].is_found("Test.Big-Inline"), "{answers:?}");
    let m = s.svc.metrics();
    assert_eq!(
        metric(&m, "thinagent_scanner_inline_content_bytes_total"),
        inline_total as f64,
        "a version-1 guest sends nothing inline"
    );
    assert_eq!(
        metric(&m, "thinagent_scanner_bytes_read_total"),
        (pulled_big + 23 + EICAR.len() as u64 + 31 + 200 * 1024) as f64
    );

    // The audit log: pulled and inline bytes apart.
    let records = audit_records(&s.audit, 11).await;
    let by_path = |p: &str| {
        records
            .iter()
            .filter(|r| r["path"] == p)
            .cloned()
            .collect::<Vec<_>>()
    };
    let e = by_path("/v2/eicar.com");
    assert_eq!(e.len(), 2);
    assert_eq!(
        (&e[0]["bytes"], &e[0]["inline_bytes"], &e[0]["whole_file"]),
        (&0.into(), &68.into(), &true.into())
    );
    assert_eq!(
        (&e[0]["cache"], &e[1]["cache"]),
        (&"none".into(), &"guest".into())
    );
    assert_eq!(by_path("/v2/eicar-copy.com")[0]["cache"], "content");
    let b = &by_path("/v2/big-infected.bin")[0];
    assert_eq!(b["bytes"], 200 * 1024 - prefix as u64);
    assert_eq!(b["inline_bytes"], prefix as u64);
    assert_eq!(b["whole_file"], false);
    assert_eq!(b["verdict"], "deny");
    let v1 = &by_path("/v1/eicar.com")[0];
    assert_eq!((&v1["bytes"], &v1["inline_bytes"]), (&68.into(), &0.into()));
    s.svc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_content_can_be_turned_off_and_is_refused_without_the_capability() {
    let s = start().await;
    let url = s.svc.url("tcp://").to_string();
    // No INLINE_CONTENT: version 2, but nothing may come inline.
    let mut g = V2Guest::connect(&url, Capabilities::READ_CONTENT).await;
    assert_eq!((g.ack.version, g.ack.max_inline_len), (2, 0));
    let f = FileSpec::new("/x/eicar.com", 1, 1, EICAR);
    let seen = g.open(&f, Send::Nothing).await;
    assert_eq!(seen.decision, Decision::Deny);
    assert_eq!(seen.reads, vec![(0, 68)]);
    // Sending content anyway is a session error: Error(UnexpectedMessage)
    // with the event id, Goodbye, close; no Verdict.
    let event = Message::FileEvent(FileEvent {
        kind: EventKind::Open,
        process_id: 1,
        desired_access: 1,
        create_disposition: CreateDisposition::Open,
        file: f.identity,
        path: FilePath::Utf8(&f.path),
        content: InlineContent {
            bytes: EICAR,
            whole_file: true,
        },
    });
    g.stream.write_all(&encode(2, &event, 9)).await.unwrap();
    let (rest, eof) = common::read_to_eof(&mut g.stream, LIMIT).await;
    assert!(eof);
    assert_eq!(
        common::decode_all(&rest),
        vec![
            common::HostFrame::Error(thinagent_protocol::ErrorCode::UnexpectedMessage),
            common::HostFrame::Goodbye(thinagent_protocol::GoodbyeReason::ProtocolError)
        ]
    );
    s.svc.shutdown().await;

    // A scanner with inline content off announces 0 to everyone.
    let mut config = Config {
        listen: vec!["tcp://127.0.0.1:0".into()],
        ..Config::default()
    };
    config.limits.max_inline_len = Some(0);
    let svc = Running::start(config).await;
    let g = V2Guest::connect(
        svc.url("tcp://"),
        Capabilities(Capabilities::READ_CONTENT.0 | Capabilities::INLINE_CONTENT.0),
    )
    .await;
    assert_eq!((g.ack.version, g.ack.max_inline_len), (2, 0));
    drop(g);
    svc.shutdown().await;
}
