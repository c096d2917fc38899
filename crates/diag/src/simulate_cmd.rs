//! `thinagent-diag simulate FILE [--agent SERVICE] [--json]`: plays the
//! machine's boot in virtual time and runs the real capture-retry policy
//! (`thinagent_guest::Connector`) of a thin agent against it
//! (`thinagent_bootsim::simulate`).
//!
//! Exit status: 0 the agent connected, 1 it failed, 2 input error (registry,
//! needs file, unknown agent, agent not boot/system-start).

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;
use thinagent_bootsim::hazard::Analysis;
use thinagent_bootsim::simulate::{SimulateOptions, Simulation, simulate};

use crate::loadorder::{InputError, analyse};

/// Loads `file` and simulates `agent`.
///
/// # Errors
/// Input errors (see [`analyse`]) and simulation set-up errors (unknown
/// agent, agent not kernel-started).
pub fn run(
    file: &Path,
    agent: &str,
    needs: Option<&Path>,
) -> Result<(Simulation, Vec<String>, Analysis), InputError> {
    let machine = analyse(file, needs)?;
    let warnings = crate::loadorder::warnings(&machine);
    let opts = SimulateOptions {
        agent: agent.to_string(),
        ..SimulateOptions::default()
    };
    let sim = simulate(&machine.analysis.model, &machine.needs, &opts)
        .map_err(|e| InputError(format!("{}: {e}", file.display())))?;
    Ok((sim, warnings, machine.analysis))
}

#[derive(Serialize)]
struct JsonLine<'a> {
    t_ms: u64,
    line: &'a str,
}

#[derive(Serialize)]
struct JsonSimulation<'a> {
    outlook: String,
    agent: &'a str,
    outcome: &'static str,
    attempts: u32,
    connected_at_ms: Option<u64>,
    timeline: Vec<JsonLine<'a>>,
}

/// `--json`: `{"outlook", "agent", "outcome", "attempts", "connected_at_ms", "timeline": [{"t_ms", "line"}]}`
/// (`outlook`, the one-sentence [`Simulation::outlook`], added for issue 13).
///
/// # Errors
/// Serialisation cannot fail for these types; the error is passed on.
pub fn render_json(sim: &Simulation) -> serde_json::Result<String> {
    serde_json::to_string_pretty(&JsonSimulation {
        outlook: sim.outlook(),
        agent: &sim.agent,
        outcome: sim.outcome_word(),
        attempts: sim.attempts(),
        connected_at_ms: sim.connected_at_ms(),
        timeline: sim
            .timeline
            .iter()
            .map(|l| JsonLine {
                t_ms: l.t_ms,
                line: &l.line,
            })
            .collect(),
    })
}

/// The agent's outlook, the machine's hazards and notes, the simulator's
/// notes, the timeline (`t=…ms  LEVEL: Routine : message`) and the outcome.
#[must_use]
pub fn render_text(sim: &Simulation, analysis: &Analysis) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Outlook: {}", sim.outlook());
    s.push_str(&crate::loadorder::render_hazards(analysis));
    let _ = writeln!(s);
    for n in &sim.notes {
        let _ = writeln!(s, "note: {n}");
    }
    let width = sim.timeline.last().map_or(1, |l| l.t_ms.to_string().len());
    for l in &sim.timeline {
        let _ = writeln!(s, "t={:>width$}ms  {}", l.t_ms, l.line);
    }
    let _ = writeln!(s, "\noutcome: {}", sim.summary());
    let _ = writeln!(s, "boot finished at t={} ms", sim.boot_done_ms);
    s
}
