//! Log lines in the driver's shape, `LEVEL: Routine : message[: 0xSTATUS]`,
//! written to stderr (journald keeps them under the systemd unit).

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};

use thinagent_guest::{Level, LevelFilter, LogRecord, NtStatus};

/// Routine names of the Linux agent's own lines (the driver's names from
/// `thinagent_guest::log::routine` are used where they apply).
pub mod routine {
    /// Setting up and removing fanotify marks, reading events.
    pub const FANOTIFY: &str = "Fanotify";
    /// Periodic and final counters.
    pub const STATS: &str = "Stats";
    pub use thinagent_guest::log::routine::*;
}

/// `--log-level`: the most verbose level printed (AUDIT lines always are).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    /// AUDIT and ERROR.
    Error,
    /// + WARN.
    Warn,
    /// + INFO (default).
    Info,
    /// + DEBUG (one line per checked open).
    Debug,
}

impl LogLevel {
    /// The driver's `debugLevel` equivalent.
    #[must_use]
    pub fn filter(self) -> LevelFilter {
        LevelFilter::from_debug_level(match self {
            LogLevel::Error => 1,
            LogLevel::Warn => 2,
            LogLevel::Info => 3,
            LogLevel::Debug => 4,
        })
    }
}

/// A `debugLevel` (0..=4) set at run time by a host policy (§14.6), for
/// every [`Logger`] of the process; `u8::MAX`: none, each logger's own.
static HOST_LEVEL: AtomicU8 = AtomicU8::new(u8::MAX);

/// Sets the log level of the whole agent from a host policy's
/// `debug_level` (0: AUDIT only, 1: + ERROR, 2: + WARN, 3: + INFO, 4: +
/// DEBUG), replacing `--log-level` until the agent restarts.
pub fn set_host_debug_level(level: u8) {
    HOST_LEVEL.store(level.min(LevelFilter::MAX_DEBUG_LEVEL), Ordering::Relaxed);
}

/// Writes records at or above a level to stderr, one `write` per line.
#[derive(Clone, Copy, Debug)]
pub struct Logger {
    filter: LevelFilter,
}

impl Logger {
    /// A logger printing what `level` enables.
    #[must_use]
    pub fn new(level: LogLevel) -> Self {
        Logger {
            filter: level.filter(),
        }
    }

    /// Whether lines of `level` are printed.
    #[must_use]
    pub fn enabled(&self, level: Level) -> bool {
        self.filter().enabled(level)
    }

    fn filter(&self) -> LevelFilter {
        match HOST_LEVEL.load(Ordering::Relaxed) {
            u8::MAX => self.filter,
            n => LevelFilter::from_debug_level(n.into()),
        }
    }

    /// Prints one line (if its level is enabled).
    pub fn log(&self, level: Level, routine: &str, message: fmt::Arguments<'_>) {
        self.emit(&LogRecord::new(level, routine, message));
    }

    /// Prints one line with a status suffix.
    pub fn log_status(
        &self,
        level: Level,
        routine: &str,
        status: NtStatus,
        message: fmt::Arguments<'_>,
    ) {
        self.emit(&LogRecord::new(level, routine, message).with_status(status));
    }

    fn emit(&self, record: &LogRecord<'_>) {
        if !self.filter().enabled(record.level) {
            return;
        }
        let line = format!("{record}\n");
        // A closed stderr must not stop the agent.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}
