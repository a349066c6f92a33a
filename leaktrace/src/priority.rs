//! leaktrace's own scheduling priority, raised before it plans the probes of a running
//! process, or once the command it launches is started (which keeps its own).
//!
//! The scheduler shares a CPU among runnable threads by weight, and a target with hundreds
//! of busy threads leaves a leaktrace of equal weight one share among hundreds: attaching to
//! 500 threads that allocate every millisecond took 2–6 s here (most of it waiting to run
//! the verifier and link the probes), and once attached the reader fell behind and events
//! were lost. At nice −20 the same attach took 0.3–0.8 s, with no event lost. leaktrace's
//! CPU time is what reading the target's events takes, so the higher weight takes no more
//! than that from the target.

/// The nice value taken: the highest priority of the normal scheduling class.
const RAISED: i32 = -20;

/// Raises the calling thread, and every thread it starts from here on, to [`RAISED`], when
/// leaktrace runs at the default priority (nice 0) and may (CAP_SYS_NICE). A nice value
/// given on purpose (`nice -n 10 leaktrace …`) is kept.
pub fn raise() {
    // SAFETY: getpriority and setpriority take plain integers; 0 is the calling thread.
    // getpriority returns the nice value itself, and -1 both as a value and on error: errno
    // tells them apart, and neither is 0.
    let current = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    if current != 0 {
        log::debug!("kept nice {current}");
        return;
    }
    // SAFETY: as above.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, RAISED) } != 0 {
        log::debug!(
            "cannot raise leaktrace's priority to nice {RAISED}: {}; a target with more busy \
             threads than CPUs slows its attach and may make it lose events",
            std::io::Error::last_os_error()
        );
    }
}
