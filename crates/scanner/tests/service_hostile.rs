//! Hostile and broken peers against the in-process service over TCP and
//! Unix sockets. Each gets a defined outcome (frames sent, connection
//! closed, metric counted) while a healthy guest keeps scanning alongside,
//! unaffected.
// Off Unix (the Windows CI job) this file is skipped: every case runs over TCP and a Unix socket.
#![cfg(unix)]

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{
    EICAR, FileSpec, HostFrame, Running, connect, decode_all, file_event, frame, hello, hello_v1,
    read_to_eof, read_until, run_guest,
};
use thinagent_protocol::{ErrorCode, GoodbyeReason, Message, ReadData, ReadOutcome};
use thinagent_scanner::config::Config;
use tokio::io::AsyncWriteExt;

const LIMIT: Duration = Duration::from_secs(30);

fn hostile_config(sock: &std::path::Path) -> Config {
    let mut c = Config {
        listen: vec![
            "tcp://127.0.0.1:0".into(),
            format!("unix://{}", sock.display()),
        ],
        ..Config::default()
    };
    c.limits.max_in_flight_per_guest = 4;
    // Short enough to keep the test quick, long enough that a healthy guest
    // on a loaded machine is never idle-closed.
    c.limits.heartbeat_interval_ms = Some(1_000);
    c.limits.idle_timeout_ms = Some(3_000);
    c.limits.handshake_timeout_ms = 3_000;
    c.limits.request_timeout_ms = 10_000;
    c
}

/// A guest that keeps opening files (unique identities, so each is really
/// scanned) in fresh sessions until `stop`; returns how many it checked.
async fn healthy_guest(url: String, stop: Arc<AtomicBool>) -> usize {
    let mut checked = 0;
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let opens: Vec<_> = (0..20u64)
            .map(|i| {
                let id = round * 100 + i;
                if i % 3 == 0 {
                    FileSpec::new(&format!("/h/eicar{id}"), id, 1, EICAR)
                } else {
                    FileSpec::new(
                        &format!("/h/clean{id}"),
                        id,
                        1,
                        format!("clean content {id}").as_bytes(),
                    )
                }
            })
            .collect();
        let r = run_guest(connect(&url).await, "healthy", &opens, 4, LIMIT).await;
        r.assert_each_answered_once_by_host();
        for (i, a) in r.answers.iter().enumerate() {
            let a = a.as_ref().unwrap();
            if i % 3 == 0 {
                assert!(
                    a.is_found("Eicar-Test-Signature"),
                    "healthy open {i}: {a:?}"
                );
            } else {
                assert!(a.is_clean(), "healthy open {i}: {a:?}");
            }
        }
        checked += opens.len();
    }
    checked
}

async fn garbage(url: &str) {
    let mut s = connect(url).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: scanner\r\n\r\n\x00\x01garbage")
        .await
        .unwrap();
    let (bytes, eof) = read_to_eof(&mut s, LIMIT).await;
    assert!(eof, "garbage: connection closed");
    let frames = decode_all(&bytes);
    assert_eq!(
        frames,
        [
            HostFrame::Error(ErrorCode::MalformedFrame),
            HostFrame::Goodbye(GoodbyeReason::ProtocolError)
        ],
        "garbage"
    );
}

async fn oversized_length(url: &str) {
    let mut s = connect(url).await;
    let mut h = Vec::new();
    h.extend_from_slice(b"TAGT");
    h.extend_from_slice(&1u16.to_le_bytes()); // version
    h.extend_from_slice(&1u16.to_le_bytes()); // Hello
    h.extend_from_slice(&0u32.to_le_bytes()); // flags
    h.extend_from_slice(&1u64.to_le_bytes()); // request id
    h.extend_from_slice(&0x0FFF_FFFFu32.to_le_bytes()); // payload_len: 256 MiB
    s.write_all(&h).await.unwrap();
    let (bytes, eof) = read_to_eof(&mut s, LIMIT).await;
    assert!(eof, "oversized: connection closed");
    assert_eq!(
        decode_all(&bytes),
        [
            HostFrame::Error(ErrorCode::LimitExceeded),
            HostFrame::Goodbye(GoodbyeReason::ProtocolError)
        ],
        "oversized"
    );
}

async fn truncated_frame(url: &str) {
    let mut s = connect(url).await;
    s.write_all(&hello_v1("trunc")).await.unwrap();
    let ev = file_event(&FileSpec::new("/t", 1, 1, b"x"), 1);
    s.write_all(&ev[..ev.len() / 2]).await.unwrap();
    s.shutdown().await.unwrap();
    let (bytes, eof) = read_to_eof(&mut s, LIMIT).await;
    assert!(eof, "truncated: connection closed");
    // The handshake was answered; the half frame produced nothing.
    assert_eq!(decode_all(&bytes).first(), Some(&HostFrame::HelloAck));
    assert!(
        !decode_all(&bytes)
            .iter()
            .any(|f| matches!(f, HostFrame::Verdict { .. })),
        "no verdict for a half frame"
    );
}

async fn wrong_version(url: &str) {
    let mut s = connect(url).await;
    s.write_all(&hello("future", 3, 4)).await.unwrap();
    let (bytes, eof) = read_to_eof(&mut s, LIMIT).await;
    assert!(eof);
    assert_eq!(
        decode_all(&bytes),
        [
            HostFrame::Error(ErrorCode::VersionUnsupported),
            HostFrame::Goodbye(GoodbyeReason::VersionUnsupported)
        ],
        "wrong version"
    );
}

async fn slowloris(url: &str) {
    let mut s = connect(url).await;
    s.write_all(&hello_v1("slow")).await.unwrap();
    let ev = file_event(&FileSpec::new("/slow", 1, 1, b"x"), 1);
    // 10 bytes of a header, then silence (the socket stays open).
    s.write_all(&ev[..10]).await.unwrap();
    let (bytes, eof) = read_to_eof(&mut s, LIMIT).await;
    assert!(eof, "slowloris: closed by the idle timeout");
    let frames = decode_all(&bytes);
    assert_eq!(frames.first(), Some(&HostFrame::HelloAck));
    assert_eq!(
        frames.last(),
        Some(&HostFrame::Goodbye(GoodbyeReason::Timeout)),
        "{frames:?}"
    );
}

async fn silent_peer(url: &str) {
    // Connects and never sends Hello: the handshake timeout closes it.
    let mut s = connect(url).await;
    let (bytes, eof) = read_to_eof(&mut s, LIMIT).await;
    assert!(eof, "silent: closed by the handshake timeout");
    assert_eq!(
        decode_all(&bytes),
        [HostFrame::Goodbye(GoodbyeReason::Timeout)]
    );
}

async fn disconnect_mid_read(url: &str) {
    let mut s = connect(url).await;
    s.write_all(&hello_v1("quitter")).await.unwrap();
    let big = vec![b'a'; 1 << 20];
    s.write_all(&file_event(&FileSpec::new("/big", 1, 1, &big), 1))
        .await
        .unwrap();
    let frames = read_until(&mut s, LIMIT, |f| {
        f.iter().any(|f| matches!(f, HostFrame::ReadRequest { .. }))
    })
    .await;
    assert!(
        frames
            .iter()
            .any(|f| matches!(f, HostFrame::ReadRequest { event_id: 1, .. })),
        "{frames:?}"
    );
    drop(s); // gone in the middle of a ReadRequest
}

async fn unknown_read_data(url: &str) {
    let mut s = connect(url).await;
    s.write_all(&hello_v1("stray")).await.unwrap();
    // A ReadData nobody asked for: ignored, counted, the session goes on.
    s.write_all(&frame(
        Message::ReadData(ReadData {
            event_id: 5,
            offset: 0,
            outcome: ReadOutcome::Data(b"unsolicited"),
        }),
        999,
    ))
    .await
    .unwrap();
    let eicar = FileSpec::new("/stray/eicar", 1, 1, EICAR);
    s.write_all(&file_event(&eicar, 1)).await.unwrap();
    let frames = read_until(&mut s, LIMIT, |f| {
        f.iter().any(|f| matches!(f, HostFrame::ReadRequest { .. }))
    })
    .await;
    let Some(&HostFrame::ReadRequest {
        id, offset, length, ..
    }) = frames
        .iter()
        .find(|f| matches!(f, HostFrame::ReadRequest { .. }))
    else {
        panic!("no ReadRequest: {frames:?}")
    };
    assert_eq!(offset, 0);
    assert!(length as usize >= EICAR.len());
    s.write_all(&frame(
        Message::ReadData(ReadData {
            event_id: 1,
            offset: 0,
            outcome: ReadOutcome::EndOfFile(EICAR),
        }),
        id,
    ))
    .await
    .unwrap();
    let frames = read_until(&mut s, LIMIT, |f| {
        f.iter().any(|f| matches!(f, HostFrame::Verdict { .. }))
    })
    .await;
    assert!(
        frames.iter().any(|f| matches!(f, HostFrame::Verdict { id: 1, threat, .. } if threat == "Eicar-Test-Signature")),
        "{frames:?}"
    );
}

async fn flood(url: &str) {
    let mut s = connect(url).await;
    s.write_all(&hello_v1("flood")).await.unwrap();
    let mut burst = Vec::new();
    for id in 1..=40u64 {
        burst.extend(file_event(
            &FileSpec::new(&format!("/flood/{id}"), id, 1, b"0123456789"),
            id,
        ));
    }
    // The host may close before reading it all.
    let _ = s.write_all(&burst).await;
    let (bytes, eof) = read_to_eof(&mut s, LIMIT).await;
    assert!(eof, "flood: closed");
    let frames = decode_all(&bytes);
    assert!(
        frames.contains(&HostFrame::Error(ErrorCode::LimitExceeded)),
        "{frames:?}"
    );
    assert_eq!(
        frames.last(),
        Some(&HostFrame::Goodbye(GoodbyeReason::ProtocolError))
    );
    // Every FileEvent the host read got exactly one Verdict: the four within
    // the limit (policy verdict on close), then a run of excess events
    // answered at once by policy until the run exceeds the limit itself
    // (4 + 5 = 9), which is fatal.
    let mut ids: Vec<u64> = frames
        .iter()
        .filter_map(|f| match f {
            HostFrame::Verdict { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=9).collect::<Vec<u64>>(), "{frames:?}");
}

#[test]
fn hostile_peers_get_defined_outcomes_and_a_healthy_guest_is_unaffected() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("s.sock");
    rt.block_on(async {
        let svc = Running::start(hostile_config(&sock)).await;
        let tcp = svc.url("tcp://").to_string();
        let unix = svc.url("unix://").to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let healthy = tokio::spawn(healthy_guest(tcp.clone(), stop.clone()));
        let healthy_unix = tokio::spawn(healthy_guest(unix.clone(), stop.clone()));
        for url in [&tcp, &unix] {
            tokio::join!(
                garbage(url),
                oversized_length(url),
                truncated_frame(url),
                wrong_version(url),
                slowloris(url),
                silent_peer(url),
                disconnect_mid_read(url),
                unknown_read_data(url),
                flood(url),
            );
        }
        stop.store(true, Ordering::Relaxed);
        let checked = healthy.await.unwrap() + healthy_unix.await.unwrap();
        assert!(
            checked >= 40,
            "the healthy guests ran throughout ({checked} opens)"
        );
        // Every session, hostile or not, is gone: nothing leaked.
        let mut active = String::new();
        for _ in 0..100 {
            active = svc.metrics();
            if common::metric(&active, "thinagent_scanner_sessions_active") == 0.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            common::metric(&active, "thinagent_scanner_sessions_active"),
            0.0,
            "{active}"
        );
        let m = svc.metrics();
        let count = |kind: &str| {
            common::metric(
                &m,
                &format!("thinagent_scanner_protocol_errors_total{{kind=\"{kind}\"}}"),
            )
        };
        assert_eq!(count("bad_magic"), 2.0, "{m}");
        assert_eq!(count("frame_too_large"), 2.0, "{m}");
        assert_eq!(count("version_unsupported"), 2.0, "{m}");
        assert_eq!(count("idle_timeout"), 2.0, "{m}");
        assert_eq!(count("handshake_timeout"), 2.0, "{m}");
        assert_eq!(count("unknown_read_data"), 2.0, "{m}");
        assert_eq!(count("limit_exceeded"), 2.0, "{m}");
        svc.shutdown().await;
    });
}

#[test]
fn max_sessions_refuses_with_overloaded_and_recovers() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut config = Config {
            listen: vec!["tcp://127.0.0.1:0".into()],
            ..Config::default()
        };
        config.limits.max_sessions = 2;
        let svc = Running::start(config).await;
        let url = svc.url("tcp://").to_string();
        let mut held = Vec::new();
        for n in 0..2 {
            let mut s = connect(&url).await;
            s.write_all(&hello_v1(&format!("holder{n}"))).await.unwrap();
            let f = read_until(&mut s, LIMIT, |f| !f.is_empty()).await;
            assert_eq!(f, [HostFrame::HelloAck]);
            held.push(s);
        }
        // A session slot is taken at Hello: the third guest is answered
        // and then told Overloaded.
        let mut third = connect(&url).await;
        third.write_all(&hello_v1("third")).await.unwrap();
        let (bytes, eof) = read_to_eof(&mut third, LIMIT).await;
        assert!(eof);
        assert_eq!(
            decode_all(&bytes),
            [
                HostFrame::HelloAck,
                HostFrame::Goodbye(GoodbyeReason::Overloaded)
            ]
        );
        assert_eq!(
            common::metric(
                &svc.metrics(),
                "thinagent_scanner_sessions_refused_total{kind=\"max_sessions\"}"
            ),
            1.0
        );
        // One leaves: a new guest gets in and is served.
        drop(held.pop());
        let mut served = None;
        for _ in 0..100 {
            let r = run_guest(
                connect(&url).await,
                "late",
                &[FileSpec::new("/e", 1, 1, EICAR)],
                1,
                LIMIT,
            )
            .await;
            if r.answers[0].is_some()
                && r.closed
                    != Some(thinagent_guest::CloseReason::PeerGoodbye(
                        GoodbyeReason::Overloaded,
                    ))
            {
                served = r.answers[0].clone();
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(served.unwrap().is_found("Eicar-Test-Signature"));
        svc.shutdown().await;
    });
}

/// Hello-less connections hold only pending slots, per peer: a flood of
/// silent connections from one peer (127.0.0.2) is mostly closed at once,
/// and a good guest (127.0.0.1) beside it connects and gets every answer.
#[test]
fn a_silent_connection_flood_never_crowds_out_a_guest() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut config = Config {
            listen: vec!["tcp://127.0.0.1:0".into()],
            ..Config::default()
        };
        // Few sessions in all: before pending slots, 8 silent connections
        // were enough to lock every guest out.
        config.limits.max_sessions = 8;
        config.limits.max_pending_per_peer = 16;
        config.limits.handshake_timeout_ms = 20_000;
        let svc = Running::start(config).await;
        let url = svc.url("tcp://").to_string();
        let stop = Arc::new(AtomicBool::new(false));
        // The flood: 300 silent connections, reopened as they are closed,
        // for as long as the guest works.
        let flood = {
            let url = url.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut held = Vec::new();
                let mut opened = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    while held.len() < 300 {
                        held.push(common::connect_from(&url, "127.0.0.2").await);
                        opened += 1;
                    }
                    // Drop those the scanner closed (a read returns EOF).
                    let mut alive = Vec::new();
                    for mut s in held.drain(..) {
                        let mut b = [0u8; 16];
                        match tokio::time::timeout(
                            Duration::from_millis(1),
                            tokio::io::AsyncReadExt::read(&mut s, &mut b),
                        )
                        .await
                        {
                            Ok(Ok(0)) | Ok(Err(_)) => {}
                            _ => alive.push(s),
                        }
                    }
                    held = alive;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                opened
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Several guests connect during the flood (more than max_sessions
        // minus one would fit if silent connections held sessions).
        let files: Vec<_> = (0..20)
            .map(|i| {
                FileSpec::new(
                    &format!("/f{i}"),
                    i,
                    1,
                    if i % 2 == 0 { EICAR } else { b"clean" },
                )
            })
            .collect();
        for round in 0..3 {
            let r = run_guest(
                connect(&url).await,
                &format!("good{round}"),
                &files,
                4,
                LIMIT,
            )
            .await;
            r.assert_each_answered_once_by_host();
            assert!(
                matches!(r.closed, None | Some(thinagent_guest::CloseReason::Local)),
                "round {round}: {:?}",
                r.closed
            );
            for (i, a) in r.answers.iter().enumerate() {
                let a = a.as_ref().unwrap();
                assert_eq!(a.is_found("Eicar-Test-Signature"), i % 2 == 0, "{a:?}");
            }
        }
        stop.store(true, Ordering::Relaxed);
        let opened = flood.await.unwrap();
        assert!(opened >= 300);
        let m = svc.metrics();
        let refused = common::metric(
            &m,
            "thinagent_scanner_sessions_refused_total{kind=\"max_pending_per_peer\"}",
        );
        assert!(refused >= 284.0, "{refused} refused\n{m}");
        assert_eq!(
            common::metric(
                &m,
                "thinagent_scanner_sessions_refused_total{kind=\"max_sessions\"}"
            ),
            0.0,
            "{m}"
        );
        let pending = common::metric(&m, "thinagent_scanner_handshakes_pending");
        assert!(pending <= 16.0, "{pending}");
        svc.shutdown().await;
    });
}
