//! `.reg` exports, as `regedit` and `reg export` write them.
//!
//! Accepted: UTF-16LE with a BOM (what both tools write for version 5), UTF-8
//! with or without a BOM, and single-byte text (read as Latin-1, for
//! `REGEDIT4` files in an ANSI code page); the headers
//! `Windows Registry Editor Version 5.00` and `REGEDIT4`; `[KEY]` and
//! `[-KEY]` lines; `"name"=` and `@=` value lines with `"string"`,
//! `dword:XXXXXXXX`, `hex:..`, `hex(N):..` data (continued over lines with a
//! trailing backslash) or `-` (delete the value); `;` comments; blank lines.
//!
//! Parsing is strict where regedit is lax: a line that is none of the above
//! is an error naming its number and what was expected, because a silently
//! skipped `Start` or `UpperFilters` line changes the computed boot order.
//!
//! Only keys under `HKEY_LOCAL_MACHINE\SYSTEM` (or `HKLM\SYSTEM`) feed the
//! model; keys under other roots (a whole-HKLM export has `SOFTWARE` too) are
//! skipped and counted in [`RegFile::ignored_keys`].

use thiserror::Error;

use super::value::StringEncoding;
use super::{RegKey, RegValue};

/// The export format named by the first line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegFormat {
    /// `Windows Registry Editor Version 5.00`: `hex(2)`/`hex(7)` strings are UTF-16LE.
    Regedit5,
    /// `REGEDIT4`: `hex(2)`/`hex(7)` strings are ANSI (one byte a character).
    Regedit4,
}

impl RegFormat {
    /// How `hex(1)`, `hex(2)` and `hex(7)` data encodes its strings.
    pub fn string_encoding(self) -> StringEncoding {
        match self {
            RegFormat::Regedit5 => StringEncoding::Utf16Le,
            RegFormat::Regedit4 => StringEncoding::Ansi,
        }
    }
}

/// One operation of a `.reg` file, in file order. Paths are relative to
/// `HKEY_LOCAL_MACHINE\SYSTEM` (the empty path is `SYSTEM` itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegOp {
    /// `[KEY]`: create the key (and its parents).
    AddKey {
        /// Path below `SYSTEM`.
        path: String,
        /// 1-based line number.
        line: usize,
    },
    /// `[-KEY]`: delete the key with everything under it.
    DeleteKey {
        /// Path below `SYSTEM`.
        path: String,
        /// 1-based line number.
        line: usize,
    },
    /// `"name"=data` (or `@=data`, name empty): set a value.
    SetValue {
        /// Path of the key below `SYSTEM`.
        key: String,
        /// Value name; empty for the default value.
        name: String,
        /// The data.
        value: RegValue,
        /// 1-based line number of the value's first line.
        line: usize,
    },
    /// `"name"=-`: delete a value.
    DeleteValue {
        /// Path of the key below `SYSTEM`.
        key: String,
        /// Value name; empty for the default value.
        name: String,
        /// 1-based line number.
        line: usize,
    },
}

/// A parsed `.reg` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegFile {
    /// The header's format.
    pub format: RegFormat,
    /// The operations on `HKEY_LOCAL_MACHINE\SYSTEM`, in file order.
    pub ops: Vec<RegOp>,
    /// Keys outside `HKEY_LOCAL_MACHINE\SYSTEM` that were skipped, with
    /// their line numbers.
    pub ignored_keys: Vec<(usize, String)>,
}

/// Why a `.reg` file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RegFileError {
    /// The bytes are not text in an encoding `.reg` files use.
    #[error("not a .reg export: {0}; save it again with regedit's Export or `reg export`")]
    Encoding(String),
    /// A line is not what the grammar expects there.
    #[error("line {line}: expected {expected}, found `{found}`")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// What the reader expected.
        expected: String,
        /// The offending text (shortened).
        found: String,
    },
}

fn syntax(line: usize, expected: impl Into<String>, found: &str) -> RegFileError {
    let mut found: String = found.trim().chars().take(80).collect();
    if found.is_empty() {
        found = "end of line".into();
    }
    RegFileError::Syntax {
        line,
        expected: expected.into(),
        found,
    }
}

const HEADER_V5: &str = "Windows Registry Editor Version 5.00";
const HEADER_V4: &str = "REGEDIT4";

/// Decodes a `.reg` file's bytes to text: UTF-16LE (BOM `FF FE`, or no BOM
/// and a NUL second byte), UTF-8 (with or without BOM), else Latin-1.
pub fn decode_reg_bytes(bytes: &[u8]) -> Result<String, RegFileError> {
    if bytes.starts_with(&[0xFE, 0xFF]) {
        return Err(RegFileError::Encoding(
            "UTF-16 big-endian is not an encoding regedit writes".into(),
        ));
    }
    let utf16 = if let Some(rest) = bytes.strip_prefix(&[0xFF, 0xFE]) {
        Some(rest)
    } else if bytes.len() >= 2 && bytes[0] != 0 && bytes[1] == 0 {
        Some(bytes)
    } else {
        None
    };
    if let Some(data) = utf16 {
        if !data.len().is_multiple_of(2) {
            return Err(RegFileError::Encoding(format!(
                "UTF-16LE text has an odd number of bytes ({})",
                data.len()
            )));
        }
        let units: Vec<u16> = data
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        return String::from_utf16(&units)
            .map_err(|e| RegFileError::Encoding(format!("invalid UTF-16LE text: {e}")));
    }
    let data = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(bytes);
    if data.contains(&0) {
        return Err(RegFileError::Encoding(
            "the text contains NUL bytes but is not UTF-16LE".into(),
        ));
    }
    Ok(match std::str::from_utf8(data) {
        Ok(s) => s.to_owned(),
        Err(_) => data.iter().map(|&b| char::from(b)).collect(),
    })
}

/// Reads a `.reg` file from its bytes (see [`decode_reg_bytes`]).
pub fn parse_reg_bytes(bytes: &[u8]) -> Result<RegFile, RegFileError> {
    parse_reg_str(&decode_reg_bytes(bytes)?)
}

/// Where value lines currently go.
enum Section {
    /// Before the first key line.
    None,
    /// Under `[KEY]` inside `SYSTEM`.
    Key(String),
    /// Under `[KEY]` outside `SYSTEM`: values are skipped.
    Ignored,
    /// Under `[-KEY]`: value lines are an error.
    Deleted(usize),
}

/// Reads a `.reg` file from text.
pub fn parse_reg_str(text: &str) -> Result<RegFile, RegFileError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    let mut i = 0;
    while i < lines.len() && lines[i].trim().is_empty() {
        i += 1;
    }
    let header = lines.get(i).map_or("", |l| l.trim());
    let format = if header == HEADER_V5 {
        RegFormat::Regedit5
    } else if header == HEADER_V4 {
        RegFormat::Regedit4
    } else {
        return Err(syntax(
            i + 1,
            format!("the header `{HEADER_V5}` or `{HEADER_V4}`"),
            header,
        ));
    };
    i += 1;

    let mut file = RegFile {
        format,
        ops: Vec::new(),
        ignored_keys: Vec::new(),
    };
    let mut section = Section::None;
    while i < lines.len() {
        let line_no = i + 1;
        let line = lines[i].trim_start();
        i += 1;
        if line.trim().is_empty() || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            let (delete, path) = parse_key_line(line, line_no)?;
            match system_relative(&path, line_no)? {
                Some(rel) if delete => {
                    file.ops.push(RegOp::DeleteKey {
                        path: rel,
                        line: line_no,
                    });
                    section = Section::Deleted(line_no);
                }
                Some(rel) => {
                    file.ops.push(RegOp::AddKey {
                        path: rel.clone(),
                        line: line_no,
                    });
                    section = Section::Key(rel);
                }
                None => {
                    file.ignored_keys.push((line_no, path));
                    section = if delete {
                        Section::Deleted(line_no)
                    } else {
                        Section::Ignored
                    };
                }
            }
            continue;
        }
        if line.starts_with('"') || line.starts_with('@') {
            // Gather continuation lines of hex data.
            let mut data_line = line.trim_end().to_owned();
            while data_line.ends_with('\\') && !ends_inside_quotes(&data_line) {
                data_line.pop();
                let next = lines.get(i).copied().unwrap_or("");
                if next.trim().is_empty() {
                    return Err(syntax(
                        i + 1,
                        "a continuation line after a trailing backslash",
                        next,
                    ));
                }
                data_line.push_str(next.trim());
                i += 1;
            }
            let (name, data) = parse_value_line(&data_line, line_no, format)?;
            match &section {
                Section::None => {
                    return Err(syntax(
                        line_no,
                        "a `[KEY]` line before the first value",
                        line,
                    ));
                }
                Section::Deleted(key_line) => {
                    return Err(syntax(
                        line_no,
                        format!(
                            "no values under the key deletion on line {key_line} (a `[KEY]` line first)"
                        ),
                        line,
                    ));
                }
                Section::Ignored => {}
                Section::Key(key) => file.ops.push(match data {
                    Some(value) => RegOp::SetValue {
                        key: key.clone(),
                        name,
                        value,
                        line: line_no,
                    },
                    None => RegOp::DeleteValue {
                        key: key.clone(),
                        name,
                        line: line_no,
                    },
                }),
            }
            continue;
        }
        return Err(syntax(
            line_no,
            "a `[KEY]` line, a `\"name\"=` or `@=` value line, a `;` comment or a blank line",
            line,
        ));
    }
    Ok(file)
}

/// True if `s` ends inside an open `"..."` (so a trailing backslash is
/// string content, not a continuation).
fn ends_inside_quotes(s: &str) -> bool {
    let mut inside = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => inside = !inside,
            '\\' if inside => {
                chars.next();
            }
            _ => {}
        }
    }
    inside
}

/// `[PATH]` or `[-PATH]` -> (delete, PATH).
fn parse_key_line(line: &str, line_no: usize) -> Result<(bool, String), RegFileError> {
    let line = line.trim_end();
    let Some(close) = line.rfind(']') else {
        return Err(syntax(line_no, "`]` closing the key path", line));
    };
    let trailing = line[close + 1..].trim();
    if !trailing.is_empty() && !trailing.starts_with(';') {
        return Err(syntax(line_no, "nothing after the key's `]`", trailing));
    }
    let inner = &line[1..close];
    let (delete, path) = match inner.strip_prefix('-') {
        Some(p) => (true, p),
        None => (false, inner),
    };
    let path = path.trim_end_matches('\\');
    if path.is_empty() {
        return Err(syntax(line_no, "a key path inside `[...]`", line));
    }
    Ok((delete, path.to_owned()))
}

/// Root names regedit writes, long and short; all but HKLM\SYSTEM are skipped.
const OTHER_ROOTS: [&str; 8] = [
    "HKEY_CURRENT_USER",
    "HKCU",
    "HKEY_CLASSES_ROOT",
    "HKCR",
    "HKEY_USERS",
    "HKU",
    "HKEY_CURRENT_CONFIG",
    "HKCC",
];

/// `HKEY_LOCAL_MACHINE\SYSTEM\X\Y` -> `Some("X\Y")`; other known roots ->
/// `None`; an unknown root is an error.
fn system_relative(path: &str, line_no: usize) -> Result<Option<String>, RegFileError> {
    let mut parts = path.split('\\');
    let root = parts.next().unwrap_or("");
    if root.eq_ignore_ascii_case("HKEY_LOCAL_MACHINE") || root.eq_ignore_ascii_case("HKLM") {
        return Ok(match parts.next() {
            Some(hive) if hive.eq_ignore_ascii_case("SYSTEM") => Some(
                parts
                    .filter(|p| !p.is_empty())
                    .collect::<Vec<_>>()
                    .join("\\"),
            ),
            _ => None,
        });
    }
    if OTHER_ROOTS.iter().any(|r| r.eq_ignore_ascii_case(root)) {
        return Ok(None);
    }
    Err(syntax(
        line_no,
        "a key path starting with `HKEY_LOCAL_MACHINE\\SYSTEM` (or another root key such as HKEY_CURRENT_USER)",
        root,
    ))
}

/// Reads a `"..."` string with `\\` and `\"` escapes starting at `s[0] == '"'`;
/// returns the string and the rest after the closing quote. Any other
/// backslash stays as written (regedit does the same).
fn parse_quoted(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices().skip(1);
    while let Some((idx, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[idx + 1..])),
            '\\' => match chars.next() {
                Some((_, '\\')) => out.push('\\'),
                Some((_, '"')) => out.push('"'),
                Some((_, other)) => {
                    out.push('\\');
                    out.push(other);
                }
                None => return None,
            },
            c => out.push(c),
        }
    }
    None
}

/// `"name"=data` / `@=data` -> (name, Some(value) or None for `-`).
fn parse_value_line(
    line: &str,
    line_no: usize,
    format: RegFormat,
) -> Result<(String, Option<RegValue>), RegFileError> {
    let (name, rest) = if let Some(rest) = line.strip_prefix('@') {
        (String::new(), rest)
    } else {
        parse_quoted(line).ok_or_else(|| syntax(line_no, "a value name closed by `\"`", line))?
    };
    let rest = rest.trim_start();
    let Some(data) = rest.strip_prefix('=') else {
        return Err(syntax(line_no, "`=` after the value name", rest));
    };
    let data = data.trim();
    if data == "-" {
        return Ok((name, None));
    }
    if data.starts_with('"') {
        let (s, after) = parse_quoted(data)
            .ok_or_else(|| syntax(line_no, "string data closed by `\"`", data))?;
        let after = after.trim();
        if !after.is_empty() && !after.starts_with(';') {
            return Err(syntax(line_no, "nothing after the closing `\"`", after));
        }
        return Ok((name, Some(RegValue::Sz(s))));
    }
    let lower = data.to_ascii_lowercase();
    if let Some(digits) = lower.strip_prefix("dword:") {
        let digits = digits.trim();
        let ok = !digits.is_empty()
            && digits.len() <= 8
            && digits.chars().all(|c| c.is_ascii_hexdigit());
        let value = ok
            .then(|| u32::from_str_radix(digits, 16).ok())
            .flatten()
            .ok_or_else(|| syntax(line_no, "1 to 8 hex digits after `dword:`", digits))?;
        return Ok((name, Some(RegValue::Dword(value))));
    }
    let (kind, bytes) = if let Some(bytes) = lower.strip_prefix("hex:") {
        (3, bytes)
    } else if let Some(rest) = lower.strip_prefix("hex(") {
        let Some((kind, bytes)) = rest.split_once("):") else {
            return Err(syntax(line_no, "`hex(N):` with a hex type number N", data));
        };
        let kind = u32::from_str_radix(kind.trim(), 16)
            .map_err(|_| syntax(line_no, "a hex type number in `hex(N):`", kind))?;
        (kind, bytes)
    } else {
        return Err(syntax(
            line_no,
            "value data: `\"string\"`, `dword:`, `hex:`, `hex(N):` or `-`",
            data,
        ));
    };
    let bytes = parse_hex_bytes(bytes, line_no)?;
    let value = if kind == 3 {
        RegValue::Binary(bytes)
    } else {
        RegValue::from_raw(kind, &bytes, format.string_encoding())
    };
    Ok((name, Some(value)))
}

/// `00,0a,ff` (spaces allowed, trailing comma allowed) -> bytes.
fn parse_hex_bytes(s: &str, line_no: usize) -> Result<Vec<u8>, RegFileError> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let s = s.strip_suffix(',').unwrap_or(s);
    s.split(',')
        .map(|b| {
            let b = b.trim();
            if b.is_empty() || b.len() > 2 {
                return Err(syntax(
                    line_no,
                    "comma-separated bytes of two hex digits",
                    b,
                ));
            }
            u8::from_str_radix(b, 16)
                .map_err(|_| syntax(line_no, "comma-separated bytes of two hex digits", b))
        })
        .collect()
}

impl RegFile {
    /// Applies the operations, in order, to a `SYSTEM` tree.
    pub fn apply_to(&self, system: &mut RegKey) {
        for op in &self.ops {
            match op {
                RegOp::AddKey { path, .. } => {
                    system.key_mut_or_create(path);
                }
                RegOp::DeleteKey { path, .. } => {
                    if path.is_empty() {
                        system.clear();
                    } else {
                        system.remove_key(path);
                    }
                }
                RegOp::SetValue {
                    key, name, value, ..
                } => system.key_mut_or_create(key).set_value(name, value.clone()),
                RegOp::DeleteValue { key, name, .. } => {
                    if let Some(k) = system.key_mut(key) {
                        k.remove_value(name);
                    }
                }
            }
        }
    }

    /// The `SYSTEM` tree this file describes (applied to an empty `SYSTEM`).
    pub fn system_tree(&self) -> RegKey {
        let mut system = RegKey::new("SYSTEM");
        self.apply_to(&mut system);
        system
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> RegFile {
        parse_reg_str(&format!("{HEADER_V5}\r\n\r\n{body}")).expect("parses")
    }

    fn err(body: &str) -> (usize, String) {
        match parse_reg_str(&format!("{HEADER_V5}\r\n\r\n{body}")) {
            Err(RegFileError::Syntax { line, expected, .. }) => (line, expected),
            other => panic!("expected a syntax error, got {other:?}"),
        }
    }

    fn utf16le_with_bom(s: &str) -> Vec<u8> {
        let mut out = vec![0xFF, 0xFE];
        out.extend(s.encode_utf16().flat_map(u16::to_le_bytes));
        out
    }

    const SAMPLE: &str = "[HKEY_LOCAL_MACHINE\\SYSTEM\\ControlSet001\\Services\\vmci]\r\n\
\"Type\"=dword:00000001\r\n\
\"Start\"=dword:00000000\r\n\
\"Group\"=\"System Bus Extender\"\r\n\
\"ImagePath\"=hex(2):5c,00,53,00,79,00,73,00,74,00,65,00,6d,00,52,00,6f,00,6f,00,\\\r\n\
  74,00,00,00\r\n";

    #[test]
    fn utf16_bom_and_utf8_with_and_without_bom_read_the_same() {
        let text = format!("{HEADER_V5}\r\n\r\n{SAMPLE}");
        let a = parse_reg_bytes(&utf16le_with_bom(&text)).unwrap();
        let mut utf8_bom = vec![0xEF, 0xBB, 0xBF];
        utf8_bom.extend(text.as_bytes());
        let b = parse_reg_bytes(&utf8_bom).unwrap();
        let c = parse_reg_bytes(text.as_bytes()).unwrap();
        assert_eq!(a, b);
        assert_eq!(b, c);
        let tree = a.system_tree();
        let vmci = tree.key(r"ControlSet001\Services\vmci").unwrap();
        assert_eq!(vmci.dword("Start"), Some(0));
        assert_eq!(vmci.dword("Type"), Some(1));
        assert_eq!(vmci.string("Group"), Some("System Bus Extender"));
        assert_eq!(
            vmci.value("ImagePath"),
            Some(&RegValue::ExpandSz(r"\SystemRoot".into()))
        );
    }

    #[test]
    fn utf16_without_bom_is_detected() {
        let text = format!("{HEADER_V5}\r\n{SAMPLE}");
        let bytes: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
        assert_eq!(parse_reg_bytes(&bytes).unwrap().format, RegFormat::Regedit5);
    }

    #[test]
    fn regedit4_hex2_is_ansi() {
        let f = parse_reg_str(
            "REGEDIT4\n\n[HKLM\\SYSTEM\\ControlSet001\\Services\\x]\n\
\"ImagePath\"=hex(2):41,42,00\n\"L\"=hex(7):61,00,62,63,00,00\n",
        )
        .unwrap();
        assert_eq!(f.format, RegFormat::Regedit4);
        let t = f.system_tree();
        let x = t.key(r"ControlSet001\Services\x").unwrap();
        assert_eq!(x.string("ImagePath"), Some("AB"));
        assert_eq!(x.strings("L"), Some(vec!["a", "bc"]));
    }

    #[test]
    fn every_data_form() {
        let f = parse(
            "[HKEY_LOCAL_MACHINE\\SYSTEM\\CurrentControlSet\\Control\\ServiceGroupOrder]\r\n\
@=\"default\"\r\n\
\"List\"=hex(7):41,00,00,00,42,00,20,00,43,00,00,00,00,00\r\n\
\"Q\"=hex(b):01,00,00,00,00,00,00,00\r\n\
\"B\"=hex:de,ad , BE,ef\r\n\
\"Empty\"=hex:\r\n\
\"None\"=hex(0):\r\n\
\"Link\"=hex(6):41,00\r\n\
\"Sz\"=hex(1):41,00,00,00\r\n\
\"D\"=hex(4):02,00,00,00\r\n\
\"Short\"=dword:a\r\n\
\"Upper\"=DWORD:FFFFFFFF\r\n",
        );
        let t = f.system_tree();
        let k = t
            .key(r"CurrentControlSet\Control\ServiceGroupOrder")
            .unwrap();
        assert_eq!(k.string(""), Some("default"));
        assert_eq!(k.strings("List"), Some(vec!["A", "B C"]));
        assert_eq!(k.value("Q"), Some(&RegValue::Qword(1)));
        assert_eq!(
            k.value("B"),
            Some(&RegValue::Binary(vec![0xde, 0xad, 0xbe, 0xef]))
        );
        assert_eq!(k.value("Empty"), Some(&RegValue::Binary(vec![])));
        assert_eq!(
            k.value("None"),
            Some(&RegValue::Other {
                kind: 0,
                data: vec![]
            })
        );
        assert_eq!(
            k.value("Link"),
            Some(&RegValue::Other {
                kind: 6,
                data: vec![0x41, 0]
            })
        );
        assert_eq!(k.value("Sz"), Some(&RegValue::Sz("A".into())));
        assert_eq!(k.dword("D"), Some(2));
        assert_eq!(k.dword("Short"), Some(10));
        assert_eq!(k.dword("Upper"), Some(u32::MAX));
    }

    #[test]
    fn escaped_names_and_strings() {
        let f = parse(
            "[HKLM\\SYSTEM\\S]\r\n\"a \\\"quoted\\\" name\"=\"C:\\\\Windows\\\\x \\\"y\\\"\"\r\n\
\"back\\\\slash\"=\"ends with \\\\\"\r\n\"plain\\n\"=\"keep\\t\"\r\n",
        );
        let t = f.system_tree();
        let s = t.key("S").unwrap();
        assert_eq!(s.string("a \"quoted\" name"), Some(r#"C:\Windows\x "y""#));
        assert_eq!(s.string(r"back\slash"), Some(r"ends with \"));
        assert_eq!(s.string(r"plain\n"), Some(r"keep\t"));
    }

    #[test]
    fn deletions_apply_in_order() {
        let f = parse(
            "[HKLM\\SYSTEM\\A\\B]\r\n\"x\"=dword:1\r\n\"y\"=dword:2\r\n@=\"d\"\r\n\
[HKLM\\SYSTEM\\A\\B]\r\n\"x\"=-\r\n@=-\r\n\
[HKLM\\SYSTEM\\A\\C]\r\n\
[-HKLM\\SYSTEM\\A\\B]\r\n\
[HKLM\\SYSTEM\\A\\D]\r\n\"z\"=dword:3\r\n\
[-HKLM\\SYSTEM\\A\\D]\r\n[HKLM\\SYSTEM\\A\\D]\r\n",
        );
        let t = f.system_tree();
        assert!(t.key(r"A\B").is_none());
        assert!(t.key(r"A\C").is_some());
        assert_eq!(t.key(r"A\D").unwrap().values().count(), 0);
        // The value deletions were recorded as such.
        assert!(f.ops.iter().any(|op| matches!(op,
            RegOp::DeleteValue { name, line: 9, .. } if name.is_empty())));

        let f = parse("[HKLM\\SYSTEM\\A]\r\n\"x\"=dword:1\r\n\"x\"=-\r\n");
        assert_eq!(f.system_tree().key("A").unwrap().values().count(), 0);
        let f = parse("[HKLM\\SYSTEM\\A]\r\n[-HKEY_LOCAL_MACHINE\\SYSTEM]\r\n");
        assert_eq!(f.system_tree().tree_key_count(), 1);
    }

    #[test]
    fn comments_blank_lines_and_other_roots() {
        let f = parse(
            "; a comment\r\n   \r\n[HKEY_LOCAL_MACHINE\\SOFTWARE\\Vendor]\r\n\"v\"=dword:1\r\n\
[HKEY_CURRENT_USER\\Software]\r\n[-HKCU\\Old]\r\n\
  ; indented comment\r\n[HKEY_LOCAL_MACHINE\\SYSTEM\\Select]\r\n\"Current\"=dword:00000002 \r\n",
        );
        assert_eq!(f.ignored_keys.len(), 3);
        assert_eq!(
            f.ignored_keys[0],
            (5, r"HKEY_LOCAL_MACHINE\SOFTWARE\Vendor".into())
        );
        let t = f.system_tree();
        assert_eq!(t.key("Select").unwrap().dword("current"), Some(2));
        assert_eq!(t.subkeys().count(), 1);
    }

    #[test]
    fn continuation_lines_join_hex_data() {
        let f = parse(
            "[HKLM\\SYSTEM\\K]\r\n\"M\"=hex(7):76,00,6d,00,\\\r\n    63,00,69,00,00,00,\\\r\n  76,00,00,00,00,00\r\n\"Next\"=dword:5\r\n",
        );
        let t = f.system_tree();
        let k = t.key("K").unwrap();
        assert_eq!(k.strings("M"), Some(vec!["vmci", "v"]));
        assert_eq!(k.dword("Next"), Some(5));
    }

    #[test]
    fn string_ending_in_backslash_is_not_a_continuation() {
        let f = parse("[HKLM\\SYSTEM\\K]\r\n\"P\"=\"C:\\\\\"\r\n\"Q\"=dword:1\r\n");
        let t = f.system_tree();
        assert_eq!(t.key("K").unwrap().string("P"), Some("C:\\"));
        assert_eq!(t.key("K").unwrap().dword("Q"), Some(1));
    }

    #[test]
    fn errors_name_the_line_and_what_was_expected() {
        assert!(matches!(
            parse_reg_str("Windows Registry Editor Version 4.00\r\n"),
            Err(RegFileError::Syntax { line: 1, .. })
        ));
        let e = parse_reg_str("\r\n\r\nnot a header").unwrap_err();
        assert!(
            e.to_string().starts_with("line 3: expected the header"),
            "{e}"
        );
        // Body lines start at line 3 in `err`.
        assert_eq!(err("\"v\"=dword:1\r\n").0, 3);
        assert!(err("\"v\"=dword:1\r\n").1.contains("[KEY]"));
        assert_eq!(
            err("[HKLM\\SYSTEM\\K]\r\n\"v\"=dword:123456789\r\n"),
            (4, "1 to 8 hex digits after `dword:`".into())
        );
        assert!(
            err("[HKLM\\SYSTEM\\K]\r\n\"v\"=dword:xyz\r\n")
                .1
                .contains("hex digits")
        );
        assert!(
            err("[HKLM\\SYSTEM\\K]\r\n\"v\"=hex:0g\r\n")
                .1
                .contains("two hex digits")
        );
        assert!(
            err("[HKLM\\SYSTEM\\K]\r\n\"v\"=hex:01,,02\r\n")
                .1
                .contains("two hex digits")
        );
        assert!(
            err("[HKLM\\SYSTEM\\K]\r\n\"v\"=hex(zz):01\r\n")
                .1
                .contains("type number")
        );
        assert!(
            err("[HKLM\\SYSTEM\\K]\r\n\"v\"=hex(2)01\r\n")
                .1
                .contains("hex(N):")
        );
        assert!(
            err("[HKLM\\SYSTEM\\K]\r\n\"v\"=str\r\n")
                .1
                .contains("value data")
        );
        assert!(
            err("[HKLM\\SYSTEM\\K]\r\n\"v\"=\"open\r\n")
                .1
                .contains("closed by")
        );
        assert!(
            err("[HKLM\\SYSTEM\\K]\r\n\"v\"=\"a\" b\r\n")
                .1
                .contains("after the closing")
        );
        assert!(
            err("[HKLM\\SYSTEM\\K]\r\n\"open=dword:1\r\n")
                .1
                .contains("value name")
        );
        assert!(
            err("[HKLM\\SYSTEM\\K]\r\n\"v\" dword:1\r\n")
                .1
                .contains("`=`")
        );
        assert!(err("[HKLM\\SYSTEM\\K\r\n").1.contains("`]`"));
        assert!(
            err("[HKLM\\SYSTEM\\K] junk\r\n")
                .1
                .contains("nothing after")
        );
        assert!(err("[]\r\n").1.contains("key path"));
        assert_eq!(err("[HKEY_LOCAL_MACHNE\\SYSTEM]\r\n").0, 3);
        assert!(
            err("[-HKLM\\SYSTEM\\K]\r\n\"v\"=dword:1\r\n")
                .1
                .contains("key deletion on line 3")
        );
        assert!(
            err("[HKLM\\SYSTEM\\K]\r\nStart=4\r\n")
                .1
                .contains("comment")
        );
        assert_eq!(err("[HKLM\\SYSTEM\\K]\r\n\"v\"=hex:01,\\\r\n").0, 5);
        let (line, expected) = err("[HKLM\\SYSTEM\\K]\r\n\"v\"=hex:01,\\\r\n  02,zz\r\n");
        assert_eq!(line, 4, "a continued value's error names its first line");
        assert!(expected.contains("two hex digits"));
    }

    #[test]
    fn encoding_errors() {
        assert!(matches!(
            decode_reg_bytes(&[0xFE, 0xFF, 0, 0x52]),
            Err(RegFileError::Encoding(_))
        ));
        assert!(matches!(
            decode_reg_bytes(&[0xFF, 0xFE, 0x52]),
            Err(RegFileError::Encoding(_))
        ));
        assert!(matches!(
            decode_reg_bytes(&[0x52, 0x45, 0, 0, 0]),
            Err(RegFileError::Encoding(_))
        ));
        // Single-byte ANSI text is read as Latin-1.
        let text =
            decode_reg_bytes(b"REGEDIT4\r\n[HKLM\\SYSTEM\\K]\r\n\"n\"=\"caf\xe9\"\r\n").unwrap();
        let f = parse_reg_str(&text).unwrap();
        assert_eq!(f.system_tree().key("K").unwrap().string("n"), Some("café"));
    }
}
