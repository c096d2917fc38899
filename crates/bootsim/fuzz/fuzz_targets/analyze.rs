//! Arbitrary bytes as a registry export or an offline SYSTEM hive (a file a
//! user copies off a broken VM: anything can be in it), through the whole
//! offline pipeline: reader, model, load order, hazards and the simulated
//! boot with both agents. Errors are fine; a panic or a hang is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use thinagent_bootsim::hazard::Analysis;
use thinagent_bootsim::model::Model;
use thinagent_bootsim::needs::NeedsTable;
use thinagent_bootsim::registry;
use thinagent_bootsim::simulate::{SimulateOptions, simulate};

fuzz_target!(|data: &[u8]| {
    let Ok(loaded) = registry::from_bytes(data) else {
        return;
    };
    let Ok(model) = Model::from_control_set(&loaded.control_set) else {
        return;
    };
    let needs = NeedsTable::builtin();
    let _ = Analysis::new(model.clone(), &needs);
    for agent in ["thinagent", "vsepflt"] {
        let opts = SimulateOptions {
            agent: agent.to_string(),
            ..SimulateOptions::default()
        };
        let _ = simulate(&model, &needs, &opts);
    }
});
