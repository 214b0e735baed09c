//! Handing freed heap memory back to the kernel.
//!
//! Recovery parses a snapshot and a journal into short-lived values, many small allocations
//! that outnumber what the state keeps. The C allocator keeps their pages for reuse, so
//! without a trim the keeper would carry its peak recovery footprint for its whole life.

/// Returns the allocator's free pages to the kernel (glibc's `malloc_trim`); a no-op on
/// other C libraries.
pub fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes no pointers and only walks the allocator's own free lists.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}
