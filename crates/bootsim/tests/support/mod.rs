//! Test support shared by the registry tests: a hive writer (the empty base
//! hive for hivex), a `.reg` writer, the hivex runner and the real-hive
//! fixtures.

#![allow(dead_code)]

pub mod hive_writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use thinagent_bootsim::registry::{RegKey, RegValue};

/// Quotes a value name or string for a `.reg` file.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn hex_list(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// One value line as regedit writes it (version 5).
pub fn reg_value_line(name: &str, value: &RegValue) -> String {
    let name = if name.is_empty() {
        "@".to_owned()
    } else {
        quote(name)
    };
    let data = match value {
        RegValue::Sz(s) => quote(s),
        RegValue::Dword(d) => format!("dword:{d:08x}"),
        RegValue::Binary(b) => format!("hex:{}", hex_list(b)),
        other => {
            let (kind, bytes) = hive_writer::raw_value(other);
            format!("hex({kind:x}):{}", hex_list(&bytes))
        }
    };
    format!("{name}={data}")
}

/// A version-5 `.reg` text for a `SYSTEM` tree, every parent key listed
/// before its children (as hivexregedit needs).
pub fn reg_text(system: &RegKey) -> String {
    fn walk(key: &RegKey, path: &str, out: &mut String) {
        out.push_str(&format!("[{path}]\r\n"));
        for (name, value) in key.values() {
            out.push_str(&reg_value_line(name, value));
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        for sub in key.subkeys() {
            walk(sub, &format!("{path}\\{}", sub.name()), out);
        }
    }
    let mut out = String::from("Windows Registry Editor Version 5.00\r\n\r\n");
    for sub in system.subkeys() {
        walk(
            sub,
            &format!("HKEY_LOCAL_MACHINE\\SYSTEM\\{}", sub.name()),
            &mut out,
        );
    }
    out
}

/// True when running under CI (`CI=true`): required tools must be present.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The `hivexregedit` program, or `None` (after printing why) when it is
/// missing outside CI. Panics in CI, where `.ci/run` installs it.
pub fn hivexregedit() -> Option<PathBuf> {
    // `--help` exits with status 1; being able to run it is what counts.
    let ok = Command::new("hivexregedit").arg("--help").output().is_ok();
    if ok {
        return Some(PathBuf::from("hivexregedit"));
    }
    let reason = "hivexregedit not found (Debian/Ubuntu: apt-get install libwin-hivex-perl)";
    assert!(!in_ci(), "CI=true but {reason}");
    eprintln!("SKIP: {reason}");
    None
}

/// Builds a hive from `.reg` text with hivex: writes the empty base hive and
/// the text into `dir`, runs `hivexregedit --merge --prefix
/// 'HKEY_LOCAL_MACHINE\SYSTEM' BASE FILE.reg`, returns the hive's bytes.
pub fn hivex_merge(hivexregedit: &Path, dir: &Path, name: &str, reg: &str) -> Vec<u8> {
    let base = dir.join(format!("{name}.hive"));
    let reg_path = dir.join(format!("{name}.reg"));
    std::fs::write(&base, hive_writer::empty_base_hive()).expect("write base hive");
    std::fs::write(&reg_path, reg).expect("write .reg");
    let out = Command::new(hivexregedit)
        .args(["--merge", "--prefix", "HKEY_LOCAL_MACHINE\\SYSTEM"])
        .arg(&base)
        .arg(&reg_path)
        .output()
        .expect("run hivexregedit");
    assert!(
        out.status.success(),
        "hivexregedit --merge {name} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&base).expect("read merged hive")
}

/// A fresh temporary directory (removed when dropped).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "thinagent-bootsim-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The directory of the `.reg` fixtures of these tests.
pub fn registry_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/registry")
}

/// Where the real SYSTEM hives (regipy's MIT test data, `*.xz`) are:
/// `$THINAGENT_REAL_HIVES`, else `../shared/fixtures/real-hives` next to the
/// repository (the project's shared fixture folder).
pub fn real_hives_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("THINAGENT_REAL_HIVES") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/real-hives")
}

/// The decompressed bytes of real hive `name` (e.g. `SYSTEM_WIN_10_1709`),
/// read in place from `NAME.xz` (once per test binary); `None` (after
/// printing why) when absent.
pub fn real_hive(name: &str) -> Option<Arc<Vec<u8>>> {
    static CACHE: Mutex<BTreeMap<String, Arc<Vec<u8>>>> = Mutex::new(BTreeMap::new());
    let mut cache = CACHE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(bytes) = cache.get(name) {
        return Some(Arc::clone(bytes));
    }
    let path = real_hives_dir().join(format!("{name}.xz"));
    let Ok(file) = std::fs::File::open(&path) else {
        eprintln!(
            "SKIP: real hive {} not found (set THINAGENT_REAL_HIVES to the folder holding {name}.xz)",
            path.display()
        );
        return None;
    };
    let mut out = Vec::new();
    lzma_rs::xz_decompress(&mut std::io::BufReader::new(file), &mut out)
        .unwrap_or_else(|e| panic!("{} is not valid xz: {e:?}", path.display()));
    let out = Arc::new(out);
    cache.insert(name.to_owned(), Arc::clone(&out));
    Some(out)
}
