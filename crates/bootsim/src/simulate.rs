//! Plays the computed boot in virtual time and runs the real
//! [`thinagent_guest::Connector`] of a thin agent against it.
//!
//! Time model (milliseconds, documented in `docs/boot-order.md`):
//!
//! * Boot drivers, then system drivers, initialise one after another, in
//!   [`LoadOrder::steps`] order; each `DriverEntry` takes
//!   [`Timing::init_ms`](crate::needs::Timing::init_ms) (10 ms by default,
//!   per-service overrides in the needs table); each device stack start takes
//!   `device_start_ms` (10 ms). A device appears at the *end* of the step
//!   that creates it (`driver-init` devices at the end of their owner's
//!   `DriverEntry`, `device-start` devices at the end of the stack start).
//! * A capture attempt on the agent's device answers
//!   `STATUS_OBJECT_NAME_NOT_FOUND` while the device does not exist, the
//!   owner's `busy_status` (`STATUS_DEVICE_BUSY`) while a device the owner
//!   needs for use does not exist (recursively), and `STATUS_SUCCESS` after.
//! * A **blocking** agent (VMware's `vsepflt`) runs the connector inside its
//!   `DriverEntry`: the boot waits for it, so nothing else changes meanwhile,
//!   and `DriverEntry` fails when the connector gives up.
//! * A **deferred-retry** agent (ThinAgent) returns from `DriverEntry` at
//!   once; its worker thread makes the first attempt at that moment and
//!   continues on the connector's schedule,
//!   concurrently with the rest of the boot; the boot-driver reinitialisation
//!   callback (after the last boot driver) makes one more attempt at once.
//!   After the boot the worker continues until the connector is done.
//! * Only the chosen agent runs: other thin agents of the needs table are
//!   left out (as if uninstalled), and the chosen one is placed with its
//!   `default_start`/`default_group` when the machine does not have it.

use core::time::Duration;

use serde::Serialize;
use thinagent_guest::log::{LevelFilter, LogRecord, routine};
use thinagent_guest::{
    Connector, ConnectorAction, ConnectorConfig, Instant, Level, NtStatus, Params,
};
use thiserror::Error;

use crate::model::{Model, ModelError, Service, StartType, fold};
use crate::needs::{AgentDecl, AgentStyle, Created, NeedWhen, NeedsTable, canonical_object_name};
use crate::order::{LoadOrder, Phase, Step, compute_order};
use crate::registry::RegKey;

/// The agent simulated when none is named.
pub const DEFAULT_AGENT: &str = "thinagent";

/// Routine names of the kernel-side timeline lines.
pub mod routine_names {
    /// Boot-start driver initialisation.
    pub const BOOT_DRIVERS: &str = "IopInitializeBootDrivers";
    /// System-start driver initialisation.
    pub const SYSTEM_DRIVERS: &str = "IopInitializeSystemDrivers";
    /// PnP device starts.
    pub const PNP_START: &str = "PnpStartDevice";
    /// Device object creation.
    pub const CREATE_DEVICE: &str = "IoCreateDevice";
    /// Notes of the simulator itself.
    pub const BOOTSIM: &str = "BootSim";
    /// VMware thin agent: its vsock layer.
    pub const VSOCK_LAYER_INIT: &str = "VSockLayer_Init";
}

/// Simulation options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulateOptions {
    /// The thin agent's service (a `[[agent]]` of the needs table).
    pub agent: String,
    /// Most verbose level printed, 0..=4 as the agent's `debugLevel`
    /// (4: everything, the default).
    pub debug_level: u32,
}

impl Default for SimulateOptions {
    fn default() -> Self {
        SimulateOptions {
            agent: DEFAULT_AGENT.to_string(),
            debug_level: 4,
        }
    }
}

/// One timeline line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimelineLine {
    /// Virtual time since the first boot driver started, ms.
    pub t_ms: u64,
    /// `LEVEL: Routine : message[: 0xSTATUS]`.
    pub line: String,
}

/// How the agent ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "outcome")]
pub enum Outcome {
    /// The provider was captured.
    Connected {
        /// When, ms.
        at_ms: u64,
        /// Attempts including the successful one.
        attempts: u32,
    },
    /// The connector gave up.
    Failed {
        /// When (the last attempt), ms.
        at_ms: u64,
        /// Attempts made.
        attempts: u32,
        /// Status of the last attempt.
        last_status: u32,
    },
}

/// The result of [`simulate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Simulation {
    /// The agent's service name.
    pub agent: String,
    /// How it waits.
    pub style: AgentStyle,
    /// How it ended.
    pub outcome: Outcome,
    /// Every line, in time order.
    pub timeline: Vec<TimelineLine>,
    /// What the simulator changed or assumed (agent placed, other agents left out).
    pub notes: Vec<String>,
    /// When the last system-start driver finished, ms.
    pub boot_done_ms: u64,
    /// When the last boot-start driver finished, ms.
    pub boot_drivers_done_ms: u64,
    /// Whether the machine has the agent installed (else it was placed with
    /// its default start and group).
    pub agent_installed: bool,
    /// The device the agent captures (`\Device\vmci`).
    pub agent_device: String,
}

impl Simulation {
    /// `connected` or `failed`.
    #[must_use]
    pub const fn outcome_word(&self) -> &'static str {
        match self.outcome {
            Outcome::Connected { .. } => "connected",
            Outcome::Failed { .. } => "failed",
        }
    }

    /// Attempts made.
    #[must_use]
    pub const fn attempts(&self) -> u32 {
        match self.outcome {
            Outcome::Connected { attempts, .. } | Outcome::Failed { attempts, .. } => attempts,
        }
    }

    /// When it connected, ms.
    #[must_use]
    pub const fn connected_at_ms(&self) -> Option<u64> {
        match self.outcome {
            Outcome::Connected { at_ms, .. } => Some(at_ms),
            Outcome::Failed { .. } => None,
        }
    }

    /// One sentence: `thinagent connected at t=1030 ms after 2 attempts` or
    /// `vsepflt failed after 100 attempts (last status STATUS_DEVICE_BUSY (0x80000011)) at t=99320 ms`.
    #[must_use]
    pub fn summary(&self) -> String {
        match self.outcome {
            Outcome::Connected { at_ms, attempts } => format!(
                "{} connected at t={at_ms} ms after {attempts} attempt(s)",
                self.agent
            ),
            Outcome::Failed {
                at_ms,
                attempts,
                last_status,
            } => {
                format!(
                    "{} failed after {attempts} attempt(s) at t={at_ms} ms, last status {}",
                    self.agent,
                    named_status(NtStatus(last_status))
                )
            }
        }
    }
}

/// `STATUS_DEVICE_BUSY 0x80000011`, or just the value for a status without
/// a name.
fn named_status(s: NtStatus) -> String {
    match s.name() {
        Some(n) => format!("{n} {s}"),
        None => s.to_string(),
    }
}

impl Simulation {
    /// The agent's outlook on this machine in one sentence: whether it
    /// captures its provider, when (during the boot-start drivers, the
    /// system-start drivers or after the boot) and, when it does not, why.
    #[must_use]
    pub fn outlook(&self) -> String {
        let placed = if self.agent_installed {
            String::new()
        } else {
            " (not installed here; placed as its installer would)".to_string()
        };
        match self.outcome {
            Outcome::Connected { at_ms, attempts } => {
                let when = if at_ms < self.boot_drivers_done_ms {
                    "while the boot-start drivers initialise"
                } else if at_ms == self.boot_drivers_done_ms {
                    "right after the last boot-start driver (boot-driver reinitialisation)"
                } else if at_ms <= self.boot_done_ms {
                    "after the boot-start drivers, while the system-start drivers initialise"
                } else {
                    "only after the boot (its worker thread keeps retrying)"
                };
                format!(
                    "{}{placed} will capture {} at t={at_ms} ms, attempt {attempts}, {when}",
                    self.agent, self.agent_device
                )
            }
            Outcome::Failed {
                at_ms,
                attempts,
                last_status,
            } => {
                let s = NtStatus(last_status);
                let why = if s == NtStatus::STATUS_OBJECT_NAME_NOT_FOUND {
                    format!(
                        "{} never appears (is VMware Tools' vsock installed and boot-start?)",
                        self.agent_device
                    )
                } else if s == NtStatus::STATUS_DEVICE_BUSY {
                    format!(
                        "the provider behind {} stays busy (a device it needs has not started)",
                        self.agent_device
                    )
                } else {
                    format!("the last answer was {s}")
                };
                format!(
                    "{}{placed} will NOT capture {}: it gives up after {attempts} attempt(s) at t={at_ms} ms, last status {}: {why}; it cannot reach the host",
                    self.agent,
                    self.agent_device,
                    named_status(s)
                )
            }
        }
    }
}

/// Why a simulation cannot run.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SimulateError {
    /// The agent is not in the needs table.
    #[error(
        "no thin agent \"{agent}\" in the needs table (known: {known}); add an [[agent]] entry with your own --needs file"
    )]
    UnknownAgent {
        /// The name asked for.
        agent: String,
        /// The agents the table has.
        known: String,
    },
    /// The agent is on the machine but not boot/system-start.
    #[error(
        "{agent} has Start={start}: the kernel does not start it at boot, so there is no boot to simulate for it; set Start to 0 (boot) or 1 (system) to model its installed configuration"
    )]
    AgentNotKernelStarted {
        /// The agent.
        agent: String,
        /// Its start type.
        start: String,
    },
    /// The registry tree is not a control set.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Reads the control set `root` and simulates.
///
/// # Errors
/// As [`simulate`], plus [`SimulateError::Model`].
pub fn simulate_control_set(
    root: &RegKey,
    needs: &NeedsTable,
    opts: &SimulateOptions,
) -> Result<Simulation, SimulateError> {
    simulate(&Model::from_control_set(root)?, needs, opts)
}

/// Simulates the boot of `model` with the agent `opts.agent` (see the
/// [module docs](self)).
///
/// # Errors
/// [`SimulateError::UnknownAgent`], [`SimulateError::AgentNotKernelStarted`].
pub fn simulate(
    model: &Model,
    needs: &NeedsTable,
    opts: &SimulateOptions,
) -> Result<Simulation, SimulateError> {
    let decl = needs
        .agent(&opts.agent)
        .ok_or_else(|| SimulateError::UnknownAgent {
            agent: opts.agent.clone(),
            known: needs
                .agents
                .iter()
                .map(|a| a.service.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?
        .clone();
    let mut m = model.clone();
    let mut notes = Vec::new();
    for other in &needs.agents {
        if fold(&other.service) == fold(&decl.service) {
            continue;
        }
        if let Some(s) = m.services.get_mut(&fold(&other.service))
            && s.start.is_some_and(StartType::is_kernel_initialised)
        {
            s.start = Some(StartType::Disabled);
            notes.push(format!(
                "{} (another thin agent) is left out: this run shows the machine with {} instead",
                s.name, decl.service
            ));
        }
    }
    if m.service(&decl.service).is_none() {
        let start = StartType::from_u32(decl.default_start.unwrap_or(0));
        notes.push(format!(
            "{} is not installed on this machine: placed as {}-start in {}",
            decl.service,
            start.name(),
            decl.default_group
                .as_deref()
                .map_or("no group".to_string(), |g| format!("group \"{g}\""))
        ));
        m.insert_service(Service {
            name: decl.service.clone(),
            kind: Some(2),
            start: Some(start),
            start_before_override: None,
            error_control: Some(1),
            group: decl.default_group.clone(),
            tag: None,
            image_path: format!("System32\\drivers\\{}.sys", decl.service),
            image_path_defaulted: true,
            depend_on_service: Vec::new(),
            depend_on_group: Vec::new(),
            instances: Vec::new(),
        });
    }
    needs.add_hinted_devices(&mut m);
    let order = compute_order(&m);
    if order.init_step(&decl.service).is_none() {
        let s = m.service(&decl.service).and_then(|s| s.start);
        return Err(SimulateError::AgentNotKernelStarted {
            agent: decl.service.clone(),
            start: s.map_or("(none)".to_string(), |s| s.as_u32().to_string()),
        });
    }
    let installed = model.service(&decl.service).is_some();
    let mut run = Run::new(&order, needs, &decl, opts, notes);
    run.play();
    let mut sim = run.finish();
    sim.agent_installed = installed;
    Ok(sim)
}

struct Run<'a> {
    order: &'a LoadOrder,
    needs: &'a NeedsTable,
    agent: &'a AgentDecl,
    filter: LevelFilter,
    connector: Connector,
    present: std::collections::BTreeSet<String>,
    timeline: Vec<TimelineLine>,
    notes: Vec<String>,
    t: u64,
    next_attempt: Option<u64>,
    agent_phase: Option<Phase>,
    last_status: NtStatus,
    last_attempt_ms: u64,
    boot_done_ms: u64,
    boot_drivers_done_ms: u64,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl<'a> Run<'a> {
    fn new(
        order: &'a LoadOrder,
        needs: &'a NeedsTable,
        agent: &'a AgentDecl,
        opts: &SimulateOptions,
        notes: Vec<String>,
    ) -> Self {
        let config = ConnectorConfig {
            max_attempts: agent.attempts,
            delay: Duration::from_millis(agent.delay_ms),
            ..ConnectorConfig::default()
        };
        let agent_phase = order.entry(&agent.service).map(|e| e.phase);
        Run {
            order,
            needs,
            agent,
            filter: LevelFilter::from_debug_level(opts.debug_level),
            connector: Connector::new(config),
            present: std::collections::BTreeSet::new(),
            timeline: Vec::new(),
            notes,
            t: 0,
            next_attempt: None,
            agent_phase,
            last_status: NtStatus::STATUS_UNSUCCESSFUL,
            last_attempt_ms: 0,
            boot_done_ms: 0,
            boot_drivers_done_ms: 0,
        }
    }

    fn emit(&mut self, t_ms: u64, record: &LogRecord<'_>) {
        if self.filter.enabled(record.level) {
            self.timeline.push(TimelineLine {
                t_ms,
                line: record.to_string(),
            });
        }
    }

    fn note(&mut self, t_ms: u64, level: Level, routine: &str, text: &str) {
        self.emit(
            t_ms,
            &LogRecord::new(level, routine, format_args!("{text}")),
        );
    }

    fn is_agent(&self, service: &str) -> bool {
        fold(service) == fold(&self.agent.service)
    }

    /// The devices the start of `owner`'s device `path` creates (a
    /// declaration with an `instance` only at that instance's start).
    fn create_devices_at_start(&mut self, owner: &str, path: &str, t: u64) {
        let owned: Vec<String> = self
            .order
            .steps
            .iter()
            .filter_map(|st| match st {
                Step::StartDevice(d) if fold(&d.function_driver) == fold(owner) => {
                    Some(d.device.clone())
                }
                _ => None,
            })
            .chain(
                self.order
                    .never_started
                    .iter()
                    .filter(|d| fold(&d.function_driver) == fold(owner))
                    .map(|d| d.device.clone()),
            )
            .collect();
        let decls: Vec<_> = self
            .needs
            .devices
            .iter()
            .filter(|d| {
                d.created == Created::DeviceStart
                    && fold(&d.owner) == fold(owner)
                    && d.created_at_start_of(path, owned.iter().map(String::as_str))
            })
            .cloned()
            .collect();
        self.announce(decls, owner, t);
    }

    fn create_devices(&mut self, owner: &str, created: Created, t: u64) {
        let decls: Vec<_> = self
            .needs
            .devices
            .iter()
            .filter(|d| d.created == created && fold(&d.owner) == fold(owner))
            .cloned()
            .collect();
        self.announce(decls, owner, t);
    }

    fn announce(&mut self, decls: Vec<crate::needs::DeviceDecl>, owner: &str, t: u64) {
        for d in decls {
            if self.present.contains(&canonical_object_name(&d.name)) {
                continue;
            }
            self.present.insert(canonical_object_name(&d.name));
            for l in &d.links {
                self.present.insert(canonical_object_name(l));
            }
            let links = if d.links.is_empty() {
                String::new()
            } else {
                format!(", link {}", d.links.join(", "))
            };
            let text = format!("{} created by {owner}{links}", d.name);
            self.note(t, Level::Info, routine_names::CREATE_DEVICE, &text);
        }
    }

    /// Whether `device` exists and every device its owner needs for use is
    /// ready, recursively; `Err(status)` otherwise.
    fn ready(&self, device: &str, depth: u32) -> Result<(), NtStatus> {
        if !self.present.contains(&canonical_object_name(device)) {
            return Err(NtStatus::STATUS_OBJECT_NAME_NOT_FOUND);
        }
        if depth > 16 {
            return Ok(());
        }
        let Some(decl) = self.needs.device(device) else {
            return Ok(());
        };
        for need in self.needs.needs_of(&decl.owner) {
            if need.when == NeedWhen::Use && self.ready(&need.device, depth + 1).is_err() {
                return Err(need.busy());
            }
        }
        Ok(())
    }

    fn capture_status(&self) -> NtStatus {
        match self.ready(&self.agent.device, 0) {
            Ok(()) => NtStatus::STATUS_SUCCESS,
            Err(s) => s,
        }
    }

    fn agent_routine(&self) -> &'static str {
        match self.agent.style {
            AgentStyle::Blocking => routine_names::VSOCK_LAYER_INIT,
            AgentStyle::DeferredRetry => routine::VSOCK_CAPTURE,
        }
    }

    /// One attempt at `t`; logs it; returns the connector's action.
    fn attempt(&mut self, t: u64, via: &str) -> ConnectorAction {
        let status = self.capture_status();
        let action = self.connector.on_attempt(status, Instant::from_millis(t));
        self.last_status = status;
        self.last_attempt_ms = t;
        let r = self.agent_routine();
        let n = self.connector.attempts();
        match action {
            ConnectorAction::RetryAfter(d) => self.emit(
                t,
                &LogRecord::new(
                    Level::Debug,
                    r,
                    format_args!(
                        "capture attempt {n}{via} failed, retrying in {} ms",
                        d.as_millis()
                    ),
                )
                .with_status(status),
            ),
            ConnectorAction::Connected { attempts, .. } => self.emit(
                t,
                &LogRecord::new(
                    Level::Info,
                    r,
                    format_args!("vSockets provider captured after {attempts} attempt(s){via}"),
                )
                .with_status(status),
            ),
            ConnectorAction::GiveUp {
                attempts,
                last_status,
                waited,
                reason,
            } => {
                let why = reason.describe();
                if self.agent.style == AgentStyle::Blocking {
                    self.emit(
                        t,
                        &LogRecord::new(
                            Level::Error,
                            r,
                            format_args!("VMCISock_WskCaptureProviderNPI"),
                        )
                        .with_status(last_status),
                    );
                } else {
                    self.emit(
                        t,
                        &LogRecord::new(
                            Level::Error,
                            r,
                            format_args!(
                                "capture failed after {attempts} attempt(s), {} ms waited, {why}",
                                waited.as_millis()
                            ),
                        )
                        .with_status(last_status),
                    );
                }
            }
        }
        action
    }

    /// Runs the worker's attempts scheduled before `limit` (exclusive).
    fn worker_until(&mut self, limit: u64) {
        while let Some(a) = self.next_attempt {
            if a >= limit || self.connector.outcome().is_some() {
                break;
            }
            self.next_attempt = match self.attempt(a, "") {
                ConnectorAction::RetryAfter(d) => Some(a.saturating_add(ms(d))),
                _ => None,
            };
        }
    }

    fn product(&self) -> String {
        self.agent
            .name
            .clone()
            .unwrap_or_else(|| self.agent.service.clone())
    }

    fn agent_entry(&mut self, position: usize) {
        let t0 = self.t;
        let p = self.product();
        let init = self.needs.timing.init_ms(&self.agent.service);
        self.note(
            t0,
            Level::Info,
            phase_routine(self.agent_phase),
            &format!("{} DriverEntry starts (#{position})", self.agent.service),
        );
        match self.agent.style {
            AgentStyle::DeferredRetry => {
                let mut params = Params::default();
                let _ = params.apply(
                    "debugLevel",
                    thinagent_guest::RegValue::Dword(self.filter.debug_level().into()),
                );
                let mut lines = Vec::new();
                params.dump(|r| lines.push(r.to_string()));
                for l in lines {
                    if let Some(pl) = thinagent_guest::parse_line(&l)
                        && self.filter.enabled(pl.level)
                    {
                        self.timeline.push(TimelineLine { t_ms: t0, line: l });
                    }
                }
                match self.attempt(t0, " in the worker thread") {
                    ConnectorAction::RetryAfter(d) => {
                        self.next_attempt = Some(t0.saturating_add(ms(d)));
                        self.emit(
                            t0.saturating_add(init),
                            &LogRecord::new(
                                Level::Audit,
                                routine::DRIVER_ENTRY,
                                format_args!(
                                    "{p} loaded; provider capture continues in a worker thread"
                                ),
                            )
                            .with_status(NtStatus::STATUS_SUCCESS),
                        );
                    }
                    ConnectorAction::Connected { .. } => self.emit(
                        t0.saturating_add(init),
                        &LogRecord::new(
                            Level::Audit,
                            routine::DRIVER_ENTRY,
                            format_args!("{p} loaded"),
                        )
                        .with_status(NtStatus::STATUS_SUCCESS),
                    ),
                    ConnectorAction::GiveUp { last_status, .. } => self.emit(
                        t0.saturating_add(init),
                        &LogRecord::new(
                            Level::Audit,
                            routine::DRIVER_ENTRY,
                            format_args!("{p} loaded without a provider (fatal capture status)"),
                        )
                        .with_status(last_status),
                    ),
                }
                // Worker attempts during our own DriverEntry cannot happen
                // (the first is `delay` later), but keep the invariant.
                self.worker_until(t0.saturating_add(init));
                self.t = t0.saturating_add(init);
            }
            AgentStyle::Blocking => {
                self.note(
                    t0,
                    Level::Debug,
                    routine_names::VSOCK_LAYER_INIT,
                    "capturing the vSockets provider",
                );
                let mut t = t0;
                let end = loop {
                    match self.attempt(t, "") {
                        ConnectorAction::RetryAfter(d) => t = t.saturating_add(ms(d)),
                        terminal => break terminal,
                    }
                };
                let t_end = t.saturating_add(init);
                match end {
                    ConnectorAction::GiveUp { last_status, .. } => {
                        self.emit(
                            t,
                            &LogRecord::new(
                                Level::Error,
                                "VFileSocketMgr_Init",
                                format_args!("vsock layer initialisation failed"),
                            )
                            .with_status(last_status),
                        );
                        self.emit(
                            t,
                            &LogRecord::new(
                                Level::Error,
                                routine::DRIVER_ENTRY,
                                format_args!("socket manager initialisation failed"),
                            )
                            .with_status(last_status),
                        );
                        self.emit(
                            t_end,
                            &LogRecord::new(
                                Level::Audit,
                                routine::DRIVER_ENTRY,
                                format_args!("{p} load failed"),
                            )
                            .with_status(last_status),
                        );
                    }
                    _ => self.emit(
                        t_end,
                        &LogRecord::new(
                            Level::Audit,
                            routine::DRIVER_ENTRY,
                            format_args!("{p} loaded"),
                        )
                        .with_status(NtStatus::STATUS_SUCCESS),
                    ),
                }
                self.t = t_end;
            }
        }
    }

    fn play(&mut self) {
        for n in self.notes.clone() {
            self.note(0, Level::Info, routine_names::BOOTSIM, &n);
        }
        let steps = self.order.steps.clone();
        for step in &steps {
            match step {
                Step::InitDriver { position, service } => {
                    if self.is_agent(service) {
                        self.agent_entry(*position);
                        continue;
                    }
                    let end = self.t.saturating_add(self.needs.timing.init_ms(service));
                    self.worker_until(end);
                    self.t = end;
                    let entry = self.order.entry(service);
                    let phase = entry.map(|e| e.phase);
                    let group = entry
                        .and_then(|e| e.group.clone())
                        .map_or("no group".to_string(), |g| format!("group \"{g}\""));
                    self.note(
                        end,
                        Level::Debug,
                        phase_routine(phase),
                        &format!("{service} initialised (#{position}, {group})"),
                    );
                    self.create_devices(service, Created::DriverInit, end);
                    if let Some(e) = entry {
                        let mut seen = Vec::new();
                        for d in &e.deferred_by {
                            if seen.contains(&d.device) {
                                continue;
                            }
                            seen.push(d.device.clone());
                            let why: Vec<String> = e
                                .deferred_by
                                .iter()
                                .filter(|x| x.device == d.device)
                                .map(|x| x.describe())
                                .collect();
                            let text = format!(
                                "{service}'s device {} not started: waits for {}",
                                d.device,
                                why.join(", ")
                            );
                            self.note(end, Level::Warn, routine_names::PNP_START, &text);
                        }
                    }
                }
                Step::StartDevice(ds) => {
                    let end = self.t.saturating_add(self.needs.timing.device_start_ms);
                    self.worker_until(end);
                    self.t = end;
                    let text = if fold(&ds.after) == fold(&ds.function_driver) {
                        format!("{} started ({})", ds.device, ds.function_driver)
                    } else {
                        format!(
                            "{} started ({}) after {} initialised",
                            ds.device, ds.function_driver, ds.after
                        )
                    };
                    self.note(end, Level::Info, routine_names::PNP_START, &text);
                    let (fd, path) = (ds.function_driver.clone(), ds.device.clone());
                    self.create_devices_at_start(&fd, &path, end);
                }
                Step::BootDriversDone => {
                    let t = self.t;
                    self.boot_drivers_done_ms = t;
                    self.worker_until(t);
                    self.note(
                        t,
                        Level::Info,
                        routine_names::BOOT_DRIVERS,
                        "boot drivers initialised; boot-driver reinitialisation callbacks run",
                    );
                    if self.agent.style == AgentStyle::DeferredRetry
                        && self.agent_phase == Some(Phase::Boot)
                        && self.connector.outcome().is_none()
                    {
                        self.next_attempt = match self.attempt(t, " from boot reinitialisation") {
                            ConnectorAction::RetryAfter(d) => Some(t.saturating_add(ms(d))),
                            _ => None,
                        };
                    }
                }
                Step::SystemPhaseBegins => {
                    let t = self.t;
                    self.note(
                        t,
                        Level::Debug,
                        routine_names::SYSTEM_DRIVERS,
                        "system phase begins",
                    );
                }
                Step::SystemDriversDone => {
                    let t = self.t;
                    self.worker_until(t);
                    self.boot_done_ms = t;
                    self.note(
                        t,
                        Level::Info,
                        routine_names::SYSTEM_DRIVERS,
                        "system-start drivers initialised",
                    );
                }
            }
        }
        // After the boot the world no longer changes; the worker finishes.
        self.worker_until(u64::MAX);
    }

    fn finish(mut self) -> Simulation {
        let outcome = match self.connector.outcome() {
            Some(ConnectorAction::Connected { attempts, .. }) => Outcome::Connected {
                at_ms: self.last_attempt_ms,
                attempts,
            },
            Some(ConnectorAction::GiveUp {
                attempts,
                last_status,
                ..
            }) => Outcome::Failed {
                at_ms: self.last_attempt_ms,
                attempts,
                last_status: last_status.0,
            },
            _ => Outcome::Failed {
                at_ms: self.last_attempt_ms,
                attempts: self.connector.attempts(),
                last_status: self.last_status.0,
            },
        };
        self.timeline.sort_by_key(|l| l.t_ms);
        Simulation {
            agent: self.agent.service.clone(),
            style: self.agent.style,
            outcome,
            timeline: self.timeline,
            notes: self.notes,
            boot_done_ms: self.boot_done_ms,
            boot_drivers_done_ms: self.boot_drivers_done_ms,
            agent_installed: true,
            agent_device: self.agent.device.clone(),
        }
    }
}

fn phase_routine(phase: Option<Phase>) -> &'static str {
    match phase {
        Some(Phase::System) => routine_names::SYSTEM_DRIVERS,
        _ => routine_names::BOOT_DRIVERS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::seed;

    fn run(product_filter: bool, agent: &str) -> Simulation {
        simulate_control_set(
            &seed::machine(product_filter),
            &NeedsTable::builtin(),
            &SimulateOptions {
                agent: agent.into(),
                ..SimulateOptions::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn blocking_agent_fails_with_the_filter_and_connects_without() {
        let bad = run(true, "vsepflt");
        assert_eq!(bad.outcome_word(), "failed", "{:#?}", bad.timeline);
        assert_eq!(bad.attempts(), 100);
        assert!(matches!(
            bad.outcome,
            Outcome::Failed {
                last_status: 0x8000_0011,
                ..
            }
        ));
        let good = run(false, "vsepflt");
        assert_eq!(good.outcome_word(), "connected", "{:#?}", good.timeline);
        assert_eq!(good.attempts(), 1);
    }

    #[test]
    fn deferred_agent_connects_on_both() {
        for f in [true, false] {
            let s = run(f, "thinagent");
            assert_eq!(s.outcome_word(), "connected", "{:#?}", s.timeline);
        }
        let s = run(true, "thinagent");
        assert!(s.attempts() >= 2);
        assert!(s.notes.iter().any(|n| n.contains("vsepflt")));
    }

    #[test]
    fn unknown_agent_is_an_error_listing_the_known_ones() {
        let e = simulate_control_set(
            &seed::machine(false),
            &NeedsTable::builtin(),
            &SimulateOptions {
                agent: "nope".into(),
                ..SimulateOptions::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("thinagent, vsepflt"), "{e}");
    }
}
