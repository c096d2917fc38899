//! Verdict caches shared by every connection.
//!
//! * [`IdentityCache`]: per guest, keyed by the file's identity (volume
//!   serial, file id, size, last-write time): a reopen of an unchanged file
//!   costs no content transfer. Keys include the guest's
//!   [scope](crate::connection::GuestId::cache_scope) because file ids of
//!   different guests collide (cloned VMs share them), and a guest must not
//!   be able to plant verdicts for another one.
//! * [`ContentCache`]: across guests, keyed by the BLAKE3 of the content
//!   ([`ContentKey`]), computed by the host from the bytes it read: a scan
//!   result depends only on the bytes and the signatures, so the same DLL
//!   opened in a thousand cloned VMs runs through the engines once. (A
//!   guest never supplies the key: it could then claim another content's
//!   verdict.)
//!
//! Both are bounded (second-chance "CLOCK" eviction, an LRU approximation
//! that needs no list surgery on hits), expire entries after a TTL, and are
//! invalidated by signature reloads: every entry records the
//! [`SignatureSet`](crate::signatures::SignatureSet) generation it was
//! computed with and a lookup with another generation misses.
//!
//! Why our own sharded `Mutex<HashMap>` rather than a cache crate: the needs
//! are small (get / insert / bounded / TTL / generation check), a hit is one
//! short critical section on one of 16 shards, and it keeps the dependency
//! tree of a security service minimal.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use thinagent_protocol::FileIdentity;

pub use crate::scan::ContentKey;

/// A cached scan result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedVerdict {
    /// The threat found; `None` = clean.
    pub threat: Option<Arc<str>>,
    /// Engine that found it (`None` when clean).
    pub engine: Option<&'static str>,
    /// Signature-set generation it was computed with.
    pub generation: u64,
}

impl CachedVerdict {
    /// A clean result.
    pub fn clean(generation: u64) -> Self {
        Self {
            threat: None,
            engine: None,
            generation,
        }
    }

    /// A detection.
    pub fn infected(threat: &str, engine: &'static str, generation: u64) -> Self {
        Self {
            threat: Some(Arc::from(threat)),
            engine: Some(engine),
            generation,
        }
    }
}

/// Bounds of one cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Most entries kept (0 disables the cache).
    pub capacity: usize,
    /// How long an entry stays valid.
    pub ttl: Duration,
}

const SHARDS: usize = 16;

#[derive(Debug)]
struct Slot<V> {
    value: V,
    expires: Instant,
    referenced: bool,
}

#[derive(Debug)]
struct Shard<K, V> {
    map: HashMap<K, Slot<V>>,
    /// Keys in insertion order for CLOCK; may hold keys already removed.
    order: VecDeque<K>,
    capacity: usize,
}

impl<K: Hash + Eq + Clone, V: Clone> Shard<K, V> {
    fn get(&mut self, key: &K, now: Instant) -> Option<V> {
        let slot = self.map.get_mut(key)?;
        if now >= slot.expires {
            self.map.remove(key);
            return None;
        }
        slot.referenced = true;
        Some(slot.value.clone())
    }

    fn insert(&mut self, key: K, value: V, expires: Instant) {
        if self.capacity == 0 {
            return;
        }
        if let Some(slot) = self.map.get_mut(&key) {
            *slot = Slot {
                value,
                expires,
                referenced: true,
            };
            return;
        }
        while self.map.len() >= self.capacity {
            let Some(victim) = self.order.pop_front() else {
                break;
            };
            match self.map.get_mut(&victim) {
                Some(slot) if slot.referenced => {
                    slot.referenced = false;
                    self.order.push_back(victim);
                }
                Some(_) => {
                    self.map.remove(&victim);
                }
                None => {}
            }
        }
        self.map.insert(
            key.clone(),
            Slot {
                value,
                expires,
                referenced: false,
            },
        );
        self.order.push_back(key);
        if self.order.len() > self.capacity.saturating_mul(2).max(16) {
            let map = &self.map;
            let mut seen = std::collections::HashSet::new();
            self.order
                .retain(|k| map.contains_key(k) && seen.insert(k.clone()));
        }
    }

    fn remove(&mut self, key: &K) {
        self.map.remove(key);
    }
}

/// A bounded, sharded, thread-safe map with TTL and CLOCK eviction.
#[derive(Debug)]
struct ShardedCache<K, V> {
    shards: Vec<Mutex<Shard<K, V>>>,
    ttl: Duration,
}

impl<K: Hash + Eq + Clone, V: Clone> ShardedCache<K, V> {
    fn new(limits: CacheLimits) -> Self {
        let per_shard = limits.capacity.div_ceil(SHARDS);
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::new(),
                        order: VecDeque::new(),
                        capacity: per_shard,
                    })
                })
                .collect(),
            ttl: limits.ttl,
        }
    }

    fn shard(&self, key: &K) -> std::sync::MutexGuard<'_, Shard<K, V>> {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        let i = (h.finish() as usize) % SHARDS;
        // A poisoned lock only means another thread panicked mid-update of a
        // cache; the data is still a valid map.
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, key: &K, now: Instant) -> Option<V> {
        self.shard(key).get(key, now)
    }

    fn insert(&self, key: K, value: V, now: Instant) {
        let expires = now.checked_add(self.ttl).unwrap_or(now);
        self.shard(&key).insert(key, value, expires);
    }

    fn remove(&self, key: &K) {
        self.shard(key).remove(key);
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).map.len())
            .sum()
    }
}

/// Key of the [`IdentityCache`]: the guest's scope and the file identity.
pub type IdentityKey = (Arc<str>, FileIdentity);

/// Per-guest verdicts by file identity.
#[derive(Debug)]
pub struct IdentityCache(ShardedCache<IdentityKey, CachedVerdict>);

impl IdentityCache {
    /// An empty cache.
    pub fn new(limits: CacheLimits) -> Self {
        Self(ShardedCache::new(limits))
    }

    /// The verdict for `file` in guest scope `scope`, if cached with
    /// signature generation `generation` and not expired.
    pub fn get(
        &self,
        scope: &Arc<str>,
        file: &FileIdentity,
        generation: u64,
        now: Instant,
    ) -> Option<CachedVerdict> {
        let key = (Arc::clone(scope), *file);
        let v = self.0.get(&key, now)?;
        if v.generation == generation {
            Some(v)
        } else {
            self.0.remove(&key);
            None
        }
    }

    /// Remembers `verdict` for `file` in `scope`.
    pub fn insert(
        &self,
        scope: &Arc<str>,
        file: &FileIdentity,
        verdict: CachedVerdict,
        now: Instant,
    ) {
        self.0.insert((Arc::clone(scope), *file), verdict, now);
    }

    /// Entries held (including expired ones not yet evicted).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Cross-guest verdicts by [`ContentKey`] (BLAKE3 of the content).
#[derive(Debug)]
pub struct ContentCache(ShardedCache<ContentKey, CachedVerdict>);

impl ContentCache {
    /// An empty cache.
    pub fn new(limits: CacheLimits) -> Self {
        Self(ShardedCache::new(limits))
    }

    /// The verdict for content with key `key`, if cached with `generation`
    /// and not expired.
    pub fn get(&self, key: &ContentKey, generation: u64, now: Instant) -> Option<CachedVerdict> {
        let v = self.0.get(key, now)?;
        if v.generation == generation {
            Some(v)
        } else {
            self.0.remove(key);
            None
        }
    }

    /// Remembers `verdict` for content with key `key`.
    pub fn insert(&self, key: ContentKey, verdict: CachedVerdict, now: Instant) {
        self.0.insert(key, verdict, now);
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Both caches, as the service shares them.
#[derive(Debug)]
pub struct VerdictCaches {
    /// Per-guest identity cache.
    pub identity: IdentityCache,
    /// Cross-guest content cache.
    pub content: ContentCache,
}

impl VerdictCaches {
    /// Caches with these bounds.
    pub fn new(identity: CacheLimits, content: CacheLimits) -> Self {
        Self {
            identity: IdentityCache::new(identity),
            content: ContentCache::new(content),
        }
    }
}

impl Default for VerdictCaches {
    /// 262 144 identities and 65 536 contents, for 10 minutes each.
    fn default() -> Self {
        let ttl = Duration::from_secs(600);
        Self::new(
            CacheLimits {
                capacity: 1 << 18,
                ttl,
            },
            CacheLimits {
                capacity: 1 << 16,
                ttl,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(n: u64) -> FileIdentity {
        FileIdentity {
            volume_serial: 1,
            file_id: [n as u8; 16],
            size: n,
            last_write_time: 7,
        }
    }

    #[test]
    fn identity_hit_needs_same_scope_identity_and_generation() {
        let c = IdentityCache::new(CacheLimits {
            capacity: 100,
            ttl: Duration::from_secs(60),
        });
        let now = Instant::now();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("cid:3"), Arc::from("cid:4"));
        c.insert(&a, &file(1), CachedVerdict::infected("X", "hash", 1), now);
        assert_eq!(
            c.get(&a, &file(1), 1, now).unwrap().threat.as_deref(),
            Some("X")
        );
        assert_eq!(c.get(&b, &file(1), 1, now), None, "other guest");
        let mut changed = file(1);
        changed.last_write_time += 1;
        assert_eq!(c.get(&a, &changed, 1, now), None, "file changed");
        assert_eq!(c.get(&a, &file(1), 2, now), None, "signatures reloaded");
        assert_eq!(c.get(&a, &file(1), 1, now), None, "stale entry dropped");
    }

    #[test]
    fn entries_expire() {
        let c = ContentCache::new(CacheLimits {
            capacity: 10,
            ttl: Duration::from_secs(5),
        });
        let now = Instant::now();
        c.insert([1; 32], CachedVerdict::clean(0), now);
        assert!(c.get(&[1; 32], 0, now + Duration::from_secs(4)).is_some());
        assert!(c.get(&[1; 32], 0, now + Duration::from_secs(5)).is_none());
    }

    #[test]
    fn bounded_and_recently_used_survive() {
        let c = ContentCache::new(CacheLimits {
            capacity: 64,
            ttl: Duration::from_secs(60),
        });
        let now = Instant::now();
        let hot = [0xff; 32];
        c.insert(hot, CachedVerdict::clean(0), now);
        for i in 0..10_000u32 {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_le_bytes());
            c.insert(k, CachedVerdict::clean(0), now);
            if i % 4 == 0 {
                assert!(c.get(&hot, 0, now).is_some(), "hot entry evicted at {i}");
            }
        }
        assert!(c.len() <= 64 + SHARDS, "len {}", c.len());
    }

    #[test]
    fn zero_capacity_disables() {
        let c = ContentCache::new(CacheLimits {
            capacity: 0,
            ttl: Duration::from_secs(60),
        });
        c.insert([1; 32], CachedVerdict::clean(0), Instant::now());
        assert!(c.is_empty());
    }
}
