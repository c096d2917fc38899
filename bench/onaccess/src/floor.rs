//! The floor programs of `bench/cold_open.sh`: the least any fanotify
//! on-access scanner can cost per cold open, measured on the same machine in
//! the same run as ThinAgent.
//!
//! - `floor-allow --watch PATH`: a bare responder. One fanotify group in the
//!   content class (`FAN_CLASS_CONTENT`), one `FAN_OPEN_PERM` mark on the
//!   mount holding PATH, one thread that answers `FAN_ALLOW` to every event
//!   as soon as it has read it: per open, the opener waits for one switch to
//!   the responder and back, nothing else.
//! - `floor-roundtrip --watch PATH --connect SOCKET [--max-bytes N]`: the
//!   same, plus per event one request/response over a Unix stream socket:
//!   it reads the file through the event's descriptor (`pread`, up to N
//!   bytes, 64 KiB by default; 0 = the whole file), sends those bytes in one
//!   message and waits for a 1-byte answer before it allows. That is the
//!   shape of a cold open when the agent sends the content with the event
//!   and gets one verdict back: one round trip, no scanning.
//! - `floor-echo --listen SOCKET`: the other end of that socket, a trivial
//!   server: per message (4-byte little-endian length, then the bytes) it
//!   answers one byte. One connection at a time, single thread.
//!
//! The fanotify programs print `ready` to their `--ready-file` once the mark
//! is placed, and on SIGTERM or SIGINT one line of counters on stdout
//! (`events=N allowed=N overflows=N bytes_sent=B`) before they exit 0, so a
//! script can check that the opens it timed were really answered by them.
//!
//! No `unsafe`: nix wraps the system calls (the same crate as
//! `crates/linux-agent`).

#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::fanotify::{
    EventFFlags, Fanotify, FanotifyResponse, InitFlags, MarkFlags, MaskFlags, Response,
};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// Default most bytes `floor-roundtrip` sends per event.
pub const DEFAULT_MAX_BYTES: usize = 64 * 1024;

/// Counters printed at exit.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Events read (permission events and overflows).
    pub events: u64,
    /// `FAN_ALLOW` answers written.
    pub allowed: u64,
    /// Queue overflows (events without a descriptor).
    pub overflows: u64,
    /// Content bytes sent to the echo server.
    pub bytes_sent: u64,
}

impl Counters {
    /// The line printed at exit.
    #[must_use]
    pub fn render(&self) -> String {
        format!(
            "events={} allowed={} overflows={} bytes_sent={}",
            self.events, self.allowed, self.overflows, self.bytes_sent
        )
    }
}

/// What a responder does with each permission event before it allows it.
pub trait PerEvent {
    /// Called with the event's descriptor (the kernel's own open of the
    /// file); returns the content bytes it moved.
    fn handle(&mut self, fd: BorrowedFd<'_>) -> io::Result<u64>;
}

/// `floor-allow`: nothing.
pub struct AllowOnly;

impl PerEvent for AllowOnly {
    fn handle(&mut self, _fd: BorrowedFd<'_>) -> io::Result<u64> {
        Ok(0)
    }
}

/// `floor-roundtrip`: read, send, wait for one byte.
pub struct RoundTrip {
    stream: UnixStream,
    /// 4-byte length prefix, then the content; its length is the read size.
    buf: Vec<u8>,
    /// Most content bytes per message; `None` = the whole file.
    max_bytes: Option<usize>,
}

impl RoundTrip {
    /// Connects to the echo server at `socket`.
    pub fn connect(socket: &Path, max_bytes: Option<usize>) -> io::Result<Self> {
        let stream = UnixStream::connect(socket)?;
        let first = max_bytes.map_or(DEFAULT_MAX_BYTES, |m| m.min(DEFAULT_MAX_BYTES));
        Ok(RoundTrip {
            stream,
            buf: vec![0; 4 + first],
            max_bytes,
        })
    }

    /// Reads the content into `buf[4..]`: one `pread` when the file fits
    /// (a short read is the end of a regular file), more only in
    /// whole-file mode, growing the buffer (kept for the next event).
    fn read_content(&mut self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        let mut got = 0usize;
        loop {
            let room = self.buf.len() - 4 - got;
            let n = loop {
                match nix::sys::uio::pread(fd, &mut self.buf[4 + got..], got as i64) {
                    Ok(n) => break n,
                    Err(Errno::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
            };
            got += n;
            if n < room || n == 0 {
                return Ok(got);
            }
            // The buffer is full: the file may go on.
            match self.max_bytes {
                Some(max) if got >= max => return Ok(got),
                Some(max) => {
                    let len = (self.buf.len() * 2).min(4 + max);
                    self.buf.resize(len, 0);
                }
                None => {
                    let len = self.buf.len() * 2;
                    self.buf.resize(len, 0);
                }
            }
        }
    }
}

impl PerEvent for RoundTrip {
    fn handle(&mut self, fd: BorrowedFd<'_>) -> io::Result<u64> {
        let n = self.read_content(fd)?;
        let len = u32::try_from(n).map_err(|_| io::Error::other("file over 4 GiB"))?;
        self.buf[..4].copy_from_slice(&len.to_le_bytes());
        self.stream.write_all(&self.buf[..4 + n])?;
        let mut answer = [0u8; 1];
        self.stream.read_exact(&mut answer)?;
        Ok(n as u64)
    }
}

/// Blocks SIGTERM and SIGINT for this thread and returns a descriptor that
/// becomes readable when one arrives (the loop polls it with the group).
/// Call before any other thread exists.
pub fn termination_fd() -> io::Result<SignalFd> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.thread_block()?;
    Ok(SignalFd::with_flags(
        &mask,
        SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
    )?)
}

/// The group: content class, non-blocking, event descriptors read-only.
/// `FAN_OPEN_PERM` on the mount holding `watch`.
pub fn group(watch: &Path) -> io::Result<Fanotify> {
    let fan = Fanotify::init(
        InitFlags::FAN_CLASS_CONTENT | InitFlags::FAN_CLOEXEC | InitFlags::FAN_NONBLOCK,
        EventFFlags::O_RDONLY | EventFFlags::O_LARGEFILE | EventFFlags::O_CLOEXEC,
    )
    .map_err(|e| io::Error::other(format!("fanotify_init: {e} (needs root)")))?;
    fan.mark(
        MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_MOUNT,
        MaskFlags::FAN_OPEN_PERM,
        nix::fcntl::AT_FDCWD,
        Some(watch),
    )
    .map_err(|e| io::Error::other(format!("fanotify_mark {}: {e}", watch.display())))?;
    Ok(fan)
}

/// The responder's loop: `poll` on the group and the termination
/// descriptor, read what is queued, handle and allow each event, until
/// SIGTERM or SIGINT. Single thread.
pub fn serve(
    fan: &Fanotify,
    stop: &SignalFd,
    per_event: &mut dyn PerEvent,
) -> io::Result<Counters> {
    let mut c = Counters::default();
    loop {
        let mut fds = [
            PollFd::new(fan.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        if fds[1].any().unwrap_or(false) {
            return Ok(c);
        }
        if !fds[0].any().unwrap_or(false) {
            continue;
        }
        let events = match fan.read_events() {
            Ok(events) => events,
            Err(Errno::EAGAIN | Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for event in &events {
            c.events += 1;
            let Some(fd) = event.fd() else {
                c.overflows += 1;
                continue;
            };
            if event.mask().contains(MaskFlags::FAN_OPEN_PERM) {
                // A failed round trip still allows: the floor never blocks
                // an open, and the error ends the program after the answer.
                let moved = per_event.handle(fd);
                fan.write_response(FanotifyResponse::new(fd, Response::FAN_ALLOW))?;
                c.allowed += 1;
                c.bytes_sent += moved?;
            }
        }
        // Dropping the events closes their descriptors.
    }
}

/// Echo server: answers one byte per length-prefixed message, one
/// connection after the other, until SIGTERM or SIGINT (checked between
/// connections and while idle).
pub fn echo(listener: &UnixListener, stop: &SignalFd) -> io::Result<u64> {
    let mut messages = 0u64;
    let mut buf = vec![0u8; 4 + DEFAULT_MAX_BYTES];
    loop {
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        if fds[1].any().unwrap_or(false) {
            return Ok(messages);
        }
        let (mut conn, _) = listener.accept()?;
        messages += serve_echo(&mut conn, &mut buf)?;
    }
}

/// One connection of the echo server: reads as much as one `read` gives
/// (usually the whole message), then the rest of the message if any, and
/// answers. Returns the messages answered when the peer closes.
pub fn serve_echo(conn: &mut (impl Read + Write), buf: &mut Vec<u8>) -> io::Result<u64> {
    let mut messages = 0u64;
    // Bytes of the next message(s) already in `buf[..have]`.
    let mut have = 0usize;
    loop {
        while have < 4 {
            let n = conn.read(&mut buf[have..])?;
            if n == 0 {
                return if have == 0 {
                    Ok(messages)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "partial length",
                    ))
                };
            }
            have += n;
        }
        let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let end = 4 + len;
        if buf.len() < end {
            buf.resize(end, 0);
        }
        while have < end {
            let n = conn.read(&mut buf[have..])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "partial message",
                ));
            }
            have += n;
        }
        conn.write_all(&[0])?;
        messages += 1;
        // The floor's client sends one message at a time; keep any surplus.
        buf.copy_within(end..have, 0);
        have -= end;
    }
}

/// Command-line options of the floor programs: `--key value` pairs.
#[derive(Debug, Default)]
pub struct Options {
    /// `--watch PATH`.
    pub watch: Option<PathBuf>,
    /// `--connect SOCKET`.
    pub connect: Option<PathBuf>,
    /// `--listen SOCKET`.
    pub listen: Option<PathBuf>,
    /// `--ready-file PATH`.
    pub ready_file: Option<PathBuf>,
    /// `--max-bytes N` (0 = whole file).
    pub max_bytes: Option<usize>,
}

impl Options {
    /// Parses `args` (without the program name), accepting only `allowed`
    /// keys.
    pub fn parse(args: &[String], allowed: &[&str]) -> Result<Options, String> {
        let mut o = Options::default();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let key = arg
                .strip_prefix("--")
                .filter(|k| allowed.contains(k))
                .ok_or_else(|| format!("unexpected argument {arg:?}"))?;
            let value = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
            match key {
                "watch" => o.watch = Some(value.into()),
                "connect" => o.connect = Some(value.into()),
                "listen" => o.listen = Some(value.into()),
                "ready-file" => o.ready_file = Some(value.into()),
                "max-bytes" => {
                    o.max_bytes = Some(
                        value
                            .parse()
                            .map_err(|_| format!("--max-bytes expects a number, got {value:?}"))?,
                    );
                }
                _ => return Err(format!("unexpected argument {arg:?}")),
            }
        }
        Ok(o)
    }
}

/// Writes `ready` to the ready file, if one was asked for.
pub fn announce_ready(ready_file: Option<&Path>) -> io::Result<()> {
    match ready_file {
        Some(p) => std::fs::write(p, "ready\n"),
        None => Ok(()),
    }
}

/// Runs a fanotify floor program: group and mark, ready file, loop, counters.
pub fn run_responder(
    name: &str,
    usage: &str,
    allowed: &[&str],
    make: impl FnOnce(&Options) -> io::Result<Box<dyn PerEvent>>,
) -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = (|| -> Result<Counters, String> {
        let opts = Options::parse(&args, allowed).map_err(|e| format!("{e}\n{usage}"))?;
        let watch = opts.watch.clone().ok_or_else(|| usage.to_string())?;
        let stop = termination_fd().map_err(|e| format!("signals: {e}"))?;
        let mut per_event = make(&opts).map_err(|e| e.to_string())?;
        let fan = group(&watch).map_err(|e| e.to_string())?;
        announce_ready(opts.ready_file.as_deref()).map_err(|e| format!("ready file: {e}"))?;
        serve(&fan, &stop, per_event.as_mut()).map_err(|e| e.to_string())
    })();
    match result {
        Ok(c) => {
            println!("{}", c.render());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A duplex stream over byte buffers: reads come from `input`, writes
    /// go to `output`; `read` hands out at most `step` bytes at a time.
    struct Duplex {
        input: Vec<u8>,
        at: usize,
        step: usize,
        output: Vec<u8>,
    }

    impl Read for Duplex {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.step).min(self.input.len() - self.at);
            buf[..n].copy_from_slice(&self.input[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    impl Write for Duplex {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn message(len: usize) -> Vec<u8> {
        let mut m = (len as u32).to_le_bytes().to_vec();
        m.extend((0..len).map(|i| i as u8));
        m
    }

    #[test]
    fn echo_answers_one_byte_per_message_whatever_the_read_sizes() {
        for step in [1, 3, 7, 4096, 1 << 20] {
            let mut input = Vec::new();
            for len in [0, 1, 5, 100_000, 3] {
                input.extend(message(len));
            }
            let mut conn = Duplex {
                input,
                at: 0,
                step,
                output: Vec::new(),
            };
            let mut buf = vec![0; 16];
            assert_eq!(serve_echo(&mut conn, &mut buf).unwrap(), 5, "step {step}");
            assert_eq!(conn.output, vec![0; 5]);
        }
    }

    #[test]
    fn echo_reports_a_cut_message() {
        let mut input = message(10);
        input.truncate(8);
        let mut conn = Duplex {
            input,
            at: 0,
            step: 64,
            output: Vec::new(),
        };
        let mut buf = vec![0; 64];
        assert!(serve_echo(&mut conn, &mut buf).is_err());
    }

    #[test]
    fn options_accept_only_the_allowed_keys() {
        let args: Vec<String> = ["--watch", "/mnt", "--max-bytes", "0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let o = Options::parse(&args, &["watch", "max-bytes"]).unwrap();
        assert_eq!(o.watch.as_deref(), Some(Path::new("/mnt")));
        assert_eq!(o.max_bytes, Some(0));
        assert!(Options::parse(&args, &["watch"]).is_err());
        assert!(Options::parse(&args[..1], &["watch"]).is_err());
    }

    #[test]
    fn round_trip_reads_the_first_bytes_or_the_whole_file() {
        use std::os::fd::AsFd;
        let path = std::env::temp_dir().join(format!("floor-test-{}", std::process::id()));
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let (a, _b) = UnixStream::pair().unwrap();
        for (max, want) in [
            (Some(DEFAULT_MAX_BYTES), DEFAULT_MAX_BYTES),
            (Some(100_000), 100_000),
            (None, data.len()),
        ] {
            let mut rt = RoundTrip {
                stream: a.try_clone().unwrap(),
                buf: vec![0; 4 + max.unwrap_or(DEFAULT_MAX_BYTES).min(DEFAULT_MAX_BYTES)],
                max_bytes: max,
            };
            let n = rt.read_content(file.as_fd()).unwrap();
            assert_eq!(n, want, "{max:?}");
            assert_eq!(&rt.buf[4..4 + n], &data[..n]);
        }
        std::fs::remove_file(&path).unwrap();
    }
}
