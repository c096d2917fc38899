//! Cross-check: hivex builds real hive files from `.reg` inputs, and the hive
//! reader and the `.reg` reader must give the same tree and the same control
//! set. Needs `hivexregedit` (Debian: libwin-hivex-perl); skipped with a
//! printed reason when it is missing, a failure when `CI=true`.

mod support;

use proptest::prelude::*;
use thinagent_bootsim::registry::{self, RegKey, RegValue, hive::parse_hive, reg_file};

/// The hive built by hivex from `reg` text, and the `.reg` reader's tree.
fn both_trees(hivex: &std::path::Path, name: &str, reg: &str) -> (RegKey, RegKey) {
    let dir = support::TempDir::new("hivex");
    let hive = support::hivex_merge(hivex, &dir.0, name, reg);
    let from_hive = parse_hive(&hive).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(
        from_hive.warnings.is_empty(),
        "{name}: {:?}",
        from_hive.warnings
    );
    let from_reg = reg_file::parse_reg_str(reg).unwrap_or_else(|e| panic!("{name}: {e}"));
    (from_hive.system, from_reg.system_tree())
}

#[test]
fn fixtures_read_the_same_from_hivex_hives_and_from_text() {
    let Some(hivex) = support::hivexregedit() else {
        return;
    };
    let dir = support::registry_fixtures();
    let mut checked = 0;
    for name in [
        "vmware-guest.reg",
        "vmware-guest-utf16.reg",
        "current-control-set.reg",
    ] {
        let bytes = std::fs::read(dir.join(name)).expect("fixture");
        // hivexregedit reads 8-bit text; regedit's UTF-16 exports are
        // converted first, as its manual says.
        let text = reg_file::decode_reg_bytes(&bytes).expect("decodes");
        let (from_hive, from_reg) = both_trees(&hivex, name, &text);
        assert_eq!(from_hive, from_reg, "{name}: hive and .reg trees differ");
        assert!(from_reg.tree_key_count() > 5, "{name} is not trivial");

        let tmp = support::TempDir::new("hivex-load");
        let hive_bytes = support::hivex_merge(&hivex, &tmp.0, name, &text);
        let a = registry::from_hive_bytes(&hive_bytes).unwrap();
        let b = registry::from_reg_bytes(&bytes).unwrap();
        assert_eq!(a.control_set_name, b.control_set_name, "{name}");
        assert_eq!(a.control_set, b.control_set, "{name}");
        checked += 1;
    }
    assert_eq!(checked, 3);
}

#[test]
fn the_vmware_fixture_models_what_it_says() {
    let Some(hivex) = support::hivexregedit() else {
        return;
    };
    let text =
        std::fs::read_to_string(support::registry_fixtures().join("vmware-guest.reg")).unwrap();
    let dir = support::TempDir::new("hivex-vmware");
    let hive = support::hivex_merge(&hivex, &dir.0, "vmware", &text);
    let loaded = registry::from_hive_bytes(&hive).unwrap();
    assert_eq!(loaded.control_set_name, "ControlSet001");
    let cs = &loaded.control_set;
    for svc in ["vmci", "vsock"] {
        let k = cs.key(&format!(r"Services\{svc}")).unwrap();
        assert_eq!(k.dword("Start"), Some(0));
        assert_eq!(k.string("Group"), Some("System Bus Extender"));
    }
    assert_eq!(
        cs.key(r"Services\vsock")
            .unwrap()
            .strings("DependOnService"),
        Some(vec!["vmci"])
    );
    let vm3d = cs.key(r"Services\vm3dmp").unwrap();
    assert_eq!(vm3d.dword("Start"), Some(4), "re-set after its deletion");
    assert!(vm3d.value("ImagePath").is_none(), "deleted value");
    assert_eq!(
        cs.key(r"Services\vsock\Parameters")
            .unwrap()
            .value("InitialTimestamp"),
        Some(&RegValue::Qword(0x0001_9db1_ded5_3e80))
    );
    let list = cs
        .key(r"Control\ServiceGroupOrder")
        .unwrap()
        .strings("List")
        .unwrap();
    assert!(list.contains(&"System Bus Extender"));
    assert!(!list.contains(&"System Boot Extender"));
    // The deleted control set is gone from the hive, too.
    let hive = parse_hive(&hive).unwrap();
    assert!(hive.system.key("ControlSet002").is_none());
}

/// Arbitrary small SYSTEM trees with ASCII names (hivexregedit reads 8-bit
/// text and stores names as given).
fn arb_system() -> impl Strategy<Value = RegKey> {
    let name = "[A-Za-z][A-Za-z0-9 _.{}-]{0,11}";
    let value = prop_oneof![
        "[ -~]{0,20}".prop_map(RegValue::Sz),
        "[ -~]{0,20}".prop_map(RegValue::ExpandSz),
        any::<u32>().prop_map(RegValue::Dword),
        any::<u64>().prop_map(RegValue::Qword),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(RegValue::Binary),
        proptest::collection::vec("[ -~]{1,10}", 0..4).prop_map(RegValue::MultiSz),
    ];
    let values = proptest::collection::vec(
        (
            prop_oneof![Just(String::new()), name.prop_map(String::from)],
            value,
        ),
        0..4,
    );
    let keys = proptest::collection::vec((proptest::collection::vec(name, 1..4), values), 1..12);
    keys.prop_map(|keys| {
        let mut system = RegKey::new("SYSTEM");
        for (path, values) in keys {
            let k = system.key_mut_or_create(&path.join("\\"));
            for (n, v) in values {
                k.set_value(n, v);
            }
        }
        system
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_trees_agree_through_hivex(system in arb_system()) {
        let Some(hivex) = support::hivexregedit() else {
            return Ok(());
        };
        let text = support::reg_text(&system);
        let (from_hive, from_reg) = both_trees(&hivex, "arb", &text);
        prop_assert_eq!(&from_reg, &system);
        prop_assert_eq!(&from_hive, &system);
    }
}
