//! Keeps a flood of password checks from growing the process: each argon2id
//! check's 19 MiB block is mapped on its own and returned to the system when
//! the hash ends, instead of staying in the arena of every thread that ran one
//! (glibc's dynamic mmap threshold). docs/serve.md, "Password guessing".

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
