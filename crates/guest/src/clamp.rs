//! Out-of-range configuration values: clamped, never rejected, always reported.
//!
//! A boot-start driver must start with *some* configuration, so a bad registry
//! value never stops it; the value is clamped into its documented range and the
//! change is recorded as a [`Clamp`] so the adapter can log it (see
//! [`crate::params::ParamReport`]).

use core::fmt;

/// One value that was moved into range.
///
/// `field` is the registry/config name of the value (e.g. `captureRetryCount`);
/// `given` and `used` are in that value's own unit (count, milliseconds, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clamp {
    /// Registry / config value name.
    pub field: &'static str,
    /// The value supplied.
    pub given: u64,
    /// The value used instead.
    pub used: u64,
}

impl fmt::Display for Clamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} out of range, using {}",
            self.field, self.given, self.used
        )
    }
}

/// Clamps `value` into `min..=max`, returning the used value and the clamp if
/// one happened.
#[must_use]
pub const fn clamp_u64(
    field: &'static str,
    value: u64,
    min: u64,
    max: u64,
) -> (u64, Option<Clamp>) {
    let used = if value < min {
        min
    } else if value > max {
        max
    } else {
        value
    };
    if used == value {
        (used, None)
    } else {
        (
            used,
            Some(Clamp {
                field,
                given: value,
                used,
            }),
        )
    }
}

/// A fixed-capacity list (no allocation): items beyond `N` are counted in
/// [`BoundedList::dropped`] instead of stored. Used for every report of
/// values that were adjusted or rejected ([`Clamps`], [`ParamReport`]).
///
/// [`ParamReport`]: crate::params::ParamReport
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoundedList<T, const N: usize> {
    items: [Option<T>; N],
    len: usize,
    dropped: usize,
}

/// The clamps applied to one configuration.
pub type Clamps<const N: usize> = BoundedList<Clamp, N>;

impl<T: Copy, const N: usize> Default for BoundedList<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy, const N: usize> BoundedList<T, N> {
    /// An empty list.
    #[must_use]
    pub const fn new() -> Self {
        BoundedList {
            items: [None; N],
            len: 0,
            dropped: 0,
        }
    }

    /// Records `item` (`None` records nothing); beyond capacity it is counted
    /// in [`BoundedList::dropped`].
    pub fn push(&mut self, item: impl Into<Option<T>>) {
        if let Some(item) = item.into() {
            if self.len < N {
                self.items[self.len] = Some(item);
                self.len += 1;
            } else {
                self.dropped += 1;
            }
        }
    }

    /// Number of items kept.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.len
    }

    /// `true` if nothing was recorded, kept or dropped.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.len == 0 && self.dropped == 0
    }

    /// Items that did not fit.
    #[must_use]
    pub const fn dropped(&self) -> usize {
        self.dropped
    }

    /// The kept items, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        self.items[..self.len].iter().flatten().copied()
    }
}

impl<const N: usize> Clamps<N> {
    /// The clamp recorded for `field`, if any.
    #[must_use]
    pub fn get(&self, field: &str) -> Option<Clamp> {
        self.iter().find(|c| c.field == field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamps_and_reports() {
        assert_eq!(clamp_u64("x", 5, 1, 10), (5, None));
        assert_eq!(
            clamp_u64("x", 0, 1, 10),
            (
                1,
                Some(Clamp {
                    field: "x",
                    given: 0,
                    used: 1
                })
            )
        );
        assert_eq!(clamp_u64("x", 11, 1, 10).0, 10);
        let mut c = Clamps::<1>::new();
        assert!(c.is_empty());
        c.push(None);
        c.push(clamp_u64("a", 0, 1, 2).1);
        c.push(clamp_u64("b", 0, 1, 2).1);
        assert_eq!(c.len(), 1);
        assert_eq!(c.dropped(), 1);
        assert_eq!(c.get("a").unwrap().used, 1);
        assert!(c.get("b").is_none());
    }
}
