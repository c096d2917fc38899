//! `thinagent-diag simulate`: the seed's failing and working machines with
//! VMware's blocking agent and with ours, the JSON shape, and the timeline
//! decoded back by `decode-log`.

use crate::common;

use std::ffi::OsStr;

use common::{clean, diag, diag_json, with_filter};
use thinagent_guest::log::parse_line;

fn sim(file: &std::path::Path, agent: Option<&str>) -> (i32, serde_json::Value) {
    let mut args = vec![OsStr::new("simulate"), file.as_os_str()];
    if let Some(a) = agent {
        args.push(OsStr::new("--agent"));
        args.push(OsStr::new(a));
    }
    diag_json(&args)
}

fn check_shape(v: &serde_json::Value) {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort_unstable();
    assert_eq!(
        k,
        [
            "agent",
            "attempts",
            "connected_at_ms",
            "outcome",
            "outlook",
            "timeline"
        ]
    );
    assert!(
        v["outlook"]
            .as_str()
            .unwrap()
            .starts_with(v["agent"].as_str().unwrap()),
        "{v}"
    );
    let tl = v["timeline"].as_array().unwrap();
    assert!(!tl.is_empty());
    let mut last = 0;
    for l in tl {
        let t = l["t_ms"].as_u64().expect("t_ms");
        assert!(t >= last, "timeline goes back in time: {l}");
        last = t;
        let line = l["line"].as_str().unwrap();
        assert!(
            parse_line(line).is_some(),
            "not in the seed's log shape: {line}"
        );
    }
}

#[test]
fn vmware_agent_fails_on_the_machine_with_the_filter() {
    let (code, v) = sim(&with_filter(), Some("vsepflt"));
    check_shape(&v);
    assert_eq!(code, 1, "failed exits 1");
    assert_eq!(v["agent"], "vsepflt");
    assert_eq!(v["outcome"], "failed");
    assert_eq!(v["attempts"], 100);
    assert_eq!(v["connected_at_ms"], serde_json::Value::Null);
    let lines: Vec<&str> = v["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap())
        .collect();
    let busy = lines
        .iter()
        .filter(|l| l.starts_with("DEBUG: VSockLayer_Init") && l.ends_with(": 0x80000011"))
        .count();
    assert!(busy >= 99, "every attempt sees STATUS_DEVICE_BUSY: {busy}");
}

#[test]
fn vmware_agent_connects_on_the_clean_machine() {
    let (code, v) = sim(&clean(), Some("vsepflt"));
    check_shape(&v);
    assert_eq!(code, 0);
    assert_eq!(v["outcome"], "connected");
    assert_eq!(v["attempts"], 1);
    assert!(v["connected_at_ms"].as_u64().is_some());
}

#[test]
fn our_agent_connects_on_both_machines() {
    for file in [with_filter(), clean()] {
        let (code, v) = sim(&file, None);
        check_shape(&v);
        assert_eq!(code, 0, "{}", file.display());
        assert_eq!(v["agent"], "thinagent", "the default agent is ours");
        assert_eq!(v["outcome"], "connected");
        let at = v["connected_at_ms"].as_u64().expect("connected_at_ms");
        assert!(v["attempts"].as_u64().unwrap() >= 1);
        // our agent does not hold the boot: it connects within the boot, not
        // after a 100 s retry loop
        assert!(at < 10_000, "{}: connected at {at} ms", file.display());
    }
    // with the filter it needed more than the one quick DriverEntry attempt
    let (_, v) = sim(&with_filter(), Some("thinagent"));
    assert!(v["attempts"].as_u64().unwrap() >= 2, "{v}");
}

#[test]
fn text_output_and_round_trip_through_decode_log() {
    let (code, out, _) = diag(&[
        OsStr::new("simulate"),
        with_filter().as_os_str(),
        OsStr::new("--agent"),
        OsStr::new("vsepflt"),
    ]);
    assert_eq!(code, 1);
    assert!(
        out.contains("outcome: vsepflt failed after 100 attempt(s)"),
        "{out}"
    );
    // The outlook first, then the machine's hazards, then its notes.
    assert!(
        out.starts_with("Outlook: vsepflt will NOT capture \\Device\\vmci"),
        "{out}"
    );
    let hazards = out.find("\nHazards: 1 ").expect("hazards");
    let notes = out.find("\nNotes: ").expect("notes");
    let timeline = out.find("\nt=").expect("timeline");
    assert!(hazards < notes && notes < timeline, "{out}");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("boot.log");
    std::fs::write(&log, &out).unwrap();
    let (code, report, _) = diag(&[OsStr::new("decode-log"), log.as_os_str()]);
    assert_eq!(code, 1);
    assert!(
        report.contains("vsock provider busy: vmci device not started yet — check class filters with `thinagent-diag loadorder`"),
        "{report}"
    );

    let (code, out, _) = diag(&[OsStr::new("simulate"), with_filter().as_os_str()]);
    assert_eq!(code, 0);
    assert!(out.contains("outcome: thinagent connected at t="), "{out}");
    assert!(out.starts_with("Outlook: thinagent"), "{out}");
    assert!(out.contains("will capture \\Device\\vmci at t="), "{out}");
}

#[test]
fn unknown_agent_and_bad_input_exit_2() {
    let (code, _, err) = diag(&[
        OsStr::new("simulate"),
        clean().as_os_str(),
        OsStr::new("--agent"),
        OsStr::new("nosuchagent"),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("nosuchagent"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let (code, _, _) = diag(&[OsStr::new("simulate"), dir.path().join("x.reg").as_os_str()]);
    assert_eq!(code, 2);
}

#[test]
fn real_vmware_hive_our_agent_connects() {
    let dir = tempfile::tempdir().unwrap();
    let Some(hive) = common::real_hive("SYSTEM_WIN_10_1709", dir.path()) else {
        return;
    };
    let (code, v) = sim(&hive, None);
    check_shape(&v);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["outcome"], "connected");
    // the dirty hive is read with a warning, not refused
    let (_, _, err) = diag(&[OsStr::new("simulate"), hive.as_os_str()]);
    assert!(err.contains("dirty hive"), "{err}");
}
