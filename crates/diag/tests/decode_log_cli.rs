//! `thinagent-diag decode-log`: the seed's Listing 1 and our agent's lines.

use std::path::Path;
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

fn listing_1() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/seed-listing1-vsepflt.log")
        .display()
        .to_string()
}

const VERDICT: &str = "vsock provider busy: vmci device not started yet — check class filters with `thinagent-diag loadorder`";

#[test]
fn listing_1_text_report() {
    let (code, out, err) = diag(&["decode-log", &listing_1()]);
    assert_eq!(code, 1, "an error finding exits 1; stderr: {err}");
    assert!(out.contains(VERDICT), "{out}");
    // every status named, lines grouped by routine
    assert!(out.contains("0x80000011  STATUS_DEVICE_BUSY"), "{out}");
    for routine in [
        "VFileUmcReadParams",
        "VSockLayer_Init",
        "VFileSocketMgr_Init",
        "DriverEntry",
    ] {
        assert!(
            out.contains(&format!("  {routine} (")),
            "no group for {routine}:\n{out}"
        );
    }
    // the cause comes before its consequence
    let cause = out.find("vsock-provider-busy").unwrap();
    let consequence = out.find("driver-load-failed").unwrap();
    assert!(cause < consequence);
}

#[test]
fn listing_1_json() {
    let (code, out, _) = diag(&["decode-log", &listing_1(), "--json"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
    assert_eq!(v["findings"][0]["id"], "vsock-provider-busy");
    assert_eq!(v["findings"][0]["cause"], VERDICT);
    assert_eq!(v["statuses"][0]["name"], "STATUS_DEVICE_BUSY");
    assert_eq!(v["statuses"][0]["count"], 4);
    assert_eq!(v["decoded"].as_array().unwrap().len(), 8);
    assert_eq!(v["routines"][0]["routine"], "VFileUmcReadParams");
}

#[test]
fn our_agent_connected_exits_0_and_inputs_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let ok = dir.path().join("ok.log");
    std::fs::write(
        &ok,
        "DEBUG: ReadParams : umcMsgTimeoutMs: 2000\n\
         DEBUG: VsockCapture : capture attempt 1 failed, retrying in 1000 ms: 0x80000011\n\
         INFO: VsockCapture : vSockets provider captured after 2 attempt(s), 1000 ms waited: 0x00000000\n\
         AUDIT: DriverEntry : ThinAgent loaded: 0x00000000\n",
    )
    .unwrap();
    let (code, out, _) = diag(&["decode-log", ok.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("vSockets provider captured after 2 attempt(s), 1000 ms waited"));
    assert!(out.contains("vsock-provider-busy-recovered"));

    let junk = dir.path().join("junk.log");
    std::fs::write(&junk, "hello\nworld\n").unwrap();
    let (code, _, err) = diag(&["decode-log", junk.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("LEVEL: Routine : message"), "{err}");

    let (code, _, err) = diag(&[
        "decode-log",
        dir.path().join("missing.log").to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn demo_output_decodes() {
    // the demo prints our agent's real log lines for the incident's machine
    let (code, out, _) = diag(&["demo", "--never-ready", "--param", "captureRetryCount=3"]);
    assert_eq!(code, 1);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("demo.log");
    std::fs::write(&log, &out).unwrap();
    let (code, report, _) = diag(&["decode-log", log.to_str().unwrap(), "--json"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&report).unwrap();
    let ids: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids[0], "vsock-provider-busy");
    assert!(ids.contains(&"capture-retries-exhausted"), "{ids:?}");
    assert!(ids.contains(&"driver-load-failed"), "{ids:?}");
}
