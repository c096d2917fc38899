//! `thinagent-diag lint-inf FILE`: checks a minifilter INF (or INX template)
//! against the rules Filter Manager and Windows setup apply.
//!
//! Sources (MicrosoftDocs/windows-driver-docs, `ifs/`): "Creating an INF file
//! for a minifilter driver", "Load order groups and altitudes for minifilter
//! drivers", "File system filter driver classes and class GUIDs" (class GUIDs
//! cross-checked with `devguid.h`), "Allocated filter altitudes" (328200 is
//! VMware's vsepflt.sys); the Windows-driver-samples minifilters
//! (`filesys/miniFilter/avscan/avscan.inf`, `scanner/scanner.inf`).
//!
//! The INF is read as setup reads it: sections, `key = value` entries,
//! comma-separated fields, `"quoted"` text, `;` comments, `\` line
//! continuation and `%strkey%` substitution from `[Strings]` (numeric `%13%`
//! DIRIDs are left alone). The install sections are found from
//! `[DefaultInstall*.Services]` `AddService` directives; every service install
//! section they name is checked with the `AddReg` sections it lists.
//!
//! For the `thinagent` service the `HKR,"Parameters"` values are also fed
//! to `thinagent_guest::Params::apply`, so a name the driver does not read,
//! a wrong type or an out-of-bounds default is caught (INF040, INF041).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

/// One minifilter load order group: its altitude range and, where Microsoft
/// defines one, its setup class.
#[derive(Clone, Copy, Debug)]
pub struct FilterGroup {
    /// Load order group name as `LoadOrderGroup` spells it.
    pub name: &'static str,
    /// Lowest altitude (inclusive).
    pub low: u64,
    /// Highest altitude (inclusive, integer part).
    pub high: u64,
    /// Setup class name, when documented.
    pub class: Option<&'static str>,
    /// Setup class GUID (lower case, braces), when defined.
    pub guid: Option<&'static str>,
}

/// The system-defined minifilter load order groups ("Load order groups and
/// altitudes for minifilter drivers"), top of the stack first.
pub const FILTER_GROUPS: &[FilterGroup] = &[
    g("Filter", 420_000, 429_999, None, None),
    g("FSFilter Top", 400_000, 409_999, None, None),
    g(
        "FSFilter Activity Monitor",
        360_000,
        389_999,
        Some("ActivityMonitor"),
        Some("{b86dff51-a31e-4bac-b3cf-e8cfe75c9fc2}"),
    ),
    g(
        "FSFilter Undelete",
        340_000,
        349_999,
        Some("Undelete"),
        Some("{fe8f1572-c67a-48c0-bbac-0b5c6d66cafb}"),
    ),
    g(
        "FSFilter Anti-Virus",
        320_000,
        329_999,
        Some("AntiVirus"),
        Some("{b1d1a169-c54f-4379-81db-bee7d88d7454}"),
    ),
    g(
        "FSFilter Replication",
        300_000,
        309_999,
        Some("Replication"),
        Some("{48d3ebc4-4cf8-48ff-b869-9c68ad42eb9f}"),
    ),
    g(
        "FSFilter Continuous Backup",
        280_000,
        289_999,
        Some("ContinuousBackup"),
        Some("{71aa14f8-6fad-4622-ad77-92bb9d7e6947}"),
    ),
    g(
        "FSFilter Content Screener",
        260_000,
        269_999,
        Some("ContentScreener"),
        Some("{3e3f0674-c83c-4558-bb26-9820e1eba5c5}"),
    ),
    g(
        "FSFilter Quota Management",
        240_000,
        249_999,
        Some("QuotaManagement"),
        Some("{8503c911-a6c7-4919-8f79-5028f5866b0c}"),
    ),
    g(
        "FSFilter System Recovery",
        220_000,
        229_999,
        None,
        Some("{2db15374-706e-4131-a0c7-d7c78eb0289a}"),
    ),
    g(
        "FSFilter Cluster File System",
        200_000,
        209_999,
        Some("CFSMetaDataServer"),
        Some("{cdcf0939-b75b-4630-bf76-80f7ba655884}"),
    ),
    g(
        "FSFilter HSM",
        180_000,
        189_999,
        Some("HSM"),
        Some("{d546500a-2aeb-45f6-9482-f4b1799c3177}"),
    ),
    g("FSFilter Imaging", 170_000, 175_000, None, None),
    g(
        "FSFilter Compression",
        160_000,
        169_999,
        Some("Compression"),
        Some("{f3586baf-b5aa-49b5-8d6c-0569284c639f}"),
    ),
    g(
        "FSFilter Encryption",
        140_000,
        149_999,
        Some("Encryption"),
        Some("{a0a701c0-a511-42ff-aa6c-06dc0395576f}"),
    ),
    g(
        "FSFilter Virtualization",
        130_000,
        139_999,
        None,
        Some("{f75a86c0-10d8-4c3a-b233-ed60e4cdfaac}"),
    ),
    g(
        "FSFilter Physical Quota Management",
        120_000,
        129_999,
        Some("PhysicalQuotaManagement"),
        Some("{6a0a8e78-bba6-4fc4-a709-1e33cd09d67e}"),
    ),
    g(
        "FSFilter Open File",
        100_000,
        109_999,
        Some("OpenFileBackup"),
        Some("{f8ecafa6-66d1-41a5-899b-66585d7216b7}"),
    ),
    g(
        "FSFilter Security Enhancer",
        80_000,
        89_999,
        Some("SecurityEnhancer"),
        Some("{d02bc3da-0c8e-4945-9bd5-f1883c226c8c}"),
    ),
    g(
        "FSFilter Copy Protection",
        60_000,
        69_999,
        Some("CopyProtection"),
        Some("{89786ff1-9c12-402f-9c9e-17753c7f4375}"),
    ),
    g(
        "FSFilter Bottom",
        40_000,
        49_999,
        None,
        Some("{37765ea0-5958-4fc9-b04b-2fdfef97e59e}"),
    ),
    g(
        "FSFilter System",
        20_000,
        29_999,
        Some("FSFilterSystem"),
        Some("{5d1b9aaa-01e2-46af-849f-272b3f324c46}"),
    ),
    g(
        "FSFilter Infrastructure",
        0,
        19_999,
        Some("Infrastructure"),
        Some("{e55fa6f9-128c-4d04-abab-630c74b1453a}"),
    ),
];

const fn g(
    name: &'static str,
    low: u64,
    high: u64,
    class: Option<&'static str>,
    guid: Option<&'static str>,
) -> FilterGroup {
    FilterGroup {
        name,
        low,
        high,
        class,
        guid,
    }
}

/// Altitudes allocated to other vendors that a ThinAgent build must never
/// reuse: Filter Manager refuses the second instance at an equal altitude
/// (STATUS_FLT_INSTANCE_ALTITUDE_COLLISION).
pub const TAKEN_ALTITUDES: &[(&str, &str)] =
    &[("328200", "VMware's vShield/NSX thin agent vsepflt.sys")];

/// `FLTFL_INSTANCE_...` bits of an instance's `Flags` value: 0x1 suppresses
/// automatic attachment, 0x2 suppresses manual attachment.
const INSTANCE_FLAG_BITS: u64 = 0x3;

/// The Windows build from which Filter Manager reads instances under the
/// service's `Parameters` key ("Creating an INF file for a minifilter
/// driver": Windows 11 24H2).
const PARAMETERS_INSTANCES_BUILD: u64 = 25_952;

/// A lint finding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LintFinding {
    /// Stable id, `INF0nn`.
    pub id: &'static str,
    /// `error` or `warning`.
    pub severity: &'static str,
    /// 1-based line of the INF the finding points at (0: the file as a whole).
    pub line: usize,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

/// One logical INF line.
#[derive(Clone, Debug)]
struct Entry {
    line: usize,
    key: Option<String>,
    /// Raw value text (after `=`, or the whole line), comment removed.
    value: String,
}

#[derive(Clone, Debug, Default)]
struct Section {
    name: String,
    line: usize,
    entries: Vec<Entry>,
}

/// A parsed INF.
#[derive(Clone, Debug, Default)]
struct Inf {
    sections: Vec<Section>,
    strings: BTreeMap<String, (String, usize)>,
}

impl Inf {
    fn section(&self, name: &str) -> Option<&Section> {
        self.sections
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(name))
    }
}

/// Removes a `;` comment that is not inside double quotes.
fn strip_comment(s: &str) -> &str {
    let mut in_q = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => in_q = !in_q,
            ';' if !in_q => return &s[..i],
            _ => {}
        }
    }
    s
}

/// Splits at `=` outside quotes (only the first).
fn split_key(s: &str) -> Option<(&str, &str)> {
    let mut in_q = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => in_q = !in_q,
            '=' if !in_q => return Some((&s[..i], &s[i + 1..])),
            _ => {}
        }
    }
    None
}

fn parse(text: &str) -> Inf {
    let mut inf = Inf::default();
    let mut current: Option<Section> = None;
    let mut pending = String::new();
    let mut pending_line = 0;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let body = strip_comment(raw).trim_end();
        if pending.is_empty() {
            pending_line = n;
        }
        if let Some(cont) = body.strip_suffix('\\') {
            // a trailing backslash continues the line (setup's rule); a path
            // ending in a backslash inside quotes is not a continuation
            if cont.matches('"').count() % 2 == 0 {
                pending.push_str(cont);
                continue;
            }
        }
        pending.push_str(body);
        let logical = std::mem::take(&mut pending);
        let t = logical.trim();
        if t.is_empty() {
            continue;
        }
        if t.starts_with('[') {
            if let Some(s) = current.take() {
                inf.sections.push(s);
            }
            let name = t.trim_start_matches('[');
            let name = name.split(']').next().unwrap_or("").trim().to_string();
            current = Some(Section {
                name,
                line: pending_line,
                entries: Vec::new(),
            });
            continue;
        }
        let (key, value) = match split_key(t) {
            Some((k, v)) => (Some(k.trim().to_string()), v.trim().to_string()),
            None => (None, t.to_string()),
        };
        if let Some(s) = current.as_mut() {
            s.entries.push(Entry {
                line: pending_line,
                key,
                value,
            });
        }
    }
    if let Some(s) = current.take() {
        inf.sections.push(s);
    }
    for s in &inf.sections {
        // [Strings] and language variants ([Strings.0409]) both define tokens
        if s.name.eq_ignore_ascii_case("Strings")
            || s.name.to_ascii_lowercase().starts_with("strings.")
        {
            for e in &s.entries {
                if let Some(k) = &e.key {
                    let v = unquote(&e.value);
                    inf.strings
                        .entry(k.to_ascii_lowercase())
                        .or_insert((v, e.line));
                }
            }
        }
    }
    inf
}

/// Removes the quotes of a quoted field (`""` is a literal quote).
fn unquote(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.trim().chars().peekable();
    let mut in_q = false;
    while let Some(c) = chars.next() {
        if c == '"' {
            if in_q && chars.peek() == Some(&'"') {
                out.push('"');
                chars.next();
            } else {
                in_q = !in_q;
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A resolved field: its text and the line that defined it (the `[Strings]`
/// line when the field is exactly one `%token%`).
#[derive(Clone, Debug)]
struct Field {
    text: String,
    origin: usize,
}

struct Ctx<'a> {
    inf: &'a Inf,
    findings: Vec<LintFinding>,
}

impl Ctx<'_> {
    fn push(
        &mut self,
        id: &'static str,
        severity: &'static str,
        line: usize,
        message: String,
        fix: String,
    ) {
        let f = LintFinding {
            id,
            severity,
            line,
            message,
            fix,
        };
        if !self.findings.contains(&f) {
            self.findings.push(f);
        }
    }

    /// Substitutes `%strkey%` tokens in `raw` and removes quotes.
    fn resolve(&mut self, raw: &str, line: usize) -> Field {
        let raw = raw.trim();
        let mut out = String::new();
        let mut origin = line;
        let mut rest = raw;
        let whole_token = raw.len() > 2
            && raw.starts_with('%')
            && raw.ends_with('%')
            && !raw[1..raw.len() - 1].contains('%');
        while let Some(i) = rest.find('%') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            let Some(j) = after.find('%') else {
                out.push_str(&rest[i..]);
                rest = "";
                break;
            };
            let token = &after[..j];
            if token.is_empty() {
                out.push('%');
            } else if token.chars().all(|c| c.is_ascii_digit()) {
                // DIRID such as %13%: kept as is
                let _ = write!(out, "%{token}%");
            } else if let Some((v, l)) = self.inf.strings.get(&token.to_ascii_lowercase()) {
                out.push_str(v);
                if whole_token {
                    origin = *l;
                }
            } else {
                self.push(
                    "INF030",
                    "error",
                    line,
                    format!("%{token}% is not defined in [Strings]"),
                    format!("add `{token} = \"...\"` to the [Strings] section or correct the token's spelling"),
                );
                let _ = write!(out, "%{token}%");
            }
            rest = &after[j + 1..];
        }
        out.push_str(rest);
        Field {
            text: unquote(&out),
            origin,
        }
    }

    /// The comma-separated fields of `raw`, resolved.
    fn fields(&mut self, raw: &str, line: usize) -> Vec<Field> {
        let mut parts = Vec::new();
        let mut in_q = false;
        let mut start = 0;
        for (i, c) in raw.char_indices() {
            match c {
                '"' => in_q = !in_q,
                ',' if !in_q => {
                    parts.push(&raw[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&raw[start..]);
        parts.into_iter().map(|p| self.resolve(p, line)).collect()
    }
}

/// Parses an INF integer: decimal, or hex with `0x`.
fn parse_int(s: &str) -> Option<u64> {
    let t = s.trim();
    if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else {
        t.parse().ok()
    }
}

/// An altitude: decimal digits with an optional fraction. Returns the integer part.
fn parse_altitude(s: &str) -> Option<u64> {
    let t = s.trim();
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    int.parse().ok()
}

/// Two altitudes are equal as decimal numbers (`328200` = `328200.0`).
fn same_altitude(a: &str, b: &str) -> bool {
    fn norm(s: &str) -> String {
        let t = s.trim();
        match t.split_once('.') {
            Some((i, f)) => {
                let f = f.trim_end_matches('0');
                if f.is_empty() {
                    i.to_string()
                } else {
                    format!("{i}.{f}")
                }
            }
            None => t.to_string(),
        }
    }
    norm(a) == norm(b)
}

/// The OS build a decorated install section targets
/// (`DefaultInstall.NTamd64.10.0...25952` -> 25952), if any.
fn target_build(section: &str) -> Option<u64> {
    let lower = section.to_ascii_lowercase();
    let i = lower.find(".nt")?;
    let deco = &section[i + 1..];
    let deco = deco
        .strip_suffix(".Services")
        .or_else(|| deco.strip_suffix(".services"))
        .unwrap_or(deco);
    let parts: Vec<&str> = deco.split('.').collect();
    parts.get(5).and_then(|b| b.trim().parse().ok())
}

#[derive(Debug)]
struct RegLine {
    line: usize,
    subkey: String,
    name: String,
    flags: Option<u64>,
    value: Option<Field>,
    /// Fields after the value: further strings of a `REG_MULTI_SZ`.
    more: Vec<Field>,
}

#[derive(Debug, Default)]
struct InstanceDef {
    name: String,
    line: usize,
    altitude: Option<(Field, usize, Option<u64>)>,
    flags: Option<(Field, usize)>,
}

/// Lints INF `text`. Findings are in file order of the service sections
/// checked, `[Version]` first.
#[must_use]
pub fn lint(text: &str) -> Vec<LintFinding> {
    let inf = parse(text);
    let mut cx = Ctx {
        inf: &inf,
        findings: Vec::new(),
    };
    check_version(&mut cx);
    let class_group = version_class_group(&mut cx);

    for s in &inf.sections {
        if s.name.to_ascii_lowercase().starts_with("defaultuninstall") {
            cx.push(
                "INF031",
                "warning",
                s.line,
                format!("[{}]: DefaultUninstall sections are prohibited for primitive drivers since Windows 10 1903", s.name),
                "remove the section; `pnputil /delete-driver <oem#.inf> /uninstall` removes the driver".into(),
            );
        }
    }

    let mut services = Vec::new();
    for s in &inf.sections {
        let lname = s.name.to_ascii_lowercase();
        if !(lname.starts_with("defaultinstall") && lname.ends_with(".services")) {
            continue;
        }
        let before = services.len();
        for e in &s.entries {
            if !e
                .key
                .as_deref()
                .is_some_and(|k| k.eq_ignore_ascii_case("AddService"))
            {
                continue;
            }
            let f = cx.fields(&e.value, e.line);
            let svc_name = f.first().map(|x| x.text.clone()).unwrap_or_default();
            let section = f.get(2).map(|x| x.text.clone()).unwrap_or_default();
            services.push((svc_name, section, e.line, target_build(&s.name)));
        }
        if services.len() == before {
            cx.push(
                "INF010",
                "error",
                s.line,
                format!("[{}] has no AddService directive: installing through it creates no service", s.name),
                "add `AddService = %ServiceName%,,MyFilter.Service` naming the service install section".into(),
            );
        }
    }
    for s in &inf.sections {
        let lname = s.name.to_ascii_lowercase();
        if lname.starts_with("defaultinstall") && !lname.ends_with(".services") {
            let services_name = format!("{}.Services", s.name);
            if inf.section(&services_name).is_none() {
                cx.push(
                    "INF010",
                    "error",
                    s.line,
                    format!("[{}] has no [{services_name}] section: installing through it creates no service", s.name),
                    format!("add [{services_name}] with an AddService directive"),
                );
            }
        }
    }
    if services.is_empty() {
        cx.push(
            "INF010",
            "error",
            0,
            "no AddService directive in a [DefaultInstall*.Services] section: the minifilter's service is never created".into(),
            "add `[DefaultInstall.NTamd64.Services]` with `AddService = %ServiceName%,,MyFilter.Service`".into(),
        );
    }
    for (svc, section, line, build) in &services {
        match inf.section(section) {
            None => cx.push(
                "INF010",
                "error",
                *line,
                format!("AddService for {svc:?} names service install section [{section}], which does not exist"),
                format!("add a [{section}] section or correct the name in the AddService directive"),
            ),
            Some(sec) => check_service(&mut cx, svc, sec, *build, class_group),
        }
    }
    cx.findings
}

fn check_version(cx: &mut Ctx<'_>) {
    let Some(v) = cx.inf.section("Version") else {
        cx.push("INF001", "error", 0, "no [Version] section".into(), "start the INF with [Version], Signature = \"$WINDOWS NT$\", Class, ClassGuid, Provider, DriverVer, CatalogFile".into());
        return;
    };
    let sig = v.entries.iter().find(|e| {
        e.key
            .as_deref()
            .is_some_and(|k| k.eq_ignore_ascii_case("Signature"))
    });
    match sig {
        None => cx.push(
            "INF001",
            "error",
            v.line,
            "[Version] has no Signature".into(),
            "add `Signature = \"$WINDOWS NT$\"`".into(),
        ),
        Some(e) => {
            let s = unquote(&e.value);
            if !s.eq_ignore_ascii_case("$WINDOWS NT$") && !s.eq_ignore_ascii_case("$Chicago$") {
                cx.push(
                    "INF001",
                    "error",
                    e.line,
                    format!("Signature {s:?} is not \"$WINDOWS NT$\""),
                    "set `Signature = \"$WINDOWS NT$\"`".into(),
                );
            }
        }
    }
}

/// Checks Class / ClassGuid; returns the group the class stands for.
fn version_class_group(cx: &mut Ctx<'_>) -> Option<(&'static FilterGroup, usize)> {
    let v = cx.inf.section("Version")?;
    let get = |k: &str| {
        v.entries
            .iter()
            .find(|e| e.key.as_deref().is_some_and(|x| x.eq_ignore_ascii_case(k)))
            .cloned()
    };
    let class = get("Class");
    let guid = get("ClassGuid");
    let fix_pair = "use the class of the filter's load order group, e.g. `Class = \"AntiVirus\"` and `ClassGuid = {b1d1a169-c54f-4379-81db-bee7d88d7454}` for FSFilter Anti-Virus";
    let (Some(class), Some(guid)) = (class, guid) else {
        cx.push(
            "INF002",
            "error",
            v.line,
            "[Version] needs both Class and ClassGuid".into(),
            fix_pair.into(),
        );
        return None;
    };
    let class_f = cx.resolve(&class.value, class.line);
    let guid_f = cx.resolve(&guid.value, guid.line);
    let guid_l = guid_f.text.trim().to_ascii_lowercase();
    let Some(group) = FILTER_GROUPS
        .iter()
        .find(|g| g.guid == Some(guid_l.as_str()))
    else {
        cx.push(
            "INF003",
            "error",
            guid.line,
            format!(
                "ClassGuid {} is not a file-system filter class",
                guid_f.text.trim()
            ),
            fix_pair.into(),
        );
        return None;
    };
    if let Some(name) = group.class
        && !class_f.text.trim().eq_ignore_ascii_case(name)
    {
        cx.push(
            "INF003",
            "error",
            class.line,
            format!(
                "Class {:?} does not match ClassGuid {} (class {name})",
                class_f.text.trim(),
                guid_l
            ),
            format!(
                "set `Class = \"{name}\"`, or change ClassGuid to the GUID of class {:?}",
                class_f.text.trim()
            ),
        );
    }
    Some((group, guid.line))
}

fn entry<'s>(sec: &'s Section, key: &str) -> Option<&'s Entry> {
    sec.entries.iter().find(|e| {
        e.key
            .as_deref()
            .is_some_and(|k| k.eq_ignore_ascii_case(key))
    })
}

#[allow(clippy::too_many_lines)]
fn check_service(
    cx: &mut Ctx<'_>,
    svc: &str,
    sec: &Section,
    build: Option<u64>,
    class_group: Option<(&'static FilterGroup, usize)>,
) {
    let name = &sec.name;
    // ServiceType
    match entry(sec, "ServiceType") {
        None => cx.push(
            "INF011",
            "error",
            sec.line,
            format!("[{name}] has no ServiceType"),
            "add `ServiceType = 2 ; SERVICE_FILE_SYSTEM_DRIVER`".into(),
        ),
        Some(e) => {
            let f = cx.resolve(&e.value, e.line);
            if parse_int(&f.text) != Some(2) {
                cx.push(
                    "INF011",
                    "error",
                    e.line,
                    format!(
                        "[{name}] ServiceType is {}, not 2 (SERVICE_FILE_SYSTEM_DRIVER)",
                        f.text
                    ),
                    "minifilters are file system drivers: set `ServiceType = 2`".into(),
                );
            }
        }
    }
    // StartType
    match entry(sec, "StartType") {
        None => cx.push("INF012", "error", sec.line, format!("[{name}] has no StartType"), "add `StartType = 0` (boot start, to filter from the first file open) or 3 (demand start)".into()),
        Some(e) => {
            let f = cx.resolve(&e.value, e.line);
            match parse_int(&f.text) {
                Some(0..=3) => {}
                Some(4) => cx.push("INF012", "error", e.line, format!("[{name}] StartType is 4 (SERVICE_DISABLED): the filter never starts"), "set `StartType = 0` (boot) or 3 (demand)".into()),
                _ => cx.push("INF012", "error", e.line, format!("[{name}] StartType {:?} is not 0..4", f.text), "set `StartType = 0` (boot) or 3 (demand)".into()),
            }
        }
    }
    // ErrorControl
    match entry(sec, "ErrorControl") {
        None => cx.push(
            "INF013",
            "warning",
            sec.line,
            format!("[{name}] has no ErrorControl"),
            "add `ErrorControl = 1 ; SERVICE_ERROR_NORMAL`".into(),
        ),
        Some(e) => {
            let f = cx.resolve(&e.value, e.line);
            match parse_int(&f.text) {
                Some(1) => {}
                Some(v @ (0 | 2 | 3)) => cx.push(
                    "INF013",
                    "warning",
                    e.line,
                    format!("[{name}] ErrorControl is {v}; minifilters should use 1 (SERVICE_ERROR_NORMAL){}", if v >= 2 { ": a failing filter would send the machine to LastKnownGood or stop the boot" } else { "" }),
                    "set `ErrorControl = 1`".into(),
                ),
                _ => cx.push("INF013", "error", e.line, format!("[{name}] ErrorControl {:?} is not 0..3", f.text), "set `ErrorControl = 1`".into()),
            }
        }
    }
    // LoadOrderGroup
    let mut group: Option<&'static FilterGroup> = None;
    match entry(sec, "LoadOrderGroup") {
        None => cx.push("INF014", "error", sec.line, format!("[{name}] has no LoadOrderGroup; minifilters must name one whatever their start type"), "add `LoadOrderGroup = \"FSFilter Anti-Virus\"` (or the group of the filter's type)".into()),
        Some(e) => {
            let f = cx.resolve(&e.value, e.line);
            let gname = f.text.trim();
            match FILTER_GROUPS.iter().find(|g| g.name.eq_ignore_ascii_case(gname)) {
                Some(g) => group = Some(g),
                None => {
                    let known = FILTER_GROUPS.iter().map(|g| g.name).collect::<Vec<_>>().join(", ");
                    cx.push(
                        "INF015",
                        "error",
                        e.line,
                        format!("[{name}] LoadOrderGroup {gname:?} is not a minifilter load order group (e.g. \"System Boot Extender\" exists in no ServiceGroupOrder list: a driver there loads last)"),
                        format!("use one of: {known}"),
                    );
                }
            }
        }
    }
    if let (Some(g), Some((cg, line))) = (group, class_group)
        && g.name != cg.name
    {
        cx.push(
            "INF004",
            "warning",
            line,
            format!(
                "ClassGuid is the class of {:?} but the service loads in {:?}",
                cg.name, g.name
            ),
            format!(
                "use the class and GUID of {:?}{}",
                g.name,
                g.guid.map_or(String::new(), |x| format!(" ({x})"))
            ),
        );
    }
    // Dependencies
    let deps = entry(sec, "Dependencies").map(|e| (cx.fields(&e.value, e.line), e.line));
    let has_fltmgr = deps.as_ref().is_some_and(|(f, _)| {
        f.iter()
            .any(|x| x.text.trim().eq_ignore_ascii_case("FltMgr"))
    });
    if !has_fltmgr {
        cx.push(
            "INF016",
            "error",
            deps.as_ref().map_or(sec.line, |(_, l)| *l),
            format!("[{name}] Dependencies does not name FltMgr"),
            "add `Dependencies = \"FltMgr\"`: every minifilter depends on the filter manager"
                .into(),
        );
    }
    // ServiceBinary
    match entry(sec, "ServiceBinary") {
        None => cx.push(
            "INF017",
            "warning",
            sec.line,
            format!("[{name}] has no ServiceBinary"),
            "add `ServiceBinary = %13%\\<driver>.sys`".into(),
        ),
        Some(e) => {
            let f = cx.resolve(&e.value, e.line);
            if !f.text.trim().to_ascii_lowercase().ends_with(".sys") {
                cx.push(
                    "INF017",
                    "warning",
                    e.line,
                    format!("[{name}] ServiceBinary {:?} is not a .sys file", f.text),
                    "point ServiceBinary at the driver image, e.g. %13%\\thinagent.sys".into(),
                );
            }
        }
    }

    // AddReg: instances
    let mut regs: Vec<RegLine> = Vec::new();
    if let Some(e) = entry(sec, "AddReg") {
        let list = cx.fields(&e.value, e.line);
        for s in list {
            let sname = s.text.trim().to_string();
            let Some(rs) = cx.inf.section(&sname) else {
                cx.push(
                    "INF018",
                    "error",
                    e.line,
                    format!("[{name}] AddReg names [{sname}], which does not exist"),
                    format!("add [{sname}] or correct the name"),
                );
                continue;
            };
            let entries = rs.entries.clone();
            for re in &entries {
                let raw = match &re.key {
                    Some(k) => format!("{k}={}", re.value),
                    None => re.value.clone(),
                };
                let f = cx.fields(&raw, re.line);
                if !f
                    .first()
                    .is_some_and(|r| r.text.trim().eq_ignore_ascii_case("HKR"))
                {
                    continue;
                }
                regs.push(RegLine {
                    line: re.line,
                    subkey: f
                        .get(1)
                        .map(|x| x.text.trim().to_string())
                        .unwrap_or_default(),
                    name: f
                        .get(2)
                        .map(|x| x.text.trim().to_string())
                        .unwrap_or_default(),
                    flags: f.get(3).and_then(|x| parse_int(&x.text)),
                    value: f.get(4).cloned(),
                    more: f.iter().skip(5).cloned().collect(),
                });
            }
        }
    }
    check_instances(cx, svc, name, &regs, group, build);
    if svc.eq_ignore_ascii_case("thinagent") {
        check_thinagent_parameters(cx, &regs);
    }
}

/// AddReg flags (`setupapi.h`): the value type is `flags & FLG_ADDREG_TYPE_MASK`
/// (`0xFFFF0000 | FLG_ADDREG_BINVALUETYPE`); the other low bits modify the
/// write (`FLG_ADDREG_NOCLOBBER` 0x2, `FLG_ADDREG_APPEND` 0x8, ...).
const FLG_ADDREG_TYPE_MASK: u64 = 0xFFFF_0001;
const FLG_ADDREG_TYPE_SZ: u64 = 0x0000_0000;
const FLG_ADDREG_TYPE_DWORD: u64 = 0x0001_0001;
const FLG_ADDREG_TYPE_MULTI_SZ: u64 = 0x0001_0000;
const FLG_ADDREG_TYPE_QWORD: u64 = 0x000B_0001;
/// `FLG_ADDREG_DELVAL` / `FLG_ADDREG_KEYONLY`: the line writes no value.
const FLG_ADDREG_NO_VALUE: u64 = 0x0000_0004 | 0x0000_0010;

/// The registry type of AddReg `flags`, by name.
fn addreg_type_name(flags: u64) -> &'static str {
    match flags & FLG_ADDREG_TYPE_MASK {
        FLG_ADDREG_TYPE_SZ => "REG_SZ",
        FLG_ADDREG_TYPE_DWORD => "REG_DWORD",
        FLG_ADDREG_TYPE_MULTI_SZ => "REG_MULTI_SZ",
        FLG_ADDREG_TYPE_QWORD => "REG_QWORD",
        0x0002_0000 => "REG_EXPAND_SZ",
        0x0000_0001 => "REG_BINARY",
        0x0002_0001 => "REG_NONE",
        _ => "a custom registry type",
    }
}

/// The AddReg flags that write `ty`.
fn addreg_flags_of(ty: &str) -> &'static str {
    match ty {
        "REG_MULTI_SZ" => "0x00010000 (FLG_ADDREG_TYPE_MULTI_SZ)",
        _ => "0x00010001 (FLG_ADDREG_TYPE_DWORD)",
    }
}

/// The registry type the driver reads `name` as: the guest crate rejects a
/// DWORD for a list parameter with `WrongType { expected: "REG_MULTI_SZ" }`;
/// every other parameter is numeric.
fn guest_param_type(name: &str) -> &'static str {
    use thinagent_guest::{ParamError, Params, RegValue};
    match Params::default().apply(name, RegValue::Dword(1)) {
        Err(ParamError::WrongType { expected, .. }) => expected,
        _ => "REG_DWORD",
    }
}

/// ThinAgent's own `Parameters` values must be ones the driver reads, under
/// the key it reads them from, once each, with the registry type and range
/// `thinagent_guest::Params` accepts (so the INF, the guest crate and the
/// driver agree on names and types).
fn check_thinagent_parameters(cx: &mut Ctx<'_>, regs: &[RegLine]) {
    use thinagent_guest::params::names;
    use thinagent_guest::{Applied, Params, RegValue};
    let known = |name: &str| {
        names::ALL
            .iter()
            .copied()
            .find(|n| n.eq_ignore_ascii_case(name))
    };
    let mut params = Params::default();
    let mut written: Vec<(&'static str, usize)> = Vec::new();
    for r in regs {
        let flags = r.flags.unwrap_or(0);
        if r.name.is_empty() || flags & FLG_ADDREG_NO_VALUE != 0 {
            continue;
        }
        if !r.subkey.eq_ignore_ascii_case("Parameters") {
            if let Some(name) = known(&r.name) {
                let key = if r.subkey.is_empty() {
                    "the service key itself".to_string()
                } else {
                    format!("subkey {:?}", r.subkey)
                };
                cx.push(
                    "INF044",
                    "warning",
                    r.line,
                    format!("ThinAgent parameter {name:?} is written under {key}; the driver reads its parameters only from the Parameters subkey, so this value is ignored"),
                    format!("write it as HKR,\"Parameters\",\"{name}\",..."),
                );
            }
            continue;
        }
        if r.name.eq_ignore_ascii_case("SupportedFeatures") {
            continue;
        }
        let Some(v) = &r.value else { continue };
        let text = v.text.trim();
        let at = v.origin;
        let Some(name) = known(&r.name) else {
            cx.push(
                "INF040",
                "error",
                r.line,
                format!(
                    "Parameters value {:?} is not a parameter ThinAgent reads",
                    r.name
                ),
                format!(
                    "spell it as crates/guest spells it: one of {}",
                    names::ALL.join(", ")
                ),
            );
            continue;
        };
        if let Some((_, first)) = written.iter().find(|(n, _)| *n == name) {
            cx.push(
                "INF045",
                "warning",
                r.line,
                format!("Parameters value {name:?} is written twice (first on line {first}); the later line wins"),
                "keep one line per parameter".into(),
            );
        } else {
            written.push((name, r.line));
        }
        // The registry type: what the driver reads this parameter as.
        let expected = guest_param_type(name);
        let given = addreg_type_name(flags);
        let numeric_text = parse_int(text).is_some();
        // What driver/windows/registry_params.rs reads: REG_SZ for every
        // parameter (a number, a list of one), REG_DWORD or REG_QWORD for a
        // number, REG_MULTI_SZ for a list.
        let type_ok = matches!(
            (expected, flags & FLG_ADDREG_TYPE_MASK),
            (_, FLG_ADDREG_TYPE_SZ)
                | ("REG_MULTI_SZ", FLG_ADDREG_TYPE_MULTI_SZ)
                | ("REG_DWORD", FLG_ADDREG_TYPE_DWORD | FLG_ADDREG_TYPE_QWORD)
        );
        if !type_ok {
            cx.push(
                "INF042",
                "error",
                r.line,
                format!("Parameters value {name:?} is written as {given}, but the driver reads it as {expected}"),
                format!("use AddReg flags {} for {name}", addreg_flags_of(expected)),
            );
            continue;
        }
        if expected == "REG_DWORD"
            && flags & FLG_ADDREG_TYPE_MASK == FLG_ADDREG_TYPE_SZ
            && numeric_text
        {
            cx.push(
                "INF043",
                "warning",
                r.line,
                format!("Parameters value {name:?} is a number written as REG_SZ; the driver parses it, but reg query, regedit and policy tools show it as text"),
                format!("use AddReg flags {} for {name}", addreg_flags_of(expected)),
            );
        }
        let multi;
        let value = match flags & FLG_ADDREG_TYPE_MASK {
            FLG_ADDREG_TYPE_DWORD => match parse_int(text).and_then(|x| u32::try_from(x).ok()) {
                Some(x) => RegValue::Dword(x),
                None => {
                    cx.push(
                        "INF040",
                        "error",
                        at,
                        format!("Parameters value {name:?}: {text:?} is not a DWORD"),
                        "write a decimal or 0x hex number up to 0xFFFFFFFF".into(),
                    );
                    continue;
                }
            },
            FLG_ADDREG_TYPE_QWORD => match parse_int(text) {
                Some(x) => RegValue::Qword(x),
                None => {
                    cx.push(
                        "INF040",
                        "error",
                        at,
                        format!("Parameters value {name:?}: {text:?} is not a QWORD"),
                        "write a decimal or 0x hex number".into(),
                    );
                    continue;
                }
            },
            FLG_ADDREG_TYPE_MULTI_SZ => {
                // Each further field is one more string of the list.
                multi = std::iter::once(v)
                    .chain(&r.more)
                    .map(|f| f.text.trim())
                    .collect::<Vec<_>>()
                    .join("\0");
                RegValue::MultiSz(&multi)
            }
            _ => RegValue::Sz(text),
        };
        match params.apply(name, value) {
            Ok(Applied::Set) => {}
            Ok(Applied::Clamped(c)) => cx.push(
                "INF041",
                "warning",
                at,
                format!("Parameters value {name:?}: {c}"),
                format!("use a value the driver accepts for {name} (crates/guest/src/params.rs)"),
            ),
            Err(e) => cx.push(
                "INF040",
                "error",
                at,
                format!("Parameters value {name:?}: {e}"),
                "fix the value; crates/guest/src/params.rs lists each parameter's values and docs/windows.md explains them".into(),
            ),
        }
    }
}

fn check_instances(
    cx: &mut Ctx<'_>,
    svc: &str,
    sec_name: &str,
    regs: &[RegLine],
    group: Option<&'static FilterGroup>,
    build: Option<u64>,
) {
    let want_params = build.is_some_and(|b| b >= PARAMETERS_INSTANCES_BUILD);
    let mut default: Option<(Field, usize)> = None;
    let mut instances: Vec<InstanceDef> = Vec::new();
    for r in regs {
        let sk = r.subkey.replace('/', "\\");
        let lower = sk.to_ascii_lowercase();
        let (under_params, rest) = if let Some(rest) = lower.strip_prefix("parameters\\") {
            (true, rest.to_string())
        } else {
            (false, lower.clone())
        };
        let orig_rest = &sk[sk.len() - rest.len()..];
        if rest != "instances" && !rest.starts_with("instances\\") {
            continue;
        }
        if under_params != want_params {
            let (have, want) = if want_params {
                ("Instances", "Parameters\\Instances")
            } else {
                ("Parameters\\Instances", "Instances")
            };
            let which = match build {
                Some(b) => format!("builds {b} and later"),
                None => "builds before 25952 (Windows 11 24H2)".into(),
            };
            cx.push(
                "INF026",
                "warning",
                r.line,
                format!("[{sec_name}] writes instances under HKR\\{have}, but on {which} Filter Manager reads HKR\\{want}"),
                format!("write the instance keys under HKR,\"{want}\" for this section"),
            );
        }
        if rest == "instances" {
            if r.name.eq_ignore_ascii_case("DefaultInstance")
                && let Some(v) = &r.value
            {
                default = Some((v.clone(), r.line));
            }
            continue;
        }
        let inst_name = orig_rest["instances\\".len()..].to_string();
        let idx = match instances
            .iter()
            .position(|i| i.name.eq_ignore_ascii_case(&inst_name))
        {
            Some(i) => i,
            None => {
                instances.push(InstanceDef {
                    name: inst_name.clone(),
                    line: r.line,
                    ..InstanceDef::default()
                });
                instances.len() - 1
            }
        };
        if r.name.eq_ignore_ascii_case("Altitude") {
            if let Some(v) = &r.value {
                instances[idx].altitude = Some((v.clone(), r.line, r.flags));
            }
        } else if r.name.eq_ignore_ascii_case("Flags")
            && let Some(v) = &r.value
        {
            instances[idx].flags = Some((v.clone(), r.line));
        }
    }

    let with_alt: Vec<&InstanceDef> = instances.iter().filter(|i| i.altitude.is_some()).collect();
    if with_alt.is_empty() {
        cx.push(
            "INF020",
            "error",
            regs.first().map_or(0, |r| r.line),
            format!("service {svc:?} ([{sec_name}]) defines no instance with an Altitude: Filter Manager cannot attach it"),
            "add HKR,\"Instances\\\"%Instance1.Name%,\"Altitude\",0x00000000,%Instance1.Altitude% and its Flags line".into(),
        );
    }
    let mut seen: Vec<(String, String)> = Vec::new();
    for inst in &instances {
        let Some((alt, line, flags)) = &inst.altitude else {
            cx.push(
                "INF020",
                "error",
                inst.line,
                format!("instance {:?} has no Altitude", inst.name),
                "add its Altitude value (REG_SZ)".into(),
            );
            continue;
        };
        if flags.is_some_and(|f| f & 0x0001_0001 != 0) {
            cx.push(
                "INF032",
                "error",
                *line,
                format!(
                    "instance {:?}: Altitude is not written as a string (REG_SZ); Filter Manager reads a string",
                    inst.name
                ),
                "use flags 0x00000000 (REG_SZ) for Altitude".into(),
            );
        }
        let at = alt.origin;
        let alt_text = alt.text.trim().to_string();
        match parse_altitude(&alt_text) {
            None => cx.push(
                "INF021",
                "error",
                at,
                format!(
                    "instance {:?}: Altitude {alt_text:?} is not a decimal number",
                    inst.name
                ),
                "write the altitude as digits, e.g. \"325000\" or \"325000.5\"".into(),
            ),
            Some(int) => {
                if let Some((_, who)) = TAKEN_ALTITUDES
                    .iter()
                    .find(|(a, _)| same_altitude(a, &alt_text))
                {
                    cx.push(
                        "INF023",
                        "error",
                        at,
                        format!("instance {:?}: Altitude {alt_text} is allocated to {who}; both cannot load on one machine", inst.name),
                        "use an altitude Microsoft allocated to this product (a test build may use a free value in the group's range)".into(),
                    );
                }
                if let Some(g) = group
                    && (int < g.low || int > g.high)
                {
                    cx.push(
                            "INF022",
                            "error",
                            at,
                            format!("instance {:?}: Altitude {alt_text} is outside {}'s range {}-{}", inst.name, g.name, g.low, g.high),
                            format!("choose an altitude in {}-{} or the LoadOrderGroup whose range holds {alt_text}", g.low, g.high),
                        );
                }
                if let Some((_, other)) = seen.iter().find(|(a, _)| same_altitude(a, &alt_text)) {
                    cx.push(
                        "INF027",
                        "error",
                        at,
                        format!(
                            "instances {other:?} and {:?} share Altitude {alt_text}",
                            inst.name
                        ),
                        "give every instance its own altitude".into(),
                    );
                }
                seen.push((alt_text.clone(), inst.name.clone()));
            }
        }
        match &inst.flags {
            None => cx.push(
                "INF024",
                "warning",
                inst.line,
                format!("instance {:?} has no Flags value", inst.name),
                "add HKR,\"Instances\\\"<name>,\"Flags\",0x00010001,0x0 (0 = attach automatically)"
                    .into(),
            ),
            Some((f, _)) => {
                let at = f.origin;
                match parse_int(&f.text) {
                    None => cx.push("INF024", "error", at, format!("instance {:?}: Flags {:?} is not a number", inst.name, f.text), "use 0x0 (attach automatically), 0x1 (no automatic attachment) or 0x2 (no manual attachment)".into()),
                    Some(v) if v & !INSTANCE_FLAG_BITS != 0 => cx.push("INF024", "error", at, format!("instance {:?}: Flags {:#x} has bits Filter Manager does not define (only 0x1 and 0x2)", inst.name, v), "use 0x0, 0x1, 0x2 or 0x3".into()),
                    Some(_) => {}
                }
            }
        }
    }
    match default {
        None => cx.push(
            "INF025",
            "error",
            regs.first().map_or(0, |r| r.line),
            format!("service {svc:?} ([{sec_name}]) has no DefaultInstance"),
            "add HKR,\"Instances\",\"DefaultInstance\",0x00000000,%DefaultInstance% naming one of the instances".into(),
        ),
        Some((d, _)) => {
            let at = d.origin;
            match instances.iter().find(|i| i.name.eq_ignore_ascii_case(d.text.trim())) {
                None => cx.push(
                    "INF025",
                    "error",
                    at,
                    format!("DefaultInstance {:?} names no instance defined for service {svc:?}", d.text.trim()),
                    format!(
                        "set DefaultInstance to one of: {}",
                        instances.iter().map(|i| format!("{:?}", i.name)).collect::<Vec<_>>().join(", ")
                    ),
                ),
                Some(inst) => {
                    if let Some((f, _)) = &inst.flags
                        && parse_int(&f.text).is_some_and(|v| v & 0x1 != 0) {
                            let at = f.origin;
                            cx.push(
                                "INF024",
                                "warning",
                                at,
                                format!("default instance {:?} has Flags 0x1: it never attaches to volumes automatically, so files are not scanned until someone attaches it by hand", inst.name),
                                "set the default instance's Flags to 0x0".into(),
                            );
                        }
                }
            }
        }
    }
}

/// The human-readable report.
#[must_use]
pub fn render_text(file: &str, findings: &[LintFinding]) -> String {
    let mut s = String::new();
    for f in findings {
        let _ = writeln!(
            s,
            "{file}:{}: {} {}: {}",
            f.line, f.severity, f.id, f.message
        );
        let _ = writeln!(s, "    fix: {}", f.fix);
    }
    let errors = findings.iter().filter(|f| f.severity == "error").count();
    let warnings = findings.len() - errors;
    if findings.is_empty() {
        let _ = writeln!(
            s,
            "{file}: ok: minifilter rules pass (service type, start type, error control, load order group, FltMgr dependency, class, instances, altitude range, flags, ThinAgent parameters)"
        );
    } else {
        let _ = writeln!(s, "{file}: {errors} error(s), {warnings} warning(s)");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[Version]
Signature = "$WINDOWS NT$"
Class = "ActivityMonitor"
ClassGuid = {b86dff51-a31e-4bac-b3cf-e8cfe75c9fc2}
[DefaultInstall.NTamd64]
CopyFiles = F
[DefaultInstall.NTamd64.Services]
AddService = %Svc%,,Svc.Service ; a comment; with "quotes"
[Svc.Service]
ServiceBinary = %12%\mon.sys
Dependencies = "FltMgr"
ServiceType = 2
StartType = 3
ErrorControl = 1
LoadOrderGroup = \
  "FSFilter Activity Monitor"
AddReg = Svc.Reg
[Svc.Reg]
HKR,"Instances","DefaultInstance",0x00000000,%Inst%
HKR,"Instances\"%Inst%,"Altitude",0x00000000,"370000.5"
HKR,"Instances\"%Inst%,"Flags",0x00010001,0x2
[Strings]
Svc = "mon"
Inst = "mon; Instance"
"#;

    #[test]
    fn a_well_formed_activity_monitor_passes() {
        assert_eq!(lint(MINIMAL), []);
    }

    #[test]
    fn quotes_comments_continuations_and_tokens() {
        assert_eq!(strip_comment(r#"a = "x;y" ; z"#), r#"a = "x;y" "#);
        assert_eq!(unquote(r#""say ""hi""""#), r#"say "hi""#);
        let inf = parse(MINIMAL);
        let svc = inf.section("svc.service").unwrap();
        let group = entry(svc, "LoadOrderGroup").unwrap();
        assert_eq!(unquote(&group.value), "FSFilter Activity Monitor");
        let mut cx = Ctx {
            inf: &inf,
            findings: Vec::new(),
        };
        let f = cx.fields(r#""Instances\"%Inst%,%%x%%,%13%\a.sys"#, 1);
        assert_eq!(f[0].text, r"Instances\mon; Instance");
        assert_eq!(f[1].text, "%x%");
        assert_eq!(f[2].text, r"%13%\a.sys");
        assert!(cx.findings.is_empty());
        assert_eq!(parse_altitude("370000.5"), Some(370_000));
        assert_eq!(parse_altitude("37x"), None);
        assert!(same_altitude("328200", "328200.00"));
        assert!(!same_altitude("328200", "328200.1"));
        assert_eq!(
            target_build("DefaultInstall.NTamd64.10.0...25952.Services"),
            Some(25_952)
        );
        assert_eq!(target_build("DefaultInstall.NTamd64"), None);
    }

    proptest::proptest! {
        #[test]
        fn lint_never_panics(text in "([\\[\\]%\",;=\\\\ A-Za-z0-9.]{0,30}\\r?\\n){0,20}") {
            let _ = render_text("x", &lint(&text));
        }

        #[test]
        fn mutations_of_a_good_inf_never_panic(cut in 0usize..1000, junk in "[\\[\\]%\",;=\\\\]{0,3}") {
            let mut s = MINIMAL.to_string();
            let at = cut.min(s.len());
            let at = (0..=at).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
            s.insert_str(at, &junk);
            let _ = lint(&s);
        }
    }

    #[test]
    fn addreg_types_and_guest_parameter_types() {
        assert_eq!(addreg_type_name(0x0001_0001), "REG_DWORD");
        // FLG_ADDREG_NOCLOBBER does not change the type
        assert_eq!(addreg_type_name(0x0001_0003), "REG_DWORD");
        assert_eq!(addreg_type_name(0x0001_0000), "REG_MULTI_SZ");
        assert_eq!(addreg_type_name(0x0001_0008), "REG_MULTI_SZ");
        assert_eq!(addreg_type_name(0), "REG_SZ");
        assert_eq!(addreg_type_name(0x0002_0000), "REG_EXPAND_SZ");
        assert_eq!(addreg_type_name(1), "REG_BINARY");
        assert_eq!(addreg_type_name(0x000B_0001), "REG_QWORD");
        for name in thinagent_guest::params::names::ALL {
            let list = name == "excludePaths" || name == "excludeExtensions";
            assert_eq!(
                guest_param_type(name),
                if list { "REG_MULTI_SZ" } else { "REG_DWORD" },
                "{name}"
            );
        }
    }

    #[test]
    fn every_group_range_is_ordered_and_guids_are_unique() {
        let mut guids = std::collections::BTreeSet::new();
        for g in FILTER_GROUPS {
            assert!(g.low <= g.high, "{}", g.name);
            if let Some(guid) = g.guid {
                assert!(guids.insert(guid), "{guid} twice");
                assert_eq!(guid.len(), 38);
            }
        }
        let av = FILTER_GROUPS
            .iter()
            .find(|g| g.name == "FSFilter Anti-Virus")
            .unwrap();
        assert_eq!((av.low, av.high), (320_000, 329_999));
    }
}
