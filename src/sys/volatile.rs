//! Reads the compiler must carry out as written: a volatile copy of a static, so that its
//! value comes from the bytes loaded from the binary at run time, never from a constant the
//! compiler folded in at build time. Used by the build stamp (`crate::version`), whose
//! bytes a copy of the binary may have had rewritten after the build. No I/O.

/// Copies `bytes` with one volatile read.
pub fn read<const N: usize>(bytes: &[u8; N]) -> [u8; N] {
    // SAFETY: the pointer comes from a reference, so it is non-null, aligned for
    // `[u8; N]` (alignment 1), points to N initialised bytes and is valid for the read; a
    // byte array has no invalid values and is `Copy`.
    unsafe { std::ptr::read_volatile(std::ptr::from_ref(bytes)) }
}
