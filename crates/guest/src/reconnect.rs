//! When to connect to the host again after a [`Session`](crate::Session)
//! closed or a connect attempt failed.
//!
//! Delays grow exponentially from `first_delay` up to `cap`, computed by the
//! same [`ConnectorConfig::delay_after`] as the capture loop. A connection that
//! stayed up for at least `stable_after` resets the growth, so one blip after
//! hours of service reconnects quickly, while a host that accepts and then
//! drops every connection (a flapping scanner) is not hammered.

use core::time::Duration;

use crate::connector::{Backoff, ConnectorConfig};
use crate::time::Instant;

/// Reconnect pacing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReconnectConfig {
    /// Delay after the first failure (default 1 s).
    pub first_delay: Duration,
    /// Growth factor per consecutive failure (default 2; 1 keeps it fixed).
    pub factor: u32,
    /// Largest delay (default 60 s).
    pub cap: Duration,
    /// A connection up at least this long resets the growth (default 30 s).
    pub stable_after: Duration,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        ReconnectConfig {
            first_delay: Duration::from_secs(1),
            factor: 2,
            cap: Duration::from_secs(60),
            stable_after: Duration::from_secs(30),
        }
    }
}

/// Reconnect state of one host channel.
#[derive(Clone, Copy, Debug)]
pub struct Reconnect {
    delays: ConnectorConfig,
    stable_after: Duration,
    failures: u32,
    connected_at: Option<Instant>,
}

impl Reconnect {
    /// A channel that has not failed yet. Values out of the capture loop's
    /// bounds are clamped as [`ConnectorConfig::clamped`] does.
    #[must_use]
    pub fn new(config: ReconnectConfig) -> Self {
        let (delays, _) = ConnectorConfig {
            max_attempts: u32::MAX,
            delay: config.first_delay,
            backoff: Backoff::Exponential {
                factor: config.factor,
                cap: config.cap,
            },
        }
        .clamped();
        Reconnect {
            delays,
            stable_after: config.stable_after,
            failures: 0,
            connected_at: None,
        }
    }

    /// The handshake completed at `now`.
    pub fn on_connected(&mut self, now: Instant) {
        self.connected_at = Some(now);
    }

    /// The connection closed (or a connect attempt failed) at `now`: returns
    /// how long to wait before the next attempt.
    pub fn on_closed(&mut self, now: Instant) -> Duration {
        if let Some(at) = self.connected_at.take()
            && now.saturating_duration_since(at) >= self.stable_after
        {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        self.delays.delay_after(self.failures)
    }

    /// Consecutive failures since the last stable connection.
    #[must_use]
    pub const fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Instant {
        Instant::from_millis(s * 1000)
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let mut r = Reconnect::new(ReconnectConfig::default());
        let got: [u64; 8] = core::array::from_fn(|i| r.on_closed(secs(i as u64)).as_secs());
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(r.failures(), 8);
    }

    #[test]
    fn stable_connection_resets_growth() {
        let mut r = Reconnect::new(ReconnectConfig::default());
        for i in 0..5 {
            r.on_closed(secs(i));
        }
        r.on_connected(secs(100));
        assert_eq!(r.on_closed(secs(131)), Duration::from_secs(1));
        assert_eq!(r.failures(), 1);
    }

    #[test]
    fn flapping_host_keeps_growing() {
        let mut r = Reconnect::new(ReconnectConfig::default());
        let mut last = Duration::ZERO;
        for i in 0..6 {
            r.on_connected(secs(i * 10));
            last = r.on_closed(secs(i * 10 + 1));
        }
        assert_eq!(last, Duration::from_secs(32));
    }

    #[test]
    fn out_of_range_config_is_clamped() {
        let mut r = Reconnect::new(ReconnectConfig {
            first_delay: Duration::ZERO,
            factor: 1000,
            cap: Duration::from_secs(86_400),
            stable_after: Duration::ZERO,
        });
        let first = r.on_closed(secs(0));
        assert!(first >= Duration::from_millis(1), "{first:?}");
        for i in 1..40 {
            assert!(r.on_closed(secs(i)) <= Duration::from_secs(300));
        }
    }
}
