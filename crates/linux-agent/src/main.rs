//! `thinagent-linux-agent`: on-access scanning of Linux file opens by the
//! ThinAgent host scanner, through fanotify permission events.
//!
//! Exit status: 0 after a clean shutdown (SIGTERM / SIGINT), 2 for usage or
//! permission errors (not root), 1 for runtime failures. `SIGUSR2` restarts
//! the agent in place (exec of its binary, the fanotify group kept).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use thinagent_guest::{FailMode, Level, ReconnectConfig};
use thinagent_linux_agent::agent::{self, AgentConfig, GroupSource};
use thinagent_linux_agent::connect::{ConnectUrl, TlsClient};
use thinagent_linux_agent::core::{KERNEL_CACHE_ENTRIES, SESSION_SLOTS, StopRequest, supersedes};
use thinagent_linux_agent::fanotify::MarkScope;
use thinagent_linux_agent::handover;
use thinagent_linux_agent::logging::{LogLevel, Logger, routine};

/// `--fail-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum FailModeArg {
    /// Allow opens the scanner cannot answer in time (default).
    Open,
    /// Deny them.
    Closed,
}

/// On-access scanning for Linux guests: every open and exec on the watched
/// mounts waits for the ThinAgent scanner's verdict (fanotify permission
/// events). Needs root (CAP_SYS_ADMIN).
#[derive(Debug, Parser)]
#[command(name = "thinagent-linux-agent", version)]
struct Args {
    /// The scanner: vsock://CID:PORT (vsock://2:5317 from a VM),
    /// tls://HOST:PORT (with --tls-cert, --tls-key, --tls-ca),
    /// tcp://HOST:PORT (a scanner on loopback) or unix:///path.
    #[arg(long, value_name = "URL")]
    connect: String,
    /// PEM certificate (chain) of this guest for tls://; the scanner takes
    /// its subject as this guest's identity.
    #[arg(long, value_name = "PEM", requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "PEM", requires_all = ["tls_cert", "tls_ca"])]
    tls_key: Option<PathBuf>,
    /// PEM CA certificate(s) that signed the scanner's certificate.
    #[arg(long, value_name = "PEM", requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,
    /// Watch the mount containing PATH (repeatable).
    #[arg(long, value_name = "PATH", required = true)]
    watch: Vec<PathBuf>,
    /// Mark whole file systems (FAN_MARK_FILESYSTEM) instead of mounts.
    #[arg(long)]
    watch_filesystem: bool,
    /// Never check paths under this prefix (whole components; repeatable).
    #[arg(long, value_name = "PREFIX")]
    exclude: Vec<String>,
    /// What an open gets when the scanner cannot answer in time.
    #[arg(long, value_enum, default_value = "open")]
    fail_mode: FailModeArg,
    /// Per-open deadline in milliseconds.
    #[arg(long, value_name = "N", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    timeout_ms: u64,
    /// Most opens waiting for a verdict at once (further opens wait in the
    /// kernel's queue).
    #[arg(long, value_name = "N", default_value_t = SESSION_SLOTS as u64,
          value_parser = clap::value_parser!(u64).range(1..=SESSION_SLOTS as u64))]
    max_in_flight: u64,
    /// Let larger files through unchecked.
    #[arg(long, value_name = "BYTES")]
    max_file_size: Option<u64>,
    /// Never check opens by this process (repeatable).
    #[arg(long, value_name = "PID")]
    exclude_pid: Vec<u32>,
    /// Write this file (with the agent's pid) once the marks are in place
    /// and the first connect attempt finished.
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,
    /// Most verbose lines printed (AUDIT lines always are).
    #[arg(long, value_enum, default_value = "info")]
    log_level: LogLevel,
    /// Seconds between INFO stats lines (0 = only at exit).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    stats_interval_secs: u64,
    /// Name sent to the scanner (default: the host name).
    #[arg(long, value_name = "NAME")]
    guest_name: Option<String>,
    /// First reconnect delay in milliseconds (doubles up to 60 s).
    #[arg(long, value_name = "MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    reconnect_ms: u64,
    /// Most files the kernel-side verdict cache holds: fanotify ignore marks
    /// on files the scanner allowed, whose later opens raise no event (about
    /// 130 bytes of kernel memory each). All are flushed at the bound, at the
    /// scanner's verdict TTL and on every new session.
    #[arg(long, value_name = "N", default_value_t = KERNEL_CACHE_ENTRIES as u64,
          value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    kernel_cache_entries: u64,
    /// No kernel-side verdict cache: every open raises a fanotify event
    /// (answered from the agent's own verdict cache when it can).
    #[arg(long)]
    no_kernel_cache: bool,
    /// No inline content (protocol version 2): do not read files with their
    /// event; the scanner asks for every byte with read requests, as with a
    /// version-1 scanner.
    #[arg(long)]
    no_inline: bool,
    /// No host actions (protocol version 2, docs/protocol.md §14): the
    /// agent does not announce remediation, on-demand scans or host policy,
    /// refuses them (Unsupported) and sends no Health reports.
    #[arg(long)]
    no_host_actions: bool,
    /// Policy fields the host may not change, comma-separated or repeated:
    /// fail-mode, debug-level, exclusions, query-timeout, cache-ttl-max,
    /// max-scan-size, all. Pinned fields keep this command line's values;
    /// the agent reports them to the host as pinned.
    #[arg(long, value_name = "FIELDS", value_delimiter = ',')]
    pin_policy: Vec<String>,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "linux-guest".to_string())
}

/// The signals as requests, for the whole life of the process:
/// `SIGTERM` / `SIGINT` stop, `SIGUSR2` restarts in place. The handlers are
/// registered before this returns.
fn signal_requests(
    runtime: &tokio::runtime::Runtime,
) -> (
    tokio::sync::mpsc::UnboundedSender<StopRequest>,
    tokio::sync::mpsc::UnboundedReceiver<StopRequest>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let sender = tx.clone();
    let _guard = runtime.enter();
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    let usr2 = signal(SignalKind::user_defined2());
    // `main` blocked them (and a re-exec'd image starts with them blocked);
    // with the handlers in place this thread takes them, and only it: every
    // other thread of the agent keeps them blocked.
    handover::unblock_control_signals();
    runtime.spawn(async move {
        match (term, int, usr2) {
            (Ok(mut term), Ok(mut int), Ok(mut usr2)) => loop {
                let r = tokio::select! {
                    _ = term.recv() => StopRequest::Terminate,
                    _ = int.recv() => StopRequest::Terminate,
                    _ = usr2.recv() => StopRequest::ReExec,
                };
                if tx.send(r).is_err() {
                    return;
                }
            },
            _ => {
                let _ = tokio::signal::ctrl_c().await;
                let _ = tx.send(StopRequest::Terminate);
            }
        }
    });
    (sender, rx)
}

fn main() -> ExitCode {
    // First, while this is the only thread: a group a previous agent left,
    // and the control signals blocked in every thread but this one (once
    // it has registered their handlers), so that before an exec the agent
    // can stop taking them and any that comes later survives the exec.
    let inherited = handover::take_inherited();
    handover::block_control_signals();
    let args = Args::parse();
    let logger = Logger::new(args.log_level);
    for why in &inherited.rejected {
        logger.log(
            Level::Warn,
            routine::FANOTIFY,
            format_args!("inherited descriptor {why}"),
        );
    }
    let usage = |msg: String| {
        logger.log(Level::Error, routine::DRIVER_ENTRY, format_args!("{msg}"));
        ExitCode::from(2)
    };
    let mut connect: ConnectUrl = match args.connect.parse() {
        Ok(u) => u,
        Err(e) => return usage(e.to_string()),
    };
    if let ConnectUrl::Tls { .. } = connect {
        let (Some(cert), Some(key), Some(ca)) = (&args.tls_cert, &args.tls_key, &args.tls_ca)
        else {
            return usage(format!(
                "--connect {connect}: a tls:// scanner needs --tls-cert, --tls-key and --tls-ca"
            ));
        };
        match thinagent_guest_tls::client_config(cert, key, ca) {
            Ok(c) => connect = connect.with_tls(TlsClient(c)),
            Err(e) => return usage(e.to_string()),
        }
    }
    let pinned = match thinagent_linux_agent::core::pinned_fields_from_names(&args.pin_policy) {
        Ok(p) => p,
        Err(e) => return usage(e),
    };
    let config = AgentConfig {
        connect,
        watch: args.watch,
        scope: if args.watch_filesystem {
            MarkScope::Filesystem
        } else {
            MarkScope::Mount
        },
        exclude: args.exclude,
        fail_mode: match args.fail_mode {
            FailModeArg::Open => FailMode::Open,
            FailModeArg::Closed => FailMode::Closed,
        },
        timeout: Duration::from_millis(args.timeout_ms),
        max_in_flight: args.max_in_flight as usize,
        max_file_size: args.max_file_size,
        exclude_pids: args.exclude_pid,
        ready_file: args.ready_file,
        stats_interval: (args.stats_interval_secs > 0)
            .then(|| Duration::from_secs(args.stats_interval_secs)),
        guest_name: args.guest_name.unwrap_or_else(host_name),
        reconnect: ReconnectConfig {
            first_delay: Duration::from_millis(args.reconnect_ms),
            ..ReconnectConfig::default()
        },
        kernel_cache_entries: if args.no_kernel_cache {
            0
        } else {
            args.kernel_cache_entries as usize
        },
        inline_content: !args.no_inline,
        host_actions: !args.no_host_actions,
        pinned,
        logger,
    };
    // One thread runs the loop (and the signal and connect tasks): the
    // loop is the only busy task, and on a single-threaded runtime the
    // thread that waits for the socket and the reader's channel is the one
    // that runs it, so no event goes through a second runtime thread
    // (a multi-threaded runtime wakes an idle worker, or a second one to
    // steal, on the way). Host reads and the ready file still go to the
    // blocking pool.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(16)
        .thread_stack_size(8 << 20)
        .on_thread_start(handover::block_control_signals)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            logger.log(
                Level::Error,
                routine::DRIVER_ENTRY,
                format_args!("cannot start the runtime: {e}"),
            );
            return ExitCode::from(1);
        }
    };
    let mut source = match inherited.group {
        Some(g) => GroupSource::Inherited(g),
        None => GroupSource::New,
    };
    let (resend, mut requests) = signal_requests(&runtime);
    loop {
        let run = runtime.block_on(agent::run_with(config.clone(), source, &mut requests));
        match run {
            Ok(outcome) if outcome.request == StopRequest::ReExec => {
                // From here on signals stay pending (and survive the exec);
                // those already taken get a moment to reach `requests`.
                handover::block_control_signals();
                runtime.block_on(async { tokio::time::sleep(Duration::from_millis(20)).await });
                // A SIGTERM that came while the run was winding down: no
                // exec; run again on the group and stop it the usual way.
                let mut stop = false;
                while let Ok(r) = requests.try_recv() {
                    stop |= supersedes(r, StopRequest::ReExec);
                }
                if stop {
                    logger.log(
                        Level::Info,
                        routine::DRIVER_ENTRY,
                        format_args!("SIGTERM during the restart in place: stopping instead"),
                    );
                    let _ = resend.send(StopRequest::Terminate);
                    handover::unblock_control_signals();
                    source = GroupSource::Kept(outcome.group);
                    continue;
                }
                let path = handover::reexec_path();
                logger.log(
                    Level::Audit,
                    routine::DRIVER_ENTRY,
                    format_args!(
                        "restarting in place: exec {} with the fanotify group (fd {})",
                        path.display(),
                        std::os::fd::AsRawFd::as_raw_fd(&*outcome.group)
                    ),
                );
                // Returns only if the exec failed: go on with the group.
                let e = handover::reexec(&*outcome.group, &path);
                logger.log(Level::Error, routine::DRIVER_ENTRY, format_args!("{e}"));
                source = GroupSource::Kept(outcome.group);
            }
            Ok(_) => return ExitCode::SUCCESS,
            Err(e) if e.is_usage() => return usage(e.to_string()),
            Err(e) => {
                logger.log(Level::Error, routine::DRIVER_ENTRY, format_args!("{e}"));
                return ExitCode::from(1);
            }
        }
    }
}
