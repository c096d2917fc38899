//! The admin control socket (issue 14) against the real service and a
//! guest built on the real `thinagent_guest::Session` that takes host
//! actions: `guests` shows the guest and its detection, `remediate` reaches
//! the guest with the judged identity and returns its answer, `scan` runs a
//! tree scan through the guest's `OnDemand` events and streams its
//! progress, and what cannot be done is refused with a reason.
#![cfg(unix)]

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{EICAR, Running};
use thinagent_guest::{FailMode, Instant as GuestInstant, Session, SessionConfig, SessionEvent};
use thinagent_protocol::{
    ActionResult, ActionStatus, AgentVersion, Capabilities, CreateDisposition, EventKind,
    FileEvent, FileIdentity, FilePath, InlineContent, Message, OsKind, ScanCounters, ScanDone,
    ScanStatus,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};

type GuestSession = Session<16, 256, 4>;

fn identity(n: u64, size: usize) -> FileIdentity {
    let mut file_id = [0u8; 16];
    file_id[0] = n as u8;
    FileIdentity {
        volume_serial: 3,
        file_id,
        size: size as u64,
        last_write_time: 133_000_000_000_000_000 + n,
    }
}

fn event<'a>(kind: EventKind, path: &'a str, n: u64, content: &'a [u8]) -> FileEvent<'a> {
    let on_demand = kind == EventKind::OnDemand;
    FileEvent {
        kind,
        process_id: if on_demand { 0 } else { 77 },
        desired_access: if on_demand { 0 } else { 1 },
        create_disposition: CreateDisposition::Open,
        file: identity(n, content.len()),
        path: FilePath::Utf8(path),
        content: InlineContent {
            bytes: content,
            whole_file: true,
        },
    }
}

/// What the test guest saw of the host's requests.
#[derive(Debug, Default)]
struct Seen {
    remediations: Vec<(String, FileIdentity)>,
    /// (version, fields bits, exclusions as text) of each Policy.
    policies: Vec<(u64, u32, Vec<String>)>,
    scans: Vec<String>,
    denied: Vec<String>,
}

/// A guest that opens `/srv/eicar.com` (denied), then answers every
/// `Remediate` `Done` and runs every `ScanTree` over three files.
async fn guest(url: String, seen: Arc<Mutex<Seen>>) {
    let addr = url.trim_start_matches("tcp://").to_owned();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let caps = Capabilities(
        Capabilities::READ_CONTENT.0
            | Capabilities::INLINE_CONTENT.0
            | Capabilities::REMEDIATE.0
            | Capabilities::SCAN_TREE.0
            | Capabilities::POLICY.0,
    );
    let config = SessionConfig {
        query_timeout: Duration::from_secs(5),
        fail_mode: FailMode::Open,
        os: OsKind::Linux,
        agent_version: AgentVersion {
            major: 1,
            minor: 2,
            patch: 3,
        },
        capabilities: caps,
        guest_name: "web-01",
    };
    let mut s = Box::new(GuestSession::new(&config));
    let t0 = std::time::Instant::now();
    let now = || GuestInstant::from_millis(t0.elapsed().as_millis() as u64);
    s.start(now());
    let mut rbuf = vec![0u8; 70_000];
    let mut tbuf = vec![0u8; 70_000];
    // The running scan: (id, its queries, counters).
    let mut scan: Option<(u64, Vec<u64>, ScanCounters)> = None;
    loop {
        while let Some(ev) = s.poll_event() {
            match ev {
                SessionEvent::Connected { version } => {
                    assert_eq!(version, 2);
                    assert!(s.send_health(&thinagent_protocol::Health {
                        policy_version: 0,
                        state: thinagent_protocol::HealthState(
                            thinagent_protocol::HealthState::ON_ACCESS.0
                                | thinagent_protocol::HealthState::CACHE.0
                        ),
                        fail_mode: thinagent_protocol::FailMode::Closed,
                        uptime_ms: 61_000,
                        events_sent: 17,
                        cache_hits: 5,
                        denied: 2,
                        fail_decisions: 1,
                        sessions: 1,
                    }));
                    s.submit(&event(EventKind::Open, "/srv/eicar.com", 1, EICAR), now())
                        .unwrap();
                }
                SessionEvent::Verdict(v) => {
                    if !v.allows() {
                        seen.lock()
                            .unwrap()
                            .denied
                            .push(v.threat.as_str().to_owned());
                    }
                    if let Some((id, queries, counters)) = scan.as_mut()
                        && let Some(i) = queries.iter().position(|q| *q == v.query)
                    {
                        queries.remove(i);
                        counters.files_scanned += 1;
                        if !v.allows() {
                            counters.files_denied += 1;
                        }
                        let id = *id;
                        assert!(s.scan_progress(id, *counters));
                        if queries.is_empty() {
                            let done = ScanDone {
                                counters: *counters,
                                status: ScanStatus::Completed,
                                error: None,
                            };
                            s.scan_done(id, done).unwrap();
                            scan = None;
                        }
                    }
                }
                SessionEvent::HostRequest => {
                    while let Some(req) = s.host_request() {
                        let id = req.id;
                        match req.message {
                            Message::Remediate(r) => {
                                let FilePath::Utf8(p) = r.path else { panic!() };
                                seen.lock()
                                    .unwrap()
                                    .remediations
                                    .push((p.to_owned(), r.file));
                                s.pop_host_request();
                                s.complete_action(id, ActionResult::status(ActionStatus::Done))
                                    .unwrap();
                            }
                            Message::ScanTree(t) => {
                                let FilePath::Utf8(root) = t.root else {
                                    panic!()
                                };
                                seen.lock().unwrap().scans.push(root.to_owned());
                                let max_in_flight = t.max_in_flight;
                                s.pop_host_request();
                                let files: [(&str, &[u8]); 3] = [
                                    ("/data/a.txt", b"hello"),
                                    ("/data/b.txt", b"world"),
                                    ("/data/sub/eicar.txt", EICAR),
                                ];
                                assert!(s.on_demand_capacity(max_in_flight) >= 3);
                                let mut queries = Vec::new();
                                let mut counters = ScanCounters::default();
                                for (n, (path, content)) in files.iter().enumerate() {
                                    let e =
                                        event(EventKind::OnDemand, path, 10 + n as u64, content);
                                    queries.push(s.submit(&e, now()).unwrap());
                                    counters.files_seen += 1;
                                    counters.bytes += content.len() as u64;
                                }
                                scan = Some((id, queries, counters));
                            }
                            Message::Policy(p) => {
                                let exclusions = p
                                    .exclusions
                                    .map(|e| {
                                        e.iter()
                                            .map(|x| format!("{:?}:{:?}", x.kind, x.value))
                                            .collect()
                                    })
                                    .unwrap_or_default();
                                let fields = p.fields();
                                seen.lock()
                                    .unwrap()
                                    .policies
                                    .push((p.version, fields.0, exclusions));
                                let version = p.version;
                                s.pop_host_request();
                                // This guest's admin pinned max_scan_size.
                                let pinned =
                                    fields.0 & thinagent_protocol::PolicyFields::MAX_SCAN_SIZE.0;
                                let result = ActionResult {
                                    value: version,
                                    pinned,
                                    ..ActionResult::status(ActionStatus::Done)
                                };
                                s.complete_action(id, result).unwrap();
                            }
                            other => panic!("unexpected host request {other:?}"),
                        }
                    }
                }
                SessionEvent::ScanCancelled { id } => {
                    let counters = scan.take().map(|(_, _, c)| c).unwrap_or_default();
                    s.scan_done(
                        id,
                        ScanDone {
                            counters,
                            status: ScanStatus::Cancelled,
                            error: None,
                        },
                    )
                    .unwrap();
                }
                SessionEvent::ReadJob { .. } => panic!("everything was sent inline"),
                SessionEvent::Closed { .. } => return,
            }
        }
        while let Some(n) = s.poll_transmit(&mut tbuf) {
            stream.write_all(&tbuf[..n]).await.unwrap();
        }
        let wait = s
            .next_deadline()
            .map_or(Duration::from_millis(200), |d| {
                Duration::from_millis(d.as_millis().saturating_sub(now().as_millis()))
            })
            .min(Duration::from_millis(200));
        match tokio::time::timeout(wait, stream.read(&mut rbuf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => s.receive(&rbuf[..n], now()),
            Err(_) => s.on_timeout(now()),
        }
    }
}

/// Sends one request line and returns every answer line up to the one
/// with `"ok"`.
async fn control(path: &std::path::Path, request: serde_json::Value) -> Vec<serde_json::Value> {
    let stream = UnixStream::connect(path).await.unwrap();
    let (rd, mut wr) = stream.into_split();
    wr.write_all(format!("{request}\n").as_bytes())
        .await
        .unwrap();
    let mut lines = BufReader::new(rd).lines();
    let mut out = Vec::new();
    while let Some(line) = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("the control socket answers")
        .unwrap()
    {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let last = v.get("ok").is_some();
        out.push(v);
        if last {
            break;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_remediate_and_scan_through_the_control_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let audit_file = dir.path().join("audit.jsonl");
    let events_file = dir.path().join("events.jsonl");
    let events: thinagent_scanner::config::EventsConfig = toml::from_str(&format!(
        "file = \"{}\"\nqueue_dir = \"{}\"",
        events_file.display(),
        dir.path().join("queue").display()
    ))
    .unwrap();
    let config = thinagent_scanner::config::Config {
        listen: vec!["tcp://127.0.0.1:0".into()],
        control_socket: Some(socket.clone()),
        audit_log: Some(audit_file.clone()),
        state_dir: Some(dir.path().join("state")),
        events,
        guest_policy: toml::from_str(
            r#"
            fail_mode = "closed"
            exclusions = [{ kind = "path-prefix", value = "/proc" }]
            "#,
        )
        .unwrap(),
        ..Default::default()
    };
    let running = Running::start(config.clone()).await;
    // Only the owner may talk to it.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let seen = Arc::new(Mutex::new(Seen::default()));
    let guest_task = tokio::spawn(guest(running.url("tcp").to_owned(), seen.clone()));

    // The guest's open of EICAR is denied and recorded as a detection.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let guests = loop {
        let out = control(&socket, serde_json::json!({"cmd": "guests"})).await;
        let guests = out[0]["guests"].as_array().unwrap().clone();
        if guests.first().is_some_and(|g| g["detections"] == 1) {
            break guests;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no detection: {out:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(guests.len(), 1);
    let g = &guests[0];
    assert_eq!(g["name"], "web-01");
    assert_eq!(g["os"], "linux");
    assert_eq!(g["agent_version"], "1.2.3");
    assert_eq!(g["protocol_version"], 2);
    assert_eq!(g["connected"], true);
    assert_eq!(
        g["actions"],
        serde_json::json!(["remediate", "scan-tree", "policy"])
    );
    // The configured policy went out after the handshake, version 1.
    assert_eq!(
        seen.lock().unwrap().policies,
        vec![(1, 0b101, vec![r#"PathPrefix:Utf8("/proc")"#.to_owned()])]
    );
    assert_eq!(g["policy"]["in_effect"], 1, "{g}");
    assert_eq!(g["policy"]["status"], "done");
    assert_eq!(
        g["last_detection"],
        "Eicar-Test-Signature at /srv/eicar.com"
    );
    let guest_id = g["identity"].as_str().unwrap().to_owned();

    // Remediation of the detected file, named by the guest's name: the
    // guest gets the path and the identity the host judged.
    let out = control(
        &socket,
        serde_json::json!({"cmd": "remediate", "guest": "web-01", "path": "/srv/eicar.com"}),
    )
    .await;
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0]["ok"], true, "{out:?}");
    assert_eq!(out[0]["status"], "done");
    assert_eq!(out[0]["threat"], "Eicar-Test-Signature");
    assert_eq!(
        seen.lock().unwrap().remediations,
        vec![("/srv/eicar.com".to_owned(), identity(1, EICAR.len()))]
    );

    // A file the scanner never denied cannot be remediated.
    let out = control(
        &socket,
        serde_json::json!({"cmd": "remediate", "guest": guest_id, "path": "/etc/passwd"}),
    )
    .await;
    assert_eq!(out[0]["ok"], false);
    assert!(
        out[0]["error"].as_str().unwrap().contains("no detection"),
        "{out:?}"
    );
    // Nor on a guest that does not exist.
    let out = control(
        &socket,
        serde_json::json!({"cmd": "remediate", "guest": "nobody", "path": "/x"}),
    )
    .await;
    assert!(
        out[0]["error"].as_str().unwrap().contains("no guest"),
        "{out:?}"
    );

    // An on-demand scan, waited for: started, progress, then the summary.
    let out = control(
        &socket,
        serde_json::json!({"cmd": "scan", "guest": guest_id, "path": "/data", "wait": true}),
    )
    .await;
    assert!(out[0]["scan_id"].as_u64().is_some(), "{out:?}");
    let last = out.last().unwrap();
    assert_eq!(last["ok"], true, "{out:?}");
    assert_eq!(last["status"], "completed");
    assert_eq!(last["counters"]["files_seen"], 3);
    assert_eq!(last["counters"]["files_scanned"], 3);
    assert_eq!(last["counters"]["files_denied"], 1);
    assert!(out.iter().any(|l| l.get("progress").is_some()), "{out:?}");
    assert_eq!(seen.lock().unwrap().scans, vec!["/data".to_owned()]);
    // The on-demand detection is recorded too.
    let out = control(&socket, serde_json::json!({"cmd": "guests"})).await;
    assert_eq!(out[0]["guests"][0]["detections"], 2);
    assert_eq!(
        out[0]["guests"][0]["last_detection"],
        "Eicar-Test-Signature at /data/sub/eicar.txt"
    );

    // A policy change reaches the connected guest at once, as version 2;
    // the field its admin pinned is reported.
    let out = control(
        &socket,
        serde_json::json!({"cmd": "policy-set", "policy": {"max_scan_size": 1000, "fail_mode": "open"}}),
    )
    .await;
    assert_eq!(out[0]["ok"], true, "{out:?}");
    assert_eq!(out[0]["version"], 2);
    assert_eq!(out[0]["sent_to"], serde_json::json!([guest_id]));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let shown = loop {
        let out = control(&socket, serde_json::json!({"cmd": "policy-show"})).await;
        if out[0]["guests"][0]["policy"]["in_effect"] == 2 {
            break out[0].clone();
        }
        assert!(std::time::Instant::now() < deadline, "{out:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(shown["version"], 2);
    assert_eq!(shown["policy"]["max_scan_size"], 1000);
    assert_eq!(shown["policy"]["exclusions"], serde_json::Value::Null);
    assert_eq!(
        shown["guests"][0]["policy"]["pinned"],
        serde_json::json!(["max_scan_size"])
    );
    assert_eq!(seen.lock().unwrap().policies[1].0, 2);
    // An invalid policy is refused with the rule it breaks.
    let out = control(
        &socket,
        serde_json::json!({"cmd": "policy-set", "policy": {"debug_level": 9}}),
    )
    .await;
    assert!(
        out[0]["error"].as_str().unwrap().contains("0..=4"),
        "{out:?}"
    );

    // `/metrics` labels by guest: the host's counts of verdicts,
    // detections and host actions, and the guest's Health report.
    let text = running.metrics();
    let series = |name: &str, labels: &str| {
        common::metric(
            &text,
            &format!("thinagent_scanner_{name}{{guest=\"{guest_id}\"{labels}}}"),
        )
    };
    assert_eq!(series("guest_connected", ",name=\"web-01\""), 1.0, "{text}");
    // The open of eicar.com and the scan's eicar.txt.
    assert_eq!(
        series("guest_verdicts_total", ",decision=\"deny\""),
        2.0,
        "{text}"
    );
    assert_eq!(
        series("guest_verdicts_total", ",decision=\"allow\""),
        2.0,
        "{text}"
    );
    assert_eq!(series("guest_detections_total", ""), 2.0, "{text}");
    let action = |a: &str, st: &str| {
        series(
            "guest_host_actions_total",
            &format!(",action=\"{a}\",status=\"{st}\""),
        )
    };
    assert_eq!(action("remediate", "done"), 1.0, "{text}");
    assert_eq!(action("scan_tree", "completed"), 1.0, "{text}");
    assert_eq!(action("policy", "done"), 2.0, "{text}");
    assert_eq!(series("guest_reported_on_access", ""), 1.0, "{text}");
    assert_eq!(
        series("guest_reported_fail_mode", ",mode=\"closed\""),
        1.0,
        "{text}"
    );
    assert_eq!(
        series("guest_reported_events_sent_total", ""),
        17.0,
        "{text}"
    );
    assert_eq!(
        series("guest_reported_fail_decisions_total", ""),
        1.0,
        "{text}"
    );
    assert!(series("guest_last_seen_seconds", "") > 1.7e9, "{text}");

    // Bad requests get a reason, and the socket goes on.
    let out = control(&socket, serde_json::json!({"cmd": "reboot"})).await;
    assert!(
        out[0]["error"].as_str().unwrap().contains("bad request"),
        "{out:?}"
    );

    // A guest that goes away stays listed, no longer connected, and takes
    // no more actions.
    guest_task.abort();
    let _ = guest_task.await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = control(&socket, serde_json::json!({"cmd": "guests"})).await;
        if out[0]["guests"][0]["connected"] == false {
            assert_eq!(out[0]["guests"][0]["identity"], guest_id.as_str());
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still connected: {out:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = running.metrics();
    assert_eq!(
        common::metric(
            &text,
            &format!("thinagent_scanner_guest_connected{{guest=\"{guest_id}\",name=\"web-01\"}}")
        ),
        0.0,
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "thinagent_scanner_guest_detections_total{{guest=\"{guest_id}\"}} 2"
        )),
        "a guest that left keeps its series: {text}"
    );
    let out = control(
        &socket,
        serde_json::json!({"cmd": "scan", "guest": "web-01", "path": "/data"}),
    )
    .await;
    assert!(
        out[0]["error"].as_str().unwrap().contains("not connected"),
        "{out:?}"
    );
    running.shutdown().await;

    // The audit log has a line for each host action, by origin, and for
    // the guest's session start and end, beside the verdict lines.
    let audit: Vec<serde_json::Value> = std::fs::read_to_string(&audit_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |record: &str| -> Vec<&serde_json::Value> {
        audit.iter().filter(|l| l["record"] == record).collect()
    };
    let actions = of("host_action");
    let summary: Vec<(String, String, String)> = actions
        .iter()
        .map(|a| {
            (
                a["action"].as_str().unwrap().to_owned(),
                a["origin"].as_str().unwrap().to_owned(),
                a["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want = |a: &str, o: &str, st: &str| (a.to_owned(), o.to_owned(), st.to_owned());
    assert_eq!(
        summary,
        [
            want("policy", "policy", "done"),
            want("remediate", "admin", "done"),
            want("scan_tree", "admin", "completed"),
            want("policy", "policy", "done"),
        ],
        "{audit:#?}"
    );
    assert_eq!(actions[0]["policy_version"], 1);
    assert_eq!(actions[1]["operation"], "delete");
    assert_eq!(actions[1]["path"], "/srv/eicar.com");
    assert_eq!(actions[1]["threat"], "Eicar-Test-Signature");
    assert_eq!(
        actions[1]["peer"],
        guest_id
            .replace("tcp://", "tcp:")
            .rsplit_once(':')
            .unwrap()
            .0
    );
    assert_eq!(actions[2]["path"], "/data");
    assert_eq!(actions[2]["counters"]["files_denied"], 1);
    assert_eq!(actions[3]["policy_version"], 2);
    let states: Vec<&str> = of("guest")
        .iter()
        .map(|l| l["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["connected", "disconnected"]);
    assert_eq!(of("guest")[0]["agent_version"], "1.2.3");
    // Verdict lines keep their shape (no `record`).
    assert_eq!(
        audit.iter().filter(|l| l.get("verdict").is_some()).count(),
        4
    );
    // The admin's remediation and scan are events too.
    let events: Vec<serde_json::Value> = std::fs::read_to_string(&events_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let remediation = events
        .iter()
        .find(|e| e["type"] == "remediation")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(remediation["origin"], "admin");
    assert_eq!(remediation["status"], "done");
    assert_eq!(remediation["threat"], "Eicar-Test-Signature");
    let scan = events
        .iter()
        .find(|e| e["type"] == "scan_finished")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(scan["status"], "completed");
    assert_eq!(scan["path"]["display"], "/data");
    assert_eq!(scan["counters"]["files_scanned"], 3);

    // A restart with the same config and state_dir: the guest is still
    // listed (not connected) with its details, Health and detections, and
    // the policy set at run time is still the one in effect.
    let running = Running::start(config).await;
    let out = control(&socket, serde_json::json!({"cmd": "guests"})).await;
    let g = &out[0]["guests"][0];
    assert_eq!(g["identity"], guest_id.as_str(), "{out:?}");
    assert_eq!(g["name"], "web-01");
    assert_eq!(g["connected"], false);
    assert_eq!(g["agent_version"], "1.2.3");
    assert_eq!(g["detections"], 2);
    assert_eq!(g["health"]["events_sent"], 17);
    assert_eq!(g["policy"]["in_effect"], 2);
    assert_eq!(g["policy"]["pinned"], serde_json::json!(["max_scan_size"]));
    let out = control(&socket, serde_json::json!({"cmd": "policy-show"})).await;
    assert_eq!(out[0]["version"], 2, "{out:?}");
    assert_eq!(out[0]["policy"]["max_scan_size"], 1000);
    // A detection of the last run can still be remediated once the guest
    // is back (the guest checks the identity); until then it is refused.
    let out = control(
        &socket,
        serde_json::json!({"cmd": "remediate", "guest": "web-01", "path": "/data/sub/eicar.txt"}),
    )
    .await;
    assert!(
        out[0]["error"].as_str().unwrap().contains("not connected"),
        "{out:?}"
    );
    let text = running.metrics();
    assert!(
        text.contains(&format!(
            "thinagent_scanner_guest_connected{{guest=\"{guest_id}\",name=\"web-01\"}} 0"
        )),
        "{text}"
    );
    running.shutdown().await;
}

/// A TCP listener, a quarantine store (`dir/quarantine`), an event file
/// (`dir/events.jsonl`) with its queue (`dir/queue`), and `more` TOML.
fn store_and_events_config(dir: &std::path::Path, more: &str) -> thinagent_scanner::config::Config {
    toml::from_str(&format!(
        r#"
        listen = ["tcp://127.0.0.1:0"]
        [quarantine]
        dir = "{q}"
        [events]
        file = "{e}"
        queue_dir = "{d}"
        {more}
        "#,
        q = dir.join("quarantine").display(),
        e = dir.join("events.jsonl").display(),
        d = dir.join("queue").display(),
    ))
    .unwrap()
}

/// `[remediation]` with a quarantine rule: the denied EICAR's bytes are in
/// the quarantine store before the guest is asked to delete it, and the
/// outcome is an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detection_is_quarantined_then_deleted_automatically() {
    let dir = tempfile::tempdir().unwrap();
    let events_file = dir.path().join("events.jsonl");
    let mut config = store_and_events_config(
        dir.path(),
        r#"
        [remediation]
        rules = [{ threat = "Eicar-*", action = "quarantine" }]
        "#,
    );
    config.validate().unwrap();
    config.control_socket = None;
    let running = Running::start(config).await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let guest_task = tokio::spawn(guest(running.url("tcp").to_owned(), seen.clone()));

    // The guest is asked to delete the file, with the identity judged.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().remediations.is_empty() {
        assert!(std::time::Instant::now() < deadline, "no remediation");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        seen.lock().unwrap().remediations,
        vec![("/srv/eicar.com".to_owned(), identity(1, EICAR.len()))]
    );
    // Its bytes were stored first.
    let store = running
        .handle
        .quarantine()
        .expect("store configured")
        .clone();
    let (id, bytes) = {
        let store = store.lock().unwrap();
        let entries: Vec<_> = store.list().cloned().collect();
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries[0].threat, "Eicar-Test-Signature");
        (entries[0].id.clone(), store.read(&entries[0].id).unwrap())
    };
    assert_eq!(bytes, EICAR);
    // And the outcome is an event naming the quarantine entry.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let event = loop {
        let text = std::fs::read_to_string(&events_file).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(r#""type":"remediation""#)) {
            break serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no remediation event: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(event["status"], "done", "{event}");
    assert_eq!(event["action"], "quarantine");
    assert_eq!(event["origin"], "automatic");
    assert_eq!(event["quarantine_id"], id.as_str());
    assert_eq!(event["threat"], "Eicar-Test-Signature");
    assert_eq!(event["path"]["display"], "/srv/eicar.com");
    guest_task.abort();
    running.shutdown().await;
}

/// A service stopped in a process can be started again at once with the
/// same event queue and quarantine store, even while an admin's control
/// connection is still open: `run` returns only when nothing holds their
/// locks any more (the control clients are ended and awaited, aborted
/// sessions and tasks are awaited).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_service_starts_again_at_once_while_a_control_client_is_connected() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let mut config = store_and_events_config(dir.path(), "");
    config.control_socket = Some(socket.clone());
    for round in 0..3 {
        let running = Running::start(config.clone()).await;
        // An admin's connection, left open across the stop.
        let mut idle = UnixStream::connect(&socket).await.unwrap();
        let out = control(&socket, serde_json::json!({"cmd": "guests"})).await;
        assert_eq!(out[0]["ok"], true, "round {round}: {out:?}");
        running.shutdown().await;
        // The service closed it.
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
            .await
            .expect("the control connection is closed at the stop")
            .unwrap_or(0);
        assert_eq!(n, 0, "round {round}");
    }
}
