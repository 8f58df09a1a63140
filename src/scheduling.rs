//! Runs the server's threads under Linux's `SCHED_BATCH` policy.
//!
//! A publish crosses threads several times: the session's worker hands it
//! to its channel's thread, the channel to the writer's, the writer to its
//! SQLite connection's thread and back, and each handoff wakes the thread
//! it goes to. Under the default policy a woken thread preempts the running
//! one when they share a core, so on a busy core every handoff is a
//! context switch that carries one message. Under `SCHED_BATCH` a woken
//! thread does not preempt: it runs once the running thread blocks or its
//! time slice ends, and then takes every message queued meanwhile. On an
//! idle core a woken thread still runs at once, and the tick still shares
//! the core. Measured with the server on one core: acked publishes +15–23%
//! at 4 × 32 in flight, +1–14% at 16 × 32 (docs/benchmarks.md, "The
//! writer's own connection, batch threads").
//!
//! The policy is set on the calling thread; threads it starts afterwards
//! inherit it, so [`apply`] runs before the server starts any.

/// Sets `SCHED_BATCH` on the calling thread when `batch`; whether it is
/// set. Lowering a thread's own priority needs no privilege; elsewhere
/// than Linux it does nothing.
pub fn apply(batch: bool) -> bool {
    if !batch || !cfg!(target_os = "linux") {
        return false;
    }
    let set = set_batch();
    if let Err(err) = &set {
        tracing::warn!(error = %err, "cannot run the server's threads as batch threads (SCHED_BATCH); they keep the default policy");
    }
    set.is_ok()
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn set_batch() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` outlives the call, which only reads it; pid 0 is the
    // calling thread.
    let status = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if status == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn set_batch() -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "SCHED_BATCH is Linux's",
    ))
}
