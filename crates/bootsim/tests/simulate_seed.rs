//! The seed's two machines in virtual time with the real guest Connector:
//! VMware's blocking agent fails with the product's class filter and
//! connects without it; ThinAgent's deferred retry connects on both.

use thinagent_bootsim::model::seed;
use thinagent_bootsim::needs::{AgentStyle, NeedsTable};
use thinagent_bootsim::registry::RegValue;
use thinagent_bootsim::simulate::{Outcome, SimulateOptions, Simulation, simulate_control_set};
use thinagent_guest::{NtStatus, parse_line};

fn run(product_filter: bool, agent: &str) -> Simulation {
    simulate_control_set(
        &seed::machine(product_filter),
        &NeedsTable::builtin(),
        &SimulateOptions {
            agent: agent.into(),
            debug_level: 4,
        },
    )
    .unwrap()
}

fn lines(s: &Simulation) -> Vec<&str> {
    s.timeline.iter().map(|l| l.line.as_str()).collect()
}

#[test]
fn vsepflt_fails_on_the_incident_machine_and_holds_back_the_filter() {
    let s = run(true, "vsepflt");
    assert_eq!(s.style, AgentStyle::Blocking);
    let Outcome::Failed {
        attempts,
        last_status,
        at_ms,
    } = s.outcome
    else {
        panic!("expected failure: {:#?}", lines(&s));
    };
    assert_eq!(attempts, 100);
    assert_eq!(NtStatus(last_status), NtStatus::STATUS_DEVICE_BUSY);
    // 99 delays of 1 s inside DriverEntry.
    let first = s
        .timeline
        .iter()
        .find(|l| l.line.contains("capture attempt 1 "))
        .unwrap()
        .t_ms;
    assert_eq!(at_ms - first, 99_000);
    // The blocking DriverEntry holds back the class filter: vmci's device
    // starts only after vsepflt gave up.
    let fail_t = s
        .timeline
        .iter()
        .find(|l| {
            l.line
                .starts_with("AUDIT: DriverEntry : vfileFilter load failed")
        })
        .expect("audit line")
        .t_ms;
    let vmci_dev_t = s
        .timeline
        .iter()
        .find(|l| l.line.contains(r"\Device\VMCIHostDev created by vmci"))
        .expect("vmci device eventually created")
        .t_ms;
    assert!(vmci_dev_t > fail_t);
    assert!(
        lines(&s).contains(&"ERROR: VSockLayer_Init : VMCISock_WskCaptureProviderNPI: 0x80000011")
    );
    for l in &s.timeline {
        assert!(parse_line(&l.line).is_some(), "not seed-shaped: {}", l.line);
    }
    assert!(s.timeline.windows(2).all(|w| w[0].t_ms <= w[1].t_ms));
}

#[test]
fn vsepflt_connects_on_the_clean_machine() {
    let s = run(false, "vsepflt");
    assert_eq!(s.outcome_word(), "connected", "{:#?}", lines(&s));
    assert_eq!(s.attempts(), 1);
    assert!(s.summary().starts_with("vsepflt connected at t="));
}

#[test]
fn thinagent_connects_on_both_machines() {
    for product_filter in [true, false] {
        let s = run(product_filter, "thinagent");
        assert_eq!(s.style, AgentStyle::DeferredRetry);
        assert_eq!(s.outcome_word(), "connected", "{:#?}", lines(&s));
        assert!(s.connected_at_ms().unwrap() < 5_000);
        // DriverEntry itself succeeded.
        assert!(
            lines(&s)
                .iter()
                .any(|l| l.starts_with("AUDIT: DriverEntry : ThinAgent loaded")),
            "{:#?}",
            lines(&s)
        );
    }
    let s = run(true, "thinagent");
    assert!(
        s.attempts() >= 2,
        "the first attempt is busy on the incident machine"
    );
    let busy = lines(&s)
        .iter()
        .filter(|l| l.contains("capture attempt") && l.ends_with(": 0x80000011"))
        .count();
    assert!(busy >= 1);
}

#[test]
fn thinagent_connects_from_the_worker_when_the_boot_is_slow() {
    // A slow boot: every driver takes 200 ms and a late boot driver takes
    // 5 s, so vmci's device appears after the worker's first delay and well
    // before the boot-driver reinitialisation: the worker thread connects.
    let mut root = seed::machine(true);
    for (n, v) in [("Type", 1), ("Start", 0)] {
        root.key_mut_or_create(r"Services\slowvid")
            .set_value(n, RegValue::Dword(v));
    }
    root.key_mut_or_create(r"Services\slowvid")
        .set_value("Group", RegValue::Sz("Video".into()));
    let extra = "[timing]\ndriver_init_ms = 200\n[timing.per_service]\nslowvid = 5000\n";
    let needs = NeedsTable::builtin_extended(extra, "slow.toml").unwrap();
    let s = simulate_control_set(&root, &needs, &SimulateOptions::default()).unwrap();
    assert_eq!(s.outcome_word(), "connected", "{:#?}", lines(&s));
    let connected = s
        .timeline
        .iter()
        .find(|l| l.line.contains("provider captured"))
        .unwrap();
    assert!(
        !connected.line.contains("reinitialisation"),
        "{}",
        connected.line
    );
    let boot_done = s
        .timeline
        .iter()
        .find(|l| l.line.contains("boot drivers initialised"))
        .unwrap();
    assert!(connected.t_ms < boot_done.t_ms);
    assert!(s.attempts() >= 2);
}

#[test]
fn a_quiet_debug_level_keeps_only_audit_and_errors() {
    let s = simulate_control_set(
        &seed::machine(true),
        &NeedsTable::builtin(),
        &SimulateOptions {
            agent: "vsepflt".into(),
            debug_level: 1,
        },
    )
    .unwrap();
    assert!(
        s.timeline
            .iter()
            .all(|l| l.line.starts_with("AUDIT") || l.line.starts_with("ERROR")),
        "{:#?}",
        lines(&s)
    );
    assert_eq!(s.outcome_word(), "failed");
}
