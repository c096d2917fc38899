//! The `.reg` fixtures through the front door, and round trips of arbitrary
//! trees through the `.reg` writer and the hive writer of the test support.

mod support;

use proptest::prelude::*;
use support::hive_writer::{HiveOptions, ListKind, write_hive};
use thinagent_bootsim::registry::{
    self, LoadWarning, RegFormat, RegKey, RegValue, SourceKind, hive::parse_hive, reg_file,
};

fn fixture(name: &str) -> std::path::PathBuf {
    support::registry_fixtures().join(name)
}

#[test]
fn utf16_and_utf8_exports_load_identically() {
    let a = registry::load(fixture("vmware-guest.reg")).unwrap();
    let b = registry::load(fixture("vmware-guest-utf16.reg")).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.source, SourceKind::RegFile(RegFormat::Regedit5));
    assert_eq!(a.control_set_name, "ControlSet001");
    assert!(a.warnings.is_empty(), "{:?}", a.warnings);
    let vmci = a.control_set.key(r"Services\vmci").unwrap();
    assert_eq!(vmci.dword("Tag"), Some(3));
    assert_eq!(
        vmci.value("ImagePath"),
        Some(&RegValue::ExpandSz(
            r"\SystemRoot\system32\DRIVERS\vmci.sys".into()
        ))
    );
    let tags = a
        .control_set
        .key(r"Control\GroupOrderList")
        .and_then(|k| k.value("System Bus Extender"))
        .and_then(RegValue::as_bytes)
        .unwrap();
    assert_eq!(tags.len(), 20);
}

#[test]
fn current_control_set_export_with_quotes_and_deletions() {
    let r = registry::load(fixture("current-control-set.reg")).unwrap();
    assert_eq!(r.control_set_name, "CurrentControlSet");
    let cs = &r.control_set;
    let f = cs.key(r"Services\latefilter").unwrap();
    assert_eq!(
        f.string("Description"),
        Some(r#"A "quoted" name with C:\path\ and ; semicolon"#)
    );
    assert_eq!(f.string(r#"Odd "Name" \ here"#), Some("x"));
    assert!(f.value("").is_none(), "@=- deleted the default value");
    assert_eq!(f.value("Size"), Some(&RegValue::Qword((1 << 40) + 5)));
    assert_eq!(f.strings("Empty"), Some(vec![]));
    assert_eq!(
        f.value("NoneType"),
        Some(&RegValue::Other {
            kind: 0,
            data: vec![]
        })
    );
    assert!(cs.key(r"Services\old").is_none(), "[-...] deleted it");
    assert_eq!(
        cs.key(r"Control\Class\{4D36E97D-E325-11CE-BFC1-08002BE10318}")
            .and_then(|k| k.strings("UpperFilters")),
        Some(vec!["latefilter"])
    );
}

#[test]
fn regedit4_export_with_ansi_strings_and_other_roots() {
    let r = registry::load(fixture("regedit4-ansi.reg")).unwrap();
    assert_eq!(r.source, SourceKind::RegFile(RegFormat::Regedit4));
    let cs = &r.control_set;
    assert_eq!(
        cs.key(r"Services\vmci").unwrap().string("ImagePath"),
        Some(r"\SystemRoot\system32\DRIVERS\vmci.sys")
    );
    assert_eq!(
        cs.key(r"Services\vsock")
            .unwrap()
            .strings("DependOnService"),
        Some(vec!["vmci"])
    );
    assert!(matches!(
        &r.warnings[..],
        [LoadWarning::IgnoredKeys {
            count: 1,
            first_line: 14,
            ..
        }]
    ));
}

#[test]
fn a_malformed_fixture_copy_names_its_line() {
    let text = std::fs::read_to_string(fixture("vmware-guest.reg")).unwrap();
    let broken = text.replacen("\"Start\"=dword:00000000", "\"Start\"=dword:0000000z", 1);
    let line = text
        .lines()
        .position(|l| l == "\"Start\"=dword:00000000")
        .unwrap()
        + 1;
    let e = registry::from_reg_str(&broken).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("line {line}: expected 1 to 8 hex digits")),
        "{e}"
    );
}

fn arb_value() -> impl Strategy<Value = RegValue> {
    prop_oneof![
        "\\PC{0,24}".prop_map(|s: String| RegValue::Sz(s.replace('\0', ""))),
        "\\PC{0,24}".prop_map(|s: String| RegValue::ExpandSz(s.replace('\0', ""))),
        any::<u32>().prop_map(RegValue::Dword),
        any::<u64>().prop_map(RegValue::Qword),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(RegValue::Binary),
        proptest::collection::vec("[^\\x00]{1,12}", 0..4).prop_map(RegValue::MultiSz),
        (
            prop_oneof![Just(0u32), Just(6), Just(8), 12u32..0x100],
            proptest::collection::vec(any::<u8>(), 0..16)
        )
            .prop_map(|(kind, data)| RegValue::Other { kind, data }),
    ]
}

fn arb_system() -> impl Strategy<Value = RegKey> {
    // Any printable name without a backslash (the path separator).
    let name = "[^\\\\\\x00-\\x1f\\[\\]]{1,12}";
    let values = proptest::collection::vec(("[^\\x00-\\x1f]{0,12}", arb_value()), 0..4);
    proptest::collection::vec((proptest::collection::vec(name, 1..4), values), 1..10).prop_map(
        |keys| {
            let mut system = RegKey::new("SYSTEM");
            for (path, values) in keys {
                let path: Vec<String> = path.iter().map(|p| p.trim().to_owned()).collect();
                if path.iter().any(String::is_empty) {
                    continue;
                }
                let k = system.key_mut_or_create(&path.join("\\"));
                for (n, v) in values {
                    k.set_value(n, v);
                }
            }
            system
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn reg_text_round_trips(system in arb_system()) {
        let text = support::reg_text(&system);
        let file = reg_file::parse_reg_str(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(file.system_tree(), system.clone());
        // The same text as a UTF-16LE export.
        let mut utf16 = vec![0xFF, 0xFE];
        utf16.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
        prop_assert_eq!(reg_file::parse_reg_bytes(&utf16).unwrap().system_tree(), system);
    }

    #[test]
    fn hives_round_trip(system in arb_system(), lists in prop_oneof![
        Just(ListKind::Lh), Just(ListKind::Lf), Just(ListKind::Li), Just(ListKind::Ri)
    ]) {
        let minor = if lists == ListKind::Lh { 5 } else { 3 };
        let bytes = write_hive(&system, &HiveOptions { minor, lists, ..HiveOptions::default() });
        prop_assert_eq!(parse_hive(&bytes).unwrap().system, system);
    }
}
