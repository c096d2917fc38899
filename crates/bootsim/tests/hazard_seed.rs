//! The seed's two machines, built programmatically: the class-filter hazard
//! is flagged with the product's System-class upper filter and not without.

use thinagent_bootsim::hazard::{Analysis, HazardId, Severity};
use thinagent_bootsim::model::{Model, SYSTEM_CLASS_GUID, seed};
use thinagent_bootsim::needs::NeedsTable;
use thinagent_bootsim::order::StackRole;
use thinagent_bootsim::registry::RegValue;

fn analyse(product_filter: bool) -> Analysis {
    Analysis::from_control_set(&seed::machine(product_filter), &NeedsTable::builtin()).unwrap()
}

#[test]
fn class_filter_hazard_on_the_incident_machine() {
    let a = analyse(true);
    let h: Vec<_> = a
        .hazards_with(HazardId::ClassFilterDefersNeededDevice)
        .collect();
    assert_eq!(h.len(), 1, "{:#?}", a.hazards);
    let h = h[0];
    assert_eq!(h.severity, Severity::Error);
    assert_eq!(h.services, ["vsepflt", "vsock", "vmci", "dlpdev"]);
    assert!(h.message.contains(SYSTEM_CLASS_GUID), "{}", h.message);
    assert!(h.message.contains("0x80000011"), "{}", h.message);
    assert!(h.fix.contains("remove dlpdev from Control\\Class\\{4d36e97d-e325-11ce-bfc1-08002be10318}\\UpperFilters"), "{}", h.fix);
    // The group suggested exists in the machine's list and loads before vsepflt.
    assert!(
        h.fix.contains("Group = \"System Bus Extender\""),
        "{}",
        h.fix
    );
    assert!(h.fix.contains("retry"), "{}", h.fix);
    let vmci = a.order.entry("vmci").unwrap();
    assert_eq!(vmci.deferred_by.len(), 1);
    assert_eq!(vmci.deferred_by[0].filter, "dlpdev");
    assert_eq!(vmci.deferred_by[0].role, StackRole::ClassUpperFilter);
}

#[test]
fn no_class_filter_hazard_on_the_clean_machine() {
    let a = analyse(false);
    for id in [
        HazardId::ClassFilterDefersNeededDevice,
        HazardId::DeviceFilterDefersNeededDevice,
        HazardId::NeededProviderStartsLater,
        HazardId::NeededProviderMissing,
    ] {
        assert_eq!(a.hazards_with(id).count(), 0, "{:#?}", a.hazards);
    }
    assert!(a.order.entry("vmci").unwrap().deferred_by.is_empty());
    assert!(
        a.hazards.iter().all(|h| h.severity != Severity::Error),
        "{:#?}",
        a.hazards
    );
}

#[test]
fn moving_the_filter_to_the_suggested_group_clears_the_hazard() {
    let mut root = seed::machine(true);
    root.key_mut_or_create(r"Services\dlpdev")
        .set_value("Group", RegValue::Sz("System Bus Extender".into()));
    let a = Analysis::from_control_set(&root, &NeedsTable::builtin()).unwrap();
    assert_eq!(
        a.hazards_with(HazardId::ClassFilterDefersNeededDevice)
            .count(),
        0,
        "{:#?}",
        a.hazards
    );
}

#[test]
fn system_boot_extender_is_unknown_and_keeps_the_deferral() {
    let mut root = seed::machine(true);
    root.key_mut_or_create(r"Services\dlpdev")
        .set_value("Group", RegValue::Sz("System Boot Extender".into()));
    let a = Analysis::from_control_set(&root, &NeedsTable::builtin()).unwrap();
    let unknown = a
        .hazards_with(HazardId::UnknownGroup)
        .next()
        .expect("flagged");
    assert_eq!(unknown.services, ["dlpdev"]);
    assert!(
        unknown.fix.contains("\"System Bus Extender\""),
        "{}",
        unknown.fix
    );
    assert_eq!(
        a.hazards_with(HazardId::ClassFilterDefersNeededDevice)
            .count(),
        1
    );
}

#[test]
fn class_hint_covers_exports_without_enum() {
    let mut root = seed::machine(true);
    root.remove_key("Enum");
    let a = Analysis::from_control_set(&root, &NeedsTable::builtin()).unwrap();
    assert_eq!(
        a.hazards_with(HazardId::ClassFilterDefersNeededDevice)
            .count(),
        1
    );
    // Without the hint nothing can be said about vmci's device.
    let m = Model::from_control_set(&root).unwrap();
    let a = Analysis::new(m, &NeedsTable::empty());
    assert_eq!(
        a.hazards_with(HazardId::ClassFilterDefersNeededDevice)
            .count(),
        0
    );
}

#[test]
fn our_deferred_retry_agent_makes_it_a_warning() {
    let mut root = seed::machine(true);
    let v = root.remove_key(r"Services\vsepflt").unwrap();
    let k = root.key_mut_or_create(r"Services\thinagent");
    for (n, val) in v.values() {
        k.set_value(n, val.clone());
    }
    let a = Analysis::from_control_set(&root, &NeedsTable::builtin()).unwrap();
    let h = a
        .hazards_with(HazardId::ClassFilterDefersNeededDevice)
        .next()
        .unwrap();
    assert_eq!(h.severity, Severity::Warning);
    assert_eq!(h.services[0], "thinagent");
}

#[test]
fn provider_later_missing_or_filter_disabled() {
    // The agent moved before vsock's group: vsock initialises after it.
    let mut root = seed::machine(false);
    root.key_mut_or_create(r"Services\vsepflt")
        .set_value("Group", RegValue::Sz("Boot Bus Extender".into()));
    let a = Analysis::from_control_set(&root, &NeedsTable::builtin()).unwrap();
    let h = a
        .hazards_with(HazardId::NeededProviderStartsLater)
        .next()
        .expect("flagged");
    assert_eq!(h.services, ["vsepflt", "vsock"]);
    assert_eq!(h.severity, Severity::Error);

    // VMware Tools' vsock not installed.
    let mut root = seed::machine(false);
    root.remove_key(r"Services\vsock").unwrap();
    let a = Analysis::from_control_set(&root, &NeedsTable::builtin()).unwrap();
    let h = a
        .hazards_with(HazardId::NeededProviderMissing)
        .next()
        .expect("flagged");
    assert_eq!(h.services, ["vsepflt", "vsock"]);

    // The class filter disabled: vmci's device never starts.
    let mut root = seed::machine(true);
    root.key_mut_or_create(r"Services\dlpdev")
        .set_value("Start", RegValue::Dword(4));
    let a = Analysis::from_control_set(&root, &NeedsTable::builtin()).unwrap();
    let h = a
        .hazards_with(HazardId::ClassFilterDefersNeededDevice)
        .next()
        .expect("flagged");
    assert!(h.message.contains("never starts"), "{}", h.message);
    assert!(
        !h.fix.contains("(2)"),
        "moving a disabled filter is no fix: {}",
        h.fix
    );
    let d = a
        .hazards_with(HazardId::FilterDisabled)
        .next()
        .expect("flagged");
    assert_eq!(d.severity, Severity::Error);
    assert!(d.services.contains(&"vmci".to_string()));
    assert!(
        a.order
            .never_started
            .iter()
            .any(|s| s.function_driver == "vmci")
    );
}

#[test]
fn a_user_needs_table_adds_a_dependency() {
    // A product driver that needs vmci's device at DriverEntry.
    let mut root = seed::machine(true);
    let k = root.key_mut_or_create(r"Services\mytool");
    k.set_value("Type", RegValue::Dword(1));
    k.set_value("Start", RegValue::Dword(0));
    k.set_value("Group", RegValue::Sz("SCSI miniport".into()));
    let extra =
        "[[need]]\nservice = \"mytool\"\ndevice = '\\DosDevices\\VMCIDev'\nwhen = \"init\"\n";
    let needs = NeedsTable::builtin_extended(extra, "mine.toml").unwrap();
    let a = Analysis::from_control_set(&root, &needs).unwrap();
    let chains: Vec<_> = a
        .hazards_with(HazardId::ClassFilterDefersNeededDevice)
        .map(|h| h.services.clone())
        .collect();
    assert!(
        chains.contains(&vec!["mytool".to_string(), "vmci".into(), "dlpdev".into()]),
        "{chains:?}"
    );
}
