//! The Windows driver, built once per test binary by `.ci/build-driver`
//! (release): the linked `thinagent.sys` the binary checks
//! (`tests/driver_pe.rs`) and the emulation (`tests/driver_emulation.rs`)
//! work on.
//!
//! Include it with `#[path = "common/driver_build.rs"] mod driver_build;`
//! and start a test with
//!
//! ```ignore
//! let Some(sys) = driver_build::built_driver() else { return };
//! ```
//!
//! Where the toolchain is missing (`.ci/build-driver` exits 3: Debian's
//! rustc-web, cargo-web, rust-web-src or lld-16 not installed) the test is
//! skipped with `SKIPPED: <reason>` on stderr, except under `CI=true`, where
//! it fails with the reason. Any other build failure fails the test with the
//! build's output.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// What the one build of this test binary gave.
#[derive(Clone, Debug)]
enum Build {
    /// The path `.ci/build-driver` printed last.
    Built(PathBuf),
    /// The toolchain is missing (exit 3): the script's message.
    Unavailable(String),
    /// Anything else: a description with the build's stderr.
    Failed(String),
}

/// `CI=true` (or `1`): a missing toolchain is a failure, not a skip.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

fn run_build() -> Build {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let script = root.join(".ci/build-driver");
    let mut cmd = Command::new("bash");
    cmd.arg(&script).arg("release").current_dir(&root);
    // The test runs under `cargo test`, whose environment is for the
    // workspace's own compiler; the driver build sets its own.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) => return Build::Failed(format!("running {}: {e}", script.display())),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => {
            let Some(last) = stdout.lines().rev().find(|l| !l.trim().is_empty()) else {
                return Build::Failed(format!(
                    ".ci/build-driver printed no path\nstderr:\n{stderr}"
                ));
            };
            let path = PathBuf::from(last.trim());
            if path.is_file() {
                Build::Built(path)
            } else {
                Build::Failed(format!(
                    ".ci/build-driver printed {}, which is not a file\nstderr:\n{stderr}",
                    path.display()
                ))
            }
        }
        Some(3) => Build::Unavailable(stderr.trim().to_string()),
        code => Build::Failed(format!(
            ".ci/build-driver release failed (exit {code:?})\nstdout:\n{stdout}\nstderr:\n{stderr}"
        )),
    }
}

/// A test prerequisite is missing: prints `SKIPPED: <reason>` and returns
/// `None`, or, under `CI=true`, panics with the reason.
pub fn skip_unless_ci<T>(reason: &str) -> Option<T> {
    if in_ci() {
        panic!("{reason}: CI=true, so this must work here");
    }
    eprintln!("SKIPPED: {reason}");
    None
}

/// The built `thinagent.sys` (release), or `None` when the driver toolchain
/// is missing and `CI` is not `true` (`SKIPPED: <reason>` has been printed).
/// Panics on any other build failure, with the build's output, and under
/// `CI=true` when the toolchain is missing. The build runs once per test
/// binary, however many tests ask.
pub fn built_driver() -> Option<PathBuf> {
    static BUILD: OnceLock<Build> = OnceLock::new();
    match BUILD.get_or_init(run_build) {
        Build::Built(path) => Some(path.clone()),
        Build::Unavailable(reason) => skip_unless_ci(reason),
        Build::Failed(why) => panic!("{why}"),
    }
}
