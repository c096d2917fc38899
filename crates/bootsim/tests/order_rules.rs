//! The order's rules, one case each, through the public API.

use thinagent_bootsim::model::{ControlSetBuilder, Model, StartType};
use thinagent_bootsim::order::{DeferralReason, Phase, StackRole, Step, TagRank, compute_order};
use thinagent_bootsim::registry::RegValue;

fn order_of(b: &ControlSetBuilder) -> Vec<String> {
    compute_order(&Model::from_control_set(b.root()).unwrap())
        .entries
        .into_iter()
        .map(|e| e.service)
        .collect()
}

#[test]
fn tag_position_not_tag_value_decides() {
    let mut b = ControlSetBuilder::new();
    b.group_order(&["G"])
        .tag_vector("G", &[9, 1, 5])
        .driver("one", 0, Some("G"), Some(1))
        .driver("five", 0, Some("G"), Some(5))
        .driver("nine", 0, Some("G"), Some(9));
    assert_eq!(order_of(&b), ["nine", "one", "five"]);
}

#[test]
fn groups_are_matched_case_insensitively_and_scanned_once_per_start_type() {
    let mut b = ControlSetBuilder::new();
    b.group_order(&["Boot Bus Extender", "Base"])
        .driver("sys_first_group", 1, Some("boot bus extender"), None)
        .driver("boot_base", 0, Some("BASE"), None)
        .driver("boot_first", 0, Some("Boot Bus Extender"), None);
    assert_eq!(order_of(&b), ["boot_first", "boot_base", "sys_first_group"]);
}

#[test]
fn start_override_decides_the_phase() {
    let mut b = ControlSetBuilder::new();
    b.driver("late", 3, None, None);
    b.service_key(r"late\StartOverride")
        .set_value("0", RegValue::Dword(1));
    b.driver("boot", 0, None, None);
    let m = Model::from_control_set(b.root()).unwrap();
    let o = compute_order(&m);
    let e = o.entry("late").unwrap();
    assert_eq!(e.start, StartType::System);
    assert_eq!(e.phase, Phase::System);
    assert_eq!(
        m.service("late").unwrap().start_before_override,
        Some(StartType::Demand)
    );
}

#[test]
fn win32_services_and_disabled_drivers_are_not_in_the_order() {
    let mut b = ControlSetBuilder::new();
    b.driver("drv", 0, None, None).driver("off", 4, None, None);
    b.service_key("svc")
        .set_value("Type", RegValue::Dword(0x10));
    b.service_key("svc").set_value("Start", RegValue::Dword(0));
    assert_eq!(order_of(&b), ["drv"]);
}

#[test]
fn stack_order_and_the_latest_member_decides() {
    let mut b = ControlSetBuilder::new();
    b.group_order(&["A", "B", "C"])
        .driver("fd", 0, Some("A"), None)
        .driver("devlow", 0, Some("C"), None)
        .driver("classlow", 0, Some("A"), None)
        .driver("devup", 0, Some("B"), None)
        .driver("classup", 0, Some("A"), None)
        .device(r"ROOT\X\0", "fd", "{c}")
        .device_filters(r"ROOT\X\0", &["devup"], &["devlow"])
        .class("{c}", "C", &["classup"], &["classlow"]);
    let o = compute_order(&Model::from_control_set(b.root()).unwrap());
    let Some(Step::StartDevice(ds)) = o.steps.iter().find(|s| matches!(s, Step::StartDevice(_)))
    else {
        panic!("device starts")
    };
    let roles: Vec<_> = ds.stack.iter().map(|(n, r)| (n.as_str(), *r)).collect();
    assert_eq!(
        roles,
        [
            ("devlow", StackRole::DeviceLowerFilter),
            ("classlow", StackRole::ClassLowerFilter),
            ("fd", StackRole::FunctionDriver),
            ("devup", StackRole::DeviceUpperFilter),
            ("classup", StackRole::ClassUpperFilter),
        ]
    );
    assert_eq!(ds.after, "devlow");
    // The class filters share fd's group and sort before it by name: they are
    // initialised already and defer nothing.
    let filters: Vec<_> = ds.deferred_by.iter().map(|d| d.filter.as_str()).collect();
    assert_eq!(filters, ["devlow", "devup"]);
    assert!(matches!(
        ds.deferred_by[0].reason,
        DeferralReason::InitialisesLater { position: 5 }
    ));
    let pos = o
        .steps
        .iter()
        .position(|s| matches!(s, Step::StartDevice(_)))
        .unwrap();
    assert_eq!(pos, o.init_step("devlow").unwrap() + 1);
}

#[test]
fn unlisted_tag_is_next_to_last_and_no_tag_last() {
    let mut b = ControlSetBuilder::new();
    b.group_order(&["G"])
        .tag_vector("G", &[3])
        .driver("a_untagged", 0, Some("G"), None)
        .driver("b_unlisted", 0, Some("G"), Some(7))
        .driver("c_listed", 0, Some("G"), Some(3));
    let o = compute_order(&Model::from_control_set(b.root()).unwrap());
    let ranks: Vec<_> = o
        .entries
        .iter()
        .map(|e| (e.service.as_str(), e.tag_rank))
        .collect();
    assert_eq!(
        ranks,
        [
            ("c_listed", TagRank::Position(1)),
            ("b_unlisted", TagRank::NotInVector),
            ("a_untagged", TagRank::NoTag),
        ]
    );
}

#[test]
fn windows_8_early_lists_go_first_only_when_the_machine_has_them() {
    let mut b = ControlSetBuilder::new();
    b.group_order(&["Boot Bus Extender", "Base"])
        .driver("pci", 0, Some("Boot Bus Extender"), None)
        .driver("ACPI", 0, Some("Base"), None);
    // Windows 7 style: no hard-coded group on the machine, groups decide.
    assert_eq!(order_of(&b), ["pci", "ACPI"]);
    b.driver("WdBoot", 0, Some("Early-Launch"), None);
    b.service_key("ACPI").set_value(
        "ImagePath",
        RegValue::ExpandSz(r"\SystemRoot\System32\drivers\ACPI.sys".into()),
    );
    let o = compute_order(&Model::from_control_set(b.root()).unwrap());
    assert!(o.early_lists);
    let names: Vec<_> = o.entries.iter().map(|e| e.service.as_str()).collect();
    assert_eq!(names, ["ACPI", "WdBoot", "pci"]);
    assert_eq!(
        o.entries[0].early.as_deref(),
        Some("TPM Core Driver Services")
    );
}
