//! `thinagent-diag agent-state`: off Windows it refuses with a reason and
//! exit status 2; its options are validated before anything is opened.

use std::process::Command;

fn diag(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_thinagent-diag"))
        .args(args)
        .output()
        .expect("run thinagent-diag");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[cfg(not(windows))]
#[test]
fn needs_windows() {
    for args in [
        &["agent-state"][..],
        &["agent-state", "--json"],
        &["agent-state", "--debug-level", "4"],
    ] {
        let (code, out, err) = diag(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(out.is_empty(), "{out}");
        assert!(err.contains("needs Windows"), "{err}");
        assert!(err.contains(r"\\.\ThinAgent"), "{err}");
    }
}

#[test]
fn debug_level_is_range_checked() {
    let (code, _, err) = diag(&["agent-state", "--debug-level", "5"]);
    assert_eq!(code, 2, "clap's usage error status");
    assert!(err.contains("--debug-level"), "{err}");
    assert!(err.contains("0..=4") || err.contains("0..5"), "{err}");
}
