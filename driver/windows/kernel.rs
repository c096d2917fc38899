//! The small kernel toolkit every other module uses: notification and
//! synchronization events, a queued spin lock, the clock, relative timeouts,
//! static `UNICODE_STRING`s, and the pointer casts between the binding crates
//! (windows-sys and thinagent-km-sys each model some NT types; where one value
//! crosses from one to the other it happens here).
//!
//! Checked against the WDK documentation pages named on each item
//! (learn.microsoft.com/windows-hardware/drivers/ddi/wdm/...), and the
//! signatures against windows-sys 0.61.2
//! `src/Windows/Wdk/System/SystemServices/mod.rs`.

use core::cell::UnsafeCell;
use core::ffi::c_void;
use core::time::Duration;

use thinagent_guest::Instant;
use thinagent_km_sys::fltmgr::windows_sys::Wdk::Foundation::KEVENT;
use thinagent_km_sys::fltmgr::windows_sys::Wdk::System::SystemServices::{
    Executive, KLOCK_QUEUE_HANDLE, KeAcquireInStackQueuedSpinLock, KeClearEvent, KeInitializeEvent,
    KeInitializeSpinLock, KeQueryInterruptTimePrecise, KeReleaseInStackQueuedSpinLock, KeSetEvent,
    KeWaitForMultipleObjects, KeWaitForSingleObject, KernelMode,
};
use thinagent_km_sys::fltmgr::windows_sys::Win32::Foundation::{NTSTATUS, UNICODE_STRING};
use thinagent_km_sys::fltmgr::windows_sys::Win32::System::Kernel::{
    NotificationEvent, SynchronizationEvent, WaitAny,
};

/// `STATUS_SUCCESS`.
pub const STATUS_SUCCESS: NTSTATUS = 0;
/// `STATUS_TIMEOUT` (`ntstatus.h`, 0x00000102): a wait timed out. A success
/// code, so test for it before `nt_success`.
pub const STATUS_TIMEOUT: NTSTATUS = 0x0000_0102;
/// `STATUS_PENDING` (0x00000103).
pub const STATUS_PENDING: NTSTATUS = 0x0000_0103;
/// `STATUS_UNSUCCESSFUL` (0xC0000001).
pub const STATUS_UNSUCCESSFUL: NTSTATUS = 0xC000_0001_u32 as i32;
/// `STATUS_INSUFFICIENT_RESOURCES` (0xC000009A).
pub const STATUS_INSUFFICIENT_RESOURCES: NTSTATUS = 0xC000_009A_u32 as i32;
/// `STATUS_INVALID_PARAMETER` (0xC000000D).
pub const STATUS_INVALID_PARAMETER: NTSTATUS = 0xC000_000D_u32 as i32;
/// `STATUS_CANCELLED` (0xC0000120).
pub const STATUS_CANCELLED: NTSTATUS = 0xC000_0120_u32 as i32;

/// `NT_SUCCESS(status)` (`ntdef.h`): severity success or informational.
#[must_use]
pub const fn nt_success(status: NTSTATUS) -> bool {
    status >= 0
}

/// `POOL_FLAG_NON_PAGED` (`wdm.h`), for `ExAllocatePool2`.
pub const POOL_FLAG_NON_PAGED: u64 = 0x0000_0000_0000_0040;

/// Now, as the monotonic instant the guest crate's state machines take.
///
/// `KeQueryInterruptTimePrecise` (any IRQL; 100 ns units since boot, counts
/// time asleep too, which is what a deadline wants).
#[must_use]
pub fn now() -> Instant {
    let mut qpc = 0u64;
    // SAFETY: the routine writes the performance-counter value to the
    // pointed-to local and has no other requirement.
    let ticks = unsafe { KeQueryInterruptTimePrecise(&mut qpc) };
    Instant::from_nanos(ticks.saturating_mul(100))
}

/// A duration as an NT *relative* time: negative, in 100 ns units, at least
/// one unit (a zero timeout would mean "poll", which callers never want).
#[must_use]
pub const fn relative_100ns(d: Duration) -> i64 {
    let units = d.as_nanos() / 100;
    let units = if units == 0 {
        1
    } else if units > i64::MAX as u128 {
        i64::MAX as u128
    } else {
        units
    };
    -(units as i64)
}

/// `THREAD_WAIT_OBJECTS` (`wdm.h`): how many objects a thread can wait on
/// with its built-in wait blocks, i.e. without a `WaitBlockArray`.
pub const THREAD_WAIT_OBJECTS: usize = 3;

/// Waits until any of `objects` is signalled or `timeout` passes (`None` =
/// forever): `KeWaitForMultipleObjects(WaitAny, Executive, KernelMode,
/// FALSE)` with the thread's own wait blocks
/// (learn.microsoft.com/windows-hardware/drivers/ddi/wdm/nf-wdm-kewaitformultipleobjects).
/// Returns `STATUS_WAIT_0 + i` for the signalled object `i`, or
/// [`STATUS_TIMEOUT`]. PASSIVE_LEVEL/APC_LEVEL.
///
/// # Panics
///
/// If `objects` holds more than [`THREAD_WAIT_OBJECTS`] pointers (that
/// would need a wait-block array).
///
/// # Safety
///
/// Every pointer is an initialised dispatcher object (`KEVENT`, ...) that
/// outlives the wait.
pub unsafe fn wait_any(objects: &[*const c_void], timeout: Option<Duration>) -> NTSTATUS {
    assert!(objects.len() <= THREAD_WAIT_OBJECTS);
    let rel = timeout.map(relative_100ns);
    let ptr = rel.as_ref().map_or(core::ptr::null(), |r| r as *const i64);
    // SAFETY: the caller guarantees the objects; at most
    // THREAD_WAIT_OBJECTS of them, so no wait-block array is needed; the
    // timeout pointer is null or points to a local that outlives the wait.
    unsafe {
        KeWaitForMultipleObjects(
            objects.len() as u32,
            objects.as_ptr(),
            WaitAny,
            Executive,
            KernelMode as i8,
            false,
            ptr,
            core::ptr::null_mut(),
        )
    }
}

/// UTF-16 units shown in a log line (unpaired surrogates print as
/// U+FFFD). Any IRQL (formats into the caller's buffer).
pub struct Utf16<'a>(pub &'a [u16]);

impl core::fmt::Display for Utf16<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for c in char::decode_utf16(self.0.iter().copied()) {
            core::fmt::Write::write_char(f, c.unwrap_or(char::REPLACEMENT_CHARACTER))?;
        }
        Ok(())
    }
}

/// The kinds of `KEVENT` (`KeInitializeEvent`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// Stays signalled until cleared; wakes every waiter.
    Notification,
    /// Auto-resets when it releases one waiter.
    Synchronization,
}

/// A `KEVENT` that must not move once initialised: keep it in a `static`,
/// a `Box`, or another pinned non-paged allocation.
#[repr(transparent)]
pub struct KernelEvent(UnsafeCell<KEVENT>);

// SAFETY: a KEVENT is designed to be signalled and waited on from any thread
// at the IRQLs documented on each method; all access goes through the kernel.
unsafe impl Sync for KernelEvent {}
// SAFETY: as above; it holds no thread-affine state.
unsafe impl Send for KernelEvent {}

impl KernelEvent {
    /// An all-zero event. Call [`KernelEvent::init`] at its final address
    /// before any other method.
    #[must_use]
    pub const fn uninit() -> Self {
        // SAFETY: KEVENT is plain old data (a DISPATCHER_HEADER); all-zero is a
        // valid bit pattern, and `init` sets it up before use.
        KernelEvent(UnsafeCell::new(unsafe { core::mem::zeroed() }))
    }

    /// `KeInitializeEvent` (any IRQL for an event in non-paged memory).
    pub fn init(&self, kind: EventKind, signalled: bool) {
        let kind = match kind {
            EventKind::Notification => NotificationEvent,
            EventKind::Synchronization => SynchronizationEvent,
        };
        // SAFETY: the pointer is to this (non-moving, per the type's contract)
        // event, which nobody waits on yet.
        unsafe { KeInitializeEvent(self.0.get(), kind, signalled) };
    }

    /// `KeSetEvent` with no priority boost and `Wait = FALSE`
    /// (IRQL ≤ DISPATCH_LEVEL).
    pub fn set(&self) {
        // SAFETY: initialised event at a stable address.
        let _ = unsafe { KeSetEvent(self.0.get(), 0, false) };
    }

    /// `KeClearEvent` (IRQL ≤ DISPATCH_LEVEL).
    pub fn clear(&self) {
        // SAFETY: initialised event at a stable address.
        unsafe { KeClearEvent(self.0.get()) };
    }

    /// Waits until signalled or `timeout` passes (`None` = forever):
    /// `KeWaitForSingleObject(Executive, KernelMode, FALSE)`. Returns
    /// `STATUS_SUCCESS` or [`STATUS_TIMEOUT`]. PASSIVE_LEVEL/APC_LEVEL, or
    /// DISPATCH_LEVEL with a zero timeout (never used here).
    pub fn wait(&self, timeout: Option<Duration>) -> NTSTATUS {
        let rel = timeout.map(relative_100ns);
        let ptr = rel.as_ref().map_or(core::ptr::null(), |r| r as *const i64);
        // SAFETY: the event is initialised and outlives the wait; the
        // timeout pointer is null or points to a local that outlives it.
        unsafe { KeWaitForSingleObject(self.as_object(), Executive, KernelMode as i8, false, ptr) }
    }

    /// The event as the dispatcher-object pointer the wait routines take.
    #[must_use]
    pub fn as_object(&self) -> *const c_void {
        self.0.get().cast_const().cast()
    }

    /// The raw `PKEVENT`, for routines that take one (IRP `UserEvent`,
    /// completion contexts).
    #[must_use]
    pub fn as_ptr(&self) -> *mut KEVENT {
        self.0.get()
    }
}

/// Data behind a queued spin lock (`KeAcquireInStackQueuedSpinLock`).
///
/// Only [`SpinLock::with`] gives access, so the lock handle lives on that
/// call's stack for exactly the critical section (the "in-stack" handle must
/// not move while the lock is held). The closure runs at DISPATCH_LEVEL:
/// it must not wait, touch pageable memory or call anything that requires
/// PASSIVE_LEVEL.
pub struct SpinLock<T> {
    lock: UnsafeCell<usize>,
    data: UnsafeCell<T>,
}

// SAFETY: `data` is only reached through `with`, which holds the spin lock.
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: moving the lock moves its data; no thread-affine state.
unsafe impl<T: Send> Send for SpinLock<T> {}

impl<T> SpinLock<T> {
    /// A lock in its released state (`KeInitializeSpinLock` sets the
    /// `KSPIN_LOCK` to 0; [`SpinLock::init`] calls it anyway).
    pub const fn new(data: T) -> Self {
        SpinLock {
            lock: UnsafeCell::new(0),
            data: UnsafeCell::new(data),
        }
    }

    /// `KeInitializeSpinLock` (any IRQL), before first use at the lock's
    /// final address.
    pub fn init(&self) {
        // SAFETY: the KSPIN_LOCK is ours and not held yet.
        unsafe { KeInitializeSpinLock(self.lock.get()) };
    }

    /// Runs `f` with the lock held (IRQL ≤ DISPATCH_LEVEL on entry; `f` runs
    /// at DISPATCH_LEVEL).
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // SAFETY: all-zero is a valid KLOCK_QUEUE_HANDLE before acquisition.
        let mut handle: KLOCK_QUEUE_HANDLE = unsafe { core::mem::zeroed() };
        // SAFETY: the lock is initialised; `handle` stays at this stack
        // address until released below.
        unsafe { KeAcquireInStackQueuedSpinLock(self.lock.get(), &mut handle) };
        // SAFETY: we hold the lock, so this is the only live reference.
        let result = f(unsafe { &mut *self.data.get() });
        // SAFETY: releases the acquisition made above with the same handle.
        unsafe { KeReleaseInStackQueuedSpinLock(&handle) };
        result
    }
}

/// UTF-16 code units of an ASCII string, at compile time (`N` = length).
/// Panics (at compile time, in a `const`) on non-ASCII input or a wrong `N`.
#[must_use]
pub const fn ascii_utf16<const N: usize>(s: &str) -> [u16; N] {
    let b = s.as_bytes();
    assert!(b.len() == N, "ascii_utf16: N must equal the string length");
    let mut out = [0u16; N];
    let mut i = 0;
    while i < N {
        assert!(b[i].is_ascii(), "ascii_utf16: ASCII only");
        out[i] = b[i] as u16;
        i += 1;
    }
    out
}

/// A `UNICODE_STRING` (windows-sys layout) describing `units`, which must be
/// `'static` so the descriptor can never outlive its buffer. Kernel routines
/// take it as `PCUNICODE_STRING` and never write through `Buffer`.
#[must_use]
pub const fn unicode_string(units: &'static [u16]) -> UNICODE_STRING {
    let bytes = units.len() * 2;
    assert!(bytes <= u16::MAX as usize);
    UNICODE_STRING {
        Length: bytes as u16,
        MaximumLength: bytes as u16,
        Buffer: units.as_ptr().cast_mut(),
    }
}

/// A `UNICODE_STRING` over a borrowed buffer, for the duration of one call.
///
/// Returns `None` when it is longer than a `UNICODE_STRING` can describe.
#[must_use]
pub fn unicode_string_for(units: &[u16]) -> Option<UNICODE_STRING> {
    let bytes = u16::try_from(units.len() * 2).ok()?;
    Some(UNICODE_STRING {
        Length: bytes,
        MaximumLength: bytes,
        Buffer: units.as_ptr().cast_mut(),
    })
}

/// The UTF-16 units a `UNICODE_STRING` describes (empty for a null buffer).
///
/// # Safety
///
/// `s.Buffer` must be null or valid for `s.Length` bytes for `'a`.
#[must_use]
pub unsafe fn unicode_units<'a>(s: &UNICODE_STRING) -> &'a [u16] {
    if s.Buffer.is_null() || s.Length == 0 {
        return &[];
    }
    // SAFETY: the caller guarantees Buffer is valid for Length bytes;
    // UTF-16 buffers from the kernel are 2-byte aligned.
    unsafe { core::slice::from_raw_parts(s.Buffer, usize::from(s.Length) / 2) }
}

/// The one pointer cast between km-sys's `UNICODE_STRING` (used by the WSK
/// bindings) and windows-sys's: both are `{ u16, u16, *mut u16 }` in that
/// order (`ntdef.h`), asserted below.
#[must_use]
pub fn km_unicode_string(s: &UNICODE_STRING) -> *const thinagent_km_sys::nt::UNICODE_STRING {
    (s as *const UNICODE_STRING).cast()
}

const _: () = {
    assert!(size_of::<UNICODE_STRING>() == size_of::<thinagent_km_sys::nt::UNICODE_STRING>());
    assert!(
        core::mem::offset_of!(UNICODE_STRING, Buffer)
            == core::mem::offset_of!(thinagent_km_sys::nt::UNICODE_STRING, Buffer)
    );
};
