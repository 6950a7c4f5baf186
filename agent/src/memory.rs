//! glibc malloc tuning for a long-running daemon that runs models call after call.
//!
//! - **Inference buffers stay on the heap.** A model's intermediate tensors (hundreds of KiB to
//!   a few MiB each) are allocated and freed on every call. Above glibc's mmap threshold each
//!   one is a fresh `mmap`, so every call page-faults its whole working set back in: 18 000
//!   page faults instead of 1 600 over 50 runs of hand_recrop, and a 1.35 ms median instead
//!   of 0.87. A fixed 16 MiB threshold and a 32 MiB trim threshold keep them on the heap,
//!   where the next call reuses them. (glibc raises its threshold by itself after the first
//!   large free, but only after the first calls have paid for it, and it trims the heap top
//!   whenever more than twice that is free.)
//! - **Big one-off buffers go back to the system.** Model files and anything else above
//!   16 MiB are still mapped and unmapped, and [`release_free_memory`] trims what a model load
//!   freed (the file's bytes, tract's intermediate graphs), so the resident size after a load
//!   is what the model needs.
//! - **No fastbins.** Every tensor tract allocates is aligned (`posix_memalign`), which glibc
//!   serves from its large-chunk path, and that path first consolidates every fastbin: one
//!   `malloc_consolidate` per tensor, 5 % of okay_nabu's time. Small blocks still go
//!   through glibc's per-thread cache.
//! - **Two arenas** instead of eight per core: the agent's threads are a runtime, a command
//!   thread and a few model workers.

/// Applies the tuning above. Call it first thing in `main`, before any other thread exists.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn tune_allocator() {
    // SAFETY: mallopt only changes allocator parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 16 * 1024 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 32 * 1024 * 1024);
        libc::mallopt(libc::M_MXFAST, 0);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Elsewhere (musl) the allocator has no such knobs.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune_allocator() {}

/// Returns the heap's free memory to the system: after a model load, which frees far more than
/// it keeps.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_free_memory() {
    // SAFETY: malloc_trim only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Elsewhere (musl) there is nothing to call.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() {}
