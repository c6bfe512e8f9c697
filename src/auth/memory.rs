//! Keeps a flood of password checks from growing the process.
//!
//! Each argon2id check allocates its memory cost (19 MiB at OWASP's minimum;
//! scrypt's defaults 16 MiB) and frees it when done. glibc's malloc serves
//! such a block by `mmap` at first, but on its free raises its mmap threshold
//! to the block's size ("dynamic threshold"), so every later one comes from a
//! heap arena, and each thread of tokio's blocking pool gets an arena of its
//! own (up to 8 per core). Freed, those blocks stay in their arenas: a guessing
//! flood grew `serve` to 480 MB of RSS with only two hashes ever running at
//! once. Fixing the threshold at 1 MiB turns the dynamic threshold off: a
//! block that large is always its own mapping, returned to the system when
//! freed, so the process holds only the hashes running now (one per core).
//! The cost: a hash's pages are faulted in afresh each time, well under a
//! millisecond against the hash's tens.

/// Allocations at least this large are mapped on their own and unmapped when freed.
const MMAP_THRESHOLD: usize = 1024 * 1024;

/// Sets the allocator up for the process; call once, first thing in `main`.
#[allow(unsafe_code, reason = "glibc's mallopt has no safe wrapper")]
pub fn bound_allocator_retention() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes glibc malloc's parameters; called before
        // any thread exists, it races with no allocation.
        let set = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) };
        debug_assert_eq!(set, 1, "glibc takes any threshold up to 32 MiB");
    }
}
