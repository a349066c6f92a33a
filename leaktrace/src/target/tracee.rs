//! A launched command kept under ptrace for its whole run, so that its exit can be caught
//! while its memory is intact: the moment valgrind's leak check runs, and the reachability
//! scan's in launch mode. The kernel stops it at its exit (PTRACE_EVENT_EXIT, before its
//! address space goes) and leaktrace lets it finish once scanned.
//!
//! A tracee stops at every signal sent to it, for its tracer to pass on: each stop is
//! answered as leaktrace's loop sees SIGCHLD, so a signal reaches the command a moment late,
//! never lost. A stop signal's group-stop is left standing, as without a tracer. Only the
//! main thread is traced: its exit is the process's.

use std::cell::Cell;

use anyhow::{Context, Result};
use nix::{
    errno::Errno,
    sys::{
        ptrace,
        signal::Signal,
        wait::{Id, WaitPidFlag, WaitStatus, waitid},
    },
    unistd::Pid,
};

use super::Stat;

/// Whether process `pid` is gone or a zombie.
fn gone(pid: i32) -> bool {
    Stat::read(pid as u32).is_none_or(|stat| stat.state == 'Z')
}

/// One stop of the command ([`Tracee::next_stop`]).
enum Stop {
    /// At its exit (PTRACE_EVENT_EXIT): its memory is intact.
    AtExit,
    /// A signal on its way to it, or a group stop.
    Signal(Signal),
    /// Another event stop (its exec).
    Event,
    /// None reported.
    Nothing,
}

/// What the launched command did since last asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Running, or gone (its stops, if any, were answered).
    Running,
    /// Stopped at its exit, memory intact: [`Tracee::let_exit`] when done with it.
    Exiting,
}

/// The launched command, traced.
pub struct Tracee {
    pid: Pid,
    /// SIGSTOPs leaktrace sent to hold the command for a scan and not yet seen arrive: each
    /// is swallowed when it does, never passed on.
    own_stops: Cell<u32>,
    /// Seen stopped at its exit and not let go yet: told again to whoever asks next.
    exiting: Cell<bool>,
}

impl Tracee {
    /// Takes over the command held at a ptrace stop since its launch, and lets it run.
    pub fn follow(pid: u32) -> Result<Tracee> {
        let pid = Pid::from_raw(pid as i32);
        // Not PTRACE_O_EXITKILL: if leaktrace dies, the command runs on, untraced.
        ptrace::setoptions(
            pid,
            ptrace::Options::PTRACE_O_TRACEEXIT | ptrace::Options::PTRACE_O_TRACEEXEC,
        )
        .context("trace the started command's exit")?;
        ptrace::cont(pid, None).context("resume the started command")?;
        Ok(Tracee {
            pid,
            own_stops: Cell::new(0),
            exiting: Cell::new(false),
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    /// Stops the command's main thread for a scan (its other threads are not traced, and
    /// are seized): a SIGSTOP of leaktrace's own, held at its delivery. A signal of another
    /// sender may stop it first: it is returned, to be passed on at [`Tracee::release`]. Its
    /// end is never reaped here (waitid without WEXITED), and a stop at its exit is kept
    /// for the exit scan.
    pub fn hold(&self) -> Result<Option<Signal>> {
        // To the main thread alone (tgkill): a process-wide SIGSTOP could stop another thread
        // first, and with it the whole process in a group stop.
        let pid = self.pid.as_raw();
        // SAFETY: tgkill takes three integers and touches no memory.
        if unsafe { libc::syscall(libc::SYS_tgkill, pid, pid, libc::SIGSTOP) } != 0 {
            return Err(std::io::Error::last_os_error()).context("stop the started command");
        }
        self.own_stops.set(self.own_stops.get() + 1);
        loop {
            match self.next_stop() {
                Ok(Stop::AtExit | Stop::Event) => return Ok(None),
                Ok(Stop::Signal(Signal::SIGSTOP)) if self.swallow() => return Ok(None),
                Ok(Stop::Signal(signal)) => return Ok(Some(signal)),
                Ok(Stop::Nothing) if gone(pid) => {
                    anyhow::bail!("the started command ended before it could be held")
                }
                Ok(Stop::Nothing) | Err(Errno::EINTR) => {
                    std::thread::sleep(std::time::Duration::from_micros(100));
                }
                Err(error) => return Err(error).context("wait for the started command"),
            }
        }
    }

    /// The next stop the command reported, if any, as waitid tells it: without WEXITED, so
    /// its end is left for its reaper. A stop at its exit is remembered.
    fn next_stop(&self) -> Result<Stop, Errno> {
        let flags = WaitPidFlag::WSTOPPED | WaitPidFlag::WNOHANG | WaitPidFlag::__WALL;
        Ok(match waitid(Id::Pid(self.pid), flags)? {
            WaitStatus::PtraceEvent(_, _, event)
                if event == ptrace::Event::PTRACE_EVENT_EXIT as i32 =>
            {
                self.exiting.set(true);
                Stop::AtExit
            }
            // A signal on its way to the command (waitid tells it as an event of 0).
            WaitStatus::PtraceEvent(_, signal, 0) | WaitStatus::Stopped(_, signal) => {
                Stop::Signal(signal)
            }
            WaitStatus::PtraceEvent(..) => Stop::Event,
            _ => Stop::Nothing,
        })
    }

    /// Lets the command go after [`Tracee::hold`], with the signal that stopped it, if any;
    /// one found at its exit stays there for the exit scan.
    pub fn release(&self, signal: Option<Signal>) {
        if !self.exiting.get() {
            let _ = ptrace::cont(self.pid, signal);
        }
    }

    /// Whether a SIGSTOP arriving now is one of leaktrace's own (and counts it off).
    fn swallow(&self) -> bool {
        let own = self.own_stops.get();
        if own > 0 {
            self.own_stops.set(own - 1);
        }
        own > 0
    }

    /// Answers every stop reported since the last call; whether the command now waits at its
    /// exit. Its end is left for its reaper: waitid without WEXITED reports stops alone.
    pub fn pending(&self) -> Seen {
        if self.exiting.get() {
            return Seen::Exiting;
        }
        loop {
            match self.next_stop() {
                Ok(Stop::AtExit) => return Seen::Exiting,
                Ok(Stop::Signal(Signal::SIGSTOP)) if self.swallow() => {
                    let _ = ptrace::cont(self.pid, None);
                }
                Ok(Stop::Signal(signal)) => self.pass_on(signal),
                Ok(Stop::Event) => {
                    let _ = ptrace::cont(self.pid, None);
                }
                Err(Errno::EINTR) => {}
                Ok(Stop::Nothing) | Err(_) => return Seen::Running,
            }
        }
    }

    /// A signal-delivery stop: the signal goes on to the command. A group stop (the command
    /// stopped by SIGSTOP or the terminal) has no signal information, and stays stopped.
    fn pass_on(&self, signal: Signal) {
        let group_stop = ptrace::getsiginfo(self.pid) == Err(Errno::EINVAL);
        if !group_stop {
            let _ = ptrace::cont(self.pid, signal);
        }
    }

    /// Lets the command finish exiting.
    pub fn let_exit(&self) {
        self.exiting.set(false);
        let _ = ptrace::cont(self.pid, None);
    }

    /// Answers the command's stops until `exited` says it is gone.
    pub fn until_gone(&self, exited: impl Fn() -> bool) {
        while !exited() {
            if self.pending() == Seen::Exiting {
                self.let_exit();
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}
