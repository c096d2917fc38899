//! NT path spellings the driver's host actions take apart (pure functions
//! over UTF-16 units, so they are tested here rather than only in the
//! emulated kernel): the volume part of a normalized name, a drive letter
//! as an admin types it, and the volume GUID name a mount point's reparse
//! data holds.

const SLASH: u16 = b'\\' as u16;

/// ASCII case folding of one UTF-16 unit.
#[must_use]
pub fn fold(u: u16) -> u16 {
    if (u16::from(b'A')..=u16::from(b'Z')).contains(&u) {
        u + 32
    } else {
        u
    }
}

/// Whether `a` and `b` are the same units, ASCII case-insensitively (how
/// the object manager compares volume names).
#[must_use]
pub fn eq_ascii_case(a: &[u16], b: &[u16]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| fold(*x) == fold(*y))
}

fn starts_with_text(units: &[u16], text: &str) -> bool {
    units.len() >= text.len()
        && units
            .iter()
            .zip(text.bytes())
            .all(|(&u, b)| fold(u) == fold(u16::from(b)))
}

/// Length of the volume's name a normalized name starts with
/// (`\Device\<name>`, its first two components: up to the third
/// backslash or the end). `None`: not such a name.
#[must_use]
pub fn volume_name_len(path: &[u16]) -> Option<usize> {
    let mut seen = 0;
    let end = path
        .iter()
        .position(|&c| {
            if c == SLASH {
                seen += 1;
            }
            seen == 3
        })
        .unwrap_or(path.len());
    (path.first() == Some(&SLASH) && seen >= 2).then_some(end)
}

/// The drive letter of `path` (`C:` alone or before `\`, optionally after
/// `\??\` or `\DosDevices\`, ASCII case-insensitive) and where the rest of
/// the path starts. `None`: no drive letter.
#[must_use]
pub fn drive_letter(path: &[u16]) -> Option<(u16, usize)> {
    let start = ["\\??\\", "\\DosDevices\\"]
        .iter()
        .find(|p| starts_with_text(path, p))
        .map_or(0, |p| p.len());
    let drive = *path.get(start)?;
    u8::try_from(drive).ok().filter(u8::is_ascii_alphabetic)?;
    if path.get(start + 1) != Some(&u16::from(b':')) {
        return None;
    }
    match path.get(start + 2) {
        None => Some((drive, start + 2)),
        Some(&SLASH) => Some((drive, start + 2)),
        Some(_) => None,
    }
}

/// Length of the volume GUID name (`\??\Volume{...}`, without a last
/// backslash) that `units` (a mount point's substitute name) is, `None`
/// for anything else (a junction names a directory).
#[must_use]
pub fn volume_guid_name_len(units: &[u16]) -> Option<usize> {
    if !starts_with_text(units, "\\??\\Volume{") {
        return None;
    }
    let end = units.iter().position(|&u| u == u16::from(b'}'))?;
    match &units[end + 1..] {
        [] | [SLASH] => Some(end + 1),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::borrow::ToOwned;
    use std::vec::Vec;

    fn u(s: &str) -> Vec<u16> {
        s.encode_utf16().collect()
    }

    #[test]
    fn volume_names_end_at_the_third_backslash() {
        assert_eq!(
            volume_name_len(&u(r"\Device\HarddiskVolume3\a\b")),
            Some(23)
        );
        assert_eq!(volume_name_len(&u(r"\Device\HarddiskVolume3")), Some(23));
        assert_eq!(volume_name_len(&u(r"\Device")), None);
        assert_eq!(volume_name_len(&u(r"C:\x")), None);
        assert_eq!(volume_name_len(&[]), None);
    }

    #[test]
    fn drive_letters_as_an_admin_types_them() {
        let c = u16::from(b'C');
        assert_eq!(drive_letter(&u(r"C:\Users")), Some((c, 2)));
        assert_eq!(drive_letter(&u("C:")), Some((c, 2)));
        assert_eq!(drive_letter(&u(r"d:\")), Some((u16::from(b'd'), 2)));
        assert_eq!(drive_letter(&u(r"\??\C:\x")), Some((c, 6)));
        assert_eq!(drive_letter(&u(r"\dosdevices\C:\x")), Some((c, 14)));
        // Not drive letters.
        assert_eq!(drive_letter(&u(r"C:x")), None);
        assert_eq!(drive_letter(&u(r"1:\x")), None);
        assert_eq!(drive_letter(&u(r"\Device\HarddiskVolume3\x")), None);
        assert_eq!(drive_letter(&u(r"\??\Volume{1}\x")), None);
        assert_eq!(drive_letter(&u("é:\\")), None);
        assert_eq!(drive_letter(&[]), None);
    }

    #[test]
    fn only_a_volume_guid_name_is_a_volume_mount_point() {
        let name = r"\??\Volume{6b1c0d6e-0000-0000-0000-100000000000}";
        assert_eq!(volume_guid_name_len(&u(name)), Some(name.len()));
        assert_eq!(
            volume_guid_name_len(&u(&(name.to_owned() + "\\"))),
            Some(name.len())
        );
        assert_eq!(volume_guid_name_len(&u(r"\??\volume{x}")), Some(13));
        // Junctions, symbolic-link-like names, trailing paths.
        assert_eq!(volume_guid_name_len(&u(r"\??\C:\Data\tree")), None);
        assert_eq!(volume_guid_name_len(&u(&(name.to_owned() + r"\sub"))), None);
        assert_eq!(volume_guid_name_len(&u(r"\??\Volume{unclosed")), None);
        assert_eq!(volume_guid_name_len(&[]), None);
    }

    #[test]
    fn volume_names_compare_ascii_case_insensitively() {
        assert!(eq_ascii_case(
            &u(r"\Device\HarddiskVolume5"),
            &u(r"\device\HARDDISKVOLUME5")
        ));
        assert!(!eq_ascii_case(
            &u(r"\Device\HarddiskVolume5"),
            &u(r"\Device\HarddiskVolume50")
        ));
        assert!(!eq_ascii_case(&u("É"), &u("é")));
    }
}
