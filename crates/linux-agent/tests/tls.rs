//! The agent reaching a `tls://` scanner with a client certificate (made
//! with the OpenSSL commands docs/operations.md gives): EICAR is denied and
//! the scanner audits the guest by its certificate subject; with a
//! certificate from a CA the scanner does not trust the agent never gets a
//! session and fail-closed denies. Skips like the other fanotify tests when
//! not root.

use crate::common;

#[path = "../../guest-tls/tests/support/openssl_pki.rs"]
mod openssl_pki;

use common::{Agent, EICAR, EPERM, Scanner, base_args, read, setup, state_dir};

fn tls_scanner(state: &std::path::Path, pki: &openssl_pki::Pki) -> Scanner {
    Scanner::start_with("tls://127.0.0.1:0", state, &[], |c| {
        c.tls = Some(thinagent_scanner::tls::TlsConfig {
            cert: pki.path("scanner.crt"),
            key: pki.path("scanner.key"),
            client_ca: pki.path("guest-ca.crt"),
            crl: None,
        });
    })
}

#[test]
fn eicar_denied_over_tls_and_audited_by_certificate_subject() {
    let Some(mnt) = setup("eicar_denied_over_tls") else {
        return;
    };
    if !openssl_pki::available() {
        return;
    }
    let state = state_dir();
    let pki = openssl_pki::Pki::new(state.path());
    pki.guest("vm-17", "/CN=vm-17", "guest-ca");
    let scanner = tls_scanner(state.path(), &pki);
    let eicar = mnt.join("eicar.com");
    let clean = mnt.join("readme.txt");
    std::fs::write(&eicar, EICAR).unwrap();
    std::fs::write(&clean, b"clean\n").unwrap();
    let watch = mnt.path().to_str().unwrap();
    let (cert, key, ca) = (
        pki.arg("vm-17.crt"),
        pki.arg("vm-17.key"),
        pki.arg("guest-ca.crt"),
    );
    let mut args = base_args(&scanner.url, watch);
    args.extend(["--tls-cert", &cert, "--tls-key", &key, "--tls-ca", &ca]);
    args.extend(["--fail-mode", "closed", "--guest-name", "any-name"]);
    let mut agent = Agent::start(state.path(), &args);
    assert_eq!(
        read(&eicar),
        Err(EPERM),
        "EICAR denied:\n{}",
        agent.log_text()
    );
    assert_eq!(read(&clean).unwrap(), b"clean\n");
    let audit = scanner.audit_with(eicar.to_str().unwrap());
    let line = audit
        .lines()
        .find(|l| l.contains(eicar.to_str().unwrap()))
        .unwrap();
    let entry: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(entry["peer"], "tls:CN=vm-17", "{line}");
    assert_eq!(entry["verdict"], "deny");
    assert!(agent.terminate().success());
}

#[test]
fn a_certificate_the_scanner_does_not_trust_gets_no_session() {
    let Some(mnt) = setup("untrusted_certificate") else {
        return;
    };
    if !openssl_pki::available() {
        return;
    }
    let state = state_dir();
    let pki = openssl_pki::Pki::new(state.path());
    pki.guest("rogue", "/CN=vm-17", "rogue-ca");
    let scanner = tls_scanner(state.path(), &pki);
    let clean = mnt.join("readme.txt");
    std::fs::write(&clean, b"clean\n").unwrap();
    let watch = mnt.path().to_str().unwrap();
    let (cert, key, ca) = (
        pki.arg("rogue.crt"),
        pki.arg("rogue.key"),
        pki.arg("guest-ca.crt"),
    );
    let mut args = base_args(&scanner.url, watch);
    args.extend(["--tls-cert", &cert, "--tls-key", &key, "--tls-ca", &ca]);
    args.extend(["--fail-mode", "closed", "--timeout-ms", "500"]);
    let mut agent = Agent::start(state.path(), &args);
    // Not served: fail-closed denies even a clean file.
    assert!(read(&clean).is_err(), "{}", agent.log_text());
    assert!(scanner.audit_text().is_empty(), "{}", scanner.audit_text());
    // The log says why, and what to do.
    assert!(
        common::eventually(std::time::Duration::from_secs(10), || agent
            .log_text()
            .contains("the scanner refused this guest's certificate (UnknownCA)")),
        "{}",
        agent.log_text()
    );
    assert!(agent.terminate().success());
}

#[test]
fn tls_without_a_certificate_is_a_usage_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_thinagent-linux-agent"))
        .args(["--connect", "tls://127.0.0.1:5318", "--watch", "/tmp"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tls-cert"), "{err}");
}
