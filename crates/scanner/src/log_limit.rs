//! Rate limiting of log lines that peers can cause.
//!
//! Any peer can connect, disconnect, send garbage or open EICAR in a loop;
//! if every such event were a log line, one peer could flood the journal
//! and bury everything else. [`LogLimiter`] lets the first
//! [`LogLimits::burst`] lines of one kind from one peer through in each
//! window, counts the rest, and when the window ends gives a summary
//! ("N more like this in the last 10 s") for the caller to log. The audit
//! log and the metrics still see every event: only journal lines are
//! summarised.
//!
//! Sans-IO: it takes the time and returns decisions; the service logs. The
//! table is bounded: past [`LogLimits::max_keys`] peers, new ones share one
//! "other peers" entry per kind.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::connection::PeerIdentity;

/// Bounds of a [`LogLimiter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// Length of one window.
    pub window: Duration,
    /// Lines of one kind from one peer let through per window.
    pub burst: u32,
    /// Most (peer, kind) entries tracked.
    pub max_keys: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(10),
            burst: 5,
            max_keys: 4096,
        }
    }
}

/// Lines that were held back in one window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppressed<K> {
    /// The peer (`None`: lines not tied to one peer, or the shared entry of
    /// peers beyond [`LogLimits::max_keys`]).
    pub peer: Option<PeerIdentity>,
    /// The kind of line.
    pub kind: K,
    /// How many were held back.
    pub count: u64,
    /// The window they were held back in.
    pub window: Duration,
}

impl<K> Suppressed<K> {
    /// "N more like this in the last 10 s".
    pub fn message(&self) -> String {
        format!(
            "{} more like this in the last {} s",
            self.count,
            self.window.as_secs_f64().ceil()
        )
    }
}

#[derive(Debug)]
struct Entry {
    started: Instant,
    emitted: u32,
    held: u64,
}

/// Per (peer, kind) windows of log lines; `K` names the kinds of line.
#[derive(Debug)]
pub struct LogLimiter<K> {
    limits: LogLimits,
    entries: HashMap<(Option<PeerIdentity>, K), Entry>,
}

impl<K: Copy + Eq + Hash> LogLimiter<K> {
    /// A limiter with these bounds.
    pub fn new(limits: LogLimits) -> Self {
        Self {
            limits,
            entries: HashMap::new(),
        }
    }

    /// Whether a line of `kind` about `peer` may be logged now. When a
    /// window of this key just ended with lines held back, its summary comes
    /// back too (log it first).
    pub fn check(
        &mut self,
        peer: Option<&PeerIdentity>,
        kind: K,
        now: Instant,
    ) -> (bool, Option<Suppressed<K>>) {
        let mut key = (peer.cloned(), kind);
        if !self.entries.contains_key(&key) && self.entries.len() >= self.limits.max_keys {
            // Full (the periodic flush frees ended windows): share the
            // kind's "other peers" entry; kinds are few, so this stays bounded.
            key.0 = None;
        }
        let window = self.limits.window;
        let entry = self.entries.entry(key.clone()).or_insert(Entry {
            started: now,
            emitted: 0,
            held: 0,
        });
        let mut summary = None;
        if now.saturating_duration_since(entry.started) >= window {
            if entry.held > 0 {
                summary = Some(Suppressed {
                    peer: key.0.clone(),
                    kind,
                    count: entry.held,
                    window,
                });
            }
            *entry = Entry {
                started: now,
                emitted: 0,
                held: 0,
            };
        }
        if entry.emitted < self.limits.burst {
            entry.emitted += 1;
            (true, summary)
        } else {
            entry.held += 1;
            (false, summary)
        }
    }

    /// Ends every window older than the window length: returns the
    /// summaries of those that held lines back and forgets them all (call it
    /// periodically, so a flood that stops is still summarised).
    pub fn flush(&mut self, now: Instant) -> Vec<Suppressed<K>> {
        let window = self.limits.window;
        let mut out = Vec::new();
        self.entries.retain(|(peer, kind), e| {
            if now.saturating_duration_since(e.started) < window {
                return true;
            }
            if e.held > 0 {
                out.push(Suppressed {
                    peer: peer.clone(),
                    kind: *kind,
                    count: e.held,
                    window,
                });
            }
            false
        });
        out
    }

    /// Summaries of everything held back so far, ended or not (at
    /// shutdown); an open window's summary covers the time it has run.
    pub fn drain(&mut self, now: Instant) -> Vec<Suppressed<K>> {
        let window = self.limits.window;
        self.entries
            .drain()
            .filter(|(_, e)| e.held > 0)
            .map(|((peer, kind), e)| Suppressed {
                peer,
                kind,
                count: e.held,
                window: now
                    .saturating_duration_since(e.started)
                    .min(window)
                    .max(Duration::from_secs(1)),
            })
            .collect()
    }

    /// Entries tracked now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(max_keys: usize) -> LogLimiter<&'static str> {
        LogLimiter::new(LogLimits {
            window: Duration::from_secs(10),
            burst: 3,
            max_keys,
        })
    }

    #[test]
    fn a_flood_from_one_peer_gives_a_burst_then_one_summary() {
        let mut l = limiter(16);
        let t0 = Instant::now();
        let peer = PeerIdentity::Vsock(3);
        let other = PeerIdentity::Vsock(4);
        let mut logged = 0;
        for i in 0..1000u64 {
            let now = t0 + Duration::from_millis(i);
            let (ok, summary) = l.check(Some(&peer), "session_closed", now);
            assert!(summary.is_none());
            logged += u32::from(ok);
        }
        assert_eq!(logged, 3);
        // Another peer and another kind are not held back by the flood.
        assert!(l.check(Some(&other), "session_closed", t0).0);
        assert!(l.check(Some(&peer), "protocol_error", t0).0);
        // The window ends: the next line of the key carries the summary.
        let (ok, summary) = l.check(Some(&peer), "session_closed", t0 + Duration::from_secs(11));
        assert!(ok);
        let s = summary.unwrap();
        assert_eq!(s.count, 997);
        assert_eq!(s.message(), "997 more like this in the last 10 s");
        assert_eq!(s.peer, Some(peer));
    }

    #[test]
    fn a_flood_that_stops_is_summarised_by_flush() {
        let mut l = limiter(16);
        let t0 = Instant::now();
        let peer = PeerIdentity::Tcp("127.0.0.2".parse().unwrap());
        for _ in 0..10 {
            l.check(Some(&peer), "garbage", t0);
        }
        assert!(l.flush(t0 + Duration::from_secs(5)).is_empty());
        let s = l.flush(t0 + Duration::from_secs(10));
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].count, 7);
        assert!(l.is_empty());
        // Nothing held back: nothing to say.
        l.check(Some(&peer), "garbage", t0);
        assert!(l.flush(t0 + Duration::from_secs(20)).is_empty());
    }

    #[test]
    fn many_peers_share_one_entry_past_the_bound() {
        let mut l = limiter(4);
        let t0 = Instant::now();
        for cid in 0..100 {
            l.check(Some(&PeerIdentity::Vsock(cid)), "closed", t0);
        }
        assert!(l.len() <= 5, "{}", l.len());
        let held: u64 = l.drain(t0).iter().map(|s| s.count).sum();
        // 4 peers with their own entries (1 line each), the shared entry
        // lets 3 through and holds back the other 93.
        assert_eq!(held, 93);
    }
}
