//! Real SYSTEM hives (regipy's MIT test data, read in place, skipped with a
//! printed reason when absent): the clean VMware guest has no vmci hazard;
//! merging in a late System-class upper filter creates one.

mod support;

use thinagent_bootsim::hazard::{Analysis, HazardId, Severity};
use thinagent_bootsim::model::{SYSTEM_CLASS_GUID, fold};
use thinagent_bootsim::needs::NeedsTable;
use thinagent_bootsim::registry::{self, RegKey, RegValue};

fn vmware_guest() -> Option<RegKey> {
    let bytes = support::real_hive("SYSTEM_WIN_10_1709")?;
    Some(
        registry::from_hive_bytes(&bytes)
            .expect("reads")
            .control_set,
    )
}

/// Warnings and errors involving vmci or vsock. (On this hive vmci's Tag 16
/// is not in the "System Bus Extender" vector: an info-level hazard that is
/// true of the real machine and harmless.)
fn mentions_vmci(a: &Analysis) -> Vec<String> {
    a.hazards
        .iter()
        .filter(|h| h.severity != Severity::Info)
        .filter(|h| {
            h.services
                .iter()
                .any(|s| fold(s) == "vmci" || fold(s) == "vsock")
        })
        .map(|h| format!("{} {:?}", h.id, h.services))
        .collect()
}

/// Adds boot-start `lateflt` ("FSFilter Activity Monitor") as an upper filter
/// of the System class, keeping the class's other filters.
fn merge_late_class_filter(cs: &mut RegKey) {
    let svc = cs.key_mut_or_create(r"Services\lateflt");
    svc.set_value("Type", RegValue::Dword(1));
    svc.set_value("Start", RegValue::Dword(0));
    svc.set_value("ErrorControl", RegValue::Dword(1));
    svc.set_value("Group", RegValue::Sz("FSFilter Activity Monitor".into()));
    let class = cs.key_mut_or_create(&format!(r"Control\Class\{SYSTEM_CLASS_GUID}"));
    let mut upper: Vec<String> = class
        .strings("UpperFilters")
        .unwrap_or_default()
        .into_iter()
        .map(str::to_string)
        .collect();
    upper.push("lateflt".into());
    class.set_value("UpperFilters", RegValue::MultiSz(upper));
}

/// Adds VMware's thin agent as the seed's machines have it.
fn merge_vsepflt(cs: &mut RegKey) {
    let svc = cs.key_mut_or_create(r"Services\vsepflt");
    svc.set_value("Type", RegValue::Dword(2));
    svc.set_value("Start", RegValue::Dword(0));
    svc.set_value("Group", RegValue::Sz("FSFilter Anti-Virus".into()));
}

#[test]
fn clean_vmware_guest_has_no_vmci_hazard() {
    let Some(cs) = vmware_guest() else { return };
    let a = Analysis::from_control_set(&cs, &NeedsTable::builtin()).unwrap();
    // vmci and vsock are boot-start in "System Bus Extender"; vmci's devices
    // start right after it.
    let vmci = a.order.entry("vmci").expect("vmci is boot-start");
    assert_eq!(vmci.group.as_deref(), Some("System Bus Extender"));
    assert!(vmci.deferred_by.is_empty(), "{:?}", vmci.deferred_by);
    assert!(a.order.device_start_step("vmci").unwrap() > a.order.init_step("vmci").unwrap());
    assert!(
        a.order.early_lists,
        "Windows 10: hard-coded early lists apply"
    );
    // ACPI is on the loader's hard-coded list, so it is early, not last.
    assert!(a.order.position("ACPI").unwrap() < a.order.position("pci").unwrap());
    assert!(mentions_vmci(&a).is_empty(), "{:#?}", mentions_vmci(&a));
    assert!(
        a.hazards
            .iter()
            .filter(|h| h.services.iter().any(|s| fold(s) == "vmci"))
            .all(|h| h.id == HazardId::TagNotInGroupOrderList),
        "{:#?}",
        a.hazards
    );

    // With VMware's agent added the clean machine is still fine.
    let mut cs = cs;
    merge_vsepflt(&mut cs);
    let a = Analysis::from_control_set(&cs, &NeedsTable::builtin()).unwrap();
    assert!(mentions_vmci(&a).is_empty(), "{:#?}", mentions_vmci(&a));
}

#[test]
fn a_late_class_upper_filter_is_a_vmci_hazard() {
    let Some(mut cs) = vmware_guest() else { return };
    merge_late_class_filter(&mut cs);
    let a = Analysis::from_control_set(&cs, &NeedsTable::builtin()).unwrap();
    let vmci = a.order.entry("vmci").unwrap();
    assert!(vmci.deferred_by.iter().any(|d| d.filter == "lateflt"));
    let later: Vec<_> = a
        .hazards_with(HazardId::FilterStartsLater)
        .filter(|h| {
            h.services.iter().any(|s| s == "vmci") && h.services.contains(&"lateflt".to_string())
        })
        .collect();
    assert_eq!(later.len(), 1, "{:#?}", a.hazards);
    // vsock serves its clients through vmci's device: a warning naming the
    // chain that matters, even with no thin agent installed yet.
    assert_eq!(later[0].severity, Severity::Warning);
    assert_eq!(later[0].services, ["vsock", "vmci", "lateflt"]);
    assert!(
        later[0].message.contains("STATUS_DEVICE_BUSY"),
        "{}",
        later[0].message
    );

    // With a thin agent that needs vsock at DriverEntry: the seed's chain.
    merge_vsepflt(&mut cs);
    let a = Analysis::from_control_set(&cs, &NeedsTable::builtin()).unwrap();
    let h = a
        .hazards_with(HazardId::ClassFilterDefersNeededDevice)
        .next()
        .expect("flagged");
    assert_eq!(h.services, ["vsepflt", "vsock", "vmci", "lateflt"]);
    // The group it suggests exists on this machine.
    let list: Vec<String> = a.model.group_order.clone();
    let suggested = h
        .fix
        .split("Group = \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a group is suggested");
    assert!(
        list.iter().any(|g| g == suggested),
        "{suggested} not in {list:?}"
    );
}
