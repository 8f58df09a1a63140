//! Gives freed memory back to the operating system now and then.
//!
//! glibc's allocator keeps the pages of freed memory in the middle of its
//! heap: after a burst of connections (each allocates request buffers and
//! handshake text that are freed once it is up), the process holds pages
//! that only free chunks use. `malloc_trim` hands such pages back. Measured
//! at 15,000 idle WebSockets, it lowers RSS by about 320 bytes per socket
//! (docs/benchmarks.md). One thread per process calls it every
//! `server.memory_trim_interval_ms`; elsewhere than glibc it does nothing.

use std::sync::Once;
use std::time::{Duration, Instant};

/// Starts the trimming thread (once per process; later calls do nothing).
/// An `interval` of zero never trims.
pub fn start(interval: Duration) {
    static STARTED: Once = Once::new();
    if interval.is_zero() || !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return;
    }
    STARTED.call_once(|| {
        let started = std::thread::Builder::new()
            .name("realtime-trim".into())
            .spawn(move || loop {
                std::thread::sleep(interval);
                let began = Instant::now();
                let released = trim();
                tracing::debug!(
                    released,
                    took_us = began.elapsed().as_micros() as u64,
                    "gave freed memory back"
                );
            });
        if let Err(err) = started {
            tracing::warn!(error = %err, "cannot start the memory trimming thread; memory is not trimmed");
        }
    });
}

/// Asks glibc to give back the free pages of every arena. Whether any
/// memory was released.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() -> bool {
    // SAFETY: malloc_trim takes no pointers and is thread-safe (it locks
    // each arena while it walks it).
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    #[test]
    fn freed_pages_in_the_middle_of_the_heap_are_given_back() {
        // Pages' worth of small chunks (below the size glibc maps on its
        // own), then one kept above them so they are not the heap's top.
        let chunks: Vec<Vec<u8>> = (0..4096).map(|_| vec![1u8; 4000]).collect();
        let fence = Box::new([2u8; 64]);
        drop(chunks);
        assert!(super::trim(), "nothing was released");
        assert_eq!(fence[0], 2);
    }
}
