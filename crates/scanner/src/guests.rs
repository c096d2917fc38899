//! The guests the scanner knows (issue 14's "guest health"): every guest
//! identity seen since the service started, its announced details, its
//! last `Health` report (protocol §14.8), its recent detections, and while
//! it is connected a channel to its connection, through which the admin
//! interface ([`crate::control`]) sends host actions (§14).
//!
//! Keyed by the transport identity (§13, [`registry_key`]): a VM's vsock
//! CID or a TLS certificate subject, so a guest that reconnects (from
//! another port, after every reboot) is the same guest, with its counters,
//! health, policy state and detections; never by the guest's announced
//! name, which is a label. Loopback TCP and Unix peers name a host or a
//! user that several guests may share: each connection of theirs is its
//! own guest, keyed by its address.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use thinagent_protocol::{
    ActionStatus, Capabilities, FileIdentity, Health, OsError, RemediateAction, ScanCounters,
    ScanStatus,
};
use tokio::sync::{mpsc, oneshot};

use crate::audit::rfc3339;
use crate::connection::GuestId;
use crate::records::{FileRecord, PathRecord};
use crate::session::{ActionError, ActionOutcome, GuestInfo, GuestPath, ScanOptions};
use crate::state::{StateDir, StateError};

/// Detections kept per guest (the newest).
pub const DETECTIONS_KEPT: usize = 64;

/// A file a guest was denied for a detection: what a remediation names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    /// The path as the guest sent it.
    pub path: GuestPath,
    /// The identity the host judged.
    pub file: FileIdentity,
    /// The threat.
    pub threat: String,
    /// When.
    pub at: SystemTime,
}

/// What the admin interface asks a guest's connection to do.
#[derive(Debug)]
pub enum GuestCommand {
    /// `Remediate` (§14.2).
    Remediate {
        /// Delete or truncate.
        action: RemediateAction,
        /// The file.
        path: GuestPath,
        /// Its identity as judged.
        file: FileIdentity,
        /// How long to wait for the guest.
        deadline: Duration,
        /// Gets the outcome.
        reply: oneshot::Sender<Result<ActionOutcome, ActionError>>,
    },
    /// `ScanTree` (§14.4); updates go to `updates` until
    /// [`ScanUpdate::Done`].
    Scan {
        /// The root.
        root: GuestPath,
        /// How.
        options: ScanOptions,
        /// Progress and the end.
        updates: mpsc::UnboundedSender<ScanUpdate>,
    },
    /// `Restore` (§14.7) of `content` to `path`; only on an admin's
    /// explicit command.
    Restore {
        /// Where the file goes.
        path: GuestPath,
        /// Its bytes.
        content: Vec<u8>,
        /// How long to wait for the guest, for the whole restore.
        deadline: Duration,
        /// Gets the outcome.
        reply: oneshot::Sender<Result<ActionOutcome, ActionError>>,
    },
    /// Send the host's current policy (it changed).
    PushPolicy,
    /// `ScanCancel` (§14.5) of the scan `id`.
    CancelScan {
        /// The scan's request id.
        id: u64,
    },
}

/// What a running scan reports to whoever asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanUpdate {
    /// The `ScanTree` went out with this request id.
    Started(u64),
    /// A `ScanProgress`.
    Progress(ScanCounters),
    /// The end (its `ScanDone`, or why there is none).
    Done(Result<ActionOutcome, ActionError>),
}

/// What the host counted for one guest since the service started, across
/// its reconnects: `/metrics` shows it labelled by guest
/// ([`crate::metrics`]). The connection holds an `Arc` and counts without
/// taking the registry's lock.
#[derive(Debug, Default)]
pub struct GuestCounters {
    verdicts_allow: AtomicU64,
    verdicts_deny: AtomicU64,
    /// Of the verdicts, those decided by policy (no scan result).
    verdicts_policy: AtomicU64,
    /// Queries that ended with no verdict (the guest left).
    abandoned: AtomicU64,
    /// Content bytes pulled with `ReadRequest`s.
    bytes_read: AtomicU64,
    /// Detections recorded (every one, not only the kept ones).
    detections: AtomicU64,
    /// Host actions ended, by (`action`, `status`).
    actions: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl GuestCounters {
    /// A verdict went out (`None`: the query was abandoned); `policy`: it
    /// was decided by policy, not by a scan.
    pub fn verdict(
        &self,
        decision: Option<thinagent_protocol::Decision>,
        policy: bool,
        bytes: u64,
    ) {
        use thinagent_protocol::Decision;
        let counter = match decision {
            Some(Decision::Deny) => &self.verdicts_deny,
            Some(_) => &self.verdicts_allow,
            None => &self.abandoned,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if policy && decision.is_some() {
            self.verdicts_policy.fetch_add(1, Ordering::Relaxed);
        }
        self.bytes_read.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A host action (`remediate`, `scan`, `policy`, ...) ended with
    /// `status` (`done`, `changed`, `timed-out`, ...).
    pub fn action_ended(&self, action: &'static str, status: &'static str) {
        let mut actions = self
            .actions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *actions.entry((action, status)).or_insert(0) += 1;
    }

    /// The counters now.
    pub fn snapshot(&self) -> CountersView {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountersView {
            verdicts_allow: get(&self.verdicts_allow),
            verdicts_deny: get(&self.verdicts_deny),
            verdicts_policy: get(&self.verdicts_policy),
            abandoned: get(&self.abandoned),
            bytes_read: get(&self.bytes_read),
            detections: get(&self.detections),
            actions: self
                .actions
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .map(|(&(action, status), &n)| ActionCount { action, status, n })
                .collect(),
        }
    }
}

/// [`GuestCounters`] at one moment.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct CountersView {
    /// Allow verdicts sent (any kind of allow).
    pub verdicts_allow: u64,
    /// Deny verdicts sent.
    pub verdicts_deny: u64,
    /// Of those, decided by policy rather than by a scan.
    pub verdicts_policy: u64,
    /// Queries abandoned (the guest left before the verdict).
    pub abandoned: u64,
    /// Content bytes pulled with `ReadRequest`s.
    pub bytes_read: u64,
    /// Detections.
    pub detections: u64,
    /// Host actions ended, by action and status.
    pub actions: Vec<ActionCount>,
}

/// How many host actions of one kind ended one way.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ActionCount {
    /// `remediate`, `scan`, `policy`, `restore`.
    pub action: &'static str,
    /// `done`, `not-found`, `changed`, `failed`, `timed-out`, ...
    pub status: &'static str,
    /// How many.
    pub n: u64,
}

/// One guest as `/metrics` shows it ([`GuestRegistry::metrics_view`]).
#[derive(Debug, Clone)]
pub struct GuestMetricsView {
    /// The transport identity: the `guest` label.
    pub identity: String,
    /// The announced name.
    pub name: String,
    /// Connected now.
    pub connected: bool,
    /// Last frame seen or the disconnect, seconds since the Unix epoch.
    pub last_seen_secs: f64,
    /// The host's counters.
    pub counters: CountersView,
    /// The guest's last `Health`, if any.
    pub health: Option<Health>,
}

/// The registry's key for `guest`: its transport identity when that names
/// one guest (`vsock:CID`, `tls:SUBJECT`), else the connection's address
/// (`tcp://127.0.0.1:PORT`, `unix://PATH (uid U, pid P)`).
pub fn registry_key(guest: &GuestId) -> String {
    let peer = guest.peer();
    if peer.names_one_guest() {
        peer.to_string()
    } else {
        guest.to_string()
    }
}

/// One guest as the registry keeps it.
#[derive(Debug)]
struct Entry {
    identity: String,
    /// The address of its last connection (`vsock://CID:PORT`,
    /// `tls://IP:PORT (SUBJECT)`).
    address: String,
    /// The transport identity (§13) its connections vouch for, and
    /// whether it names one guest (else the announced name tells guests
    /// behind it apart).
    peer: (String, bool),
    info: Option<GuestInfo>,
    connected_since: SystemTime,
    last_seen: SystemTime,
    health: Option<(Health, SystemTime)>,
    detections: VecDeque<Detection>,
    policy: Option<PolicyState>,
    /// Its live connections, oldest first: serial, address and command
    /// channel. Commands go to the newest; the guest is connected while
    /// any is live (a reconnect may arrive before the old connection is
    /// seen to end).
    conns: Vec<(u64, String, mpsc::UnboundedSender<GuestCommand>)>,
    /// What the host counted (kept across reconnects).
    counters: Arc<GuestCounters>,
}

impl Entry {
    /// Connected now: a connection of it is live.
    fn is_connected(&self) -> bool {
        !self.conns.is_empty()
    }
}

/// A guest as the admin interface shows it (`thinagent-diag guests`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GuestView {
    /// The transport identity (§13): [`registry_key`].
    pub identity: String,
    /// The address of its last connection.
    pub address: String,
    /// The announced name (a label).
    pub name: String,
    /// `windows` / `linux`.
    pub os: String,
    /// The agent's version.
    pub agent_version: String,
    /// The negotiated protocol version.
    pub protocol_version: u16,
    /// Host actions the guest takes: `remediate`, `scan-tree`, `policy`, `restore`.
    pub actions: Vec<&'static str>,
    /// Connected now.
    pub connected: bool,
    /// Since when (connected) or when it last connected.
    pub connected_since: String,
    /// The last frame seen or the disconnect.
    pub last_seen: String,
    /// The policy version the guest reports (`Health`), if any.
    pub policy_version: Option<u64>,
    /// The guest's last `Health` report, if any.
    pub health: Option<HealthView>,
    /// The host policy as this guest took it.
    pub policy: Option<PolicyState>,
    /// Detections recorded (up to [`DETECTIONS_KEPT`]).
    pub detections: usize,
    /// The newest detection: `threat at path`.
    pub last_detection: Option<String>,
    /// What the host counted for this guest since the service started.
    pub counters: CountersView,
}

/// The host policy as one guest took it (protocol §14.6).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PolicyState {
    /// The version last sent.
    pub sent: u64,
    /// The version the guest says is in effect (its last answer).
    pub in_effect: Option<u64>,
    /// How the last one ended: `done`, `rejected`, `timed-out`, ...
    pub status: String,
    /// Fields the guest's admin pinned locally (not applied).
    pub pinned: Vec<&'static str>,
}

/// A `Health` report, for people and scripts.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HealthView {
    /// When it arrived.
    pub at: String,
    /// `open` / `closed`.
    pub fail_mode: &'static str,
    /// Opens are being judged.
    pub on_access: bool,
    /// A scan runs.
    pub scan_running: bool,
    /// Since the agent started, seconds.
    pub uptime_secs: u64,
    /// `FileEvent`s sent.
    pub events_sent: u64,
    /// Opens answered from the guest's cache.
    pub cache_hits: u64,
    /// Opens denied on a host verdict.
    pub denied: u64,
    /// Opens decided by the fail mode.
    pub fail_decisions: u64,
    /// Sessions since the agent started.
    pub sessions: u64,
}

/// Why the registry cannot name one guest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// Nothing matches.
    #[error("no guest {0:?}: see `thinagent-diag guests` for identities and names")]
    NotFound(String),
    /// A name several guests announced.
    #[error("{name:?} names several guests ({}); use the identity", .identities.join(", "))]
    Ambiguous {
        /// The name asked.
        name: String,
        /// The identities with that name.
        identities: Vec<String>,
    },
    /// The guest is known but not connected.
    #[error("guest {0} is not connected")]
    NotConnected(String),
}

/// Every guest seen since the service started.
#[derive(Debug, Default)]
pub struct GuestRegistry {
    guests: Mutex<HashMap<String, Entry>>,
    next_conn: std::sync::atomic::AtomicU64,
    /// Something [`save`](Self::save) keeps changed since the last save.
    dirty: std::sync::atomic::AtomicBool,
}

impl GuestRegistry {
    /// The guests, to change what [`save`](Self::save) keeps.
    fn lock_mut(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.dirty.store(true, Ordering::Relaxed);
        self.lock()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.guests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A guest completed its handshake on a connection; returns the
    /// connection's serial (for [`disconnected`](Self::disconnected)).
    pub fn connected(
        &self,
        guest: &GuestId,
        info: &GuestInfo,
        commands: mpsc::UnboundedSender<GuestCommand>,
    ) -> u64 {
        let serial = self
            .next_conn
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = SystemTime::now();
        let identity = registry_key(guest);
        let address = guest.to_string();
        let mut guests = self.lock_mut();
        let peer = guest.peer();
        let entry = guests.entry(identity.clone()).or_insert_with(|| Entry {
            identity,
            address: address.clone(),
            peer: (peer.to_string(), peer.names_one_guest()),
            info: None,
            connected_since: now,
            last_seen: now,
            health: None,
            detections: VecDeque::new(),
            policy: None,
            conns: Vec::new(),
            counters: Arc::default(),
        });
        entry.info = Some(info.clone());
        entry.address = address.clone();
        entry.connected_since = now;
        entry.last_seen = now;
        entry.conns.push((serial, address, commands));
        serial
    }

    /// The counters of `guest` (a new guest's start at 0).
    /// A registry with the guests of an earlier run (`state_dir`, file
    /// [`GUESTS_STATE_FILE`]): listed as not connected, with what they
    /// announced, their last `Health`, policy state and detections, until
    /// they connect again. The host's counters start at 0.
    pub fn restore(state: &StateDir) -> Self {
        let registry = Self::default();
        let Some(saved) = state.load::<SavedGuests>(GUESTS_STATE_FILE) else {
            return registry;
        };
        let mut guests = registry.lock();
        for g in saved.guests {
            if let Some(entry) = g.into_entry() {
                // Several rows of one guest (an older file): the newest.
                match guests.get(&entry.identity) {
                    Some(kept) if kept.last_seen >= entry.last_seen => {}
                    _ => {
                        guests.insert(entry.identity.clone(), entry);
                    }
                }
            }
        }
        tracing::info!(guests = guests.len(), "guests of the last run restored");
        drop(guests);
        registry
    }

    /// Writes every guest to `state` if anything changed since the last
    /// save (called every few seconds and at shutdown).
    pub fn save(&self, state: &StateDir) -> Result<(), StateError> {
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let guests = self
            .guests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut saved: Vec<SavedGuest> = guests.values().filter_map(SavedGuest::of).collect();
        drop(guests);
        saved.sort_by(|a, b| a.identity.cmp(&b.identity));
        let result = state.save(GUESTS_STATE_FILE, &SavedGuests { guests: saved });
        if result.is_err() {
            self.dirty.store(true, Ordering::Relaxed);
        }
        result
    }

    /// The registry learns a guest at [`connected`](Self::connected); before
    /// that the counters are detached (they count nothing anyone sees).
    pub fn counters(&self, guest: &GuestId) -> Arc<GuestCounters> {
        self.lock()
            .get(&registry_key(guest))
            .map(|e| Arc::clone(&e.counters))
            .unwrap_or_default()
    }

    /// Every guest for `/metrics`, sorted by identity.
    pub fn metrics_view(&self) -> Vec<GuestMetricsView> {
        let guests = self.lock();
        let mut views: Vec<GuestMetricsView> = guests
            .values()
            .map(|e| GuestMetricsView {
                identity: e.identity.clone(),
                name: e.info.as_ref().map(|i| i.name.clone()).unwrap_or_default(),
                connected: e.is_connected(),
                last_seen_secs: e
                    .last_seen
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64()),
                counters: e.counters.snapshot(),
                health: e.health.as_ref().map(|(h, _)| *h),
            })
            .collect();
        views.sort_by(|a, b| a.identity.cmp(&b.identity));
        views
    }

    /// The connection `serial` of `guest` ended.
    pub fn disconnected(&self, guest: &GuestId, serial: u64) {
        let mut guests = self.lock_mut();
        if let Some(e) = guests.get_mut(&registry_key(guest))
            && let Some(i) = e.conns.iter().position(|(s, _, _)| *s == serial)
        {
            e.conns.remove(i);
            e.last_seen = SystemTime::now();
            if let Some((_, address, _)) = e.conns.last() {
                e.address.clone_from(address);
            }
        }
    }

    /// A `Health` report arrived; whether its state (on-access and scan
    /// bits, fail mode, policy version) differs from the last report's
    /// (the first report differs).
    pub fn health(&self, guest: &GuestId, health: Health) -> bool {
        let mut guests = self.lock_mut();
        let Some(e) = guests.get_mut(&registry_key(guest)) else {
            return false;
        };
        let now = SystemTime::now();
        let changed = e.health.as_ref().is_none_or(|(old, _)| {
            (old.state, old.fail_mode, old.policy_version)
                != (health.state, health.fail_mode, health.policy_version)
        });
        e.health = Some((health, now));
        e.last_seen = now;
        changed
    }

    /// One guest as [`list`](Self::list) shows it.
    pub fn view(&self, identity: &str) -> Option<GuestView> {
        self.lock().get(identity).map(view)
    }

    /// The policy of `version` went to `guest`.
    pub fn policy_sent(&self, guest: &GuestId, version: u64) {
        if let Some(e) = self.lock_mut().get_mut(&registry_key(guest)) {
            let in_effect = e.policy.as_ref().and_then(|p| p.in_effect);
            e.policy = Some(PolicyState {
                sent: version,
                in_effect,
                status: "sent".into(),
                pinned: Vec::new(),
            });
        }
    }

    /// How the policy of `version` ended at `guest`.
    pub fn policy_result(&self, guest: &GuestId, version: u64, outcome: ActionOutcome) {
        use thinagent_protocol::{ActionStatus, PolicyFields};
        let mut guests = self.lock_mut();
        let Some(e) = guests.get_mut(&registry_key(guest)) else {
            return;
        };
        let state = e.policy.get_or_insert_with(|| PolicyState {
            sent: version,
            in_effect: None,
            status: String::new(),
            pinned: Vec::new(),
        });
        match outcome {
            ActionOutcome::Result(r) => {
                state.status = format!("{:?}", r.status).to_lowercase();
                if matches!(r.status, ActionStatus::Done) {
                    state.in_effect = Some(r.value);
                }
                state.pinned = [
                    (PolicyFields::FAIL_MODE, "fail_mode"),
                    (PolicyFields::DEBUG_LEVEL, "debug_level"),
                    (PolicyFields::EXCLUSIONS, "exclusions"),
                    (PolicyFields::QUERY_TIMEOUT, "query_timeout_ms"),
                    (PolicyFields::CACHE_TTL_MAX, "cache_ttl_max_secs"),
                    (PolicyFields::MAX_SCAN_SIZE, "max_scan_size"),
                ]
                .into_iter()
                .filter(|(f, _)| PolicyFields(r.pinned).contains(*f))
                .map(|(_, n)| n)
                .collect();
            }
            ActionOutcome::TimedOut => state.status = "timed-out".into(),
            ActionOutcome::ConnectionLost => state.status = "connection-lost".into(),
            ActionOutcome::ScanDone(_) => {}
        }
    }

    /// Sends every connected guest `command()`; returns the identities
    /// reached.
    pub fn broadcast(&self, command: impl Fn() -> GuestCommand) -> Vec<String> {
        let guests = self.lock();
        let mut reached: Vec<String> = guests
            .values()
            .filter_map(|e| {
                let (_, _, tx) = e.conns.last()?;
                tx.send(command()).ok().map(|()| e.identity.clone())
            })
            .collect();
        reached.sort();
        reached
    }

    /// `guest` was denied `detection.path` for a detection.
    pub fn detection(&self, guest: &GuestId, detection: Detection) {
        if let Some(e) = self.lock_mut().get_mut(&registry_key(guest)) {
            e.counters.detections.fetch_add(1, Ordering::Relaxed);
            e.last_seen = detection.at;
            e.detections.retain(|d| d.path != detection.path);
            if e.detections.len() >= DETECTIONS_KEPT {
                e.detections.pop_front();
            }
            e.detections.push_back(detection);
        }
    }

    /// Every guest, sorted by identity.
    pub fn list(&self) -> Vec<GuestView> {
        let guests = self.lock();
        let mut views: Vec<GuestView> = guests.values().map(view).collect();
        views.sort_by(|a, b| a.identity.cmp(&b.identity));
        views
    }

    /// The identity of the guest `who` names: an identity, or a name only
    /// one guest announced.
    pub fn resolve(&self, who: &str) -> Result<String, LookupError> {
        let guests = self.lock();
        if guests.contains_key(who) {
            return Ok(who.to_owned());
        }
        let mut named: Vec<String> = guests
            .values()
            .filter(|e| e.info.as_ref().is_some_and(|i| i.name == who))
            .map(|e| e.identity.clone())
            .collect();
        named.sort();
        match named.len() {
            0 => Err(LookupError::NotFound(who.to_owned())),
            1 => Ok(named.remove(0)),
            _ => Err(LookupError::Ambiguous {
                name: who.to_owned(),
                identities: named,
            }),
        }
    }

    /// Sends `command` to the connected guest `identity`.
    pub fn send(&self, identity: &str, command: GuestCommand) -> Result<(), LookupError> {
        let guests = self.lock();
        let Some(e) = guests.get(identity) else {
            return Err(LookupError::NotFound(identity.to_owned()));
        };
        match e.conns.last() {
            Some((_, _, tx)) => tx
                .send(command)
                .map_err(|_| LookupError::NotConnected(identity.to_owned())),
            None => Err(LookupError::NotConnected(identity.to_owned())),
        }
    }

    /// The newest detection of `identity` whose path reads `path`.
    pub fn find_detection(&self, identity: &str, path: &str) -> Option<Detection> {
        let guests = self.lock();
        guests.get(identity).and_then(|e| {
            e.detections
                .iter()
                .rev()
                .find(|d| d.path.to_string_lossy() == path)
                .cloned()
        })
    }

    /// The connected guest that is the one a record names: the same
    /// transport identity (`peer`, §13) and, where that identity does not
    /// name one guest (loopback TCP, Unix), the same announced name.
    pub fn connected_as(&self, peer: &str, name: &str) -> Result<String, LookupError> {
        let guests = self.lock();
        let mut found: Vec<&Entry> = guests
            .values()
            .filter(|e| {
                e.peer.0 == peer && (e.peer.1 || e.info.as_ref().is_some_and(|i| i.name == name))
            })
            .collect();
        found.sort_by_key(|e| std::cmp::Reverse(e.is_connected()));
        match found.first() {
            Some(e) if e.is_connected() => Ok(e.identity.clone()),
            Some(e) => Err(LookupError::NotConnected(e.identity.clone())),
            None => Err(LookupError::NotConnected(format!("{peer} ({name})"))),
        }
    }

    /// The announced OS of `identity` (how to encode a path for it).
    pub fn os(&self, identity: &str) -> Option<thinagent_protocol::OsKind> {
        self.lock()
            .get(identity)
            .and_then(|e| e.info.as_ref().map(|i| i.os))
    }
}

fn view(e: &Entry) -> GuestView {
    let info = e.info.as_ref();
    let caps = info.map_or(Capabilities(0), |i| i.capabilities);
    let actions = [
        (Capabilities::REMEDIATE, "remediate"),
        (Capabilities::SCAN_TREE, "scan-tree"),
        (Capabilities::POLICY, "policy"),
        (Capabilities::RESTORE, "restore"),
    ]
    .into_iter()
    .filter(|(c, _)| caps.contains(*c))
    .map(|(_, n)| n)
    .collect();
    GuestView {
        identity: e.identity.clone(),
        address: e.address.clone(),
        name: info.map(|i| i.name.clone()).unwrap_or_default(),
        os: info
            .map(|i| format!("{:?}", i.os).to_lowercase())
            .unwrap_or_default(),
        agent_version: info
            .map(|i| {
                let v = i.agent_version;
                format!("{}.{}.{}", v.major, v.minor, v.patch)
            })
            .unwrap_or_default(),
        protocol_version: info.map_or(0, |i| i.version),
        actions,
        connected: e.is_connected(),
        connected_since: rfc3339(e.connected_since),
        last_seen: rfc3339(e.last_seen),
        policy_version: e
            .health
            .as_ref()
            .map(|(h, _)| h.policy_version)
            .filter(|v| *v != 0),
        health: e.health.as_ref().map(|(h, at)| HealthView {
            at: rfc3339(*at),
            fail_mode: match h.fail_mode {
                thinagent_protocol::FailMode::Open => "open",
                thinagent_protocol::FailMode::Closed => "closed",
            },
            on_access: h.state.contains(thinagent_protocol::HealthState::ON_ACCESS),
            scan_running: h
                .state
                .contains(thinagent_protocol::HealthState::SCAN_RUNNING),
            uptime_secs: h.uptime_ms / 1000,
            events_sent: h.events_sent,
            cache_hits: h.cache_hits,
            denied: h.denied,
            fail_decisions: h.fail_decisions,
            sessions: h.sessions,
        }),
        policy: e.policy.clone(),
        detections: e.detections.len(),
        last_detection: e
            .detections
            .back()
            .map(|d| format!("{} at {}", d.threat, d.path)),
        counters: e.counters.snapshot(),
    }
}

/// The state file of the registry (`state_dir`).
pub const GUESTS_STATE_FILE: &str = "guests.json";

/// What `guests.json` holds.
#[derive(Debug, Serialize, Deserialize)]
struct SavedGuests {
    guests: Vec<SavedGuest>,
}

/// One guest as `guests.json` keeps it: what it announced (the
/// `GuestInfo` of its last session), when it was seen, its last `Health`,
/// the policy state and its detections.
#[derive(Debug, Serialize, Deserialize)]
struct SavedGuest {
    identity: String,
    /// Its last connection's address (absent before keys were identities:
    /// the identity was the address).
    #[serde(default)]
    address: Option<String>,
    /// The transport identity (§13) and whether it names one guest.
    peer: String,
    peer_names_one_guest: bool,
    name: String,
    os: String,
    agent_version: [u16; 3],
    capabilities: u64,
    protocol_version: u16,
    max_inline_len: u32,
    max_frame_len: u32,
    max_reads_in_flight: u32,
    connected_since_ms: u64,
    last_seen_ms: u64,
    #[serde(default)]
    health: Option<SavedHealth>,
    #[serde(default)]
    policy: Option<SavedPolicyState>,
    #[serde(default)]
    detections: Vec<SavedDetection>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedHealth {
    at_ms: u64,
    policy_version: u64,
    state: u32,
    fail_closed: bool,
    uptime_ms: u64,
    events_sent: u64,
    cache_hits: u64,
    denied: u64,
    fail_decisions: u64,
    sessions: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedPolicyState {
    sent: u64,
    in_effect: Option<u64>,
    status: String,
    pinned: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedDetection {
    path: PathRecord,
    file: FileRecord,
    threat: String,
    at_ms: u64,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn from_unix_ms(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

/// The `pinned` names [`GuestRegistry::policy_result`] uses, for a
/// restored policy state.
const PINNED_NAMES: [&str; 6] = [
    "fail_mode",
    "debug_level",
    "exclusions",
    "query_timeout_ms",
    "cache_ttl_max_secs",
    "max_scan_size",
];

impl SavedGuest {
    /// `None` for a guest that never completed a handshake (nothing to keep).
    fn of(e: &Entry) -> Option<Self> {
        let info = e.info.as_ref()?;
        Some(Self {
            identity: e.identity.clone(),
            address: Some(e.address.clone()),
            peer: e.peer.0.clone(),
            peer_names_one_guest: e.peer.1,
            name: info.name.clone(),
            os: crate::records::os_name(info.os),
            agent_version: [
                info.agent_version.major,
                info.agent_version.minor,
                info.agent_version.patch,
            ],
            capabilities: info.capabilities.0,
            protocol_version: info.version,
            max_inline_len: info.max_inline_len,
            max_frame_len: info.max_frame_len,
            max_reads_in_flight: info.max_reads_in_flight,
            connected_since_ms: unix_ms(e.connected_since),
            last_seen_ms: unix_ms(e.last_seen),
            health: e.health.as_ref().map(|(h, at)| SavedHealth {
                at_ms: unix_ms(*at),
                policy_version: h.policy_version,
                state: h.state.0,
                fail_closed: h.fail_mode == thinagent_protocol::FailMode::Closed,
                uptime_ms: h.uptime_ms,
                events_sent: h.events_sent,
                cache_hits: h.cache_hits,
                denied: h.denied,
                fail_decisions: h.fail_decisions,
                sessions: h.sessions,
            }),
            policy: e.policy.as_ref().map(|p| SavedPolicyState {
                sent: p.sent,
                in_effect: p.in_effect,
                status: p.status.clone(),
                pinned: p.pinned.iter().map(|s| (*s).to_owned()).collect(),
            }),
            detections: e
                .detections
                .iter()
                .map(|d| SavedDetection {
                    path: PathRecord::from(&d.path),
                    file: FileRecord::from(&d.file),
                    threat: d.threat.clone(),
                    at_ms: unix_ms(d.at),
                })
                .collect(),
        })
    }

    /// The registry entry: not connected. `None` when the record cannot be
    /// one (an OS it does not know).
    fn into_entry(self) -> Option<Entry> {
        let os = match self.os.as_str() {
            "windows" => thinagent_protocol::OsKind::Windows,
            "linux" => thinagent_protocol::OsKind::Linux,
            _ => return None,
        };
        let [major, minor, patch] = self.agent_version;
        let info = GuestInfo {
            name: self.name,
            os,
            agent_version: thinagent_protocol::AgentVersion {
                major,
                minor,
                patch,
            },
            capabilities: Capabilities(self.capabilities),
            version: self.protocol_version,
            max_inline_len: self.max_inline_len,
            max_frame_len: self.max_frame_len,
            max_reads_in_flight: self.max_reads_in_flight,
        };
        let health = self.health.map(|h| {
            (
                Health {
                    policy_version: h.policy_version,
                    state: thinagent_protocol::HealthState(h.state),
                    fail_mode: if h.fail_closed {
                        thinagent_protocol::FailMode::Closed
                    } else {
                        thinagent_protocol::FailMode::Open
                    },
                    uptime_ms: h.uptime_ms,
                    events_sent: h.events_sent,
                    cache_hits: h.cache_hits,
                    denied: h.denied,
                    fail_decisions: h.fail_decisions,
                    sessions: h.sessions,
                },
                from_unix_ms(h.at_ms),
            )
        });
        let policy = self.policy.map(|p| PolicyState {
            sent: p.sent,
            in_effect: p.in_effect,
            status: p.status,
            pinned: PINNED_NAMES
                .into_iter()
                .filter(|n| p.pinned.iter().any(|q| q == n))
                .collect(),
        });
        let detections = self
            .detections
            .into_iter()
            .rev()
            .take(DETECTIONS_KEPT)
            .rev()
            .filter_map(|d| {
                Some(Detection {
                    path: d.path.guest_path()?,
                    file: FileIdentity {
                        volume_serial: d.file.volume_serial,
                        file_id: d.file.file_id,
                        size: d.file.size,
                        last_write_time: d.file.last_write_time,
                    },
                    threat: d.threat,
                    at: from_unix_ms(d.at_ms),
                })
            })
            .collect();
        // A file of a build that keyed every guest by its connection's
        // address: a guest that names one guest is keyed by its identity.
        let address = self.address.unwrap_or_else(|| self.identity.clone());
        let identity = if self.peer_names_one_guest {
            self.peer.clone()
        } else {
            self.identity
        };
        Some(Entry {
            identity,
            address,
            peer: (self.peer, self.peer_names_one_guest),
            info: Some(info),
            connected_since: from_unix_ms(self.connected_since_ms),
            last_seen: from_unix_ms(self.last_seen_ms),
            health,
            detections,
            policy,
            conns: Vec::new(),
            counters: Arc::default(),
        })
    }
}

/// A scan's end for people, logs and metrics: `completed`, `cancelled`,
/// `not-found`, `failed`, `busy`, `unsupported`.
pub fn scan_status_label(status: ScanStatus) -> &'static str {
    match status {
        ScanStatus::Completed => "completed",
        ScanStatus::Cancelled => "cancelled",
        ScanStatus::NotFound => "not-found",
        ScanStatus::Failed => "failed",
        ScanStatus::Busy => "busy",
        ScanStatus::Unsupported => "unsupported",
    }
}

/// An OS error code in words.
pub fn os_error(e: OsError) -> String {
    match e {
        OsError::NtStatus(c) => format!("NTSTATUS 0x{c:08X}"),
        OsError::Errno(c) => format!(
            "errno {c} ({})",
            std::io::Error::from_raw_os_error(c as i32)
        ),
    }
}

/// (success, status word, explanation) of an action's end.
pub fn describe_outcome(outcome: ActionOutcome) -> (bool, &'static str, String) {
    match outcome {
        ActionOutcome::Result(r) => {
            let (ok, status, detail) = match r.status {
                ActionStatus::Done => (true, "done", "done".to_owned()),
                ActionStatus::DoneOnClose => (
                    true,
                    "done-on-close",
                    "the name goes when the file's last handle closes".to_owned(),
                ),
                ActionStatus::NotFound => (false, "not-found", "nothing at that path".to_owned()),
                ActionStatus::Changed => (
                    false,
                    "changed",
                    "the file at that path is not the one judged (replaced or modified since): nothing was done".to_owned(),
                ),
                ActionStatus::Failed => (
                    false,
                    "failed",
                    r.error.map_or_else(|| "failed".to_owned(), os_error),
                ),
                ActionStatus::Unsupported => (
                    false,
                    "unsupported",
                    "the guest's agent does not take this action".to_owned(),
                ),
                ActionStatus::Busy => (false, "busy", "the guest is busy; retry".to_owned()),
                ActionStatus::Rejected => (
                    false,
                    "rejected",
                    "the guest rejected the request".to_owned(),
                ),
            };
            (ok, status, detail)
        }
        ActionOutcome::ScanDone(d) => (
            d.status == ScanStatus::Completed,
            scan_status_label(d.status),
            format!("{:?}", d.status),
        ),
        ActionOutcome::TimedOut => (
            false,
            "timed-out",
            "no answer before the deadline (the guest may still act)".to_owned(),
        ),
        ActionOutcome::ConnectionLost => (
            false,
            "connection-lost",
            "the guest's connection ended before it answered".to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use thinagent_protocol::{AgentVersion, FailMode, HealthState, OsKind};

    use super::*;

    fn info(name: &str) -> GuestInfo {
        GuestInfo {
            name: name.into(),
            os: OsKind::Windows,
            agent_version: AgentVersion {
                major: 1,
                minor: 0,
                patch: 0,
            },
            capabilities: Capabilities(0),
            version: 2,
            max_inline_len: 0,
            max_frame_len: 65_536,
            max_reads_in_flight: 4,
        }
    }

    /// A VM reconnects from another vsock port after every reboot, a TLS
    /// guest from another TCP port: the same guest (one row, one `/metrics`
    /// label, its counters and health kept, its name still resolves), its
    /// address the newest. The old connection's end does not disconnect
    /// the new one. Loopback TCP connections stay guests of their own.
    #[test]
    fn a_guest_that_reconnects_from_another_port_is_the_same_guest() {
        let registry = GuestRegistry::default();
        let first = GuestId::Vsock {
            cid: 12,
            port: 1025,
        };
        let second = GuestId::Vsock {
            cid: 12,
            port: 1031,
        };
        let (tx, _rx) = mpsc::unbounded_channel();
        let s1 = registry.connected(&first, &info("web-01"), tx.clone());
        registry
            .counters(&first)
            .bytes_read
            .fetch_add(7, Ordering::Relaxed);
        let s2 = registry.connected(&second, &info("web-01"), tx.clone());
        registry.disconnected(&first, s1);
        // The other order: the newer connection ends first, the older one
        // is still live and takes the commands.
        let third = GuestId::Vsock {
            cid: 12,
            port: 1040,
        };
        let (tx3, mut rx3) = mpsc::unbounded_channel();
        let s3 = registry.connected(&third, &info("web-01"), tx3);
        let (tx4, _rx4) = mpsc::unbounded_channel();
        let fourth = GuestId::Vsock {
            cid: 12,
            port: 1041,
        };
        let s4 = registry.connected(&fourth, &info("web-01"), tx4);
        registry.disconnected(&fourth, s4);
        registry
            .send("vsock:12", GuestCommand::CancelScan { id: 7 })
            .unwrap();
        assert!(rx3.try_recv().is_ok(), "the live connection got it");
        assert_eq!(registry.list()[0].address, "vsock://12:1040");
        registry.disconnected(&third, s3);
        assert_eq!(registry.list()[0].address, "vsock://12:1031");
        let list = registry.list();
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!(list[0].identity, "vsock:12");
        assert_eq!(list[0].address, "vsock://12:1031");
        assert!(list[0].connected, "the old connection's end");
        assert_eq!(list[0].counters.bytes_read, 7);
        assert_eq!(registry.resolve("web-01").unwrap(), "vsock:12");
        registry.disconnected(&second, s2);
        assert!(!registry.list()[0].connected);

        let subject: Arc<str> = "CN=vm-a".into();
        for port in [50_000, 50_001] {
            let tls = GuestId::Tls {
                addr: format!("10.0.0.7:{port}").parse().unwrap(),
                subject: Arc::clone(&subject),
            };
            registry.connected(&tls, &info("vm-a"), tx.clone());
        }
        assert_eq!(registry.resolve("vm-a").unwrap(), "tls:CN=vm-a");

        for port in [4000, 4001] {
            let tcp = GuestId::Tcp(format!("127.0.0.1:{port}").parse().unwrap());
            registry.connected(&tcp, &info("desk"), tx.clone());
        }
        let rows: Vec<String> = registry.list().into_iter().map(|g| g.identity).collect();
        assert_eq!(
            rows,
            [
                "tcp://127.0.0.1:4000",
                "tcp://127.0.0.1:4001",
                "tls:CN=vm-a",
                "vsock:12"
            ]
        );
    }

    /// A `guests.json` of a build that keyed guests by their connection's
    /// address: a guest's rows become one, the newest.
    #[test]
    fn an_older_state_file_with_a_row_per_connection_is_read_as_one_guest() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let row = |port: u32, last_seen_ms: u64| {
            serde_json::json!({
                "identity": format!("vsock://12:{port}"),
                "peer": "vsock:12",
                "peer_names_one_guest": true,
                "name": "web-01",
                "os": "windows",
                "agent_version": [1, 0, 0],
                "capabilities": 0,
                "protocol_version": 2,
                "max_inline_len": 0,
                "max_frame_len": 65536,
                "max_reads_in_flight": 4,
                "connected_since_ms": last_seen_ms - 10,
                "last_seen_ms": last_seen_ms,
            })
        };
        let file = serde_json::json!({"guests": [row(1031, 2_000_000), row(1025, 1_000_000), row(1040, 1_500_000)]});
        std::fs::write(dir.path().join(GUESTS_STATE_FILE), file.to_string()).unwrap();
        let registry = GuestRegistry::restore(&state);
        let list = registry.list();
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!(list[0].identity, "vsock:12");
        assert_eq!(list[0].address, "vsock://12:1031", "the newest row");
        assert!(!list[0].connected);
    }

    fn health(state: u32, fail_mode: FailMode, policy_version: u64, events_sent: u64) -> Health {
        Health {
            policy_version,
            state: HealthState(state),
            fail_mode,
            uptime_ms: 1_000,
            events_sent,
            cache_hits: 0,
            denied: 0,
            fail_decisions: 0,
            sessions: 1,
        }
    }

    /// What the farm publishes on (`Health` state changes): the first
    /// report, then on-access and scan bits, fail mode and policy version,
    /// never counters alone.
    #[test]
    fn a_health_report_is_a_change_only_when_its_state_changes() {
        let registry = GuestRegistry::default();
        let guest = GuestId::Tcp("127.0.0.1:4000".parse().unwrap());
        let on = HealthState::ON_ACCESS.0;
        assert!(
            !registry.health(&guest, health(on, FailMode::Open, 1, 0)),
            "unknown guest"
        );
        let (tx, _rx) = mpsc::unbounded_channel();
        registry.connected(&guest, &info("desk-1"), tx);
        assert!(registry.health(&guest, health(on, FailMode::Open, 1, 0)));
        assert!(!registry.health(&guest, health(on, FailMode::Open, 1, 500)));
        assert!(registry.health(&guest, health(0, FailMode::Open, 1, 501)));
        assert!(registry.health(&guest, health(0, FailMode::Closed, 1, 502)));
        assert!(registry.health(&guest, health(0, FailMode::Closed, 2, 503)));
        assert!(!registry.health(&guest, health(0, FailMode::Closed, 2, 504)));
        let view = registry.view(&registry_key(&guest)).unwrap();
        assert_eq!(view.name, "desk-1");
        assert_eq!(view.policy_version, Some(2));
        let h = view.health.unwrap();
        assert!(!h.on_access);
        assert_eq!((h.fail_mode, h.events_sent), ("closed", 504));
        assert!(registry.view("tcp://127.0.0.1:1").is_none());
    }
}
