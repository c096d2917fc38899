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
//! * **Fatal** (give up at once): everything else, including `STATUS_PENDING`.
//!   The adapter must wait for a pending IRP and report its final
//!   `IoStatus.Status` (as the seed does); a `STATUS_PENDING` reaching this
//!   policy means an IRP is still outstanding, and retrying would stack a second
//!   capture request on it, so it is treated as an adapter bug.
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

    /// Worst-case total wait before giving up: the sum of the delays after
    /// failures `1..max_attempts` (no delay after the last one).
    #[must_use]
    pub fn worst_case_wait(&self) -> Duration {
        (1..self.max_attempts).fold(Duration::ZERO, |acc, k| {
            acc.saturating_add(self.delay_after(k))
        })
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
        /// Sum of the delays this connector asked for.
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
        /// Sum of the delays this connector asked for.
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
        )
    }

    /// `true` if `status` means the capture succeeded (`NT_SUCCESS`, but not
    /// `STATUS_PENDING`).
    #[must_use]
    pub const fn is_connected(status: NtStatus) -> bool {
        status.is_success() && status.0 != NtStatus::STATUS_PENDING.0
    }

    /// Reports the outcome of one attempt made at `now`; returns what to do.
    ///
    /// After a terminal action ([`ConnectorAction::is_terminal`]) every further
    /// call returns that same action and changes nothing.
    pub fn on_attempt(&mut self, status: NtStatus, now: Instant) -> ConnectorAction {
        if let Some(done) = self.outcome {
            return done;
        }
        self.attempts = self.attempts.saturating_add(1);
        self.started.get_or_insert(now);
        self.last_attempt = Some(now);
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

    /// Sum of the delays asked for so far.
    #[must_use]
    pub const fn waited(&self) -> Duration {
        self.waited
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
            statuses in proptest::collection::vec(status_strategy(), 1..400),
        ) {
            let backoff = if exp { Backoff::Exponential { factor, cap: Duration::from_millis(cap_ms) } } else { Backoff::Fixed };
            let cfg = ConnectorConfig { max_attempts, delay: Duration::from_millis(delay_ms), backoff };
            let mut c = Connector::new(cfg);
            let eff = *c.config();
            let mut sum = Duration::ZERO;
            let mut terminal: Option<ConnectorAction> = None;
            let mut now = Instant::ZERO;
            for s in statuses {
                let a = c.on_attempt(s, now);
                if let Some(t) = terminal {
                    prop_assert_eq!(a, t);
                    continue;
                }
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
            }
            prop_assert!(sum <= eff.worst_case_wait());
        }
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
