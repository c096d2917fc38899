//! A connected socket in a tokio reactor that wakes its runtime only for
//! bytes to read.
//!
//! tokio registers its sockets for reading *and* writing (edge-triggered).
//! On a Unix or TCP stream every segment the peer consumes gives the sender's
//! socket write space, and each such edge wakes a runtime that registered for
//! writing: once per message the peer reads, a wakeup with nothing to do
//! (measured on a cold open: the scanner woke twice where once does, the
//! agent about three times where twice does), and the peer's `recv` pays an
//! inter-processor wakeup for it.
//! Here the socket is registered for readability only; a write is tried
//! directly, and only a write that finds the socket full registers a
//! duplicate of the descriptor for writability, dropped again once a write
//! goes through without waiting. No crate offers this (tokio's `AsyncFd` is the tool; the
//! stream types above it fix their interest), so it is written here.
//!
//! Both ends use it: the Linux agent for its scanner connection, the
//! scanner for the guests its Unix and TCP listeners accept. With both, a
//! cold open costs the scanner one wakeup instead of two, and the agent two
//! instead of about three (`bench/README.md`). vsock connections keep
//! tokio-vsock's registration: no vsock transport runs on the machines this
//! is tested on.
//!
//! The crate's one `unsafe` registers a descriptor it owns with the
//! reactor (tokio has no safe constructor for that any more).

#![cfg(unix)]
#![deny(unsafe_code)]
#![warn(missing_docs)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use nix::errno::Errno;
use nix::sys::socket::MsgFlags;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// A connected stream socket (Unix or TCP) in the current tokio runtime.
#[derive(Debug)]
pub struct QuietSocket {
    /// The socket, registered for readability only.
    read: AsyncFd<OwnedFd>,
    /// A duplicate of it registered for writability, while writes wait
    /// for room.
    write: Option<AsyncFd<OwnedFd>>,
    /// The last write waited for room (returned `Pending`).
    waited: bool,
}

/// Registers `fd` with the current runtime's reactor for `interest`.
fn register(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    #[allow(
        unsafe_code,
        reason = "tokio registers a raw descriptor only through an unsafe constructor"
    )]
    // SAFETY: the `AsyncFd` owns `fd`, an `OwnedFd` nothing else closes, so
    // the descriptor stays open and names the same socket for as long as
    // it is registered, and `as_raw_fd` always returns it.
    let registered = unsafe { AsyncFd::register_with_interest(fd, interest) };
    registered.map_err(io::Error::from)
}

impl QuietSocket {
    /// Takes a connected stream socket (it is made non-blocking).
    ///
    /// # Errors
    /// Setting `O_NONBLOCK` or registering with the reactor failed.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        let flags = nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
        Ok(QuietSocket {
            read: register(fd, Interest::READABLE)?,
            write: None,
            waited: false,
        })
    }

    fn send(&self, data: &[u8]) -> io::Result<usize> {
        loop {
            match nix::sys::socket::send(
                self.read.get_ref().as_raw_fd(),
                data,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            ) {
                Err(Errno::EINTR) => {}
                r => return r.map_err(io::Error::from),
            }
        }
    }
}

impl AsyncRead for QuietSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.read.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let unfilled_len = unfilled.len();
            let read = guard.try_io(|fd| {
                loop {
                    match nix::unistd::read(fd.get_ref(), unfilled) {
                        Err(Errno::EINTR) => {}
                        r => return r.map_err(io::Error::from),
                    }
                }
            });
            match read {
                Ok(Ok(n)) => {
                    if n > 0 && n < unfilled_len {
                        // A stream socket that gave less than asked has
                        // nothing more queued now (tokio's own streams
                        // assume the same): no second read just to see
                        // `EAGAIN`. Bytes arriving later raise a new edge.
                        guard.clear_ready();
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // Read dry: the readiness was cleared; wait for the next.
                Err(_would_block) => {}
            }
        }
    }
}

impl AsyncWrite for QuietSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            match self.send(data) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => {
                    if !std::mem::take(&mut self.waited) {
                        // Through without waiting: room again, so no more
                        // write-space wakeups until the socket is full the
                        // next time. (While writes keep waiting, a bulk
                        // transfer, the registration stays.)
                        self.write = None;
                    }
                    return Poll::Ready(r);
                }
            }
            if self.write.is_none() {
                let dup = self.read.get_ref().try_clone()?;
                self.write = Some(register(dup, Interest::WRITABLE)?);
            }
            let Some(write) = self.write.as_ref() else {
                unreachable!("registered above")
            };
            match write.poll_write_ready(cx) {
                Poll::Pending => {
                    self.waited = true;
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                // Room was signalled (maybe before the send above failed):
                // forget it and try again; a send that still finds the
                // socket full then waits for the next signal.
                Poll::Ready(Ok(mut guard)) => guard.clear_ready(),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = nix::sys::socket::shutdown(
            self.read.get_ref().as_raw_fd(),
            nix::sys::socket::Shutdown::Write,
        );
        Poll::Ready(match r {
            Ok(()) | Err(Errno::ENOTCONN) => Ok(()),
            Err(e) => Err(e.into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A pair: the quiet side and a plain tokio side.
    fn pair() -> (QuietSocket, tokio::net::UnixStream) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        (
            QuietSocket::new(a.into()).unwrap(),
            tokio::net::UnixStream::from_std(b).unwrap(),
        )
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_write_larger_than_the_socket_buffer_waits_for_room_and_arrives_whole() {
        let (mut quiet, mut peer) = pair();
        // Far more than a Unix socket buffers (about 200 KiB): the writer
        // finds it full many times and must wait for the slow reader.
        let data: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let expect = data.clone();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 7000];
            loop {
                let n = peer.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                if got.len() % 3 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            (got, peer)
        });
        // On this one-thread runtime the reader runs only while the writer
        // waits: the write completes only if waiting for room works.
        tokio::time::timeout(std::time::Duration::from_secs(30), quiet.write_all(&data))
            .await
            .expect("the writer was never woken when room came")
            .unwrap();
        quiet.shutdown().await.unwrap();
        let (got, mut peer) = reader.await.unwrap();
        assert_eq!(got.len(), expect.len());
        assert!(got == expect, "bytes in order");

        // The other way: what the peer writes is read, then its end.
        peer.write_all(b"verdict").await.unwrap();
        drop(peer);
        let mut back = Vec::new();
        quiet.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"verdict");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_read_waits_for_bytes_and_a_closed_peer_is_an_error_on_write() {
        let (mut quiet, mut peer) = pair();
        let mut buf = [0u8; 16];
        // Nothing yet: the read waits.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), quiet.read(&mut buf))
                .await
                .is_err()
        );
        peer.write_all(b"abc").await.unwrap();
        assert_eq!(quiet.read(&mut buf).await.unwrap(), 3);
        assert_eq!(&buf[..3], b"abc");
        drop(peer);
        assert_eq!(quiet.read(&mut buf).await.unwrap(), 0, "end of stream");
        // Writing to a closed peer fails (EPIPE), no SIGPIPE.
        let mut failed = false;
        for _ in 0..4 {
            if quiet.write_all(b"x").await.is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed);
    }
}
