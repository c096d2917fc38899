//! The systemd unit under dist/ matches the binary: its command line parses,
//! `systemd-analyze verify` accepts it (when available), and it has none of the
//! mount-namespace options that would blind a fanotify mount mark.

use std::path::Path;
use std::process::Command;

fn unit_text() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/thinagent-linux-agent.service"),
    )
    .unwrap()
}

fn exec_start(text: &str) -> Vec<String> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    line.split_whitespace().map(str::to_string).collect()
}

#[test]
fn unit_runs_the_agent_with_valid_arguments_and_stops_with_sigterm() {
    let text = unit_text();
    let argv = exec_start(&text);
    assert_eq!(argv[0], "/usr/local/bin/thinagent-linux-agent");
    assert!(argv.contains(&"--connect".to_string()));
    assert!(argv.contains(&"vsock://2:5317".to_string()));
    assert!(text.contains("KillSignal=SIGTERM"));
    // Restarts hand the fanotify group over (issue 12): the store, the
    // notification access it needs, reload = exec in place.
    assert!(text.contains("\nFileDescriptorStoreMax=4\n"));
    assert!(text.contains("\nNotifyAccess=main\n"));
    assert!(text.contains("\nExecReload=/bin/kill -USR2 $MAINPID\n"));
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("FileDescriptorStorePreserve=")),
        "Preserve=yes would keep the group, unread, after a stop"
    );
    assert!(text.contains("CapabilityBoundingSet=CAP_SYS_ADMIN"));
    // The same arguments are accepted by this build's parser. Running them
    // for real would mark this machine's root mount, so the URL is swapped
    // for one that fails right after parsing: the only complaint must then
    // be the URL, not an unknown flag or a bad value.
    let args: Vec<&str> = argv[1..]
        .iter()
        .map(|a| {
            if a == "vsock://2:5317" {
                "nonsense"
            } else {
                a.as_str()
            }
        })
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_thinagent-linux-agent"))
        .args(&args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no scheme") && !err.contains("unexpected argument"),
        "the unit's flags all exist; only the overridden URL is wrong: {err}"
    );
}

#[test]
fn unit_has_no_private_mount_namespace() {
    let text = unit_text();
    for key in [
        "ProtectSystem=",
        "ProtectHome=",
        "PrivateTmp=",
        "PrivateMounts=",
        "ReadOnlyPaths=",
        "ReadWritePaths=",
        "InaccessiblePaths=",
        "TemporaryFileSystem=",
        "BindPaths=",
        "RootDirectory=",
        "DynamicUser=",
    ] {
        assert!(
            !text.lines().any(|l| l.starts_with(key)),
            "{key} would give the agent its own mounts, invisible to others' opens"
        );
    }
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let Ok(probe) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("SKIP systemd_analyze_verify: systemd-analyze not installed");
        return;
    };
    assert!(probe.status.success());
    // Verify a copy whose ExecStart points at this build's binary (verify
    // checks that the program exists).
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("thinagent-linux-agent.service");
    std::fs::write(
        &unit,
        unit_text().replace(
            "/usr/local/bin/thinagent-linux-agent",
            env!("CARGO_BIN_EXE_thinagent-linux-agent"),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // Unknown keys or bad values are only warnings: none allowed.
    let ours: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("thinagent-linux-agent.service"))
        .collect();
    assert!(ours.is_empty(), "{err}");
}
