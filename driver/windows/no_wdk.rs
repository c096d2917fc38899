//! The two windows-drivers-rs pieces the Linux build of the driver replaces
//! (`--cfg thinagent_no_wdk`, set by `.ci/build-driver`): `wdk-alloc` and
//! `wdk-panic` depend on `wdk-sys`, whose bindings are generated from the
//! WDK's headers and so build only on a Windows host with the WDK. Everything
//! else in the image is the code the Windows `cargo make` build compiles.
//!
//! * the global allocator: `ExAllocatePool2(POOL_FLAG_NON_PAGED, size,
//!   'rust')` and `ExFreePoolWithTag(p, 'rust')`, the pool type and tag
//!   `wdk_alloc::WdkAllocator` uses;
//! * the panic handler: what `wdk_panic` does, spin forever (the thread
//!   never returns into code whose invariants the panic broke);
//! * `_fltused`, which the MSVC toolchain's CRT (absent here: the driver
//!   links with `/NODEFAULTLIB`) defines for any image that touches floating
//!   point; `wdk-sys` defines it in the Windows build.

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::c_void;

use thinagent_km_sys::fltmgr::windows_sys::Wdk::System::SystemServices::{
    ExAllocatePool2, ExFreePoolWithTag,
};

use super::kernel::POOL_FLAG_NON_PAGED;

/// `'rust'` as MSVC packs the multi-character literal: the tag
/// `wdk_alloc::WdkAllocator` gives its allocations (`u32::from_ne_bytes(*b"rust")`).
pub const RUST_POOL_TAG: u32 = u32::from_ne_bytes(*b"rust");

/// The non-paged pool behind `alloc`.
struct PoolAllocator;

// SAFETY: ExAllocatePool2 returns null or a non-paged block of at least
// `size` bytes aligned to 16 bytes (MEMORY_ALLOCATION_ALIGNMENT on x64),
// which is enough for every layout the driver allocates (checked below);
// `dealloc` frees only blocks `alloc` returned, with the same tag.
unsafe impl GlobalAlloc for PoolAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() > 16 {
            return core::ptr::null_mut();
        }
        // SAFETY: a plain pool allocation at PASSIVE..DISPATCH_LEVEL, which
        // is where the driver allocates.
        unsafe { ExAllocatePool2(POOL_FLAG_NON_PAGED, layout.size(), RUST_POOL_TAG) }.cast()
    }
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above, so from ExAllocatePool2
        // with this tag, and is freed once (GlobalAlloc's contract).
        unsafe { ExFreePoolWithTag(ptr.cast::<c_void>(), RUST_POOL_TAG) }
    }
}

#[global_allocator]
static GLOBAL_ALLOCATOR: PoolAllocator = PoolAllocator;

/// What `wdk_panic` does: spin forever.
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {
        core::hint::spin_loop();
    }
}

/// Referenced by compiler-generated code in any image that uses floating
/// point; normally defined by the CRT (here `/NODEFAULTLIB`).
#[unsafe(no_mangle)]
pub static _fltused: i32 = 0;
