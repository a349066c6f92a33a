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
        signal::{Signal, kill},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::Pid,
};

/// What the launched command did since last asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Running (its stops, if any, were answered).
    Running,
    /// Stopped at its exit, memory intact: [`Tracee::let_exit`] when done with it.
    Exiting,
    /// Gone, with this status (exit code, or 128 + signal) when it was seen here.
    Exited(Option<i32>),
}

/// The launched command, traced.
pub struct Tracee {
    pid: Pid,
    /// Its status once the exit was seen here (it is reaped then).
    status: Cell<Option<i32>>,
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
            status: Cell::new(None),
        })
    }

    /// Answers every stop reported since the last call; what the command is doing now.
    pub fn pending(&self) -> Seen {
        if let Some(status) = self.status.get() {
            return Seen::Exited(Some(status));
        }
        loop {
            match waitpid(self.pid, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
                Ok(WaitStatus::StillAlive) => return Seen::Running,
                // Reaped already: nothing of it is left to wait for.
                Err(Errno::ECHILD) => return Seen::Exited(None),
                Ok(WaitStatus::PtraceEvent(_, _, event))
                    if event == ptrace::Event::PTRACE_EVENT_EXIT as i32 =>
                {
                    return Seen::Exiting;
                }
                Ok(WaitStatus::PtraceEvent(..)) => {
                    let _ = ptrace::cont(self.pid, None);
                }
                Ok(WaitStatus::Stopped(_, signal)) => self.pass_on(signal),
                Ok(WaitStatus::Exited(_, code)) => return self.exited(code),
                Ok(WaitStatus::Signaled(_, signal, _)) => return self.exited(128 + signal as i32),
                Ok(_) | Err(Errno::EINTR) => {}
                Err(_) => return Seen::Running,
            }
        }
    }

    fn exited(&self, status: i32) -> Seen {
        self.status.set(Some(status));
        Seen::Exited(Some(status))
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
        let _ = ptrace::cont(self.pid, None);
    }

    /// Ends the command, still running after the capture: SIGTERM, answering its stops for
    /// `grace_ms`, then SIGKILL; reaped.
    pub fn end(&self, grace_ms: u64) {
        let _ = kill(self.pid, Signal::SIGTERM);
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(grace_ms);
        let mut killed = false;
        loop {
            match self.pending() {
                Seen::Exited(_) => return,
                Seen::Exiting => self.let_exit(),
                Seen::Running => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
            if !killed && std::time::Instant::now() >= deadline {
                let _ = kill(self.pid, Signal::SIGKILL);
                killed = true;
            }
        }
    }
}
