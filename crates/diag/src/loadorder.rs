//! `thinagent-diag loadorder FILE [--json]`: the boot- and system-start
//! driver order of a machine, like Sysinternals LoadOrd, and its hazards.
//!
//! The input is an offline SYSTEM hive or a `.reg` export
//! (`thinagent_bootsim::registry::load`); the order and the hazards come from
//! `thinagent_bootsim::hazard::Analysis`, with the built-in needs table
//! (extended by `--needs FILE`).
//!
//! Output, most important first: our agent's outlook on the machine
//! ([`Outlook`]: will `thinagent` capture its provider, when, or why not; the
//! same for other installed thin agents), the hazards, the notes, the
//! LoadOrd-like table.
//!
//! Exit status: 0 no hazards, 1 hazards found (or an installed agent that
//! will not capture), 2 input error. Hazards of severity `info` (e.g. a
//! minifilter's `DependOnService=FltMgr`, which Windows ignores for a boot
//! driver but which group order already satisfies, or Microsoft's own
//! drivers in groups `ServiceGroupOrder\List` lacks) are printed as notes and
//! do not count (`docs/boot-order.md`, "Severity").

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;
use thinagent_bootsim::hazard::{Analysis, Hazard, Severity};
use thinagent_bootsim::needs::NeedsTable;
use thinagent_bootsim::order::{LoadOrder, Step, TagRank};
use thinagent_bootsim::registry::{self, LoadedRegistry};

/// Why the input could not be analysed (exit status 2).
#[derive(Debug)]
pub struct InputError(pub String);

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The machine, analysed.
pub struct Machine {
    /// The registry input, reduced to its control set.
    pub loaded: LoadedRegistry,
    /// Model, order, hazards.
    pub analysis: Analysis,
    /// The needs table used.
    pub needs: NeedsTable,
}

/// The built-in needs table, extended by the file `needs` if given.
///
/// # Errors
/// The needs file cannot be read or parsed.
pub fn needs_table(needs: Option<&Path>) -> Result<NeedsTable, InputError> {
    let mut table = NeedsTable::builtin();
    if let Some(path) = needs {
        let extra = NeedsTable::from_file(path).map_err(|e| {
            InputError(format!(
                "needs file {}: {e}; see docs/boot-order.md, \"The needs table\"",
                path.display()
            ))
        })?;
        table.merge(extra);
    }
    Ok(table)
}

/// Loads and analyses the machine in `file`.
///
/// # Errors
/// Unreadable or malformed registry input, a control set without `Services`,
/// or a bad needs file.
pub fn analyse(file: &Path, needs: Option<&Path>) -> Result<Machine, InputError> {
    let loaded = registry::load(file).map_err(|e| {
        InputError(format!(
            "{}: {e}; give an offline SYSTEM hive (Windows\\System32\\config\\SYSTEM from the VM's disk) or `reg export HKLM\\SYSTEM system.reg`",
            file.display()
        ))
    })?;
    let needs = needs_table(needs)?;
    let analysis = Analysis::from_control_set(&loaded.control_set, &needs)
        .map_err(|e| InputError(format!("{}: {e}", file.display())))?;
    Ok(Machine {
        loaded,
        analysis,
        needs,
    })
}

/// Remarks about the input for stderr: reader warnings and model warnings.
#[must_use]
pub fn warnings(m: &Machine) -> Vec<String> {
    m.loaded
        .warnings
        .iter()
        .map(ToString::to_string)
        .chain(m.analysis.model.warnings.iter().cloned())
        .collect()
}

/// The thin agent's outlook on the machine (ours, `thinagent`, simulated
/// with its real capture-retry policy; placed as its installer would when
/// the machine lacks it).
#[derive(Debug, Clone, Serialize)]
pub struct Outlook {
    /// The agent simulated.
    pub agent: String,
    /// Whether the machine has it installed.
    pub installed: bool,
    /// Whether it captures its provider.
    pub captures: bool,
    /// When it captures, ms of virtual boot time.
    pub at_ms: Option<u64>,
    /// Capture attempts made.
    pub attempts: u32,
    /// One sentence.
    pub summary: String,
    /// The same sentence for every other thin agent of the needs table
    /// that this machine has installed and starts at boot (VMware's
    /// vsepflt on the seed's machines).
    pub also: Vec<String>,
}

impl Outlook {
    /// `true` when the outlook alone is a hazard: the agent is installed and
    /// will not reach the host.
    #[must_use]
    pub fn counts(&self) -> bool {
        self.installed && !self.captures
    }
}

/// Simulates our agent on the machine (see [`Outlook`]).
#[must_use]
pub fn outlook(m: &Machine) -> Outlook {
    use thinagent_bootsim::simulate::{DEFAULT_AGENT, SimulateOptions, simulate};
    let agent = DEFAULT_AGENT;
    let model = &m.analysis.model;
    let also: Vec<String> = m
        .needs
        .agents
        .iter()
        .filter(|a| !a.service.eq_ignore_ascii_case(agent))
        .filter(|a| m.analysis.order.entry(&a.service).is_some())
        .filter_map(|a| {
            let opts = SimulateOptions {
                agent: a.service.clone(),
                ..SimulateOptions::default()
            };
            simulate(model, &m.needs, &opts).ok().map(|s| s.outlook())
        })
        .collect();
    let opts = SimulateOptions::default();
    match simulate(model, &m.needs, &opts) {
        Ok(sim) => Outlook {
            agent: sim.agent.clone(),
            installed: sim.agent_installed,
            captures: sim.connected_at_ms().is_some(),
            at_ms: sim.connected_at_ms(),
            attempts: sim.attempts(),
            summary: sim.outlook(),
            also,
        },
        Err(e) => Outlook {
            agent: agent.to_string(),
            installed: m.analysis.model.service(agent).is_some(),
            captures: false,
            at_ms: None,
            attempts: 0,
            summary: format!("{agent} will NOT capture at boot: {e}"),
            also,
        },
    }
}

/// `true` for hazards that count for the exit status (error and warning).
#[must_use]
pub fn counts(h: &Hazard) -> bool {
    matches!(h.severity, Severity::Error | Severity::Warning)
}

/// One row of `--json`'s `order`.
#[derive(Serialize)]
struct JsonEntry<'a> {
    service: &'a str,
    group: Option<&'a str>,
    tag: Option<u32>,
    start: String,
    image: &'a str,
    deferred_by: Vec<&'a str>,
}

/// One hazard of `--json`'s `hazards`.
#[derive(Serialize)]
struct JsonHazard<'a> {
    id: &'static str,
    severity: &'static str,
    services: &'a [String],
    message: &'a str,
    fix: &'a str,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    outlook: &'a Outlook,
    order: Vec<JsonEntry<'a>>,
    hazards: Vec<JsonHazard<'a>>,
}

/// `--json`: `{"outlook": {...}, "order": [...], "hazards": [...]}`
/// (`outlook` added for issue 13; `order` and `hazards` unchanged).
///
/// # Errors
/// Serialisation cannot fail for these types; the error is passed on.
pub fn render_json(a: &Analysis, outlook: &Outlook) -> serde_json::Result<String> {
    let order = a
        .order
        .entries
        .iter()
        .map(|e| {
            let mut deferred_by: Vec<&str> = Vec::new();
            for d in &e.deferred_by {
                if !deferred_by
                    .iter()
                    .any(|x| x.eq_ignore_ascii_case(&d.filter))
                {
                    deferred_by.push(&d.filter);
                }
            }
            JsonEntry {
                service: &e.service,
                group: e.group.as_deref(),
                tag: e.tag,
                start: e.start.name(),
                image: &e.image,
                deferred_by,
            }
        })
        .collect();
    let hazards = a
        .hazards
        .iter()
        .map(|h| JsonHazard {
            id: h.id.as_str(),
            severity: h.severity.as_str(),
            services: &h.services,
            message: &h.message,
            fix: &h.fix,
        })
        .collect();
    serde_json::to_string_pretty(&JsonReport {
        outlook,
        order,
        hazards,
    })
}

fn tag_cell(tag: Option<u32>, rank: TagRank) -> String {
    match (tag, rank) {
        (None, _) => "-".into(),
        (Some(t), TagRank::Position(p)) => format!("{t} (#{p})"),
        (Some(t), TagRank::NotInVector) => format!("{t} (not in list)"),
        (Some(t), TagRank::NoTag) => t.to_string(),
    }
}

fn device_lines(order: &LoadOrder, after_service: &str) -> Vec<String> {
    // device starts that follow this driver's init step directly
    let Some(i) = order.init_step(after_service) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for st in &order.steps[i + 1..] {
        match st {
            Step::StartDevice(d) => {
                let mut s = format!(
                    "device {} ({}) starts, after {}",
                    d.device, d.function_driver, d.after
                );
                if !d.deferred_by.is_empty() {
                    s.push_str(": deferred by ");
                    s.push_str(
                        &d.deferred_by
                            .iter()
                            .map(|x| x.describe())
                            .collect::<Vec<_>>()
                            .join("; "),
                    );
                }
                out.push(s);
            }
            Step::InitDriver { .. } => break,
            Step::BootDriversDone => out.push("-- every boot-start driver initialised".into()),
            Step::SystemPhaseBegins => out.push("-- system phase begins".into()),
            Step::SystemDriversDone => out.push("-- every system-start driver initialised".into()),
        }
    }
    out
}

/// Hazards (error, warning), then notes (info), each with chain and fix.
#[must_use]
pub fn render_hazards(a: &Analysis) -> String {
    let mut s = String::new();
    let counted: Vec<&Hazard> = a.hazards.iter().filter(|h| counts(h)).collect();
    let notes: Vec<&Hazard> = a.hazards.iter().filter(|h| !counts(h)).collect();
    let item = |s: &mut String, h: &Hazard| {
        let kind = if counts(h) { "hazard" } else { "note" };
        let _ = writeln!(
            s,
            "  [{}] {} {}: {}",
            h.severity.as_str(),
            kind,
            h.id,
            h.message
        );
        let _ = writeln!(s, "      chain: {}", h.services.join(" -> "));
        let _ = writeln!(s, "      fix:   {}", h.fix);
    };
    let _ = writeln!(
        s,
        "\nHazards: {} (plus {} note(s))",
        counted.len(),
        notes.len()
    );
    for h in &counted {
        item(&mut s, h);
    }
    if counted.is_empty() {
        let _ = writeln!(
            s,
            "  none: no boot driver waits on a device that starts too late"
        );
    }
    if !notes.is_empty() {
        let _ = writeln!(
            s,
            "\nNotes: {} (how this machine differs from the textbook order; Windows copes)",
            notes.len()
        );
        for h in &notes {
            item(&mut s, h);
        }
    }
    s
}

/// The outlook, the hazards, the notes, then the LoadOrd-like table.
#[must_use]
pub fn render_text(name: &str, m: &Machine, outlook: &Outlook) -> String {
    let a = &m.analysis;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{name}: {} ({}), {} service(s), {} group(s) in ServiceGroupOrder\\List",
        m.loaded.source,
        m.loaded.control_set_name,
        a.model.services.len(),
        a.model.group_order.len()
    );
    let _ = writeln!(s, "\nOutlook: {}", outlook.summary);
    for a in &outlook.also {
        let _ = writeln!(s, "Also installed: {a}");
    }
    s.push_str(&render_hazards(a));
    let _ = writeln!(s, "\nOrder:");
    let rows: Vec<[String; 7]> = a
        .order
        .entries
        .iter()
        .map(|e| {
            let deferred = e
                .deferred_by
                .iter()
                .map(|d| d.describe())
                .collect::<Vec<_>>()
                .join("; ");
            [
                e.position.to_string(),
                match (&e.group, e.group_index) {
                    (Some(g), Some(_)) => g.clone(),
                    (Some(g), None) => format!("{g} (not in list)"),
                    (None, _) => "-".into(),
                },
                tag_cell(e.tag, e.tag_rank),
                e.start.name(),
                e.service.clone(),
                e.image.clone(),
                deferred,
            ]
        })
        .collect();
    let head = [
        "order",
        "group",
        "tag",
        "start",
        "service",
        "image",
        "deferred-by",
    ];
    let mut w = head.map(str::len);
    for r in &rows {
        for (i, c) in r.iter().enumerate().take(6) {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: [&str; 7]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i < 6 {
                let _ = write!(l, "{c:<width$}  ", width = w[i]);
            } else {
                l.push_str(c);
            }
        }
        l.trim_end().to_string()
    };
    let _ = writeln!(s, "{}", line(head));
    for (r, e) in rows.iter().zip(&a.order.entries) {
        let _ = writeln!(
            s,
            "{}",
            line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5], &r[6]])
        );
        for d in device_lines(&a.order, &e.service) {
            let _ = writeln!(s, "{:>width$}  {d}", "", width = w[0]);
        }
    }
    for d in &a.order.never_started {
        let _ = writeln!(
            s,
            "never started: device {} ({}): {}",
            d.device,
            d.function_driver,
            d.deferred_by
                .iter()
                .map(|x| x.describe())
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    s
}
