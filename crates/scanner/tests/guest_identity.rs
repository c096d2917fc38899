//! Who a guest is comes from the transport, never from the name it
//! announces: two guests that claim the same name never share verdicts
//! unless the transport says they are the same peer (loopback address,
//! certificate subject); a hostile guest that claims another's name changes
//! nothing for it; plain TCP beyond loopback is refused; `tls://` admits
//! only certificates the guest CA signed. Runs the real service in-process
//! over loopback TCP (127.0.0.1 and 127.0.0.2 are different peers) and TLS.
#![cfg(unix)]

use crate::common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{
    EICAR, FileSpec, Pki, Running, connect, connect_from, revocation_list, run_guest, tls_connect,
};
use thinagent_scanner::config::Config;
use thinagent_scanner::listen::{ListenUrl, Listener};
use thinagent_scanner::service::{Service, ServiceError};

const LIMIT: Duration = Duration::from_secs(30);

/// A clean file as long as EICAR, so it can share EICAR's file identity
/// (volume, id, size, last write).
const CLEAN_68: &[u8] = &[b'x'; 68];

/// Identity-cache hits of `svc` so far.
fn guest_cache_hits(svc: &Running) -> f64 {
    common::metric(
        &svc.metrics(),
        "thinagent_scanner_cache_hits_total{kind=\"guest\"}",
    )
}

fn tcp_config() -> Config {
    Config {
        listen: vec!["tcp://127.0.0.1:0".into()],
        ..Config::default()
    }
}

/// One open of `file` by a guest named `name` over `stream`: its answer.
async fn open_once<S>(stream: S, name: &str, file: &Arc<FileSpec>) -> common::Answer
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let r = run_guest(stream, name, std::slice::from_ref(file), 1, LIMIT).await;
    r.answers[0].clone().expect("the open is answered")
}

/// Asserts that `client` gets no session at `url`: its open is never
/// answered by the host.
async fn assert_no_session(
    url: &str,
    client: &Arc<rustls::ClientConfig>,
    name: &str,
    file: &Arc<FileSpec>,
) {
    let refused = async {
        let s = tls_connect(url, client).await?;
        let r = run_guest(
            s,
            name,
            std::slice::from_ref(file),
            1,
            Duration::from_secs(5),
        )
        .await;
        Ok::<_, std::io::Error>(r.answers[0].clone())
    }
    .await;
    assert!(
        !matches!(&refused, Ok(Some(a)) if a.source == thinagent_guest::VerdictSource::Host),
        "{name}: {refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_name_from_another_peer_never_shares_verdicts() {
    let svc = Running::start(tcp_config()).await;
    let url = svc.url("tcp://").to_string();
    // Guest on 127.0.0.1 opens a clean file: scanned, Allow, cached.
    let clean = FileSpec::new("/app/tool.exe", 42, 1, CLEAN_68);
    assert!(
        open_once(connect(&url).await, "desk-01", &clean)
            .await
            .is_clean()
    );
    // Another peer (127.0.0.2) with the same name opens a file with the
    // same identity whose content is EICAR (a cloned VM: same hostname,
    // same file ids). It must be read and scanned, not answered from the
    // first guest's cache.
    let same_identity_eicar = FileSpec::new("/app/tool.exe", 42, 1, EICAR);
    let hits_before = guest_cache_hits(&svc);
    let a = open_once(
        connect_from(&url, "127.0.0.2").await,
        "desk-01",
        &same_identity_eicar,
    )
    .await;
    assert!(a.is_found("Eicar-Test-Signature"), "{a:?}");
    assert_eq!(guest_cache_hits(&svc), hits_before);
    // The same peer reconnecting (same address, same name) does share its
    // own verdicts, as before: the identity says the file is unchanged.
    let again = open_once(connect(&url).await, "desk-01", &clean).await;
    assert!(again.is_clean());
    assert_eq!(guest_cache_hits(&svc), hits_before + 1.0);
    svc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_claiming_anothers_name_cannot_plant_a_verdict_for_it() {
    let svc = Running::start(tcp_config()).await;
    let url = svc.url("tcp://").to_string();
    // The attacker (127.0.0.2) claims the victim's name and gets an Allow
    // cached for a file identity the victim has, with harmless content.
    let planted = FileSpec::new("C:\\Windows\\evil.dll", 7, 3, CLEAN_68);
    assert!(
        open_once(connect_from(&url, "127.0.0.2").await, "victim", &planted)
            .await
            .is_clean()
    );
    // The victim (127.0.0.1) opens that identity; its content is EICAR.
    let real = FileSpec::new("C:\\Windows\\evil.dll", 7, 3, EICAR);
    let a = open_once(connect(&url).await, "victim", &real).await;
    assert!(a.is_found("Eicar-Test-Signature"), "{a:?}");
    svc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cross_guest_content_cache_is_keyed_by_what_the_host_hashed() {
    // FileEvent carries no hash: the content cache can only be keyed by
    // the BLAKE3 of bytes the host read. Two peers, same identity, same
    // size, different bytes: each gets the verdict of its own bytes, both
    // ways round.
    let svc = Running::start(tcp_config()).await;
    let url = svc.url("tcp://").to_string();
    let eicar = FileSpec::new("/x", 9, 9, EICAR);
    let clean = FileSpec::new("/x", 9, 9, CLEAN_68);
    assert!(
        open_once(connect(&url).await, "a", &eicar)
            .await
            .is_found("Eicar-Test-Signature")
    );
    assert!(
        open_once(connect_from(&url, "127.0.0.2").await, "a", &clean)
            .await
            .is_clean()
    );
    assert!(
        open_once(connect_from(&url, "127.0.0.3").await, "a", &eicar)
            .await
            .is_found("Eicar-Test-Signature")
    );
    svc.shutdown().await;
}

#[tokio::test]
async fn plain_tcp_beyond_loopback_is_refused_with_what_to_do() {
    // By the config check (and so --check-config) ...
    let c = Config {
        listen: vec!["tcp://0.0.0.0:0".into()],
        ..Config::default()
    };
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("tls://HOST:PORT"), "{e}");
    let e = Service::build(&c).await.unwrap_err();
    assert!(matches!(e, ServiceError::Config(_)), "{e}");
    // ... and by the listener itself, whoever binds it.
    let url: ListenUrl = "tcp://0.0.0.0:0".parse().unwrap();
    let e = Listener::bind(&url).unwrap_err().to_string();
    assert!(e.contains("beyond loopback"), "{e}");
    // tls:// without certificates says what is missing.
    let c = Config {
        listen: vec!["tls://127.0.0.1:0".into()],
        ..Config::default()
    };
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("[tls]") && e.contains("client_ca"), "{e}");
    // Loopback TCP stays available for labs and tests.
    tcp_config().validate().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_guests_are_their_certificate_subjects() {
    let pki = Pki::new();
    pki.leaf("vm-a", "vm-a", false, &pki.ca);
    pki.leaf("vm-b", "vm-b", false, &pki.ca);
    let rogue_ca = Pki::make_ca("rogue CA");
    pki.leaf("rogue", "vm-a", false, &rogue_ca);
    let tmp = tempfile::tempdir().unwrap();
    let audit = tmp.path().join("audit.jsonl");
    let config = Config {
        listen: vec!["tls://127.0.0.1:0".into()],
        tls: Some(pki.server_config()),
        audit_log: Some(audit.clone()),
        ..Config::default()
    };
    config.validate().unwrap();
    let svc = Running::start(config).await;
    let url = svc.url("tls://").to_string();
    let (a, b) = (pki.client("vm-a"), pki.client("vm-b"));
    // vm-a gets a clean file's Allow cached ...
    let clean = FileSpec::new("/bin/app", 5, 1, CLEAN_68);
    let s = tls_connect(&url, &a).await.unwrap();
    assert!(open_once(s, "same-name", &clean).await.is_clean());
    // ... which vm-b, claiming the same name from the same address, does
    // not get: its EICAR with that identity is read and scanned.
    let eicar = FileSpec::new("/bin/app", 5, 1, EICAR);
    let hits = guest_cache_hits(&svc);
    let s = tls_connect(&url, &b).await.unwrap();
    let ans = open_once(s, "same-name", &eicar).await;
    assert!(ans.is_found("Eicar-Test-Signature"), "{ans:?}");
    assert_eq!(guest_cache_hits(&svc), hits);
    // vm-a reconnecting under any name is still vm-a: its cache answers.
    let s = tls_connect(&url, &a).await.unwrap();
    assert!(open_once(s, "renamed", &clean).await.is_clean());
    assert_eq!(guest_cache_hits(&svc), hits + 1.0);
    // A certificate for "vm-a" from a CA the scanner does not trust, and a
    // client with no certificate at all, get no session.
    let no_cert = Arc::new(pki.client_builder().with_no_client_auth());
    for (client, name) in [(pki.client("rogue"), "vm-a"), (no_cert, "x")] {
        assert_no_session(&url, &client, name, &clean).await;
    }
    let m = svc.metrics();
    assert!(
        common::metric(
            &m,
            "thinagent_scanner_sessions_refused_total{kind=\"tls_handshake\"}"
        ) >= 2.0,
        "{m}"
    );
    // One guest per subject however often it reconnects: vm-a's two
    // connections (two source ports, two names) are one series, counting
    // both verdicts; the registry lists vm-a and vm-b once each.
    let connected: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("thinagent_scanner_guest_connected{"))
        .collect();
    assert_eq!(connected.len(), 2, "{connected:?}");
    assert_eq!(
        common::metric(
            &m,
            "thinagent_scanner_guest_verdicts_total{guest=\"tls:CN=vm-a\",decision=\"allow\"}"
        ),
        2.0,
        "{m}"
    );
    let listed: Vec<String> = svc
        .handle
        .context()
        .guests
        .list()
        .into_iter()
        .map(|g| g.identity)
        .collect();
    assert_eq!(listed, ["tls:CN=vm-a", "tls:CN=vm-b"]);
    svc.shutdown().await;
    // The audit log names each guest by its certificate subject.
    let text = std::fs::read_to_string(&audit).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Verdict lines (session lines carry a `record` field, and the same peer).
    let peers: Vec<String> = lines
        .iter()
        .filter(|l| l.get("record").is_none())
        .map(|l| l["peer"].as_str().unwrap().to_string())
        .collect();
    assert!(
        lines
            .iter()
            .filter(|l| l["record"] == "guest")
            .all(|l| l["peer"].as_str().unwrap().starts_with("tls:CN=vm-")),
        "{text}"
    );
    assert_eq!(
        peers,
        ["tls:CN=vm-a", "tls:CN=vm-b", "tls:CN=vm-a"],
        "{text}"
    );
}

#[test]
fn tls_config_errors_name_the_file_and_what_to_do() {
    let pki = Pki::new();
    let mut c = pki.server_config();
    c.client_ca = Path::new("/nonexistent/ca.pem").to_path_buf();
    let e = thinagent_scanner::tls::TlsServer::load(&c)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tls.client_ca") && e.contains("/nonexistent/ca.pem"),
        "{e}"
    );
    let mut c = pki.server_config();
    c.cert = pki.path("server.key");
    let e = thinagent_scanner::tls::TlsServer::load(&c)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tls.cert") && e.contains("no certificate"),
        "{e}"
    );
}

/// `tls.crl`: a guest whose certificate its CA revoked gets no session,
/// the CA's other guests do. A list from a CA that signed none of the
/// guests refuses them all (fail closed: a wrong file is loud, it never
/// silently revokes nothing), and a file that is no list stops the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_certificate_on_the_revocation_list_gets_no_session() {
    let pki = Pki::new();
    pki.leaf("vm-a", "vm-a", false, &pki.ca);
    let (vm_b, _) = pki.leaf("vm-b", "vm-b", false, &pki.ca);
    std::fs::write(pki.path("guest.crl"), revocation_list(&pki.ca, &[&vm_b])).unwrap();
    let mut config = Config {
        listen: vec!["tls://127.0.0.1:0".into()],
        tls: Some(thinagent_scanner::tls::TlsConfig {
            crl: Some(pki.path("guest.crl")),
            ..pki.server_config()
        }),
        ..Config::default()
    };
    let clean = FileSpec::new("/bin/app", 5, 1, CLEAN_68);
    let svc = Running::start(config.clone()).await;
    let url = svc.url("tls://").to_string();
    let vm_a = pki.client("vm-a");
    let s = tls_connect(&url, &vm_a).await.unwrap();
    assert!(open_once(s, "vm-a", &clean).await.is_clean());
    assert_no_session(&url, &pki.client("vm-b"), "vm-b", &clean).await;
    let refused = "thinagent_scanner_sessions_refused_total{kind=\"tls_handshake\"}";
    assert_eq!(common::metric(&svc.metrics(), refused), 1.0);
    svc.shutdown().await;

    let other = Pki::make_ca("ThinAgent test other CA");
    std::fs::write(pki.path("other.crl"), revocation_list(&other, &[])).unwrap();
    config.tls.as_mut().unwrap().crl = Some(pki.path("other.crl"));
    let svc = Running::start(config.clone()).await;
    let url = svc.url("tls://").to_string();
    assert_no_session(&url, &vm_a, "vm-a", &clean).await;
    svc.shutdown().await;

    // The CA's certificate given as the list: refused before listening.
    config.tls.as_mut().unwrap().crl = Some(pki.path("ca.pem"));
    let Err(e) = Service::build(&config).await else {
        panic!("a CA certificate as the revocation list was taken");
    };
    let e = e.to_string();
    assert!(e.contains("tls.crl") && e.contains("BEGIN X509 CRL"), "{e}");
}

/// A reload of the `[tls]` files (SIGHUP in the binary) takes a new
/// revocation list without a restart: the session of the guest it revokes
/// is ended with `Goodbye`, its next handshake is refused, and the other
/// guests' sessions go on. A reload with a broken file changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_revocation_list_ends_the_revoked_guests_session() {
    use common::{HostFrame, decode_all, hello_v1, read_to_eof, read_until};
    use thinagent_protocol::GoodbyeReason;
    use tokio::io::AsyncWriteExt;

    let pki = Pki::new();
    let (vm_a, _) = pki.leaf("vm-a", "vm-a", false, &pki.ca);
    pki.leaf("vm-c", "vm-c", false, &pki.ca);
    let crl = pki.path("guest.crl");
    std::fs::write(&crl, revocation_list(&pki.ca, &[])).unwrap();
    let config = Config {
        listen: vec!["tls://127.0.0.1:0".into()],
        tls: Some(thinagent_scanner::tls::TlsConfig {
            crl: Some(crl.clone()),
            ..pki.server_config()
        }),
        ..Config::default()
    };
    let svc = Running::start(config).await;
    let url = svc.url("tls://").to_string();
    let (client_a, client_c) = (pki.client("vm-a"), pki.client("vm-c"));
    // vm-a is in session (its Hello answered) ...
    let mut a = tls_connect(&url, &client_a).await.unwrap();
    a.write_all(&hello_v1("vm-a")).await.unwrap();
    let frames = read_until(&mut a, LIMIT, |f| f.contains(&HostFrame::HelloAck)).await;
    assert!(frames.contains(&HostFrame::HelloAck), "{frames:?}");
    // ... and so is vm-c, whose opens go on after the reload.
    let c = tls_connect(&url, &client_c).await.unwrap();
    let untrusted = "thinagent_scanner_tls_sessions_untrusted_total";
    let reloads = |result: &str| {
        common::metric(
            &svc.metrics(),
            &format!("thinagent_scanner_tls_reloads_total{{result=\"{result}\"}}"),
        )
    };

    // A broken list: refused, the previous files stay, nobody is ended.
    std::fs::write(&crl, "not a list").unwrap();
    let e = svc.handle.reload_tls().await.unwrap_err().to_string();
    assert!(e.contains("tls.crl") && e.contains("BEGIN X509 CRL"), "{e}");
    assert_eq!(reloads("failed"), 1.0);
    assert_eq!(common::metric(&svc.metrics(), untrusted), 0.0);

    // The CA revokes vm-a: the reload ends its session ...
    std::fs::write(&crl, revocation_list(&pki.ca, &[&vm_a])).unwrap();
    assert!(svc.handle.reload_tls().await.unwrap());
    assert_eq!(reloads("ok"), 1.0);
    let (bytes, eof) = read_to_eof(&mut a, LIMIT).await;
    assert!(eof, "vm-a's session is still open after the reload");
    assert!(
        decode_all(&bytes).contains(&HostFrame::Goodbye(GoodbyeReason::Shutdown)),
        "{:?}",
        decode_all(&bytes)
    );
    assert_eq!(common::metric(&svc.metrics(), untrusted), 1.0);
    // ... its next handshake is refused ...
    assert_no_session(
        &url,
        &client_a,
        "vm-a",
        &FileSpec::new("/a", 1, 1, CLEAN_68),
    )
    .await;
    // ... and vm-c's session, open all along, is answered.
    let clean = FileSpec::new("/bin/app", 5, 1, CLEAN_68);
    assert!(open_once(c, "vm-c", &clean).await.is_clean());
    let s = tls_connect(&url, &client_c).await.unwrap();
    assert!(open_once(s, "vm-c", &clean).await.is_clean());
    assert_eq!(common::metric(&svc.metrics(), untrusted), 1.0);
    svc.shutdown().await;
}
