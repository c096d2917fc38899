//! `thinagent-diag lint-inf`: our INX passes; deliberately broken copies
//! (written to a temporary directory) are each caught with the right id.

use std::path::{Path, PathBuf};
use std::process::Command;

fn inx_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../inf/thinagent.inx")
}

fn run(path: &Path) -> (i32, serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_thinagent-diag"))
        .arg("lint-inf")
        .arg(path)
        .arg("--json")
        .output()
        .expect("run thinagent-diag");
    let text = String::from_utf8(out.stdout).expect("utf-8 stdout");
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), json, text)
}

fn ids(json: &serde_json::Value) -> Vec<(String, String, u64)> {
    json.as_array()
        .expect("findings array")
        .iter()
        .map(|f| {
            for k in ["id", "severity", "line", "message", "fix"] {
                assert!(f.get(k).is_some(), "finding without {k}: {f}");
            }
            (
                f["id"].as_str().unwrap().to_string(),
                f["severity"].as_str().unwrap().to_string(),
                f["line"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn our_inx_passes() {
    let (code, json, text) = run(&inx_path());
    assert_eq!(code, 0, "lint-inf inf/thinagent.inx must pass:\n{text}");
    assert_eq!(ids(&json), []);
    // and the human report says so
    let out = Command::new(env!("CARGO_BIN_EXE_thinagent-diag"))
        .arg("lint-inf")
        .arg(inx_path())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok: minifilter rules pass"));
}

/// Replaces the first occurrence of `from` (which must exist) with `to`.
fn mutate(src: &str, from: &str, to: &str) -> String {
    assert!(
        src.contains(from),
        "the INX no longer contains {from:?}; update the test"
    );
    src.replacen(from, to, 1)
}

/// Line (1-based) of the first occurrence of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> u64 {
    let at = text.find(needle).expect("needle present");
    text[..at].matches('\n').count() as u64 + 1
}

/// (what, from, to, expected id, expected severity, line marker in the broken text)
type Case = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
);

#[test]
fn broken_copies_are_caught() {
    let src = std::fs::read_to_string(inx_path()).expect("read inf/thinagent.inx");
    let dir = tempfile::tempdir().unwrap();
    // (what, from, to, expected id, expected severity, line marker in the broken text)
    let cases: &[Case] = &[
        (
            "service type",
            "ServiceType    = 2",
            "ServiceType    = 1",
            "INF011",
            "error",
            Some("ServiceType    = 1"),
        ),
        (
            "disabled",
            "StartType      = 0",
            "StartType      = 4",
            "INF012",
            "error",
            Some("StartType      = 4"),
        ),
        (
            "error control",
            "ErrorControl   = 1",
            "ErrorControl   = 3",
            "INF013",
            "warning",
            Some("ErrorControl   = 3"),
        ),
        (
            "unknown group",
            "LoadOrderGroup = \"FSFilter Anti-Virus\"",
            "LoadOrderGroup = \"System Boot Extender\"",
            "INF015",
            "error",
            Some("System Boot Extender"),
        ),
        (
            "no group",
            "LoadOrderGroup = \"FSFilter Anti-Virus\"\n",
            "\n",
            "INF014",
            "error",
            None,
        ),
        (
            "no FltMgr",
            "Dependencies   = \"FltMgr\"",
            "Dependencies   = \"Mup\"",
            "INF016",
            "error",
            Some("\"Mup\""),
        ),
        (
            "vsepflt altitude",
            "Instance1.Altitude = \"325317\"",
            "Instance1.Altitude = \"328200\"",
            "INF023",
            "error",
            Some("Instance1.Altitude = \"328200\""),
        ),
        (
            "altitude range",
            "Instance1.Altitude = \"325317\"",
            "Instance1.Altitude = \"385000\"",
            "INF022",
            "error",
            Some("Instance1.Altitude = \"385000\""),
        ),
        (
            "altitude syntax",
            "Instance1.Altitude = \"325317\"",
            "Instance1.Altitude = \"32a317\"",
            "INF021",
            "error",
            Some("Instance1.Altitude = \"32a317\""),
        ),
        (
            "no auto attach",
            "Instance1.Flags    = 0x0",
            "Instance1.Flags    = 0x1",
            "INF024",
            "warning",
            Some("Instance1.Flags    = 0x1"),
        ),
        (
            "undefined flag bits",
            "Instance1.Flags    = 0x0",
            "Instance1.Flags    = 0x8",
            "INF024",
            "error",
            Some("Instance1.Flags    = 0x8"),
        ),
        (
            "default instance",
            "DefaultInstance    = \"thinagent Instance\"",
            "DefaultInstance    = \"other Instance\"",
            "INF025",
            "error",
            Some("DefaultInstance    = \"other Instance\""),
        ),
        (
            "class vs group",
            "Class       = \"AntiVirus\"",
            "Class       = \"ActivityMonitor\"",
            "INF003",
            "error",
            Some("Class       = \"ActivityMonitor\""),
        ),
        (
            "not a filter class",
            "{b1d1a169-c54f-4379-81db-bee7d88d7454}",
            "{4d36e97d-e325-11ce-bfc1-08002be10318}",
            "INF003",
            "error",
            Some("ClassGuid"),
        ),
        (
            "undefined string",
            "Instance1.Altitude = \"325317\"",
            "Instance1.Altitud = \"325317\"",
            "INF030",
            "error",
            None,
        ),
        (
            "no AddService",
            "AddService = %ServiceName%,,ThinAgent.Service.Pre24H2",
            "",
            "INF010",
            "error",
            Some("[DefaultInstall.NT$ARCH$.10.0...19041.Services]"),
        ),
        (
            "no Services section",
            "[DefaultInstall.NT$ARCH$.10.0...19041.Services]",
            "[Other.Services]",
            "INF010",
            "error",
            Some("[DefaultInstall.NT$ARCH$.10.0...19041]"),
        ),
        (
            "signature",
            "Signature   = \"$WINDOWS NT$\"",
            "Signature   = \"$WINDOWS 95$\"",
            "INF001",
            "error",
            Some("Signature"),
        ),
        (
            "instances key for the build",
            "HKR,\"Instances\",\"DefaultInstance\"",
            "HKR,\"Parameters\\Instances\",\"DefaultInstance\"",
            "INF026",
            "warning",
            None,
        ),
        (
            "altitude as dword",
            "\"Altitude\",0x00000000",
            "\"Altitude\",0x00010001",
            "INF032",
            "error",
            Some("\"Altitude\",0x00010001"),
        ),
        (
            "parameter name the driver does not read",
            "HKR,\"Parameters\",\"captureRetryCount\"",
            "HKR,\"Parameters\",\"captureRetries\"",
            "INF040",
            "error",
            Some("HKR,\"Parameters\",\"captureRetries\""),
        ),
        (
            "parameter value the driver rejects",
            "failMode             = 0",
            "failMode             = 7",
            "INF040",
            "error",
            Some("failMode             = 7"),
        ),
        (
            "parameter out of bounds",
            "umcMsgTimeoutMs      = 2000",
            "umcMsgTimeoutMs      = 10",
            "INF041",
            "warning",
            Some("umcMsgTimeoutMs      = 10"),
        ),
        (
            "numeric parameter as REG_MULTI_SZ",
            "HKR,\"Parameters\",\"hostPort\",0x00010001",
            "HKR,\"Parameters\",\"hostPort\",0x00010000",
            "INF042",
            "error",
            Some("\"hostPort\",0x00010000"),
        ),
        (
            "list parameter as REG_DWORD",
            "[ThinAgent.Parameters]\n",
            "[ThinAgent.Parameters]\nHKR,\"Parameters\",\"excludeExtensions\",0x00010001,1\n",
            "INF042",
            "error",
            Some("\"excludeExtensions\",0x00010001"),
        ),
        (
            "parameter as REG_BINARY",
            "HKR,\"Parameters\",\"debugLevel\",0x00010001",
            "HKR,\"Parameters\",\"debugLevel\",0x00000001",
            "INF042",
            "error",
            Some("\"debugLevel\",0x00000001"),
        ),
        (
            "number as REG_SZ",
            "HKR,\"Parameters\",\"captureMode\",0x00010001",
            "HKR,\"Parameters\",\"captureMode\",0x00000000",
            "INF043",
            "warning",
            Some("\"captureMode\",0x00000000"),
        ),
        (
            "parameter outside the Parameters key",
            "HKR,\"Parameters\",\"denyStatus\"",
            "HKR,,\"denyStatus\"",
            "INF044",
            "warning",
            Some("HKR,,\"denyStatus\""),
        ),
        (
            "parameter written twice",
            "[ThinAgent.Parameters]\n",
            "[ThinAgent.Parameters]\nHKR,\"Parameters\",\"HOSTCID\",0x00010001,3\n",
            "INF045",
            "warning",
            Some("HKR,\"Parameters\",\"hostCid\""),
        ),
        (
            "new parameter code the driver rejects",
            "denyStatus           = 0",
            "denyStatus           = 2",
            "INF040",
            "error",
            Some("denyStatus           = 2"),
        ),
        (
            "exclusion too long",
            "[ThinAgent.Parameters]\n",
            "[ThinAgent.Parameters]\nHKR,\"Parameters\",\"excludeExtensions\",0x00010000,\"log\",\"averyveryverylongextension\"\n",
            "INF040",
            "error",
            Some("\"excludeExtensions\",0x00010000"),
        ),
    ];
    for (i, (what, from, to, id, severity, marker)) in cases.iter().enumerate() {
        let broken = mutate(&src, from, to);
        let path = dir.path().join(format!("broken-{i}.inx"));
        std::fs::write(&path, &broken).unwrap();
        let (code, json, text) = run(&path);
        assert_eq!(code, 1, "{what}: expected exit 1, got {code}:\n{text}");
        let found = ids(&json);
        let hit = found
            .iter()
            .find(|(fid, sev, _)| fid == id && sev == severity)
            .unwrap_or_else(|| panic!("{what}: expected {id} ({severity}), got {found:?}"));
        if let Some(m) = marker {
            assert_eq!(
                hit.2,
                line_of(&broken, m),
                "{what}: finding points at the wrong line: {text}"
            );
        }
    }
}

#[test]
fn class_of_another_group_is_a_warning() {
    let src = std::fs::read_to_string(inx_path()).unwrap();
    let broken = mutate(
        &mutate(
            &src,
            "Class       = \"AntiVirus\"",
            "Class       = \"ActivityMonitor\"",
        ),
        "{b1d1a169-c54f-4379-81db-bee7d88d7454}",
        "{b86dff51-a31e-4bac-b3cf-e8cfe75c9fc2}",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("class.inx");
    std::fs::write(&path, &broken).unwrap();
    let (code, json, _) = run(&path);
    assert_eq!(code, 1);
    assert_eq!(
        ids(&json).iter().map(|f| f.0.as_str()).collect::<Vec<_>>(),
        ["INF004"]
    );
}

#[test]
fn utf16_inf_is_read_and_missing_file_is_an_input_error() {
    let src = std::fs::read_to_string(inx_path()).unwrap();
    let mut bytes = vec![0xFF, 0xFE];
    for u in src.replace('\n', "\r\n").encode_utf16() {
        bytes.extend_from_slice(&u.to_le_bytes());
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("utf16.inf");
    std::fs::write(&path, bytes).unwrap();
    let (code, json, text) = run(&path);
    assert_eq!(code, 0, "{text}");
    assert_eq!(ids(&json), []);

    let (code, _, _) = run(&dir.path().join("missing.inf"));
    assert_eq!(code, 2);
}

#[test]
fn optional_lists_and_noclobber_values_pass() {
    // A site's INF that adds both exclusion lists (REG_MULTI_SZ, one string
    // per field) and keeps admin-tuned values on update (FLG_ADDREG_NOCLOBBER).
    let src = std::fs::read_to_string(inx_path()).unwrap();
    let site = mutate(
        &mutate(
            &src,
            "[ThinAgent.Parameters]\n",
            "[ThinAgent.Parameters]\n\
             HKR,\"Parameters\",\"excludePaths\",0x00010000,\"C:\\Temp\",\"D:\\Logs\"\n\
             HKR,\"Parameters\",\"excludeExtensions\",0x00010000,\"log\",\".tmp\"\n",
        ),
        "HKR,\"Parameters\",\"failMode\",0x00010001",
        "HKR,\"Parameters\",\"failMode\",0x00010003",
    );
    // ...and a number as REG_QWORD (FLG_ADDREG_TYPE_QWORD), which the driver
    // reads too.
    let site = mutate(
        &site,
        "HKR,\"Parameters\",\"verdictCacheTtlMs\",0x00010001",
        "HKR,\"Parameters\",\"verdictCacheTtlMs\",0x000B0001",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("site.inx");
    std::fs::write(&path, &site).unwrap();
    let (code, json, text) = run(&path);
    assert_eq!(code, 0, "{text}");
    assert_eq!(ids(&json), []);
}
