//! End to end with ClamAV in the loop: a real `clamd` (Debian's clamav-daemon,
//! started by the test with its own signature database, no freshclam), the
//! real `thinagent-scanner` binary forwarding content to it with zINSTREAM
//! (`--clamd`, over its Unix socket and over TCP), and a guest built on
//! `thinagent_guest::Session`. `--no-builtin` and no signature directory: a
//! detection can only come from clamd. Skips with a printed reason when clamd
//! is not installed, except under `CI=true`.
// Off Unix (the Windows CI job) this file is skipped: clamd and the scanner over Unix sockets.
#![cfg(unix)]

use crate::common;
use crate::support::clamd_daemon;

use std::time::Duration;

use clamd_daemon::{ClamdDaemon, EICAR_MD5};
use common::{EICAR, FileSpec, ScannerProcess, connect, run_guest};

const LIMIT: Duration = Duration::from_secs(60);
/// A body signature only clamd's database knows (`.ndb`: name:target:offset:hex).
const MARKER: &[u8] = b"thinagent-clamd-e2e-marker";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn clamd_engine_end_to_end_over_unix_and_tcp() {
    let hdb = format!("{EICAR_MD5}:{}:ThinAgent.E2E.Eicar\n", EICAR.len());
    let ndb = format!("ThinAgent.E2E.Marker:0:*:{}\n", hex(MARKER));
    let Some(clamd) = ClamdDaemon::start(&[("e2e.hdb", &hdb), ("e2e.ndb", &ndb)], "4M") else {
        return;
    };
    let marked = [&b"some leading bytes, then "[..], MARKER, b" and more"].concat();
    let eicar = FileSpec::new("/guest/eicar.com", 1, 1, EICAR);
    let clean = FileSpec::new("/guest/clean.txt", 2, 1, b"nothing to see here\n");
    let body = FileSpec::new("/guest/marked.bin", 3, 1, &marked);

    for clamd_url in [
        format!("unix://{}", clamd.unix_socket.display()),
        format!("tcp://{}", clamd.tcp),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let scanner = ScannerProcess::start(
            &[
                "--listen",
                "tcp://127.0.0.1:0",
                "--no-builtin",
                "--clamd",
                &clamd_url,
            ],
            tmp.path(),
            1,
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let opens = vec![eicar.clone(), clean.clone(), body.clone()];
            let r = run_guest(
                connect(scanner.url("tcp://")).await,
                "vm-clamd",
                &opens,
                4,
                LIMIT,
            )
            .await;
            r.assert_each_answered_once_by_host();
            let a: Vec<_> = r.answers.iter().map(|a| a.clone().unwrap()).collect();
            // clamd names signatures of a local database with `.UNOFFICIAL`.
            assert!(
                a[0].is_found("ThinAgent.E2E.Eicar.UNOFFICIAL"),
                "{clamd_url}: {:?}\n{}",
                a[0],
                scanner.log_text()
            );
            assert!(a[1].is_clean(), "{clamd_url}: {:?}", a[1]);
            assert!(
                a[2].is_found("ThinAgent.E2E.Marker.UNOFFICIAL"),
                "{clamd_url}: {:?}\n{}",
                a[2],
                scanner.log_text()
            );
        });
    }
}
