//! windows-sys drops the headers' `POINTER_ALIGNMENT` on request-parameter
//! fields (`DECLSPEC_ALIGN(8)` under `_WIN64`; the metadata behind windows-sys
//! loses it), so on 64-bit Windows some arms of `FLT_PARAMETERS` and
//! `IO_STACK_LOCATION`'s `Parameters` have their fields at the wrong
//! offsets there: `Parameters.DeviceIoControl.IoControlCode` at 8 instead of
//! 16, `Parameters.SetFileInformation.FileInformationClass` at 4 instead of 8.
//! The driver reads those arms through `thinagent_km_sys::io_params`, which
//! has the headers' layouts. This test fails on any `Parameters.<arm>` read of
//! an affected arm in `driver/windows/*.rs` (comments and strings left out),
//! and checks itself on seeded reads.
//!
//! A source check because the binary cannot show it: a read at the wrong
//! offset compiles and links (docs/windows.md, "Kernel APIs").

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
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
