//! The quarantine store: infected files' bytes kept on the host, with what
//! is known about where they came from (issue 14).
//!
//! **Layout** of `quarantine.dir` (created 0700 if missing):
//!
//! ```text
//! lock                    held (flock) by the process that has the store open
//! objects/<sha256>        one file per distinct content (0600, never executable)
//! entries/<id>.json       one metadata file per quarantined file (0600)
//! tmp/                    files being written; anything left here is torn
//! ```
//!
//! **Content addressed.** An object's name is the SHA-256 of the original
//! bytes (64 lower-case hex digits); two entries with the same bytes (the
//! same malware from two guests) share one object, which is removed when
//! the last entry that holds it is purged. The BLAKE3 of the bytes is
//! recorded too (the scanner's content-cache key).
//!
//! **Objects cannot be run or opened by accident, and other antivirus on the
//! host does not flag them**: mode 0600 without an exec bit, in a 0700
//! directory, and the bytes are masked. An object file is an
//! [`OBJECT_HEADER_LEN`]-byte header followed by the content XORed with a
//! key stream:
//!
//! ```text
//! offset size
//!      0    8  magic "TAQUAR\0\x01"
//!      8    4  format version, u32 little-endian (1)
//!     12    4  header length, u32 LE (88)
//!     16    8  content length, u64 LE
//!     24   32  SHA-256 of the content
//!     56   32  BLAKE3 of the content
//!     88    …  content XOR key stream
//! key stream = BLAKE3 XOF of the 32 SHA-256 bytes, hashed in derive-key mode
//!              with the context "thinagent quarantine v1 content mask"
//! ```
//!
//! The mask is no secret (anyone with this description undoes it): it only
//! keeps a malware's bytes from ever lying on the host's disk as they are.
//! Reading an entry back ([`QuarantineStore::read`]) unmasks it and checks
//! its length, SHA-256 and BLAKE3 against the header and the entry: a
//! changed or cut object is reported as [`QuarantineError::Corrupt`], never
//! returned.
//!
//! **Written atomically**: every file is written to `tmp/`, fsynced, renamed
//! into place, and the directory fsynced; a crash leaves either the old
//! file or the new one, plus at most a torn file in `tmp/`, which the next
//! [`open`](QuarantineStore::open) removes. A put writes the object before
//! the entry, and a purge records the entry as purged before it removes the
//! object: a crash in between leaves an object no entry refers to, removed
//! at the next open (unless some entry file could not be read: then every
//! unreferenced object is kept, since it may be that entry's evidence).
//!
//! **Bounded, never by eviction.** `max_bytes` bounds the distinct content
//! bytes held (each object counted once, by its original length) and
//! `max_entries` the entries that hold content (stored or restored). A put
//! that would pass either limit fails with [`QuarantineError::Full`]: the
//! caller then must not delete the guest's file. Nothing is ever evicted to
//! make room; an admin purges.
//!
//! **States**: `stored` (put), `restored` (an admin restored it to the
//! guest; the bytes stay as evidence until purged), `purged` (content
//! released; the entry stays as a record of what was quarantined).
//!
//! **One process** has a store open at a time (the `lock` file); a second
//! open fails with [`QuarantineError::Locked`].

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::audit::rfc3339;
use crate::records::{FileRecord, GuestRecord, PathRecord, hex};

/// Magic bytes that open every object file.
pub const OBJECT_MAGIC: &[u8; 8] = b"TAQUAR\0\x01";
/// Object format version.
pub const OBJECT_VERSION: u32 = 1;
/// Bytes of the object header.
pub const OBJECT_HEADER_LEN: usize = 88;
/// The BLAKE3 derive-key context of the content mask.
pub const MASK_CONTEXT: &str = "thinagent quarantine v1 content mask";
/// Version of the entry metadata format (`format` in every entry file).
pub const ENTRY_FORMAT: u32 = 1;

/// Size limits of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuarantineLimits {
    /// Most distinct content bytes held.
    pub max_bytes: u64,
    /// Most entries holding content (stored or restored).
    pub max_entries: u64,
}

/// What became of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryState {
    /// The bytes are held.
    Stored,
    /// An admin restored the file to its guest; the bytes are still held.
    Restored,
    /// The bytes were released; the entry is a record.
    Purged,
}

impl EntryState {
    /// `stored`, `restored`, `purged`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stored => "stored",
            Self::Restored => "restored",
            Self::Purged => "purged",
        }
    }

    /// Whether an entry in this state holds its content.
    pub fn holds_content(self) -> bool {
        !matches!(self, Self::Purged)
    }
}

/// What the caller knows about a file to quarantine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    /// Where it came from.
    pub guest: GuestRecord,
    /// Its path as the guest sent it.
    pub path: PathRecord,
    /// Its identity on the guest.
    pub file: FileRecord,
    /// What was found in it.
    pub threat: String,
    /// The engine that found it.
    pub engine: Option<String>,
}

/// One quarantined file: the metadata file `entries/<id>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// [`ENTRY_FORMAT`].
    pub format: u32,
    /// The entry's id: the time stored and 8 hex digits
    /// (`20261203T174010123Z-3f2a9c1b`); ids sort by time.
    pub id: String,
    /// SHA-256 of the content, hex (the object's name).
    pub sha256: String,
    /// BLAKE3 of the content, hex.
    pub blake3: String,
    /// Content length, bytes.
    pub size: u64,
    /// When it was stored (RFC 3339 UTC).
    pub stored_at: String,
    /// The same, milliseconds since the Unix epoch.
    pub stored_at_ms: u64,
    /// `stored`, `restored`, `purged`.
    pub state: EntryState,
    /// When the state last changed (restored, purged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_changed_at: Option<String>,
    /// The guest it came from.
    pub guest: GuestRecord,
    /// Its path there.
    pub path: PathRecord,
    /// Its file identity there.
    pub file: FileRecord,
    /// What was found in it.
    pub threat: String,
    /// The engine that found it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
}

/// What is held, against the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Distinct content bytes held.
    pub bytes: u64,
    /// Entries holding content.
    pub entries: u64,
    /// Entries in any state (purged ones included).
    pub records: u64,
    /// The limits.
    pub limits: QuarantineLimits,
}

/// What [`QuarantineStore::open`] found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Torn files left in `tmp/` by an interrupted write, removed.
    pub torn_files_removed: usize,
    /// Objects no entry refers to (an interrupted put or purge), removed.
    pub orphans_removed: usize,
    /// Objects no readable entry refers to, kept because some entry file
    /// could not be read.
    pub orphans_kept: usize,
    /// Entry files that could not be read or parsed (left in place).
    pub unreadable_entries: Vec<PathBuf>,
    /// Object files whose header is not valid (left in place).
    pub unreadable_objects: Vec<PathBuf>,
    /// Entries holding content whose object is missing.
    pub missing_content: Vec<String>,
}

/// Why a quarantine operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    /// A file operation failed.
    #[error("quarantine: cannot {action} {}: {source}; check that quarantine.dir is on a writable, not full file system owned by this user", .path.display())]
    Io {
        /// What was being done (`create`, `write`, `read`, `rename`, ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Another process has the store open.
    #[error("quarantine: {} is in use by another process (a running scanner?); stop it, or give another quarantine.dir", .dir.display())]
    Locked {
        /// The store's directory.
        dir: PathBuf,
    },
    /// Storing would pass a limit: nothing was stored.
    #[error(
        "quarantine full: {why}; the file was NOT quarantined (keep the guest's copy); purge old entries or raise quarantine.{key}"
    )]
    Full {
        /// The limit (`max_bytes`, `max_entries`).
        key: &'static str,
        /// The numbers.
        why: String,
    },
    /// No entry has this id.
    #[error("quarantine: no entry {id:?}; list the entries to see their ids")]
    NotFound {
        /// The id asked for.
        id: String,
    },
    /// The entry's content was purged.
    #[error("quarantine: entry {id} was purged {when}: its content is gone")]
    Purged {
        /// The entry.
        id: String,
        /// When (or "earlier").
        when: String,
    },
    /// The entry is not in a state that allows the operation.
    #[error("quarantine: entry {id} is {state}; {why}")]
    BadState {
        /// The entry.
        id: String,
        /// Its state.
        state: &'static str,
        /// What is allowed.
        why: &'static str,
    },
    /// The stored content does not match its hashes (changed on disk, cut,
    /// or not an object file).
    #[error("quarantine: the content of entry {id} (object {}) is corrupt: {why}; it was not returned. Restore the object from a backup or purge the entry", .object.display())]
    Corrupt {
        /// The entry.
        id: String,
        /// The object file.
        object: PathBuf,
        /// What does not match.
        why: String,
    },
}

/// An object's size as held (from its header), by SHA-256 hex.
#[derive(Debug, Clone, Copy)]
struct Object {
    size: u64,
    /// Entries holding content that refer to it.
    refs: u64,
}

/// An open quarantine store. Methods that change it take `&mut self`: the
/// service keeps it behind a mutex, and calls it off the async runtime
/// (every operation does blocking file I/O and fsyncs).
#[derive(Debug)]
pub struct QuarantineStore {
    dir: PathBuf,
    limits: QuarantineLimits,
    /// Holds the `lock` file's lock while open.
    _lock: File,
    entries: BTreeMap<String, Entry>,
    objects: HashMap<String, Object>,
    /// Sum of `objects`' sizes.
    bytes: u64,
    /// Entries holding content.
    live: u64,
    /// Makes temp names and ids unique within this process.
    counter: u64,
    report: OpenReport,
}

impl QuarantineStore {
    /// Opens (creating if missing) the store in `dir`: removes torn writes,
    /// rebuilds the index from the entry files, removes orphaned objects
    /// (see the module docs) and reports what it found in
    /// [`report`](Self::report).
    pub fn open(dir: &Path, limits: QuarantineLimits) -> Result<Self, QuarantineError> {
        for d in [
            dir.to_path_buf(),
            dir.join("objects"),
            dir.join("entries"),
            dir.join("tmp"),
        ] {
            create_private_dir(&d)?;
        }
        let lock_path = dir.join("lock");
        let lock = private_options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(QuarantineError::Locked {
                    dir: dir.to_path_buf(),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err("lock", &lock_path)(e)),
        }
        let mut report = OpenReport::default();
        // Torn writes.
        let tmp = dir.join("tmp");
        for path in list_dir(&tmp)? {
            fs::remove_file(&path).map_err(io_err("remove", &path))?;
            report.torn_files_removed += 1;
        }
        // Entries.
        let mut entries = BTreeMap::new();
        let entries_dir = dir.join("entries");
        for path in list_dir(&entries_dir)? {
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match read_entry(&path) {
                Ok(entry) => {
                    entries.insert(entry.id.clone(), entry);
                }
                Err(why) => {
                    tracing::error!(path = %path.display(), %why, "quarantine: entry file unreadable; left in place, every unreferenced object is kept");
                    report.unreadable_entries.push(path);
                }
            }
        }
        // Objects.
        let mut objects = HashMap::new();
        let objects_dir = dir.join("objects");
        for path in list_dir(&objects_dir)? {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if !is_sha256_hex(name) {
                continue;
            }
            match read_header(&path) {
                Ok(h) if hex(&h.sha256) == name => {
                    objects.insert(
                        name.to_string(),
                        Object {
                            size: h.size,
                            refs: 0,
                        },
                    );
                }
                Ok(_) => {
                    tracing::error!(path = %path.display(), "quarantine: object header names another SHA-256; left in place");
                    report.unreadable_objects.push(path);
                }
                Err(why) => {
                    tracing::error!(path = %path.display(), %why, "quarantine: object unreadable; left in place");
                    report.unreadable_objects.push(path);
                }
            }
        }
        let mut live = 0;
        for e in entries.values() {
            if !e.state.holds_content() {
                continue;
            }
            live += 1;
            match objects.get_mut(&e.sha256) {
                Some(o) => o.refs += 1,
                None => {
                    tracing::error!(id = %e.id, sha256 = %e.sha256, "quarantine: the content of this entry is missing");
                    report.missing_content.push(e.id.clone());
                }
            }
        }
        let orphans: Vec<String> = objects
            .iter()
            .filter(|(_, o)| o.refs == 0)
            .map(|(k, _)| k.clone())
            .collect();
        for sha in orphans {
            if report.unreadable_entries.is_empty() {
                let path = objects_dir.join(&sha);
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
                objects.remove(&sha);
                report.orphans_removed += 1;
            } else {
                report.orphans_kept += 1;
            }
        }
        if report.orphans_removed > 0 || report.torn_files_removed > 0 {
            sync_dir(&objects_dir)?;
            sync_dir(&tmp)?;
        }
        let bytes = objects.values().map(|o| o.size).sum();
        Ok(Self {
            dir: dir.to_path_buf(),
            limits,
            _lock: lock,
            entries,
            objects,
            bytes,
            live,
            counter: 0,
            report,
        })
    }

    /// What the open found and repaired.
    pub fn report(&self) -> &OpenReport {
        &self.report
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What is held, against the limits.
    pub fn usage(&self) -> Usage {
        Usage {
            bytes: self.bytes,
            entries: self.live,
            records: self.entries.len() as u64,
            limits: self.limits,
        }
    }

    /// Every entry, oldest first.
    pub fn list(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// One entry.
    pub fn get(&self, id: &str) -> Result<&Entry, QuarantineError> {
        self.entries
            .get(id)
            .ok_or_else(|| QuarantineError::NotFound { id: id.into() })
    }

    /// Quarantines `content` (at `now`): stores it unless an identical
    /// content is already held, then records the entry. Fails, storing
    /// nothing, when a limit would be passed.
    pub fn put(
        &mut self,
        content: &[u8],
        new: NewEntry,
        now: SystemTime,
    ) -> Result<Entry, QuarantineError> {
        let sha256: [u8; 32] = Sha256::digest(content).into();
        let blake3 = blake3::hash(content);
        let sha_hex = hex(&sha256);
        let size = content.len() as u64;
        if self.live >= self.limits.max_entries {
            return Err(QuarantineError::Full {
                key: "max_entries",
                why: format!(
                    "{} entries are held, quarantine.max_entries = {}",
                    self.live, self.limits.max_entries
                ),
            });
        }
        let is_new = !self.objects.contains_key(&sha_hex);
        let new_bytes = if is_new { size } else { 0 };
        if self.bytes.saturating_add(new_bytes) > self.limits.max_bytes {
            return Err(QuarantineError::Full {
                key: "max_bytes",
                why: format!(
                    "storing {new_bytes} more bytes would pass quarantine.max_bytes = {} \
                     ({} bytes held by {} entries)",
                    self.limits.max_bytes, self.bytes, self.live
                ),
            });
        }
        if is_new {
            let mut body = Vec::with_capacity(OBJECT_HEADER_LEN + content.len());
            body.extend_from_slice(&encode_header(&Header {
                size,
                sha256,
                blake3: *blake3.as_bytes(),
            }));
            let start = body.len();
            body.extend_from_slice(content);
            mask(&sha256, &mut body[start..]);
            let path = self.dir.join("objects").join(&sha_hex);
            self.write_atomic(&path, &body)?;
        }
        let stored_at_ms = unix_ms(now);
        let id = self.new_id(now, &sha256);
        let entry = Entry {
            format: ENTRY_FORMAT,
            id: id.clone(),
            sha256: sha_hex.clone(),
            blake3: blake3.to_hex().to_string(),
            size,
            stored_at: rfc3339(now),
            stored_at_ms,
            state: EntryState::Stored,
            state_changed_at: None,
            guest: new.guest,
            path: new.path,
            file: new.file,
            threat: new.threat,
            engine: new.engine,
        };
        if let Err(e) = self.write_entry(&entry) {
            // The object stays only if another entry holds it.
            if is_new {
                let _ = fs::remove_file(self.dir.join("objects").join(&sha_hex));
            }
            return Err(e);
        }
        let object = self
            .objects
            .entry(sha_hex)
            .or_insert(Object { size, refs: 0 });
        object.refs += 1;
        self.bytes += new_bytes;
        self.live += 1;
        self.entries.insert(id, entry.clone());
        Ok(entry)
    }

    /// The content of entry `id`, unmasked and checked against its length,
    /// SHA-256 and BLAKE3.
    pub fn read(&self, id: &str) -> Result<Vec<u8>, QuarantineError> {
        let entry = self.get(id)?;
        if !entry.state.holds_content() {
            return Err(QuarantineError::Purged {
                id: id.into(),
                when: entry
                    .state_changed_at
                    .clone()
                    .unwrap_or_else(|| "earlier".into()),
            });
        }
        let path = self.dir.join("objects").join(&entry.sha256);
        let corrupt = |why: String| QuarantineError::Corrupt {
            id: id.into(),
            object: path.clone(),
            why,
        };
        let mut body = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut body))
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => corrupt("the object file is missing".into()),
                _ => io_err("read", &path)(e),
            })?;
        let header = decode_header(&body).map_err(corrupt)?;
        if hex(&header.sha256) != entry.sha256 {
            return Err(corrupt(
                "its header names another SHA-256 than the entry".into(),
            ));
        }
        if header.size != entry.size || body.len() - OBJECT_HEADER_LEN != entry.size as usize {
            return Err(corrupt(format!(
                "{} content bytes, the entry says {}",
                body.len() - OBJECT_HEADER_LEN,
                entry.size
            )));
        }
        let mut content = body.split_off(OBJECT_HEADER_LEN);
        mask(&header.sha256, &mut content);
        let sha: [u8; 32] = Sha256::digest(&content).into();
        if sha != header.sha256 {
            return Err(corrupt(format!(
                "the content's SHA-256 is {}, the entry says {}",
                hex(&sha),
                entry.sha256
            )));
        }
        if blake3::hash(&content).to_hex().as_str() != entry.blake3 {
            return Err(corrupt(
                "the content's BLAKE3 does not match the entry".into(),
            ));
        }
        Ok(content)
    }

    /// Records that entry `id` was restored to its guest (at `now`). Its
    /// bytes stay held until it is purged.
    pub fn mark_restored(&mut self, id: &str, now: SystemTime) -> Result<Entry, QuarantineError> {
        let entry = self.get(id)?;
        match entry.state {
            EntryState::Stored => {}
            EntryState::Restored => {
                return Err(QuarantineError::BadState {
                    id: id.into(),
                    state: "restored",
                    why: "it was restored already",
                });
            }
            EntryState::Purged => {
                return Err(QuarantineError::BadState {
                    id: id.into(),
                    state: "purged",
                    why: "its content is gone, there is nothing to restore",
                });
            }
        }
        let mut entry = entry.clone();
        entry.state = EntryState::Restored;
        entry.state_changed_at = Some(rfc3339(now));
        self.write_entry(&entry)?;
        self.entries.insert(id.into(), entry.clone());
        Ok(entry)
    }

    /// Purges entry `id` (at `now`): the entry is kept as a record, its
    /// content removed unless another entry holds it.
    pub fn purge(&mut self, id: &str, now: SystemTime) -> Result<Entry, QuarantineError> {
        let entry = self.get(id)?;
        if !entry.state.holds_content() {
            return Err(QuarantineError::BadState {
                id: id.into(),
                state: "purged",
                why: "it was purged already",
            });
        }
        let mut entry = entry.clone();
        entry.state = EntryState::Purged;
        entry.state_changed_at = Some(rfc3339(now));
        self.write_entry(&entry)?;
        self.entries.insert(id.into(), entry.clone());
        self.live -= 1;
        if let Some(o) = self.objects.get_mut(&entry.sha256) {
            o.refs = o.refs.saturating_sub(1);
            if o.refs == 0 {
                let size = o.size;
                let path = self.dir.join("objects").join(&entry.sha256);
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    // The entry is purged; the object is an orphan the next
                    // open removes.
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "quarantine: cannot remove a purged object; the next open removes it")
                    }
                }
                self.objects.remove(&entry.sha256);
                self.bytes -= size;
                sync_dir(&self.dir.join("objects"))?;
            }
        }
        Ok(entry)
    }

    /// Purges every entry holding content that was stored before `cutoff`
    /// (at `now`); returns them.
    pub fn purge_older_than(
        &mut self,
        cutoff: SystemTime,
        now: SystemTime,
    ) -> Result<Vec<Entry>, QuarantineError> {
        let cutoff_ms = unix_ms(cutoff);
        let ids: Vec<String> = self
            .entries
            .values()
            .filter(|e| e.state.holds_content() && e.stored_at_ms < cutoff_ms)
            .map(|e| e.id.clone())
            .collect();
        ids.iter().map(|id| self.purge(id, now)).collect()
    }

    fn new_id(&mut self, now: SystemTime, sha256: &[u8; 32]) -> String {
        let time: String = rfc3339(now)
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        loop {
            self.counter += 1;
            let mut h = blake3::Hasher::new();
            h.update(sha256);
            h.update(
                &now.duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos()
                    .to_le_bytes(),
            );
            h.update(&self.counter.to_le_bytes());
            h.update(&std::process::id().to_le_bytes());
            let id = format!("{time}-{}", hex(&h.finalize().as_bytes()[..4]));
            if !self.entries.contains_key(&id) {
                return id;
            }
        }
    }

    fn write_entry(&mut self, entry: &Entry) -> Result<(), QuarantineError> {
        let mut json = serde_json::to_vec_pretty(entry).expect("entries always encode");
        json.push(b'\n');
        let path = self.dir.join("entries").join(format!("{}.json", entry.id));
        self.write_atomic(&path, &json)
    }

    /// Writes `data` to `path` through `tmp/`: write, fsync, rename, fsync
    /// the directory ([`crate::state::replace_file`]).
    fn write_atomic(&mut self, path: &Path, data: &[u8]) -> Result<(), QuarantineError> {
        self.counter += 1;
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
        let tmp =
            self.dir
                .join("tmp")
                .join(format!("{name}.{}.{}", std::process::id(), self.counter));
        crate::state::replace_file(&tmp, path, data).map_err(|e| io_err(e.op, &e.path)(e.source))
    }
}

/// The fixed header of an object file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    size: u64,
    sha256: [u8; 32],
    blake3: [u8; 32],
}

fn encode_header(h: &Header) -> [u8; OBJECT_HEADER_LEN] {
    let mut out = [0u8; OBJECT_HEADER_LEN];
    out[0..8].copy_from_slice(OBJECT_MAGIC);
    out[8..12].copy_from_slice(&OBJECT_VERSION.to_le_bytes());
    out[12..16].copy_from_slice(&(OBJECT_HEADER_LEN as u32).to_le_bytes());
    out[16..24].copy_from_slice(&h.size.to_le_bytes());
    out[24..56].copy_from_slice(&h.sha256);
    out[56..88].copy_from_slice(&h.blake3);
    out
}

fn decode_header(b: &[u8]) -> Result<Header, String> {
    if b.len() < OBJECT_HEADER_LEN {
        return Err(format!(
            "{} bytes, shorter than the {OBJECT_HEADER_LEN}-byte header",
            b.len()
        ));
    }
    if &b[0..8] != OBJECT_MAGIC {
        return Err("not a quarantine object (bad magic)".into());
    }
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    let version = u32_at(8);
    if version != OBJECT_VERSION || u32_at(12) as usize != OBJECT_HEADER_LEN {
        return Err(format!("object format version {version} is not known"));
    }
    Ok(Header {
        size: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
        sha256: b[24..56].try_into().expect("32 bytes"),
        blake3: b[56..88].try_into().expect("32 bytes"),
    })
}

fn read_header(path: &Path) -> Result<Header, String> {
    let mut b = [0u8; OBJECT_HEADER_LEN];
    let mut f = File::open(path).map_err(|e| e.to_string())?;
    let mut n = 0;
    while n < b.len() {
        match f.read(&mut b[n..]).map_err(|e| e.to_string())? {
            0 => break,
            k => n += k,
        }
    }
    decode_header(&b[..n])
}

/// XORs `data` with the key stream of the content whose SHA-256 is
/// `sha256` (its own inverse).
fn mask(sha256: &[u8; 32], data: &mut [u8]) {
    let mut hasher = blake3::Hasher::new_derive_key(MASK_CONTEXT);
    hasher.update(sha256);
    let mut stream = hasher.finalize_xof();
    let mut key = [0u8; 4096];
    for chunk in data.chunks_mut(key.len()) {
        let key = &mut key[..chunk.len()];
        stream.fill(key);
        for (b, k) in chunk.iter_mut().zip(key.iter()) {
            *b ^= k;
        }
    }
}

fn read_entry(path: &Path) -> Result<Entry, String> {
    let text = fs::read(path).map_err(|e| e.to_string())?;
    let entry: Entry = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
    if entry.format != ENTRY_FORMAT {
        return Err(format!("entry format {} is not known", entry.format));
    }
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    if stem != entry.id {
        return Err(format!("the file holds entry {:?}", entry.id));
    }
    if !is_sha256_hex(&entry.sha256) {
        return Err("sha256 is not 64 hex digits".into());
    }
    Ok(entry)
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn unix_ms(t: SystemTime) -> u64 {
    u64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(u64::MAX)
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl Fn(io::Error) -> QuarantineError + 'a {
    move |source| QuarantineError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, QuarantineError> {
    let mut out = Vec::new();
    for item in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let item = item.map_err(io_err("list", dir))?;
        if item.file_type().map_err(io_err("list", dir))?.is_file() {
            out.push(item.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Files: 0600, never executable.
fn private_options() -> OpenOptions {
    #[allow(unused_mut, reason = "only Unix sets a mode")]
    let mut o = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o
}

/// Directories: 0700 (an existing one is left as it is).
fn create_private_dir(dir: &Path) -> Result<(), QuarantineError> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir).map_err(io_err("create", dir))
}

fn sync_dir(dir: &Path) -> Result<(), QuarantineError> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync", dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const EICAR: &[u8] = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

    fn limits() -> QuarantineLimits {
        QuarantineLimits {
            max_bytes: 1 << 20,
            max_entries: 100,
        }
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_795_000_000 + secs)
    }

    fn new_entry(name: &str) -> NewEntry {
        NewEntry {
            guest: GuestRecord {
                peer: "vsock:3".into(),
                address: "vsock://3:1025".into(),
                name: name.into(),
                os: "windows".into(),
                agent_version: Some("0.1.0".into()),
                protocol_version: Some(2),
            },
            path: PathRecord::from(&crate::session::GuestPath::Utf16(
                "C:\\Users\\a\\eicar.com".encode_utf16().collect(),
            )),
            file: FileRecord {
                volume_serial: 0x1234,
                file_id: [7; 16],
                size: EICAR.len() as u64,
                last_write_time: 133_000_000_000_000_000,
            },
            threat: "Eicar-Test-Signature".into(),
            engine: Some("builtin".into()),
        }
    }

    fn files_under(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for sub in ["objects", "entries", "tmp"] {
            out.extend(list_dir(&dir.join(sub)).unwrap());
        }
        out
    }

    #[test]
    fn put_read_back_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = QuarantineStore::open(dir.path(), limits()).unwrap();
        let e = q.put(EICAR, new_entry("vm1"), at(0)).unwrap();
        assert_eq!(e.state, EntryState::Stored);
        assert_eq!(e.size, EICAR.len() as u64);
        assert_eq!(e.sha256, hex(&Sha256::digest(EICAR)));
        assert_eq!(e.blake3, blake3::hash(EICAR).to_hex().as_str());
        assert_eq!(e.threat, "Eicar-Test-Signature");
        assert_eq!(e.path.display, "C:\\Users\\a\\eicar.com");
        assert_eq!(e.path.encoding, "utf16le");
        assert_eq!(e.file.volume_serial, 0x1234);
        assert!(e.id.starts_with("20261118T"), "{}", e.id);
        assert_eq!(q.read(&e.id).unwrap(), EICAR);
        assert_eq!(q.get(&e.id).unwrap(), &e);
        assert_eq!(q.list().count(), 1);
        assert_eq!(
            q.usage(),
            Usage {
                bytes: EICAR.len() as u64,
                entries: 1,
                records: 1,
                limits: limits()
            }
        );
        // The entry file is the JSON of the entry.
        let json = fs::read(dir.path().join("entries").join(format!("{}.json", e.id))).unwrap();
        let back: Entry = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, e);
        assert!(matches!(
            q.read("nope"),
            Err(QuarantineError::NotFound { .. })
        ));
    }

    #[test]
    fn stored_bytes_are_masked_private_and_not_executable() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = QuarantineStore::open(dir.path(), limits()).unwrap();
        let e = q.put(EICAR, new_entry("vm1"), at(0)).unwrap();
        let object = dir.path().join("objects").join(&e.sha256);
        let raw = fs::read(&object).unwrap();
        assert_eq!(raw.len(), OBJECT_HEADER_LEN + EICAR.len());
        assert_eq!(&raw[..8], OBJECT_MAGIC);
        // No part of the EICAR string is on disk as it is.
        assert!(!raw.windows(16).any(|w| EICAR.windows(16).any(|x| x == w)));
        // The mask is what the module docs say.
        let mut unmasked = raw[OBJECT_HEADER_LEN..].to_vec();
        let mut h = blake3::Hasher::new_derive_key(MASK_CONTEXT);
        h.update(&Sha256::digest(EICAR));
        let mut key = vec![0u8; unmasked.len()];
        h.finalize_xof().fill(&mut key);
        for (b, k) in unmasked.iter_mut().zip(&key) {
            *b ^= k;
        }
        assert_eq!(unmasked, EICAR);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in files_under(dir.path()) {
                let mode = fs::metadata(&f).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", f.display());
            }
            for d in ["objects", "entries", "tmp"] {
                let mode = fs::metadata(dir.path().join(d))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o777;
                assert_eq!(mode, 0o700, "{d}");
            }
        }
    }

    #[test]
    fn identical_content_is_stored_once_and_removed_with_its_last_entry() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = QuarantineStore::open(dir.path(), limits()).unwrap();
        let a = q.put(EICAR, new_entry("vm1"), at(0)).unwrap();
        let b = q.put(EICAR, new_entry("vm2"), at(1)).unwrap();
        assert_ne!(a.id, b.id);
        assert_eq!(a.sha256, b.sha256);
        assert_eq!(list_dir(&dir.path().join("objects")).unwrap().len(), 1);
        assert_eq!(q.usage().bytes, EICAR.len() as u64);
        assert_eq!(q.usage().entries, 2);
        let purged = q.purge(&a.id, at(2)).unwrap();
        assert_eq!(purged.state, EntryState::Purged);
        assert!(purged.state_changed_at.is_some());
        // b still holds the content
        assert_eq!(q.read(&b.id).unwrap(), EICAR);
        assert!(matches!(q.read(&a.id), Err(QuarantineError::Purged { .. })));
        q.purge(&b.id, at(3)).unwrap();
        assert!(list_dir(&dir.path().join("objects")).unwrap().is_empty());
        assert_eq!(q.usage().bytes, 0);
        assert_eq!(q.usage().entries, 0);
        // purged entries stay as records
        assert_eq!(q.usage().records, 2);
        assert!(matches!(
            q.purge(&b.id, at(4)),
            Err(QuarantineError::BadState { .. })
        ));
    }

    #[test]
    fn full_store_refuses_and_evicts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = QuarantineStore::open(
            dir.path(),
            QuarantineLimits {
                max_bytes: 100,
                max_entries: 3,
            },
        )
        .unwrap();
        let first = q.put(&[1u8; 60], new_entry("vm1"), at(0)).unwrap();
        let e = q.put(&[2u8; 41], new_entry("vm1"), at(1)).unwrap_err();
        assert!(matches!(
            e,
            QuarantineError::Full {
                key: "max_bytes",
                ..
            }
        ));
        let msg = e.to_string();
        assert!(
            msg.contains("NOT quarantined") && msg.contains("max_bytes = 100"),
            "{msg}"
        );
        // nothing left behind by the refused put, nothing evicted
        assert_eq!(files_under(dir.path()).len(), 2);
        assert_eq!(q.read(&first.id).unwrap(), [1u8; 60]);
        // identical content costs no bytes: still fits
        q.put(&[1u8; 60], new_entry("vm2"), at(2)).unwrap();
        q.put(&[3u8; 40], new_entry("vm2"), at(3)).unwrap();
        let e = q.put(&[1u8; 60], new_entry("vm3"), at(4)).unwrap_err();
        assert!(
            matches!(
                e,
                QuarantineError::Full {
                    key: "max_entries",
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(q.usage().entries, 3);
        // purging makes room
        q.purge(&first.id, at(5)).unwrap();
        q.put(&[1u8; 60], new_entry("vm3"), at(6)).unwrap();
    }

    #[test]
    fn restore_then_purge_older_than() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = QuarantineStore::open(dir.path(), limits()).unwrap();
        let old = q.put(b"old", new_entry("vm1"), at(0)).unwrap();
        let mid = q.put(b"mid", new_entry("vm1"), at(100)).unwrap();
        let new = q.put(b"new", new_entry("vm1"), at(200)).unwrap();
        let r = q.mark_restored(&mid.id, at(150)).unwrap();
        assert_eq!(r.state, EntryState::Restored);
        // a restored entry still holds its bytes
        assert_eq!(q.read(&mid.id).unwrap(), b"mid");
        assert!(matches!(
            q.mark_restored(&mid.id, at(151)),
            Err(QuarantineError::BadState {
                state: "restored",
                ..
            })
        ));
        let purged = q.purge_older_than(at(150), at(300)).unwrap();
        let ids: Vec<_> = purged.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, [old.id.as_str(), mid.id.as_str()]);
        assert_eq!(q.read(&new.id).unwrap(), b"new");
        assert!(matches!(
            q.mark_restored(&old.id, at(301)),
            Err(QuarantineError::BadState {
                state: "purged",
                ..
            })
        ));
        assert_eq!(q.usage().bytes, 3);
    }

    #[test]
    fn the_index_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = {
            let mut q = QuarantineStore::open(dir.path(), limits()).unwrap();
            let a = q.put(EICAR, new_entry("vm1"), at(0)).unwrap();
            let b = q.put(b"other", new_entry("vm2"), at(1)).unwrap();
            q.mark_restored(&b.id, at(2)).unwrap();
            let c = q.put(b"third", new_entry("vm2"), at(3)).unwrap();
            q.purge(&c.id, at(4)).unwrap();
            (a, q.get(&b.id).unwrap().clone())
        };
        let q = QuarantineStore::open(dir.path(), limits()).unwrap();
        assert_eq!(q.report(), &OpenReport::default());
        assert_eq!(q.get(&a.id).unwrap(), &a);
        assert_eq!(q.get(&b.id).unwrap(), &b);
        assert_eq!(q.read(&a.id).unwrap(), EICAR);
        assert_eq!(q.read(&b.id).unwrap(), b"other");
        let states: Vec<_> = q.list().map(|e| e.state).collect();
        assert_eq!(
            states,
            [EntryState::Stored, EntryState::Restored, EntryState::Purged]
        );
        assert_eq!(
            q.usage().bytes,
            (EICAR.len() + 5) as u64,
            "purged content not counted"
        );
        assert_eq!(q.usage().entries, 2);
    }

    #[test]
    fn a_second_open_of_the_same_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _q = QuarantineStore::open(dir.path(), limits()).unwrap();
        let e = QuarantineStore::open(dir.path(), limits()).unwrap_err();
        assert!(matches!(e, QuarantineError::Locked { .. }), "{e}");
        assert!(e.to_string().contains("another process"), "{e}");
    }

    #[test]
    fn torn_writes_and_orphans_are_cleaned_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let kept = {
            let mut q = QuarantineStore::open(dir.path(), limits()).unwrap();
            q.put(EICAR, new_entry("vm1"), at(0)).unwrap()
        };
        // A crash while writing an entry: a torn temp file.
        fs::write(dir.path().join("tmp/x.json.1.1"), b"{\"format\": 1, \"id\"").unwrap();
        // A crash between a put's object and its entry: an orphan object.
        let orphan_sha = hex(&Sha256::digest(b"orphan"));
        let mut body = encode_header(&Header {
            size: 6,
            sha256: Sha256::digest(b"orphan").into(),
            blake3: *blake3::hash(b"orphan").as_bytes(),
        })
        .to_vec();
        body.extend_from_slice(b"orphan");
        fs::write(dir.path().join("objects").join(&orphan_sha), body).unwrap();
        let q = QuarantineStore::open(dir.path(), limits()).unwrap();
        assert_eq!(q.report().torn_files_removed, 1);
        assert_eq!(q.report().orphans_removed, 1);
        assert!(list_dir(&dir.path().join("tmp")).unwrap().is_empty());
        assert!(!dir.path().join("objects").join(&orphan_sha).exists());
        assert_eq!(q.read(&kept.id).unwrap(), EICAR);
        assert_eq!(q.usage().bytes, EICAR.len() as u64);
    }

    #[test]
    fn an_unreadable_entry_keeps_every_unreferenced_object() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = {
            let mut q = QuarantineStore::open(dir.path(), limits()).unwrap();
            let a = q.put(EICAR, new_entry("vm1"), at(0)).unwrap();
            let b = q.put(b"second", new_entry("vm1"), at(1)).unwrap();
            (a, b)
        };
        let b_file = dir.path().join("entries").join(format!("{}.json", b.id));
        fs::write(&b_file, b"{ not json").unwrap();
        let q = QuarantineStore::open(dir.path(), limits()).unwrap();
        assert_eq!(q.report().unreadable_entries, vec![b_file.clone()]);
        assert_eq!(q.report().orphans_kept, 1);
        assert_eq!(q.report().orphans_removed, 0);
        assert!(dir.path().join("objects").join(&b.sha256).exists());
        assert!(b_file.exists(), "an unreadable entry is left in place");
        assert_eq!(q.read(&a.id).unwrap(), EICAR);
        // the kept object still counts against max_bytes
        assert_eq!(q.usage().bytes, (EICAR.len() + 6) as u64);
    }

    #[test]
    fn tampered_or_cut_content_is_reported_never_returned() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = QuarantineStore::open(dir.path(), limits()).unwrap();
        let e = q.put(EICAR, new_entry("vm1"), at(0)).unwrap();
        let object = dir.path().join("objects").join(&e.sha256);
        let good = fs::read(&object).unwrap();
        let corrupt = |q: &QuarantineStore| match q.read(&e.id) {
            Err(QuarantineError::Corrupt { why, .. }) => why,
            other => panic!("expected Corrupt, got {other:?}"),
        };
        // one content bit flipped
        let mut bad = good.clone();
        bad[OBJECT_HEADER_LEN + 10] ^= 1;
        fs::write(&object, &bad).unwrap();
        assert!(corrupt(&q).contains("SHA-256"));
        // cut short
        fs::write(&object, &good[..good.len() - 1]).unwrap();
        assert!(corrupt(&q).contains("content bytes"));
        // header's hash changed
        let mut bad = good.clone();
        bad[30] ^= 1;
        fs::write(&object, &bad).unwrap();
        assert!(corrupt(&q).contains("another SHA-256"));
        // not an object at all
        fs::write(&object, EICAR.repeat(2)).unwrap();
        assert!(corrupt(&q).contains("magic"));
        fs::write(&object, EICAR).unwrap();
        assert!(corrupt(&q).contains("shorter than"));
        // gone
        fs::remove_file(&object).unwrap();
        assert!(corrupt(&q).contains("missing"));
        let msg = q.read(&e.id).unwrap_err().to_string();
        assert!(msg.contains("purge the entry"), "{msg}");
        // an entry whose hashes were edited to match other content
        fs::write(&object, &good).unwrap();
        let path = dir.path().join("entries").join(format!("{}.json", e.id));
        let mut edited: Entry = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        edited.blake3 = blake3::hash(b"x").to_hex().to_string();
        fs::write(&path, serde_json::to_vec(&edited).unwrap()).unwrap();
        drop(q);
        let q = QuarantineStore::open(dir.path(), limits()).unwrap();
        assert!(corrupt(&q).contains("BLAKE3"));
    }

    #[test]
    fn a_missing_object_is_reported_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let e = {
            let mut q = QuarantineStore::open(dir.path(), limits()).unwrap();
            q.put(EICAR, new_entry("vm1"), at(0)).unwrap()
        };
        fs::remove_file(dir.path().join("objects").join(&e.sha256)).unwrap();
        let q = QuarantineStore::open(dir.path(), limits()).unwrap();
        assert_eq!(q.report().missing_content, vec![e.id.clone()]);
        assert!(matches!(
            q.read(&e.id),
            Err(QuarantineError::Corrupt { .. })
        ));
    }

    #[test]
    fn an_unwritable_dir_says_what_to_check() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        fs::write(&file, b"").unwrap();
        let e = QuarantineStore::open(&file.join("q"), limits()).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("cannot create") && msg.contains("quarantine.dir"),
            "{msg}"
        );
    }
}
