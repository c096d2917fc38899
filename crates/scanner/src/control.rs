//! The admin control socket (issue 14): a local Unix socket, guarded by
//! its file permissions (created 0600; the directory decides who reaches
//! it), speaking JSON lines. `thinagent-diag guests`, `remediate` and
//! `scan-guest` are its clients; scripts can speak it directly.
//!
//! One request per line, one or more answer lines:
//!
//! ```text
//! {"cmd":"guests"}
//!   -> {"ok":true,"guests":[{...GuestView...}]}
//! {"cmd":"remediate","guest":"ID or name","path":"/srv/x","action":"delete","timeout_ms":10000}
//!   -> {"ok":true,"status":"done","detail":"..."}   (or "ok":false,"error":"...")
//! {"cmd":"scan","guest":"ID or name","path":"/srv","wait":true}
//!   -> {"scan_id":7}                       (the scan started)
//!   -> {"progress":{...counters...}}       (as the guest reports, if "wait")
//!   -> {"ok":true,"status":"completed","counters":{...}}
//! {"cmd":"cancel-scan","guest":"...","scan_id":7}
//!   -> {"ok":true}
//! {"cmd":"policy-show"}
//!   -> {"ok":true,"version":2,"policy":{...},"guests":[{"identity":..,"policy":{"sent":2,"in_effect":2,"status":"done","pinned":[]}}]}
//! {"cmd":"policy-set","policy":{"fail_mode":"closed","exclusions":[{"kind":"path-prefix","value":"/proc"}]}}
//!   -> {"ok":true,"version":3,"sent_to":["vsock:cid=5"]}
//! {"cmd":"quarantine-list"}
//!   -> {"ok":true,"entries":[{"id":..,"guest":..,"path":..,"threat":..,"size":..,"stored_at":..,"state":"stored","restored":false}]}
//! {"cmd":"quarantine-show","id":"20261203T174010123Z-3f2a9c1b"}
//!   -> {"ok":true,"entry":{...the whole metadata, sha256 and blake3 included...}}
//! {"cmd":"quarantine-restore","id":"...","to":"/srv/elsewhere","timeout_ms":60000}
//!   -> {"ok":true,"id":..,"guest":..,"path":..,"status":"done","detail":"..."}
//! {"cmd":"quarantine-purge","id":"..."}   or   {"cmd":"quarantine-purge","older_than":"30d"}
//!   -> {"ok":true,"purged":["..."]}
//! ```
//!
//! A restore (protocol §14.7) goes only to the guest the entry came from:
//! the same transport identity (§13), connected now and announcing
//! `RESTORE`; naming another guest is refused. The guest writes the bytes
//! to a new file and never overwrites one (`changed`). A restore that is
//! `done` is recorded in the entry (state `restored`; the bytes stay until
//! purged); every restore and purge goes to the event sink (`restore`,
//! `quarantine_purged`) and the audit log.
//!
//! A remediation names a file by the path of a detection the scanner made
//! on that guest: the guest removes it only if it still has the identity
//! that was judged (protocol §14.2), so the admin never needs, and cannot
//! forge, that identity.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use thinagent_protocol::{OsKind, RemediateAction, ScanCounters, ScanFlags, ScanStatus};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::connection::{QuarantineActionRecord, ScanObserver};
use crate::guest_policy::{GuestPolicyConfig, PolicyStore};
use crate::guests::{GuestCommand, GuestRegistry, ScanUpdate, describe_outcome, os_error};
use crate::quarantine::{Entry, EntryState, QuarantineError, QuarantineStore};
use crate::records::PathRecord;
use crate::session::{ActionOutcome, GuestPath, ScanOptions};

/// What the control socket acts on.
pub struct ControlState {
    /// Every guest seen.
    pub guests: Arc<GuestRegistry>,
    /// The host's guest policy.
    pub policy: Arc<PolicyStore>,
    /// The quarantine store, when configured.
    pub quarantine: Option<Arc<std::sync::Mutex<QuarantineStore>>>,
    /// Where restores and purges are reported (events, audit log).
    pub observer: Arc<dyn ScanObserver>,
}

/// Default wait for a restore's answer (the whole restore).
const DEFAULT_RESTORE_TIMEOUT_MS: u64 = 60_000;

/// Longest request line accepted.
const MAX_LINE: usize = 64 * 1024;

/// Default wait for a remediation's answer.
const DEFAULT_REMEDIATE_TIMEOUT_MS: u64 = 10_000;

/// Why the control socket cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Binding failed.
    #[error(
        "cannot open the control socket {path}: {source} (is another scanner running? remove a stale socket file)"
    )]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// One request line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ControlRequest {
    /// Every guest seen.
    Guests,
    /// Remove or empty a detected file on a guest.
    Remediate {
        /// Identity or name.
        guest: String,
        /// The path of a detection on that guest.
        path: String,
        /// `delete` (default) or `truncate`.
        #[serde(default)]
        action: RemediateKind,
        /// How long to wait for the guest.
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// Scan a tree on a guest.
    Scan {
        /// Identity or name.
        guest: String,
        /// The root, as the guest names it.
        path: String,
        /// Stream progress and wait for the end (else answer once started).
        #[serde(default)]
        wait: bool,
        /// Enter other volumes / mount points.
        #[serde(default)]
        cross_mounts: bool,
        /// Directory levels to enter (0 = unlimited).
        #[serde(default)]
        max_depth: u16,
    },
    /// The host's guest policy and how each guest took it.
    PolicyShow,
    /// Replace the host's guest policy (until the scanner restarts) and send
    /// it to every connected guest that takes one.
    PolicySet {
        /// The new policy (unset fields: each guest keeps its own value).
        policy: GuestPolicyConfig,
    },
    /// Stop a scan.
    CancelScan {
        /// Identity or name.
        guest: String,
        /// The scan's id.
        scan_id: u64,
    },
    /// Every quarantine entry.
    QuarantineList,
    /// One entry's whole metadata.
    QuarantineShow {
        /// The entry.
        id: String,
    },
    /// Write an entry's bytes back to the guest it came from.
    QuarantineRestore {
        /// The entry.
        id: String,
        /// Another path on that guest (default: where it was).
        #[serde(default)]
        to: Option<String>,
        /// The guest, if the admin names one: it must be the entry's.
        #[serde(default)]
        guest: Option<String>,
        /// How long to wait for the guest.
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// Remove entries' bytes.
    QuarantinePurge {
        /// One entry.
        #[serde(default)]
        id: Option<String>,
        /// Or every entry stored longer ago than this (`30d`, `12h`,
        /// `90m`, `45s`).
        #[serde(default)]
        older_than: Option<String>,
    },
}

/// `delete` or `truncate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RemediateKind {
    /// Remove the file's name.
    #[default]
    Delete,
    /// Empty the file.
    Truncate,
}

/// Binds the control socket at `path` (mode 0600; a stale socket file
/// from an earlier run is replaced).
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let err = |source| ControlError::Bind {
        path: path.to_owned(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && meta.file_type().is_socket()
        && std::os::unix::net::UnixStream::connect(path).is_err()
    {
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Serves the control socket until `stop` turns true (or is dropped), then
/// ends every client connection and waits until they are gone: when this
/// returns, nothing of the service's state is held here any more (a
/// service started again in the same process can take its locks).
pub async fn serve(
    listener: UnixListener,
    state: Arc<ControlState>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut clients = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Reap finished clients so the set stays small.
                    while clients.try_join_next().is_some() {}
                    clients.spawn(client(stream, state.clone()));
                }
                Err(e) => {
                    tracing::warn!("control socket accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
    clients.abort_all();
    while clients.join_next().await.is_some() {}
}

async fn client(stream: UnixStream, state: Arc<ControlState>) {
    let (rd, mut wr) = stream.into_split();
    let mut lines = BufReader::new(rd).lines();
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            _ => return,
        };
        if line.len() > MAX_LINE {
            let _ = write_line(&mut wr, &error("request line too long")).await;
            return;
        }
        if line.trim().is_empty() {
            continue;
        }
        let request: ControlRequest = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                let msg = format!("bad request: {e}");
                if write_line(&mut wr, &error(&msg)).await.is_err() {
                    return;
                }
                continue;
            }
        };
        if handle(request, &state, &mut wr).await.is_err() {
            return;
        }
    }
}

type Writer = tokio::net::unix::OwnedWriteHalf;

async fn write_line(wr: &mut Writer, value: &serde_json::Value) -> std::io::Result<()> {
    let mut line = value.to_string();
    line.push('\n');
    wr.write_all(line.as_bytes()).await
}

fn error(message: &str) -> serde_json::Value {
    json!({ "ok": false, "error": message })
}

/// A path as the guest `identity` spells it (Windows guests: UTF-16).
fn guest_path(guests: &GuestRegistry, identity: &str, path: &str) -> GuestPath {
    GuestPath::for_os(guests.os(identity).unwrap_or(OsKind::Linux), path)
}

async fn handle(
    request: ControlRequest,
    state: &ControlState,
    wr: &mut Writer,
) -> std::io::Result<()> {
    let (guests, policy) = (&*state.guests, &*state.policy);
    match request {
        ControlRequest::QuarantineList => write_line(wr, &quarantine_list(state).await).await,
        ControlRequest::QuarantineShow { id } => {
            write_line(wr, &quarantine_show(state, id).await).await
        }
        ControlRequest::QuarantineRestore {
            id,
            to,
            guest,
            timeout_ms,
        } => {
            let answer = quarantine_restore(state, id, to, guest, timeout_ms).await;
            write_line(wr, &answer).await
        }
        ControlRequest::QuarantinePurge { id, older_than } => {
            write_line(wr, &quarantine_purge(state, id, older_than).await).await
        }
        ControlRequest::PolicyShow => {
            let (version, current) = policy.get();
            let per_guest: Vec<serde_json::Value> = guests
                .list()
                .into_iter()
                .map(|g| {
                    json!({
                        "identity": g.identity,
                        "name": g.name,
                        "connected": g.connected,
                        "takes_policy": g.actions.contains(&"policy"),
                        "policy": g.policy,
                    })
                })
                .collect();
            write_line(
                wr,
                &json!({ "ok": true, "version": version, "policy": current, "guests": per_guest }),
            )
            .await
        }
        ControlRequest::PolicySet { policy: new } => {
            if let Err(e) = new.validate() {
                return write_line(wr, &error(&e.to_string())).await;
            }
            let version = match policy.set(new) {
                Ok(v) => v,
                Err(e) => {
                    return write_line(
                        wr,
                        &error(&format!("policy not changed: it could not be saved: {e}")),
                    )
                    .await;
                }
            };
            let sent_to = guests.broadcast(|| GuestCommand::PushPolicy);
            write_line(
                wr,
                &json!({ "ok": true, "version": version, "sent_to": sent_to }),
            )
            .await
        }
        ControlRequest::Guests => {
            write_line(wr, &json!({ "ok": true, "guests": guests.list() })).await
        }
        ControlRequest::Remediate {
            guest,
            path,
            action,
            timeout_ms,
        } => {
            let answer = remediate(guests, &guest, &path, action, timeout_ms).await;
            write_line(wr, &answer).await
        }
        ControlRequest::Scan {
            guest,
            path,
            wait,
            cross_mounts,
            max_depth,
        } => {
            let identity = match guests.resolve(&guest) {
                Ok(id) => id,
                Err(e) => return write_line(wr, &error(&e.to_string())).await,
            };
            let (tx, mut rx) = mpsc::unbounded_channel();
            let options = ScanOptions {
                flags: if cross_mounts {
                    ScanFlags::CROSS_MOUNTS
                } else {
                    ScanFlags::default()
                },
                max_depth,
                ..ScanOptions::default()
            };
            let command = GuestCommand::Scan {
                root: guest_path(guests, &identity, &path),
                options,
                updates: tx,
            };
            if let Err(e) = guests.send(&identity, command) {
                return write_line(wr, &error(&e.to_string())).await;
            }
            while let Some(update) = rx.recv().await {
                match update {
                    ScanUpdate::Started(id) => {
                        write_line(wr, &json!({ "scan_id": id, "guest": identity })).await?;
                        if !wait {
                            return write_line(wr, &json!({ "ok": true, "scan_id": id })).await;
                        }
                    }
                    ScanUpdate::Progress(c) => {
                        write_line(wr, &json!({ "progress": counters(&c) })).await?;
                    }
                    ScanUpdate::Done(result) => {
                        return write_line(wr, &scan_answer(result)).await;
                    }
                }
            }
            write_line(wr, &error("the guest's connection ended")).await
        }
        ControlRequest::CancelScan { guest, scan_id } => {
            let answer = match guests
                .resolve(&guest)
                .and_then(|id| guests.send(&id, GuestCommand::CancelScan { id: scan_id }))
            {
                Ok(()) => json!({ "ok": true }),
                Err(e) => error(&e.to_string()),
            };
            write_line(wr, &answer).await
        }
    }
}

async fn remediate(
    guests: &GuestRegistry,
    guest: &str,
    path: &str,
    action: RemediateKind,
    timeout_ms: Option<u64>,
) -> serde_json::Value {
    let identity = match guests.resolve(guest) {
        Ok(id) => id,
        Err(e) => return error(&e.to_string()),
    };
    let Some(detection) = guests.find_detection(&identity, path) else {
        return error(&format!(
            "no detection of {path:?} is recorded for guest {identity}: only a file this scanner denied can be remediated (scan it first: thinagent-diag scan-guest)"
        ));
    };
    let deadline = Duration::from_millis(timeout_ms.unwrap_or(DEFAULT_REMEDIATE_TIMEOUT_MS).max(1));
    let (reply, answer) = oneshot::channel();
    let command = GuestCommand::Remediate {
        action: match action {
            RemediateKind::Delete => RemediateAction::Delete,
            RemediateKind::Truncate => RemediateAction::Truncate,
        },
        path: detection.path.clone(),
        file: detection.file,
        deadline,
        reply,
    };
    if let Err(e) = guests.send(&identity, command) {
        return error(&e.to_string());
    }
    match answer.await {
        Err(_) => error("the guest's connection ended before it answered"),
        Ok(Err(e)) => error(&e.to_string()),
        Ok(Ok(outcome)) => {
            let (ok, status, detail) = describe_outcome(outcome);
            json!({
                "ok": ok,
                "guest": identity,
                "path": path,
                "threat": detection.threat,
                "status": status,
                "detail": detail,
            })
        }
    }
}

fn counters(c: &ScanCounters) -> serde_json::Value {
    json!({
        "files_seen": c.files_seen,
        "files_scanned": c.files_scanned,
        "files_denied": c.files_denied,
        "files_skipped": c.files_skipped,
        "errors": c.errors,
        "bytes": c.bytes,
    })
}

fn scan_answer(result: Result<ActionOutcome, crate::session::ActionError>) -> serde_json::Value {
    match result {
        Err(e) => error(&e.to_string()),
        Ok(ActionOutcome::ScanDone(d)) => {
            let status = crate::guests::scan_status_label(d.status);
            json!({
                "ok": d.status == ScanStatus::Completed,
                "status": status,
                "error": d.error.map(os_error),
                "counters": counters(&d.counters),
            })
        }
        Ok(other) => {
            let (_, status, detail) = describe_outcome(other);
            json!({ "ok": false, "status": status, "error": detail })
        }
    }
}

// ----- quarantine ----------------------------------------------------------

/// Runs `op` on the store off the runtime (it does blocking file I/O).
async fn with_store<T: Send + 'static>(
    state: &ControlState,
    op: impl FnOnce(&mut QuarantineStore) -> Result<T, QuarantineError> + Send + 'static,
) -> Result<T, String> {
    let Some(store) = state.quarantine.clone() else {
        return Err("no quarantine is configured: set quarantine.dir in the scanner's configuration (or --quarantine-dir)".into());
    };
    tokio::task::spawn_blocking(move || {
        let mut store = store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        op(&mut store).map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(format!("quarantine operation failed: {e}")))
}

/// One line of `quarantine-list`.
fn summary(e: &Entry) -> serde_json::Value {
    json!({
        "id": e.id,
        "guest": e.guest.address,
        "peer": e.guest.peer,
        "guest_name": e.guest.name,
        "path": e.path.display,
        "threat": e.threat,
        "size": e.size,
        "stored_at": e.stored_at,
        "state": e.state.as_str(),
        "restored": e.state == EntryState::Restored,
        "state_changed_at": e.state_changed_at,
    })
}

async fn quarantine_list(state: &ControlState) -> serde_json::Value {
    match with_store(state, |s| Ok(s.list().map(summary).collect::<Vec<_>>())).await {
        Ok(entries) => json!({ "ok": true, "entries": entries }),
        Err(e) => error(&e),
    }
}

async fn quarantine_show(state: &ControlState, id: String) -> serde_json::Value {
    match with_store(state, move |s| s.get(&id).cloned()).await {
        Ok(entry) => json!({ "ok": true, "entry": entry }),
        Err(e) => error(&e),
    }
}

async fn quarantine_restore(
    state: &ControlState,
    id: String,
    to: Option<String>,
    guest: Option<String>,
    timeout_ms: Option<u64>,
) -> serde_json::Value {
    let started = std::time::Instant::now();
    let entry = {
        let id = id.clone();
        match with_store(state, move |s| s.get(&id).cloned()).await {
            Ok(e) => e,
            Err(e) => return error(&e),
        }
    };
    if entry.state == EntryState::Purged {
        return error(&format!(
            "quarantine entry {id} was purged: its bytes are gone, there is nothing to restore"
        ));
    }
    // Only to the guest it came from (the same transport identity).
    let identity = match state
        .guests
        .connected_as(&entry.guest.peer, &entry.guest.name)
    {
        Ok(identity) => identity,
        Err(e) => {
            return error(&format!(
                "entry {id} came from {} ({}): {e}; a restore goes only to that guest, once it is connected",
                entry.guest.address, entry.guest.name
            ));
        }
    };
    if let Some(named) = &guest {
        match state.guests.resolve(named) {
            Ok(g) if g == identity => {}
            Ok(g) => {
                return error(&format!(
                    "entry {id} came from {identity}, not {g}: a quarantined file goes back only to the guest it came from"
                ));
            }
            Err(e) => return error(&e.to_string()),
        }
    }
    let path = match &to {
        Some(p) => guest_path(&state.guests, &identity, p),
        None => match entry.path.guest_path() {
            Some(p) => p,
            None => {
                return error(&format!(
                    "entry {id}'s path record cannot be read back; give the path with --to"
                ));
            }
        },
    };
    let content = {
        let id = id.clone();
        match with_store(state, move |s| s.read(&id)).await {
            Ok(c) => c,
            Err(e) => return error(&e),
        }
    };
    let deadline = Duration::from_millis(timeout_ms.unwrap_or(DEFAULT_RESTORE_TIMEOUT_MS).max(1));
    let (reply, answer) = oneshot::channel();
    let command = GuestCommand::Restore {
        path: path.clone(),
        content,
        deadline,
        reply,
    };
    if let Err(e) = state.guests.send(&identity, command) {
        return error(&e.to_string());
    }
    let outcome = match answer.await {
        Err(_) => ActionOutcome::ConnectionLost,
        Ok(Err(e)) => return error(&e.to_string()),
        Ok(Ok(outcome)) => outcome,
    };
    let (ok, status, mut detail) = describe_outcome(outcome);
    if status == "changed" {
        detail = "a file exists at that path: nothing was written (a restore never overwrites; move it away, or restore --to another path)".into();
    }
    let mut entry = entry;
    if ok {
        let id = id.clone();
        match with_store(state, move |s| {
            s.mark_restored(&id, std::time::SystemTime::now())
        })
        .await
        {
            Ok(e) => entry = e,
            Err(e) => detail = format!("{detail}; but the entry could not be marked restored: {e}"),
        }
    }
    let path_record = PathRecord::from(&path);
    state
        .observer
        .on_quarantine_action(&QuarantineActionRecord {
            action: "restore",
            entry: entry.clone(),
            path: path_record.clone(),
            status: status.to_owned(),
            detail: detail.clone(),
            duration: started.elapsed(),
        });
    json!({
        "ok": ok,
        "id": id,
        "guest": identity,
        "path": path_record.display,
        "size": entry.size,
        "threat": entry.threat,
        "status": status,
        "detail": detail,
    })
}

/// `30d`, `12h`, `90m`, `45s` (or plain seconds).
fn parse_age(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = digits.parse().ok()?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return None,
    };
    n.checked_mul(secs).map(Duration::from_secs)
}

async fn quarantine_purge(
    state: &ControlState,
    id: Option<String>,
    older_than: Option<String>,
) -> serde_json::Value {
    let started = std::time::Instant::now();
    let now = std::time::SystemTime::now();
    let purged = match (id, older_than) {
        (Some(id), None) => with_store(state, move |s| s.purge(&id, now).map(|e| vec![e])).await,
        (None, Some(age)) => {
            let Some(age) = parse_age(&age) else {
                return error(&format!(
                    "--older-than {age:?}: give a number with s, m, h, d or w (e.g. 30d)"
                ));
            };
            let cutoff = now.checked_sub(age).unwrap_or(std::time::UNIX_EPOCH);
            with_store(state, move |s| s.purge_older_than(cutoff, now)).await
        }
        _ => return error("give exactly one of an entry id or --older-than"),
    };
    match purged {
        Err(e) => error(&e),
        Ok(entries) => {
            for e in &entries {
                state
                    .observer
                    .on_quarantine_action(&QuarantineActionRecord {
                        action: "purge",
                        entry: e.clone(),
                        path: e.path.clone(),
                        status: "done".into(),
                        detail: "the bytes are removed; the entry stays as a record".into(),
                        duration: started.elapsed(),
                    });
            }
            let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
            json!({ "ok": true, "purged": ids })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_a_person_writes_them() {
        assert_eq!(parse_age("30d"), Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_age("12h"), Some(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_age("90m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_age("45"), Some(Duration::from_secs(45)));
        assert_eq!(parse_age("2w"), Some(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse_age("d"), None);
        assert_eq!(parse_age("3y"), None);
        assert_eq!(parse_age("-3d"), None);
    }
}
