//! `guests`, `remediate`, `scan-guest`, `policy`, `quarantine`: clients of the scanner's admin
//! control socket (JSON lines over a local Unix socket; its requests are
//! documented in `crates/scanner/src/control.rs` and docs/operations.md).
//! Tables a person pastes into a ticket; `--json` prints the scanner's
//! answer lines as they are.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// Where the scanner's control socket is unless told otherwise.
pub const DEFAULT_CONTROL: &str = "/run/thinagent/control.sock";

/// The socket option every command shares.
#[derive(clap::Args)]
pub struct ControlArgs {
    /// The scanner's control socket (its `control_socket` setting).
    #[arg(long, value_name = "PATH", env = "THINAGENT_CONTROL", default_value = DEFAULT_CONTROL)]
    pub control: PathBuf,
    /// Print the scanner's answers as JSON lines.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct GuestsArgs {
    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(clap::Args)]
pub struct RemediateArgs {
    /// The guest: its identity or its (unique) name, as `guests` lists them.
    pub guest: String,
    /// The path of a file the scanner denied on that guest.
    pub path: String,
    /// Empty the file instead of deleting it.
    #[arg(long)]
    pub truncate: bool,
    /// How long to wait for the guest's answer, ms.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub timeout_ms: u64,
    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(clap::Args)]
pub struct ScanGuestArgs {
    /// The guest: its identity or its (unique) name.
    pub guest: String,
    /// The directory (or file) to scan, as the guest names it.
    pub path: String,
    /// Show progress and wait for the summary (else print the scan id and return).
    #[arg(long)]
    pub wait: bool,
    /// Enter other volumes and mount points under PATH.
    #[arg(long)]
    pub cross_mounts: bool,
    /// Directory levels to enter below PATH (0 = all).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_depth: u16,
    #[command(flatten)]
    pub control: ControlArgs,
}

/// One request, its answer lines (up to the one with `"ok"`), each given to
/// `each` as it arrives.
#[cfg(unix)]
fn request(control: &ControlArgs, req: &Value, mut each: impl FnMut(&Value)) -> Result<Value> {
    let mut stream = std::os::unix::net::UnixStream::connect(&control.control).with_context(|| {
        format!(
            "cannot reach the scanner's control socket {} (is the scanner running with control_socket set, and may this user open it? see --control)",
            control.control.display()
        )
    })?;
    writeln!(stream, "{req}")?;
    for line in BufReader::new(stream).lines() {
        let line = line.context("reading the scanner's answer")?;
        let v: Value = serde_json::from_str(&line)
            .with_context(|| format!("the scanner answered something that is not JSON: {line}"))?;
        if control.json {
            println!("{line}");
        }
        each(&v);
        if v.get("ok").is_some() {
            return Ok(v);
        }
    }
    bail!("the scanner closed the control socket without an answer")
}

#[cfg(not(unix))]
fn request(_: &ControlArgs, _: &Value, _: impl FnMut(&Value)) -> Result<Value> {
    bail!("the control socket is a Unix socket: run this on the scanner's host")
}

/// [`request`]; when the scanner cannot be asked, says why and gives exit
/// status 2.
fn ask(control: &ControlArgs, req: &Value, each: impl FnMut(&Value)) -> Result<Value, ExitCode> {
    request(control, req, each).map_err(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(2)
    })
}

/// [`ask`], and an answer that says it failed is exit status 2 too.
fn ask_ok(control: &ControlArgs, req: &Value) -> Result<Value, ExitCode> {
    let answer = ask(control, req, |_| {})?;
    match failed(&answer) {
        Some(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::from(2))
        }
        None => Ok(answer),
    }
}

/// The error an answer carries, as a failure of the command.
fn failed(v: &Value) -> Option<String> {
    (v["ok"] == false).then(|| {
        v["error"]
            .as_str()
            .or(v["detail"].as_str())
            .unwrap_or("failed")
            .to_owned()
    })
}

pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) if s.is_empty() => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Lines of a table whose columns are as wide as their widest cell.
pub(crate) fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `guests`: every guest the scanner has seen.
pub fn guests(args: &GuestsArgs) -> Result<ExitCode> {
    let answer = match ask_ok(&args.control, &json!({"cmd": "guests"})) {
        Ok(a) => a,
        Err(code) => return Ok(code),
    };
    if args.control.json {
        return Ok(ExitCode::SUCCESS);
    }
    let guests = answer["guests"].as_array().cloned().unwrap_or_default();
    let mut rows = vec![
        [
            "IDENTITY",
            "ADDRESS",
            "NAME",
            "OS",
            "AGENT",
            "PROTO",
            "STATE",
            "SINCE",
            "LAST SEEN",
            "POLICY",
            "FAIL MODE",
            "ACTIONS",
            "DETECTIONS",
            "LAST DETECTION",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for g in &guests {
        let actions = g["actions"]
            .as_array()
            .map(|a| a.iter().map(text).collect::<Vec<_>>().join(","))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "-".to_owned());
        rows.push(vec![
            text(&g["identity"]),
            text(&g["address"]),
            text(&g["name"]),
            text(&g["os"]),
            text(&g["agent_version"]),
            text(&g["protocol_version"]),
            if g["connected"] == true {
                "connected".to_owned()
            } else {
                "gone".to_owned()
            },
            text(&g["connected_since"]),
            text(&g["last_seen"]),
            text(&g["policy_version"]),
            text(&g["health"]["fail_mode"]),
            actions,
            text(&g["detections"]),
            text(&g["last_detection"]),
        ]);
    }
    print!("{}", table(&rows));
    if guests.is_empty() {
        println!("(no guest has connected since the scanner started)");
    }
    Ok(ExitCode::SUCCESS)
}

/// `remediate`: 0 done, 1 the guest did not do it (changed, not found,
/// failed, ...), 2 the request could not be made.
pub fn remediate(args: &RemediateArgs) -> Result<ExitCode> {
    let req = json!({
        "cmd": "remediate",
        "guest": args.guest,
        "path": args.path,
        "action": if args.truncate { "truncate" } else { "delete" },
        "timeout_ms": args.timeout_ms,
    });
    let answer = match ask(&args.control, &req, |_| {}) {
        Ok(a) => a,
        Err(code) => return Ok(code),
    };
    let done = answer["ok"] == true;
    if !args.control.json {
        if answer.get("status").is_some() {
            println!(
                "{}: {} on {}: {} ({})",
                args.path,
                text(&answer["threat"]),
                text(&answer["guest"]),
                text(&answer["status"]),
                text(&answer["detail"])
            );
        } else if let Some(e) = failed(&answer) {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    }
    Ok(if done {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A progress line: `[#####.....] 120/340 files  1 denied  0 errors`.
fn progress_line(c: &Value) -> String {
    let seen = c["files_seen"].as_u64().unwrap_or(0);
    let scanned = c["files_scanned"].as_u64().unwrap_or(0);
    let width = 30u64;
    let filled = (scanned.min(seen) * width).checked_div(seen).unwrap_or(0);
    format!(
        "[{}{}] {scanned}/{seen} files  {} denied  {} skipped  {} errors",
        "#".repeat(filled as usize),
        ".".repeat((width - filled) as usize),
        c["files_denied"].as_u64().unwrap_or(0),
        c["files_skipped"].as_u64().unwrap_or(0),
        c["errors"].as_u64().unwrap_or(0),
    )
}

/// `scan-guest`: with `--wait`, 0 completed and nothing found, 1 something
/// found, 2 the scan could not run or did not complete.
pub fn scan_guest(args: &ScanGuestArgs) -> Result<ExitCode> {
    let req = json!({
        "cmd": "scan",
        "guest": args.guest,
        "path": args.path,
        "wait": args.wait,
        "cross_mounts": args.cross_mounts,
        "max_depth": args.max_depth,
    });
    let human = !args.control.json;
    let tty = std::io::stderr().is_terminal();
    let answer = request(&args.control, &req, |v| {
        if !human {
            return;
        }
        if let Some(id) = v.get("scan_id").filter(|_| v.get("ok").is_none()) {
            eprintln!("scan {id} started on {}", text(&v["guest"]));
        }
        if let Some(c) = v.get("progress") {
            if tty {
                eprint!("\r{}", progress_line(c));
            } else {
                eprintln!("{}", progress_line(c));
            }
        }
    });
    if human && tty && args.wait {
        eprintln!();
    }
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    if !args.wait {
        if let Some(e) = failed(&answer) {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
        if human {
            println!("scan {} started", text(&answer["scan_id"]));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let status = text(&answer["status"]);
    if human {
        if answer.get("counters").is_some() {
            let c = &answer["counters"];
            println!("{}: scan {status}", args.path);
            print!(
                "{}",
                table(&[
                    vec!["files seen".into(), text(&c["files_seen"])],
                    vec!["files scanned".into(), text(&c["files_scanned"])],
                    vec!["files denied".into(), text(&c["files_denied"])],
                    vec!["files skipped".into(), text(&c["files_skipped"])],
                    vec!["errors".into(), text(&c["errors"])],
                    vec!["bytes".into(), text(&c["bytes"])],
                ])
            );
            if answer["error"] != Value::Null {
                println!("error: {}", text(&answer["error"]));
            }
        } else if let Some(e) = failed(&answer) {
            eprintln!("error: {e}");
        }
    }
    let denied = answer["counters"]["files_denied"].as_u64().unwrap_or(0);
    Ok(if status != "completed" {
        ExitCode::from(2)
    } else if denied > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[derive(clap::Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub command: PolicyCommand,
}

#[derive(clap::Subcommand)]
pub enum PolicyCommand {
    /// The host's guest policy, and how each guest took it (version in
    /// effect, fields its admin pinned). Exit status: 0, or 2 when the
    /// scanner could not be asked.
    Show(ControlArgs),
    /// Replace the host's guest policy (until the scanner restarts) and
    /// send it to every connected guest that takes one. Fields not given
    /// keep each guest's own value. Exit status: 0 sent, 2 refused.
    Set(PolicySetArgs),
}

#[derive(clap::Args)]
pub struct PolicySetArgs {
    /// What guests do with an open they cannot get a verdict for in time.
    #[arg(long, value_parser = ["open", "closed"])]
    pub fail_mode: Option<String>,
    /// Guests' log level, 0..=4.
    #[arg(long, value_name = "N")]
    pub debug_level: Option<u8>,
    /// Exclude a path prefix (repeatable; replaces the guests' list).
    #[arg(long, value_name = "PREFIX")]
    pub exclude_prefix: Vec<String>,
    /// Exclude a file extension, without the dot (repeatable).
    #[arg(long, value_name = "EXT")]
    pub exclude_ext: Vec<String>,
    /// Exclude a process image name (repeatable).
    #[arg(long, value_name = "IMAGE")]
    pub exclude_process: Vec<String>,
    /// Send an empty exclusion list (remove every exclusion).
    #[arg(long, conflicts_with_all = ["exclude_prefix", "exclude_ext", "exclude_process"])]
    pub no_exclusions: bool,
    /// Guests' deadline per on-access query, ms.
    #[arg(long, value_name = "MS")]
    pub query_timeout_ms: Option<u32>,
    /// Longest a guest keeps a verdict, seconds (0 = no caching).
    #[arg(long, value_name = "SECS")]
    pub cache_ttl_max_secs: Option<u32>,
    /// Larger files are not queried, bytes (0 = no limit).
    #[arg(long, value_name = "BYTES")]
    pub max_scan_size: Option<u64>,
    #[command(flatten)]
    pub control: ControlArgs,
}

/// `policy show` / `policy set`.
pub fn policy(args: &PolicyArgs) -> Result<ExitCode> {
    match &args.command {
        PolicyCommand::Show(control) => policy_show(control),
        PolicyCommand::Set(set) => policy_set(set),
    }
}

fn policy_show(control: &ControlArgs) -> Result<ExitCode> {
    let answer = match ask_ok(control, &json!({"cmd": "policy-show"})) {
        Ok(a) => a,
        Err(code) => return Ok(code),
    };
    if control.json {
        return Ok(ExitCode::SUCCESS);
    }
    let p = &answer["policy"];
    if answer["version"] == 0 {
        println!("no guest policy is set: guests keep their own settings");
    } else {
        println!("guest policy version {}", text(&answer["version"]));
        let exclusions = p["exclusions"].as_array().map_or_else(
            || "-".to_owned(),
            |list| {
                let items: Vec<String> = list
                    .iter()
                    .map(|e| format!("{}:{}", text(&e["kind"]), text(&e["value"])))
                    .collect();
                if items.is_empty() {
                    "(none)".to_owned()
                } else {
                    items.join(" ")
                }
            },
        );
        print!(
            "{}",
            table(&[
                vec!["fail_mode".into(), text(&p["fail_mode"])],
                vec!["debug_level".into(), text(&p["debug_level"])],
                vec!["exclusions".into(), exclusions],
                vec!["query_timeout_ms".into(), text(&p["query_timeout_ms"])],
                vec!["cache_ttl_max_secs".into(), text(&p["cache_ttl_max_secs"])],
                vec!["max_scan_size".into(), text(&p["max_scan_size"])],
            ])
        );
    }
    let mut rows = vec![
        [
            "IDENTITY",
            "NAME",
            "STATE",
            "TAKES POLICY",
            "SENT",
            "IN EFFECT",
            "STATUS",
            "PINNED",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for g in answer["guests"].as_array().into_iter().flatten() {
        let pinned = g["policy"]["pinned"]
            .as_array()
            .map(|a| a.iter().map(text).collect::<Vec<_>>().join(","))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "-".to_owned());
        rows.push(vec![
            text(&g["identity"]),
            text(&g["name"]),
            if g["connected"] == true {
                "connected"
            } else {
                "gone"
            }
            .to_owned(),
            if g["takes_policy"] == true {
                "yes"
            } else {
                "no"
            }
            .to_owned(),
            text(&g["policy"]["sent"]),
            text(&g["policy"]["in_effect"]),
            text(&g["policy"]["status"]),
            pinned,
        ]);
    }
    println!();
    print!("{}", table(&rows));
    Ok(ExitCode::SUCCESS)
}

fn policy_set(args: &PolicySetArgs) -> Result<ExitCode> {
    let mut policy = serde_json::Map::new();
    let mut put = |key: &str, value: Option<Value>| {
        if let Some(v) = value {
            policy.insert(key.to_owned(), v);
        }
    };
    put("fail_mode", args.fail_mode.clone().map(Value::from));
    put("debug_level", args.debug_level.map(Value::from));
    put("query_timeout_ms", args.query_timeout_ms.map(Value::from));
    put(
        "cache_ttl_max_secs",
        args.cache_ttl_max_secs.map(Value::from),
    );
    put("max_scan_size", args.max_scan_size.map(Value::from));
    let exclusions: Vec<Value> = [
        ("path-prefix", &args.exclude_prefix),
        ("extension", &args.exclude_ext),
        ("process", &args.exclude_process),
    ]
    .into_iter()
    .flat_map(|(kind, values)| {
        values
            .iter()
            .map(move |v| json!({"kind": kind, "value": v}))
    })
    .collect();
    if args.no_exclusions || !exclusions.is_empty() {
        policy.insert("exclusions".into(), Value::Array(exclusions));
    }
    let answer = match ask_ok(
        &args.control,
        &json!({"cmd": "policy-set", "policy": policy}),
    ) {
        Ok(a) => a,
        Err(code) => return Ok(code),
    };
    if !args.control.json {
        let sent: Vec<String> = answer["sent_to"]
            .as_array()
            .map(|a| a.iter().map(text).collect())
            .unwrap_or_default();
        println!(
            "guest policy version {} set; sent to {} connected guest(s){}",
            text(&answer["version"]),
            sent.len(),
            if sent.is_empty() {
                String::new()
            } else {
                format!(": {}", sent.join(", "))
            }
        );
        println!(
            "(guests that do not take a policy keep theirs; see `thinagent-diag policy show`)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct QuarantineArgs {
    #[command(subcommand)]
    pub command: QuarantineCommand,
}

#[derive(clap::Subcommand)]
pub enum QuarantineCommand {
    /// Every quarantined file: id, state (stored, restored, purged), size,
    /// when, guest, path, threat. Exit status: 0, or 2 when the scanner
    /// could not be asked.
    List(ControlArgs),
    /// One entry's whole record: where it came from, its file identity,
    /// its SHA-256 and BLAKE3. Exit status: 0, 2 no such entry.
    Show(QuarantineIdArgs),
    /// Write an entry's bytes back to the guest it came from (only that
    /// guest, connected, with an agent that takes restores). The guest
    /// writes a new file and never overwrites one: a file at the path
    /// answers `changed`. On Linux the file is mode 0600, owner root (set
    /// its owner and mode); on Windows it inherits the directory's
    /// security. Exit status: 0 restored, 1 the guest did not
    /// (changed, failed, busy, timed-out), 2 the request could not be made.
    Restore(QuarantineRestoreArgs),
    /// Remove entries' bytes (the record of what was quarantined stays):
    /// one entry, or every entry stored longer ago than `--older-than`.
    /// Exit status: 0 purged (or nothing to purge), 2 refused.
    Purge(QuarantinePurgeArgs),
}

#[derive(clap::Args)]
pub struct QuarantineIdArgs {
    /// The entry's id, as `quarantine list` shows it.
    pub id: String,
    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(clap::Args)]
pub struct QuarantineRestoreArgs {
    /// The entry's id, as `quarantine list` shows it.
    pub id: String,
    /// Write it to this path on the guest instead of where it was.
    #[arg(long, value_name = "PATH")]
    pub to: Option<String>,
    /// The guest you expect (identity or name): refused unless it is the
    /// one the entry came from.
    #[arg(long, value_name = "GUEST")]
    pub guest: Option<String>,
    /// How long to wait for the guest to write it, ms.
    #[arg(long, value_name = "MS", default_value_t = 60_000)]
    pub timeout_ms: u64,
    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(clap::Args)]
pub struct QuarantinePurgeArgs {
    /// The entry's id.
    #[arg(required_unless_present = "older_than", conflicts_with = "older_than")]
    pub id: Option<String>,
    /// Every entry stored longer ago than this: 30d, 12h, 90m, 45s, 2w.
    #[arg(long, value_name = "AGE")]
    pub older_than: Option<String>,
    #[command(flatten)]
    pub control: ControlArgs,
}

/// `quarantine list|show|restore|purge`.
pub fn quarantine(args: &QuarantineArgs) -> Result<ExitCode> {
    match &args.command {
        QuarantineCommand::List(control) => quarantine_list(control),
        QuarantineCommand::Show(a) => quarantine_show(a),
        QuarantineCommand::Restore(a) => quarantine_restore(a),
        QuarantineCommand::Purge(a) => quarantine_purge(a),
    }
}

fn quarantine_list(control: &ControlArgs) -> Result<ExitCode> {
    let answer = match ask_ok(control, &json!({"cmd": "quarantine-list"})) {
        Ok(a) => a,
        Err(code) => return Ok(code),
    };
    if control.json {
        return Ok(ExitCode::SUCCESS);
    }
    let entries = answer["entries"].as_array().cloned().unwrap_or_default();
    if entries.is_empty() {
        println!("the quarantine is empty");
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![
        ["ID", "STATE", "SIZE", "STORED", "GUEST", "PATH", "THREAT"]
            .map(str::to_owned)
            .to_vec(),
    ];
    for e in &entries {
        let guest = match e["guest_name"].as_str() {
            Some(name) if !name.is_empty() => format!("{} ({name})", text(&e["guest"])),
            _ => text(&e["guest"]),
        };
        rows.push(vec![
            text(&e["id"]),
            text(&e["state"]),
            text(&e["size"]),
            text(&e["stored_at"]),
            guest,
            text(&e["path"]),
            text(&e["threat"]),
        ]);
    }
    print!("{}", table(&rows));
    Ok(ExitCode::SUCCESS)
}

fn quarantine_show(args: &QuarantineIdArgs) -> Result<ExitCode> {
    let req = json!({"cmd": "quarantine-show", "id": args.id});
    let answer = match ask_ok(&args.control, &req) {
        Ok(a) => a,
        Err(code) => return Ok(code),
    };
    if args.control.json {
        return Ok(ExitCode::SUCCESS);
    }
    let e = &answer["entry"];
    let g = &e["guest"];
    let f = &e["file"];
    let rows = [
        ("id", text(&e["id"])),
        ("state", text(&e["state"])),
        ("state changed", text(&e["state_changed_at"])),
        ("threat", text(&e["threat"])),
        ("engine", text(&e["engine"])),
        ("stored", text(&e["stored_at"])),
        ("guest", text(&g["address"])),
        ("guest name", text(&g["name"])),
        ("guest identity", text(&g["peer"])),
        ("guest os", text(&g["os"])),
        ("path", text(&e["path"]["display"])),
        ("size", text(&e["size"])),
        ("sha256", text(&e["sha256"])),
        ("blake3", text(&e["blake3"])),
        (
            "file identity",
            format!(
                "volume {} id {} size {} mtime {}",
                text(&f["volume_serial"]),
                text(&f["file_id"]),
                text(&f["size"]),
                text(&f["last_write_time"])
            ),
        ),
    ];
    for (k, v) in rows {
        println!("{k:<15} {v}");
    }
    Ok(ExitCode::SUCCESS)
}

fn quarantine_restore(args: &QuarantineRestoreArgs) -> Result<ExitCode> {
    let mut req =
        json!({"cmd": "quarantine-restore", "id": args.id, "timeout_ms": args.timeout_ms});
    if let Some(to) = &args.to {
        req["to"] = json!(to);
    }
    if let Some(guest) = &args.guest {
        req["guest"] = json!(guest);
    }
    let answer = match ask(&args.control, &req, |_| {}) {
        Ok(a) => a,
        Err(code) => return Ok(code),
    };
    if answer.get("status").is_none()
        && let Some(e) = failed(&answer)
    {
        if !args.control.json {
            eprintln!("error: {e}");
        }
        return Ok(ExitCode::from(2));
    }
    if !args.control.json {
        println!(
            "{}: {} ({} bytes, {}) to {} on {}: {} ({})",
            args.id,
            if answer["ok"] == true {
                "restored"
            } else {
                "not restored"
            },
            text(&answer["size"]),
            text(&answer["threat"]),
            text(&answer["path"]),
            text(&answer["guest"]),
            text(&answer["status"]),
            text(&answer["detail"])
        );
    }
    Ok(if answer["ok"] == true {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn quarantine_purge(args: &QuarantinePurgeArgs) -> Result<ExitCode> {
    let mut req = json!({"cmd": "quarantine-purge"});
    if let Some(id) = &args.id {
        req["id"] = json!(id);
    }
    if let Some(age) = &args.older_than {
        req["older_than"] = json!(age);
    }
    let answer = match ask_ok(&args.control, &req) {
        Ok(a) => a,
        Err(code) => return Ok(code),
    };
    if !args.control.json {
        let ids = answer["purged"].as_array().cloned().unwrap_or_default();
        if ids.is_empty() {
            println!("nothing to purge");
        }
        for id in ids {
            println!("purged {}", text(&id));
        }
    }
    Ok(ExitCode::SUCCESS)
}
