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
//! ```
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

use crate::guest_policy::{GuestPolicyConfig, PolicyStore};
use crate::guests::{GuestCommand, GuestRegistry, ScanUpdate, describe_outcome, os_error};
use crate::session::{ActionOutcome, GuestPath, ScanOptions};

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

/// Serves the control socket until the task is dropped.
pub async fn serve(listener: UnixListener, guests: Arc<GuestRegistry>, policy: Arc<PolicyStore>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(client(stream, guests.clone(), policy.clone()));
            }
            Err(e) => {
                tracing::warn!("control socket accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn client(stream: UnixStream, guests: Arc<GuestRegistry>, policy: Arc<PolicyStore>) {
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
        if handle(request, &guests, &policy, &mut wr).await.is_err() {
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
    guests: &GuestRegistry,
    policy: &PolicyStore,
    wr: &mut Writer,
) -> std::io::Result<()> {
    match request {
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
