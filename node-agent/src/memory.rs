//! Owns giving the memory the agent has freed back to the system.
//!
//! Loading a BPF object (aya: the overlay's fast path, VIPs at connect()) parses the
//! kernel's BTF (`/sys/kernel/btf/vmlinux`, 5.5 MB on the development machine) whether or
//! not the object needs it: about 25 MB allocated and freed within the call. mimalloc, the
//! agent's allocator, keeps freed pages for reuse by the same thread, and those stayed
//! resident: loading and dropping `lb::socket`'s program took a probe under mimalloc from
//! 5 MB to 47 MB resident (56 MB with one more parse), and `mi_collect(true)` brought it
//! back to 7.5 MB. The agent carried one such parse per program it loaded.

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
