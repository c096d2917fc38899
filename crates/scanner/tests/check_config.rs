//! `thinagent-scanner --check-config` through the real binary: what it
//! reports about the configuration and the signatures it loads.
// Linux only, like service_e2e.rs.
#![cfg(target_os = "linux")]

use std::process::Command;

fn run_check(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_thinagent-scanner"))
        .args(args)
        .arg("--check-config")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn long_signature_names_are_cut_with_one_warning_naming_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let sigs = tmp.path().join("sigs");
    std::fs::create_dir_all(&sigs).unwrap();
    let long = "N".repeat(200 * 1024);
    std::fs::write(
        sigs.join("long.hdb"),
        format!(
            "# two long names\n\
             5241dbb51231025ef3dd87f377f8eaba:28:{long}\n\
             fd6e1801ad0304aeeb00077bad52a9c6:14:{long}\n"
        ),
    )
    .unwrap();
    let (code, out, err) = run_check(&["--signatures", sigs.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2 hash signatures"), "{out}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "one warning per file: {err:.2000}");
    let w = warnings[0];
    assert!(
        w.contains("long.hdb:2:") && w.contains("cut to 256"),
        "{w:.2000}"
    );
    assert!(w.contains("2 name(s)"), "{w:.2000}");
    assert!(
        err.len() < 4096,
        "the whole name was printed: {} bytes",
        err.len()
    );
}
