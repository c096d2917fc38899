//! `thinagent-diag agent-state`: asks the running driver for its state
//! through the control device `\\.\ThinAgent` (and optionally sets its live
//! `debugLevel`).
//!
//! The ABI (path, IOCTL codes, the `AgentState` byte layout) is
//! [`thinagent_guest::control`], the same code the driver serves it with.
//! Talking to the device needs Windows and an elevated prompt (the device's
//! ACL admits SYSTEM and Administrators only); decoding and printing are
//! portable and tested here from bytes.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Result;
use thinagent_guest::NtStatus;
use thinagent_guest::control::{AgentState, WIN32_PATH};
use thinagent_guest::params::FailMode;

/// `agent-state` options.
#[derive(clap::Args)]
pub struct AgentStateArgs {
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Set the driver's debugLevel (0 = AUDIT only ... 4 = DEBUG) before
    /// reading the state. Lasts until the driver restarts; the registry
    /// value `debugLevel` applies again at the next start.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=4))]
    pub debug_level: Option<u8>,
}

/// Runs the subcommand. Exit status: 0 state printed, 2 the device could
/// not be used (not Windows, driver not loaded, not elevated, bad reply).
pub fn run(args: &AgentStateArgs) -> Result<ExitCode> {
    let bytes = match device::query(args.debug_level) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    if let Some(level) = args.debug_level {
        eprintln!("debugLevel set to {level}");
    }
    let state = match AgentState::from_bytes(&bytes) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "error: {WIN32_PATH} returned {} bytes that are not an agent state ({e}); \
                 is thinagent-diag as new as the driver?",
                bytes.len()
            );
            return Ok(ExitCode::from(2));
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&render_json(&state))?);
    } else {
        print!("{}", render_text(&state));
    }
    Ok(ExitCode::SUCCESS)
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn fail_mode_name(m: FailMode) -> &'static str {
    match m {
        FailMode::Open => "open",
        FailMode::Closed => "closed",
    }
}

/// `0x80000011 (STATUS_DEVICE_BUSY)`, or `none` for 0 ("not yet").
fn status_text(s: NtStatus) -> String {
    if s.0 == 0 {
        return "none".into();
    }
    match s.name() {
        Some(n) => format!("{s} ({n})"),
        None => format!("{s}"),
    }
}

/// The state as a two-column table.
#[must_use]
pub fn render_text(s: &AgentState) -> String {
    let rows: [(&str, String); 16] = [
        ("connected to host", yes_no(s.connected).into()),
        ("provider captured", yes_no(s.provider_captured).into()),
        ("capture attempts", s.capture_attempts.to_string()),
        ("last capture status", status_text(s.last_capture_status)),
        ("sessions", s.sessions.to_string()),
        ("last session status", status_text(s.last_session_status)),
        ("queries", s.queries.to_string()),
        ("denials", s.denials.to_string()),
        ("timeouts", s.timeouts.to_string()),
        ("fail-mode decisions", s.fail_mode_decisions.to_string()),
        ("cache hits", s.cache_hits.to_string()),
        ("skipped", s.skipped.to_string()),
        ("read requests", s.read_requests.to_string()),
        ("rescans", s.rescans.to_string()),
        ("debugLevel", s.debug_level.to_string()),
        ("failMode", fail_mode_name(s.fail_mode).into()),
    ];
    let mut out = format!("ThinAgent driver state ({WIN32_PATH})\n");
    for (k, v) in rows {
        let _ = writeln!(out, "  {k:<20} {v}");
    }
    out
}

/// The state as one JSON object; statuses as `0x........` strings plus
/// their names.
#[must_use]
pub fn render_json(s: &AgentState) -> serde_json::Value {
    let status = |st: NtStatus| {
        serde_json::json!({
            "code": format!("{st}"),
            "name": st.name(),
        })
    };
    serde_json::json!({
        "connected": s.connected,
        "provider_captured": s.provider_captured,
        "capture_attempts": s.capture_attempts,
        "last_capture_status": status(s.last_capture_status),
        "sessions": s.sessions,
        "last_session_status": status(s.last_session_status),
        "queries": s.queries,
        "denials": s.denials,
        "timeouts": s.timeouts,
        "fail_mode_decisions": s.fail_mode_decisions,
        "cache_hits": s.cache_hits,
        "skipped": s.skipped,
        "read_requests": s.read_requests,
        "rescans": s.rescans,
        "debug_level": s.debug_level,
        "fail_mode": fail_mode_name(s.fail_mode),
    })
}

#[cfg(not(windows))]
mod device {
    /// Not Windows: there is no driver to ask.
    pub fn query(_debug_level: Option<u8>) -> Result<Vec<u8>, String> {
        Err(format!(
            "agent-state talks to the ThinAgent driver through {} and needs Windows; \
             run it in the guest, from an elevated prompt",
            super::WIN32_PATH
        ))
    }
}

#[cfg(windows)]
#[allow(unsafe_code)] // The crate forbids unsafe elsewhere; these are the FFI calls.
mod device {
    use std::ffi::c_void;
    use std::io;

    use thinagent_guest::control::{
        AgentState, ControlRequest, IOCTL_THINAGENT_GET_STATE, IOCTL_THINAGENT_SET_DEBUG_LEVEL,
        WIN32_PATH,
    };
    use windows_sys::Win32::Foundation::{
        CloseHandle, ERROR_ACCESS_DENIED, ERROR_FILE_NOT_FOUND, GENERIC_READ, GENERIC_WRITE,
        HANDLE, INVALID_HANDLE_VALUE,
    };
    use windows_sys::Win32::Storage::FileSystem::{CreateFileW, OPEN_EXISTING};
    use windows_sys::Win32::System::IO::DeviceIoControl;

    /// An open handle to the control device, closed on drop.
    struct Device(HANDLE);

    impl Drop for Device {
        fn drop(&mut self) {
            // SAFETY: a handle CreateFileW returned, closed once.
            unsafe { CloseHandle(self.0) };
        }
    }

    fn open(write: bool) -> Result<Device, String> {
        let path: Vec<u16> = WIN32_PATH.encode_utf16().chain(Some(0)).collect();
        let access = GENERIC_READ | if write { GENERIC_WRITE } else { 0 };
        // SAFETY: `path` is NUL-terminated UTF-16 that outlives the call; no
        // security attributes or template handle.
        let h = unsafe {
            CreateFileW(
                path.as_ptr(),
                access,
                0,
                std::ptr::null(),
                OPEN_EXISTING,
                0,
                std::ptr::null_mut(),
            )
        };
        if h == INVALID_HANDLE_VALUE {
            let e = io::Error::last_os_error();
            let hint = match e.raw_os_error().map(|c| c as u32) {
                Some(ERROR_FILE_NOT_FOUND) => {
                    "the driver is not loaded (check `sc query thinagent` and `fltmc filters`)"
                }
                Some(ERROR_ACCESS_DENIED) => {
                    "the device admits SYSTEM and Administrators only: run from an elevated prompt"
                }
                _ => "is the ThinAgent driver loaded?",
            };
            return Err(format!("cannot open {WIN32_PATH}: {e}; {hint}"));
        }
        Ok(Device(h))
    }

    fn ioctl(dev: &Device, code: u32, input: &[u8], output: &mut [u8]) -> io::Result<usize> {
        let mut returned = 0u32;
        // SAFETY: the buffers are valid for their lengths for the call;
        // synchronous handle, so no OVERLAPPED.
        let ok = unsafe {
            DeviceIoControl(
                dev.0,
                code,
                input.as_ptr().cast::<c_void>(),
                input.len() as u32,
                output.as_mut_ptr().cast::<c_void>(),
                output.len() as u32,
                &mut returned,
                std::ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(returned as usize)
    }

    /// Optionally sets the debug level, then reads the state's bytes.
    pub fn query(debug_level: Option<u8>) -> Result<Vec<u8>, String> {
        let dev = open(debug_level.is_some())?;
        if let Some(level) = debug_level {
            ioctl(
                &dev,
                IOCTL_THINAGENT_SET_DEBUG_LEVEL,
                &ControlRequest::debug_level_input(level),
                &mut [],
            )
            .map_err(|e| format!("setting debugLevel {level} through {WIN32_PATH}: {e}"))?;
        }
        // Room for later layout versions, which only append.
        let mut out = vec![0u8; AgentState::SIZE * 4];
        let n = ioctl(&dev, IOCTL_THINAGENT_GET_STATE, &[], &mut out)
            .map_err(|e| format!("reading the agent state from {WIN32_PATH}: {e}"))?;
        out.truncate(n);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AgentState {
        AgentState {
            connected: true,
            provider_captured: true,
            capture_attempts: 8,
            last_capture_status: NtStatus::STATUS_SUCCESS,
            sessions: 1,
            last_session_status: NtStatus::STATUS_DEVICE_BUSY,
            queries: 120,
            denials: 1,
            timeouts: 2,
            fail_mode_decisions: 3,
            cache_hits: 40,
            skipped: 500,
            read_requests: 6,
            rescans: 7,
            debug_level: 3,
            fail_mode: FailMode::Open,
        }
    }

    #[test]
    fn text_from_bytes() {
        let bytes = sample().to_bytes();
        let state = AgentState::from_bytes(&bytes).unwrap();
        let text = render_text(&state);
        assert!(text.starts_with("ThinAgent driver state (\\\\.\\ThinAgent)\n"));
        assert!(text.contains("  connected to host    yes\n"), "{text}");
        assert!(text.contains("  capture attempts     8\n"));
        assert!(text.contains("  last capture status  none\n"));
        assert!(
            text.contains("  last session status  0x80000011 (STATUS_DEVICE_BUSY)\n"),
            "{text}"
        );
        assert!(text.contains("  queries              120\n"));
        assert!(text.contains("  rescans              7\n"));
        assert!(text.contains("  debugLevel           3\n"));
        assert!(text.contains("  failMode             open\n"));
        assert_eq!(text.lines().count(), 17);
    }

    #[test]
    fn json_from_bytes() {
        let mut s = sample();
        s.fail_mode = FailMode::Closed;
        s.connected = false;
        let state = AgentState::from_bytes(&s.to_bytes()).unwrap();
        let v = render_json(&state);
        assert_eq!(v["connected"], false);
        assert_eq!(v["fail_mode"], "closed");
        assert_eq!(v["cache_hits"], 40);
        assert_eq!(v["last_session_status"]["code"], "0x80000011");
        assert_eq!(v["last_session_status"]["name"], "STATUS_DEVICE_BUSY");
        assert_eq!(v["last_capture_status"]["code"], "0x00000000");
        assert_eq!(v.as_object().unwrap().len(), 16);
    }

    #[cfg(not(windows))]
    #[test]
    fn off_windows_the_device_is_refused_with_a_reason() {
        let e = device::query(None).unwrap_err();
        assert!(e.contains("needs Windows"), "{e}");
        assert!(e.contains(r"\\.\ThinAgent"), "{e}");
    }
}
