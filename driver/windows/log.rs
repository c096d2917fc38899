//! The driver's log sink: [`thinagent_guest::LogRecord`]s formatted by the
//! guest crate (the seed's `LEVEL: Routine : message: 0xSTATUS` shape) and
//! printed with `DbgPrintEx` under `DPFLTR_IHVDRIVER_ID`, so
//! `thinagent-diag decode-log` reads them back.
//!
//! Two filters apply: the agent's `debugLevel` (0 = AUDIT only … 4 = DEBUG,
//! changed at run time through the control device), then Windows' own Debug
//! Print Filter: `ERROR` and `AUDIT` lines go out at `DPFLTR_ERROR_LEVEL`,
//! which is always shown; the others at WARNING/TRACE/INFO levels, shown when
//! `HKLM\SYSTEM\CurrentControlSet\Control\Session Manager\Debug Print Filter`
//! `IHVDRIVER` has the bits set (docs/windows.md, "Reading the log").
//!
//! Callable at any IRQL ≤ DIRQL: the line is formatted into a stack buffer
//! and printed with `%s` of non-paged (stack) ANSI text, which `DbgPrintEx`
//! allows at raised IRQL (its documentation, "Remarks").

use core::sync::atomic::{AtomicU8, Ordering};

use thinagent_guest::{Level, LevelFilter, LogLine, LogRecord};
use thinagent_km_sys::nt::{
    DPFLTR_ERROR_LEVEL, DPFLTR_IHVDRIVER_ID, DPFLTR_INFO_LEVEL, DPFLTR_TRACE_LEVEL,
    DPFLTR_WARNING_LEVEL,
};

/// Longest line printed; longer ones are cut by `LogLine` (marked `...`).
/// `DbgPrintEx` itself truncates at 512 bytes.
const LINE_MAX: usize = 384;

/// The current `debugLevel` (0..=4). Starts at the guest default until
/// `DriverEntry` applies the registry value.
static DEBUG_LEVEL: AtomicU8 = AtomicU8::new(
    thinagent_guest::Params::new(thinagent_guest::policy::PathStyle::Windows).debug_level,
);

/// Sets the `debugLevel` filter (clamped to 0..=4 by the caller's `Params`
/// rules; values above 4 act as 4).
pub fn set_debug_level(level: u8) {
    DEBUG_LEVEL.store(level, Ordering::Relaxed);
}

/// The current `debugLevel`.
#[must_use]
pub fn debug_level() -> u8 {
    DEBUG_LEVEL.load(Ordering::Relaxed)
}

/// Whether a line of `level` would be printed (check before building
/// expensive arguments such as hex dumps).
#[must_use]
pub fn enabled(level: Level) -> bool {
    LevelFilter::from_debug_level(u32::from(debug_level())).enabled(level)
}

/// Prints one record if `debugLevel` lets it through.
pub fn emit(record: &LogRecord<'_>) {
    if !enabled(record.level) {
        return;
    }
    let line: LogLine<LINE_MAX> = LogLine::format(record);
    let mut buf = [0u8; LINE_MAX + 2];
    let text = line.as_bytes();
    // LogLine never holds NUL bytes it did not get from the message; cut at
    // the first one so DbgPrintEx prints what precedes it.
    let n = text.iter().position(|&b| b == 0).unwrap_or(text.len());
    buf[..n].copy_from_slice(&text[..n]);
    buf[n] = b'\n';
    buf[n + 1] = 0;
    let dpfltr_level = match record.level {
        Level::Audit | Level::Error => DPFLTR_ERROR_LEVEL,
        Level::Warn => DPFLTR_WARNING_LEVEL,
        Level::Info => DPFLTR_INFO_LEVEL,
        Level::Debug => DPFLTR_TRACE_LEVEL,
    };
    // SAFETY: "%s" with one NUL-terminated ANSI buffer on this stack, which
    // outlives the call; DbgPrintEx is callable at any IRQL for such text.
    unsafe {
        thinagent_km_sys::nt::DbgPrintEx(
            DPFLTR_IHVDRIVER_ID,
            dpfltr_level,
            c"%s".as_ptr().cast(),
            buf.as_ptr(),
        );
    }
}

/// `klog!(Level::Info, routine::X, "fmt", args...)`, optionally
/// `; status` at the end for the trailing `: 0xSTATUS`.
#[macro_export]
macro_rules! klog {
    ($level:expr, $routine:expr, $($arg:tt)+) => {
        $crate::windows::log::emit_with($level, $routine, None, format_args!($($arg)+))
    };
}

/// Like [`klog!`] with a trailing NTSTATUS: `klog_status!(level, routine, status, "fmt", args...)`.
#[macro_export]
macro_rules! klog_status {
    ($level:expr, $routine:expr, $status:expr, $($arg:tt)+) => {
        $crate::windows::log::emit_with(
            $level,
            $routine,
            Some($status),
            format_args!($($arg)+),
        )
    };
}

/// The function behind [`klog!`] and [`klog_status!`].
pub fn emit_with(
    level: Level,
    routine: &str,
    status: Option<i32>,
    message: core::fmt::Arguments<'_>,
) {
    if !enabled(level) {
        return;
    }
    let mut record = LogRecord::new(level, routine, message);
    if let Some(s) = status {
        record = record.with_status(thinagent_guest::NtStatus(s as u32));
    }
    emit(&record);
}
