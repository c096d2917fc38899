//! `thinagent-diag scan` against the real scanner service (run in-process on
//! 127.0.0.1 TCP and, on Unix, a Unix socket): output shape, exit codes 0/1/2,
//! directories, --jobs/--repeat, --infected, --latency-out, a changed file;
//! protocol version 2 with inline content (the default) and `--no-inline`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use thinagent_scanner::config::Config;
use thinagent_scanner::service::Service;

const EICAR: &[u8] = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

/// Starts the service on a thread of its own; returns its tcp:// URL and,
/// on Unix, its unix:// URL (Windows has no Unix sockets). It lives until
/// the test process exits.
fn scanner(dir: &Path) -> (String, Option<String>) {
    scanner_with(dir, |_| {})
}

fn scanner_with(dir: &Path, tune: impl FnOnce(&mut Config)) -> (String, Option<String>) {
    let mut listen = vec!["tcp://127.0.0.1:0".to_string()];
    if cfg!(unix) {
        listen.push(format!("unix://{}", dir.join("scanner.sock").display()));
    }
    let mut config = Config {
        listen,
        ..Config::default()
    };
    tune(&mut config);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let service = Service::build(&config).await.unwrap();
            let urls: Vec<String> = service.urls().iter().map(ToString::to_string).collect();
            tx.send(urls).unwrap();
            service
                .run(std::future::pending(), Duration::from_secs(1))
                .await;
        });
    });
    let urls = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    (urls[0].clone(), urls.get(1).cloned())
}

fn diag(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_thinagent-diag"))
        .arg("scan")
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn files(dir: &Path) -> (PathBuf, PathBuf) {
    let eicar = dir.join("eicar.com");
    let clean = dir.join("clean.txt");
    std::fs::write(&eicar, EICAR).unwrap();
    std::fs::write(&clean, b"nothing to see here\n").unwrap();
    (eicar, clean)
}

#[test]
fn clean_file_ok_exit_0_and_eicar_found_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    let (tcp, unix) = scanner(tmp.path());
    let (eicar, clean) = files(tmp.path());
    for url in std::iter::once(&tcp).chain(unix.as_ref()) {
        let out = diag(&["--connect", url, clean.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("{}: OK\n", clean.display()));
        assert!(text(&out.stderr).contains("files/s"));
        let out = diag(&[
            "--connect",
            url,
            eicar.to_str().unwrap(),
            clean.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        // Lines come in answer order.
        let stdout = text(&out.stdout);
        let mut lines: Vec<&str> = stdout.lines().collect();
        lines.sort_unstable();
        assert_eq!(
            lines,
            [
                format!("{}: OK", clean.display()),
                format!("{}: Eicar-Test-Signature FOUND", eicar.display()),
            ]
        );
    }
}

#[test]
fn errors_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let (tcp, _) = scanner(tmp.path());
    let (eicar, clean) = files(tmp.path());
    let missing = tmp.path().join("missing.bin");
    // A missing file is that file's ERROR; the others are still scanned.
    let out = diag(&[
        "--connect",
        &tcp,
        missing.to_str().unwrap(),
        eicar.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("{}: ", missing.display())) && stdout.contains(" ERROR"),
        "{stdout}"
    );
    assert!(stdout.contains("Eicar-Test-Signature FOUND"), "{stdout}");
    // Nobody listening.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let out = diag(&[
        "--connect",
        &format!("tcp://127.0.0.1:{port}"),
        clean.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot connect"),
        "{}",
        text(&out.stderr)
    );
    // A bad URL.
    let out = diag(&["--connect", "http://x", clean.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown scheme"));
}

#[test]
fn directory_jobs_repeat_infected_and_latency_csv() {
    let tmp = tempfile::tempdir().unwrap();
    let (tcp, _) = scanner(tmp.path());
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    for i in 0..10 {
        std::fs::write(tree.join(format!("f{i}.txt")), format!("file {i}\n")).unwrap();
    }
    std::fs::write(tree.join("sub").join("eicar.com"), EICAR).unwrap();
    let csv = tmp.path().join("lat.csv");
    let out = diag(&[
        "--connect",
        &tcp,
        "--jobs",
        "4",
        "--repeat",
        "3",
        "--latency-out",
        csv.to_str().unwrap(),
        tree.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 33, "{stdout}");
    assert_eq!(stdout.matches("Eicar-Test-Signature FOUND").count(), 3);
    assert_eq!(stdout.matches(": OK").count(), 30);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "scanned 33 queries (11 files x 3 rounds), found 3, errors 0, policy-allowed 0"
        ),
        "{stderr}"
    );
    let rows = std::fs::read_to_string(&csv).unwrap();
    let mut lines = rows.lines();
    assert_eq!(lines.next(), Some("path,round,latency_us,result,bytes"));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 33);
    assert!(
        rows.iter()
            .any(|r| r.contains("FOUND Eicar-Test-Signature"))
    );
    // --infected: only the detections are printed.
    let out = diag(&["--connect", &tcp, "-i", tree.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stdout),
        format!(
            "{}: Eicar-Test-Signature FOUND\n",
            tree.join("sub").join("eicar.com").display()
        )
    );
}

/// `(result, bytes pulled)` per file name from a `--latency-out` CSV.
fn csv_rows(csv: &Path) -> std::collections::BTreeMap<String, (String, u64)> {
    std::fs::read_to_string(csv)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let name = Path::new(f[0]).file_name().unwrap().to_string_lossy();
            (name.into_owned(), (f[3].to_string(), f[4].parse().unwrap()))
        })
        .collect()
}

#[test]
fn inline_by_default_and_no_inline_give_the_same_verdicts() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("eicar.com"), EICAR).unwrap();
    std::fs::write(tree.join("clean.txt"), b"nothing to see here\n").unwrap();
    std::fs::write(tree.join("empty"), b"").unwrap();
    let big: Vec<u8> = (0..200 * 1024u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(tree.join("big.bin"), &big).unwrap();
    let mut seen = Vec::new();
    for no_inline in [false, true] {
        // A scanner of its own each time: nothing cached from the other run.
        let own = tmp.path().join(format!("scanner-{no_inline}"));
        std::fs::create_dir(&own).unwrap();
        let (tcp, _) = scanner(&own);
        let csv = tmp.path().join(format!("lat-{no_inline}.csv"));
        let mut args = vec![
            "--connect",
            &tcp,
            "--latency-out",
            csv.to_str().unwrap(),
            tree.to_str().unwrap(),
        ];
        if no_inline {
            args.insert(0, "--no-inline");
        }
        let out = diag(&args);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("MB/s inline"),
            "{}",
            text(&out.stderr)
        );
        let rows = csv_rows(&csv);
        let results: Vec<(String, String)> = rows
            .iter()
            .map(|(k, (r, _))| (k.clone(), r.clone()))
            .collect();
        let pulled = |name: &str| rows[name].1;
        if no_inline {
            // Version 1: the host reads every byte.
            assert_eq!(pulled("eicar.com"), 68);
            assert_eq!(pulled("clean.txt"), 20);
            assert_eq!(pulled("big.bin"), 200 * 1024);
        } else {
            // Small files went whole inline: nothing pulled. The big one
            // went with its first ~64 KiB inline: the rest was pulled.
            assert_eq!(pulled("eicar.com"), 0);
            assert_eq!(pulled("clean.txt"), 0);
            assert_eq!(pulled("empty"), 0);
            let rest = pulled("big.bin");
            assert!(
                (200 * 1024 - 65_447..200 * 1024 - 60_000).contains(&rest),
                "{rest}"
            );
        }
        seen.push(results);
    }
    assert_eq!(seen[0], seen[1], "the same verdicts either way");
    assert!(
        seen[0].contains(&("eicar.com".into(), "FOUND Eicar-Test-Signature".into())),
        "{:?}",
        seen[0]
    );
}

#[test]
fn a_changed_file_is_scanned_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (tcp, _) = scanner(tmp.path());
    let f = tmp.path().join("doc.txt");
    std::fs::write(&f, b"harmless\n").unwrap();
    let out = diag(&["--connect", &tcp, f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    // Same path and inode, new content, size and mtime.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&f)
        .and_then(|mut h| std::io::Write::write_all(&mut h, EICAR))
        .unwrap();
    let out = diag(&["--connect", &tcp, f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert_eq!(
        text(&out.stdout),
        format!("{}: Eicar-Test-Signature FOUND\n", f.display())
    );
}

#[test]
fn a_policy_verdict_is_shown_as_such() {
    let tmp = tempfile::tempdir().unwrap();
    let (tcp, _) = scanner_with(tmp.path(), |c| c.limits.max_file_size = 100);
    let f = tmp.path().join("large.bin");
    std::fs::write(&f, vec![b'z'; 1000]).unwrap();
    let out = diag(&["--connect", &tcp, f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout),
        format!(
            "{}: OK (policy verdict AllowNoCache: not fully scanned)\n",
            f.display()
        )
    );
    assert!(text(&out.stderr).contains("policy-allowed 1"));
}

#[cfg(unix)]
#[path = "../../guest-tls/tests/support/openssl_pki.rs"]
mod openssl_pki;

/// `scan --connect tls://` with a client certificate made as
/// docs/operations.md says: served; without one, or with one from another
/// CA, not.
#[cfg(unix)]
#[test]
fn tls_scanner_with_client_certificates() {
    if !openssl_pki::available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let pki = openssl_pki::Pki::new(d);
    pki.guest("vm-17", "/CN=vm-17", "guest-ca");
    pki.guest("rogue", "/CN=vm-17", "rogue-ca");
    // A tls:// scanner of the guest CA, with its revocation list `crl`.
    let tls_scanner = |crl: Option<&str>| {
        scanner_with(d, |c| {
            c.listen = vec!["tls://127.0.0.1:0".into()];
            c.tls = Some(thinagent_scanner::tls::TlsConfig {
                cert: pki.path("scanner.crt"),
                key: pki.path("scanner.key"),
                client_ca: pki.path("guest-ca.crt"),
                crl: crl.map(|f| pki.path(f)),
            });
        })
        .0
    };
    let url = tls_scanner(None);
    assert!(url.starts_with("tls://"), "{url}");
    let (eicar, _) = files(d);
    let with = |cert: &str, key: &str| {
        diag(&[
            "--connect",
            &url,
            "--tls-cert",
            &pki.arg(cert),
            "--tls-key",
            &pki.arg(key),
            "--tls-ca",
            &pki.arg("guest-ca.crt"),
            "--timeout-ms",
            "5000",
            eicar.to_str().unwrap(),
        ])
    };
    let out = with("vm-17.crt", "vm-17.key");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("{}: Eicar-Test-Signature FOUND\n", eicar.display())
    );
    // A certificate with the same subject from another CA is not served.
    let out = with("rogue.crt", "rogue.key");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    // No certificate: refused before connecting, saying what to give.
    let out = diag(&["--connect", &url, eicar.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--tls-cert"),
        "{}",
        text(&out.stderr)
    );

    // vm-18 revoked with the documented `openssl ca` commands: a scanner
    // given the CA's list (tls.crl) refuses it and serves vm-17.
    pki.guest("vm-18", "/CN=vm-18", "guest-ca");
    pki.revoke("vm-18", "guest-ca");
    let url = tls_scanner(Some("guest-ca.crl"));
    let with = |name: &str| {
        diag(&[
            "--connect",
            &url,
            "--tls-cert",
            &pki.arg(&format!("{name}.crt")),
            "--tls-key",
            &pki.arg(&format!("{name}.key")),
            "--tls-ca",
            &pki.arg("guest-ca.crt"),
            "--timeout-ms",
            "5000",
            eicar.to_str().unwrap(),
        ])
    };
    let out = with("vm-17");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let out = with("vm-18");
    assert_eq!(out.status.code(), Some(2), "revoked: {}", text(&out.stdout));
    assert!(
        text(&out.stderr)
            .contains("the scanner refused this guest's certificate (CertificateRevoked)"),
        "{}",
        text(&out.stderr)
    );
}
