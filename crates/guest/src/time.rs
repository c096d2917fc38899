//! Explicit time for sans-IO logic.
//!
//! Nothing in this crate reads a clock. Every routine that needs the time takes
//! an [`Instant`] argument, and every interval is a [`core::time::Duration`].
//! The OS adapter supplies `Instant`s from a monotonic source:
//!
//! * Windows kernel: `KeQueryInterruptTime()` (100 ns units since boot, does not
//!   include time asleep) multiplied by 100, or `KeQueryUnbiasedInterruptTime()`.
//! * Linux: `clock_gettime(CLOCK_MONOTONIC)` converted to nanoseconds.
//! * Tests: any counter; a 100 s boot runs in microseconds of virtual time.
//!
//! `Instant` is a point on one monotonic timeline, counted in nanoseconds from
//! an arbitrary origin chosen by the adapter. Only differences between two
//! `Instant`s from the same adapter are meaningful. Arithmetic saturates rather
//! than panicking or wrapping: a `u64` of nanoseconds covers about 584 years, so
//! saturation only matters for deliberately absurd inputs.

use core::fmt;
use core::ops::{Add, AddAssign};
use core::time::Duration;

/// A point in monotonic time: nanoseconds since an origin chosen by the adapter.
///
/// Ordered, `Copy`, and cheap. Construct it with [`Instant::from_nanos`],
/// [`Instant::from_micros`], [`Instant::from_millis`] or from the NT
/// 100-nanosecond unit with [`Instant::from_100ns`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(pub u64);

/// Converts a [`Duration`] to whole nanoseconds, saturating at `u64::MAX`.
#[must_use]
pub const fn duration_to_nanos(d: Duration) -> u64 {
    let n = d.as_nanos();
    if n > u64::MAX as u128 {
        u64::MAX
    } else {
        n as u64
    }
}

impl Instant {
    /// The origin of the timeline (nanosecond 0).
    pub const ZERO: Instant = Instant(0);
    /// The latest representable instant; used as "never".
    pub const MAX: Instant = Instant(u64::MAX);

    /// An instant `nanos` nanoseconds after the origin.
    #[must_use]
    pub const fn from_nanos(nanos: u64) -> Self {
        Instant(nanos)
    }

    /// An instant `micros` microseconds after the origin (saturating).
    #[must_use]
    pub const fn from_micros(micros: u64) -> Self {
        Instant(micros.saturating_mul(1_000))
    }

    /// An instant `millis` milliseconds after the origin (saturating).
    #[must_use]
    pub const fn from_millis(millis: u64) -> Self {
        Instant(millis.saturating_mul(1_000_000))
    }

    /// An instant from NT's 100-nanosecond units (e.g. `KeQueryInterruptTime`),
    /// saturating.
    #[must_use]
    pub const fn from_100ns(units: u64) -> Self {
        Instant(units.saturating_mul(100))
    }

    /// Nanoseconds since the origin.
    #[must_use]
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Whole milliseconds since the origin.
    #[must_use]
    pub const fn as_millis(self) -> u64 {
        self.0 / 1_000_000
    }

    /// `self + d`, or `None` if it would pass [`Instant::MAX`].
    #[must_use]
    pub const fn checked_add(self, d: Duration) -> Option<Self> {
        let n = d.as_nanos();
        if n > u64::MAX as u128 {
            return None;
        }
        match self.0.checked_add(n as u64) {
            Some(v) => Some(Instant(v)),
            None => None,
        }
    }

    /// `self + d`, clamped to [`Instant::MAX`].
    #[must_use]
    pub const fn saturating_add(self, d: Duration) -> Self {
        Instant(self.0.saturating_add(duration_to_nanos(d)))
    }

    /// Time from `earlier` to `self`, or `None` if `earlier` is later.
    #[must_use]
    pub const fn checked_duration_since(self, earlier: Instant) -> Option<Duration> {
        match self.0.checked_sub(earlier.0) {
            Some(n) => Some(Duration::from_nanos(n)),
            None => None,
        }
    }

    /// Time from `earlier` to `self`, or zero if `earlier` is later.
    #[must_use]
    pub const fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// `true` once `self` has reached `deadline` (`self >= deadline`).
    #[must_use]
    pub const fn has_reached(self, deadline: Instant) -> bool {
        self.0 >= deadline.0
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    /// Saturating addition (see [`Instant::saturating_add`]).
    fn add(self, rhs: Duration) -> Instant {
        self.saturating_add(rhs)
    }
}

impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, rhs: Duration) {
        *self = self.saturating_add(rhs);
    }
}

impl fmt::Debug for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Instant({}.{:09}s)",
            self.0 / 1_000_000_000,
            self.0 % 1_000_000_000
        )
    }
}

impl fmt::Display for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:03}s",
            self.0 / 1_000_000_000,
            (self.0 / 1_000_000) % 1000
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn constructors_agree() {
        assert_eq!(Instant::from_millis(2), Instant::from_nanos(2_000_000));
        assert_eq!(Instant::from_micros(3), Instant::from_nanos(3_000));
        assert_eq!(Instant::from_100ns(7), Instant::from_nanos(700));
        assert_eq!(Instant::from_millis(u64::MAX), Instant::MAX);
        assert_eq!(Instant::from_millis(1500).as_millis(), 1500);
    }

    #[test]
    fn arithmetic_saturates() {
        let t = Instant::from_millis(10);
        assert_eq!(t + Duration::from_millis(5), Instant::from_millis(15));
        assert_eq!(Instant::MAX + Duration::from_secs(1), Instant::MAX);
        assert_eq!(Instant::MAX.checked_add(Duration::from_nanos(1)), None);
        assert_eq!(t.checked_duration_since(Instant::from_millis(11)), None);
        assert_eq!(
            t.saturating_duration_since(Instant::from_millis(11)),
            Duration::ZERO
        );
        assert_eq!(
            t.saturating_duration_since(Instant::ZERO),
            Duration::from_millis(10)
        );
        assert!(t.has_reached(t));
        assert!(!Instant::ZERO.has_reached(t));
        assert_eq!(duration_to_nanos(Duration::MAX), u64::MAX);
        let mut u = Instant::ZERO;
        u += Duration::from_secs(1);
        assert_eq!(u, Instant::from_millis(1000));
    }

    #[test]
    fn formats() {
        extern crate std;
        use std::format;
        assert_eq!(format!("{}", Instant::from_millis(1234)), "1.234s");
        assert_eq!(
            format!("{:?}", Instant::from_nanos(1_000_000_005)),
            "Instant(1.000000005s)"
        );
    }

    proptest! {
        #[test]
        fn add_then_since_roundtrips(a in 0u64..u64::MAX / 2, d in 0u64..u64::MAX / 2) {
            let t = Instant(a);
            let later = t + Duration::from_nanos(d);
            prop_assert_eq!(later.saturating_duration_since(t), Duration::from_nanos(d));
            prop_assert!(later >= t);
        }
    }
}
