//! `thinagent-diag demo`: the guest core's capture loop against a simulated boot.
//!
//! The simulated boot has the two drivers of the incident: `\Driver\vsock`,
//! which owns `\Device\vmci` and answers the capture IOCTL, and `\Driver\vmci`,
//! whose device (`\Device\VMCIHostDev`) vsock needs before it can hand out the
//! provider. Until vsock has created its device an attempt fails with
//! STATUS_OBJECT_NAME_NOT_FOUND; until vmci's device has started it fails with
//! STATUS_DEVICE_BUSY; after that it succeeds. Time is virtual: the real
//! [`Connector`] decides every retry and delay, and a 100 s boot runs at once.

use core::time::Duration;
use std::fmt::Write as _;

use thinagent_guest::log::{LevelFilter, LogRecord, routine};
use thinagent_guest::{
    AttemptReport, Connector, ConnectorAction, Instant, Level, NtStatus, Params,
};

/// When the simulated drivers become usable, in virtual time since the
/// capture loop started. `None`: never (the incident's machine).
#[derive(Clone, Copy, Debug)]
pub struct SimulatedBoot {
    /// `\Device\vmci` (owned by `\Driver\vsock`) exists from this time on.
    pub vsock_device_after: Option<Duration>,
    /// `\Device\VMCIHostDev` (owned by `\Driver\vmci`) has started from this time on.
    pub vmci_device_after: Option<Duration>,
}

impl SimulatedBoot {
    /// Status of one capture IOCTL sent at `t`.
    pub fn capture_status(&self, t: Duration) -> NtStatus {
        let ready = |after: Option<Duration>| after.is_some_and(|a| t >= a);
        if !ready(self.vsock_device_after) {
            NtStatus::STATUS_OBJECT_NAME_NOT_FOUND
        } else if !ready(self.vmci_device_after) {
            NtStatus::STATUS_DEVICE_BUSY
        } else {
            NtStatus::STATUS_SUCCESS
        }
    }
}

/// What the demo produced: the log lines (seed shape) and whether capture succeeded.
#[derive(Debug)]
pub struct DemoOutcome {
    /// Lines, `LEVEL: Routine : message[: 0xSTATUS]`.
    pub lines: Vec<String>,
    /// The connector's final action.
    pub result: ConnectorAction,
}

/// Runs the capture loop of `params` against `boot`.
pub fn run(params: &Params, boot: SimulatedBoot) -> DemoOutcome {
    let filter: LevelFilter = params.level_filter();
    let mut lines = Vec::new();
    let mut emit = |r: &LogRecord<'_>| {
        if filter.enabled(r.level) {
            lines.push(r.to_string());
        }
    };
    params.dump(&mut emit);

    let mut connector = Connector::new(params.connector_config());
    let mut now = Duration::ZERO;
    let result = loop {
        let status = boot.capture_status(now);
        let report = AttemptReport::instant(status, Instant::ZERO + now);
        let action = connector.on_report(report);
        // The driver's line for this attempt, from the guest core.
        connector.log_line(&report, action).with_record(&mut emit);
        match action {
            ConnectorAction::RetryAfter(delay) => now += delay,
            ConnectorAction::Connected { .. } => break action,
            ConnectorAction::GiveUp { last_status, .. } => {
                emit(
                    &LogRecord::new(
                        Level::Audit,
                        routine::DRIVER_ENTRY,
                        format_args!("ThinAgent load failed"),
                    )
                    .with_status(last_status),
                );
                break action;
            }
        }
    };
    if matches!(result, ConnectorAction::Connected { .. }) {
        emit(
            &LogRecord::new(
                Level::Audit,
                routine::DRIVER_ENTRY,
                format_args!("ThinAgent loaded"),
            )
            .with_status(NtStatus::STATUS_SUCCESS),
        );
    }
    DemoOutcome { lines, result }
}

/// The demo's closing summary for a person (not a log line).
pub fn summary(outcome: &DemoOutcome) -> String {
    let mut s = String::new();
    let _ = write!(s, "result: {}", outcome.result);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use thinagent_guest::GiveUpReason;
    use thinagent_guest::log::parse_line;

    fn boot(vsock: u64, vmci: Option<u64>) -> SimulatedBoot {
        SimulatedBoot {
            vsock_device_after: Some(Duration::from_secs(vsock)),
            vmci_device_after: vmci.map(Duration::from_secs),
        }
    }

    fn debug_params() -> Params {
        let mut p = Params::default();
        p.apply("debugLevel", thinagent_guest::RegValue::Dword(4))
            .unwrap();
        p
    }

    #[test]
    fn busy_retries_then_success() {
        let out = run(&debug_params(), boot(0, Some(7)));
        assert_eq!(
            out.result,
            ConnectorAction::Connected {
                attempts: 8,
                waited: Duration::from_secs(7)
            }
        );
        let busy: Vec<_> = out
            .lines
            .iter()
            .filter(|l| l.starts_with("DEBUG: VsockCapture") && l.ends_with(": 0x80000011"))
            .collect();
        assert_eq!(busy.len(), 7, "{:#?}", out.lines);
        assert!(
            out.lines
                .iter()
                .any(|l| l == "DEBUG: ReadParams : umcMsgTimeoutMs: 2000")
        );
        assert_eq!(
            out.lines.last().unwrap(),
            "AUDIT: DriverEntry : ThinAgent loaded: 0x00000000"
        );
        for l in &out.lines {
            assert!(parse_line(l).is_some(), "not seed-shaped: {l}");
        }
    }

    #[test]
    fn name_not_found_before_vsock_then_busy() {
        let out = run(&debug_params(), boot(2, Some(4)));
        let statuses: Vec<_> = out
            .lines
            .iter()
            .filter(|l| l.contains("capture attempt"))
            .map(|l| parse_line(l).unwrap().status.unwrap())
            .collect();
        assert_eq!(
            statuses,
            [
                NtStatus::STATUS_OBJECT_NAME_NOT_FOUND,
                NtStatus::STATUS_OBJECT_NAME_NOT_FOUND,
                NtStatus::STATUS_DEVICE_BUSY,
                NtStatus::STATUS_DEVICE_BUSY
            ]
        );
    }

    #[test]
    fn incident_machine_gives_up_after_bounded_wait() {
        let out = run(&Params::default(), boot(0, None));
        match out.result {
            ConnectorAction::GiveUp {
                attempts,
                last_status,
                waited,
                reason,
            } => {
                assert_eq!(attempts, 100);
                assert_eq!(last_status, NtStatus::STATUS_DEVICE_BUSY);
                assert_eq!(waited, Duration::from_secs(99));
                assert_eq!(reason, GiveUpReason::AttemptsExhausted);
            }
            other => panic!("expected give-up, got {other:?}"),
        }
        assert_eq!(
            out.lines.last().unwrap(),
            "AUDIT: DriverEntry : ThinAgent load failed: 0x80000011"
        );
    }
}
