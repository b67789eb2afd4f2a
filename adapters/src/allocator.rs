//! The operator's allocator: jemalloc, with freed pages handed back to the system within a
//! second by its own background thread.
//!
//! With glibc's allocator the operator stayed resident at twice its live heap and more, even
//! with `malloc_trim(0)` every 10 s: freed memory between live blocks stays in glibc's arenas.
//! At 10,000 pods, on the same bed and build, jemalloc with these settings kept 68–78 MiB
//! where glibc kept 84–89 MiB (docs/scale.md, "Memory at 10,000 pods (session 15)").

pub use tikv_jemallocator::Jemalloc;

/// How long freed pages stay dirty before they are purged (jemalloc's default is 10 s).
const DIRTY_DECAY_MS: isize = 1_000;

/// Sets the decay of every arena and starts jemalloc's background purging; call it before the
/// work starts. A failure is only logged: the allocator works without it, keeping more memory.
pub fn configure() {
    if let Err(e) = decay_and_purge() {
        tracing::warn!(error = %e, "jemalloc's background purging is off; freed memory returns later");
    }
}

fn decay_and_purge() -> tikv_jemalloc_ctl::Result<()> {
    set_decay("arenas")?;
    let arenas: u32 = tikv_jemalloc_ctl::arenas::narenas::read()?;
    for i in 0..arenas {
        // An arena not initialised yet has no settings of its own: it takes `arenas.*`.
        let _ = set_decay(&format!("arena.{i}"));
    }
    tikv_jemalloc_ctl::background_thread::write(true)
}

#[allow(unsafe_code)]
fn set_decay(prefix: &str) -> tikv_jemalloc_ctl::Result<()> {
    for (name, ms) in [("dirty_decay_ms", DIRTY_DECAY_MS), ("muzzy_decay_ms", 0)] {
        let key = format!("{prefix}.{name}\0");
        // SAFETY: the key is NUL-terminated and each of these settings is a `ssize_t`.
        unsafe { tikv_jemalloc_ctl::raw::write(key.as_bytes(), ms)? };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[global_allocator]
    static ALLOCATOR: super::Jemalloc = super::Jemalloc;

    #[test]
    fn purging_runs_in_the_background_with_a_short_decay() {
        super::decay_and_purge().unwrap();
        assert!(tikv_jemalloc_ctl::background_thread::read().unwrap());
        // SAFETY: a NUL-terminated key of a `ssize_t` setting.
        #[allow(unsafe_code)]
        let decay: isize =
            unsafe { tikv_jemalloc_ctl::raw::read(b"arena.0.dirty_decay_ms\0") }.unwrap();
        assert_eq!(decay, super::DIRTY_DECAY_MS);
    }
}
