//! Every Windows routine the driver calls must be imported from a kernel
//! module: `ntoskrnl.exe`, `fltmgr.sys`, `hal.dll` or `netio.sys`.
//!
//! windows-sys generates its bindings from Microsoft's metadata, which also
//! binds many `Wdk` routines to the *user-mode* `ntdll.dll` (`ZwOpenKey`,
//! `ZwClose`, `DbgPrintEx`, ...). A driver that imports from ntdll builds,
//! type-checks and then fails to load. This test reads the windows-sys
//! 0.61.2 sources (found with `cargo metadata`), maps every
//! `windows_link::link!("LIB" ... fn NAME(` to its library and module, and
//! checks the driver's sources (`driver/windows/*.rs`):
//!
//! * every routine imported or named through a `windows_sys::` path must be
//!   bound to a kernel module there;
//! * every other identifier that is a windows-sys routine name must either be
//!   bound only to kernel modules in windows-sys, or be declared by
//!   `thinagent-km-sys` in an `extern` block linked from a kernel module
//!   (`ntoskrnl`, `fltmgr`, `hal`, `netio`) or the WDK's static `wdmsec.lib`;
//! * glob imports from windows-sys are refused (they hide what is used).
//!
//! The checker is a function of text, so it is also tested on inline samples
//! and on a seeded copy of the real driver.
//!
//! A second check in the same spirit: windows-sys also drops the headers'
//! `POINTER_ALIGNMENT` on request-parameter fields, so no
//! `Parameters.<arm>` whose layout it gets wrong may be read through it
//! (`thinagent_km_sys::io_params` has the right layouts).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Libraries a kernel driver may import from (windows-sys spelling).
const KERNEL_LIBS: [&str; 4] = ["ntoskrnl.exe", "fltmgr.sys", "hal.dll", "netio.sys"];
/// `#[link(name)]` values km-sys may use: the same modules, plus the WDK's
/// static library `wdmsec.lib` (linked into the driver image).
const KM_SYS_LIBS: [&str; 5] = ["ntoskrnl", "fltmgr", "hal", "netio", "wdmsec"];

/// One `windows_link::link!` binding.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Binding {
    /// `Wdk::System::Registry`.
    module: String,
    /// `ntdll.dll`.
    lib: String,
}

type Bindings = BTreeMap<String, Vec<Binding>>;

/// Adds the `link!` lines of one windows-sys source file in `module`.
fn parse_bindings(module: &str, text: &str, out: &mut Bindings) {
    const LINK: &str = "windows_link::link!(\"";
    for line in text.lines() {
        let Some(at) = line.find(LINK) else { continue };
        let rest = &line[at + LINK.len()..];
        let Some(end) = rest.find('"') else { continue };
        let lib = &rest[..end];
        let Some(fn_at) = rest.find(" fn ") else {
            continue;
        };
        let name: String = rest[fn_at + 4..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.entry(name).or_default().push(Binding {
                module: module.to_string(),
                lib: lib.to_string(),
            });
        }
    }
}

/// Every binding under `src/Windows/{Wdk,Win32}` of a windows-sys checkout.
fn windows_sys_bindings(windows_sys_src: &Path) -> Bindings {
    fn walk(dir: &Path, base: &Path, out: &mut Bindings) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, base, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                let rel = p.parent().unwrap().strip_prefix(base).unwrap();
                let module = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("::");
                let text = std::fs::read_to_string(&p).unwrap();
                parse_bindings(&module, &text, out);
            }
        }
    }
    let windows = windows_sys_src.join("src/Windows");
    let mut out = Bindings::new();
    for top in ["Wdk", "Win32"] {
        walk(&windows.join(top), &windows, &mut out);
    }
    out
}

/// Routines km-sys declares in `extern` blocks, with their `#[link(name)]`.
fn parse_km_sys_declarations(text: &str, out: &mut BTreeMap<String, String>) {
    const LINK: &str = "#[link(name = \"";
    let mut rest = text;
    while let Some(at) = rest.find(LINK) {
        rest = &rest[at + LINK.len()..];
        let Some(end) = rest.find('"') else { return };
        let lib = rest[..end].to_string();
        let Some(ext) = rest.find("extern") else {
            return;
        };
        let Some(open) = rest[ext..].find('{') else {
            return;
        };
        let body_start = ext + open + 1;
        let mut depth = 1;
        let mut body_end = body_start;
        for (i, c) in rest[body_start..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        body_end = body_start + i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let body = strip_comments_and_strings(&rest[body_start..body_end]);
        let mut b = body.as_str();
        while let Some(f) = b.find("fn ") {
            let name: String = b[f + 3..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name, lib.clone());
            }
            b = &b[f + 3..];
        }
        rest = &rest[body_end..];
    }
}

/// Replaces comments and the contents of string and char literals with
/// spaces (keeping line breaks), so only code is scanned.
fn strip_comments_and_strings(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('"')
                || (next == Some('#') && b.get(i + 2).is_some_and(|&c| c == '"' || c == '#')))
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == '_'))
        {
            // Raw string r"..." / r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            // b[j] == '"'
            out.push(' ');
            for _ in 0..=hashes {
                out.push(' ');
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (0..hashes).all(|h| b.get(j + 1 + h) == Some(&'#')) {
                    j += 1 + hashes;
                    for _ in 0..=hashes {
                        out.push(' ');
                    }
                    break;
                }
                out.push(blank(b[j]));
                j += 1;
            }
            i = j;
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < b.len() {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if next == Some('\\') {
                let mut j = i + 2;
                while j < b.len() && b[j] != '\'' {
                    j += 1;
                }
                for _ in i..=j.min(b.len() - 1) {
                    out.push(' ');
                }
                i = j + 1;
            } else if b.get(i + 2) == Some(&'\'') {
                out.push_str("   ");
                i += 3;
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Ident(String),
    PathSep,
    Punct(char),
}

fn tokenize(code: &str) -> Vec<Tok> {
    let c: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        if c[i].is_ascii_alphabetic() || c[i] == '_' {
            let start = i;
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(c[start..i].iter().collect()));
        } else if c[i] == ':' && c.get(i + 1) == Some(&':') {
            out.push(Tok::PathSep);
            i += 2;
        } else if c[i].is_whitespace() {
            i += 1;
        } else if c[i].is_ascii_digit() {
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_') {
                i += 1;
            }
        } else {
            out.push(Tok::Punct(c[i]));
            i += 1;
        }
    }
    out
}

/// Expands a `use` tree (the tokens between `use` and `;`) into full paths;
/// a glob ends in `*`.
fn expand_use(tokens: &[Tok]) -> Vec<Vec<String>> {
    fn tree(t: &[Tok], i: &mut usize, prefix: &[String], out: &mut Vec<Vec<String>>) {
        let mut path = prefix.to_vec();
        while *i < t.len() {
            match &t[*i] {
                Tok::Ident(s) if s == "as" => {
                    // `x as y`: the imported item is still `x`.
                    *i += 2;
                }
                Tok::Ident(s) => {
                    path.push(s.clone());
                    *i += 1;
                }
                Tok::PathSep => *i += 1,
                Tok::Punct('*') => {
                    path.push("*".into());
                    *i += 1;
                }
                Tok::Punct('{') => {
                    *i += 1;
                    loop {
                        tree(t, i, &path, out);
                        match t.get(*i) {
                            Some(Tok::Punct(',')) => *i += 1,
                            Some(Tok::Punct('}')) => {
                                *i += 1;
                                break;
                            }
                            _ => break,
                        }
                        if let Some(Tok::Punct('}')) = t.get(*i) {
                            *i += 1;
                            break;
                        }
                    }
                    return;
                }
                Tok::Punct(',') | Tok::Punct('}') => break,
                Tok::Punct(_) => *i += 1,
            }
        }
        if path.len() > prefix.len() {
            if path.last().is_some_and(|s| s == "self") {
                path.pop();
            }
            out.push(path);
        }
    }
    let mut out = Vec::new();
    let mut i = 0;
    tree(tokens, &mut i, &[], &mut out);
    out
}

/// Re-exports of windows-sys modules in km-sys (`pub use
/// windows_sys::Wdk::Storage::FileSystem::Minifilters;`): alias -> the path
/// after `windows_sys`.
fn parse_km_sys_reexports(text: &str, out: &mut BTreeMap<String, Vec<String>>) {
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("pub use windows_sys::") else {
            continue;
        };
        let path: Vec<String> = rest
            .trim_end_matches(';')
            .split("::")
            .map(str::to_string)
            .collect();
        if let Some(alias) = path.last() {
            out.insert(alias.clone(), path.clone());
        }
    }
}

/// A path through a km-sys re-export (`thinagent_km_sys::fltmgr::Minifilters::X`)
/// rewritten as the windows_sys path it is.
fn resolve_reexport(path: Vec<String>, reexports: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    if path.first().is_none_or(|s| s != "thinagent_km_sys")
        || path.iter().any(|s| s == "windows_sys")
    {
        return path;
    }
    for (i, seg) in path.iter().enumerate() {
        if let Some(full) = reexports.get(seg) {
            let mut out = vec!["windows_sys".to_string()];
            out.extend(full.iter().cloned());
            out.extend(path[i + 1..].iter().cloned());
            return out;
        }
    }
    path
}

/// A routine the driver uses, where, and from which library.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Use {
    name: String,
    lib: String,
    file: String,
}

/// Checks driver sources against the bindings. Returns (offenders, uses).
fn check(
    bindings: &Bindings,
    km_sys: &BTreeMap<String, String>,
    reexports: &BTreeMap<String, Vec<String>>,
    files: &[(String, String)],
) -> (Vec<String>, BTreeSet<Use>) {
    let mut offenders = Vec::new();
    let mut uses = BTreeSet::new();
    for (km_name, lib) in km_sys {
        if !KM_SYS_LIBS.contains(&lib.as_str()) {
            offenders.push(format!(
                "km-sys declares {km_name} from \"{lib}\", not a kernel module"
            ));
        }
    }
    // Functions the driver defines itself (any file): never windows-sys's.
    let mut defined_fns = BTreeSet::new();
    for (_, text) in files {
        let tokens = tokenize(&strip_comments_and_strings(text));
        for w in tokens.windows(2) {
            if let (Tok::Ident(f), Tok::Ident(name)) = (&w[0], &w[1])
                && f == "fn"
            {
                defined_fns.insert(name.clone());
            }
        }
    }
    for (file, text) in files {
        let tokens = tokenize(&strip_comments_and_strings(text));
        // Paths that go through windows_sys, from `use` trees and inline;
        // names that are ours (defined here or imported from elsewhere).
        let mut ws_paths: Vec<Vec<String>> = Vec::new();
        let mut local_names: BTreeSet<String> = defined_fns.clone();
        let mut km_imported: BTreeSet<String> = BTreeSet::new();
        // Local bindings: `let` patterns (`let Some(send) = table.WskSend`)
        // and `name:` (parameters, fields) shadow any routine name.
        for (k, t) in tokens.iter().enumerate() {
            if *t == Tok::Ident("let".into()) {
                for u in tokens[k + 1..]
                    .iter()
                    .take_while(|u| **u != Tok::Punct('=') && **u != Tok::Punct(';'))
                {
                    if let Tok::Ident(n) = u {
                        local_names.insert(n.clone());
                    }
                }
            }
            if let (Tok::Ident(n), Some(Tok::Punct(':'))) = (t, tokens.get(k + 1)) {
                local_names.insert(n.clone());
            }
        }
        let mut in_use = vec![false; tokens.len()];
        let mut i = 0;
        while i < tokens.len() {
            if tokens[i] == Tok::Ident("use".into()) {
                let start = i + 1;
                let mut end = start;
                while end < tokens.len() && tokens[end] != Tok::Punct(';') {
                    end += 1;
                }
                for flag in &mut in_use[i..end.min(tokens.len())] {
                    *flag = true;
                }
                for p in expand_use(&tokens[start..end]) {
                    let p = resolve_reexport(p, reexports);
                    if p.iter().any(|s| s == "windows_sys") {
                        ws_paths.push(p);
                    } else if let Some(last) = p.last() {
                        if p[0] == "thinagent_km_sys" {
                            km_imported.insert(last.clone());
                        } else {
                            local_names.insert(last.clone());
                        }
                    }
                }
                i = end + 1;
                continue;
            }
            let head = match &tokens[i] {
                Tok::Ident(h) if h == "windows_sys" || h == "thinagent_km_sys" => Some(h.clone()),
                _ => None,
            };
            if let Some(head) = head {
                let mut path = vec![head];
                let mut j = i + 1;
                while j + 1 < tokens.len() && tokens[j] == Tok::PathSep {
                    if let Tok::Ident(s) = &tokens[j + 1] {
                        path.push(s.clone());
                        j += 2;
                    } else {
                        break;
                    }
                }
                let path = resolve_reexport(path, reexports);
                if path.len() > 1 && path.iter().any(|s| s == "windows_sys") {
                    ws_paths.push(path);
                }
                i = j;
                continue;
            }
            i += 1;
        }
        let mut imported_from_ws = BTreeSet::new();
        for p in &ws_paths {
            let at = p.iter().position(|s| s == "windows_sys").unwrap();
            let tail = &p[at + 1..];
            let Some((name, module)) = tail.split_last() else {
                continue;
            };
            let module = module.join("::");
            if name == "*" {
                offenders.push(format!(
                    "{file}: glob import `windows_sys::{module}::*` (name each routine so it can be checked)"
                ));
                continue;
            }
            let Some(found) = bindings.get(name) else {
                continue; // a type or constant
            };
            let Some(b) = found.iter().find(|b| b.module == module) else {
                continue; // e.g. a module path prefix, or a constant of the same name
            };
            imported_from_ws.insert(name.clone());
            uses.insert(Use {
                name: name.clone(),
                lib: b.lib.clone(),
                file: file.clone(),
            });
            if !KERNEL_LIBS.contains(&b.lib.as_str()) {
                offenders.push(format!(
                    "{file}: {name} comes from windows_sys::{module}, which binds it to {}; \
                     declare the kernel export in thinagent-km-sys and use that",
                    b.lib
                ));
            }
        }
        // Calls of routines not imported through windows_sys: through
        // km-sys (recorded), our own functions and methods (skipped), or a
        // name we could not resolve (a glob import, a macro): then it must be
        // a routine windows-sys binds to kernel modules only.
        for (k, t) in tokens.iter().enumerate() {
            let Tok::Ident(name) = t else { continue };
            if in_use[k] || tokens.get(k + 1) != Some(&Tok::Punct('(')) {
                continue;
            }
            let prev = k.checked_sub(1).map(|p| &tokens[p]);
            if prev == Some(&Tok::Punct('.')) || prev == Some(&Tok::Ident("fn".into())) {
                continue;
            }
            let km_use = |uses: &mut BTreeSet<Use>, lib: &str| {
                uses.insert(Use {
                    name: name.clone(),
                    lib: format!("{lib} (km-sys)"),
                    file: file.clone(),
                });
            };
            if prev == Some(&Tok::PathSep) {
                // A qualified call: windows_sys paths were checked above.
                let mut p = k;
                let mut first = None;
                while p >= 2 && tokens[p - 1] == Tok::PathSep {
                    if let Tok::Ident(seg) = &tokens[p - 2] {
                        first = Some(seg.as_str());
                        if seg == "windows_sys" {
                            break;
                        }
                    }
                    p -= 2;
                }
                if first == Some("thinagent_km_sys")
                    && let Some(lib) = km_sys.get(name)
                {
                    km_use(&mut uses, lib);
                }
                continue;
            }
            if imported_from_ws.contains(name) {
                continue;
            }
            if km_imported.contains(name) {
                if let Some(lib) = km_sys.get(name) {
                    km_use(&mut uses, lib);
                }
                continue;
            }
            if local_names.contains(name) {
                continue;
            }
            let Some(found) = bindings.get(name) else {
                continue;
            };
            if found.iter().all(|b| KERNEL_LIBS.contains(&b.lib.as_str())) {
                uses.insert(Use {
                    name: name.clone(),
                    lib: found[0].lib.clone(),
                    file: file.clone(),
                });
                continue;
            }
            let libs: BTreeSet<&str> = found.iter().map(|b| b.lib.as_str()).collect();
            offenders.push(format!(
                "{file}: {name} is bound by windows-sys to {libs:?} and thinagent-km-sys has no kernel declaration of it"
            ));
        }
    }
    offenders.sort();
    offenders.dedup();
    (offenders, uses)
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The windows-sys 0.61.2 source directory, from `cargo metadata`.
fn windows_sys_dir() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let run = |offline: bool| {
        let mut c = Command::new(&cargo);
        c.args(["metadata", "--format-version", "1", "--manifest-path"])
            .arg(root().join("Cargo.toml"));
        if offline {
            c.arg("--offline");
        }
        c.output().expect("running cargo metadata")
    };
    let mut out = run(true);
    if !out.status.success() {
        out = run(false);
    }
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = String::from_utf8(out.stdout).unwrap();
    const KEY: &str = "\"manifest_path\":\"";
    for (at, _) in json.match_indices(KEY) {
        let rest = &json[at + KEY.len()..];
        let path = &rest[..rest.find('"').unwrap()];
        let path = PathBuf::from(path.replace("\\\\", "\\"));
        let dir = path.parent().unwrap();
        if dir.file_name().is_some_and(|n| n == "windows-sys-0.61.2") {
            return dir.to_path_buf();
        }
    }
    panic!("windows-sys 0.61.2 is not in `cargo metadata`; the driver's bindings changed version");
}

fn read_rs_files(dir: &Path) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

type KmSys = (BTreeMap<String, String>, BTreeMap<String, Vec<String>>);

/// km-sys's kernel declarations and its re-exports of windows-sys modules.
fn km_sys_info() -> KmSys {
    let mut decls = BTreeMap::new();
    let mut reexports = BTreeMap::new();
    for (_, text) in read_rs_files(&root().join("crates/km-sys/src")) {
        parse_km_sys_declarations(&text, &mut decls);
        parse_km_sys_reexports(&text, &mut reexports);
    }
    (decls, reexports)
}

#[test]
fn the_driver_imports_only_from_kernel_modules() {
    let bindings = windows_sys_bindings(&windows_sys_dir());
    assert!(
        bindings.len() > 10_000,
        "only {} routines parsed from windows-sys",
        bindings.len()
    );
    // Sanity: the parser sees both kinds.
    assert!(
        bindings["FltRegisterFilter"]
            .iter()
            .any(|b| b.lib == "fltmgr.sys")
    );
    assert!(bindings["ZwOpenKey"].iter().all(|b| b.lib == "ntdll.dll"));
    let (km, reexports) = km_sys_info();
    assert_eq!(
        reexports
            .get("Minifilters")
            .map(|p| p.join("::"))
            .as_deref(),
        Some("Wdk::Storage::FileSystem::Minifilters")
    );
    assert_eq!(km.get("ZwOpenKey").map(String::as_str), Some("ntoskrnl"));
    assert_eq!(km.get("DbgPrintEx").map(String::as_str), Some("ntoskrnl"));
    let files = read_rs_files(&root().join("driver/windows"));
    let (offenders, uses) = check(&bindings, &km, &reexports, &files);
    let mut by_name: BTreeMap<&str, (BTreeSet<&str>, BTreeSet<&str>)> = BTreeMap::new();
    for u in &uses {
        let e = by_name.entry(&u.name).or_default();
        e.0.insert(&u.lib);
        e.1.insert(&u.file);
    }
    println!("{} kernel routines used by driver/windows:", by_name.len());
    for (name, (libs, files)) in &by_name {
        println!("  {name:40} {libs:?} {files:?}");
    }
    assert!(
        offenders.is_empty(),
        "driver/windows imports routines a kernel driver cannot:\n  {}",
        offenders.join("\n  ")
    );
    // docs/windows.md, "Kernel APIs": one row per routine, no stale rows.
    let docs = std::fs::read_to_string(root().join("docs/windows.md")).unwrap();
    let documented = kernel_api_table(&docs);
    let used: BTreeSet<&str> = by_name.keys().copied().collect();
    let undocumented: Vec<&&str> = used.iter().filter(|n| !documented.contains(**n)).collect();
    let stale: Vec<&String> = documented
        .iter()
        .filter(|n| !used.contains(n.as_str()))
        .collect();
    assert!(
        undocumented.is_empty() && stale.is_empty(),
        "docs/windows.md \"Kernel APIs\" table is out of date: add rows (header, doc page, IRQL) for \
         {undocumented:?}; remove rows for {stale:?}"
    );
    assert!(
        by_name.contains_key("FltRegisterFilter")
            || files.iter().all(|(_, t)| !t.contains("FltRegisterFilter(")),
        "the scan missed FltRegisterFilter"
    );
}

/// The routine names in the first column of the "Kernel APIs" table.
fn kernel_api_table(docs: &str) -> BTreeSet<String> {
    let Some(start) = docs.find("\n## Kernel APIs") else {
        return BTreeSet::new();
    };
    let section = &docs[start + 1..];
    let end = section[3..].find("\n## ").map_or(section.len(), |e| e + 3);
    section[..end]
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn a_seeded_copy_of_the_driver_fails() {
    let bindings = windows_sys_bindings(&windows_sys_dir());
    let (km, reexports) = km_sys_info();
    let mut files = read_rs_files(&root().join("driver/windows"));
    files.push((
        "seeded.rs".into(),
        "use thinagent_km_sys::fltmgr::windows_sys::Wdk::System::Registry::{ZwOpenKey, ZwQueryValueKey as Q};\n\
         fn f() { let _ = thinagent_km_sys::fltmgr::windows_sys::Wdk::System::SystemServices::DbgPrintEx; }\n"
            .into(),
    ));
    let (offenders, _) = check(&bindings, &km, &reexports, &files);
    let text = offenders.join("\n");
    assert!(text.contains("seeded.rs: ZwOpenKey comes from windows_sys::Wdk::System::Registry, which binds it to ntdll.dll"), "{text}");
    assert!(text.contains("seeded.rs: ZwQueryValueKey"), "{text}");
    assert!(text.contains("seeded.rs: DbgPrintEx comes from windows_sys::Wdk::System::SystemServices, which binds it to ntdll.dll"), "{text}");
    assert_eq!(offenders.len(), 3, "{text}");
}

const SAMPLE_BINDINGS: &str = r#"
windows_link::link!("ntdll.dll" "C" fn DbgPrintEx(componentid : u32, level : u32, format : windows_sys::core::PCSTR, ...) -> u32);
windows_link::link!("ntoskrnl.exe" "system" fn KeSetEvent(event : *mut KEVENT, increment : i32, wait : bool) -> i32);
"#;

const SAMPLE_KM_SYS: &str = r#"
#[cfg(windows)]
#[link(name = "ntoskrnl")]
unsafe extern "C" {
    /// `DbgPrintEx` (wdm.h)
    pub fn DbgPrintEx(ComponentId: u32, Level: u32, Format: *const u8, ...) -> u32;
}
"#;

fn sample_bindings() -> Bindings {
    let mut b = Bindings::new();
    parse_bindings("Wdk::System::SystemServices", SAMPLE_BINDINGS, &mut b);
    b
}

#[test]
fn checker_flags_dbgprintex_from_ntdll() {
    let bindings = sample_bindings();
    assert_eq!(bindings["DbgPrintEx"][0].lib, "ntdll.dll");
    let km = BTreeMap::new();
    let bad = r#"
use thinagent_km_sys::fltmgr::windows_sys::Wdk::System::SystemServices::{DbgPrintEx, KeSetEvent};
fn log() { unsafe { DbgPrintEx(77, 0, c"%s".as_ptr().cast()); KeSetEvent(p, 0, false); } }
"#;
    let (offenders, uses) = check(
        &bindings,
        &km,
        &BTreeMap::new(),
        &[("log.rs".into(), bad.into())],
    );
    assert_eq!(offenders.len(), 1, "{offenders:?}");
    assert!(offenders[0].contains("log.rs: DbgPrintEx comes from windows_sys::Wdk::System::SystemServices, which binds it to ntdll.dll"), "{offenders:?}");
    assert!(
        uses.iter()
            .any(|u| u.name == "KeSetEvent" && u.lib == "ntoskrnl.exe")
    );

    // Named only through a path or glob we cannot resolve, with no kernel
    // declaration: still an offender.
    let glob = "use thinagent_km_sys::fltmgr::windows_sys::Wdk::System::SystemServices::*;\nfn f() { DbgPrintEx(0, 0, p); }";
    let (offenders, _) = check(
        &bindings,
        &km,
        &BTreeMap::new(),
        &[("glob.rs".into(), glob.into())],
    );
    assert_eq!(offenders.len(), 2, "{offenders:?}");
    assert!(offenders.iter().any(|o| o.contains("glob import")));
    assert!(
        offenders
            .iter()
            .any(|o| o.contains("glob.rs: DbgPrintEx is bound by windows-sys to {\"ntdll.dll\"}"))
    );
}

#[test]
fn checker_accepts_the_km_sys_declaration() {
    let bindings = sample_bindings();
    let mut km = BTreeMap::new();
    parse_km_sys_declarations(SAMPLE_KM_SYS, &mut km);
    assert_eq!(km.get("DbgPrintEx").map(String::as_str), Some("ntoskrnl"));
    let good = r#"
// windows_sys::Wdk::System::SystemServices::DbgPrintEx would be wrong (a comment).
use thinagent_km_sys::nt::DbgPrintEx;
fn log() { let s = "DbgPrintEx from ntdll"; unsafe { thinagent_km_sys::nt::DbgPrintEx(77, 0, s.as_ptr()); } }
"#;
    let (offenders, uses) = check(
        &bindings,
        &km,
        &BTreeMap::new(),
        &[("log.rs".into(), good.into())],
    );
    assert!(offenders.is_empty(), "{offenders:?}");
    assert!(
        uses.iter()
            .any(|u| u.name == "DbgPrintEx" && u.lib == "ntoskrnl (km-sys)")
    );

    // km-sys itself must link a kernel module.
    let mut km_bad = BTreeMap::new();
    parse_km_sys_declarations(&SAMPLE_KM_SYS.replace("ntoskrnl", "ntdll"), &mut km_bad);
    let (offenders, _) = check(&bindings, &km_bad, &BTreeMap::new(), &[]);
    assert_eq!(
        offenders,
        ["km-sys declares DbgPrintEx from \"ntdll\", not a kernel module"]
    );
}

#[test]
fn use_trees_expand() {
    let t = tokenize("a::b::{c, d::{e as f, self}, g::*}");
    let mut paths = expand_use(&t);
    paths.sort();
    let s: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(s, ["a::b::c", "a::b::d", "a::b::d::e", "a::b::g::*"]);
}

#[test]
fn stripping_keeps_code_only() {
    let s = strip_comments_and_strings(
        "a /* ZwClose */ b // NtClose\nc \"ZwOpenKey\" r#\"x\"y\"# '\"' 'a d",
    );
    assert!(!s.contains("ZwClose") && !s.contains("NtClose") && !s.contains("ZwOpenKey"));
    let idents: Vec<_> = tokenize(&s)
        .into_iter()
        .filter_map(|t| match t {
            Tok::Ident(i) => Some(i),
            _ => None,
        })
        .collect();
    assert_eq!(idents, ["a", "b", "c", "a", "d"]);
}

#[test]
fn the_docs_table_is_read_from_its_section_only() {
    let docs = "# T\n## Other\n| `NotThis` | x |\n## Kernel APIs\ntext\n| routine | header |\n| --- | --- |\n\
                | `KeSetEvent` | wdm.h |\n| `IofCallDriver` (`IoCallDriver`) | wdm.h |\n## Next\n| `NorThis` | y |\n";
    let t = kernel_api_table(docs);
    assert_eq!(
        t.into_iter().collect::<Vec<_>>(),
        ["IofCallDriver", "KeSetEvent"]
    );
    assert!(kernel_api_table("# no section\n").is_empty());
}

/// Arms of windows-sys's `FLT_PARAMETERS` / `IO_STACK_LOCATION_0` that hold
/// `POINTER_ALIGNMENT` fields, which windows-sys 0.61.2 places wrongly on
/// 64-bit Windows (see `thinagent_km_sys::io_params`). `Create` is listed by
/// field: its `SecurityContext` and `Options` are at the right offsets.
const MISALIGNED_ARMS: [&str; 13] = [
    "Read",
    "Write",
    "QueryFileInformation",
    "SetFileInformation",
    "QueryEa",
    "QueryVolumeInformation",
    "SetVolumeInformation",
    "DirectoryControl",
    "FileSystemControl",
    "DeviceIoControl",
    "LockControl",
    "QuerySecurity",
    "QueryFile",
];
const MISALIGNED_CREATE_FIELDS: [&str; 5] = [
    "FileAttributes",
    "ShareAccess",
    "EaLength",
    "EaBuffer",
    "AllocationSize",
];

/// `Parameters.<arm>` reads through windows-sys whose layout is wrong.
fn misaligned_parameter_reads(files: &[(String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for (file, text) in files {
        let t = tokenize(&strip_comments_and_strings(text));
        for (i, tok) in t.iter().enumerate() {
            if *tok != Tok::Ident("Parameters".into()) || t.get(i + 1) != Some(&Tok::Punct('.')) {
                continue;
            }
            let Some(Tok::Ident(arm)) = t.get(i + 2) else {
                continue;
            };
            let field = match (t.get(i + 3), t.get(i + 4)) {
                (Some(Tok::Punct('.')), Some(Tok::Ident(f))) => f.as_str(),
                _ => "",
            };
            if MISALIGNED_ARMS.contains(&arm.as_str())
                || (arm == "Create" && MISALIGNED_CREATE_FIELDS.contains(&field))
            {
                out.push(format!(
                    "{file}: Parameters.{arm}.{field} is read with windows-sys's layout, which lacks \
                     POINTER_ALIGNMENT; cast the union to the thinagent_km_sys::io_params arm"
                ));
            }
        }
    }
    out
}

#[test]
fn no_parameter_arm_is_read_with_the_wrong_layout() {
    let files = read_rs_files(&root().join("driver/windows"));
    let bad = misaligned_parameter_reads(&files);
    assert!(bad.is_empty(), "{}", bad.join("\n"));

    // The check itself, on the reads this rule was written for.
    let seeded = r#"
fn f(iopb: *mut FLT_IO_PARAMETER_BLOCK, stack: *mut IO_STACK_LOCATION) {
    let ok = unsafe { (*iopb).Parameters.Create.Options };
    let a = unsafe { (*iopb).Parameters.SetFileInformation.FileInformationClass };
    let b = unsafe { (*stack).Parameters.DeviceIoControl };
    let c = unsafe { (*iopb).Parameters.Create.FileAttributes };
    // (*iopb).Parameters.Read.ByteOffset in a comment is fine
}
"#;
    let bad = misaligned_parameter_reads(&[("seeded.rs".into(), seeded.into())]);
    assert_eq!(bad.len(), 3, "{bad:?}");
    assert!(bad[0].contains("Parameters.SetFileInformation.FileInformationClass"));
    assert!(bad[1].contains("Parameters.DeviceIoControl."));
    assert!(bad[2].contains("Parameters.Create.FileAttributes"));
}
