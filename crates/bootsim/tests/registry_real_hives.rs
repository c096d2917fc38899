//! Real SYSTEM hives (regipy's MIT-licensed test data), read in place from
//! `../shared/fixtures/real-hives/*.xz` or `$THINAGENT_REAL_HIVES`, never
//! copied into the repository; skipped with a printed reason when absent.

mod support;

use thinagent_bootsim::registry::{self, HiveWarning, LoadWarning, SourceKind, hive::parse_hive};

#[test]
fn windows_10_1709_vmware_guest() {
    let Some(bytes) = support::real_hive("SYSTEM_WIN_10_1709") else {
        return;
    };
    let loaded = registry::from_hive_bytes(&bytes).expect("the real hive reads");
    assert_eq!(loaded.source, SourceKind::Hive { version: (1, 5) });
    // Select\Current is 1 in this hive.
    assert_eq!(loaded.control_set_name, "ControlSet001");
    // Its sequence numbers differ (0x10dd, 0x10dc): read, with a warning.
    assert_eq!(
        loaded.warnings,
        vec![LoadWarning::Hive(HiveWarning::Dirty {
            primary: 0x10dd,
            secondary: 0x10dc
        })]
    );
    let cs = &loaded.control_set;
    for svc in ["vmci", "vsock"] {
        let k = cs
            .key(&format!(r"Services\{svc}"))
            .unwrap_or_else(|| panic!("Services\\{svc} exists"));
        assert_eq!(k.dword("Start"), Some(0), "{svc} is boot-start");
        assert_eq!(k.string("Group"), Some("System Bus Extender"), "{svc}");
    }
    let list = cs
        .key(r"Control\ServiceGroupOrder")
        .and_then(|k| k.strings("List"))
        .expect("ServiceGroupOrder\\List is read");
    assert!(list.len() > 50, "the real list is long: {}", list.len());
    assert_eq!(list[0], "System Reserved");
    let boot_bus = list.iter().position(|g| *g == "Boot Bus Extender").unwrap();
    let sys_bus = list
        .iter()
        .position(|g| *g == "System Bus Extender")
        .unwrap();
    assert!(boot_bus < sys_bus);
    assert!(!list.contains(&"System Boot Extender"), "not a real group");
    assert!(
        cs.key(r"Control\GroupOrderList")
            .and_then(|k| k.value("System Bus Extender"))
            .and_then(|v| v.as_bytes())
            .is_some_and(|b| b.len() >= 4),
        "the tag vector of System Bus Extender is read"
    );
    // The System class exists and a PnP device instance names vmci.
    assert!(
        cs.key(r"Control\Class\{4d36e97d-e325-11ce-bfc1-08002be10318}")
            .is_some()
    );
    assert!(cs.key(r"Enum\PCI").is_some_and(|pci| {
        pci.subkeys().flat_map(RegKey::subkeys).any(|inst| {
            inst.string("Service")
                .is_some_and(|s| s.eq_ignore_ascii_case("vmci"))
        })
    }));
}

use thinagent_bootsim::registry::RegKey;

#[test]
fn every_real_hive_reads_completely() {
    for name in ["SYSTEM", "SYSTEM_WIN_10_1709"] {
        let Some(bytes) = support::real_hive(name) else {
            continue;
        };
        let hive = parse_hive(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let keys = hive.system.tree_key_count();
        assert!(keys > 20_000, "{name}: only {keys} keys");
        let loaded = registry::from_hive_bytes(&bytes).unwrap();
        assert!(loaded.control_set.key("Services").is_some(), "{name}");
        assert!(
            loaded
                .control_set
                .key(r"Control\ServiceGroupOrder")
                .is_some(),
            "{name}"
        );
    }
}

/// hivex (an independent reader) exports the real hives' current control
/// set as `.reg`; our `.reg` reader on that export and our hive reader on the
/// hive must give the same tree.
#[test]
fn real_hives_agree_with_hivex_exports() {
    let Some(hivex) = support::hivexregedit() else {
        return;
    };
    for name in ["SYSTEM", "SYSTEM_WIN_10_1709"] {
        let Some(bytes) = support::real_hive(name) else {
            continue;
        };
        let loaded = registry::from_hive_bytes(&bytes).unwrap();
        let dir = support::TempDir::new("real-export");
        let path = dir.0.join(name);
        std::fs::write(&path, &*bytes).unwrap();
        let out = std::process::Command::new(&hivex)
            .args(["--export", "--prefix", r"HKEY_LOCAL_MACHINE\SYSTEM"])
            .arg(&path)
            .arg(format!(r"\{}", loaded.control_set_name))
            .output()
            .expect("run hivexregedit --export");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = registry::reg_file::decode_reg_bytes(&out.stdout).unwrap();
        let exported = registry::from_reg_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(exported.control_set_name, loaded.control_set_name);
        assert_eq!(
            exported.control_set.tree_key_count(),
            loaded.control_set.tree_key_count(),
            "{name}"
        );
        assert!(
            exported.control_set == loaded.control_set,
            "{name}: trees differ"
        );
    }
}

/// A class upper filter merged into the real VMware hive: by hivex into a
/// copy of the hive file, and by our overlay path (`RegFile::apply_to` on the
/// hive's tree, then `from_system_tree`). Both give the same control set.
#[test]
fn an_overlay_merged_by_hivex_and_by_apply_to_agree() {
    let Some(hivex) = support::hivexregedit() else {
        return;
    };
    let Some(bytes) = support::real_hive("SYSTEM_WIN_10_1709") else {
        return;
    };
    let overlay = "Windows Registry Editor Version 5.00\r\n\r\n\
[HKEY_LOCAL_MACHINE\\SYSTEM\\ControlSet001\\Control\\Class\\{4d36e97d-e325-11ce-bfc1-08002be10318}]\r\n\
\"UpperFilters\"=hex(7):6c,00,61,00,74,00,65,00,00,00,00,00\r\n\r\n\
[HKEY_LOCAL_MACHINE\\SYSTEM\\ControlSet001\\Services\\late]\r\n\
\"Type\"=dword:00000001\r\n\"Start\"=dword:00000001\r\n\"Group\"=\"System Boot Extender\"\r\n";

    let dir = support::TempDir::new("real-overlay");
    let hive_path = dir.0.join("SYSTEM");
    let reg_path = dir.0.join("overlay.reg");
    std::fs::write(&hive_path, &*bytes).unwrap();
    std::fs::write(&reg_path, overlay).unwrap();
    let out = std::process::Command::new(&hivex)
        .args(["--merge", "--prefix", r"HKEY_LOCAL_MACHINE\SYSTEM"])
        .arg(&hive_path)
        .arg(&reg_path)
        .output()
        .expect("run hivexregedit --merge");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let merged = registry::load(&hive_path).unwrap();

    let hive = parse_hive(&bytes).unwrap();
    let mut system = hive.system;
    registry::reg_file::parse_reg_str(overlay)
        .unwrap()
        .apply_to(&mut system);
    let ours = registry::from_system_tree(
        system,
        SourceKind::Hive {
            version: hive.version,
        },
    )
    .unwrap();

    assert_eq!(merged.control_set_name, ours.control_set_name);
    assert!(
        merged.control_set == ours.control_set,
        "control sets differ"
    );
    let class = ours
        .control_set
        .key(r"Control\Class\{4d36e97d-e325-11ce-bfc1-08002be10318}")
        .unwrap();
    assert_eq!(class.strings("UpperFilters"), Some(vec!["late"]));
    assert_eq!(
        ours.control_set
            .key(r"Services\late")
            .unwrap()
            .dword("Start"),
        Some(1)
    );
}
