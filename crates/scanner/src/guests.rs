//! The guests the scanner knows (issue 14's "guest health"): every guest
//! identity seen since the service started, its announced details, its
//! last `Health` report (protocol §14.8), its recent detections, and while
//! it is connected a channel to its connection, through which the admin
//! interface ([`crate::control`]) sends host actions (§14).
//!
//! Keyed by the transport identity ([`GuestId`]'s text, §13): never by the
//! guest's announced name, which is a label.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use thinagent_protocol::{
    ActionStatus, Capabilities, FileIdentity, Health, OsError, RemediateAction, ScanCounters,
    ScanStatus,
};
use tokio::sync::{mpsc, oneshot};

use crate::audit::rfc3339;
use crate::connection::GuestId;
use crate::session::{ActionError, ActionOutcome, GuestInfo, GuestPath, ScanOptions};

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

/// One guest as the registry keeps it.
#[derive(Debug)]
struct Entry {
    identity: String,
    /// The transport identity (§13) its connections vouch for, and
    /// whether it names one guest (else the announced name tells guests
    /// behind it apart).
    peer: (String, bool),
    info: Option<GuestInfo>,
    connected: bool,
    connected_since: SystemTime,
    last_seen: SystemTime,
    health: Option<(Health, SystemTime)>,
    detections: VecDeque<Detection>,
    policy: Option<PolicyState>,
    /// The live connection: its serial and command channel.
    conn: Option<(u64, mpsc::UnboundedSender<GuestCommand>)>,
}

/// A guest as the admin interface shows it (`thinagent-diag guests`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GuestView {
    /// The transport identity (§13).
    pub identity: String,
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
}

impl GuestRegistry {
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
        let identity = guest.to_string();
        let mut guests = self.lock();
        let peer = guest.peer();
        let entry = guests.entry(identity.clone()).or_insert_with(|| Entry {
            identity,
            peer: (peer.to_string(), peer.names_one_guest()),
            info: None,
            connected: false,
            connected_since: now,
            last_seen: now,
            health: None,
            detections: VecDeque::new(),
            policy: None,
            conn: None,
        });
        entry.info = Some(info.clone());
        entry.connected = true;
        entry.connected_since = now;
        entry.last_seen = now;
        entry.conn = Some((serial, commands));
        serial
    }

    /// The connection `serial` of `guest` ended.
    pub fn disconnected(&self, guest: &GuestId, serial: u64) {
        let mut guests = self.lock();
        if let Some(e) = guests.get_mut(&guest.to_string())
            && e.conn.as_ref().is_some_and(|(s, _)| *s == serial)
        {
            e.conn = None;
            e.connected = false;
            e.last_seen = SystemTime::now();
        }
    }

    /// A `Health` report arrived.
    pub fn health(&self, guest: &GuestId, health: Health) {
        if let Some(e) = self.lock().get_mut(&guest.to_string()) {
            let now = SystemTime::now();
            e.health = Some((health, now));
            e.last_seen = now;
        }
    }

    /// The policy of `version` went to `guest`.
    pub fn policy_sent(&self, guest: &GuestId, version: u64) {
        if let Some(e) = self.lock().get_mut(&guest.to_string()) {
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
        let mut guests = self.lock();
        let Some(e) = guests.get_mut(&guest.to_string()) else {
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
                let (_, tx) = e.conn.as_ref()?;
                tx.send(command()).ok().map(|()| e.identity.clone())
            })
            .collect();
        reached.sort();
        reached
    }

    /// `guest` was denied `detection.path` for a detection.
    pub fn detection(&self, guest: &GuestId, detection: Detection) {
        if let Some(e) = self.lock().get_mut(&guest.to_string()) {
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
        match &e.conn {
            Some((_, tx)) => tx
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
        found.sort_by_key(|e| std::cmp::Reverse(e.connected));
        match found.first() {
            Some(e) if e.conn.is_some() => Ok(e.identity.clone()),
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
        connected: e.connected,
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
            "scan-done",
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
