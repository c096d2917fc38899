//! The linked `thinagent.sys` run in an emulated Windows kernel.
//!
//! `.ci/build-driver` builds the driver (tests/common/driver_build.rs); the
//! harness in `tests/emulation/ntemu` (Python, on unicorn: a test tool only,
//! GPL-2.0, never shipped) loads the PE, binds every import to a model of
//! the kernel routine, and runs `DriverEntry`, the driver's threads and its
//! callbacks on emulated x86-64 with virtual time. The vSockets provider it
//! captures is bridged to a real TCP connection to `thinagent-scanner`,
//! started in-process here. Each scenario prints a JSON report; the
//! assertions are here.
//!
//! Requirements: the driver toolchain (see driver_build.rs) and the
//! emulator's Python environment (`.ci/setup-emulator`, which creates
//! `target/emu-venv`; or `THINAGENT_EMU_PYTHON`). Without them each test
//! prints `SKIPPED: ...` and passes, except under `CI=true`, where it fails.

#[path = "common/driver_build.rs"]
mod driver_build;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use thinagent_guest::log::parse_line;
use thinagent_guest::{Level, NtStatus};
use thinagent_protocol::Message;
use thinagent_protocol::{Decoded, decode_frame};
use thinagent_scanner::config::Config;
use thinagent_scanner::service::Service;

const STATUS_DEVICE_BUSY: u32 = 0x8000_0011;
const STATUS_FLT_DO_NOT_DETACH: u64 = 0xC01C_0010;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Python that has unicorn and pefile, or None (skip, printed).
fn emulator_python() -> Option<PathBuf> {
    let candidate = std::env::var_os("THINAGENT_EMU_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/emu-venv/bin/python"));
    let ok = Command::new(&candidate)
        .args(["-c", "import unicorn, pefile"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(candidate);
    }
    let reason = format!(
        "the emulator's Python environment is missing ({} cannot import unicorn and pefile): run .ci/setup-emulator",
        candidate.display()
    );
    driver_build::skip_unless_ci(&reason)
}

/// One scenario's report.
struct Report {
    json: Value,
    /// The real scanner's `/metrics` text after the scenario (empty
    /// without a scanner).
    metrics: String,
}

impl Report {
    fn lines(&self) -> Vec<String> {
        self.events("dbgprint")
            .iter()
            .map(|e| e["line"].as_str().unwrap().to_string())
            .collect()
    }

    fn events(&self, kind: &str) -> Vec<&Value> {
        self.json["trace"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == kind)
            .collect()
    }

    /// The first log line containing `needle`, with its virtual time (ms).
    fn line(&self, needle: &str) -> Option<(f64, String)> {
        self.events("dbgprint").iter().find_map(|e| {
            let l = e["line"].as_str().unwrap();
            l.contains(needle)
                .then(|| (e["t_ms"].as_f64().unwrap(), l.to_string()))
        })
    }

    fn has_line(&self, needle: &str) -> bool {
        self.line(needle).is_some()
    }

    fn capture_attempts(&self) -> Vec<(f64, u64)> {
        self.events("capture-ioctl")
            .iter()
            .filter(|e| e.get("cancelled").is_none())
            .map(|e| (e["t_ms"].as_f64().unwrap(), e["status"].as_u64().unwrap()))
            .collect()
    }

    fn entry_status(&self) -> u64 {
        self.json["entry_status"]
            .as_u64()
            .expect("DriverEntry returned")
    }

    /// Message types of the frames in a hex byte stream.
    fn frames(hex: &str) -> Vec<&'static str> {
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            match decode_frame(&bytes[at..]) {
                Ok(Decoded::Frame { frame, consumed }) => {
                    out.push(match frame.message {
                        Message::Hello(_) => "Hello",
                        Message::HelloAck(_) => "HelloAck",
                        Message::FileEvent(_) => "FileEvent",
                        Message::Verdict(_) => "Verdict",
                        Message::ReadRequest(_) => "ReadRequest",
                        Message::ReadData(_) => "ReadData",
                        _ => "other",
                    });
                    at += consumed;
                }
                other => panic!("undecodable bytes on the wire at {at}: {other:?}"),
            }
        }
        out
    }

    fn socket_frames(&self, i: usize) -> (Vec<&'static str>, Vec<&'static str>) {
        let s = &self.json["sockets"][i];
        (
            Self::frames(s["sent"].as_str().unwrap()),
            Self::frames(s["received"].as_str().unwrap()),
        )
    }

    /// The emulated kernel found nothing wrong.
    fn assert_clean(&self) {
        assert!(
            self.json["error"].is_null(),
            "the emulated kernel stopped the driver: {}\nlast lines:\n{}",
            self.json["error"],
            self.lines()
                .iter()
                .rev()
                .take(15)
                .rev()
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert_eq!(
            self.json["spinlocks_held"].as_array().unwrap().len(),
            0,
            "spin locks left held"
        );
        // Every line the driver printed has the seed's shape.
        for l in self.lines() {
            assert!(parse_line(&l).is_some(), "not in the seed's log shape: {l}");
        }
    }

    /// After unload: nothing of the driver's is left.
    fn assert_nothing_left(&self) {
        let j = &self.json;
        assert_eq!(
            j["pool_outstanding"],
            serde_json::json!({}),
            "pool blocks not freed: {}",
            j["pool_outstanding_addresses"]
        );
        assert_eq!(
            j["objects_referenced"],
            serde_json::json!([]),
            "references not released"
        );
        assert_eq!(j["handles_open"], 0, "handles not closed");
        assert_eq!(j["devices_left"], serde_json::json!([]), "devices left");
        assert_eq!(
            j["symlinks_left"],
            serde_json::json!([]),
            "symbolic links left"
        );
        assert_eq!(j["pnp_live"], 0, "PnP notification left registered");
        assert_eq!(j["irps_live"], 0, "IRPs not freed");
        for t in j["threads"].as_array().unwrap() {
            if t["name"] != "filter-unload" {
                assert_eq!(t["state"], "done", "thread {} still running", t["name"]);
            }
        }
    }
}

/// Runs `scenario` (with a real scanner unless `scanner` is false); None
/// when skipped.
fn run(scenario: &str, scanner: bool) -> Option<Report> {
    run_with(scenario, scanner, false)
}

/// Runs a host-action scenario: a real scanner with its control socket,
/// which the scenario drives (JSON lines, as `thinagent-diag` does).
fn run_actions(scenario: &str) -> Option<Report> {
    run_with(scenario, true, true)
}

fn run_with(scenario: &str, scanner: bool, control: bool) -> Option<Report> {
    run_configured(scenario, scanner, control, |_, _| {})
}

/// [`run_with`], the scanner's configuration adjusted by `configure`
/// (given the scanner's state directory, which lives as long as the run).
fn run_configured(
    scenario: &str,
    scanner: bool,
    control: bool,
    configure: impl FnOnce(&mut Config, &Path),
) -> Option<Report> {
    let sys = driver_build::built_driver()?;
    let python = emulator_python()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut metrics = None;
    let state = tempfile::tempdir().unwrap();
    let control_socket = control.then(|| state.path().join("control.sock"));
    let (url, stop) = if scanner {
        let mut config = Config {
            listen: vec!["tcp://127.0.0.1:0".to_string()],
            control_socket: control_socket.clone(),
            ..Config::default()
        };
        configure(&mut config, state.path());
        let service = rt
            .block_on(Service::build(&config))
            .expect("scanner starts");
        let url = service.urls()[0].to_string();
        metrics = Some(service.handle().metrics().clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        rt.spawn(service.run(
            async move {
                let _ = rx.await;
            },
            Duration::from_secs(1),
        ));
        (Some(url), Some(tx))
    } else {
        (None, None)
    };
    let mut cmd = Command::new(&python);
    cmd.current_dir(root().join("tests/emulation"))
        .args(["-m", "ntemu.scenario", "--driver"])
        .arg(Path::new(&sys))
        .args(["--scenario", scenario]);
    if let Some(u) = &url {
        cmd.args(["--scanner", u]);
    }
    if let Some(c) = &control_socket {
        cmd.arg("--control").arg(c);
    }
    let out = cmd.output().expect("run the emulator");
    if let Some(tx) = stop {
        let _ = tx.send(());
    }
    rt.shutdown_timeout(Duration::from_secs(2));
    assert!(
        out.status.success(),
        "harness failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "harness output is not JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    eprintln!(
        "{scenario}: {} virtual ms in {} s real; {} capture IOCTL(s)",
        json["now_ms"], json["real_seconds"], json["capture_ioctls"]
    );
    for l in json["trace"].as_array().unwrap() {
        if l["kind"] == "dbgprint" {
            eprintln!("  [{:>9.1} ms] {}", l["t_ms"].as_f64().unwrap(), l["line"]);
        }
    }
    let metrics = metrics.map(|m| m.encode()).unwrap_or_default();
    Some(Report { json, metrics })
}

fn assert_connected_with_handshake(r: &Report) {
    assert!(
        r.has_line("connected to CID 2 port"),
        "no connection to the host"
    );
    let (sent, received) = r.socket_frames(0);
    assert_eq!(sent.first(), Some(&"Hello"), "the guest opens with Hello");
    assert_eq!(
        received.first(),
        Some(&"HelloAck"),
        "the real scanner answered HelloAck"
    );
    let connects = r.json["connects"].as_array().unwrap();
    assert_eq!(
        connects[0]["family"], 28,
        "the family IOCTL 0x81032068 gave"
    );
    assert_eq!(connects[0]["cid"], 2, "hostCid");
    assert_eq!(connects[0]["local_cid"], u64::from(u32::MAX), "CID_ANY");
}

#[test]
fn clean_machine_captures_at_the_first_attempt_and_says_hello_to_the_scanner() {
    let Some(r) = run("clean-machine", true) else {
        return;
    };
    r.assert_clean();
    assert_eq!(r.entry_status(), 0);
    assert_eq!(r.capture_attempts(), vec![(0.0, 0)]);
    let (_, l) = r.line("vSockets provider captured").unwrap();
    assert!(l.contains("after 1 attempt(s), 0 ms waited"), "{l}");
    assert!(r.has_line("AUDIT: DriverEntry : ThinAgent loaded: 0x00000000"));
    assert_eq!(r.json["filtering"], true);
    assert_connected_with_handshake(&r);
    // boot start: the re-initialisation routine is registered by
    // DriverEntry, and when it runs after the capture it only says so
    assert_eq!(r.json["results"]["boot-reinit"], 0);
    assert!(r.has_line("boot drivers initialised (call 1): provider already captured"));
    // The control device got its DACL before DriverEntry returned.
    let sec = r.json["security"].as_object().unwrap();
    assert_eq!(sec.len(), 1, "one object secured: {sec:?}");
    let d = sec.values().next().unwrap();
    assert_eq!(d["information"], 4, "DACL_SECURITY_INFORMATION");
    assert_eq!(
        d["descriptor"]["grants"],
        serde_json::json!(["SYSTEM", "Administrators"])
    );
}

/// The incident's machine, boot start: STATUS_DEVICE_BUSY for 5 attempts;
/// the boot re-initialisation routine (all boot drivers initialised at
/// 2.5 s) cuts the delay short; capture at the 6th attempt.
#[test]
fn seed_machine_boot_start_retries_busy_and_the_reinit_routine_retries_at_once() {
    let Some(r) = run("seed-machine-boot-start", true) else {
        return;
    };
    r.assert_clean();
    assert_eq!(r.entry_status(), 0);
    assert_eq!(
        r.json["entry_ms"], 0.0,
        "DriverEntry waited for the capture loop"
    );
    let attempts = r.capture_attempts();
    let busy = u64::from(STATUS_DEVICE_BUSY);
    assert_eq!(
        attempts,
        vec![
            (0.0, busy),
            (1000.0, busy),
            (2000.0, busy),
            (2500.0, busy),
            (3500.0, busy),
            (4500.0, 0)
        ]
    );
    assert_eq!(r.json["results"]["boot-reinit"], 0);
    assert!(r.has_line("boot drivers initialised (call 1): retrying the capture now"));
    let (t, l) = r.line("vSockets provider captured").unwrap();
    assert_eq!(t, 4500.0);
    assert!(l.contains("after 6 attempt(s)"), "{l}");
    // every failed attempt is logged with its status in the seed's shape
    let failed: Vec<_> = r
        .lines()
        .into_iter()
        .filter(|l| l.contains("capture attempt"))
        .collect();
    assert_eq!(failed.len(), 5);
    for l in &failed {
        let p = parse_line(l).unwrap();
        assert_eq!(p.status, Some(NtStatus(STATUS_DEVICE_BUSY)), "{l}");
    }
    assert_connected_with_handshake(&r);
}

/// The same machine with the driver started by `sc start` (Start = 3): no
/// re-initialisation routine, the plain 1 s loop.
#[test]
fn seed_machine_sc_start_retries_every_second_without_reinit() {
    let Some(r) = run("seed-machine-sc-start", true) else {
        return;
    };
    r.assert_clean();
    assert_eq!(r.json["reinit_registered"], 0);
    assert_eq!(
        r.json["api_calls"]["IoRegisterBootDriverReinitialization"],
        Value::Null
    );
    let busy = u64::from(STATUS_DEVICE_BUSY);
    assert_eq!(
        r.capture_attempts(),
        vec![(0.0, busy), (1000.0, busy), (2000.0, busy), (3000.0, 0)]
    );
    assert_connected_with_handshake(&r);
}

/// vmci.sys never starts: exactly captureRetryCount (100) attempts 1 s
/// apart, the give-up in Listing 1's shape, DriverEntry back at once.
#[test]
fn never_ready_gives_up_after_exactly_100_attempts_without_blocking_driver_entry() {
    let Some(r) = run("never-ready", false) else {
        return;
    };
    r.assert_clean();
    assert_eq!(r.entry_status(), 0);
    assert_eq!(r.json["entry_ms"], 0.0);
    let attempts = r.capture_attempts();
    assert_eq!(attempts.len(), 100);
    for (i, (t, s)) in attempts.iter().enumerate() {
        assert_eq!(*t, 1000.0 * i as f64, "attempt {} time", i + 1);
        assert_eq!(*s, u64::from(STATUS_DEVICE_BUSY));
    }
    let (t, l) = r.line("capture failed after").unwrap();
    assert_eq!(t, 99_000.0);
    let p = parse_line(&l).unwrap();
    assert_eq!(p.level, Level::Error);
    assert_eq!(p.routine, "VsockCapture");
    assert_eq!(p.status, Some(NtStatus(STATUS_DEVICE_BUSY)));
    assert!(
        p.message.contains("after 100 attempt(s), 99000 ms waited"),
        "{l}"
    );
    assert!(r.has_line("no host connection; opens are decided by the fail mode (Open)"));
}

/// captureMode = 1: the whole loop inside DriverEntry, as the incident's
/// agent did: DriverEntry returns only after 99 s.
#[test]
fn never_ready_in_blocking_mode_holds_driver_entry_for_the_whole_loop() {
    let Some(r) = run("never-ready-blocking", false) else {
        return;
    };
    r.assert_clean();
    assert_eq!(r.entry_status(), 0);
    assert_eq!(r.json["entry_ms"], 99_000.0);
    assert_eq!(r.capture_attempts().len(), 100);
    assert!(r.has_line("captureMode Blocking"));
}

/// Defect 2 of issue 11: a capture IOCTL the lower driver never completes
/// is cancelled after 5 s and the loop goes on.
#[test]
fn a_hung_capture_ioctl_is_cancelled_and_the_loop_goes_on() {
    let Some(r) = run("hung-capture-ioctl", true) else {
        return;
    };
    r.assert_clean();
    assert_eq!(
        r.json["entry_ms"], 0.0,
        "DriverEntry waited for a capture IOCTL"
    );
    let cancelled: Vec<_> = r
        .events("capture-ioctl")
        .into_iter()
        .filter(|e| e.get("cancelled").is_some())
        .collect();
    assert_eq!(cancelled.len(), 1);
    assert_eq!(cancelled[0]["t_ms"], 5000.0);
    let (_, l) = r.line("capture attempt 1").unwrap();
    let p = parse_line(&l).unwrap();
    assert_eq!(
        p.status,
        Some(NtStatus(0xC000_00B5)),
        "reported as STATUS_IO_TIMEOUT: {l}"
    );
    assert!(!r.has_line("not transient"), "the hang ended the capture");
    let (t, l) = r.line("vSockets provider captured").unwrap();
    assert_eq!(t, 6000.0);
    assert!(l.contains("after 2 attempt(s), 6000 ms waited"), "{l}");
    assert_connected_with_handshake(&r);
}

#[test]
fn registry_parameters_valid_wrong_type_and_out_of_range() {
    let Some(r) = run("registry-parameters", false) else {
        return;
    };
    r.assert_clean();
    // valid: used
    assert!(r.has_line("DEBUG: ReadParams : umcMsgTimeoutMs: 1500"));
    assert!(r.has_line("DEBUG: ReadParams : failMode: closed"));
    // wrong type: default kept, WARN
    let warns: Vec<_> = r
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("WARN: ReadParams"))
        .collect();
    assert!(
        warns.iter().any(|l| l.contains("captureRetryCount")),
        "{warns:?}"
    );
    assert!(r.has_line("DEBUG: ReadParams : captureRetryCount: 100"));
    // out of range: clamped, WARN
    assert!(
        warns.iter().any(|l| l.contains("captureRetryDelayMs")),
        "{warns:?}"
    );
    let (_, l) = r.line("DEBUG: ReadParams : captureRetryDelayMs:").unwrap();
    assert_ne!(l, "DEBUG: ReadParams : captureRetryDelayMs: 0");
}

/// Unload after a session: every pool block freed, every reference and
/// handle released, every thread ended, the device and link gone.
#[test]
fn unload_releases_everything() {
    let Some(r) = run("unload", true) else {
        return;
    };
    r.assert_clean();
    assert_eq!(r.json["results"]["filter-unload"], 0);
    assert!(r.has_line("AUDIT: DriverUnload : ThinAgent unloaded: 0x00000000"));
    r.assert_nothing_left();
    assert_eq!(r.json["sockets"][0]["closed"], true);
}

#[test]
fn unload_is_refused_while_the_boot_reinit_routine_is_pending() {
    let Some(r) = run("unload-refused-while-reinit-pending", false) else {
        return;
    };
    r.assert_clean();
    assert_eq!(
        r.json["results"]["first-unload"].as_u64(),
        Some(STATUS_FLT_DO_NOT_DETACH)
    );
    assert_eq!(r.json["results"]["boot-reinit"], 0);
    assert_eq!(r.json["results"]["filter-unload"], 0);
    r.assert_nothing_left();
}

/// A KVM guest: vsockTransport = 2, virtio-win's viosock interface arrives
/// at 2 s (PnP notification), the driver opens the device, creates a
/// socket (ZwCreateFile with the VIRTIO_VSOCK_PARAMS extended attribute),
/// connects (IOCTL_SOCKET_CONNECT, a 12-byte sockaddr_vm) and talks to the
/// real scanner with read/write IRPs; unload releases everything.
#[test]
fn virtio_transport_connects_through_the_viosock_interface() {
    let Some(r) = run("virtio", true) else {
        return;
    };
    r.assert_clean();
    assert_eq!(
        r.capture_attempts(),
        vec![],
        "no VMCI capture with vsockTransport 2"
    );
    assert!(
        r.has_line("(guest CID 3)"),
        "IOCTL_GET_CONFIG on the control file"
    );
    let (t, _) = r.line("connected to CID 2 port").unwrap();
    assert_eq!(t, 2000.0, "connected when the interface arrived");
    assert!(r.has_line("(virtio)"));
    let connects = r.json["viosock_connects"].as_array().unwrap();
    assert_eq!(connects[0]["family"], 40, "AF_VSOCK");
    assert_eq!(connects[0]["cid"], 2);
    let s = &r.json["viosock_sockets"][0];
    assert_eq!(
        Report::frames(s["sent"].as_str().unwrap()).first(),
        Some(&"Hello")
    );
    assert_eq!(
        Report::frames(s["received"].as_str().unwrap()).first(),
        Some(&"HelloAck")
    );
    assert_eq!(r.json["results"]["filter-unload"], 0);
    r.assert_nothing_left();
    assert_eq!(s["closed"], true, "the socket's file object was released");
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// What `thinagent-diag agent-state` does, through the driver's own
/// dispatch routines: open, get the state (decoded with the same
/// `guest::control` the client uses), a too-short buffer, set debugLevel,
/// an out-of-range level, close.
#[test]
fn control_device_reports_the_state_and_sets_the_debug_level() {
    use thinagent_guest::control::AgentState;
    let Some(r) = run("control-device", true) else {
        return;
    };
    r.assert_clean();
    let res = &r.json["results"];
    for step in [
        "create",
        "get-state",
        "set-debug-level",
        "get-state-after",
        "close",
    ] {
        assert_eq!(res[step]["status"], 0, "{step}: {}", res[step]);
        assert_eq!(res[step]["returned"], res[step]["status"], "{step}");
    }
    assert_eq!(res["get-state"]["information"], AgentState::SIZE);
    let state = AgentState::from_bytes(&hex_bytes(res["get-state"]["output"].as_str().unwrap()))
        .expect("the state decodes");
    assert!(state.connected);
    assert!(state.provider_captured);
    assert_eq!(state.capture_attempts, 3);
    assert_eq!(state.last_capture_status, NtStatus::STATUS_SUCCESS);
    assert_eq!(state.sessions, 1);
    assert_eq!(state.debug_level, 4);
    let after = AgentState::from_bytes(&hex_bytes(
        res["get-state-after"]["output"].as_str().unwrap(),
    ))
    .unwrap();
    assert_eq!(after.debug_level, 2, "set-debug-level took effect");
    // refused requests: STATUS_BUFFER_TOO_SMALL, STATUS_INVALID_PARAMETER
    assert_eq!(res["get-state-short"]["status"], 0xC000_0023_u32);
    assert_eq!(res["set-debug-level-bad"]["status"], 0xC000_000D_u32);
    assert!(r.has_line("AUDIT: ControlDevice : debugLevel set to 2 (was 4)"));
}

/// A capture reply without a WSK provider NPI inside vsock.sys: the driver
/// calls nothing through it (no provider function runs), says so with
/// 0xC00000BB, keeps filtering under failMode and unloads cleanly.
#[test]
fn an_unrecognised_capture_reply_is_never_called_through() {
    let Some(r) = run("unrecognised-capture-reply", true) else {
        return;
    };
    r.assert_clean();
    let (_, l) = r.line("not recognised as a WSK provider NPI").unwrap();
    let p = parse_line(&l).unwrap();
    assert_eq!(p.level, Level::Error);
    assert_eq!(p.status, Some(NtStatus(0xC000_00BB)));
    assert!(
        r.events("wsk-connect").is_empty(),
        "a provider function was called"
    );
    assert!(r.has_line("INFO: DriverEntry : filtering started"));
    assert!(r.has_line("no host connection; opens are decided by the fail mode (Open)"));
    assert_eq!(r.json["results"]["filter-unload"], 0);
    r.assert_nothing_left();
}

// ---------------------------------------------------------------------------
// File opens through the registered minifilter callbacks: the emulated Filter
// Manager (tests/emulation/ntemu/fltmgr.py) attaches the filter to one NTFS
// volume and runs IRP_MJ_CREATE / WRITE / CLEANUP through the driver's pre-
// and post-operation callbacks with real FLT_CALLBACK_DATA, on threads of
// their own; the host is the real scanner (built-in EICAR signature).
// ---------------------------------------------------------------------------

const STATUS_VIRUS_INFECTED: u64 = 0xC000_0906;
/// The emulated volume's NTFS serial (FileIdInformation.VolumeSerialNumber).
const VOLUME_SERIAL: u64 = 0x1C2D_3E4F_5A6B_7C8D;
/// `umcMsgTimeoutMs`'s default.
const UMC_MSG_TIMEOUT_MS: f64 = 2000.0;

/// One `FileEvent` the guest sent, as the scanner decoded it.
#[derive(Debug)]
struct SentFileEvent {
    kind: thinagent_protocol::EventKind,
    path: String,
    size: u64,
    volume_serial: u64,
    process_id: u32,
    desired_access: u32,
    /// Inline content (protocol version 2; empty without).
    content: Vec<u8>,
    /// The inline content is the whole file (`WHOLE_FILE`).
    whole_file: bool,
}

impl Report {
    /// The `FileEvent`s the guest sent on bridged socket `i`.
    fn file_events(&self, i: usize) -> Vec<SentFileEvent> {
        let hex = self.json["sockets"][i]["sent"].as_str().unwrap();
        let bytes = hex_bytes(hex);
        let mut out = Vec::new();
        let mut at = 0;
        // The last frame may be cut where the host was killed in the
        // middle of a multi-chunk send (the bridge records each chunk the
        // guest tried to send): only on a closed socket.
        let closed = self.json["sockets"][i]["closed"] == true;
        while at < bytes.len() {
            let (frame, consumed) = match decode_frame(&bytes[at..]) {
                Ok(Decoded::Frame { frame, consumed }) => (frame, consumed),
                Ok(Decoded::Incomplete { .. }) if closed => break,
                _ => panic!("undecodable bytes on the wire at {at}"),
            };
            if let Message::FileEvent(e) = frame.message {
                let path = match e.path {
                    thinagent_protocol::FilePath::Utf16Le(b) => String::from_utf16(
                        &b.chunks_exact(2)
                            .map(|c| u16::from_le_bytes([c[0], c[1]]))
                            .collect::<Vec<_>>(),
                    )
                    .unwrap(),
                    other => panic!("a Windows path is UTF-16: {other:?}"),
                };
                out.push(SentFileEvent {
                    kind: e.kind,
                    path,
                    size: e.file.size,
                    volume_serial: e.file.volume_serial,
                    process_id: e.process_id,
                    desired_access: e.desired_access,
                    content: e.content.bytes.to_vec(),
                    whole_file: e.content.whole_file,
                });
            }
            at += consumed;
        }
        out
    }

    /// Whether the guest's `Hello` on bridged socket `i` announced
    /// `INLINE_CONTENT`, and the protocol version the scanner's `HelloAck`
    /// chose.
    fn inline_negotiated(&self, i: usize) -> (bool, u16) {
        let s = &self.json["sockets"][i];
        let mut offered = None;
        let mut version = None;
        each_frame(s["sent"].as_str().unwrap(), |_, m| {
            if let Message::Hello(h) = m {
                offered.get_or_insert(
                    h.capabilities
                        .contains(thinagent_protocol::Capabilities::INLINE_CONTENT),
                );
            }
        });
        each_frame(s["received"].as_str().unwrap(), |_, m| {
            if let Message::HelloAck(a) = m {
                version.get_or_insert(a.version);
            }
        });
        (offered.expect("a Hello"), version.expect("a HelloAck"))
    }

    /// The value of one sample of the scanner's metrics (`name` with its
    /// labels, e.g. `thinagent_scanner_inline_events_total{whole="true"}`);
    /// 0 when absent.
    fn metric(&self, name: &str) -> f64 {
        self.metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    /// The file operations the emulated I/O manager ran (`op` = "open",
    /// "write", "close"), in order.
    fn file_ops(&self, op: &str) -> Vec<&Value> {
        self.json["file_ops"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["op"] == op)
            .collect()
    }

    /// Nothing of the filter's is left after unload: contexts freed through
    /// their cleanup callbacks, names and aligned buffers released.
    fn assert_filter_released(&self) {
        assert_eq!(
            self.json["contexts_live"],
            serde_json::json!([]),
            "contexts left"
        );
        assert_eq!(self.json["names_live"], serde_json::json!([]), "names");
        assert_eq!(self.json["aligned_live"], 0, "aligned read buffers left");
        self.assert_nothing_left();
    }
}

/// An open the filter let through untouched by FltCancelFileOpen.
fn assert_allowed(open: &Value) {
    assert_eq!(open["pre"], 0, "FLT_PREOP_SUCCESS_WITH_CALLBACK: {open}");
    assert_eq!(open["post_called"], true, "{open}");
    assert_eq!(open["status"], 0, "{open}");
    assert_eq!(open["cancelled"], false, "{open}");
    assert_eq!(open["allowed"], true, "{open}");
}

/// An open the filter cancelled with FltCancelFileOpen and `status`.
fn assert_denied(open: &Value, status: u64) {
    assert_eq!(open["post_called"], true, "{open}");
    assert_eq!(open["cancelled"], true, "FltCancelFileOpen called: {open}");
    assert_eq!(open["status"].as_u64(), Some(status), "{open}");
    assert_eq!(open["allowed"], false, "{open}");
}

/// Every host read was served by a non-cached, sector-aligned FltReadFile
/// that left the opener's file position alone, of a file of `size` bytes.
fn assert_reads_aligned(r: &Report, size: u64) {
    let reads = r.json["flt_reads"].as_array().unwrap();
    assert!(!reads.is_empty(), "the host read nothing");
    for rd in reads {
        let flags = rd["flags"].as_u64().unwrap();
        assert_eq!(flags, 5, "NON_CACHED | DO_NOT_UPDATE_BYTE_OFFSET: {rd}");
        assert_eq!(rd["offset"].as_u64().unwrap() % 512, 0, "{rd}");
        assert_eq!(rd["length"].as_u64().unwrap() % 512, 0, "{rd}");
        assert_eq!(rd["status"], 0, "{rd}");
        assert_eq!(rd["read"].as_u64(), Some(size), "{rd}");
    }
}

/// A clean file: the host scans it once and allows it; its second open is
/// answered from the verdict cache, without a host round trip. The 39
/// bytes are read in post-create (one non-cached FltReadFile on the
/// opener's thread) and go whole with the FileEvent (protocol version 2):
/// the host reads nothing.
#[test]
fn file_open_clean_is_allowed_and_the_second_open_comes_from_the_cache() {
    let Some(r) = run("file-clean-cached", true) else {
        return;
    };
    r.assert_clean();
    assert_eq!(r.json["instance_attached"], true);
    assert!(
        r.has_line("INFO: OpenFilter : attached to a volume (file system type 2, serial 5A6B7C8D)")
    );
    let opens = r.file_ops("open");
    assert_eq!(opens.len(), 2);
    for o in &opens {
        assert_allowed(o);
    }
    let events = r.file_events(0);
    assert_eq!(events.len(), 1, "one FileEvent for two opens: {events:?}");
    let e = &events[0];
    assert_eq!(e.kind, thinagent_protocol::EventKind::Open);
    assert_eq!(e.path, r"\Device\HarddiskVolume3\Users\Public\report.txt");
    assert_eq!(e.size, 39);
    assert_eq!(e.volume_serial, VOLUME_SERIAL);
    assert_eq!(e.process_id, 4242);
    assert_eq!(e.desired_access, 0x0012_0089, "FILE_GENERIC_READ");
    assert_eq!(r.inline_negotiated(0), (true, 2));
    assert_eq!(
        (e.content.as_slice(), e.whole_file),
        (&b"Quarterly figures, nothing to report.\r\n"[..], true),
        "the whole file inline"
    );
    let (sent, received) = r.socket_frames(0);
    assert!(!received.contains(&"ReadRequest"), "{received:?}");
    assert!(!sent.contains(&"ReadData"), "{sent:?}");
    assert_eq!(
        received.iter().filter(|t| **t == "Verdict").count(),
        1,
        "{received:?}"
    );
    assert_reads_aligned(&r, 39);
    let reads = r.json["flt_reads"].as_array().unwrap();
    assert_eq!(reads.len(), 1, "one read, in post-create: {reads:?}");
    assert!(
        reads[0]["thread"].as_str().unwrap().starts_with("opener-"),
        "{reads:?}"
    );
    assert_eq!(reads[0]["length"], 512, "39 + 1 bytes, one sector");
    // Nothing went to the host between the first close and the second open's end.
    let trace = r.json["trace"].as_array().unwrap();
    let first_close = trace
        .iter()
        .position(|e| e["kind"] == "file-close")
        .unwrap();
    let second_open = trace
        .iter()
        .enumerate()
        .filter(|(_, e)| e["kind"] == "file-open")
        .nth(1)
        .unwrap()
        .0;
    assert!(
        trace[first_close..second_open]
            .iter()
            .all(|e| e["kind"] != "wsk-send"),
        "the second open went to the host"
    );
    assert_eq!(r.json["api_calls"]["FltCancelFileOpen"], Value::Null);
    assert_eq!(r.json["results"]["filter-unload"], 0);
    assert!(r.has_line("INFO: OpenFilter : instance teardown (reason 0x2)"));
    r.assert_filter_released();
}

/// EICAR: denied with STATUS_VIRUS_INFECTED, the open cancelled with
/// FltCancelFileOpen; its second open is denied from the stream context
/// without asking the host again.
#[test]
fn file_open_eicar_is_denied_with_status_virus_infected() {
    let Some(r) = run("file-eicar-denied", true) else {
        return;
    };
    r.assert_clean();
    let opens = r.file_ops("open");
    assert_eq!(opens.len(), 2);
    for o in &opens {
        assert_denied(o, STATUS_VIRUS_INFECTED);
    }
    assert_eq!(r.json["flt_cancels"].as_array().unwrap().len(), 2);
    assert!(r.has_line(
        r"AUDIT: OpenFilter : open denied: \Device\HarddiskVolume3\Users\Public\eicar.com (pid 4242, threat Eicar-Test-Signature)"
    ));
    let events = r.file_events(0);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].size, 68);
    assert_eq!(events[0].content.len(), 68, "EICAR inline");
    assert!(events[0].whole_file);
    assert_reads_aligned(&r, 68);
    assert_eq!(r.json["flt_reads"].as_array().unwrap().len(), 1);
    let (_, received) = r.socket_frames(0);
    assert_eq!(
        received.iter().filter(|t| **t == "Verdict").count(),
        1,
        "{received:?}"
    );
    assert!(!received.contains(&"ReadRequest"), "{received:?}");
    r.assert_filter_released();
}

/// Write then close: the write pre-operation marks the stream modified, the
/// cleanup pre-operation rescans it (a CloseAfterWrite FileEvent). A clean
/// rewrite is cached again (the next opens need no host); an EICAR rewrite
/// is denied at close and its next open is denied.
#[test]
fn file_write_then_close_is_rescanned() {
    let Some(r) = run("file-write-rescan", true) else {
        return;
    };
    r.assert_clean();
    let opens = r.file_ops("open");
    assert_eq!(opens.len(), 4);
    for o in &opens[..3] {
        assert_allowed(o);
    }
    assert_denied(opens[3], STATUS_VIRUS_INFECTED);
    assert_eq!(r.file_ops("write").len(), 2);
    assert_eq!(r.file_ops("close").len(), 3);
    use thinagent_protocol::EventKind::{CloseAfterWrite, Open};
    let events = r.file_events(0);
    let kinds: Vec<_> = events.iter().map(|e| (e.kind, e.size)).collect();
    assert_eq!(
        kinds,
        vec![(Open, 39), (CloseAfterWrite, 40), (CloseAfterWrite, 68)],
        "the first open, then one rescan per close after a write; no other open asked"
    );
    assert_eq!(
        events[1].desired_access, 0,
        "a rescan carries no access mask"
    );
    assert!(r.has_line(
        r"AUDIT: OpenFilter : modified file denied: \Device\HarddiskVolume3\Users\Public\notes.txt (pid 4242, threat Eicar-Test-Signature)"
    ));
    assert!(
        r.has_line("denied at close (pid 4242): no open left to cancel, its next open is denied")
    );
    r.assert_filter_released();
}

/// The open waiting for its verdict when the host goes away; how it was
/// decided, and when, relative to its start.
fn lost_host_open(r: &Report) -> &Value {
    let opens = r.file_ops("open");
    assert_eq!(opens.len(), 3, "the lost open, then two after reconnection");
    let o = opens[0];
    let waited = o["t_end_ms"].as_f64().unwrap() - o["t_start_ms"].as_f64().unwrap();
    assert!(
        waited <= UMC_MSG_TIMEOUT_MS,
        "decided {waited} ms after the open started, past umcMsgTimeoutMs"
    );
    o
}

/// After the loss: a second connection, a second session, and the next
/// opens are the host's again (FileEvents on the new socket; the fail-mode
/// decision was not cached).
fn assert_reconnected_and_asking_again(r: &Report) {
    let connects = r.events("wsk-connect");
    assert_eq!(connects.len(), 2, "reconnected once");
    let sessions = r
        .lines()
        .iter()
        .filter(|l| l.contains("connected to the host scanner"))
        .count();
    assert_eq!(sessions, 2);
    let opens = r.file_ops("open");
    for o in &opens[1..] {
        assert_allowed(o);
        assert!(
            o["t_start_ms"].as_f64().unwrap() >= connects[1]["t_ms"].as_f64().unwrap(),
            "{o}"
        );
    }
    let events = r.file_events(1);
    let paths: Vec<_> = events.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            r"\Device\HarddiskVolume3\Users\Public\later.txt",
            r"\Device\HarddiskVolume3\Users\Public\invoice.pdf"
        ]
    );
    r.assert_filter_released();
}

/// The host's connection drops while an open waits (failMode open): the
/// open is allowed at once, within umcMsgTimeoutMs, then the driver
/// reconnects 1 s later.
#[test]
fn file_open_when_the_host_is_killed_is_decided_by_fail_mode_open_then_reconnects() {
    let Some(r) = run("file-host-killed", true) else {
        return;
    };
    r.assert_clean();
    let o = lost_host_open(&r);
    assert_allowed(o);
    assert_eq!(r.file_events(0).len(), 1, "the lost open's FileEvent");
    assert!(r.has_line(r"\Device\HarddiskVolume3\Users\Public\invoice.pdf: no host verdict"));
    assert!(r.has_line("fail mode allows"));
    // The host's side closed (0xC000020C), or the ReadData answering its
    // ReadRequest met the reset (0xC000020D): which one depends on whether
    // that ReadRequest was already on its way when the connection dropped.
    let (_, ended) = r.line("WARN: Session : session ended").unwrap();
    assert!(
        ended.ends_with("0xC000020C") || ended.ends_with("0xC000020D"),
        "{ended}"
    );
    let connects = r.events("wsk-connect");
    assert_eq!(
        connects[1]["t_ms"].as_f64().unwrap() - o["t_end_ms"].as_f64().unwrap(),
        1000.0,
        "reconnect delay"
    );
    assert_reconnected_and_asking_again(&r);
}

/// The same with failMode closed: the open is denied (denyStatus,
/// STATUS_VIRUS_INFECTED, FltCancelFileOpen), within umcMsgTimeoutMs; after
/// reconnection the host allows the same file.
#[test]
fn file_open_when_the_host_is_killed_is_decided_by_fail_mode_closed_then_reconnects() {
    let Some(r) = run("file-host-killed-fail-closed", true) else {
        return;
    };
    r.assert_clean();
    assert!(r.has_line("DEBUG: ReadParams : failMode: closed"));
    let o = lost_host_open(&r);
    assert_denied(o, STATUS_VIRUS_INFECTED);
    assert!(r.has_line("fail mode denies"));
    assert_reconnected_and_asking_again(&r);
}

/// The host stops answering (the connection stays up): the open waits
/// exactly umcMsgTimeoutMs and is allowed by failMode open; the session
/// ends on the host's idle timeout and the driver reconnects.
#[test]
fn file_open_when_the_host_stops_answering_is_decided_at_umc_msg_timeout() {
    let Some(r) = run("file-host-stalled", true) else {
        return;
    };
    r.assert_clean();
    let o = lost_host_open(&r);
    assert_allowed(o);
    let waited = o["t_end_ms"].as_f64().unwrap() - o["t_start_ms"].as_f64().unwrap();
    assert_eq!(waited, UMC_MSG_TIMEOUT_MS);
    assert!(r.has_line("fail mode allows"));
    assert_reconnected_and_asking_again(&r);
}

// ---------------------------------------------------------------------------
// Where a file ends: the guest answers EndOfFile with the last bytes whenever
// it knows (protocol §5.6), so the host needs no extra ReadRequest to learn
// that nothing follows.
// ---------------------------------------------------------------------------

/// One host read as the wire shows it: the host's `ReadRequest` and the
/// guest's `ReadData`.
#[derive(Debug, PartialEq)]
struct HostRead {
    offset: u64,
    length: u32,
    answer: &'static str,
    data: Vec<u8>,
}

fn wire_path(p: thinagent_protocol::FilePath<'_>) -> String {
    match p {
        thinagent_protocol::FilePath::Utf16Le(b) => String::from_utf16(
            &b.chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect::<Vec<_>>(),
        )
        .unwrap(),
        other => panic!("a Windows path is UTF-16: {other:?}"),
    }
}

/// Every frame of a hex byte stream, with its header's request id, passed
/// to `f`.
fn each_frame(hex: &str, mut f: impl FnMut(u64, Message<'_>)) {
    let bytes = hex_bytes(hex);
    let mut at = 0;
    while at < bytes.len() {
        let Ok(Decoded::Frame { frame, consumed }) = decode_frame(&bytes[at..]) else {
            panic!("undecodable bytes on the wire at {at}");
        };
        f(frame.request_id, frame.message);
        at += consumed;
    }
}

impl Report {
    /// The host's reads on bridged socket `i` and the guest's answers, per
    /// file (the path of the `FileEvent` they belong to), by offset.
    fn host_reads(&self, i: usize) -> std::collections::BTreeMap<String, Vec<HostRead>> {
        use std::collections::{BTreeMap, HashMap};
        let s = &self.json["sockets"][i];
        let mut paths: HashMap<u64, String> = HashMap::new();
        let mut answers: HashMap<u64, (u64, u64, &'static str, Vec<u8>)> = HashMap::new();
        each_frame(s["sent"].as_str().unwrap(), |id, m| match m {
            Message::FileEvent(e) => {
                paths.insert(id, wire_path(e.path));
            }
            Message::ReadData(d) => {
                let (answer, data) = match d.outcome {
                    thinagent_protocol::ReadOutcome::Data(b) => ("Data", b.to_vec()),
                    thinagent_protocol::ReadOutcome::EndOfFile(b) => ("EndOfFile", b.to_vec()),
                    thinagent_protocol::ReadOutcome::Error(_) => ("Error", Vec::new()),
                    thinagent_protocol::ReadOutcome::Cancelled => ("Cancelled", Vec::new()),
                };
                answers.insert(id, (d.event_id, d.offset, answer, data));
            }
            _ => {}
        });
        let mut out: BTreeMap<String, Vec<HostRead>> = BTreeMap::new();
        each_frame(s["received"].as_str().unwrap(), |id, m| {
            if let Message::ReadRequest(r) = m {
                let (event, offset, answer, data) =
                    answers.remove(&id).expect("every host read is answered");
                assert_eq!((event, offset), (r.event_id, r.offset), "the echo");
                out.entry(paths[&r.event_id].clone())
                    .or_default()
                    .push(HostRead {
                        offset: r.offset,
                        length: r.length,
                        answer,
                        data,
                    });
            }
        });
        assert!(answers.is_empty(), "answers to no request: {answers:?}");
        for reads in out.values_mut() {
            reads.sort_by_key(|r| r.offset);
        }
        out
    }

    /// The FltReadFile calls of the file at `path` on the volume.
    fn flt_reads_of(&self, path: &str) -> Vec<&Value> {
        self.json["flt_reads"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["path"] == path)
            .collect()
    }

    /// The `FileStandardInformation` queries of the file at `path` made by
    /// the thread that serves host reads: the size asked to decide an
    /// answer (the opener's own query, for the `FileEvent`, is not one).
    fn size_queries_of(&self, path: &str) -> Vec<&Value> {
        let reader = self.json["flt_reads"][0]["thread"].clone();
        self.json["flt_info_queries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|q| q["path"] == path && q["class"] == 5 && q["thread"] == reader)
            .collect()
    }
}

/// The clean filler of the scenario's files (`pattern` in scenario.py).
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 7 + 3) % 251) as u8).collect()
}

/// The host learns each file's end from the guest's reads:
/// * a 39-byte file: one `ReadRequest`, answered `EndOfFile` with its 39
///   bytes (FltReadFile returned 39 of a 512-byte sector: the count tells),
///   no second read, no size query;
/// * 4096 bytes: the read ends on a sector boundary, so the guest asks the
///   file's size (FileStandardInformation, after the read) and answers
///   `EndOfFile`: one read;
/// * 65536 bytes: a 65480-byte chunk (`Data`: FltReadFile returned bytes
///   past it) and the last 56 bytes, ending on a sector: `EndOfFile` after
///   the size query; two reads;
/// * 4096 bytes in the FileEvent, 4196 when read: the full first read is
///   `Data` (the size says 4196), the host probes past the stated size and
///   gets the last 100 bytes as `EndOfFile`;
/// * the first 40 bytes of EICAR in the FileEvent, all 68 when read: `Data`
///   (bytes past the 40), then the rest as `EndOfFile`; the host scans what
///   the file holds now and denies it.
///
/// Before issue 16 the first three took one more read each, answered
/// `EndOfFile` with no data.
///
/// With `inlineContent` 0, so that every byte goes by `ReadRequest` (as in
/// protocol version 1): the guest does not announce `INLINE_CONTENT` and
/// its `FileEvent`s carry no content. The same files with inline content:
/// `file_reads_with_inline_content_need_a_read_only_past_the_first_bytes`.
#[test]
fn file_reads_answer_end_of_file_with_the_last_bytes() {
    let Some(r) = run("file-reads-end-of-file", true) else {
        return;
    };
    r.assert_clean();
    assert!(r.has_line("DEBUG: ReadParams : inlineContent: 0"));
    assert_eq!(
        r.inline_negotiated(0),
        (false, 2),
        "version 2 chosen, INLINE_CONTENT not offered"
    );
    assert!(
        r.file_events(0)
            .iter()
            .all(|e| e.content.is_empty() && !e.whole_file)
    );
    assert_eq!(
        r.metric("thinagent_scanner_inline_content_bytes_total"),
        0.0
    );
    const EICAR: &[u8] = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
    const CLEAN: &[u8] = b"Quarterly figures, nothing to report.\r\n";
    let read = |offset: u64, length: u32, answer: &'static str, data: &[u8]| HostRead {
        offset,
        length,
        answer,
        data: data.to_vec(),
    };
    let grew = [pattern(4096), pattern(100)].concat();
    // path -> (size in the FileEvent, host reads, size queries by the reader)
    let expected: Vec<(&str, u64, Vec<HostRead>, Vec<u64>)> = vec![
        (
            r"\Data\small.txt",
            39,
            vec![read(0, 39, "EndOfFile", CLEAN)],
            vec![],
        ),
        (
            r"\Data\sector.bin",
            4096,
            vec![read(0, 4096, "EndOfFile", &pattern(4096))],
            vec![4096],
        ),
        (
            r"\Data\chunks.bin",
            65_536,
            vec![
                read(0, 65_480, "Data", &pattern(65_536)[..65_480]),
                read(65_480, 56, "EndOfFile", &pattern(65_536)[65_480..]),
            ],
            vec![65_536],
        ),
        (
            r"\Data\grew.bin",
            4096,
            vec![
                read(0, 4096, "Data", &grew[..4096]),
                read(4096, 65_480, "EndOfFile", &grew[4096..]),
            ],
            vec![4196],
        ),
        (
            r"\Data\grew.com",
            40,
            vec![
                read(0, 40, "Data", &EICAR[..40]),
                read(40, 65_480, "EndOfFile", &EICAR[40..]),
            ],
            vec![],
        ),
    ];
    let events = r.file_events(0);
    let mut host_reads = r.host_reads(0);
    assert_eq!(events.len(), expected.len(), "one FileEvent per file");
    for (e, (path, size, reads, sizes)) in events.iter().zip(&expected) {
        let full = format!(r"\Device\HarddiskVolume3{path}");
        assert_eq!(e.path, full);
        assert_eq!(e.size, *size, "{path}: the size at the open");
        assert_eq!(
            host_reads.remove(&full).unwrap_or_default(),
            *reads,
            "{path}: the host's reads and the guest's answers"
        );
        let flt = r.flt_reads_of(path);
        assert_eq!(
            flt.len(),
            reads.len(),
            "{path}: one FltReadFile per host read"
        );
        for rd in &flt {
            assert_eq!(
                rd["flags"], 5,
                "NON_CACHED | DO_NOT_UPDATE_BYTE_OFFSET: {rd}"
            );
            assert_eq!(rd["offset"].as_u64().unwrap() % 512, 0, "{rd}");
            assert_eq!(rd["length"].as_u64().unwrap() % 512, 0, "{rd}");
        }
        let queries = r.size_queries_of(path);
        let got: Vec<u64> = queries
            .iter()
            .map(|q| q["end_of_file"].as_u64().unwrap())
            .collect();
        assert_eq!(got, *sizes, "{path}: the sizes the guest asked");
        // Each size is asked right after the read it decides: in the trace,
        // the FltReadFile / FltQueryInformationFile before it is a read of
        // the same file.
        let trace = r.json["trace"].as_array().unwrap();
        for (i, ev) in trace.iter().enumerate() {
            if ev["kind"] == "flt-query-info"
                && ev["path"] == *path
                && ev["thread"] == flt[0]["thread"]
            {
                let before = trace[..i]
                    .iter()
                    .rev()
                    .find(|e| e["kind"] == "flt-read" || e["kind"] == "flt-query-info")
                    .unwrap();
                assert_eq!(before["kind"], "flt-read", "{path}: {ev}");
                assert_eq!(before["path"], *path, "{path}: {ev}");
            }
        }
    }
    assert!(
        host_reads.is_empty(),
        "reads of other files: {host_reads:?}"
    );
    let opens = r.file_ops("open");
    assert_eq!(opens.len(), 5);
    for o in &opens[..4] {
        assert_allowed(o);
    }
    assert_denied(opens[4], STATUS_VIRUS_INFECTED);
    let (_, received) = r.socket_frames(0);
    assert_eq!(
        received.iter().filter(|t| **t == "Verdict").count(),
        5,
        "one verdict per file: {received:?}"
    );
    r.assert_filter_released();
}

/// The same files as `file_reads_answer_end_of_file_with_the_last_bytes`,
/// with inline content on (the default): the driver reads each file's
/// first bytes in post-create (one `FltReadFile` on the opener's thread,
/// `size + 1` bytes so that the count shows the end) and sends them with
/// the `FileEvent`:
/// * 39 and 4096 bytes go whole (`WHOLE_FILE`): no `ReadRequest`, no size
///   query;
/// * 65,536 bytes: the first 65,370 (the scanner's `max_inline_len`,
///   65,447, less what the 78-byte path takes of the frame) go inline, the
///   host reads the last 166 (`EndOfFile`, after the size query: that read
///   ends on a sector boundary);
/// * the two files that grow between the open's size query and the
///   first-bytes read (4096 -> 4196, EICAR's 40 -> 68 bytes) are not sent
///   as whole: the stated size's bytes go inline, the host reads the rest
///   past the stated size and gets it as `EndOfFile`; the grown EICAR is
///   denied.
#[test]
fn file_reads_with_inline_content_need_a_read_only_past_the_first_bytes() {
    let Some(r) = run("file-reads-end-of-file-inline", true) else {
        return;
    };
    r.assert_clean();
    assert!(r.has_line("DEBUG: ReadParams : inlineContent: 1"));
    assert_eq!(r.inline_negotiated(0), (true, 2));
    const EICAR: &[u8] = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
    const CLEAN: &[u8] = b"Quarterly figures, nothing to report.\r\n";
    let read = |offset: u64, length: u32, answer: &'static str, data: &[u8]| HostRead {
        offset,
        length,
        answer,
        data: data.to_vec(),
    };
    let big = pattern(65_536);
    let grew = [pattern(4096), pattern(100)].concat();
    let room = inline_room(r"\Data\chunks.bin");
    assert_eq!(room, 65_370);
    // path -> (size in the FileEvent, inline bytes, WHOLE_FILE, length of
    // the first-bytes read, host reads, sizes asked by the host-read thread)
    #[allow(clippy::type_complexity)]
    let expected: Vec<(&str, u64, &[u8], bool, u64, Vec<HostRead>, Vec<u64>)> = vec![
        (r"\Data\small.txt", 39, CLEAN, true, 512, vec![], vec![]),
        (
            r"\Data\sector.bin",
            4096,
            &big[..4096],
            true,
            4608,
            vec![],
            vec![],
        ),
        (
            r"\Data\chunks.bin",
            65_536,
            &big[..room],
            false,
            65_536,
            vec![read(room as u64, 166, "EndOfFile", &big[room..])],
            vec![65_536],
        ),
        (
            r"\Data\grew.bin",
            4096,
            &grew[..4096],
            false,
            4608,
            vec![read(4096, 65_480, "EndOfFile", &grew[4096..])],
            vec![],
        ),
        (
            r"\Data\grew.com",
            40,
            &EICAR[..40],
            false,
            512,
            vec![read(40, 65_480, "EndOfFile", &EICAR[40..])],
            vec![],
        ),
    ];
    let events = r.file_events(0);
    let mut host_reads = r.host_reads(0);
    assert_eq!(events.len(), expected.len(), "one FileEvent per file");
    for (e, (path, size, content, whole, first_len, reads, sizes)) in events.iter().zip(&expected) {
        let full = format!(r"\Device\HarddiskVolume3{path}");
        assert_eq!(e.path, full);
        assert_eq!(e.size, *size, "{path}: the size at the open");
        assert!(
            e.content == *content,
            "{path}: the inline bytes ({} sent, {} expected)",
            e.content.len(),
            content.len()
        );
        assert_eq!(e.whole_file, *whole, "{path}: WHOLE_FILE");
        assert_eq!(
            host_reads.remove(&full).unwrap_or_default(),
            *reads,
            "{path}: the host's reads and the guest's answers"
        );
        let flt = r.flt_reads_of(path);
        assert_eq!(
            flt.len(),
            1 + reads.len(),
            "{path}: the first-bytes read, then one FltReadFile per host read"
        );
        assert!(
            flt[0]["thread"].as_str().unwrap().starts_with("opener-"),
            "{path}: the first bytes are read by the opener: {}",
            flt[0]
        );
        assert_eq!(flt[0]["offset"], 0, "{path}");
        assert_eq!(flt[0]["length"].as_u64(), Some(*first_len), "{path}");
        for rd in &flt {
            assert_eq!(
                rd["flags"], 5,
                "NON_CACHED | DO_NOT_UPDATE_BYTE_OFFSET: {rd}"
            );
            assert_eq!(rd["offset"].as_u64().unwrap() % 512, 0, "{rd}");
            assert_eq!(rd["length"].as_u64().unwrap() % 512, 0, "{rd}");
        }
        // FileStandardInformation: the opener's one (the identity), and
        // the host-read thread's only where a host read ends on a sector.
        let standard: Vec<&Value> = r.json["flt_info_queries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|q| q["path"] == *path && q["class"] == 5)
            .collect();
        let by_opener = standard
            .iter()
            .filter(|q| q["thread"].as_str().unwrap().starts_with("opener-"))
            .count();
        assert_eq!(by_opener, 1, "{path}: the open's own size query only");
        let asked: Vec<u64> = standard
            .iter()
            .filter(|q| !q["thread"].as_str().unwrap().starts_with("opener-"))
            .map(|q| q["end_of_file"].as_u64().unwrap())
            .collect();
        assert_eq!(
            asked, *sizes,
            "{path}: the sizes the host-read thread asked"
        );
    }
    assert!(
        host_reads.is_empty(),
        "reads of other files: {host_reads:?}"
    );
    let opens = r.file_ops("open");
    assert_eq!(opens.len(), 5);
    for o in &opens[..4] {
        assert_allowed(o);
    }
    assert_denied(opens[4], STATUS_VIRUS_INFECTED);
    let (_, received) = r.socket_frames(0);
    assert_eq!(
        received.iter().filter(|t| **t == "Verdict").count(),
        5,
        "one verdict per file: {received:?}"
    );
    r.assert_filter_released();
}

/// Most bytes a `FileEvent` for `path` (on the emulated volume) carries
/// inline with the scanner's defaults: its `max_inline_len`, or less as
/// the frame must also hold the path (§5.3.1).
fn inline_room(path: &str) -> usize {
    use thinagent_protocol::{FILE_EVENT_V2_FIXED_LEN, HEADER_LEN, MAX_FRAME_LEN, MAX_INLINE_LEN};
    let path_bytes = format!(r"\Device\HarddiskVolume3{path}")
        .encode_utf16()
        .count()
        * 2;
    (MAX_FRAME_LEN - HEADER_LEN - FILE_EVENT_V2_FIXED_LEN - path_bytes).min(MAX_INLINE_LEN as usize)
}

/// What one file of the `file-inline-*` scenarios cost.
#[derive(Debug, PartialEq)]
struct OpenCost {
    path: &'static str,
    /// The open's outcome.
    allowed: bool,
    /// Inline bytes in its `FileEvent`, and `WHOLE_FILE`.
    inline: (usize, bool),
    /// `ReadRequest`s the host sent for it.
    read_requests: usize,
    /// `FltReadFile` calls on it (first bytes and host reads).
    flt_reads: usize,
}

/// The open cost of each file of a `file-inline-*` scenario.
fn open_costs(r: &Report) -> Vec<OpenCost> {
    const PATHS: [&str; 4] = [
        r"\Data\eicar.com",
        r"\Data\report.txt",
        r"\Data\page.bin",
        r"\Data\large.bin",
    ];
    let events = r.file_events(0);
    let reads = r.host_reads(0);
    let opens = r.file_ops("open");
    assert_eq!(events.len(), PATHS.len(), "{events:?}");
    assert_eq!(opens.len(), PATHS.len());
    let costs: Vec<OpenCost> = PATHS
        .iter()
        .zip(&events)
        .zip(&opens)
        .map(|((path, e), o)| {
            let full = format!(r"\Device\HarddiskVolume3{path}");
            assert_eq!(e.path, full);
            OpenCost {
                path,
                allowed: o["allowed"] == true,
                inline: (e.content.len(), e.whole_file),
                read_requests: reads.get(&full).map_or(0, Vec::len),
                flt_reads: r.flt_reads_of(path).len(),
            }
        })
        .collect();
    for c in &costs {
        eprintln!("{c:?}");
    }
    costs
}

fn cost(
    path: &'static str,
    allowed: bool,
    inline: (usize, bool),
    read_requests: usize,
    flt_reads: usize,
) -> OpenCost {
    OpenCost {
        path,
        allowed,
        inline,
        read_requests,
        flt_reads,
    }
}

/// Issue 16's cold path with the default `inlineContent` 1: EICAR (68 B),
/// a clean 39-byte and a clean 4096-byte file are each judged in one round
/// trip (`FileEvent` with the whole file -> `Verdict`), with no
/// `ReadRequest`; the scanner counts them as whole inline events and pulls
/// no byte. A clean 200 KiB file sends its first 65,372 bytes inline (the
/// scanner's `max_inline_len` less its path's share of the frame) and the
/// host reads the other 139,428 in 3 `ReadRequest`s (4 without).
#[test]
fn file_inline_content_judges_small_files_in_one_round_trip() {
    let Some(r) = run("file-inline-on", true) else {
        return;
    };
    r.assert_clean();
    assert_eq!(r.inline_negotiated(0), (true, 2));
    let room = inline_room(r"\Data\large.bin");
    assert_eq!(room, 65_372);
    assert_eq!(
        open_costs(&r),
        vec![
            cost(r"\Data\eicar.com", false, (68, true), 0, 1),
            cost(r"\Data\report.txt", true, (39, true), 0, 1),
            cost(r"\Data\page.bin", true, (4096, true), 0, 1),
            cost(r"\Data\large.bin", true, (room, false), 3, 4),
        ]
    );
    assert_denied(r.file_ops("open")[0], STATUS_VIRUS_INFECTED);
    assert!(r.has_line(
        r"AUDIT: OpenFilter : open denied: \Device\HarddiskVolume3\Data\eicar.com (pid 4242, threat Eicar-Test-Signature)"
    ));
    // The host reads the large file from where its inline bytes end.
    let reads = r.host_reads(0);
    let large = &reads[r"\Device\HarddiskVolume3\Data\large.bin"];
    assert_eq!(large[0].offset, room as u64);
    assert_eq!(large.last().unwrap().answer, "EndOfFile");
    let data = pattern(200 * 1024);
    let pulled: Vec<u8> = large.iter().flat_map(|h| h.data.clone()).collect();
    assert!(pulled == data[room..], "the rest of the file, once");
    // The scanner's own count.
    let m = |name: &str| r.metric(name);
    assert_eq!(
        m(r#"thinagent_scanner_inline_events_total{whole="true"}"#),
        3.0
    );
    assert_eq!(
        m(r#"thinagent_scanner_inline_events_total{whole="false"}"#),
        1.0
    );
    assert_eq!(
        m("thinagent_scanner_inline_content_bytes_total"),
        (68 + 39 + 4096 + room) as f64
    );
    assert_eq!(
        m("thinagent_scanner_bytes_read_total"),
        (200 * 1024 - room) as f64
    );
    r.assert_filter_released();
}

/// The same files with `inlineContent` 0: the guest does not announce
/// `INLINE_CONTENT`, sends no content, and the host reads every file with
/// `ReadRequest`s (one for each small file, 4 for 200 KiB): the behaviour
/// before issue 16, verdicts unchanged.
#[test]
fn file_inline_content_off_reads_every_byte_on_request() {
    let Some(r) = run("file-inline-off", true) else {
        return;
    };
    r.assert_clean();
    assert!(r.has_line("DEBUG: ReadParams : inlineContent: 0"));
    assert_eq!(r.inline_negotiated(0), (false, 2));
    assert_eq!(
        open_costs(&r),
        vec![
            cost(r"\Data\eicar.com", false, (0, false), 1, 1),
            cost(r"\Data\report.txt", true, (0, false), 1, 1),
            cost(r"\Data\page.bin", true, (0, false), 1, 1),
            cost(r"\Data\large.bin", true, (0, false), 4, 4),
        ]
    );
    assert_denied(r.file_ops("open")[0], STATUS_VIRUS_INFECTED);
    // Every FltReadFile is the worker's, for a host read.
    for rd in r.json["flt_reads"].as_array().unwrap() {
        assert!(
            !rd["thread"].as_str().unwrap().starts_with("opener-"),
            "{rd}"
        );
    }
    let m = |name: &str| r.metric(name);
    assert_eq!(
        m(r#"thinagent_scanner_inline_events_total{whole="true"}"#),
        0.0
    );
    assert_eq!(m("thinagent_scanner_inline_content_bytes_total"), 0.0);
    assert_eq!(
        m("thinagent_scanner_bytes_read_total"),
        (68 + 39 + 4096 + 200 * 1024) as f64
    );
    r.assert_filter_released();
}

// ---------------------------------------------------------------------------
// Host actions (protocol §14) driven through the real scanner's control
// socket
// ---------------------------------------------------------------------------

/// The host-action scenarios leave nothing of the driver's behind either:
/// no file it opened, no push lock held, no instance or volume reference.
fn assert_actions_clean(r: &Report) {
    r.assert_clean();
    r.assert_nothing_left();
    assert_eq!(
        r.json["own_files_open"],
        serde_json::json!([]),
        "files left open"
    );
    assert_eq!(
        r.json["push_locks_held"],
        serde_json::json!([]),
        "push locks held"
    );
    for (obj, refs) in r.json["flt_objects_refs"].as_object().unwrap() {
        assert!(
            refs.as_u64().unwrap() <= 1,
            "{obj}: references left: {refs}"
        );
    }
    assert!(
        r.json["own_opens"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["options"].as_u64().unwrap() & 0x0020_0000 != 0),
        "every own open uses FILE_OPEN_REPARSE_POINT"
    );
}

fn guest_of(guests: &Value) -> &Value {
    let list = guests["guests"].as_array().expect("guests listed");
    list.iter()
        .find(|g| g["connected"] == true)
        .unwrap_or_else(|| panic!("no connected guest in {guests}"))
}

#[test]
fn actions_remediate_deletes_truncates_and_refuses_changed_or_missing_files() {
    let Some(r) = run_actions("actions-remediate") else {
        return;
    };
    assert_actions_clean(&r);
    let res = &r.json["results"];
    let g = guest_of(&res["guests_before"]);
    assert_eq!(g["protocol_version"], 2, "{g}");
    assert_eq!(
        g["actions"],
        serde_json::json!(["remediate", "scan-tree", "policy", "restore"]),
        "the driver announces the four host actions: {g}"
    );
    assert_eq!(g["detections"], 5, "five EICAR opens were detected: {g}");
    let status = |n: &str| res["remediate"][n]["status"].as_str().unwrap().to_string();
    assert_eq!(status("eicar1.com"), "done", "{}", res["remediate"]);
    assert_eq!(
        res["eicar1_gone_while_open"], true,
        "POSIX delete: the name goes while a handle is open"
    );
    assert_eq!(status("eicar2.com"), "changed", "{}", res["remediate"]);
    assert_eq!(status("eicar3.com"), "not-found", "{}", res["remediate"]);
    assert_eq!(status("eicar5.com"), "done", "{}", res["remediate"]);
    assert_eq!(
        status("eicar4.com"),
        "done-on-close",
        "{}",
        res["remediate"]
    );
    assert_eq!(
        res["eicar4_before_close"], true,
        "without POSIX semantics the name stays until the last close"
    );
    let fs = &res["fs"];
    let d = "\\Users\\Public\\";
    assert!(fs[format!("{d}eicar1.com")].is_null(), "{fs}");
    assert!(fs[format!("{d}eicar3.com")].is_null(), "{fs}");
    assert!(
        fs[format!("{d}eicar4.com")].is_null(),
        "removed at the last close: {fs}"
    );
    assert_eq!(
        fs[format!("{d}eicar2.com")]["eicar"],
        false,
        "the replaced file is kept: {fs}"
    );
    assert_eq!(fs[format!("{d}eicar2.com")]["size"], 39, "{fs}");
    assert_eq!(fs[format!("{d}eicar5.com")]["size"], 0, "truncated: {fs}");
    // The disposition was set on the file object the identity was checked on.
    let sets: Vec<&Value> = r.json["set_infos"].as_array().unwrap().iter().collect();
    assert!(
        sets.iter().any(|s| s["class"] == 64 && s["flags"] == 0x13),
        "{sets:?}"
    );
    assert!(
        sets.iter()
            .any(|s| s["class"] == 64 && s["status"] == 0xC000_000D_u64),
        "POSIX refused: {sets:?}"
    );
    assert!(
        sets.iter().any(|s| s["class"] == 13 && s["delete"] == true),
        "{sets:?}"
    );
    assert!(
        sets.iter()
            .any(|s| s["class"] == 20 && s["end_of_file"] == 0),
        "{sets:?}"
    );
    // Never on the session worker's thread (it judges opens).
    for o in r.json["own_opens"].as_array().unwrap() {
        assert!(!o["thread"].as_str().unwrap_or("").contains("link"), "{o}");
    }
}

/// On-demand scans in the emulated kernel: a tree with a junction loop, a
/// volume mount point, an excluded directory and extension completes with
/// exact counters and follows no reparse point; the same tree with
/// `cross_mounts` also walks the mounted volume, once, under its device
/// name (its mount point back to the first volume is not followed); a
/// drive-letter root is spelled as the device name and a missing drive is
/// `not-found`; a 300-file scan on a slow disk reports progress and is
/// cancelled.
#[test]
fn actions_scan_walks_the_tree_without_following_reparse_points_and_can_be_cancelled() {
    let Some(r) = run_actions("actions-scan") else {
        return;
    };
    assert_actions_clean(&r);
    let res = &r.json["results"];
    let done = &res["scan"];
    assert_eq!(done["status"], "completed", "{done}");
    let c = &done["counters"];
    // a.txt, eicar.com, notes.log, sub\b.txt, sub\deep\eicar2.com; the
    // excluded directory is not entered, loop and mnt are reparse points.
    assert_eq!(c["files_seen"], 5, "{c}");
    assert_eq!(c["files_skipped"], 1, "notes.log (excluded extension): {c}");
    assert_eq!(c["files_scanned"], 4, "{c}");
    assert_eq!(c["files_denied"], 2, "{c}");
    assert_eq!(c["errors"], 0, "{c}");
    assert_eq!(c["bytes"], 39 + 68 + 200 * 1024 + 68, "{c}");
    assert_eq!(
        res["own_opens_through_reparse"],
        serde_json::json!([]),
        "reparse points never entered"
    );
    // `C:\Data\tree\sub`: FltGetVolumeFromName("C:"), then the device name.
    let d = &res["scan_drive_letter"];
    assert_eq!(d["status"], "completed", "{d}");
    assert_eq!(
        d["counters"]["files_seen"], 2,
        "b.txt, deep\\eicar2.com: {d}"
    );
    assert_eq!(d["counters"]["files_denied"], 1, "{d}");
    assert!(
        r.json["volume_lookups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "C:"),
        "{}",
        r.json["volume_lookups"]
    );
    let q = &res["scan_no_such_drive"];
    assert_eq!(q["status"], "not-found", "{q}");
    // cross_mounts: the volume mounted at `mnt` is walked once, under its
    // device name (x.com, y.txt); the junction `loop` and the mount point
    // `back` (to the first volume, walked already) are not followed.
    let x = &res["scan_cross_mounts"];
    assert_eq!(x["status"], "completed", "{x}");
    let xc = &x["counters"];
    assert_eq!(xc["files_seen"], 7, "{xc}");
    assert_eq!(xc["files_skipped"], 1, "{xc}");
    assert_eq!(xc["files_scanned"], 6, "{xc}");
    assert_eq!(xc["files_denied"], 3, "{xc}");
    assert_eq!(xc["errors"], 0, "{xc}");
    let mounted: Vec<&str> = res["mounted_opens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for p in [
        r"\Device\HarddiskVolume5\",
        r"\Device\HarddiskVolume5\inner\x.com",
        r"\Device\HarddiskVolume5\y.txt",
        r"\Device\HarddiskVolume5\back",
    ] {
        assert!(mounted.contains(&p), "{p} not opened: {mounted:?}");
    }
    assert!(
        !mounted
            .iter()
            .any(|p| p.starts_with(r"\Device\HarddiskVolume5\back\")),
        "the mount point back was not entered: {mounted:?}"
    );
    assert_eq!(
        res["fs_controls"],
        serde_json::json!([r"\Data\tree\loop", r"\Data\tree\mnt", r"\back"]),
        "reparse data read for the three reparse points"
    );
    let g = guest_of(&res["guests_after_scan"]);
    assert_eq!(
        g["detections"], 2,
        "the two EICAR files the scan found: {g}"
    );
    assert!(
        g["last_detection"].as_str().unwrap_or("").contains("eicar"),
        "{g}"
    );
    // The large file needed ReadRequests served from the scan's own file object.
    assert!(
        r.json["flt_reads"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["path"] == "\\Data\\tree\\sub\\b.txt" && x["offset"].as_u64().unwrap() > 0),
        "host reads of the 200 KiB file"
    );
    // The cancelled scan.
    assert_eq!(res["cancel_answer"]["ok"], true, "{}", res["cancel_answer"]);
    let cancelled = &res["cancelled_scan"];
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    let seen = cancelled["counters"]["files_seen"].as_u64().unwrap();
    assert!(0 < seen && seen < 300, "stopped in the middle: {cancelled}");
    let answers = res["cancelled_scan_answers"].as_array().unwrap();
    let progress: Vec<&Value> = answers
        .iter()
        .filter(|a| a.get("progress").is_some())
        .collect();
    assert!(
        !progress.is_empty(),
        "ScanProgress reached the control socket: {answers:?}"
    );
    let last = progress.last().unwrap()["progress"]["files_seen"]
        .as_u64()
        .unwrap();
    assert!(
        last > 0 && last <= seen,
        "progress counts the walk: {answers:?}"
    );
    // No OnDemand event after the cancel: the guest sent at most what it
    // had in flight then (the scan's max_in_flight is 4).
    let lines = r.lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("host scan") && l.contains("Cancelled")),
        "{lines:?}"
    );
}

#[test]
fn actions_policy_changes_exclusions_and_fail_mode_and_reports_pinned_fields() {
    let Some(r) = run_actions("actions-policy") else {
        return;
    };
    assert_actions_clean(&r);
    let res = &r.json["results"];
    assert_eq!(res["before"], false, "EICAR denied before the policy");
    assert_eq!(res["policy_set"]["ok"], true, "{}", res["policy_set"]);
    let shown = &res["policy_show"];
    let gp = &shown["guests"][0]["policy"];
    assert_eq!(gp["status"], "done", "{shown}");
    assert_eq!(gp["in_effect"], shown["version"], "{shown}");
    assert_eq!(
        gp["pinned"],
        serde_json::json!(["max_scan_size"]),
        "{shown}"
    );
    assert_eq!(
        res["excluded_after"], true,
        "the new exclusion lets the file open"
    );
    assert_eq!(
        res["not_excluded_after"], false,
        "other EICAR files still denied"
    );
    assert_eq!(
        res["excluded_image"], true,
        "the same file opened by the excluded process image (backup.exe)"
    );
    // Health reached the scanner, with the policy in effect.
    // The first Health (right after the handshake) predates the policy;
    // the next one, on change but not within 10 s of the last, has it.
    let soon = guest_of(&res["guests_soon"]);
    assert!(
        soon["health"].is_object(),
        "Health after the handshake: {soon}"
    );
    assert_eq!(soon["health"]["sessions"], 1, "{soon}");
    assert!(soon["policy_version"].is_null(), "not yet reported: {soon}");
    let g = guest_of(&res["guests"]);
    let h = &g["health"];
    assert_eq!(g["policy_version"], shown["version"], "{g}");
    assert_eq!(h["fail_mode"], "closed", "{g}");
    assert_eq!(h["on_access"], true, "{g}");
    assert_eq!(h["denied"], 2, "two EICAR opens denied: {g}");
    assert!(h["events_sent"].as_u64().unwrap() >= 2, "{g}");
    // Fail mode closed and a 500 ms deadline: the stalled host's open is denied at 500 ms.
    let stalled = &res["stalled_open"];
    assert_eq!(stalled["allowed"], false, "{stalled}");
    let ms = stalled["ms"].as_f64().unwrap();
    assert!(
        (450.0..1500.0).contains(&ms),
        "decided at the policy's deadline: {ms}"
    );
    // Health's `denied` counts host verdicts only: the fail-closed denial
    // is a fail decision.
    let after = guest_of(&res["guests_after_stall"]);
    let h2 = &after["health"];
    assert_eq!(h2["denied"], 2, "{after}");
    assert!(
        h2["fail_decisions"].as_u64().unwrap() > h["fail_decisions"].as_u64().unwrap(),
        "{after}"
    );
}

/// "Restore a false positive" on Windows, from the host alone: a file that
/// a (too broad) MD5 signature flags is denied and quarantined
/// automatically (the host deletes it on the guest); a restore onto a file
/// an admin put there answers `changed` and keeps the admin's file; the
/// restore to its own path answers `done` with the identical bytes,
/// written in order into a temporary file of the same directory (25
/// chunks onto a slow disk: the driver holds at most two of them, then
/// its session holds one and its decoder more, then the socket's bytes
/// wait unreceived) and renamed without replacing; an open during the restore is
/// answered; a restore through a junction is refused with
/// `STATUS_STOPPED_ON_SYMLINK` and writes nothing where the junction
/// leads; a missing directory answers `not-found`. No temporary file,
/// open file, reference or push lock is left.
#[test]
fn actions_restore_writes_a_quarantined_file_back_only_where_nothing_is() {
    use md5::{Digest, Md5};
    use thinagent_scanner::remediation::{RemediationAction, RemediationRule};
    let flagged = pattern(100_001);
    let digest: String = Md5::digest(&flagged)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let Some(r) = run_configured("actions-restore", true, true, |c, state| {
        let sigs = state.join("sigs");
        std::fs::create_dir(&sigs).unwrap();
        std::fs::write(
            sigs.join("fp.hdb"),
            format!("{digest}:{}:Test-FalsePositive\n", flagged.len()),
        )
        .unwrap();
        c.signatures = vec![sigs];
        c.quarantine.dir = Some(state.join("quarantine"));
        c.remediation.rules = vec![RemediationRule {
            threat: "*".into(),
            action: RemediationAction::Quarantine,
        }];
    }) else {
        return;
    };
    assert_actions_clean(&r);
    let res = &r.json["results"];
    let entry = &res["listed"]["entries"][0];
    assert_eq!(entry["threat"], "Test-FalsePositive", "{}", res["listed"]);
    assert_eq!(entry["size"], flagged.len(), "{}", res["listed"]);
    assert_eq!(
        res["removed"], true,
        "quarantined, then deleted on the guest"
    );
    let restore = &res["restore"];
    assert_eq!(
        restore["onto_replacement"]["status"], "changed",
        "{restore}"
    );
    assert_eq!(res["replacement_kept"], true);
    assert_eq!(res["temp_after_changed"], serde_json::json!([]));
    assert_eq!(restore["done"]["status"], "done", "{restore}");
    assert_eq!(restore["done"]["ok"], true, "{restore}");
    assert_eq!(res["restored_identical"], true, "the identical bytes");
    let writes: Vec<(u64, u64)> = res["restore_writes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w[0].as_u64().unwrap(), w[1].as_u64().unwrap()))
        .collect();
    let expected: Vec<(u64, u64)> = (0..flagged.len() as u64)
        .step_by(4096)
        .map(|at| (at, (flagged.len() as u64 - at).min(4096)))
        .collect();
    assert_eq!(writes, expected, "every chunk once, in order");
    assert!(
        r.has_line("restore data waits for room"),
        "the worker held received bytes back (no receive posted)"
    );
    assert_eq!(res["temp_after_done"], serde_json::json!([]));
    assert_eq!(
        res["open_during_restore"],
        serde_json::json!({"done": true, "allowed": true}),
        "on-access opens are judged while a restore runs"
    );
    let junction = &restore["through_junction"];
    assert_eq!(junction["status"], "failed", "{junction}");
    assert!(
        junction["detail"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("8000002d"),
        "STATUS_STOPPED_ON_SYMLINK: {junction}"
    );
    assert_eq!(res["written_through_junction"], serde_json::json!([]));
    assert_eq!(
        restore["missing_directory"]["status"], "not-found",
        "{restore}"
    );
    assert_eq!(restore["drive_letter"]["status"], "done", "{restore}");
    assert_eq!(res["drive_letter_identical"], true, "restored --to C:\\...");
    // The rename: relative to the directory's handle, never replacing.
    let renames: Vec<&Value> = r.json["set_infos"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["class"] == 10)
        .collect();
    assert!(renames.iter().all(|s| s["replace"] == false), "{renames:?}");
    assert!(
        renames
            .iter()
            .any(|s| s["status"] == 0 && s["target"] == "\\Users\\Public\\tool.exe"),
        "{renames:?}"
    );
    assert_eq!(
        r.json["flt_flushes"].as_array().unwrap().len(),
        2,
        "each done restore flushed once, before its rename"
    );
    // The target's directory was walked one component at a time.
    let opens = r.json["own_opens"].as_array().unwrap();
    assert!(
        opens.iter().any(|o| o["relative"] == true
            && o["path"] == "\\Device\\HarddiskVolume3\\Users\\Link"
            && o["status"] == 0),
        "the junction itself was opened, not followed: {opens:?}"
    );
    let g = guest_of(&res["guests_after"]);
    assert_eq!(
        g["actions"],
        serde_json::json!(["remediate", "scan-tree", "policy", "restore"]),
        "{g}"
    );
    for o in opens {
        assert!(!o["thread"].as_str().unwrap_or("").contains("link"), "{o}");
    }
}
