//! `thinagent-diag farm` without a reachable Redis: what to give, what to
//! check, exit status 2. (With a real Redis and two real scanners:
//! crates/scanner/tests/farm_processes.rs.)

use crate::common;

use std::net::TcpListener;

use common::diag;

#[test]
fn no_redis_named_says_what_to_give() {
    for cmd in ["guests", "detections"] {
        let (code, out, err) = diag(&["farm", cmd]);
        assert_eq!(code, 2, "{out}{err}");
        assert!(
            err.contains("--redis-url") && err.contains("--config"),
            "{err}"
        );
    }
}

#[test]
fn an_unreachable_redis_says_what_to_check_and_hides_the_password() {
    // A port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://reader:s3cret@127.0.0.1:{port}");
    let (code, out, err) = diag(&["farm", "guests", "--redis-url", &url]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("cannot reach the farm's Redis"), "{err}");
    assert!(
        err.contains("firewall") && err.contains("--password-file"),
        "{err}"
    );
    assert!(err.contains("reader:***@"), "{err}");
    assert!(!err.contains("s3cret"), "password shown: {err}");
    assert!(out.is_empty(), "{out}");
}

#[test]
fn settings_come_from_the_scanners_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("scanner.toml");
    std::fs::write(
        &config,
        "[farm]\nredis_url = \"redis://127.0.0.1:1\"\nkey_prefix = \"f1:\"\n",
    )
    .unwrap();
    let (code, _, err) = diag(&["farm", "detections", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("redis://127.0.0.1:1"), "{err}");
    let (code, _, err) = diag(&[
        "farm",
        "detections",
        "--since",
        "12y",
        "--redis-url",
        "redis://127.0.0.1:1",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("--since \"12y\""), "{err}");
    let missing = dir.path().join("none.toml");
    let (code, _, err) = diag(&["farm", "guests", "--config", missing.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.contains("cannot read the scanner configuration"),
        "{err}"
    );
}
