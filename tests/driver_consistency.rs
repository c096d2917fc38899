//! The driver's parameters and identity agree everywhere they are written:
//! `inf/thinagent.inx`, the guest crate (`thinagent_guest::params`), the
//! parameter table of `docs/windows.md` and the scanner's default port.
//!
//! * every `HKR,"Parameters",...` value of the INF is a parameter the driver
//!   reads (`params::names::ALL`, case-insensitively), written with the
//!   registry type the guest crate takes for it, and its default equals
//!   `Params::default()` (compared through `Params::dump`, one line per
//!   parameter);
//! * every parameter is either in the INF or one of the two optional lists
//!   (`excludePaths`, `excludeExtensions`), so a new guest parameter cannot be
//!   forgotten silently;
//! * every parameter has a row in the docs table;
//! * the driver's registry reader queries every name of `names::ALL` under
//!   the `Parameters` subkey (checked in its source text: it only compiles
//!   for Windows);
//! * every instance altitude is in the FSFilter Anti-Virus range
//!   320000–329999 and is not 328200 (VMware's vsepflt.sys);
//! * `hostPort` is `DEFAULT_HOST_PORT`, which is also the scanner's default;
//! * `thinagent-diag lint-inf` finds nothing in the INF (its checker is
//!   compiled in here from `crates/diag/src/lint_inf.rs`).

#[path = "../crates/diag/src/lint_inf.rs"]
#[allow(dead_code, reason = "only `lint` and `render_text` are used here")]
mod lint_inf;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use thinagent_guest::params::{DEFAULT_HOST_PORT, names};
use thinagent_guest::{Applied, ParamError, Params, RegValue};

/// `FLG_ADDREG_TYPE_DWORD` / `FLG_ADDREG_TYPE_MULTI_SZ` / `FLG_ADDREG_TYPE_SZ`
/// (setupapi.h); the type is the flags masked with `0xFFFF0001`.
const REG_DWORD_FLAGS: u64 = 0x0001_0001;
const REG_MULTI_SZ_FLAGS: u64 = 0x0001_0000;
const REG_SZ_FLAGS: u64 = 0x0000_0000;
const ADDREG_TYPE_MASK: u64 = 0xFFFF_0001;

/// The parameters the INF deliberately leaves out (docs/windows.md says why).
const OPTIONAL: [&str; 2] = [names::EXCLUDE_PATHS, names::EXCLUDE_EXTENSIONS];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// A minimal INF reader: sections of logical lines (comments outside quotes
/// removed), and the `[Strings]` table.
struct Inf {
    sections: Vec<(String, Vec<String>)>,
    strings: BTreeMap<String, String>,
}

fn strip_comment(line: &str) -> &str {
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ';' if !quoted => return &line[..i],
            _ => {}
        }
    }
    line
}

fn unquote(s: &str) -> String {
    s.trim().trim_matches('"').to_string()
}

impl Inf {
    fn parse(text: &str) -> Self {
        let mut sections: Vec<(String, Vec<String>)> = Vec::new();
        for raw in text.lines() {
            let line = strip_comment(raw).trim();
            if line.is_empty() {
                continue;
            }
            if let Some(name) = line.strip_prefix('[') {
                let name = name.split(']').next().unwrap_or("").trim().to_string();
                sections.push((name, Vec::new()));
            } else if let Some((_, lines)) = sections.last_mut() {
                lines.push(line.to_string());
            }
        }
        let mut strings = BTreeMap::new();
        for (name, lines) in &sections {
            if name.eq_ignore_ascii_case("Strings") {
                for l in lines {
                    let (k, v) = l.split_once('=').expect("[Strings] entry is key = value");
                    strings.insert(k.trim().to_ascii_lowercase(), unquote(v));
                }
            }
        }
        Inf { sections, strings }
    }

    fn section(&self, name: &str) -> &[String] {
        self.sections
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, l)| l.as_slice())
            .unwrap_or_else(|| panic!("the INF has no [{name}] section"))
    }

    /// One field with `%token%` replaced from `[Strings]` (`%13%` DIRIDs kept).
    fn resolve(&self, field: &str) -> String {
        let f = field.trim();
        let out = match f.strip_prefix('%').and_then(|t| t.strip_suffix('%')) {
            Some(tok) if !tok.chars().all(|c| c.is_ascii_digit()) => self
                .strings
                .get(&tok.to_ascii_lowercase())
                .unwrap_or_else(|| panic!("%{tok}% is not in [Strings]"))
                .clone(),
            _ => f.to_string(),
        };
        unquote(&out)
    }

    /// The `HKR,subkey,name,flags,value` lines of an AddReg section, resolved.
    fn addreg(&self, section: &str) -> Vec<[String; 4]> {
        self.section(section)
            .iter()
            .map(|l| {
                let f: Vec<&str> = l.splitn(5, ',').collect();
                assert_eq!(
                    f.len(),
                    5,
                    "[{section}] line {l:?} is not HKR,subkey,name,flags,value"
                );
                assert_eq!(f[0].trim(), "HKR", "[{section}] line {l:?}");
                [
                    self.resolve(f[1]),
                    self.resolve(f[2]),
                    self.resolve(f[3]),
                    self.resolve(f[4]),
                ]
            })
            .collect()
    }
}

fn parse_int(s: &str) -> u64 {
    let t = s.trim();
    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => t.parse(),
    }
    .unwrap_or_else(|_| panic!("{t:?} is not a number"))
}

fn inx() -> Inf {
    Inf::parse(&read("inf/thinagent.inx"))
}

/// The registry type the guest crate takes for `name`: a list parameter
/// rejects a DWORD with `WrongType { expected: "REG_MULTI_SZ" }`.
fn guest_type(name: &str) -> &'static str {
    match Params::default().apply(name, RegValue::Dword(1)) {
        Err(ParamError::WrongType { expected, .. }) => expected,
        Err(ParamError::UnknownName) => panic!("{name} is not a guest parameter"),
        _ => "REG_DWORD",
    }
}

fn dump(p: &Params) -> Vec<String> {
    let mut lines = Vec::new();
    p.dump(|r| lines.push(r.to_string()));
    lines
}

#[test]
fn inf_parameters_are_the_guest_parameters_with_their_defaults() {
    let inf = inx();
    let values: Vec<_> = inf
        .addreg("ThinAgent.Parameters")
        .into_iter()
        .filter(|[subkey, ..]| subkey.eq_ignore_ascii_case("Parameters"))
        .collect();
    assert!(!values.is_empty(), "[ThinAgent.Parameters] writes nothing");
    let mut from_inf = Params::default();
    let mut seen: Vec<&'static str> = Vec::new();
    for [_, name, flags, value] in &values {
        let known = names::ALL
            .iter()
            .copied()
            .find(|n| n.eq_ignore_ascii_case(name))
            .unwrap_or_else(|| panic!("INF value {name:?} is not in guest::params::names::ALL"));
        assert_eq!(known, name, "spell {name:?} as the guest crate does");
        assert!(!seen.contains(&known), "{name} written twice");
        seen.push(known);
        let flags = parse_int(flags) & ADDREG_TYPE_MASK;
        let (ty, reg) = match flags {
            REG_DWORD_FLAGS => (
                "REG_DWORD",
                RegValue::Dword(u32::try_from(parse_int(value)).expect("DWORD")),
            ),
            REG_MULTI_SZ_FLAGS => ("REG_MULTI_SZ", RegValue::MultiSz(value)),
            REG_SZ_FLAGS => ("REG_SZ", RegValue::Sz(value)),
            other => panic!("{name}: AddReg type {other:#x} is none the driver reads"),
        };
        assert_eq!(ty, guest_type(known), "{name}: registry type");
        assert_eq!(
            from_inf.apply(name, reg),
            Ok(Applied::Set),
            "{name} = {value}: the guest crate must take the INF's value unchanged"
        );
    }
    // Same dump line for every parameter = every INF default is the guest's.
    assert_eq!(dump(&from_inf), dump(&Params::default()));
    // ...and the dump does see each value: a changed one shows.
    let mut changed = Params::default();
    changed
        .apply(names::VERDICT_CACHE_TTL_MS, RegValue::Dword(1))
        .unwrap();
    assert_ne!(dump(&changed), dump(&Params::default()));

    for name in names::ALL {
        let in_inf = seen.contains(&name);
        let optional = OPTIONAL.contains(&name);
        assert!(
            in_inf != optional,
            "{name}: every parameter is either written by the INF with its default or one of the optional lists {OPTIONAL:?} (in INF: {in_inf})"
        );
        if optional {
            assert_eq!(guest_type(name), "REG_MULTI_SZ", "{name}");
        }
    }
}

#[test]
fn every_parameter_has_a_row_in_the_docs_table() {
    let doc = read("docs/windows.md");
    let start = doc
        .find("\n## Parameters\n")
        .expect("docs/windows.md has ## Parameters");
    let section = &doc[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let rows: Vec<String> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect();
    for name in names::ALL {
        assert!(
            rows.iter().any(|r| r == name),
            "docs/windows.md's parameter table has no row for `{name}` (rows: {rows:?})"
        );
    }
    for r in &rows {
        assert!(
            names::ALL.contains(&r.as_str()),
            "docs/windows.md documents `{r}`, which the guest crate does not read"
        );
    }
    // The defaults column agrees with the INF for every DWORD value.
    let inf = inx();
    for [_, name, _, value] in inf.addreg("ThinAgent.Parameters") {
        let row = section
            .lines()
            .find(|l| l.starts_with(&format!("| `{name}` |")))
            .unwrap_or_else(|| panic!("no row for {name}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(
            parse_int(cells[3]),
            parse_int(&value),
            "docs/windows.md default of {name}"
        );
    }
}

#[test]
fn altitudes_are_in_the_anti_virus_range_and_not_vmwares() {
    let inf = inx();
    let mut altitudes = Vec::new();
    for section in ["ThinAgent.Instances", "ThinAgent.Instances.Pre24H2"] {
        for [subkey, name, flags, value] in inf.addreg(section) {
            if name.eq_ignore_ascii_case("Altitude") {
                assert!(subkey.contains("Instances\\"), "{section}: {subkey}");
                assert_eq!(parse_int(&flags), REG_SZ_FLAGS, "Altitude is a REG_SZ");
                altitudes.push(value);
            }
        }
    }
    assert_eq!(altitudes.len(), 2, "one instance per install section");
    for a in altitudes {
        let int: u64 = a
            .split('.')
            .next()
            .and_then(|i| i.parse().ok())
            .unwrap_or_else(|| panic!("altitude {a:?} is not a number"));
        assert!(
            (320_000..=329_999).contains(&int),
            "altitude {a} not in FSFilter Anti-Virus"
        );
        assert_ne!(int, 328_200, "328200 is VMware's vsepflt.sys");
    }
    let group = inf
        .section("ThinAgent.Service")
        .iter()
        .find_map(|l| l.strip_prefix("LoadOrderGroup"))
        .map(|v| unquote(v.trim_start().trim_start_matches('=')))
        .expect("LoadOrderGroup");
    assert_eq!(group, "FSFilter Anti-Virus");
}

#[test]
fn host_port_is_the_guest_and_scanner_default() {
    let inf = inx();
    let port = inf
        .addreg("ThinAgent.Parameters")
        .into_iter()
        .find(|[_, name, ..]| name == names::HOST_PORT)
        .map(|[.., v]| parse_int(&v))
        .expect("the INF writes hostPort");
    assert_eq!(port, u64::from(DEFAULT_HOST_PORT));
    assert_eq!(Params::default().host_port, DEFAULT_HOST_PORT);
    assert_eq!(thinagent_scanner::config::DEFAULT_PORT, DEFAULT_HOST_PORT);
}

#[test]
fn lint_inf_passes_on_the_inx() {
    let path = Path::new("inf/thinagent.inx");
    let findings = lint_inf::lint(&read("inf/thinagent.inx"));
    assert!(
        findings.is_empty(),
        "{}",
        lint_inf::render_text(&path.display().to_string(), &findings)
    );
}

/// The driver reads exactly the guest crate's names, from the key the INF
/// writes (`driver/windows/registry_params.rs` cannot be compiled here, so
/// its two facts are checked in its text).
#[test]
fn driver_reads_every_guest_parameter_from_the_parameters_key() {
    let src = read("driver/windows/registry_params.rs");
    assert!(
        src.contains("for name in names::ALL"),
        "driver/windows/registry_params.rs must query every name of thinagent_guest::params::names::ALL"
    );
    assert!(
        src.contains(r#"r"\Parameters""#),
        "driver/windows/registry_params.rs must open <service key>\\Parameters, where the INF writes"
    );
    let inf = inx();
    assert!(
        inf.addreg("ThinAgent.Parameters")
            .iter()
            .all(|[subkey, ..]| subkey == "Parameters"),
        "every [ThinAgent.Parameters] value goes under HKR\\Parameters"
    );
}
