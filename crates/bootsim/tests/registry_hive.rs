//! The offline hive reader: hives written by the test support (every list
//! and data layout, old and new format versions, dirty), malformed input,
//! and the generated empty base hive against a known-good one.

mod support;

use support::hive_writer::{HiveOptions, ListKind, empty_base_hive, fix_checksum, write_hive};
use thinagent_bootsim::registry::{
    self, HiveError, HiveWarning, LoadWarning, RegKey, RegValue, SourceKind, hive::parse_hive,
};

/// A SYSTEM tree with every value type, a big value, a non-Latin-1 name and
/// enough subkeys to split lists.
fn sample_system() -> RegKey {
    let mut system = RegKey::new("SYSTEM");
    system
        .key_mut_or_create("Select")
        .set_value("Current", RegValue::Dword(2));
    let cs = system.key_mut_or_create("ControlSet002");
    let vmci = cs.key_mut_or_create(r"Services\vmci");
    vmci.set_value("Start", RegValue::Dword(0));
    vmci.set_value("Group", RegValue::Sz("System Bus Extender".into()));
    vmci.set_value(
        "ImagePath",
        RegValue::ExpandSz(r"\SystemRoot\system32\DRIVERS\vmci.sys".into()),
    );
    vmci.set_value("Tag", RegValue::Dword(3));
    vmci.set_value("Q", RegValue::Qword(0x1122_3344_5566_7788));
    vmci.set_value("", RegValue::Sz("default".into()));
    vmci.set_value("Bin", RegValue::Binary(vec![1, 2, 3]));
    vmci.set_value("Short", RegValue::Binary(vec![]));
    vmci.set_value(
        "None",
        RegValue::Other {
            kind: 0,
            data: vec![],
        },
    );
    vmci.set_value(
        "Big",
        RegValue::Binary((0..40_000u32).map(|i| (i % 251) as u8).collect()),
    );
    cs.key_mut_or_create(r"Control\ServiceGroupOrder")
        .set_value(
            "List",
            RegValue::MultiSz(vec![
                "System Reserved".into(),
                "Boot Bus Extender".into(),
                "System Bus Extender".into(),
            ]),
        );
    for name in ["a", "B", "c", "D", "e", "Ünïcødé ключ"] {
        cs.key_mut_or_create(&format!(r"Enum\Root\{name}"));
    }
    system.key_mut_or_create("ControlSet001\\Services\\old");
    system
}

#[test]
fn every_list_kind_and_format_version_reads_back_the_same_tree() {
    let system = sample_system();
    for (minor, lists) in [
        (5, ListKind::Lh),
        (5, ListKind::Lf),
        (3, ListKind::Li),
        (3, ListKind::Ri),
        (2, ListKind::Li),
    ] {
        let opts = HiveOptions {
            minor,
            lists,
            ..HiveOptions::default()
        };
        let bytes = write_hive(&system, &opts);
        let hive = parse_hive(&bytes).unwrap_or_else(|e| panic!("1.{minor} {lists:?}: {e}"));
        assert_eq!(hive.version, (1, minor));
        assert_eq!(hive.root_name, "ROOT");
        assert!(hive.warnings.is_empty(), "{:?}", hive.warnings);
        assert_eq!(hive.system, system, "1.{minor} {lists:?}");
    }
}

#[test]
fn front_door_picks_select_current_from_a_hive() {
    let bytes = write_hive(&sample_system(), &HiveOptions::default());
    let loaded = registry::from_bytes(&bytes).unwrap();
    assert_eq!(loaded.control_set_name, "ControlSet002");
    assert_eq!(loaded.source, SourceKind::Hive { version: (1, 5) });
    assert_eq!(
        loaded
            .control_set
            .key(r"Services\vmci")
            .unwrap()
            .dword("Start"),
        Some(0)
    );
    assert!(loaded.warnings.is_empty());
}

#[test]
fn a_dirty_hive_is_read_with_a_warning() {
    let opts = HiveOptions {
        dirty: true,
        ..HiveOptions::default()
    };
    let bytes = write_hive(&sample_system(), &opts);
    let loaded = registry::from_hive_bytes(&bytes).unwrap();
    assert_eq!(
        loaded.warnings,
        vec![LoadWarning::Hive(HiveWarning::Dirty {
            primary: 7,
            secondary: 6
        })]
    );
    assert!(loaded.warnings[0].to_string().contains("dirty hive"));
    assert_eq!(loaded.control_set_name, "ControlSet002");
}

#[test]
fn a_bad_checksum_or_unknown_minor_version_is_a_warning() {
    let mut bytes = write_hive(&sample_system(), &HiveOptions::default());
    bytes[508] ^= 0xff;
    let hive = parse_hive(&bytes).unwrap();
    assert!(matches!(hive.warnings[..], [HiveWarning::Checksum { .. }]));
    let mut bytes = write_hive(&sample_system(), &HiveOptions::default());
    bytes[24] = 9;
    fix_checksum(&mut bytes);
    let hive = parse_hive(&bytes).unwrap();
    assert_eq!(
        hive.warnings,
        vec![HiveWarning::UnknownVersion { major: 1, minor: 9 }]
    );
}

fn malformed(bytes: &[u8]) -> (u64, String) {
    match parse_hive(bytes) {
        Err(HiveError::Malformed { offset, expected }) => (offset, expected),
        other => panic!("expected a malformed-hive error, got {other:?}"),
    }
}

fn patch(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn malformed_hives_name_the_offset_and_what_was_expected() {
    let good = write_hive(&sample_system(), &HiveOptions::default());
    let root = 0x1020usize; // cell size field of the root nk

    let (off, exp) = malformed(&good[..3000]);
    assert_eq!(off, 3000);
    assert!(exp.contains("base block"), "{exp}");

    let (off, exp) = malformed(&good[..good.len() - 4096]);
    assert_eq!(off, 40);
    assert!(exp.contains("truncated"), "{exp}");

    let mut b = good.clone();
    patch(&mut b, 20, 2);
    assert_eq!(malformed(&b).0, 20);

    let mut b = good.clone();
    patch(&mut b, 28, 1);
    let (off, exp) = malformed(&b);
    assert_eq!(off, 28);
    assert!(exp.contains("LOG1"), "{exp}");

    let mut b = good.clone();
    b[0x1000] = b'x';
    assert_eq!(malformed(&b).0, 0x1000);

    let mut b = good.clone();
    patch(&mut b, 36, 0x7fff_fff8);
    let (off, exp) = malformed(&b);
    assert_eq!(off, 0x1000 + 0x7fff_fff8);
    assert!(exp.contains("inside the hive bins"), "{exp}");

    let mut b = good.clone();
    patch(&mut b, 36, 0x21);
    assert!(malformed(&b).1.contains("8-aligned"));

    let mut b = good.clone();
    patch(&mut b, root, 0x58); // positive size: a free cell
    let (off, exp) = malformed(&b);
    assert_eq!(off, root as u64);
    assert!(exp.contains("allocated cell"), "{exp}");

    let mut b = good.clone();
    b[root + 4] = b'x';
    let (off, exp) = malformed(&b);
    assert_eq!(off, root as u64 + 4);
    assert!(exp.contains("`nk` signature"), "{exp}");

    // The root's subkey list offset (nk + 28) pointing at the root itself:
    // a list signature is expected there.
    let mut b = good.clone();
    patch(&mut b, root + 4 + 28, 0x20);
    let (off, exp) = malformed(&b);
    assert_eq!(off, root as u64 + 4);
    assert!(exp.contains("lf, lh, li or ri"), "{exp}");

    // A value list entry pointing at the root key.
    let mut b = good.clone();
    let hive = parse_hive(&good).unwrap();
    assert!(hive.system.key("Select").is_some());
    // Select is the root's last subkey (lists are sorted); find its value
    // list through the root's lh list.
    let list = u32::from_le_bytes(b[root + 4 + 28..root + 4 + 32].try_into().unwrap()) as usize;
    let entry = 0x1000 + list + 8 + 8 * 2;
    let first_sub = u32::from_le_bytes(b[entry..entry + 4].try_into().unwrap()) as usize;
    let select_nk = 0x1000 + first_sub + 4;
    assert_eq!(&b[select_nk..select_nk + 2], b"nk");
    let values = u32::from_le_bytes(b[select_nk + 40..select_nk + 44].try_into().unwrap()) as usize;
    patch(&mut b, 0x1000 + values + 4, 0x20);
    let (off, exp) = malformed(&b);
    assert_eq!(off, root as u64 + 4);
    assert!(exp.contains("`vk` signature"), "{exp}");

    // A cycle: Select's subkey list made to point back at the root key.
    let mut b = good.clone();
    let one = write_hive(
        &{
            let mut s = RegKey::new("SYSTEM");
            s.key_mut_or_create("A");
            s
        },
        &HiveOptions::default(),
    );
    b.clear();
    b.extend(one);
    let list = u32::from_le_bytes(b[root + 4 + 28..root + 4 + 32].try_into().unwrap()) as usize;
    patch(&mut b, 0x1000 + list + 8, 0x20);
    let (off, exp) = malformed(&b);
    assert_eq!(off, root as u64 + 4);
    assert!(exp.contains("cycles"), "{exp}");
}

#[test]
fn arbitrary_corruption_never_panics() {
    let good = write_hive(&sample_system(), &HiveOptions::default());
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut ok, mut errors) = (0, 0);
    for _ in 0..2000 {
        let mut b = good.clone();
        for _ in 0..(1 + next() % 8) {
            let at = 0x1000 + (next() as usize) % (b.len() - 0x1000);
            b[at] = next() as u8;
        }
        match parse_hive(&b) {
            Ok(_) => ok += 1,
            Err(HiveError::Malformed { .. }) => errors += 1,
            Err(e) => panic!("unexpected error kind {e}"),
        }
    }
    assert!(errors > 0, "some corruption must be detected");
    assert!(ok > 0, "corrupting unused or data bytes must not fail");
}

#[test]
fn the_empty_base_hive_has_the_shape_of_a_known_good_empty_hive() {
    let base = empty_base_hive();
    let hive = parse_hive(&base).expect("our base hive reads");
    assert!(hive.warnings.is_empty());
    assert_eq!(hive.system.tree_key_count(), 1);
    assert_eq!(hive.system.values().count(), 0);

    // Fields the format fixes, checked on our own bytes.
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    assert_eq!(base.len(), 8192);
    assert_eq!(&base[0x1000..0x1004], b"hbin");
    assert_eq!(u32_at(&base, 0x1008), 4096, "hbin size");
    assert_eq!(&base[0x1024..0x1026], b"nk");
    let root_flags = u16::from_le_bytes([base[0x1026], base[0x1027]]);
    assert_eq!(
        root_flags & 0x2c,
        0x2c,
        "HIVE_ENTRY | NO_DELETE | COMP_NAME"
    );
    let sk = u32_at(&base, 0x1024 + 44) as usize;
    assert_eq!(&base[0x1000 + sk + 4..0x1000 + sk + 6], b"sk");
    assert_eq!(u32_at(&base, 0x1000 + sk + 4 + 12), 1, "sk reference count");

    // The same structure as a known-good empty hive from hivex, if present.
    let known = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/minimal.hive");
    let Ok(known) = std::fs::read(&known) else {
        eprintln!("SKIP: comparison with {} (not present)", known.display());
        return;
    };
    let theirs = parse_hive(&known).expect("known-good hive reads");
    assert_eq!(theirs.system.tree_key_count(), 1);
    assert_eq!(known.len(), base.len());
    for (what, at) in [
        ("major", 20),
        ("minor", 24),
        ("file type", 28),
        ("file format", 32),
        ("root cell", 36),
        ("hive bins size", 40),
        ("clustering", 44),
        ("hbin offset", 0x1004),
        ("hbin size", 0x1008),
    ] {
        assert_eq!(u32_at(&base, at), u32_at(&known, at), "{what}");
    }
    assert_eq!(&known[0x1024..0x1026], b"nk");
    let their_flags = u16::from_le_bytes([known[0x1026], known[0x1027]]);
    assert_eq!(their_flags & 0x2c, root_flags & 0x2c);
    let their_sk = u32_at(&known, 0x1024 + 44) as usize;
    assert_eq!(&known[0x1000 + their_sk + 4..0x1000 + their_sk + 6], b"sk");
}
