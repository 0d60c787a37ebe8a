//! Owns giving the memory the agent has freed back to the system.
//!
//! Loading a BPF object (aya: the overlay's fast path, VIPs at connect()) parses the
//! kernel's BTF (`/sys/kernel/btf/vmlinux`, 5.5 MB on the development machine) whether or
//! not the object needs it: about 25 MB allocated and freed within the call. mimalloc, the
//! agent's allocator, keeps freed pages for reuse by the same thread, and those stayed
//! resident: one load and drop left a process at 56 MB instead of 7 MB, and the agent
//! carried one such parse per program it loaded (measured with a probe that loaded and
//! dropped `lb::socket`'s program under mimalloc; `mi_collect(true)` brought it back to
//! 7.5 MB).

/// Returns the pages the allocator holds free on this thread (and abandoned ones) to the
/// system: mimalloc's `mi_collect(true)`. Under another global allocator (the tests') it
/// finds nothing to do. Call right after a burst of short-lived allocations, on the thread
/// that made them.
#[allow(unsafe_code)]
pub fn release_freed() {
    // SAFETY: `mi_collect` takes no pointers and has no preconditions: it only frees and
    // decommits pages that hold no live allocation.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
