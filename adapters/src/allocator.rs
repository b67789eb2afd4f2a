//! Handing the memory the operator freed back to the operating system.
//!
//! glibc's allocator keeps what a program frees in its arenas for reuse, and returns to the
//! kernel only what lies free at the top of a heap. After a burst (the initial list of 10,000
//! pods, an inventory retrieval of 1,000 VMs, a first pass writing 10,000 conditions) the
//! operator stayed resident at twice its live heap (docs/scale.md). `malloc_trim(0)` walks
//! every arena and releases each whole free page in it. Other allocators (musl's, the macOS
//! one) return memory themselves; there this does nothing.

use std::time::{Duration, Instant};

/// How often freed memory is handed back.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(10);

/// Hands freed memory back every [`TRIM_INTERVAL`], on a thread of its own, for as long as
/// the process runs.
pub fn start_trimming() {
    let started = std::thread::Builder::new()
        .name("malloc-trim".into())
        .spawn(|| loop {
            std::thread::sleep(TRIM_INTERVAL);
            let start = Instant::now();
            let released = trim();
            tracing::trace!(released, took = ?start.elapsed(), "freed memory trimmed");
        });
    if let Err(e) = started {
        tracing::warn!(error = %e, "freed memory will not be handed back to the system");
    }
}

/// One trim; whether the allocator gave anything back.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn trim() -> bool {
    // SAFETY: malloc_trim takes no pointers; glibc locks each arena while it walks it.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn freed_memory_between_live_blocks_comes_back() {
        // Blocks under the mmap threshold, every other one freed: holes between live blocks,
        // which glibc keeps (a free at the top of a heap it returns by itself).
        let blocks: Vec<Vec<u8>> = (0..1_000).map(|_| vec![1u8; 64 * 1024]).collect();
        let kept: Vec<Vec<u8>> = blocks.into_iter().step_by(2).collect();
        assert!(
            super::trim(),
            "nothing released after freeing 500 blocks of 64 KiB"
        );
        assert_eq!(kept.len(), 500);
    }
}
