//! Items that exist only in the `thinagent_typecheck` build
//! (`.ci/typecheck-driver`: `cargo check` for `x86_64-pc-windows-msvc` on a
//! host without the WDK). That build never links, but rustc insists that a
//! `no_std` cdylib has a panic handler and an allocator; the real ones come
//! from `wdk-panic` and `wdk-alloc`, which cannot build there.

use core::alloc::{GlobalAlloc, Layout};

/// Stands in for `wdk_panic`'s handler in the type-check build only.
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {
        core::hint::spin_loop();
    }
}

/// Stands in for `wdk_alloc::WdkAllocator` in the type-check build only:
/// every allocation fails. Opaque to the optimiser (`black_box`), so the
/// code after an allocation is not removed as unreachable when
/// `.ci/driver-stack-frames` compiles this build to assembly.
struct NoAllocator;

// SAFETY: returning null is a valid "allocation failed" answer, and
// `dealloc` is never given a pointer this allocator returned.
unsafe impl GlobalAlloc for NoAllocator {
    unsafe fn alloc(&self, _layout: Layout) -> *mut u8 {
        core::hint::black_box(core::ptr::null_mut())
    }
    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
}

#[global_allocator]
static TYPECHECK_ALLOCATOR: NoAllocator = NoAllocator;
