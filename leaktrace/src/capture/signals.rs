//! The signals that end a capture.

use anyhow::Result;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// Ctrl-C, SIGTERM and SIGHUP, caught from before leaktrace says it is attached: a signal
/// sent as soon as it says so ends the capture with a report, not leaktrace.
pub struct Interrupts {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Interrupts {
    /// Must be called inside the runtime that will run the capture.
    pub fn catch() -> Result<Interrupts> {
        Ok(Interrupts {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// Returns when the next of them arrives.
    pub async fn next(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
            _ = self.hangup.recv() => {}
        }
    }
}

/// Gives Ctrl-C, SIGTERM and SIGHUP their default action again once the capture is over:
/// while the probes are being removed, they end leaktrace at once (the kernel removes what
/// is left of the probes as leaktrace exits), not wait behind the removal.
pub fn end_on_interrupts() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: SIG_DFL is always a valid disposition; nothing is left waiting on these.
        unsafe { libc::signal(signal, libc::SIG_DFL) };
    }
}

/// Every signal a capture acts on, caught together before the target is let go. A capture
/// that `leaktrace serve` runs catches none: the service owns the signals, and orders it.
#[derive(Default)]
pub struct Signals {
    pub interrupts: Option<Interrupts>,
    /// SIGUSR1: scan now. Caught from the start too, since its default action would kill
    /// leaktrace.
    pub scan_requests: Option<Signal>,
    /// SIGCHLD: a traced launched command stopped (a signal to pass on, its exit). Caught
    /// before the command is let go, so that a command quick to exit is not missed.
    pub child_stops: Option<Signal>,
}

impl Signals {
    /// Must be called inside the runtime that will run the capture.
    pub fn catch() -> Result<Signals> {
        Ok(Signals {
            interrupts: Some(Interrupts::catch()?),
            scan_requests: Some(signal(SignalKind::user_defined1())?),
            child_stops: Some(signal(SignalKind::child())?),
        })
    }
}

/// Ctrl-C, SIGTERM or SIGHUP; never, when they are not caught.
pub async fn interrupted(interrupts: &mut Option<Interrupts>) {
    match interrupts {
        Some(interrupts) => interrupts.next().await,
        None => std::future::pending().await,
    }
}

/// The next delivery of `signal`; never, when it is not caught.
pub async fn next(signal: &mut Option<Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}
