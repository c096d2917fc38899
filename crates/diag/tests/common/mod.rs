//! Shared helpers of the CLI tests: run the binary, the seed fixtures, the
//! real hives, hivexregedit.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Exit status, stdout, stderr of `thinagent-diag ARGS`.
pub fn diag<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_thinagent-diag"))
        .args(args)
        .output()
        .expect("run thinagent-diag");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).expect("utf-8 stdout"),
        String::from_utf8(out.stderr).expect("utf-8 stderr"),
    )
}

/// `thinagent-diag ARGS --json`, parsed.
pub fn diag_json<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (i32, serde_json::Value) {
    let mut all: Vec<std::ffi::OsString> = args.iter().map(|a| a.as_ref().to_owned()).collect();
    all.push("--json".into());
    let (code, out, err) = diag(&all);
    let v = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {out}\nstderr: {err}"));
    (code, v)
}

/// The repository's `tests/fixtures` (the seed machines).
pub fn seed_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// The seed machine with the product's System-class upper filter (UTF-16LE .reg).
pub fn with_filter() -> PathBuf {
    seed_fixture("seed-machine-with-filter.reg")
}

/// The seed machine with VMware Tools only (UTF-8 .reg).
pub fn clean() -> PathBuf {
    seed_fixture("seed-machine-clean.reg")
}

/// True under CI (`CI=true`), where required tools must be present.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// `$THINAGENT_REAL_HIVES`, else `../shared/fixtures/real-hives` beside the repository.
pub fn real_hives_dir() -> PathBuf {
    match std::env::var_os("THINAGENT_REAL_HIVES") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/real-hives"),
    }
}

/// Decompresses real hive `NAME.xz` into `dir/NAME`; `None` (after printing
/// why) when the fixture is absent.
pub fn real_hive(name: &str, dir: &Path) -> Option<PathBuf> {
    let src = real_hives_dir().join(format!("{name}.xz"));
    let Ok(file) = std::fs::File::open(&src) else {
        eprintln!(
            "SKIP: real hive {} not found (set THINAGENT_REAL_HIVES to the folder holding {name}.xz)",
            src.display()
        );
        return None;
    };
    let mut bytes = Vec::new();
    lzma_rs::xz_decompress(&mut std::io::BufReader::new(file), &mut bytes)
        .unwrap_or_else(|e| panic!("{} is not valid xz: {e:?}", src.display()));
    let out = dir.join(name);
    std::fs::write(&out, bytes).expect("write decompressed hive");
    Some(out)
}

/// `hivexregedit`, or `None` (after printing why) when missing outside CI;
/// panics under CI, where `.ci/run` installs it.
pub fn hivexregedit() -> Option<PathBuf> {
    if Command::new("hivexregedit").arg("--help").output().is_ok() {
        return Some(PathBuf::from("hivexregedit"));
    }
    assert!(
        !in_ci(),
        "hivexregedit is required under CI=true (Debian package libwin-hivex-perl)"
    );
    eprintln!("SKIP: hivexregedit not found (apt-get install libwin-hivex-perl)");
    None
}

/// `hivexregedit --merge --prefix 'HKEY_LOCAL_MACHINE\SYSTEM' HIVE REG` (in place).
pub fn hivex_merge(hivexregedit: &Path, hive: &Path, reg_text: &str) {
    let reg = hive.with_extension("merge.reg");
    std::fs::write(&reg, reg_text).expect("write .reg");
    let out = Command::new(hivexregedit)
        .args(["--merge", "--prefix", "HKEY_LOCAL_MACHINE\\SYSTEM"])
        .arg(hive)
        .arg(&reg)
        .output()
        .expect("run hivexregedit");
    assert!(
        out.status.success(),
        "hivexregedit --merge failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `hex(N):` data of a UTF-16LE string list / string for a .reg line.
pub fn reg_hex_utf16(kind: u32, parts: &[&str]) -> String {
    let mut units: Vec<u16> = Vec::new();
    for p in parts {
        units.extend(p.encode_utf16());
        units.push(0);
    }
    if kind == 7 {
        units.push(0);
    }
    let bytes: Vec<String> = units
        .iter()
        .flat_map(|u| u.to_le_bytes())
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("hex({kind}):{}", bytes.join(","))
}

/// The hazards of a `loadorder --json` object whose severity counts (error, warning).
pub fn counted_hazards(v: &serde_json::Value) -> Vec<&serde_json::Value> {
    v["hazards"]
        .as_array()
        .expect("hazards array")
        .iter()
        .filter(|h| h["severity"] == "error" || h["severity"] == "warning")
        .collect()
}

/// The `services` of a hazard, lower-cased.
pub fn chain(h: &serde_json::Value) -> Vec<String> {
    h["services"]
        .as_array()
        .expect("services")
        .iter()
        .map(|s| s.as_str().unwrap().to_ascii_lowercase())
        .collect()
}
