//! `thinagent-diag`: diagnosis tools for ThinAgent.
//!
//! Today it has `demo`, which runs the guest core's real capture-retry policy
//! against a simulated boot and prints the log the driver would write. The
//! registry-driven load-order model (`loadorder`, `simulate`, `decode-log`)
//! arrives with crates/bootsim.

// No unsafe code, except the Windows-only FFI of `agent-state` (CreateFileW
// and DeviceIoControl on the driver's control device), allowed in that one
// module.
#![cfg_attr(not(windows), forbid(unsafe_code))]
#![cfg_attr(windows, deny(unsafe_code))]

mod agent_state;
mod control;
mod decode_log;
mod demo;
mod farm;
mod lint_inf;
mod loadorder;
mod scan;
mod simulate_cmd;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use thinagent_guest::{ConnectorAction, Params, RegValue};

#[derive(Parser)]
#[command(name = "thinagent-diag", version, about = "ThinAgent diagnosis tools")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the guest's capture loop against a simulated boot and print its log.
    ///
    /// With no options: \Device\vmci exists from the start, vmci.sys's device
    /// starts 7 s later (STATUS_DEVICE_BUSY until then), the agent's default
    /// parameters, debug level 4. Exit status 0 when the provider is captured,
    /// 1 when the agent gives up.
    Demo(DemoArgs),
    /// Decode a thin agent's debug log (ours or VMware's vsepflt.sys).
    ///
    /// Names every NTSTATUS, groups the lines by routine and states the likely
    /// cause and the next step. Lines may carry a capture tool's prefix
    /// (DbgView columns, timestamps). Exit status: 0 nothing wrong, 1 a
    /// finding of severity error, 2 unreadable input or no log lines in it.
    DecodeLog(DecodeLogArgs),
    /// Check a minifilter INF/INX against Filter Manager's rules.
    ///
    /// Class/ClassGuid, ServiceType 2, StartType, ErrorControl 1,
    /// LoadOrderGroup, the FltMgr dependency, instances (Altitude in the
    /// group's range, never another vendor's such as 328200, Flags,
    /// DefaultInstance) and, for the `thinagent` service, its Parameters
    /// values against the names and bounds the driver reads. Exit status: 0
    /// no findings, 1 findings, 2 unreadable input.
    LintInf(LintInfArgs),
    /// Boot- and system-start driver order of a machine, like LoadOrd, and
    /// its hazards.
    ///
    /// FILE is an offline SYSTEM hive or a `.reg` export of
    /// HKLM\SYSTEM (UTF-16 or UTF-8). The table shows order, group, tag,
    /// start, service, image and who defers the driver's devices, with the
    /// PnP device starts where they happen. Exit status: 0 no hazards, 1
    /// hazards found (severity error or warning; info notes do not count), 2
    /// input error.
    Loadorder(LoadorderArgs),
    /// Play the machine's boot in virtual time and run a thin agent's real
    /// capture-retry policy against it.
    ///
    /// Prints the timeline in the agent's log shape and the outcome
    /// (connected at t=..., or failed after N attempts). `--agent vsepflt`
    /// models VMware's thin agent, which fails DriverEntry when its retries
    /// run out; the default is ThinAgent's deferred retry. Exit status: 0
    /// connected, 1 failed, 2 input error.
    Simulate(SimulateArgs),
    /// Act as a guest: send each FILE to a thinagent-scanner over the real
    /// protocol and print `PATH: OK` or `PATH: NAME FOUND` (clamdscan's shape).
    ///
    /// Serves the scanner's content reads from the local files. Exit status:
    /// 0 nothing found, 1 something found, 2 an error occurred. A summary
    /// (files, found, errors, elapsed, files/s) goes to stderr.
    Scan(scan::ScanArgs),
    /// Ask the running Windows driver for its state through its control
    /// device \\.\ThinAgent: connected?, capture attempts and last status,
    /// sessions, queries, denials, timeouts, fail-mode decisions, cache hits.
    ///
    /// `--debug-level N` first sets the driver's live debugLevel (0..=4).
    /// Needs Windows and an elevated prompt. Exit status: 0 state printed,
    /// 2 the device could not be used (with the reason).
    AgentState(agent_state::AgentStateArgs),
    /// Every guest the scanner has seen (its admin control socket): identity,
    /// name, OS, agent and protocol versions, connected or gone, policy and
    /// fail mode it reports, the host actions it takes, its detections.
    ///
    /// Exit status: 0 listed, 2 the scanner could not be asked.
    Guests(control::GuestsArgs),
    /// Delete (or `--truncate`) a file the scanner denied on a guest.
    ///
    /// The guest acts only if the file still has the identity the scanner
    /// judged (a replaced file is left alone: `changed`). Exit status: 0
    /// done, 1 the guest did not do it (changed, not-found, failed, busy,
    /// timed-out), 2 the request could not be made.
    Remediate(control::RemediateArgs),
    /// Scan a directory tree on a guest through the scanner.
    ///
    /// The guest walks it and sends every file through the normal scan
    /// path; on-access opens keep priority. `--wait` shows progress and the
    /// summary. Exit status: 0 completed and nothing found, 1 something
    /// found, 2 the scan could not run or did not complete.
    ScanGuest(control::ScanGuestArgs),
    /// Show or set the policy the scanner gives its guests (fail mode,
    /// exclusions, timeouts, sizes, debug level).
    Policy(control::PolicyArgs),
    /// The scanner's quarantine: list, show an entry, restore a file to the
    /// guest it came from (a false positive), purge.
    Quarantine(control::QuarantineArgs),
    /// A scanner farm as a whole, read from its Redis: every guest of every
    /// scanner, the farm's detections.
    ///
    /// Connects to the farm's Redis directly (--redis-url, --password-file,
    /// --key-prefix, or --config with a scanner's configuration file).
    /// Exit status: 0 listed, 2 Redis could not be read.
    Farm(farm::FarmArgs),
}

#[derive(clap::Args)]
struct SimulateArgs {
    /// Offline SYSTEM hive or .reg export.
    file: std::path::PathBuf,
    /// The thin agent's service to model (an [[agent]] of the needs table:
    /// thinagent, vsepflt).
    #[arg(long, default_value = "thinagent")]
    agent: String,
    /// Print one JSON object: {"agent", "outcome", "attempts", "connected_at_ms", "timeline"}.
    #[arg(long)]
    json: bool,
    /// Extra needs table (TOML) merged over the built-in one.
    #[arg(long, value_name = "FILE")]
    needs: Option<std::path::PathBuf>,
}

#[derive(clap::Args)]
struct LoadorderArgs {
    /// Offline SYSTEM hive or .reg export.
    file: std::path::PathBuf,
    /// Print one JSON object: {"order": [...], "hazards": [...]}.
    #[arg(long)]
    json: bool,
    /// Extra needs table (TOML, format in docs/boot-order.md) merged over the built-in one.
    #[arg(long, value_name = "FILE")]
    needs: Option<std::path::PathBuf>,
}

#[derive(clap::Args)]
struct LintInfArgs {
    /// The INF or INX file (UTF-8, or UTF-16 with BOM).
    file: std::path::PathBuf,
    /// Print the findings as a JSON array of {id, severity, line, message, fix}.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct DecodeLogArgs {
    /// The log file (UTF-8, or UTF-16 with BOM as Windows tools save it).
    file: std::path::PathBuf,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Seconds until vmci.sys's device starts (ends STATUS_DEVICE_BUSY).
    #[arg(long, default_value_t = 7.0, conflicts_with = "never_ready")]
    vmci_ready_after: f64,
    /// vmci.sys's device never starts: the incident's machine.
    #[arg(long)]
    never_ready: bool,
    /// Seconds until vsock.sys has created \Device\vmci (STATUS_OBJECT_NAME_NOT_FOUND until then).
    #[arg(long, default_value_t = 0.0)]
    vsock_ready_after: f64,
    /// Agent parameter as NAME=DWORD, as under the service's Parameters key
    /// (e.g. captureRetryCount=20, captureRetryDelayMs=500, debugLevel=2). Repeatable.
    #[arg(long = "param", value_name = "NAME=DWORD")]
    params: Vec<String>,
}

fn seconds(name: &str, v: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(v)
        .with_context(|| format!("--{name} must be a non-negative number of seconds, got {v}"))
}

fn demo(args: &DemoArgs) -> Result<ExitCode> {
    let mut params = Params::default();
    params
        .apply("debugLevel", RegValue::Dword(4))
        .context("setting the demo's default debug level")?;
    for p in &args.params {
        let Some((name, value)) = p.split_once('=') else {
            bail!("--param {p:?}: expected NAME=DWORD, e.g. captureRetryCount=20");
        };
        let value: u32 = value.trim().parse().with_context(|| {
            format!("--param {p:?}: the value must be a decimal DWORD (0..=4294967295)")
        })?;
        let applied = params
            .apply(name.trim(), RegValue::Dword(value))
            .map_err(|e| anyhow::anyhow!("--param {p:?}: {e}"))?;
        eprintln!("param {}: {applied:?}", name.trim());
    }
    let boot = demo::SimulatedBoot {
        vsock_device_after: Some(seconds("vsock-ready-after", args.vsock_ready_after)?),
        vmci_device_after: if args.never_ready {
            None
        } else {
            Some(seconds("vmci-ready-after", args.vmci_ready_after)?)
        },
    };
    let outcome = demo::run(&params, boot);
    for line in &outcome.lines {
        println!("{line}");
    }
    eprintln!("{}", demo::summary(&outcome));
    Ok(match outcome.result {
        ConnectorAction::Connected { .. } => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}

fn simulate_cmd(args: &SimulateArgs) -> Result<ExitCode> {
    let (sim, warnings, analysis) =
        match simulate_cmd::run(&args.file, &args.agent, args.needs.as_deref()) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(ExitCode::from(2));
            }
        };
    for w in warnings {
        eprintln!("warning: {w}");
    }
    if args.json {
        println!("{}", simulate_cmd::render_json(&sim)?);
    } else {
        print!("{}", simulate_cmd::render_text(&sim, &analysis));
    }
    Ok(if sim.connected_at_ms().is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn loadorder_cmd(args: &LoadorderArgs) -> Result<ExitCode> {
    let machine = match loadorder::analyse(&args.file, args.needs.as_deref()) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    for w in loadorder::warnings(&machine) {
        eprintln!("warning: {w}");
    }
    let outlook = loadorder::outlook(&machine);
    if args.json {
        println!("{}", loadorder::render_json(&machine.analysis, &outlook)?);
    } else {
        print!(
            "{}",
            loadorder::render_text(&args.file.display().to_string(), &machine, &outlook)
        );
    }
    Ok(
        if machine.analysis.hazards.iter().any(loadorder::counts) || outlook.counts() {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        },
    )
}

fn lint_inf_cmd(args: &LintInfArgs) -> Result<ExitCode> {
    let bytes = match std::fs::read(&args.file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!(
                "error: cannot read {}: {e}; give the path of the driver's INF or INX (e.g. inf/thinagent.inx)",
                args.file.display()
            );
            return Ok(ExitCode::from(2));
        }
    };
    let findings = lint_inf::lint(&decode_log::bytes_to_text(&bytes));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&findings)?);
    } else {
        print!(
            "{}",
            lint_inf::render_text(&args.file.display().to_string(), &findings)
        );
    }
    Ok(if findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn decode_log_cmd(args: &DecodeLogArgs) -> Result<ExitCode> {
    let bytes = match std::fs::read(&args.file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!(
                "error: cannot read {}: {e}; give the path of a saved debug log (DbgView or kd output)",
                args.file.display()
            );
            return Ok(ExitCode::from(2));
        }
    };
    let log = decode_log::decode(&decode_log::bytes_to_text(&bytes));
    if log.decoded.is_empty() {
        eprintln!(
            "error: {} has no lines of the shape `LEVEL: Routine : message[: 0xSTATUS]`; \
             save the driver's debug output (DbgView, or kd with the Debug Print Filter set) and try again",
            args.file.display()
        );
        return Ok(ExitCode::from(2));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&log)?);
    } else {
        print!(
            "{}",
            decode_log::render_text(&args.file.display().to_string(), &log)
        );
    }
    Ok(if log.has_errors() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn main() -> Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Demo(DemoArgs {
        vmci_ready_after: 7.0,
        never_ready: false,
        vsock_ready_after: 0.0,
        params: Vec::new(),
    })) {
        Command::Demo(args) => demo(&args),
        Command::DecodeLog(args) => decode_log_cmd(&args),
        Command::LintInf(args) => lint_inf_cmd(&args),
        Command::Loadorder(args) => loadorder_cmd(&args),
        Command::Simulate(args) => simulate_cmd(&args),
        Command::Scan(args) => scan::run(&args),
        Command::AgentState(args) => agent_state::run(&args),
        Command::Guests(args) => control::guests(&args),
        Command::Remediate(args) => control::remediate(&args),
        Command::ScanGuest(args) => control::scan_guest(&args),
        Command::Policy(args) => control::policy(&args),
        Command::Quarantine(args) => control::quarantine(&args),
        Command::Farm(args) => farm::run(&args),
    }
}
