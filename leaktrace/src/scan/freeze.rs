//! Every thread of the target held still, with no signal it can see: PTRACE_SEIZE, then
//! PTRACE_INTERRUPT, per thread. Threads that start meanwhile are found by listing
//! `/proc/PID/task` again until a pass finds none new; threads that exit meanwhile are
//! dropped.
//!
//! The target is never left stopped: [`Freeze`] lets every thread go when dropped (a panic
//! unwinds through it too), and if leaktrace dies, SIGKILL included, the kernel detaches its
//! tracees, and a thread in a ptrace stop then runs on.

use std::{collections::BTreeMap, fs, time::Instant};

use anyhow::{Context, Result, bail};
use nix::{
    errno::Errno,
    sys::{
        ptrace,
        signal::Signal,
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::Pid,
};

use crate::{error::Failure, target::tracee::Tracee};

/// The target, stopped; its threads' registers as found.
pub struct Freeze<'a> {
    pid: u32,
    /// A launched command leaktrace traces already: its main thread is held and let go
    /// through it ([`Tracee::hold`]), not seized.
    ours: Option<&'a Tracee>,
    /// Each stopped thread, with a signal that arrived as it stopped: given back at the thaw.
    threads: BTreeMap<u32, Option<Signal>>,
    /// Each thread's general registers: pointers held only there are roots.
    pub registers: Vec<libc::user_regs_struct>,
    pub started: Instant,
}

impl<'a> Freeze<'a> {
    /// Stops every thread of `pid`; `ours` is the command leaktrace traces already, if so.
    pub fn new(pid: u32, ours: Option<&'a Tracee>) -> Result<Freeze<'a>> {
        let mut freeze = Freeze {
            pid,
            ours,
            threads: BTreeMap::new(),
            registers: Vec::new(),
            started: Instant::now(),
        };
        loop {
            let tids = threads_of(pid)?;
            let new: Vec<u32> = tids
                .into_iter()
                .filter(|tid| !freeze.threads.contains_key(tid))
                .collect();
            if new.is_empty() {
                break;
            }
            for tid in new {
                freeze.stop(tid)?;
            }
        }
        if freeze.threads.is_empty() {
            bail!(Failure::NoSuchProcess(pid));
        }
        for &tid in freeze.threads.keys() {
            if let Ok(registers) = ptrace::getregs(Pid::from_raw(tid as i32)) {
                freeze.registers.push(registers);
            }
        }
        Ok(freeze)
    }

    /// A command leaktrace traces, stopped at its exit: its main thread is held already (and
    /// is let go by its tracer, not here); the others are gone or going.
    pub fn at_exit(pid: u32) -> Result<Freeze<'a>> {
        let registers = ptrace::getregs(Pid::from_raw(pid as i32))
            .context("read the exiting command's registers")?;
        Ok(Freeze {
            pid,
            ours: None,
            threads: BTreeMap::new(),
            registers: vec![registers],
            started: Instant::now(),
        })
    }

    /// Seizes and stops one thread; a thread gone already is skipped.
    fn stop(&mut self, tid: u32) -> Result<()> {
        let thread = Pid::from_raw(tid as i32);
        if let Some(tracee) = self.ours.filter(|t| t.pid() == tid) {
            let signal = tracee.hold()?;
            self.threads.insert(tid, signal);
            return Ok(());
        }
        match ptrace::seize(thread, ptrace::Options::empty()) {
            Ok(()) => {}
            Err(Errno::ESRCH) => return Ok(()),
            Err(Errno::EPERM) if tracer_of(self.pid).is_some_and(|t| t != 0) => {
                bail!(Failure::Traced {
                    pid: self.pid,
                    tracer: tracer_of(self.pid).unwrap_or_default(),
                })
            }
            Err(error) => return Err(error).context(format!("seize thread {tid}")),
        }
        // Seized: from here the thread is ours to let go, whatever happens next.
        self.threads.insert(tid, None);
        if let Err(error) = ptrace::interrupt(thread) {
            if error == Errno::ESRCH {
                self.threads.remove(&tid);
                return Ok(());
            }
            return Err(error).context(format!("interrupt thread {tid}"));
        }
        loop {
            match waitpid(thread, Some(WaitPidFlag::__WALL)) {
                Ok(WaitStatus::PtraceEvent(..)) => return Ok(()),
                // A signal on its way in stopped it first: it is given back at the thaw.
                Ok(WaitStatus::Stopped(_, signal)) => {
                    self.threads.insert(tid, Some(signal));
                    return Ok(());
                }
                Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) | Err(Errno::ECHILD) => {
                    self.threads.remove(&tid);
                    return Ok(());
                }
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(error) => return Err(error).context(format!("wait for thread {tid}")),
            }
        }
    }

    /// How long the target has been held so far, in ms.
    pub fn held_ms(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1e3
    }
}

impl Drop for Freeze<'_> {
    fn drop(&mut self) {
        for (&tid, &signal) in &self.threads {
            match self.ours.filter(|t| t.pid() == tid) {
                Some(tracee) => tracee.release(signal),
                None => {
                    let _ = ptrace::detach(Pid::from_raw(tid as i32), signal);
                }
            }
        }
    }
}

/// The target's thread ids, from `/proc/PID/task`.
fn threads_of(pid: u32) -> Result<Vec<u32>> {
    let tasks =
        fs::read_dir(format!("/proc/{pid}/task")).map_err(|_| Failure::NoSuchProcess(pid))?;
    Ok(tasks
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect())
}

/// The pid tracing `pid` (0 for none), from `/proc/PID/status`.
fn tracer_of(pid: u32) -> Option<u32> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("TracerPid:"))?
        .trim()
        .parse()
        .ok()
}
