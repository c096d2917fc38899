//! Debug-log lines in the seed's shape: `LEVEL: Routine : message: 0xSTATUS`.
//!
//! The VMware thin agent prints lines such as
//! `ERROR: VSockLayer_Init : VMCISock_WskCaptureProviderNPI: 0x80000011`; our
//! agent prints the same shape, so one decoder ([`parse_line`]) reads both.
//!
//! * Formatting writes into any [`core::fmt::Write`]; [`LogLine`] is a
//!   fixed-capacity buffer for `DbgPrintEx`-style sinks (no allocation, safe
//!   truncation on a char boundary).
//! * Levels, most to least severe: `AUDIT` (always printed: load/unload and
//!   verdict audit trail), `ERROR`, `WARN`, `INFO`, `DEBUG`. The registry
//!   `debugLevel` 0..=4 selects the most verbose level printed
//!   ([`LevelFilter`]): 0 = AUDIT only, 1 = +ERROR, 2 = +WARN, 3 = +INFO,
//!   4 = +DEBUG.
//! * The status suffix is `": 0x"` followed by exactly eight hex digits, as
//!   [`NtStatus`]'s `Display` prints it.

use core::fmt;

use crate::status::NtStatus;

/// Routine names used in our agent's log lines (the second field).
pub mod routine {
    /// Driver / agent start-up and unload.
    pub const DRIVER_ENTRY: &str = "DriverEntry";
    /// Reading registry / config parameters (the parameter dump).
    pub const READ_PARAMS: &str = "ReadParams";
    /// The bounded capture loop for the vSockets provider.
    pub const VSOCK_CAPTURE: &str = "VsockCapture";
    /// Connecting to the host scanner.
    pub const VSOCK_CONNECT: &str = "VsockConnect";
    /// The protocol session with the scanner.
    pub const SESSION: &str = "Session";
    /// The file-open filter (pre-create / fanotify).
    pub const OPEN_FILTER: &str = "OpenFilter";
    /// The verdict cache.
    pub const VERDICT_CACHE: &str = "VerdictCache";
}

/// Severity of a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Level {
    /// Always printed, whatever the debug level.
    Audit,
    /// Failures.
    Error,
    /// Suspicious conditions.
    Warn,
    /// Milestones.
    Info,
    /// Details (parameter dumps, buffers).
    Debug,
}

impl Level {
    /// All levels, most severe first.
    pub const ALL: [Level; 5] = [
        Level::Audit,
        Level::Error,
        Level::Warn,
        Level::Info,
        Level::Debug,
    ];

    /// The tag printed at the start of the line.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Level::Audit => "AUDIT",
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
        }
    }

    /// The `debugLevel` from which this level is printed (AUDIT: 0).
    #[must_use]
    pub const fn verbosity(self) -> u8 {
        match self {
            Level::Audit => 0,
            Level::Error => 1,
            Level::Warn => 2,
            Level::Info => 3,
            Level::Debug => 4,
        }
    }

    /// Parses a level tag (`WARNING` and `TRACE` are accepted as `WARN` and
    /// `DEBUG`).
    #[must_use]
    pub fn parse(tag: &str) -> Option<Level> {
        Some(match tag {
            "AUDIT" => Level::Audit,
            "ERROR" => Level::Error,
            "WARN" | "WARNING" => Level::Warn,
            "INFO" => Level::Info,
            "DEBUG" | "TRACE" => Level::Debug,
            _ => return None,
        })
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which levels are printed, from the `debugLevel` parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LevelFilter(u8);

impl LevelFilter {
    /// Highest `debugLevel`.
    pub const MAX_DEBUG_LEVEL: u8 = 4;

    /// From `debugLevel` (values above 4 act as 4).
    #[must_use]
    pub const fn from_debug_level(level: u32) -> Self {
        LevelFilter(if level > Self::MAX_DEBUG_LEVEL as u32 {
            Self::MAX_DEBUG_LEVEL
        } else {
            level as u8
        })
    }

    /// The effective `debugLevel`.
    #[must_use]
    pub const fn debug_level(self) -> u8 {
        self.0
    }

    /// `true` if lines of `level` are printed (AUDIT always is).
    #[must_use]
    pub const fn enabled(self, level: Level) -> bool {
        level.verbosity() <= self.0
    }
}

/// One log line before formatting.
#[derive(Clone, Copy, Debug)]
pub struct LogRecord<'a> {
    /// Severity.
    pub level: Level,
    /// Routine name (see [`routine`]).
    pub routine: &'a str,
    /// Message text.
    pub message: fmt::Arguments<'a>,
    /// Status appended as `: 0xXXXXXXXX`, if any.
    pub status: Option<NtStatus>,
}

impl<'a> LogRecord<'a> {
    /// A record without status.
    #[must_use]
    pub const fn new(level: Level, routine: &'a str, message: fmt::Arguments<'a>) -> Self {
        LogRecord {
            level,
            routine,
            message,
            status: None,
        }
    }

    /// The same record with `status` appended.
    #[must_use]
    pub const fn with_status(mut self, status: NtStatus) -> Self {
        self.status = Some(status);
        self
    }
}

impl fmt::Display for LogRecord<'_> {
    /// `LEVEL: Routine : message[: 0xSTATUS]`, without a line terminator.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} : {}", self.level, self.routine, self.message)?;
        if let Some(s) = self.status {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

/// Writes `record` (no line terminator) into `w`.
pub fn write_record<W: fmt::Write + ?Sized>(w: &mut W, record: &LogRecord<'_>) -> fmt::Result {
    write!(w, "{record}")
}

/// A fixed-capacity UTF-8 line buffer implementing [`fmt::Write`].
///
/// Text beyond `N` bytes (and everything written after it) is dropped at a
/// char boundary and
/// [`LogLine::is_truncated`] becomes `true`; writes never fail, so a long
/// message cannot make the caller lose the line.
#[derive(Clone)]
pub struct LogLine<const N: usize> {
    buf: [u8; N],
    len: usize,
    truncated: bool,
}

impl<const N: usize> Default for LogLine<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> fmt::Debug for LogLine<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogLine")
            .field("text", &self.as_str())
            .field("truncated", &self.truncated)
            .finish()
    }
}

impl<const N: usize> LogLine<N> {
    /// An empty line.
    #[must_use]
    pub const fn new() -> Self {
        LogLine {
            buf: [0; N],
            len: 0,
            truncated: false,
        }
    }

    /// A line holding `record`, formatted.
    #[must_use]
    pub fn format(record: &LogRecord<'_>) -> Self {
        let mut l = Self::new();
        // Writing into a LogLine never fails; a failing Display impl inside the
        // message would only cut the text short.
        let _ = write_record(&mut l, record);
        l
    }

    /// The text written so far.
    #[must_use]
    pub fn as_str(&self) -> &str {
        // Only whole chars are ever copied in, so this cannot fail.
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }

    /// The bytes written so far (for sinks that take a byte count).
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// `true` if some text did not fit.
    #[must_use]
    pub const fn is_truncated(&self) -> bool {
        self.truncated
    }

    /// Bytes used.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.len
    }

    /// `true` if nothing has been written.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Empties the line.
    pub fn clear(&mut self) {
        self.len = 0;
        self.truncated = false;
    }
}

impl<const N: usize> fmt::Write for LogLine<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.truncated {
            // Keep the text a prefix of what was written: once cut, stay cut.
            return Ok(());
        }
        let room = N - self.len;
        let take = if s.len() <= room {
            s.len()
        } else {
            self.truncated = true;
            let mut cut = room;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            cut
        };
        self.buf[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

/// A decoded log line, borrowing from the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParsedLine<'a> {
    /// Severity.
    pub level: Level,
    /// Routine name.
    pub routine: &'a str,
    /// Message, without the status suffix.
    pub message: &'a str,
    /// The trailing `: 0xXXXXXXXX` status, if present.
    pub status: Option<NtStatus>,
}

impl<'a> ParsedLine<'a> {
    /// Splits a `key: value` message at its last `": "`, e.g.
    /// `("umcMsgTimeoutMs", "2000")`.
    #[must_use]
    pub fn key_value(&self) -> Option<(&'a str, &'a str)> {
        self.message.rsplit_once(": ")
    }
}

/// Decodes one line of the shape `LEVEL: Routine : message[: 0xSTATUS]`.
///
/// Surrounding whitespace (including `\r\n`) is ignored. A trailing
/// `: 0x` + exactly 8 hex digits is taken as the status; other hex (such as a
/// 16-digit pointer) stays in the message. Returns `None` for any other shape.
#[must_use]
pub fn parse_line(line: &str) -> Option<ParsedLine<'_>> {
    let line = line.trim();
    let (tag, rest) = line.split_once(": ")?;
    let level = Level::parse(tag)?;
    let (routine, message) = match rest.split_once(" : ") {
        Some(parts) => parts,
        // an empty message loses its trailing space to the trim
        None => (rest.strip_suffix(" :")?, ""),
    };
    let routine = routine.trim();
    if routine.is_empty() || routine.contains(char::is_whitespace) {
        return None;
    }
    let (message, status) = match message.rsplit_once(": ") {
        Some((m, s)) if is_status_token(s) => (m, NtStatus::parse(s)),
        _ => (message, None),
    };
    Some(ParsedLine {
        level,
        routine,
        message,
        status,
    })
}

fn is_status_token(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && (b.starts_with(b"0x") || b.starts_with(b"0X"))
        && b[2..].iter().all(u8::is_ascii_hexdigit)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::fmt::Write as _;
    use proptest::prelude::*;
    use std::format;
    use std::string::ToString;

    /// Listing 1 of the seed: the VMware thin agent's lines, verbatim.
    const SEED_LISTING_1: &str = "\
DEBUG: VFileUmcReadParams : umcMsgTimeoutMs: 2000
DEBUG: VFileUmcReadParams : umcMsgTimeout100Ns: -20000000
INFO: DriverEntry : Created EPSec control device: 0xfffffa8003e1a6a0.
DEBUG: VSockLayer_Init : Initializing VSockLayer module
ERROR: VSockLayer_Init : VMCISock_WskCaptureProviderNPI: 0x80000011
ERROR: VFileSocketMgr_Init : Failed to initialize vsock layer: 0x80000011
ERROR: DriverEntry : VFileSocketMgr_Init() failed: 0x80000011
AUDIT: DriverEntry : vfileFilter build-2530600 load failed: 0x80000011
";

    #[test]
    fn parses_every_line_of_the_seed_listing() {
        let busy = Some(NtStatus::STATUS_DEVICE_BUSY);
        let want = [
            (
                Level::Debug,
                "VFileUmcReadParams",
                "umcMsgTimeoutMs: 2000",
                None,
            ),
            (
                Level::Debug,
                "VFileUmcReadParams",
                "umcMsgTimeout100Ns: -20000000",
                None,
            ),
            (
                Level::Info,
                "DriverEntry",
                "Created EPSec control device: 0xfffffa8003e1a6a0.",
                None,
            ),
            (
                Level::Debug,
                "VSockLayer_Init",
                "Initializing VSockLayer module",
                None,
            ),
            (
                Level::Error,
                "VSockLayer_Init",
                "VMCISock_WskCaptureProviderNPI",
                busy,
            ),
            (
                Level::Error,
                "VFileSocketMgr_Init",
                "Failed to initialize vsock layer",
                busy,
            ),
            (
                Level::Error,
                "DriverEntry",
                "VFileSocketMgr_Init() failed",
                busy,
            ),
            (
                Level::Audit,
                "DriverEntry",
                "vfileFilter build-2530600 load failed",
                busy,
            ),
        ];
        let lines: std::vec::Vec<_> = SEED_LISTING_1.lines().collect();
        assert_eq!(lines.len(), 8);
        for (line, (level, routine, message, status)) in lines.iter().zip(want) {
            let p = parse_line(line).unwrap_or_else(|| panic!("{line}"));
            assert_eq!(
                p,
                ParsedLine {
                    level,
                    routine,
                    message,
                    status
                },
                "{line}"
            );
            // formatting the parsed line gives the original back
            let rec = LogRecord {
                level,
                routine,
                message: format_args!("{message}"),
                status,
            };
            assert_eq!(rec.to_string(), *line);
        }
        let p = parse_line(lines[0]).unwrap();
        assert_eq!(p.key_value(), Some(("umcMsgTimeoutMs", "2000")));
    }

    #[test]
    fn formats_our_lines() {
        let l = LogLine::<128>::format(
            &LogRecord::new(
                Level::Error,
                routine::VSOCK_CAPTURE,
                format_args!("capture IOCTL 0x{:08X} failed", 0x8103_20C0u32),
            )
            .with_status(NtStatus::STATUS_DEVICE_BUSY),
        );
        assert_eq!(
            l.as_str(),
            "ERROR: VsockCapture : capture IOCTL 0x810320C0 failed: 0x80000011"
        );
        assert!(!l.is_truncated());
        let p = parse_line(l.as_str()).unwrap();
        assert_eq!(p.status, Some(NtStatus::STATUS_DEVICE_BUSY));
        assert_eq!(p.message, "capture IOCTL 0x810320C0 failed");
    }

    #[test]
    fn rejects_other_shapes() {
        for bad in [
            "",
            "hello",
            "DEBUG:x : y",
            "NOTE: A : b",
            "INFO: : b",
            "INFO: A B : c",
            "INFO: A: b",
        ] {
            assert_eq!(parse_line(bad), None, "{bad}");
        }
        let p = parse_line("  WARNING: X : y: 0x1234\r\n").unwrap();
        assert_eq!(
            (p.level, p.message, p.status),
            (Level::Warn, "y: 0x1234", None)
        );
    }

    #[test]
    fn filter() {
        let f0 = LevelFilter::from_debug_level(0);
        assert!(f0.enabled(Level::Audit) && !f0.enabled(Level::Error));
        let f4 = LevelFilter::from_debug_level(99);
        assert_eq!(f4.debug_level(), 4);
        assert!(Level::ALL.iter().all(|l| f4.enabled(*l)));
        let f2 = LevelFilter::from_debug_level(2);
        assert!(f2.enabled(Level::Warn) && !f2.enabled(Level::Info));
        for l in Level::ALL {
            assert_eq!(Level::parse(l.as_str()), Some(l));
        }
    }

    #[test]
    fn truncates_on_char_boundary() {
        let mut l = LogLine::<5>::new();
        write!(l, "abcä€").unwrap(); // 'ä' is 2 bytes: "abcä" = 5
        assert_eq!(l.as_str(), "abcä");
        assert!(l.is_truncated());
        l.clear();
        write!(l, "ab€€").unwrap();
        assert_eq!(l.as_str(), "ab€");
        assert_eq!(l.len(), 5);
        let mut z = LogLine::<0>::new();
        write!(z, "x").unwrap();
        assert!(z.is_empty() && z.is_truncated());
    }

    proptest! {
        #[test]
        fn logline_never_breaks_utf8(parts in proptest::collection::vec("\\PC{0,12}", 0..8)) {
            let mut l = LogLine::<37>::new();
            let mut all = std::string::String::new();
            for p in &parts {
                write!(l, "{p}").unwrap();
                all.push_str(p);
            }
            prop_assert!(all.starts_with(l.as_str()));
            prop_assert_eq!(l.is_truncated(), l.len() < all.len());
        }

        #[test]
        fn format_parse_roundtrip(
            level in proptest::sample::select(&Level::ALL[..]),
            routine in "[A-Za-z_][A-Za-z0-9_]{0,20}",
            message in "[ -~]{0,40}",
            status in proptest::option::of(any::<u32>()),
        ) {
            let status = status.map(NtStatus);
            let text = format!("{}", LogRecord { level, routine: &routine, message: format_args!("{message}"), status });
            let p = parse_line(&text);
            // messages that themselves end in ": 0x........" are ambiguous without a status
            if status.is_some() || !message.trim_end().rsplit_once(": ").is_some_and(|(_, s)| is_status_token(s)) {
                let p = p.expect("our own line parses");
                prop_assert_eq!(p.level, level);
                prop_assert_eq!(p.routine, routine.as_str());
                prop_assert_eq!(p.status, status);
                if status.is_some() {
                    prop_assert_eq!(p.message, message.as_str());
                }
            }
        }
    }
}
