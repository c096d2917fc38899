//! The host's requests of protocol version 2 (`docs/protocol.md` §14):
//! `Remediate`, `Policy`, `Restore` (answered by `ActionResult`) and
//! `ScanTree` / `ScanCancel` (answered by `ScanDone`), sent by
//! [`HostSession`] on the application's call and tracked until their one
//! answer, their deadline, or the end of the connection.
//!
//! Every request ends in exactly one [`SessionEvent::ActionDone`]. The
//! session refuses (with an [`ActionError`], nothing sent) what §14.1 does
//! not allow: a version-1 session, a guest without the capability, more
//! than [`MAX_ACTIONS_IN_FLIGHT`] actions or a second scan or restore.

use std::time::{Duration, Instant};

use thinagent_protocol::{
    ActionResult, Capabilities, FileIdentity, FilePath, HEADER_LEN, HOST_ACTIONS_VERSION,
    MAX_ACTIONS_IN_FLIGHT, MAX_RESTORE_CHUNK, Message, PayloadError, Policy,
    RESTORE_DATA_FIXED_LEN, Remediate, RemediateAction, Restore, RestoreData, ScanCancel,
    ScanCounters, ScanDone, ScanFlags, ScanTree,
};

use super::{HostSession, SessionEvent, State};
use crate::session::types::GuestPath;

/// Which request an outstanding host action is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActionKind {
    /// `Remediate` (§14.2).
    Remediate,
    /// `Policy` (§14.6).
    Policy,
    /// `Restore` (§14.7).
    Restore,
    /// `ScanTree` (§14.4).
    ScanTree,
}

impl ActionKind {
    /// The name for logs and audit records.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Remediate => "remediate",
            Self::Policy => "policy",
            Self::Restore => "restore",
            Self::ScanTree => "scan_tree",
        }
    }
}

/// How a host action ended: exactly one per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionOutcome {
    /// The guest's `ActionResult` (`Remediate`, `Policy`, `Restore`).
    Result(ActionResult),
    /// The guest's `ScanDone` (`ScanTree`).
    ScanDone(ScanDone),
    /// No answer before the request's deadline (a later one is ignored).
    TimedOut,
    /// The connection ended first.
    ConnectionLost,
}

/// Why [`HostSession`] did not send a host action. Nothing was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    /// The handshake is not done, or the session is closed.
    #[error("the guest is not connected")]
    NotConnected,
    /// The session speaks version 1, which has no host actions.
    #[error(
        "the guest speaks protocol version {0}; host actions need version 2 (upgrade its agent)"
    )]
    Version(u16),
    /// The guest did not announce the capability.
    #[error("the guest does not support {0} (its agent did not announce the capability)")]
    Unsupported(&'static str),
    /// §14.1's limit of outstanding actions is reached.
    #[error("{MAX_ACTIONS_IN_FLIGHT} actions are already outstanding at this guest; retry later")]
    TooManyInFlight,
    /// A scan already runs at this guest.
    #[error("a scan already runs at this guest (id {0}); cancel it or wait for it")]
    ScanRunning(u64),
    /// A restore already runs at this guest.
    #[error("a restore already runs at this guest (id {0}); wait for it")]
    RestoreRunning(u64),
    /// No scan with this id runs.
    #[error("no scan with id {0} runs at this guest")]
    NoSuchScan(u64),
    /// The request is not valid (e.g. an empty path, a deadline of 0).
    #[error("invalid request: {0}")]
    Invalid(PayloadError),
    /// The request does not fit the guest's frame limit.
    #[error("the request ({len} bytes) does not fit the guest's frame limit ({max} bytes)")]
    TooLarge {
        /// Encoded frame length.
        len: usize,
        /// The guest's `max_frame_len`.
        max: usize,
    },
}

/// What a scan asks of the guest (the fields of `ScanTree`, §14.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanOptions {
    /// Walk flags.
    pub flags: ScanFlags,
    /// Most `OnDemand` events outstanding at once, ≥ 1.
    pub max_in_flight: u16,
    /// Directory levels to enter; 0 = unlimited.
    pub max_depth: u16,
    /// How often the guest reports progress; zero = never.
    pub progress_interval: Duration,
    /// Larger files are skipped; 0 = the guest's own limit only.
    pub max_file_size: u64,
}

impl Default for ScanOptions {
    fn default() -> Self {
        Self {
            flags: ScanFlags::default(),
            max_in_flight: 4,
            max_depth: 0,
            progress_interval: Duration::from_secs(1),
            max_file_size: 0,
        }
    }
}

/// The content of a restore still to be sent (§14.7).
#[derive(Debug)]
pub(super) struct RestoreOut {
    id: u64,
    content: Vec<u8>,
    /// Offset of the next chunk.
    next: usize,
    /// Bytes per chunk.
    chunk: usize,
}

/// An action waiting for its answer.
#[derive(Debug, Clone, Copy)]
pub(super) struct Outstanding {
    pub(super) kind: ActionKind,
    /// `None` for a scan (it has no deadline, §14.1).
    pub(super) deadline: Option<Instant>,
}

fn millis_u32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX).max(1)
}

impl HostSession {
    /// Outstanding host actions (requests of §14 without their answer).
    pub fn actions_in_flight(&self) -> usize {
        self.actions.len()
    }

    /// Asks the guest to delete or truncate the file at `path`, only if it
    /// still has the identity `file` (normally both from the `FileEvent`
    /// that was judged, §14.2). Returns the request id; the answer comes as
    /// [`SessionEvent::ActionDone`].
    pub fn remediate(
        &mut self,
        action: RemediateAction,
        path: &GuestPath,
        file: FileIdentity,
        deadline: Duration,
        now: Instant,
    ) -> Result<u64, ActionError> {
        self.now = now;
        self.check_action(Capabilities::REMEDIATE, "remediation")?;
        let wire = path.to_wire_bytes();
        let msg = Message::Remediate(Remediate {
            action,
            deadline_ms: millis_u32(deadline),
            file,
            path: wire.as_file_path(),
        });
        self.send_action(&msg, ActionKind::Remediate, Some(deadline))
    }

    /// Sends the guest its policy (§14.6). The answer's `value` is the
    /// version in effect and its `pinned` the fields the guest's admin
    /// pinned locally.
    pub fn set_policy(&mut self, policy: &Policy<'_>, now: Instant) -> Result<u64, ActionError> {
        self.now = now;
        self.check_action(Capabilities::POLICY, "host policy")?;
        let deadline = Duration::from_millis(policy.deadline_ms.into());
        self.send_action(
            &Message::Policy(*policy),
            ActionKind::Policy,
            Some(deadline),
        )
    }

    /// Writes `content` back to `path` on the guest (§14.7): `Restore`,
    /// then the bytes in `RestoreData` chunks of at most
    /// `MAX_RESTORE_CHUNK` bytes that fit the guest's frame limit. Only on
    /// an administrator's explicit command.
    ///
    /// The chunks are paced (§14.7): one is encoded only when everything
    /// queued before it was taken by [`transmit_pending`](Self::transmit_pending)
    /// or [`poll_transmit`](Self::poll_transmit), so a `Verdict` never
    /// waits behind more than one chunk, and a guest that stops reading
    /// holds the restore back through the transport, not the host's
    /// memory. The chunks stop when the restore ends (its answer, its
    /// deadline, the connection).
    pub fn restore(
        &mut self,
        path: &GuestPath,
        content: &[u8],
        deadline: Duration,
        now: Instant,
    ) -> Result<u64, ActionError> {
        self.now = now;
        self.check_action(Capabilities::RESTORE, "restore")?;
        if let Some((id, _)) = self
            .actions
            .iter()
            .find(|(_, a)| a.kind == ActionKind::Restore)
        {
            return Err(ActionError::RestoreRunning(*id));
        }
        let wire = path.to_wire_bytes();
        let msg = Message::Restore(Restore {
            size: content.len() as u64,
            deadline_ms: millis_u32(deadline),
            path: wire.as_file_path(),
        });
        let id = self.send_action(&msg, ActionKind::Restore, Some(deadline))?;
        let chunk = self
            .guest_max_frame()
            .saturating_sub(HEADER_LEN + RESTORE_DATA_FIXED_LEN)
            .clamp(1, MAX_RESTORE_CHUNK);
        self.restore_out = Some(RestoreOut {
            id,
            content: content.to_vec(),
            next: 0,
            chunk,
        });
        self.pump_restore();
        Ok(id)
    }

    /// Queues the next chunk of the restore being sent, if the outgoing
    /// buffer is empty (pacing, §14.7) and the restore is still
    /// outstanding.
    pub(super) fn pump_restore(&mut self) {
        if self.tx_backlog() > 0 || self.state != State::Connected {
            return;
        }
        let Some(out) = self.restore_out.take() else {
            return;
        };
        if !self.actions.contains_key(&out.id) {
            return;
        }
        let end = out.next.saturating_add(out.chunk).min(out.content.len());
        let last = end == out.content.len();
        let data = Message::RestoreData(RestoreData {
            offset: out.next as u64,
            last,
            data: out.content.get(out.next..end).unwrap_or_default(),
        });
        self.push(&data, out.id);
        if !last {
            self.restore_out = Some(RestoreOut { next: end, ..out });
        }
    }

    /// Asks the guest to judge every file under `root` (§14.4); its files
    /// arrive as `OnDemand` queries, progress as
    /// [`SessionEvent::ScanProgress`], the end as
    /// [`SessionEvent::ActionDone`] with [`ActionOutcome::ScanDone`].
    pub fn scan_tree(
        &mut self,
        root: &GuestPath,
        options: ScanOptions,
        now: Instant,
    ) -> Result<u64, ActionError> {
        self.now = now;
        self.check_version_and_capability(Capabilities::SCAN_TREE, "on-demand scans")?;
        if let Some((id, _)) = self
            .actions
            .iter()
            .find(|(_, a)| a.kind == ActionKind::ScanTree)
        {
            return Err(ActionError::ScanRunning(*id));
        }
        let wire = root.to_wire_bytes();
        let msg = Message::ScanTree(ScanTree {
            flags: options.flags,
            max_in_flight: options.max_in_flight,
            max_depth: options.max_depth,
            progress_interval_ms: u32::try_from(options.progress_interval.as_millis())
                .unwrap_or(u32::MAX),
            max_file_size: options.max_file_size,
            root: wire.as_file_path(),
        });
        self.send_action(&msg, ActionKind::ScanTree, None)
    }

    /// Stops the running scan `id` (§14.5); its `ScanDone` (`Cancelled`)
    /// still ends it.
    pub fn cancel_scan(&mut self, id: u64, now: Instant) -> Result<(), ActionError> {
        self.now = now;
        if !self
            .actions
            .get(&id)
            .is_some_and(|a| a.kind == ActionKind::ScanTree)
        {
            return Err(ActionError::NoSuchScan(id));
        }
        self.push(&Message::ScanCancel(ScanCancel), id);
        Ok(())
    }

    fn check_version_and_capability(
        &self,
        capability: Capabilities,
        what: &'static str,
    ) -> Result<(), ActionError> {
        let Some(guest) = self
            .guest
            .as_ref()
            .filter(|_| self.state == State::Connected)
        else {
            return Err(ActionError::NotConnected);
        };
        if self.version < HOST_ACTIONS_VERSION {
            return Err(ActionError::Version(self.version));
        }
        if !guest.capabilities.contains(capability) {
            return Err(ActionError::Unsupported(what));
        }
        Ok(())
    }

    fn check_action(
        &self,
        capability: Capabilities,
        what: &'static str,
    ) -> Result<(), ActionError> {
        self.check_version_and_capability(capability, what)?;
        let actions = self
            .actions
            .values()
            .filter(|a| a.kind != ActionKind::ScanTree)
            .count();
        if actions >= MAX_ACTIONS_IN_FLIGHT as usize {
            return Err(ActionError::TooManyInFlight);
        }
        Ok(())
    }

    fn guest_max_frame(&self) -> usize {
        self.guest
            .as_ref()
            .map_or(thinagent_protocol::MIN_FRAME_LEN, |g| {
                g.max_frame_len as usize
            })
    }

    /// Validates, checks the guest's frame limit, sends, and records.
    fn send_action(
        &mut self,
        msg: &Message<'_>,
        kind: ActionKind,
        deadline: Option<Duration>,
    ) -> Result<u64, ActionError> {
        msg.validate_for(self.version)
            .map_err(ActionError::Invalid)?;
        let len = msg.encoded_len_for(self.version);
        let max = self.guest_max_frame();
        if len > max {
            return Err(ActionError::TooLarge { len, max });
        }
        let id = self.alloc_read_id();
        self.push(msg, id);
        let deadline = deadline.and_then(|d| self.now.checked_add(d));
        self.actions.insert(id, Outstanding { kind, deadline });
        Ok(id)
    }

    /// The earliest deadline of an outstanding action.
    pub(super) fn next_action_deadline(&self) -> Option<Instant> {
        self.actions.values().filter_map(|a| a.deadline).min()
    }

    /// Ends the actions whose deadline passed.
    pub(super) fn expire_actions(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .actions
            .iter()
            .filter(|(_, a)| a.deadline.is_some_and(|d| now >= d))
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(a) = self.actions.remove(&id) {
                self.events.push_back(SessionEvent::ActionDone {
                    id,
                    kind: a.kind,
                    outcome: ActionOutcome::TimedOut,
                });
            }
        }
    }

    /// Ends every outstanding action: the connection is over.
    pub(super) fn abandon_actions(&mut self) {
        let mut ids: Vec<u64> = self.actions.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            if let Some(a) = self.actions.remove(&id) {
                self.events.push_back(SessionEvent::ActionDone {
                    id,
                    kind: a.kind,
                    outcome: ActionOutcome::ConnectionLost,
                });
            }
        }
    }

    /// An `ActionResult`: ends its action, or matches nothing (§14.1).
    pub(super) fn on_action_result(&mut self, id: u64, result: ActionResult) -> bool {
        match self.actions.get(&id) {
            Some(a) if a.kind != ActionKind::ScanTree => {
                let kind = a.kind;
                self.actions.remove(&id);
                self.events.push_back(SessionEvent::ActionDone {
                    id,
                    kind,
                    outcome: ActionOutcome::Result(result),
                });
                true
            }
            _ => false,
        }
    }

    /// A `ScanProgress` (`done` = `None`) or `ScanDone` of scan `id`.
    pub(super) fn on_scan_report(
        &mut self,
        id: u64,
        counters: ScanCounters,
        done: Option<ScanDone>,
    ) -> bool {
        if !self
            .actions
            .get(&id)
            .is_some_and(|a| a.kind == ActionKind::ScanTree)
        {
            return false;
        }
        match done {
            None => self
                .events
                .push_back(SessionEvent::ScanProgress { id, counters }),
            Some(done) => {
                self.actions.remove(&id);
                self.events.push_back(SessionEvent::ActionDone {
                    id,
                    kind: ActionKind::ScanTree,
                    outcome: ActionOutcome::ScanDone(done),
                });
            }
        }
        true
    }
}

/// A guest path in its wire encoding, owned, to borrow a [`FilePath`] from.
pub(crate) struct WirePath {
    utf8: Option<String>,
    bytes: Vec<u8>,
    utf16: bool,
}

impl WirePath {
    pub(crate) fn as_file_path(&self) -> FilePath<'_> {
        match (&self.utf8, self.utf16) {
            (Some(s), _) => FilePath::Utf8(s),
            (None, true) => FilePath::Utf16Le(&self.bytes),
            (None, false) => FilePath::Bytes(&self.bytes),
        }
    }
}

impl GuestPath {
    /// `text` as a guest running `os` spells paths (Windows: UTF-16, the
    /// others UTF-8): how the host names a file an admin typed, or an
    /// exclusion of its policy.
    pub fn for_os(os: thinagent_protocol::OsKind, text: &str) -> Self {
        match os {
            thinagent_protocol::OsKind::Windows => Self::Utf16(text.encode_utf16().collect()),
            _ => Self::Utf8(text.to_owned()),
        }
    }

    /// The path as it goes on the wire (UTF-16 as little-endian bytes).
    pub(crate) fn to_wire_bytes(&self) -> WirePath {
        match self {
            Self::Utf8(s) => WirePath {
                utf8: Some(s.clone()),
                bytes: Vec::new(),
                utf16: false,
            },
            Self::Utf16(units) => WirePath {
                utf8: None,
                bytes: units.iter().flat_map(|u| u.to_le_bytes()).collect(),
                utf16: true,
            },
            Self::Bytes(b) => WirePath {
                utf8: None,
                bytes: b.clone(),
                utf16: false,
            },
        }
    }
}
