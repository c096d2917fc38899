//! Fixed-capacity verdict cache: no allocation, O(1) lookup, insert and
//! invalidation.
//!
//! # Structure
//!
//! A set-associative table: `N` slots grouped into `N / 8` sets of
//! [`WAYS`] = 8 slots. The set of a key is chosen by hashing **only the file
//! identity** (`volume_serial` + `file_id`, see [`FileKey::identity_hash`]),
//! never its size or last-write time. Hence every version of a file lives in
//! one set, and:
//!
//! * lookup scans at most 8 slots for the exact key;
//! * insert first reuses the slot holding *any* version of the same file (so a
//!   set never holds two versions of one file), then an empty slot, then an
//!   expired one, and otherwise evicts the least-recently-used slot of the set
//!   (true LRU via a 32-bit use stamp per slot);
//! * [`VerdictCache::invalidate`] scans one set: O(1), and removes every entry
//!   of the file whatever its size/time.
//!
//! # Why hand-written
//!
//! The no_std map crates (e.g. `heapless::FnvIndexMap`) offer no eviction, no
//! TTL and no "remove every key of this file" operation, and would still need
//! a wrapper with the same amount of logic; a small set-associative array is
//! simpler to audit in a kernel driver and has no dependency.
//!
//! # Memory
//!
//! One slot is 64 bytes, so `VerdictCache<4096>` is 256 KiB. [`VerdictCache::new`]
//! is a `const fn`, so the driver can place the cache in a `static` (behind its
//! own lock) or in pool memory, instead of on a kernel stack.

use core::fmt;
use core::time::Duration;

use crate::file_key::{FileKey, identity_hash};
use crate::time::Instant;

/// Slots per set.
pub const WAYS: usize = 8;

/// A cached scan result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CachedVerdict {
    /// The scanner allowed the file.
    Allow,
    /// The scanner denied the file.
    Deny {
        /// Scanner-defined threat identifier (0 = unspecified), for logging.
        threat_id: u32,
    },
}

impl CachedVerdict {
    /// `true` for [`CachedVerdict::Allow`].
    #[must_use]
    pub const fn is_allow(self) -> bool {
        matches!(self, CachedVerdict::Allow)
    }
}

/// Counters since creation (not reset by [`VerdictCache::clear`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups that returned a verdict.
    pub hits: u64,
    /// Lookups that found nothing usable (absent or expired).
    pub misses: u64,
    /// Calls to [`VerdictCache::insert`].
    pub insertions: u64,
    /// Live entries pushed out by an insert into a full set.
    pub evictions: u64,
    /// Entries removed by [`VerdictCache::invalidate`] /
    /// [`VerdictCache::invalidate_volume`].
    pub invalidations: u64,
    /// Entries dropped because their TTL had passed.
    pub expirations: u64,
}

/// What an insert did to make room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertOutcome {
    /// Stored in a free (empty or expired) slot.
    Stored,
    /// Overwrote the entry of the same file (same or another version).
    Replaced,
    /// Evicted the least-recently-used entry of the set, whose key is given.
    Evicted(FileKey),
}

const EMPTY: u8 = 0;
const ALLOW: u8 = 1;
const DENY: u8 = 2;
const NEVER: u64 = u64::MAX;

#[derive(Clone, Copy)]
struct Slot {
    key: FileKey,
    /// Expiry in nanoseconds ([`Instant`]), `NEVER` = no TTL.
    expires: u64,
    threat_id: u32,
    /// Value of the cache's tick at the last use; larger age = older.
    stamp: u32,
    state: u8,
}

impl Slot {
    const EMPTY: Slot = Slot {
        key: FileKey::new(0, [0; 16], 0, 0),
        expires: NEVER,
        threat_id: 0,
        stamp: 0,
        state: EMPTY,
    };

    fn verdict(&self) -> CachedVerdict {
        if self.state == DENY {
            CachedVerdict::Deny {
                threat_id: self.threat_id,
            }
        } else {
            CachedVerdict::Allow
        }
    }

    fn expired(&self, now: Instant) -> bool {
        self.state != EMPTY && self.expires != NEVER && now.as_nanos() >= self.expires
    }
}

/// A verdict cache of `N` entries. `N` must be a non-zero multiple of [`WAYS`]
/// (checked at compile time). See the [module docs](self).
#[derive(Clone)]
pub struct VerdictCache<const N: usize> {
    slots: [Slot; N],
    tick: u32,
    len: usize,
    stats: CacheStats,
}

impl<const N: usize> Default for VerdictCache<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> fmt::Debug for VerdictCache<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerdictCache")
            .field("capacity", &N)
            .field("len", &self.len)
            .field("stats", &self.stats)
            .finish()
    }
}

impl<const N: usize> VerdictCache<N> {
    const SETS: usize = {
        assert!(
            N >= WAYS && N.is_multiple_of(WAYS),
            "VerdictCache capacity must be a non-zero multiple of WAYS (8)"
        );
        N / WAYS
    };

    /// An empty cache. `const`, so it can initialise a `static`.
    #[must_use]
    pub const fn new() -> Self {
        let _ = Self::SETS;
        VerdictCache {
            slots: [Slot::EMPTY; N],
            tick: 0,
            len: 0,
            stats: CacheStats {
                hits: 0,
                misses: 0,
                insertions: 0,
                evictions: 0,
                invalidations: 0,
                expirations: 0,
            },
        }
    }

    /// Maximum number of entries (`N`).
    #[must_use]
    pub const fn capacity(&self) -> usize {
        N
    }

    /// Entries currently stored (expired ones count until touched).
    #[must_use]
    pub const fn len(&self) -> usize {
        self.len
    }

    /// `true` if no entry is stored.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The counters.
    #[must_use]
    pub const fn stats(&self) -> CacheStats {
        self.stats
    }

    fn set_range(volume_serial: u64, file_id: &[u8; 16]) -> core::ops::Range<usize> {
        let h = identity_hash(volume_serial, file_id);
        // Multiply-shift maps the hash onto 0..SETS without a division.
        let set = ((u128::from(h) * Self::SETS as u128) >> 64) as usize;
        let start = set * WAYS;
        start..start + WAYS
    }

    fn next_tick(&mut self) -> u32 {
        self.tick = self.tick.wrapping_add(1);
        self.tick
    }

    fn remove_at(&mut self, i: usize) {
        self.slots[i].state = EMPTY;
        self.len -= 1;
    }

    /// Looks `key` up at time `now`; counts a hit or a miss and marks the entry
    /// recently used. An entry whose TTL has passed is dropped and is a miss.
    pub fn get(&mut self, key: &FileKey, now: Instant) -> Option<CachedVerdict> {
        let range = Self::set_range(key.volume_serial, &key.file_id);
        for i in range {
            let s = &self.slots[i];
            if s.state != EMPTY && s.key == *key {
                if s.expired(now) {
                    self.remove_at(i);
                    self.stats.expirations += 1;
                    break;
                }
                let v = s.verdict();
                let t = self.next_tick();
                self.slots[i].stamp = t;
                self.stats.hits += 1;
                return Some(v);
            }
        }
        self.stats.misses += 1;
        None
    }

    /// Looks `key` up without touching statistics or recency.
    #[must_use]
    pub fn peek(&self, key: &FileKey, now: Instant) -> Option<CachedVerdict> {
        self.slots[Self::set_range(key.volume_serial, &key.file_id)]
            .iter()
            .find(|s| s.state != EMPTY && s.key == *key && !s.expired(now))
            .map(Slot::verdict)
    }

    /// Stores `verdict` for `key` at `now`, valid for `ttl` (`None` = until
    /// invalidated or evicted). Any other version of the same file is replaced.
    pub fn insert(
        &mut self,
        key: FileKey,
        verdict: CachedVerdict,
        now: Instant,
        ttl: Option<Duration>,
    ) -> InsertOutcome {
        let range = Self::set_range(key.volume_serial, &key.file_id);
        self.stats.insertions += 1;
        let mut same = None;
        let mut free = None;
        let mut expired = None;
        let mut oldest = range.start;
        let mut oldest_age = 0u32;
        for i in range {
            let s = &self.slots[i];
            if s.state == EMPTY {
                free = free.or(Some(i));
                continue;
            }
            if s.key.same_file(&key) {
                same = Some(i);
                break;
            }
            if s.expired(now) {
                expired = expired.or(Some(i));
            }
            let age = self.tick.wrapping_sub(s.stamp);
            if age >= oldest_age {
                oldest_age = age;
                oldest = i;
            }
        }
        let (i, outcome) = if let Some(i) = same {
            (i, InsertOutcome::Replaced)
        } else if let Some(i) = free {
            self.len += 1;
            (i, InsertOutcome::Stored)
        } else if let Some(i) = expired {
            self.stats.expirations += 1;
            (i, InsertOutcome::Stored)
        } else {
            self.stats.evictions += 1;
            (oldest, InsertOutcome::Evicted(self.slots[oldest].key))
        };
        let stamp = self.next_tick();
        let expires = match ttl {
            Some(d) => now.checked_add(d).map_or(NEVER, Instant::as_nanos),
            None => NEVER,
        };
        let (state, threat_id) = match verdict {
            CachedVerdict::Allow => (ALLOW, 0),
            CachedVerdict::Deny { threat_id } => (DENY, threat_id),
        };
        self.slots[i] = Slot {
            key,
            expires,
            threat_id,
            stamp,
            state,
        };
        outcome
    }

    /// Removes every entry of the file (`volume_serial`, `file_id`), whatever
    /// its size and last-write time. Call on write and on close-after-write.
    /// Returns the number of entries removed (0 or 1 by construction).
    pub fn invalidate(&mut self, volume_serial: u64, file_id: &[u8; 16]) -> usize {
        let mut removed = 0;
        for i in Self::set_range(volume_serial, file_id) {
            let s = &self.slots[i];
            if s.state != EMPTY && s.key.volume_serial == volume_serial && s.key.file_id == *file_id
            {
                self.remove_at(i);
                removed += 1;
            }
        }
        self.stats.invalidations += removed as u64;
        removed
    }

    /// Removes every entry of a volume (dismount, or "flush volume" from the
    /// host). O(N): a full scan.
    pub fn invalidate_volume(&mut self, volume_serial: u64) -> usize {
        let mut removed = 0;
        for i in 0..N {
            if self.slots[i].state != EMPTY && self.slots[i].key.volume_serial == volume_serial {
                self.remove_at(i);
                removed += 1;
            }
        }
        self.stats.invalidations += removed as u64;
        removed
    }

    /// Removes every entry (e.g. after a scanner signature update). Statistics
    /// are kept. O(N).
    pub fn clear(&mut self) {
        for s in &mut self.slots {
            s.state = EMPTY;
        }
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::boxed::Box;
    use std::collections::HashMap;

    fn key(id: u64, size: u64, t: u64) -> FileKey {
        FileKey::with_u64_id(7, id, size, t)
    }

    const T0: Instant = Instant::ZERO;

    #[test]
    fn slot_is_one_cache_line() {
        assert_eq!(core::mem::size_of::<Slot>(), 64);
    }

    #[test]
    fn hit_miss_and_modified_file_misses() {
        let mut c = VerdictCache::<64>::new();
        let k = key(1, 100, 5);
        assert_eq!(c.get(&k, T0), None);
        assert_eq!(
            c.insert(k, CachedVerdict::Allow, T0, None),
            InsertOutcome::Stored
        );
        assert_eq!(c.get(&k, T0), Some(CachedVerdict::Allow));
        // same file, new size / mtime: miss
        assert_eq!(c.get(&key(1, 101, 5), T0), None);
        assert_eq!(c.get(&key(1, 100, 6), T0), None);
        // new version replaces the old one
        assert_eq!(
            c.insert(
                key(1, 101, 6),
                CachedVerdict::Deny { threat_id: 9 },
                T0,
                None
            ),
            InsertOutcome::Replaced
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c.get(&k, T0), None);
        assert_eq!(
            c.peek(&key(1, 101, 6), T0),
            Some(CachedVerdict::Deny { threat_id: 9 })
        );
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.insertions), (1, 4, 2));
    }

    #[test]
    fn invalidate_removes_every_version() {
        let mut c = VerdictCache::<64>::new();
        c.insert(key(1, 1, 1), CachedVerdict::Allow, T0, None);
        c.insert(key(2, 1, 1), CachedVerdict::Allow, T0, None);
        assert_eq!(c.invalidate(7, &key(1, 0, 0).file_id), 1);
        assert_eq!(c.invalidate(7, &key(1, 0, 0).file_id), 0);
        assert_eq!(c.get(&key(1, 1, 1), T0), None);
        assert_eq!(c.get(&key(2, 1, 1), T0), Some(CachedVerdict::Allow));
        assert_eq!(c.stats().invalidations, 1);
        c.insert(
            FileKey::with_u64_id(8, 1, 1, 1),
            CachedVerdict::Allow,
            T0,
            None,
        );
        assert_eq!(c.invalidate_volume(7), 1);
        assert_eq!(c.len(), 1);
        c.clear();
        assert!(c.is_empty());
    }

    #[test]
    fn ttl_expires() {
        let mut c = VerdictCache::<8>::new();
        let k = key(1, 1, 1);
        c.insert(k, CachedVerdict::Allow, T0, Some(Duration::from_secs(10)));
        assert_eq!(
            c.get(&k, Instant::from_millis(9_999)),
            Some(CachedVerdict::Allow)
        );
        assert_eq!(c.peek(&k, Instant::from_millis(10_000)), None);
        assert_eq!(c.get(&k, Instant::from_millis(10_000)), None);
        assert_eq!(c.stats().expirations, 1);
        assert!(c.is_empty());
        // absurd TTL saturates to "never"
        c.insert(k, CachedVerdict::Allow, Instant::MAX, Some(Duration::MAX));
        assert_eq!(c.get(&k, Instant::MAX), Some(CachedVerdict::Allow));
    }

    #[test]
    fn lru_eviction_within_a_set() {
        // one set: every key shares it
        let mut c = VerdictCache::<8>::new();
        for id in 0..8 {
            assert_eq!(
                c.insert(key(id, 0, 0), CachedVerdict::Allow, T0, None),
                InsertOutcome::Stored
            );
        }
        // touch 0 so 1 becomes the oldest
        assert!(c.get(&key(0, 0, 0), T0).is_some());
        assert_eq!(
            c.insert(key(100, 0, 0), CachedVerdict::Allow, T0, None),
            InsertOutcome::Evicted(key(1, 0, 0))
        );
        assert_eq!(c.get(&key(1, 0, 0), T0), None);
        assert!(c.get(&key(0, 0, 0), T0).is_some());
        assert_eq!(c.stats().evictions, 1);
        assert_eq!(c.len(), 8);
        // an expired entry is reused before evicting a live one
        c.insert(
            key(200, 0, 0),
            CachedVerdict::Allow,
            T0,
            Some(Duration::from_secs(1)),
        );
        let later = Instant::from_millis(2000);
        assert_eq!(
            c.insert(key(300, 0, 0), CachedVerdict::Allow, later, None),
            InsertOutcome::Stored
        );
        assert_eq!(c.stats().evictions, 2);
    }

    #[test]
    fn big_cache_constructs_without_blowing_the_stack() {
        let mut c: Box<VerdictCache<4096>> = Box::default();
        for id in 0..3000 {
            c.insert(key(id, 1, 1), CachedVerdict::Allow, T0, None);
        }
        let found = (0..3000)
            .filter(|id| c.get(&key(*id, 1, 1), T0).is_some())
            .count();
        // 3000 keys in 512 sets of 8: a few sets overflow, most keys stay.
        assert!(found > 2800, "{found}");
        assert_eq!(core::mem::size_of::<VerdictCache<4096>>(), 4096 * 64 + 64);
        static _STATIC: VerdictCache<4096> = VerdictCache::new();
        // and on a plain (2 MiB) test-thread stack
        std::thread::spawn(|| {
            let c = VerdictCache::<4096>::new();
            assert_eq!(c.capacity(), 4096);
        })
        .join()
        .unwrap();
    }

    #[derive(Debug, Clone)]
    enum Op {
        Get(u8, u8),
        Insert(u8, u8, bool, Option<u8>),
        Invalidate(u8),
        Advance(u8),
        Clear,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..40, 0u8..3).prop_map(|(f, v)| Op::Get(f, v)),
            4 => (0u8..40, 0u8..3, any::<bool>(), proptest::option::of(1u8..20)).prop_map(|(f, v, d, t)| Op::Insert(f, v, d, t)),
            1 => (0u8..40).prop_map(Op::Invalidate),
            1 => (0u8..10).prop_map(Op::Advance),
            1 => Just(Op::Clear),
        ]
    }

    proptest! {
        #[test]
        fn matches_model(ops in proptest::collection::vec(op(), 1..300)) {
            let mut c = VerdictCache::<16>::new();
            // model: file id -> (version, verdict, expiry nanos)
            let mut model: HashMap<u8, (u8, CachedVerdict, u64)> = HashMap::new();
            let mut now = Instant::ZERO;
            let k = |f: u8, v: u8| FileKey::with_u64_id(u64::from(f % 3), u64::from(f), u64::from(v), 0);
            for o in ops {
                match o {
                    Op::Get(f, v) => {
                        let got = c.get(&k(f, v), now);
                        if let Some(g) = got {
                            let (mv, mverdict, exp) = model.get(&f).copied().expect("cache returned a verdict the model lacks");
                            prop_assert_eq!(mv, v);
                            prop_assert_eq!(mverdict, g);
                            prop_assert!(now.as_nanos() < exp);
                        }
                    }
                    Op::Insert(f, v, deny, ttl) => {
                        let verdict = if deny { CachedVerdict::Deny { threat_id: u32::from(f) } } else { CachedVerdict::Allow };
                        let ttl = ttl.map(|s| Duration::from_secs(u64::from(s)));
                        c.insert(k(f, v), verdict, now, ttl);
                        let exp = ttl.map_or(u64::MAX, |d| (now + d).as_nanos());
                        model.insert(f, (v, verdict, exp));
                        // a just-inserted entry is always found
                        prop_assert_eq!(c.peek(&k(f, v), now), Some(verdict));
                    }
                    Op::Invalidate(f) => {
                        c.invalidate(u64::from(f % 3), &k(f, 0).file_id);
                        model.remove(&f);
                        for v in 0..3 {
                            prop_assert_eq!(c.peek(&k(f, v), now), None);
                        }
                    }
                    Op::Advance(s) => now += Duration::from_secs(u64::from(s)),
                    Op::Clear => { c.clear(); model.clear(); }
                }
                prop_assert!(c.len() <= 16);
                let st = c.stats();
                prop_assert!(st.hits + st.misses > 0 || st.insertions > 0 || c.is_empty());
            }
        }
    }
}
