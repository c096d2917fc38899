//! The analysis and the simulation agree: on the seed machine with the
//! product's class filter placed anywhere (any group of the list or an
//! unknown one, any start type), VMware's blocking agent fails in simulation
//! exactly when the analysis flags a needed-device hazard for it, and our
//! deferred-retry agent connects whenever vmci's device starts at all.

use proptest::prelude::*;
use thinagent_bootsim::hazard::{Analysis, HazardId};
use thinagent_bootsim::model::seed;
use thinagent_bootsim::needs::NeedsTable;
use thinagent_bootsim::registry::{RegKey, RegValue};
use thinagent_bootsim::simulate::{SimulateOptions, simulate_control_set};

fn machine(group: Option<usize>, start: u32, tag: Option<u32>) -> RegKey {
    let mut root = seed::machine(true);
    let k = root.key_mut_or_create(r"Services\dlpdev");
    k.set_value("Start", RegValue::Dword(start));
    match group {
        Some(i) if i < seed::WIN7_GROUP_ORDER.len() => {
            k.set_value("Group", RegValue::Sz(seed::WIN7_GROUP_ORDER[i].into()));
        }
        Some(_) => k.set_value("Group", RegValue::Sz("System Boot Extender".into())),
        None => {
            k.remove_value("Group");
        }
    }
    if let Some(t) = tag {
        k.set_value("Tag", RegValue::Dword(t));
    }
    root
}

fn run(root: &RegKey, agent: &str) -> bool {
    simulate_control_set(
        root,
        &NeedsTable::builtin(),
        &SimulateOptions {
            agent: agent.into(),
            debug_level: 0,
        },
    )
    .unwrap()
    .connected_at_ms()
    .is_some()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn hazard_iff_the_blocking_agent_fails(
        group in prop::option::of(0usize..seed::WIN7_GROUP_ORDER.len() + 1),
        start in prop_oneof![Just(0u32), Just(0), Just(1), Just(3), Just(4)],
        tag in prop::option::of(1u32..4),
    ) {
        let root = machine(group, start, tag);
        let a = Analysis::from_control_set(&root, &NeedsTable::builtin()).unwrap();
        let flagged = a.hazards.iter().any(|h| {
            matches!(
                h.id,
                HazardId::ClassFilterDefersNeededDevice
                    | HazardId::NeededProviderStartsLater
                    | HazardId::NeededProviderMissing
            ) && h.services.first().is_some_and(|s| s == "vsepflt")
        });
        prop_assert_eq!(flagged, !run(&root, "vsepflt"));

        let device_starts = a.order.device_start_step("vmci").is_some();
        prop_assert_eq!(run(&root, "thinagent"), device_starts);
    }
}
