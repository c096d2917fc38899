//! [`StreamDecoder`]: frames out of a byte stream that arrives in arbitrary
//! pieces, in a fixed buffer the caller owns (no allocation).

use crate::decode::{Decoded, Frame, decode_frame_for};
use crate::{DecodeError, MAX_FRAME_LEN, PROTOCOL_VERSION};

/// Buffers received bytes and yields whole frames.
///
/// `B` is the storage: `[u8; MAX_FRAME_LEN]` in a driver, `Vec<u8>` or
/// `Box<[u8]>` on a host. Frames longer than the storage (or than
/// [`set_max_frame_len`](Self::set_max_frame_len)) are
/// [`DecodeError::FrameTooLarge`].
///
/// Typical loop: write received bytes into [`spare_mut`](Self::spare_mut) and
/// [`commit`](Self::commit) them (or [`push`](Self::push) a slice), then call
/// [`next_frame`](Self::next_frame) until it returns `Ok(None)`. A recoverable
/// error has already been skipped when it is returned; after a fatal error
/// every call returns that error again.
#[derive(Debug, Clone)]
pub struct StreamDecoder<B> {
    buf: B,
    start: usize,
    end: usize,
    max_frame_len: usize,
    session_version: u16,
    fatal: Option<DecodeError>,
}

impl<const L: usize> StreamDecoder<[u8; L]> {
    /// A decoder over a zeroed `[u8; L]` of its own, usable in `const` and
    /// `static` initialisers (so a large decoder need never be built on a
    /// small stack, e.g. a kernel thread's). Same frame limit as
    /// [`StreamDecoder::new`]: `min(L, MAX_FRAME_LEN)`.
    #[must_use]
    pub const fn new_zeroed() -> Self {
        Self {
            buf: [0; L],
            start: 0,
            end: 0,
            max_frame_len: if L < MAX_FRAME_LEN { L } else { MAX_FRAME_LEN },
            session_version: PROTOCOL_VERSION,
            fatal: None,
        }
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> StreamDecoder<B> {
    /// A decoder using `buf` as storage, with a frame limit of
    /// `min(buf.len(), MAX_FRAME_LEN)`.
    pub fn new(buf: B) -> Self {
        let max_frame_len = buf.as_ref().len().min(MAX_FRAME_LEN);
        Self {
            buf,
            start: 0,
            end: 0,
            max_frame_len,
            session_version: PROTOCOL_VERSION,
            fatal: None,
        }
    }

    /// Forgets every buffered byte and any fatal error, and restores the
    /// frame limit to `min(storage length, MAX_FRAME_LEN)`: the decoder is as
    /// new, without touching (or moving) its storage.
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
        self.fatal = None;
        self.max_frame_len = self.buf.as_ref().len().min(MAX_FRAME_LEN);
        self.session_version = PROTOCOL_VERSION;
    }

    /// Sets the session's protocol version, the version frames must carry
    /// (check 3 of `docs/protocol.md` §9; see [`decode_frame_for`]). A new
    /// or [`clear`](Self::clear)ed decoder is at [`PROTOCOL_VERSION`], the
    /// handshake version; set the chosen version once the handshake is done
    /// (host: `HelloAck` sent; guest: `HelloAck` received).
    pub fn set_session_version(&mut self, version: u16) {
        self.session_version = version;
    }

    /// The session version frames are checked against.
    pub fn session_version(&self) -> u16 {
        self.session_version
    }

    /// Lowers (or raises, up to the storage length and [`MAX_FRAME_LEN`]) the
    /// longest frame accepted, e.g. to the limit announced in the handshake.
    pub fn set_max_frame_len(&mut self, max_frame_len: usize) {
        self.max_frame_len = max_frame_len
            .min(self.buf.as_ref().len())
            .min(MAX_FRAME_LEN);
    }

    /// The longest frame currently accepted.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// The fatal error this decoder stopped at, if any.
    pub fn fatal_error(&self) -> Option<DecodeError> {
        self.fatal
    }

    /// Free room at the end of the buffer, after moving pending bytes to the
    /// front. Fill a prefix of it, then call [`commit`](Self::commit).
    pub fn spare_mut(&mut self) -> &mut [u8] {
        if self.start > 0 {
            let (start, end) = (self.start, self.end);
            self.buf.as_mut().copy_within(start..end, 0);
            self.end -= start;
            self.start = 0;
        }
        let end = self.end;
        self.buf.as_mut().get_mut(end..).unwrap_or_default()
    }

    /// Marks `n` bytes written into [`spare_mut`](Self::spare_mut) as received
    /// (clamped to the room there is).
    pub fn commit(&mut self, n: usize) {
        self.end = self.end.saturating_add(n).min(self.buf.as_ref().len());
    }

    /// Copies as much of `data` as fits and returns how many bytes it took.
    pub fn push(&mut self, data: &[u8]) -> usize {
        let spare = self.spare_mut();
        let n = spare.len().min(data.len());
        spare
            .iter_mut()
            .zip(data)
            .for_each(|(dst, src)| *dst = *src);
        self.commit(n);
        n
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed, or the
    /// error of the frame at the front. The frame borrows the buffer until
    /// the next call.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, DecodeError> {
        self.front(true).map(|f| f.map(|(frame, _)| frame))
    }

    /// Like [`next_frame`](Self::next_frame), but a whole frame stays at
    /// the front: it comes with its length, and only
    /// [`consume`](Self::consume) of that length passes it. A receiver
    /// that cannot take the frame now leaves it there (and stops feeding
    /// bytes: the transport's flow control then holds the sender back).
    /// An erroneous frame is skipped (or the decoder stops) exactly as
    /// with `next_frame`.
    pub fn peek_frame(&mut self) -> Result<Option<(Frame<'_>, usize)>, DecodeError> {
        self.front(false)
    }

    /// Passes `n` bytes at the front (the length
    /// [`peek_frame`](Self::peek_frame) returned), clamped to what is
    /// buffered.
    pub fn consume(&mut self, n: usize) {
        self.start = self.start.saturating_add(n).min(self.end);
    }

    fn front(&mut self, advance: bool) -> Result<Option<(Frame<'_>, usize)>, DecodeError> {
        let Self {
            buf,
            start,
            end,
            max_frame_len,
            session_version,
            fatal,
        } = self;
        if let Some(error) = *fatal {
            return Err(error);
        }
        let pending = (*buf).as_ref().get(*start..*end).unwrap_or_default();
        match decode_frame_for(pending, *max_frame_len, *session_version) {
            Ok(Decoded::Incomplete { .. }) => Ok(None),
            Ok(Decoded::Frame { frame, consumed }) => {
                if advance {
                    *start += consumed;
                }
                Ok(Some((frame, consumed)))
            }
            Err(error) => {
                match error.skip_len() {
                    Some(skip) => *start += skip,
                    None => *fatal = Some(error),
                }
                Err(error)
            }
        }
    }
}
