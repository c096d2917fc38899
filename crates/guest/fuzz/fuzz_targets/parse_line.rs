//! Log lines come from outside (a customer's captured driver log, ours or
//! VMware's): parsing must never panic, and a line that parses must format
//! back to a line that parses to the same fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use thinagent_guest::{LogLine, LogRecord, parse_line};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = core::str::from_utf8(data) else {
        return;
    };
    let Some(parsed) = parse_line(text) else {
        return;
    };
    let _ = parsed.key_value();
    let message = parsed.message;
    let line: LogLine<4096> = match parsed.status {
        Some(s) => LogLine::format(
            &LogRecord::new(parsed.level, parsed.routine, format_args!("{message}")).with_status(s),
        ),
        None => LogLine::format(&LogRecord::new(
            parsed.level,
            parsed.routine,
            format_args!("{message}"),
        )),
    };
    if line.as_str().len() < 4000 {
        let again = parse_line(line.as_str()).expect("our own line must parse");
        assert_eq!(again.level, parsed.level);
        assert_eq!(again.status, parsed.status);
    }
});
