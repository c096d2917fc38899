//! The registry as the model reads it: a tree of keys with typed values,
//! names compared case-insensitively (as the configuration manager does),
//! original spelling kept for display.
//!
//! The readers (`.reg` exports in [`reg_file`] and offline SYSTEM hives in
//! [`hive`]) each produce a `SYSTEM` tree; the front door ([`load`],
//! [`from_bytes`], [`from_reg_str`], [`from_hive_bytes`]) then picks the
//! *control set* the machine boots with — the key that holds `Services`,
//! `Control` and `Enum` — and returns it as a [`RegKey`], so every later stage
//! is reader-agnostic. How the control set is chosen: [`choose_control_set`].

pub mod hive;
mod key;
pub mod reg_file;
mod value;

use std::fmt;
use std::path::{Path, PathBuf};

use thiserror::Error;

pub use hive::{Hive, HiveError, HiveWarning};
pub use key::RegKey;
pub use reg_file::{RegFile, RegFileError, RegFormat};
pub use value::{RegValue, StringEncoding};

/// What kind of input a [`LoadedRegistry`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// A `.reg` export in this format.
    RegFile(RegFormat),
    /// An offline hive file of this format version (major, minor).
    Hive {
        /// Format version, e.g. (1, 5).
        version: (u32, u32),
    },
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceKind::RegFile(RegFormat::Regedit5) => f.write_str(".reg export (version 5.00)"),
            SourceKind::RegFile(RegFormat::Regedit4) => f.write_str(".reg export (REGEDIT4)"),
            SourceKind::Hive { version: (a, b) } => write!(f, "registry hive (format {a}.{b})"),
        }
    }
}

/// Something the caller should show the user, but which did not stop loading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadWarning {
    /// A remark about the hive file (dirty, checksum, version).
    Hive(HiveWarning),
    /// A `.reg` file had keys outside `HKEY_LOCAL_MACHINE\SYSTEM`; they were skipped.
    IgnoredKeys {
        /// How many key lines were skipped.
        count: usize,
        /// Line number of the first.
        first_line: usize,
        /// Its path.
        first_path: String,
    },
    /// A remark about how the control set was chosen.
    ControlSet(String),
}

impl fmt::Display for LoadWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadWarning::Hive(w) => w.fmt(f),
            LoadWarning::IgnoredKeys {
                count,
                first_line,
                first_path,
            } => write!(
                f,
                "{count} key(s) outside HKEY_LOCAL_MACHINE\\SYSTEM skipped (the first on line {first_line}: {first_path})"
            ),
            LoadWarning::ControlSet(s) => f.write_str(s),
        }
    }
}

/// A machine's registry input, reduced to the control set it boots with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedRegistry {
    /// The control set: holds `Services`, `Control`, `Enum`.
    pub control_set: RegKey,
    /// Its key name as found, e.g. `ControlSet001` or `CurrentControlSet`.
    pub control_set_name: String,
    /// What the input was.
    pub source: SourceKind,
    /// Remarks for the user (dirty hive, skipped keys, ...), never printed here.
    pub warnings: Vec<LoadWarning>,
}

/// Why registry input could not be loaded.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path given.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A `.reg` file is malformed.
    #[error(transparent)]
    RegFile(#[from] RegFileError),
    /// A hive file is malformed.
    #[error(transparent)]
    Hive(#[from] HiveError),
    /// The input has no control set to model.
    #[error(
        "no control set found: expected a CurrentControlSet key, a ControlSetNNN key named by \
         Select\\Current, or exactly one ControlSetNNN key under HKEY_LOCAL_MACHINE\\SYSTEM ({0}); \
         export HKEY_LOCAL_MACHINE\\SYSTEM\\CurrentControlSet or give the whole SYSTEM hive"
    )]
    NoControlSet(String),
}

/// Reads a `.reg` export or an offline hive from `path` (see [`from_bytes`]).
pub fn load(path: impl AsRef<Path>) -> Result<LoadedRegistry, LoadError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| LoadError::Io {
        path: path.to_owned(),
        source,
    })?;
    from_bytes(&bytes)
}

/// Reads a hive (the bytes start with `regf`) or else a `.reg` export.
pub fn from_bytes(bytes: &[u8]) -> Result<LoadedRegistry, LoadError> {
    if hive::looks_like_hive(bytes) {
        from_hive_bytes(bytes)
    } else {
        from_reg_bytes(bytes)
    }
}

/// Reads a `.reg` export from its bytes (UTF-16LE or UTF-8, see
/// [`reg_file::decode_reg_bytes`]).
pub fn from_reg_bytes(bytes: &[u8]) -> Result<LoadedRegistry, LoadError> {
    from_reg_str(&reg_file::decode_reg_bytes(bytes)?)
}

/// Reads a `.reg` export from text.
pub fn from_reg_str(text: &str) -> Result<LoadedRegistry, LoadError> {
    let file = reg_file::parse_reg_str(text)?;
    let mut warnings = Vec::new();
    if let Some((first_line, first_path)) = file.ignored_keys.first() {
        warnings.push(LoadWarning::IgnoredKeys {
            count: file.ignored_keys.len(),
            first_line: *first_line,
            first_path: first_path.clone(),
        });
    }
    let mut loaded = from_system_tree(file.system_tree(), SourceKind::RegFile(file.format))?;
    warnings.append(&mut loaded.warnings);
    loaded.warnings = warnings;
    Ok(loaded)
}

/// Reads an offline hive file's bytes.
pub fn from_hive_bytes(bytes: &[u8]) -> Result<LoadedRegistry, LoadError> {
    let hive = hive::parse_hive(bytes)?;
    let mut warnings: Vec<LoadWarning> = hive.warnings.into_iter().map(LoadWarning::Hive).collect();
    let mut loaded = from_system_tree(
        hive.system,
        SourceKind::Hive {
            version: hive.version,
        },
    )?;
    warnings.append(&mut loaded.warnings);
    loaded.warnings = warnings;
    Ok(loaded)
}

/// Chooses the control set of a whole `SYSTEM` tree (see
/// [`choose_control_set`]). For trees assembled by the caller, e.g. a hive
/// with a `.reg` overlay applied:
///
/// ```
/// # use thinagent_bootsim::registry::{self, reg_file, RegKey, SourceKind};
/// let mut system = RegKey::new("SYSTEM"); // e.g. registry::hive::parse_hive(&bytes)?.system
/// let overlay = reg_file::parse_reg_str(
///     "Windows Registry Editor Version 5.00\r\n\r\n\
///      [HKEY_LOCAL_MACHINE\\SYSTEM\\ControlSet001\\Services\\late]\r\n\"Start\"=dword:00000001\r\n",
/// )?;
/// overlay.apply_to(&mut system);
/// let loaded = registry::from_system_tree(system, SourceKind::Hive { version: (1, 5) })?;
/// assert_eq!(loaded.control_set_name, "ControlSet001");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn from_system_tree(system: RegKey, source: SourceKind) -> Result<LoadedRegistry, LoadError> {
    let (control_set_name, control_set, warnings) = choose_control_set(system)?;
    Ok(LoadedRegistry {
        control_set,
        control_set_name,
        source,
        warnings,
    })
}

/// `ControlSetNNN` (three decimal digits or more) -> NNN.
fn control_set_number(name: &str) -> Option<u32> {
    let digits = name
        .get(..10)
        .filter(|p| p.eq_ignore_ascii_case("ControlSet"))
        .map(|_| &name[10..])?;
    (digits.len() >= 3 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Picks the control set from a `SYSTEM` tree and takes it out of the tree;
/// returns (its name, the key, remarks). The same rule for both readers:
///
/// 1. a key named `CurrentControlSet` (in `.reg` exports; a hive file never
///    has one, Windows creates it as a link at boot);
/// 2. else `ControlSetNNN` where NNN is `Select\Current` (a hive's way);
/// 3. else the only `ControlSetNNN` key, if there is exactly one.
pub fn choose_control_set(
    mut system: RegKey,
) -> Result<(String, RegKey, Vec<LoadWarning>), LoadError> {
    let mut warnings = Vec::new();
    let sets: Vec<String> = system
        .subkeys()
        .filter(|k| control_set_number(k.name()).is_some())
        .map(|k| k.name().to_owned())
        .collect();
    let current = system.key("Select").and_then(|s| s.dword("Current"));
    if let Some(ccs) = system.key("CurrentControlSet") {
        // `reg export HKLM\SYSTEM` writes the link target twice: as
        // ControlSetNNN and as CurrentControlSet. Only a difference is news.
        let selected = current.and_then(|n| system.key(&format!("ControlSet{n:03}")));
        let same = selected.is_some_and(|set| {
            set.values().eq(ccs.values()) && { set.subkeys().eq(ccs.subkeys()) }
        });
        if !sets.is_empty() && !same {
            warnings.push(LoadWarning::ControlSet(format!(
                "CurrentControlSet is modelled; it differs from {}",
                match (current, selected) {
                    (Some(n), Some(_)) => format!("ControlSet{n:03} named by Select\\Current"),
                    _ => sets.join(", "),
                }
            )));
        }
        let key = system
            .remove_key("CurrentControlSet")
            .expect("the key was found just above");
        return Ok((key.name().to_owned(), key, warnings));
    }
    if let Some(n) = current {
        let wanted = format!("ControlSet{n:03}");
        if let Some(key) = system.remove_key(&wanted) {
            return Ok((key.name().to_owned(), key, warnings));
        }
        warnings.push(LoadWarning::ControlSet(format!(
            "Select\\Current is {n} but there is no {wanted}"
        )));
    }
    if let [only] = sets.as_slice() {
        if current.is_some() {
            warnings.push(LoadWarning::ControlSet(format!(
                "{only} is modelled instead"
            )));
        }
        let key = system
            .remove_key(only)
            .expect("the key was listed just above");
        return Ok((key.name().to_owned(), key, warnings));
    }
    let found = if sets.is_empty() {
        "there is none".to_owned()
    } else {
        format!("found {} and no usable Select\\Current", sets.join(", "))
    };
    Err(LoadError::NoControlSet(found))
}

#[cfg(test)]
mod tests {
    use super::*;

    const V5: &str = "Windows Registry Editor Version 5.00\r\n\r\n";

    #[test]
    fn control_set_numbers() {
        assert_eq!(control_set_number("ControlSet001"), Some(1));
        assert_eq!(control_set_number("controlset012"), Some(12));
        assert_eq!(control_set_number("ControlSet1"), None);
        assert_eq!(control_set_number("ControlSetX01"), None);
        assert_eq!(control_set_number("Control"), None);
    }

    #[test]
    fn current_control_set_wins() {
        let r = from_reg_str(&format!(
            "{V5}[HKLM\\SYSTEM\\ControlSet001\\Services\\a]\r\n[HKLM\\SYSTEM\\CurrentControlSet\\Services\\b]\r\n"
        ))
        .unwrap();
        assert_eq!(r.control_set_name, "CurrentControlSet");
        assert!(r.control_set.key(r"Services\b").is_some());
        assert_eq!(r.warnings.len(), 1);
        assert!(
            r.warnings[0]
                .to_string()
                .contains("differs from ControlSet001")
        );
        assert_eq!(r.source, SourceKind::RegFile(RegFormat::Regedit5));
    }

    #[test]
    fn a_whole_system_export_with_both_copies_is_not_news() {
        // What `reg export HKLM\SYSTEM` writes: the current set twice.
        let set = "\\Services\\a]\r\n\"Start\"=dword:0\r\n";
        let text = format!(
            "{V5}[HKLM\\SYSTEM\\Select]\r\n\"Current\"=dword:1\r\n\
             [HKLM\\SYSTEM\\ControlSet001{set}[HKLM\\SYSTEM\\CurrentControlSet{set}\
             [HKLM\\SYSTEM\\ControlSet002\\Services\\b]\r\n"
        );
        let r = from_reg_str(&text).unwrap();
        assert_eq!(r.control_set_name, "CurrentControlSet");
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        let changed = text.replacen("dword:0", "dword:4", 1);
        let r = from_reg_str(&changed).unwrap();
        assert_eq!(
            r.control_set.key(r"Services\a").unwrap().dword("Start"),
            Some(0)
        );
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    }

    #[test]
    fn select_current_then_the_only_set() {
        let two = format!(
            "{V5}[HKLM\\SYSTEM\\Select]\r\n\"Current\"=dword:2\r\n[HKLM\\SYSTEM\\ControlSet001\\A]\r\n[HKLM\\SYSTEM\\ControlSet002\\B]\r\n"
        );
        let r = from_reg_str(&two).unwrap();
        assert_eq!(r.control_set_name, "ControlSet002");
        assert!(r.control_set.key("B").is_some());
        assert!(r.warnings.is_empty());

        let r = from_reg_str(&format!("{V5}[HKLM\\SYSTEM\\ControlSet003\\A]\r\n")).unwrap();
        assert_eq!(r.control_set_name, "ControlSet003");

        let r = from_reg_str(&format!(
            "{V5}[HKLM\\SYSTEM\\Select]\r\n\"Current\"=dword:2\r\n[HKLM\\SYSTEM\\ControlSet001\\A]\r\n"
        ))
        .unwrap();
        assert_eq!(r.control_set_name, "ControlSet001");
        assert_eq!(r.warnings.len(), 2, "{:?}", r.warnings);
    }

    #[test]
    fn no_or_ambiguous_control_set_is_an_error() {
        let e = from_reg_str(&format!("{V5}[HKLM\\SYSTEM\\Setup]\r\n")).unwrap_err();
        assert!(matches!(e, LoadError::NoControlSet(_)), "{e}");
        let e = from_reg_str(&format!(
            "{V5}[HKLM\\SYSTEM\\ControlSet001]\r\n[HKLM\\SYSTEM\\ControlSet002]\r\n"
        ))
        .unwrap_err();
        assert!(
            e.to_string().contains("ControlSet001, ControlSet002"),
            "{e}"
        );
    }

    #[test]
    fn ignored_keys_become_a_warning_and_sniffing_picks_the_reader() {
        let text =
            format!("{V5}[HKEY_LOCAL_MACHINE\\SOFTWARE\\X]\r\n[HKLM\\SYSTEM\\ControlSet001]\r\n");
        let r = from_bytes(text.as_bytes()).unwrap();
        assert!(matches!(
            &r.warnings[..],
            [LoadWarning::IgnoredKeys {
                count: 1,
                first_line: 3,
                ..
            }]
        ));
        assert!(r.warnings[0].to_string().contains("line 3"));
        assert!(matches!(from_bytes(b"regf"), Err(LoadError::Hive(_))));
        assert!(matches!(
            from_bytes(b"REGEDIT5"),
            Err(LoadError::RegFile(_))
        ));
        let e = load("/nonexistent/thinagent/SYSTEM").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/thinagent/SYSTEM"));
    }
}
