//! `thinagent-diag`: diagnosis tools for ThinAgent.
//!
//! Today it has `demo`, which runs the guest core's real capture-retry policy
//! against a simulated boot and prints the log the driver would write. The
//! registry-driven load-order model (`loadorder`, `simulate`, `decode-log`)
//! arrives with crates/bootsim.

#![forbid(unsafe_code)]

mod demo;
mod scan;

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
    /// Act as a guest: send each FILE to a thinagent-scanner over the real
    /// protocol and print `PATH: OK` or `PATH: NAME FOUND` (clamdscan's shape).
    ///
    /// Serves the scanner's content reads from the local files. Exit status:
    /// 0 nothing found, 1 something found, 2 an error occurred. A summary
    /// (files, found, errors, elapsed, files/s) goes to stderr.
    Scan(scan::ScanArgs),
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

fn main() -> Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Demo(DemoArgs {
        vmci_ready_after: 7.0,
        never_ready: false,
        vsock_ready_after: 0.0,
        params: Vec::new(),
    })) {
        Command::Demo(args) => demo(&args),
        Command::Scan(args) => scan::run(&args),
    }
}
