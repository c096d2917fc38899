//! The bounded capture loop as a sans-IO policy object.
//!
//! At start-up the Windows driver must capture the VMware vSockets provider:
//! open `\DosDevices\vmci` (-> `\Device\vmci`, owned by `\Driver\vsock`) and
//! send IOCTL `0x810320C0` with a 0x5C-byte buffer whose first DWORD is 1. At
//! boot that fails with `STATUS_DEVICE_BUSY` (`0x80000011`) until `vmci.sys`
//! has created its device objects, so the attempt is retried with a delay.
//!
//! [`Connector`] decides *whether* and *when* to retry; the adapter performs the
//! attempt and the sleep:
//!
//! ```
//! use thinagent_guest::{Connector, ConnectorAction, ConnectorConfig, Instant, NtStatus};
//! let mut c = Connector::new(ConnectorConfig::default());
//! let mut now = Instant::ZERO;
//! let outcome = loop {
//!     let status = NtStatus::STATUS_DEVICE_BUSY; // the adapter's open + IOCTL
//!     match c.on_attempt(status, now) {
//!         ConnectorAction::RetryAfter(d) => now += d, // KeDelayExecutionThread(d)
//!         terminal => break terminal,
//!     }
//! };
//! assert!(matches!(outcome, ConnectorAction::GiveUp { attempts: 100, .. }));
//! ```
//!
//! # Status classification
//!
//! * **Connected**: `NT_SUCCESS(status)` (as in the seed), except `STATUS_PENDING`.
//! * **Transient** (retry): `STATUS_DEVICE_BUSY`, `STATUS_OBJECT_NAME_NOT_FOUND`,
//!   `STATUS_OBJECT_PATH_NOT_FOUND`, `STATUS_DEVICE_NOT_READY`,
//!   `STATUS_NO_SUCH_DEVICE`, `STATUS_DEVICE_DOES_NOT_EXIST`,
//!   `STATUS_INSUFFICIENT_RESOURCES` — all mean "the vsock/vmci stack (or pool)
//!   is not there *yet*".
//! * **Transient** too: `STATUS_IO_TIMEOUT`, which is also what an attempt the
//!   adapter *timed out* counts as (below).
//! * **Fatal** (give up at once): everything else, including `STATUS_PENDING`
//!   and `STATUS_CANCELLED` from a request the adapter did not time out.
//!   The adapter must wait for a pending IRP and report its final
//!   `IoStatus.Status` (as the seed does); a `STATUS_PENDING` reaching this
//!   policy means an IRP is still outstanding, and retrying would stack a second
//!   capture request on it, so it is treated as an adapter bug.
//!
//! # Attempts that hang
//!
//! The driver waits for the capture IOCTL at most 5 s, then cancels it and
//! waits for its completion, which then usually carries `STATUS_CANCELLED`.
//! That status says nothing about the provider; the attempt *timed out*. The
//! adapter reports such an attempt with [`Connector::on_report`] and an
//! [`AttemptReport`] whose `timed_out` is set: a failed attempt that timed
//! out is classified as `STATUS_IO_TIMEOUT` (transient, so the loop goes on
//! up to `max_attempts`), whatever status the cancelled request completed
//! with. A request cancelled by someone else (or by unload) is reported
//! without `timed_out` and keeps its own status.
//!
//! # Time waited
//!
//! `waited` (in [`ConnectorAction::Connected`] and [`ConnectorAction::GiveUp`],
//! and in the log lines) is the sum of the delays this connector asked for
//! **plus the time the attempts themselves took** (`ended - started` of each
//! report): five hung attempts of 5 s with 1 s delays are 4 s of delays and
//! 25 s in the IOCTL, 29 s waited. [`Connector::on_attempt`] reports an
//! attempt that took no time (the simulators' model).
//!
//! # Differences from the seed's test driver (Listing 2)
//!
//! * The seed sleeps 1 s after *every* failure, including the 100th, so it
//!   returns after ~100 s. This connector never asks for a sleep after the final
//!   attempt: with the defaults it gives up after 100 attempts having waited
//!   **99 s**.
//! * The seed retries every failure; this connector fails fast on statuses that
//!   waiting cannot fix (e.g. `STATUS_ACCESS_DENIED`, `STATUS_INVALID_DEVICE_REQUEST`).
//! * Adapter note: the seed dereferences the file object only when building the
//!   IRP fails, leaking one reference per failed IOCTL; our adapter must release
//!   it after every attempt.

use core::fmt;
use core::time::Duration;

use crate::clamp::{Clamp, Clamps, clamp_u64};
use crate::log::{Level, LogRecord, routine};
use crate::status::NtStatus;
use crate::time::{Instant, duration_to_nanos};

/// Seed default: 100 attempts.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 100;
/// Seed default: 1 s between attempts (`timeout.QuadPart = -10000000`).
pub const DEFAULT_DELAY: Duration = Duration::from_secs(1);
/// Smallest accepted attempt count.
pub const MIN_ATTEMPTS: u32 = 1;
/// Largest accepted attempt count.
pub const MAX_ATTEMPTS: u32 = 10_000;
/// Smallest accepted delay.
pub const MIN_DELAY: Duration = Duration::from_millis(1);
/// Largest accepted (initial) delay.
pub const MAX_DELAY: Duration = Duration::from_secs(60);
/// Largest accepted exponential-backoff cap.
pub const MAX_BACKOFF_CAP: Duration = Duration::from_secs(300);
/// Largest accepted exponential-backoff factor.
pub const MAX_BACKOFF_FACTOR: u32 = 16;

/// Registry name of the attempt count (used in [`Clamp::field`]).
pub const FIELD_ATTEMPTS: &str = "captureRetryCount";
/// Registry name of the delay in milliseconds.
pub const FIELD_DELAY: &str = "captureRetryDelayMs";
/// Registry name of the backoff factor.
pub const FIELD_FACTOR: &str = "captureBackoffFactor";
/// Registry name of the backoff cap in milliseconds.
pub const FIELD_CAP: &str = "captureBackoffCapMs";

/// How the delay grows between attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Backoff {
    /// Every delay equals [`ConnectorConfig::delay`] (the seed's behaviour).
    #[default]
    Fixed,
    /// The delay after the k-th failure is `delay * factor^(k-1)`, at most `cap`.
    Exponential {
        /// Growth factor, `1..=16` (1 behaves like [`Backoff::Fixed`]).
        factor: u32,
        /// Upper bound of one delay, `delay..=5 min`.
        cap: Duration,
    },
}

/// Configuration of the capture loop. Out-of-range values are clamped by
/// [`ConnectorConfig::clamped`] (and silently by [`Connector::new`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectorConfig {
    /// Total attempts, `1..=10_000` (default 100).
    pub max_attempts: u32,
    /// Delay after the first failure, `1 ms..=60 s` (default 1 s).
    pub delay: Duration,
    /// Delay growth (default [`Backoff::Fixed`]).
    pub backoff: Backoff,
}

impl Default for ConnectorConfig {
    fn default() -> Self {
        ConnectorConfig {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            delay: DEFAULT_DELAY,
            backoff: Backoff::Fixed,
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl ConnectorConfig {
    /// Returns the config moved into range, with a record of every change
    /// ([`Clamp`] values in the registry units: count and milliseconds).
    #[must_use]
    pub fn clamped(self) -> (ConnectorConfig, Clamps<4>) {
        let mut clamps = Clamps::new();
        let (attempts, c) = clamp_u64(
            FIELD_ATTEMPTS,
            u64::from(self.max_attempts),
            u64::from(MIN_ATTEMPTS),
            u64::from(MAX_ATTEMPTS),
        );
        clamps.push(c);
        let delay = if self.delay < MIN_DELAY {
            clamps.push(Some(Clamp {
                field: FIELD_DELAY,
                given: duration_ms(self.delay),
                used: 1,
            }));
            MIN_DELAY
        } else if self.delay > MAX_DELAY {
            clamps.push(Some(Clamp {
                field: FIELD_DELAY,
                given: duration_ms(self.delay),
                used: duration_ms(MAX_DELAY),
            }));
            MAX_DELAY
        } else {
            self.delay
        };
        let backoff = match self.backoff {
            Backoff::Fixed => Backoff::Fixed,
            Backoff::Exponential { factor, cap } => {
                let (factor, c) = clamp_u64(
                    FIELD_FACTOR,
                    u64::from(factor),
                    1,
                    u64::from(MAX_BACKOFF_FACTOR),
                );
                clamps.push(c);
                let cap = if cap < delay {
                    clamps.push(Some(Clamp {
                        field: FIELD_CAP,
                        given: duration_ms(cap),
                        used: duration_ms(delay),
                    }));
                    delay
                } else if cap > MAX_BACKOFF_CAP {
                    clamps.push(Some(Clamp {
                        field: FIELD_CAP,
                        given: duration_ms(cap),
                        used: duration_ms(MAX_BACKOFF_CAP),
                    }));
                    MAX_BACKOFF_CAP
                } else {
                    cap
                };
                Backoff::Exponential {
                    factor: factor as u32,
                    cap,
                }
            }
        };
        (
            ConnectorConfig {
                max_attempts: attempts as u32,
                delay,
                backoff,
            },
            clamps,
        )
    }

    /// The delay to wait after the `failure`-th failed attempt (1-based).
    #[must_use]
    pub fn delay_after(&self, failure: u32) -> Duration {
        match self.backoff {
            Backoff::Fixed => self.delay,
            Backoff::Exponential { factor, cap } => {
                if factor <= 1 {
                    return self.delay.min(cap.max(self.delay));
                }
                let base = duration_to_nanos(self.delay);
                let cap_ns = duration_to_nanos(cap);
                let grown = u64::from(factor)
                    .checked_pow(failure.saturating_sub(1))
                    .and_then(|m| base.checked_mul(m))
                    .unwrap_or(u64::MAX);
                Duration::from_nanos(grown.min(cap_ns))
            }
        }
    }

    /// Worst-case total of the delays before giving up: the sum of the
    /// delays after failures `1..max_attempts` (no delay after the last
    /// one). Time spent inside the attempts comes on top (see
    /// [`Connector::on_report`]); [`ConnectorConfig::worst_case_total`]
    /// includes it.
    #[must_use]
    pub fn worst_case_wait(&self) -> Duration {
        (1..self.max_attempts).fold(Duration::ZERO, |acc, k| {
            acc.saturating_add(self.delay_after(k))
        })
    }

    /// Worst-case time waited before giving up when each attempt may take up
    /// to `attempt_bound` (the adapter's IOCTL timeout, 5 s in the driver):
    /// [`ConnectorConfig::worst_case_wait`] plus `max_attempts` times
    /// `attempt_bound`. With the defaults and 5 s: 99 s + 500 s = 599 s.
    #[must_use]
    pub fn worst_case_total(&self, attempt_bound: Duration) -> Duration {
        let attempts = attempt_bound
            .checked_mul(self.max_attempts)
            .unwrap_or(Duration::MAX);
        self.worst_case_wait().saturating_add(attempts)
    }
}

/// One capture attempt as the adapter saw it, for [`Connector::on_report`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttemptReport {
    /// The attempt's final status: the open's status, or the capture IRP's
    /// final `IoStatus.Status` (after a cancel, whatever it completed with).
    pub status: NtStatus,
    /// When the attempt began (before the open).
    pub started: Instant,
    /// When it ended (the IRP had completed).
    pub ended: Instant,
    /// The adapter's bounded wait for the request expired and the adapter
    /// cancelled it itself (not because unload began). A failed attempt
    /// that timed out counts as [`NtStatus::STATUS_IO_TIMEOUT`].
    pub timed_out: bool,
}

impl AttemptReport {
    /// An attempt made at `at` that took no time and did not time out.
    #[must_use]
    pub const fn instant(status: NtStatus, at: Instant) -> Self {
        AttemptReport {
            status,
            started: at,
            ended: at,
            timed_out: false,
        }
    }

    /// An attempt from `started` to `ended` that did not time out.
    #[must_use]
    pub const fn completed(status: NtStatus, started: Instant, ended: Instant) -> Self {
        AttemptReport {
            status,
            started,
            ended,
            timed_out: false,
        }
    }

    /// An attempt from `started` to `ended` whose request the adapter timed
    /// out and cancelled; `status` is what the cancelled request completed
    /// with (usually `STATUS_CANCELLED`).
    #[must_use]
    pub const fn timed_out(status: NtStatus, started: Instant, ended: Instant) -> Self {
        AttemptReport {
            status,
            started,
            ended,
            timed_out: true,
        }
    }

    /// How long the attempt took (zero if `ended` is before `started`).
    #[must_use]
    pub const fn duration(&self) -> Duration {
        self.ended.saturating_duration_since(self.started)
    }

    /// The status the connector classifies and logs:
    /// [`NtStatus::STATUS_IO_TIMEOUT`] for a failed attempt that timed out
    /// (a request that succeeded before the cancel took effect keeps its
    /// success), otherwise [`AttemptReport::status`].
    #[must_use]
    pub const fn effective_status(&self) -> NtStatus {
        if self.timed_out && !Connector::is_connected(self.status) {
            NtStatus::STATUS_IO_TIMEOUT
        } else {
            self.status
        }
    }
}

/// Why the connector stopped trying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GiveUpReason {
    /// `max_attempts` transient failures in a row.
    AttemptsExhausted,
    /// A status that waiting cannot fix.
    Fatal(NtStatus),
}

impl GiveUpReason {
    /// Why the loop stopped, as the capture-failure log line says it.
    pub const fn describe(self) -> &'static str {
        match self {
            GiveUpReason::AttemptsExhausted => "attempts exhausted",
            GiveUpReason::Fatal(_) => "status is not transient",
        }
    }
}

/// What the adapter must do after reporting an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectorAction {
    /// The provider was captured.
    Connected {
        /// Attempts made, including the successful one.
        attempts: u32,
        /// Sum of the delays this connector asked for and of the attempts'
        /// durations.
        waited: Duration,
    },
    /// Sleep this long, then attempt again and report it.
    RetryAfter(Duration),
    /// Stop; start-up fails with `last_status`.
    GiveUp {
        /// Attempts made.
        attempts: u32,
        /// Status of the last attempt.
        last_status: NtStatus,
        /// Sum of the delays this connector asked for and of the attempts'
        /// durations.
        waited: Duration,
        /// Why.
        reason: GiveUpReason,
    },
}

impl ConnectorAction {
    /// `true` for [`ConnectorAction::Connected`] and [`ConnectorAction::GiveUp`].
    #[must_use]
    pub const fn is_terminal(&self) -> bool {
        !matches!(self, ConnectorAction::RetryAfter(_))
    }
}

impl fmt::Display for ConnectorAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ConnectorAction::Connected { attempts, waited } => {
                write!(
                    f,
                    "connected after {attempts} attempt(s), waited {} ms",
                    waited.as_millis()
                )
            }
            ConnectorAction::RetryAfter(d) => write!(f, "retry after {} ms", d.as_millis()),
            ConnectorAction::GiveUp {
                attempts,
                last_status,
                waited,
                reason,
            } => {
                write!(
                    f,
                    "gave up after {attempts} attempt(s), waited {} ms, ",
                    waited.as_millis()
                )?;
                match reason {
                    GiveUpReason::AttemptsExhausted => {
                        write!(f, "attempts exhausted: {last_status}")
                    }
                    GiveUpReason::Fatal(s) => write!(f, "fatal status: {s}"),
                }
            }
        }
    }
}

/// The capture loop's log line for one attempt ([`Connector::log_line`]):
/// written as a [`LogRecord`] of routine `VsockCapture` it has Listing 1's
/// shape `LEVEL: VsockCapture : message: 0xSTATUS`, e.g.
///
/// ```text
/// DEBUG: VsockCapture : capture attempt 3 failed, retrying in 1000 ms: 0x80000011
/// DEBUG: VsockCapture : capture attempt 1 timed out after 5000 ms, retrying in 1000 ms: 0xC00000B5
/// INFO: VsockCapture : vSockets provider captured after 3 attempt(s), 2000 ms waited: 0x00000000
/// ERROR: VsockCapture : capture failed after 100 attempt(s), 599000 ms waited, attempts exhausted: 0xC00000B5
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureLogLine {
    /// DEBUG for a retry, INFO when connected, ERROR when giving up.
    pub level: Level,
    /// The status at the end of the line: the attempt's effective status,
    /// or the give-up's `last_status`.
    pub status: NtStatus,
    /// The text between the routine and the status.
    pub message: CaptureMessage,
}

impl CaptureLogLine {
    /// Calls `f` with the line as a [`LogRecord`] (routine `VsockCapture`).
    pub fn with_record<R>(&self, f: impl FnOnce(&LogRecord<'_>) -> R) -> R {
        f(&LogRecord::new(
            self.level,
            routine::VSOCK_CAPTURE,
            format_args!("{}", self.message),
        )
        .with_status(self.status))
    }
}

impl fmt::Display for CaptureLogLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_record(|r| fmt::Display::fmt(r, f))
    }
}

/// The message of a [`CaptureLogLine`] (its `Display`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureMessage {
    action: ConnectorAction,
    attempt: u32,
    timed_out: bool,
    took: Duration,
}

impl fmt::Display for CaptureMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.action {
            ConnectorAction::RetryAfter(d) => {
                write!(f, "capture attempt {} ", self.attempt)?;
                if self.timed_out {
                    write!(f, "timed out after {} ms", self.took.as_millis())?;
                } else {
                    f.write_str("failed")?;
                }
                write!(f, ", retrying in {} ms", d.as_millis())
            }
            ConnectorAction::Connected { attempts, waited } => write!(
                f,
                "vSockets provider captured after {attempts} attempt(s), {} ms waited",
                waited.as_millis()
            ),
            ConnectorAction::GiveUp {
                attempts,
                waited,
                reason,
                ..
            } => write!(
                f,
                "capture failed after {attempts} attempt(s), {} ms waited, {}",
                waited.as_millis(),
                reason.describe()
            ),
        }
    }
}

/// The capture-retry state machine. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct Connector {
    config: ConnectorConfig,
    attempts: u32,
    waited: Duration,
    started: Option<Instant>,
    last_attempt: Option<Instant>,
    outcome: Option<ConnectorAction>,
}

impl Connector {
    /// A connector with `config` (clamped into range; use
    /// [`ConnectorConfig::clamped`] first to learn what changed).
    #[must_use]
    pub fn new(config: ConnectorConfig) -> Self {
        Connector {
            config: config.clamped().0,
            attempts: 0,
            waited: Duration::ZERO,
            started: None,
            last_attempt: None,
            outcome: None,
        }
    }

    /// The effective (clamped) configuration.
    #[must_use]
    pub const fn config(&self) -> &ConnectorConfig {
        &self.config
    }

    /// `true` if `status` means "not there yet, try again".
    #[must_use]
    pub const fn is_transient(status: NtStatus) -> bool {
        matches!(
            status,
            NtStatus::STATUS_DEVICE_BUSY
                | NtStatus::STATUS_OBJECT_NAME_NOT_FOUND
                | NtStatus::STATUS_OBJECT_PATH_NOT_FOUND
                | NtStatus::STATUS_DEVICE_NOT_READY
                | NtStatus::STATUS_NO_SUCH_DEVICE
                | NtStatus::STATUS_DEVICE_DOES_NOT_EXIST
                | NtStatus::STATUS_INSUFFICIENT_RESOURCES
                | NtStatus::STATUS_IO_TIMEOUT
        )
    }

    /// `true` if `status` means the capture succeeded (`NT_SUCCESS`, but not
    /// `STATUS_PENDING`).
    #[must_use]
    pub const fn is_connected(status: NtStatus) -> bool {
        status.is_success() && status.0 != NtStatus::STATUS_PENDING.0
    }

    /// Reports the outcome of one attempt made at `now` that took no time
    /// and did not time out ([`AttemptReport::instant`]); returns what to do.
    ///
    /// After a terminal action ([`ConnectorAction::is_terminal`]) every further
    /// call returns that same action and changes nothing.
    pub fn on_attempt(&mut self, status: NtStatus, now: Instant) -> ConnectorAction {
        self.on_report(AttemptReport::instant(status, now))
    }

    /// Reports one attempt as the adapter saw it; returns what to do. The
    /// attempt is classified by [`AttemptReport::effective_status`] (a
    /// failed attempt that timed out is `STATUS_IO_TIMEOUT`, transient), and
    /// its duration is added to the time waited.
    ///
    /// After a terminal action ([`ConnectorAction::is_terminal`]) every further
    /// call returns that same action and changes nothing.
    pub fn on_report(&mut self, report: AttemptReport) -> ConnectorAction {
        if let Some(done) = self.outcome {
            return done;
        }
        let status = report.effective_status();
        self.attempts = self.attempts.saturating_add(1);
        self.started.get_or_insert(report.started);
        self.last_attempt = Some(report.started);
        self.waited = self.waited.saturating_add(report.duration());
        let action = if Self::is_connected(status) {
            ConnectorAction::Connected {
                attempts: self.attempts,
                waited: self.waited,
            }
        } else if !Self::is_transient(status) {
            self.give_up(status, GiveUpReason::Fatal(status))
        } else if self.attempts >= self.config.max_attempts {
            self.give_up(status, GiveUpReason::AttemptsExhausted)
        } else {
            let d = self.config.delay_after(self.attempts);
            self.waited = self.waited.saturating_add(d);
            ConnectorAction::RetryAfter(d)
        };
        if action.is_terminal() {
            self.outcome = Some(action);
        }
        action
    }

    fn give_up(&self, last_status: NtStatus, reason: GiveUpReason) -> ConnectorAction {
        ConnectorAction::GiveUp {
            attempts: self.attempts,
            last_status,
            waited: self.waited,
            reason,
        }
    }

    /// Attempts reported so far.
    #[must_use]
    pub const fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Sum of the delays asked for and of the attempts' durations so far.
    #[must_use]
    pub const fn waited(&self) -> Duration {
        self.waited
    }

    /// The log line for `action`, which reporting `report` returned (the
    /// adapters write it as the capture loop's line for that attempt; see
    /// [`CaptureLogLine`]).
    #[must_use]
    pub fn log_line(&self, report: &AttemptReport, action: ConnectorAction) -> CaptureLogLine {
        let (level, status) = match action {
            ConnectorAction::Connected { .. } => (Level::Info, report.effective_status()),
            ConnectorAction::RetryAfter(_) => (Level::Debug, report.effective_status()),
            ConnectorAction::GiveUp { last_status, .. } => (Level::Error, last_status),
        };
        CaptureLogLine {
            level,
            status,
            message: CaptureMessage {
                action,
                attempt: self.attempts,
                timed_out: report.timed_out && !Self::is_connected(report.status),
                took: report.duration(),
            },
        }
    }

    /// The terminal action, once reached.
    #[must_use]
    pub const fn outcome(&self) -> Option<ConnectorAction> {
        self.outcome
    }

    /// Wall time from the first attempt to `now` (zero before any attempt).
    #[must_use]
    pub fn elapsed(&self, now: Instant) -> Duration {
        self.started
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s))
    }

    /// Instant of the most recent attempt.
    #[must_use]
    pub const fn last_attempt(&self) -> Option<Instant> {
        self.last_attempt
    }

    /// Starts over with the same configuration (e.g. to reconnect later).
    pub fn reset(&mut self) {
        *self = Connector::new(self.config);
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    const BUSY: NtStatus = NtStatus::STATUS_DEVICE_BUSY;

    fn run(
        c: &mut Connector,
        mut status_of: impl FnMut(u32) -> NtStatus,
    ) -> (ConnectorAction, Instant) {
        let mut now = Instant::ZERO;
        let mut n = 0;
        loop {
            n += 1;
            match c.on_attempt(status_of(n), now) {
                ConnectorAction::RetryAfter(d) => now += d,
                t => return (t, now),
            }
        }
    }

    #[test]
    fn seed_default_gives_up_after_100_attempts_and_99_s() {
        let mut c = Connector::new(ConnectorConfig::default());
        let (out, now) = run(&mut c, |_| BUSY);
        assert_eq!(
            out,
            ConnectorAction::GiveUp {
                attempts: 100,
                last_status: BUSY,
                waited: Duration::from_secs(99),
                reason: GiveUpReason::AttemptsExhausted,
            }
        );
        assert_eq!(now, Instant::from_millis(99_000));
        assert_eq!(c.elapsed(now), Duration::from_secs(99));
        assert_eq!(
            ConnectorConfig::default().worst_case_wait(),
            Duration::from_secs(99)
        );
        // terminal is sticky
        assert_eq!(c.on_attempt(NtStatus::STATUS_SUCCESS, now), out);
        assert_eq!(c.attempts(), 100);
    }

    #[test]
    fn succeeds_at_attempt_7() {
        let mut c = Connector::new(ConnectorConfig::default());
        let (out, _) = run(&mut c, |n| {
            if n == 7 {
                NtStatus::STATUS_SUCCESS
            } else {
                BUSY
            }
        });
        assert_eq!(
            out,
            ConnectorAction::Connected {
                attempts: 7,
                waited: Duration::from_secs(6)
            }
        );
        assert_eq!(c.outcome(), Some(out));
    }

    #[test]
    fn fatal_status_fails_on_first_attempt() {
        let mut c = Connector::new(ConnectorConfig::default());
        let s = NtStatus::STATUS_ACCESS_DENIED;
        let out = c.on_attempt(s, Instant::ZERO);
        assert_eq!(
            out,
            ConnectorAction::GiveUp {
                attempts: 1,
                last_status: s,
                waited: Duration::ZERO,
                reason: GiveUpReason::Fatal(s)
            }
        );
        let mut c = Connector::new(ConnectorConfig::default());
        assert!(matches!(
            c.on_attempt(NtStatus::STATUS_PENDING, Instant::ZERO),
            ConnectorAction::GiveUp {
                reason: GiveUpReason::Fatal(NtStatus::STATUS_PENDING),
                ..
            }
        ));
    }

    #[test]
    fn every_transient_status_retries() {
        for s in [
            NtStatus::STATUS_DEVICE_BUSY,
            NtStatus::STATUS_OBJECT_NAME_NOT_FOUND,
            NtStatus::STATUS_OBJECT_PATH_NOT_FOUND,
            NtStatus::STATUS_DEVICE_NOT_READY,
            NtStatus::STATUS_NO_SUCH_DEVICE,
            NtStatus::STATUS_DEVICE_DOES_NOT_EXIST,
            NtStatus::STATUS_INSUFFICIENT_RESOURCES,
            NtStatus::STATUS_IO_TIMEOUT,
        ] {
            let mut c = Connector::new(ConnectorConfig::default());
            assert_eq!(
                c.on_attempt(s, Instant::ZERO),
                ConnectorAction::RetryAfter(DEFAULT_DELAY),
                "{s:?}"
            );
        }
    }

    #[test]
    fn exponential_backoff_is_capped() {
        let cfg = ConnectorConfig {
            max_attempts: 8,
            delay: Duration::from_millis(100),
            backoff: Backoff::Exponential {
                factor: 2,
                cap: Duration::from_millis(1000),
            },
        };
        let mut c = Connector::new(cfg);
        let mut delays = Vec::new();
        let mut now = Instant::ZERO;
        loop {
            match c.on_attempt(BUSY, now) {
                ConnectorAction::RetryAfter(d) => {
                    delays.push(d.as_millis());
                    now += d;
                }
                ConnectorAction::GiveUp {
                    attempts, waited, ..
                } => {
                    assert_eq!(attempts, 8);
                    assert_eq!(
                        waited,
                        Duration::from_millis(100 + 200 + 400 + 800 + 1000 + 1000 + 1000)
                    );
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(cfg.delay_after(10_000), Duration::from_millis(1000));
    }

    #[test]
    fn out_of_range_config_is_clamped_and_reported() {
        let (cfg, clamps) = ConnectorConfig {
            max_attempts: 0,
            delay: Duration::from_secs(3600),
            backoff: Backoff::Exponential {
                factor: 99,
                cap: Duration::from_secs(3600),
            },
        }
        .clamped();
        assert_eq!(cfg.max_attempts, 1);
        assert_eq!(cfg.delay, MAX_DELAY);
        assert_eq!(
            cfg.backoff,
            Backoff::Exponential {
                factor: 16,
                cap: MAX_BACKOFF_CAP
            }
        );
        assert_eq!(clamps.len(), 4);
        assert_eq!(
            clamps.get(FIELD_ATTEMPTS),
            Some(Clamp {
                field: FIELD_ATTEMPTS,
                given: 0,
                used: 1
            })
        );
        assert_eq!(clamps.get(FIELD_DELAY).unwrap().used, 60_000);
        let (cfg, clamps) = ConnectorConfig {
            delay: Duration::ZERO,
            ..ConnectorConfig::default()
        }
        .clamped();
        assert_eq!(cfg.delay, MIN_DELAY);
        assert_eq!(clamps.len(), 1);
        let (_, clamps) = ConnectorConfig::default().clamped();
        assert!(clamps.is_empty());
    }

    #[test]
    fn reset_and_display() {
        let mut c = Connector::new(ConnectorConfig {
            max_attempts: 1,
            ..ConnectorConfig::default()
        });
        let out = c.on_attempt(BUSY, Instant::ZERO);
        assert_eq!(
            std::format!("{out}"),
            "gave up after 1 attempt(s), waited 0 ms, attempts exhausted: 0x80000011"
        );
        c.reset();
        assert_eq!(c.attempts(), 0);
        let out = c.on_attempt(NtStatus::STATUS_SUCCESS, Instant::ZERO);
        assert_eq!(
            std::format!("{out}"),
            "connected after 1 attempt(s), waited 0 ms"
        );
    }

    fn status_strategy() -> impl Strategy<Value = NtStatus> {
        prop_oneof![
            8 => Just(BUSY),
            2 => Just(NtStatus::STATUS_OBJECT_NAME_NOT_FOUND),
            1 => Just(NtStatus::STATUS_SUCCESS),
            1 => Just(NtStatus::STATUS_ACCESS_DENIED),
            1 => any::<u32>().prop_map(NtStatus),
        ]
    }

    proptest! {
        #[test]
        fn invariants(
            max_attempts in 0u32..300,
            delay_ms in 0u64..100_000,
            exp in any::<bool>(),
            factor in 0u32..40,
            cap_ms in 0u64..1_000_000,
            statuses in proptest::collection::vec(
                (status_strategy(), 0u64..10_000, any::<bool>()),
                1..400,
            ),
        ) {
            let backoff = if exp { Backoff::Exponential { factor, cap: Duration::from_millis(cap_ms) } } else { Backoff::Fixed };
            let cfg = ConnectorConfig { max_attempts, delay: Duration::from_millis(delay_ms), backoff };
            let mut c = Connector::new(cfg);
            let eff = *c.config();
            let mut sum = Duration::ZERO;
            let mut terminal: Option<ConnectorAction> = None;
            let mut now = Instant::ZERO;
            for (raw, took_ms, timed_out) in statuses {
                let ended = now + Duration::from_millis(took_ms);
                let report = AttemptReport { status: raw, started: now, ended, timed_out };
                let s = report.effective_status();
                let a = c.on_report(report);
                if let Some(t) = terminal {
                    prop_assert_eq!(a, t);
                    continue;
                }
                if timed_out && !Connector::is_connected(raw) {
                    prop_assert_eq!(s, NtStatus::STATUS_IO_TIMEOUT);
                    let fatal = matches!(a, ConnectorAction::GiveUp { reason: GiveUpReason::Fatal(_), .. });
                    prop_assert!(!fatal, "a timed-out attempt was fatal: {:?}", a);
                }
                sum += report.duration();
                now = ended;
                match a {
                    ConnectorAction::RetryAfter(d) => {
                        prop_assert!(d >= MIN_DELAY);
                        prop_assert!(d <= MAX_BACKOFF_CAP.max(MAX_DELAY));
                        sum += d;
                        now += d;
                    }
                    ConnectorAction::Connected { attempts, waited } => {
                        prop_assert!(Connector::is_connected(s));
                        prop_assert_eq!(waited, sum);
                        prop_assert!(attempts <= eff.max_attempts);
                        terminal = Some(a);
                    }
                    ConnectorAction::GiveUp { attempts, waited, last_status, reason } => {
                        prop_assert_eq!(waited, sum);
                        prop_assert_eq!(last_status, s);
                        prop_assert!(attempts <= eff.max_attempts);
                        if reason == GiveUpReason::AttemptsExhausted {
                            prop_assert_eq!(attempts, eff.max_attempts);
                        }
                        terminal = Some(a);
                    }
                }
                prop_assert!(c.attempts() <= eff.max_attempts);
                prop_assert_eq!(c.waited(), sum);
                prop_assert_eq!(c.elapsed(now), sum);
            }
            prop_assert!(sum <= eff.worst_case_total(Duration::from_millis(10_000)));
        }
    }

    /// The driver's IOCTL bound: a hung capture IOCTL is cancelled after it.
    const IOCTL_BOUND: Duration = Duration::from_secs(5);

    /// Runs the adapter's loop: each attempt starts at `now`, lasts what
    /// `attempt` says and is reported; the delay is slept in full. Returns
    /// every action, the log lines and the final time.
    fn run_reports(
        c: &mut Connector,
        mut attempt: impl FnMut(u32, Instant) -> AttemptReport,
    ) -> (Vec<ConnectorAction>, Vec<std::string::String>, Instant) {
        let mut now = Instant::ZERO;
        let mut actions = Vec::new();
        let mut lines = Vec::new();
        for n in 1.. {
            let report = attempt(n, now);
            let a = c.on_report(report);
            lines.push(std::format!("{}", c.log_line(&report, a)));
            actions.push(a);
            now = report.ended;
            match a {
                ConnectorAction::RetryAfter(d) => now += d,
                _ => break,
            }
        }
        (actions, lines, now)
    }

    fn hung(_: u32, at: Instant) -> AttemptReport {
        AttemptReport::timed_out(NtStatus::STATUS_CANCELLED, at, at + IOCTL_BOUND)
    }

    #[test]
    fn hung_capture_ioctl_is_retried_up_to_capture_retry_count() {
        // captureRetryCount from the registry, as the driver reads it.
        let mut params = crate::Params::default();
        params
            .apply("captureRetryCount", crate::RegValue::Dword(7))
            .unwrap();
        let mut c = Connector::new(params.connector_config());
        let (actions, lines, end) = run_reports(&mut c, hung);
        assert_eq!(actions.len(), 7);
        for a in &actions[..6] {
            assert_eq!(*a, ConnectorAction::RetryAfter(DEFAULT_DELAY));
        }
        // 7 attempts of 5 s each and 6 delays of 1 s.
        let waited = Duration::from_secs(7 * 5 + 6);
        assert_eq!(
            actions[6],
            ConnectorAction::GiveUp {
                attempts: 7,
                last_status: NtStatus::STATUS_IO_TIMEOUT,
                waited,
                reason: GiveUpReason::AttemptsExhausted,
            }
        );
        assert_eq!(c.waited(), waited);
        assert_eq!(end, Instant::ZERO + waited);
        assert_eq!(c.elapsed(end), waited);
        assert_eq!(
            lines[0],
            "DEBUG: VsockCapture : capture attempt 1 timed out after 5000 ms, retrying in 1000 ms: 0xC00000B5"
        );
        assert_eq!(
            lines[6],
            "ERROR: VsockCapture : capture failed after 7 attempt(s), 41000 ms waited, attempts exhausted: 0xC00000B5"
        );
        for l in &lines {
            let p = crate::parse_line(l).expect("Listing 1 shape");
            assert_eq!(p.routine, "VsockCapture");
            assert_eq!(p.status, Some(NtStatus::STATUS_IO_TIMEOUT));
        }
    }

    #[test]
    fn hung_capture_with_seed_defaults_waits_599_s() {
        let cfg = ConnectorConfig::default();
        let mut c = Connector::new(cfg);
        let (actions, lines, end) = run_reports(&mut c, hung);
        assert_eq!(actions.len(), 100);
        assert_eq!(
            *actions.last().unwrap(),
            ConnectorAction::GiveUp {
                attempts: 100,
                last_status: NtStatus::STATUS_IO_TIMEOUT,
                waited: Duration::from_secs(599),
                reason: GiveUpReason::AttemptsExhausted,
            }
        );
        assert_eq!(end, Instant::from_millis(599_000));
        assert_eq!(cfg.worst_case_total(IOCTL_BOUND), Duration::from_secs(599));
        let last = lines.last().unwrap();
        assert_eq!(
            last,
            "ERROR: VsockCapture : capture failed after 100 attempt(s), 599000 ms waited, attempts exhausted: 0xC00000B5"
        );
        let p = crate::parse_line(last).unwrap();
        assert_eq!(p.level, Level::Error);
        assert_eq!(
            p.message,
            "capture failed after 100 attempt(s), 599000 ms waited, attempts exhausted"
        );
    }

    /// The incident of issue 11: one hung IOCTL used to end the capture with
    /// `capture failed after 1 attempt(s), 0 ms waited, status is not
    /// transient: 0xC0000120`. Now the loop goes on (the boot
    /// re-initialisation retry, an immediate attempt, is accepted too) and
    /// the 5 s count as waited.
    #[test]
    fn one_hung_attempt_then_reinit_retry_connects() {
        let mut c = Connector::new(ConnectorConfig::default());
        let r1 = hung(1, Instant::ZERO);
        let a1 = c.on_report(r1);
        assert_eq!(a1, ConnectorAction::RetryAfter(DEFAULT_DELAY));
        assert_eq!(c.outcome(), None);
        assert_eq!(
            std::format!("{}", c.log_line(&r1, a1)),
            "DEBUG: VsockCapture : capture attempt 1 timed out after 5000 ms, retrying in 1000 ms: 0xC00000B5"
        );
        // The boot re-init callback wakes the loop 200 ms into the delay;
        // that attempt takes 3 ms and succeeds.
        let t = Instant::from_millis(5_200);
        let r2 =
            AttemptReport::completed(NtStatus::STATUS_SUCCESS, t, t + Duration::from_millis(3));
        let a2 = c.on_report(r2);
        assert_eq!(
            a2,
            ConnectorAction::Connected {
                attempts: 2,
                waited: Duration::from_millis(5_000 + 1_000 + 3),
            }
        );
        assert_eq!(
            std::format!("{}", c.log_line(&r2, a2)),
            "INFO: VsockCapture : vSockets provider captured after 2 attempt(s), 6003 ms waited: 0x00000000"
        );
    }

    #[test]
    fn cancelled_without_our_timeout_keeps_its_status_and_is_fatal() {
        let mut c = Connector::new(ConnectorConfig::default());
        let r = AttemptReport::completed(
            NtStatus::STATUS_CANCELLED,
            Instant::from_millis(10),
            Instant::from_millis(30),
        );
        assert_eq!(r.effective_status(), NtStatus::STATUS_CANCELLED);
        let a = c.on_report(r);
        assert_eq!(
            a,
            ConnectorAction::GiveUp {
                attempts: 1,
                last_status: NtStatus::STATUS_CANCELLED,
                waited: Duration::from_millis(20),
                reason: GiveUpReason::Fatal(NtStatus::STATUS_CANCELLED),
            }
        );
        assert_eq!(
            std::format!("{}", c.log_line(&r, a)),
            "ERROR: VsockCapture : capture failed after 1 attempt(s), 20 ms waited, status is not transient: 0xC0000120"
        );
    }

    #[test]
    fn timed_out_attempt_classification() {
        let at = Instant::ZERO;
        let end = at + IOCTL_BOUND;
        // Any failure of a request we timed out is a timeout.
        for s in [
            NtStatus::STATUS_CANCELLED,
            NtStatus::STATUS_UNSUCCESSFUL,
            NtStatus::STATUS_DEVICE_BUSY,
        ] {
            let r = AttemptReport::timed_out(s, at, end);
            assert_eq!(r.effective_status(), NtStatus::STATUS_IO_TIMEOUT, "{s:?}");
        }
        // Completed before the cancel took effect: captured.
        let r = AttemptReport::timed_out(NtStatus::STATUS_SUCCESS, at, end);
        assert_eq!(r.effective_status(), NtStatus::STATUS_SUCCESS);
        let mut c = Connector::new(ConnectorConfig::default());
        let a = c.on_report(r);
        assert_eq!(
            a,
            ConnectorAction::Connected {
                attempts: 1,
                waited: IOCTL_BOUND
            }
        );
        assert_eq!(
            std::format!("{}", c.log_line(&r, a)),
            "INFO: VsockCapture : vSockets provider captured after 1 attempt(s), 5000 ms waited: 0x00000000"
        );
        // STATUS_IO_TIMEOUT from the provider itself is transient too.
        assert!(Connector::is_transient(NtStatus::STATUS_IO_TIMEOUT));
        assert!(!Connector::is_transient(NtStatus::STATUS_CANCELLED));
    }

    #[test]
    fn waited_includes_every_attempts_duration() {
        let mut c = Connector::new(ConnectorConfig {
            max_attempts: 4,
            ..ConnectorConfig::default()
        });
        // busy 2 ms, hung 5 s, busy 7 ms, busy 1 ms: 3 delays of 1 s.
        let took = [2u64, 5_000, 7, 1];
        let (actions, lines, end) = run_reports(&mut c, |n, at| {
            let d = Duration::from_millis(took[n as usize - 1]);
            if n == 2 {
                AttemptReport::timed_out(NtStatus::STATUS_CANCELLED, at, at + d)
            } else {
                AttemptReport::completed(BUSY, at, at + d)
            }
        });
        let waited = Duration::from_millis(2 + 5_000 + 7 + 1 + 3 * 1_000);
        assert_eq!(
            *actions.last().unwrap(),
            ConnectorAction::GiveUp {
                attempts: 4,
                last_status: BUSY,
                waited,
                reason: GiveUpReason::AttemptsExhausted,
            }
        );
        assert_eq!(c.elapsed(end), waited);
        assert_eq!(
            lines,
            [
                "DEBUG: VsockCapture : capture attempt 1 failed, retrying in 1000 ms: 0x80000011",
                "DEBUG: VsockCapture : capture attempt 2 timed out after 5000 ms, retrying in 1000 ms: 0xC00000B5",
                "DEBUG: VsockCapture : capture attempt 3 failed, retrying in 1000 ms: 0x80000011",
                "ERROR: VsockCapture : capture failed after 4 attempt(s), 8010 ms waited, attempts exhausted: 0x80000011",
            ]
        );
    }

    #[test]
    fn give_up_reasons_describe_themselves_for_log_lines() {
        assert_eq!(
            GiveUpReason::AttemptsExhausted.describe(),
            "attempts exhausted"
        );
        assert_eq!(
            GiveUpReason::Fatal(NtStatus::STATUS_ACCESS_DENIED).describe(),
            "status is not transient"
        );
    }
}
