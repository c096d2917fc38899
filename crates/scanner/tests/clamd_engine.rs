//! The clamd engine against a real clamd (Debian's clamav-daemon) with a
//! custom signature database written by the test: no freshclam, no network.
//! Skips with a printed reason when clamd is not installed, except in CI
//! (`CI=true`), where it fails.
// Off Unix (the Windows CI job) this file is skipped:
// clamd over a Unix socket (and clamav-daemon, a Unix service).
#![cfg(unix)]

use crate::support::clamd_daemon;

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::time::Duration;

use clamd_daemon::{ClamdDaemon, EICAR, EICAR_MD5};
use thinagent_scanner::engine::clamd::{ClamdAddress, ClamdEngine};
use thinagent_scanner::engine::{Engine, EngineError};

/// A body marker matched by the .ndb signature below.
const MARKER: &[u8] = b"THINAGENT-CLAMD-BODY-MARKER-0123456789";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// clamd with: EICAR by MD5 (.hdb), a body signature (.ndb), `StreamMaxLength
/// 4M`.
fn daemon() -> Option<ClamdDaemon> {
    let hdb = format!("{EICAR_MD5}:68:ThinAgent.Test.Eicar\n");
    let ndb = format!("ThinAgent.Test.Body:0:*:{}\n", hex(MARKER));
    ClamdDaemon::start(&[("test.hdb", &hdb), ("test.ndb", &ndb)], "4M")
}

fn engines(d: &ClamdDaemon) -> [ClamdEngine; 2] {
    let timeout = Duration::from_secs(30);
    [
        ClamdEngine::new(ClamdAddress::Unix(d.unix_socket.clone()), timeout),
        ClamdEngine::new(ClamdAddress::Tcp(d.tcp.clone()), timeout),
    ]
}

/// Feeds `data` to a fresh scan in chunks of `chunk` bytes.
fn scan_chunked(
    engine: &ClamdEngine,
    data: &[u8],
    chunk: usize,
) -> Result<Option<String>, EngineError> {
    let mut scan = engine.start(data.len() as u64);
    for piece in data.chunks(chunk) {
        assert_eq!(scan.update(piece)?, None, "clamd answers only at the end");
    }
    Ok(scan.finish()?.map(|d| {
        assert_eq!(d.engine, "clamd");
        d.threat
    }))
}

/// Deterministic filler that matches none of the signatures.
fn filler(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn ping_version_and_verdicts_over_unix_and_tcp() {
    let Some(d) = daemon() else { return };
    for engine in engines(&d) {
        let at = engine.address().to_string();
        engine
            .ping()
            .unwrap_or_else(|e| panic!("{at}: {e}\n{}", d.output()));
        let version = engine.version().unwrap();
        assert!(version.starts_with("ClamAV "), "{at}: {version}");

        // EICAR, from the custom .hdb (clamd marks non-official DBs).
        let threat = scan_chunked(&engine, EICAR, 7).unwrap();
        assert_eq!(
            threat.as_deref(),
            Some("ThinAgent.Test.Eicar.UNOFFICIAL"),
            "{at}"
        );

        // A clean file.
        assert_eq!(
            scan_chunked(&engine, &filler(100_000), 4096).unwrap(),
            None,
            "{at}"
        );
        // An empty file.
        assert_eq!(scan_chunked(&engine, b"", 1).unwrap(), None, "{at}");
        // EICAR with one byte changed is clean (hash signature).
        let mut near = EICAR.to_vec();
        near[0] = b'Y';
        assert_eq!(scan_chunked(&engine, &near, 68).unwrap(), None, "{at}");
    }
}

#[test]
fn body_signature_matches_across_chunk_boundaries() {
    let Some(d) = daemon() else { return };
    for engine in engines(&d) {
        // 3 MiB of filler with the marker straddling a 4 KiB chunk boundary,
        // streamed in 4 KiB updates, plus one update bigger than the
        // engine's 1 MiB INSTREAM chunk.
        let mut data = filler(3 * 1024 * 1024);
        let at = 2 * 1024 * 1024 + 4096 - MARKER.len() / 2;
        data[at..at + MARKER.len()].copy_from_slice(MARKER);
        assert_eq!(
            scan_chunked(&engine, &data, 4096).unwrap().as_deref(),
            Some("ThinAgent.Test.Body.UNOFFICIAL")
        );
        assert_eq!(
            scan_chunked(&engine, &data, 3 * 1024 * 1024)
                .unwrap()
                .as_deref(),
            Some("ThinAgent.Test.Body.UNOFFICIAL")
        );
        assert_eq!(
            engine.scan_bytes(&filler(3 * 1024 * 1024)).unwrap(),
            None,
            "the same filler without the marker is clean"
        );
    }
}

#[test]
fn stream_longer_than_stream_max_length_is_refused_clearly() {
    let Some(d) = daemon() else { return };
    let data = filler(6 * 1024 * 1024);
    for engine in engines(&d) {
        // clamd's own refusal (the engine does not know the limit). Under
        // load CI once saw clamd's reply missing after the write failed
        // (Unavailable: Broken pipe), a race not yet root-caused (see
        // read_reply): one retry, and the refusal must then be clear.
        let mut err = scan_chunked(&engine, &data, 64 * 1024).unwrap_err();
        if matches!(&err, EngineError::Unavailable { reason, .. } if reason.contains("Broken pipe"))
        {
            eprintln!("clamd refusal arrived as {err:?}; retrying once");
            err = scan_chunked(&engine, &data, 64 * 1024).unwrap_err();
        }
        match &err {
            EngineError::Refused { engine, reason } => {
                assert_eq!(*engine, "clamd");
                assert!(reason.contains("StreamMaxLength"), "{reason}");
            }
            other => panic!("expected Refused, got {other:?}\n{}", d.output()),
        }
        // Told the limit, the engine refuses without sending.
        let limited = engine.clone().with_stream_max_length(4 * 1024 * 1024);
        let err = limited.scan_bytes(&data).unwrap_err();
        assert!(
            matches!(&err, EngineError::Refused { reason, .. } if reason.contains("StreamMaxLength")),
            "{err:?}"
        );
        // clamd is still fine afterwards.
        assert_eq!(
            engine
                .scan_bytes(EICAR)
                .unwrap()
                .map(|d| d.threat)
                .as_deref(),
            Some("ThinAgent.Test.Eicar.UNOFFICIAL")
        );
    }
}

#[test]
fn concurrent_scans_share_one_engine() {
    let Some(d) = daemon() else { return };
    let [unix, tcp] = engines(&d);
    std::thread::scope(|s| {
        for (i, engine) in [&unix, &tcp, &unix, &tcp, &unix, &tcp]
            .into_iter()
            .enumerate()
        {
            s.spawn(move || {
                for round in 0..5 {
                    let infected = (i + round) % 2 == 0;
                    let data = if infected {
                        EICAR.to_vec()
                    } else {
                        filler(10_000 + i)
                    };
                    let got = scan_chunked(engine, &data, 1000).unwrap();
                    assert_eq!(got.is_some(), infected, "thread {i} round {round}");
                }
            });
        }
    });
}

#[test]
fn clamd_gone_is_unavailable() {
    let Some(d) = daemon() else { return };
    let [unix, tcp] = engines(&d);
    unix.ping().unwrap();
    drop(d);
    assert!(matches!(unix.ping(), Err(EngineError::Unavailable { .. })));
    let mut scan = tcp.start(3);
    assert!(matches!(
        scan.update(b"abc"),
        Err(EngineError::Unavailable { .. })
    ));
}

/// A server that accepts INSTREAM and never answers: the engine times out
/// instead of hanging the scan. (No clamd needed.)
#[test]
fn silent_backend_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("silent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        // Swallow everything until the client gives up and closes.
        let mut sink = Vec::new();
        let _ = conn.read_to_end(&mut sink);
        sink.len()
    });
    let engine = ClamdEngine::new(ClamdAddress::Unix(path), Duration::from_millis(300));
    let err = engine.scan_bytes(b"some content").unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::Timeout {
                engine: "clamd",
                millis: 300
            }
        ),
        "{err:?}"
    );
    // The server saw the command, one chunk and the terminator.
    let received = server.join().unwrap();
    assert_eq!(received, 10 + 4 + 12 + 4);
}
