//! When a guest sends `Health` (`docs/protocol.md` §14.8), sans-IO: right
//! after each handshake, then whenever a value changed, at most every
//! [`HEALTH_MIN_INTERVAL_MS`]. `uptime_ms` always changes and does not
//! count as a change.

use core::time::Duration;

use thinagent_protocol::{HEALTH_MIN_INTERVAL_MS, Health};

use crate::time::Instant;

/// The pacing of one guest's `Health` reports.
#[derive(Debug, Clone, Copy, Default)]
pub struct HealthPacer {
    /// A handshake completed and no report went out since.
    due: bool,
    /// When the last report went out (or was tried).
    last_sent: Option<Instant>,
    /// What it said.
    last: Option<Health>,
}

fn same(a: &Health, b: &Health) -> bool {
    Health { uptime_ms: 0, ..*a } == Health { uptime_ms: 0, ..*b }
}

impl HealthPacer {
    /// Nothing sent yet, no session.
    #[must_use]
    pub const fn new() -> Self {
        HealthPacer {
            due: false,
            last_sent: None,
            last: None,
        }
    }

    /// A handshake completed: the next [`wants`](Self::wants) is `true`.
    pub fn connected(&mut self) {
        self.due = true;
    }

    /// Whether a report may be due at `now` (cheap: build the report only
    /// then, and ask [`should_send`](Self::should_send)).
    #[must_use]
    pub fn wants(&self, now: Instant) -> bool {
        if self.due {
            return true;
        }
        let interval = Duration::from_millis(u64::from(HEALTH_MIN_INTERVAL_MS));
        self.last_sent
            .is_some_and(|t| now.saturating_duration_since(t) >= interval)
    }

    /// Whether `h` should go out at `now`.
    #[must_use]
    pub fn should_send(&self, now: Instant, h: &Health) -> bool {
        self.wants(now) && (self.due || !self.last.as_ref().is_some_and(|l| same(l, h)))
    }

    /// A report was tried at `now`: `sent` is what went out (`None`: the
    /// session could not take it, e.g. a version-1 session). Either way the
    /// next try waits one interval unless a new handshake comes first.
    pub fn tried(&mut self, now: Instant, sent: Option<&Health>) {
        self.due = false;
        self.last_sent = Some(now);
        if let Some(h) = sent {
            self.last = Some(*h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use thinagent_protocol::{FailMode, HealthState};

    fn health(uptime_ms: u64, denied: u64) -> Health {
        Health {
            policy_version: 0,
            state: HealthState::ON_ACCESS,
            fail_mode: FailMode::Open,
            uptime_ms,
            events_sent: 0,
            cache_hits: 0,
            denied,
            fail_decisions: 0,
            sessions: 1,
        }
    }

    #[test]
    fn first_after_the_handshake_then_on_change_at_most_every_ten_seconds() {
        let mut p = HealthPacer::new();
        let t = Instant::from_millis;
        assert!(!p.wants(t(0)), "nothing before a handshake");
        p.connected();
        assert!(p.should_send(t(5), &health(5, 0)));
        p.tried(t(5), Some(&health(5, 0)));
        assert!(!p.wants(t(9_000)), "paced");
        assert!(
            !p.should_send(t(9_000), &health(9_000, 3)),
            "changed, but paced"
        );
        assert!(
            !p.should_send(t(10_005), &health(10_005, 0)),
            "only the uptime changed"
        );
        assert!(p.should_send(t(10_005), &health(10_005, 3)));
        p.tried(t(10_005), Some(&health(10_005, 3)));
        p.connected();
        assert!(
            p.should_send(t(10_010), &health(10_010, 3)),
            "a new handshake reports at once, changed or not"
        );
    }

    #[test]
    fn a_report_the_session_refused_is_tried_again_one_interval_later() {
        let mut p = HealthPacer::new();
        let t = Instant::from_millis;
        p.connected();
        p.tried(t(0), None);
        assert!(!p.wants(t(1)));
        assert!(p.should_send(t(10_000), &health(10_000, 0)));
    }
}
