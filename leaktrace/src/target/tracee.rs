//! A launched command kept under ptrace for its whole run, so that its exit can be caught
//! while its memory is intact: the moment valgrind's leak check runs, and the reachability
//! scan's in launch mode. The kernel stops it at its exit (PTRACE_EVENT_EXIT, before its
//! address space goes) and leaktrace lets it finish once scanned.
//!
//! A tracee stops at every signal sent to it, for its tracer to pass on: each stop is
//! answered as leaktrace's loop sees SIGCHLD, so a signal reaches the command a moment late,
//! never lost. A stop signal's group-stop is left standing, as without a tracer. Only the
//! main thread is traced: its exit is the process's.

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
        Ok(Tracee { pid })
    }

    /// Answers every stop reported since the last call; whether the command now waits at its
    /// exit. Its end is left for its reaper: waitid without WEXITED reports stops alone.
    pub fn pending(&self) -> Seen {
        loop {
            let flags = WaitPidFlag::WSTOPPED | WaitPidFlag::WNOHANG | WaitPidFlag::__WALL;
            match waitid(Id::Pid(self.pid), flags) {
                Ok(WaitStatus::PtraceEvent(_, _, event))
                    if event == ptrace::Event::PTRACE_EVENT_EXIT as i32 =>
                {
                    return Seen::Exiting;
                }
                // A signal on its way to the command (waitid tells it as an event of 0).
                Ok(WaitStatus::PtraceEvent(_, signal, 0)) => self.pass_on(signal),
                Ok(WaitStatus::PtraceEvent(..)) => {
                    let _ = ptrace::cont(self.pid, None);
                }
                Ok(WaitStatus::Stopped(_, signal)) => self.pass_on(signal),
                Err(Errno::EINTR) => {}
                Ok(_) | Err(_) => return Seen::Running,
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
