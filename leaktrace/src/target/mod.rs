//! Target: the traced process.
//!
//! In: a pid (`-p`) or a command to start stopped. Out: a [`Target`] leaktrace holds by a
//! pidfd, so that a recycled pid is never taken for it, with its mappings ([`maps`]) and the
//! files behind them as leaktrace can open them, its memory as the kernel counts it
//! ([`memory`]: RSS, PSS, heap), which needs no probes, and its CPU time ([`cpu`]).

pub mod cpu;
pub mod maps;
pub mod memory;
pub mod tracee;

use std::{
    cell::OnceCell,
    ffi::OsString,
    fs,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::process::CommandExt,
    },
    process::Command,
};

use anyhow::{Context, Result, bail};
use nix::{
    sys::{
        ptrace,
        signal::{Signal, kill},
        wait::{WaitStatus, waitpid},
    },
    unistd::Pid,
};

use self::{maps::ProcessMaps, tracee::Tracee};
use crate::{
    error::{CAPTURE_CAPABILITIES, Capability, Failure, capability_remedy},
    plan::{AllocatorChoice, AllocatorSearch, ProbePlan},
};

/// How many syscalls of a starting program we watch for its allocator to be mapped. The dynamic
/// loader maps every needed library within a few dozen; past this the program has no allocator
/// we can find.
const MAX_LOADER_SYSCALLS: u32 = 20_000;

/// What to trace, as the command line names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetSpec {
    /// `-p PID`.
    Running(u32),
    /// `-- CMD ARGS…`, started stopped.
    Launch(Vec<OsString>),
    /// Neither: leaktrace's own demo, started like a command.
    Demo,
}

/// What leaktrace will do with an existing process, and so what it must be allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Probe it: a capture.
    Trace,
    /// Read its memory figures alone (`leaktrace watch`).
    ReadMemory,
}

/// The process being traced.
pub struct Target {
    pub pid: u32,
    /// Its program name ([`process_name`]).
    pub command: String,
    /// True when leaktrace started it (and so saw every allocation).
    pub launched: bool,
    /// Becomes readable when the process exits.
    pub exit_fd: OwnedFd,
    /// When the process started (clock ticks after boot, /proc/PID/stat): with the pid, its
    /// identity. A pid is reused once its process is gone; a start time is not.
    pub start_time: u64,
    /// A launched command kept traced to its exit ([`Target::resume`]).
    tracee: OnceCell<Tracee>,
}

impl Target {
    /// The process `spec` names, and what to probe in it.
    pub fn open(spec: &TargetSpec, choice: &AllocatorChoice) -> Result<(Target, ProbePlan)> {
        match spec {
            TargetSpec::Running(pid) => {
                let target = Target::existing(*pid, Access::Trace)?;
                let plan = target.probe_plan(choice.clone())?;
                Ok((target, plan))
            }
            TargetSpec::Launch(argv) => Target::launch(argv, choice.clone()),
            TargetSpec::Demo => Target::launch(&crate::demo::command()?, choice.clone()),
        }
    }

    /// An existing process, checked to exist and to be ours to `access`.
    pub fn existing(pid: u32, access: Access) -> Result<Target> {
        if !i32::try_from(pid).is_ok_and(|p| p > 0) {
            return Err(Failure::NoSuchProcess(pid).into());
        }
        // The pidfd first: what is read of the pid from then on is of this process, as long
        // as the pidfd says it is alive ([`Target::still_running`]).
        let target = Target::from_pid(pid, false)?;
        // What the pid is comes first: a kernel thread is no one's to trace.
        let stat = Stat::read(pid).ok_or(Failure::NoSuchProcess(pid))?;
        if stat.is_kernel_thread() {
            return Err(Failure::KernelThread(pid).into());
        }
        if stat.state == 'Z' {
            return Err(Failure::Zombie(pid).into());
        }
        // A file of the pid that its owner, or CAP_SYS_PTRACE, may read: for a capture its maps,
        // which the probes' plan reads first (not kill(pid, 0), which asks for the right to
        // signal it, CAP_KILL, that tracing never uses); for watch its memory figures.
        let (file, action, remedy) = match access {
            Access::Trace => (
                "maps",
                format!("trace pid {pid}"),
                capability_remedy(&CAPTURE_CAPABILITIES),
            ),
            Access::ReadMemory => (
                "smaps_rollup",
                format!("read /proc/{pid}/smaps_rollup"),
                format!(
                    "pid {pid} belongs to another user: run as root or as its owner; {}",
                    capability_remedy(&[Capability::SysPtrace])
                ),
            ),
        };
        if let Err(error) = fs::File::open(format!("/proc/{pid}/{file}"))
            && error.kind() == std::io::ErrorKind::PermissionDenied
        {
            return Err(Failure::NotPermitted { action, remedy }.into());
        }
        if !target.still_running() {
            return Err(Failure::NoSuchProcess(pid).into());
        }
        Ok(target)
    }

    /// A child of a traced process, followed with `-f`: held by a pidfd from now, so that its
    /// exit is seen (`exited`) and its pid, once reused, is never taken for it.
    pub fn child(pid: u32) -> Result<Target> {
        Target::from_pid(pid, false)
    }

    /// Whether the process has exited (a zombie included).
    pub fn exited(&self) -> bool {
        self.exits_within(0)
    }

    fn from_pid(pid: u32, launched: bool) -> Result<Target> {
        let exit_fd = pidfd_open(pid)?;
        let start_time = Stat::read(pid)
            .ok_or(Failure::NoSuchProcess(pid))?
            .start_time;
        Ok(Target {
            pid,
            command: process_name(pid),
            launched,
            exit_fd,
            start_time,
            tracee: OnceCell::new(),
        })
    }

    /// Whether the process is still the one we opened: not exited (its pidfd says so), and
    /// its pid not taken by another process since (its start time says so).
    pub fn still_running(&self) -> bool {
        !self.exits_within(0)
            && Stat::read(self.pid).is_some_and(|stat| stat.start_time == self.start_time)
    }

    /// `error`, from work on the process, or, when the process has exited meanwhile, that it
    /// did (exit 3), with `error` as its cause: a probe that could not go into a process that
    /// is gone says little by itself.
    pub fn unless_exited(&self, error: anyhow::Error) -> anyhow::Error {
        if self.still_running() {
            error
        } else {
            error.context(Failure::ExitedDuringAttach(self.pid))
        }
    }

    /// Whether the process has exited, or does within `timeout_ms`.
    fn exits_within(&self, timeout_ms: i32) -> bool {
        let mut poll = libc::pollfd {
            fd: self.exit_fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, which lives across the call.
        unsafe { libc::poll(&mut poll, 1, timeout_ms) != 0 }
    }

    /// What to probe in a running process.
    pub fn probe_plan(&self, choice: AllocatorChoice) -> Result<ProbePlan> {
        let maps =
            ProcessMaps::read(self.pid).with_context(|| format!("read /proc/{}/maps", self.pid))?;
        AllocatorSearch::new(choice)
            .plan(self.pid, &maps)
            .filter(|plan| !plan.points.is_empty())
            .ok_or_else(|| Failure::NoAllocator(self.pid).into())
    }

    /// Starts `argv` under ptrace and holds it stopped at the first syscall after which every
    /// library it needs is mapped, the probed ones' code included: before any of their code
    /// has run, so no allocation is missed. [`Target::resume`] lets it go once the probes are in.
    pub fn launch(argv: &[OsString], choice: AllocatorChoice) -> Result<(Target, ProbePlan)> {
        let (program, args) = argv.split_first().context("no command given")?;
        let mut command = Command::new(program);
        command.args(args);
        // SAFETY: PTRACE_TRACEME is async-signal-safe and touches no memory of ours.
        unsafe {
            command.pre_exec(|| ptrace::traceme().map_err(std::io::Error::from));
        }
        let child = command.spawn().map_err(|source| Failure::LaunchFailed {
            command: program.to_string_lossy().into_owned(),
            source,
        })?;
        let pid = child.id();
        let nix_pid = Pid::from_raw(pid as i32);
        // The exec stop: the new image is loaded and has not run an instruction.
        expect_stop(waitpid(nix_pid, None)?, pid)?;
        ptrace::setoptions(
            nix_pid,
            ptrace::Options::PTRACE_O_TRACESYSGOOD | ptrace::Options::PTRACE_O_EXITKILL,
        )?;
        let target = Target::from_pid(pid, true)?;
        let mut search = AllocatorSearch::while_loading(choice);
        for _ in 0..MAX_LOADER_SYSCALLS {
            let maps = ProcessMaps::read(pid)?;
            match search.plan(pid, &maps) {
                Some(plan) if plan.points.is_empty() => break,
                // Once the probed libraries' code is mapped too, their frames can be named
                // and unwound even if the program is gone before the first report.
                Some(plan) if plan.modules().iter().all(|m| maps.has_code(m)) => {
                    return Ok((target, plan));
                }
                Some(_) | None => {}
            }
            ptrace::syscall(nix_pid, None)?;
            expect_stop(waitpid(nix_pid, None)?, pid)?;
        }
        Err(Failure::NoAllocator(pid).into())
    }

    /// Lets a launched target run (probes attached); nothing to do for an existing process.
    /// With `to_its_exit`, it stays traced, to be stopped at its exit ([`tracee`]).
    pub fn resume(&self, to_its_exit: bool) -> Result<()> {
        if !self.launched {
            return Ok(());
        }
        if to_its_exit {
            let _ = self.tracee.set(Tracee::follow(self.pid)?);
        } else {
            ptrace::detach(Pid::from_raw(self.pid as i32), None)
                .context("resume the started command")?;
        }
        Ok(())
    }

    /// The launched command, when it is kept traced to its exit.
    pub fn tracee(&self) -> Option<&Tracee> {
        self.tracee.get()
    }

    /// The exit status of a launched target that has exited (exit code, or 128 + signal).
    /// leaktrace is not the parent of an existing process, so it cannot know that one's.
    pub fn reap(&self) -> Option<i32> {
        if !self.launched {
            return None;
        }
        // Called once the process is ending: a traced one's last stops are answered first.
        if let Some(tracee) = self.tracee() {
            tracee.until_gone(|| self.exits_within(0));
        }
        match waitpid(Pid::from_raw(self.pid as i32), None).ok()? {
            WaitStatus::Exited(_, code) => Some(code),
            WaitStatus::Signaled(_, signal, _) => Some(128 + signal as i32),
            _ => None,
        }
    }
}

/// A command leaktrace started does not outlive it: when the capture ends first (Ctrl-C sent
/// to leaktrace alone, `-d`, `--count`, an error), the command gets SIGTERM, as `timeout`
/// gives it, and SIGKILL if it is still there [`LAUNCHED_GRACE_MS`] later. Then it is reaped.
impl Drop for Target {
    fn drop(&mut self) {
        if !self.launched || self.exits_within(0) {
            return;
        }
        let pid = Pid::from_raw(self.pid as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline =
            std::time::Instant::now() + std::time::Duration::from_millis(LAUNCHED_GRACE_MS as u64);
        // A traced command's stops (the signal itself, its exit) are answered meanwhile.
        let ended = || self.exits_within(0) || std::time::Instant::now() >= deadline;
        match self.tracee() {
            Some(tracee) => tracee.until_gone(ended),
            None => {
                self.exits_within(LAUNCHED_GRACE_MS);
            }
        }
        if !self.exits_within(0) {
            let _ = kill(pid, Signal::SIGKILL);
            if let Some(tracee) = self.tracee() {
                tracee.until_gone(|| self.exits_within(0));
            }
        }
        let _ = waitpid(pid, None);
    }
}

/// How long a started command has to end on SIGTERM once the capture is over.
const LAUNCHED_GRACE_MS: i32 = 500;

/// The kernel's flag for kernel threads, in /proc/PID/stat.
const PF_KTHREAD: u64 = 0x0020_0000;

/// What leaktrace reads of /proc/PID/stat.
pub struct Stat {
    pub state: char,
    pub flags: u64,
    /// Clock ticks after boot: with the pid, it names one process, whatever reuses the pid.
    pub start_time: u64,
}

impl Stat {
    /// The command name before the fields is in parentheses and may hold spaces and
    /// parentheses itself: the fields are read from the last ')'.
    pub fn read(pid: u32) -> Option<Stat> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields 3 (state) onwards; flags is field 9, starttime field 22.
        let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
        Some(Stat {
            state: fields.first()?.chars().next()?,
            flags: fields.get(6)?.parse().ok()?,
            start_time: fields.get(19)?.parse().ok()?,
        })
    }

    pub fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }
}

/// A process's program name: `argv[0]`'s file name, else /proc/PID/comm (cut at 15 bytes).
pub fn process_name(pid: u32) -> String {
    let argv0 = fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .and_then(|cmdline| {
            let argv0 = cmdline.split(|&b| b == 0).next()?;
            let name = argv0.rsplit(|&b| b == b'/').next()?;
            (!name.is_empty()).then(|| String::from_utf8_lossy(name).into_owned())
        });
    argv0
        .or_else(|| {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            Some(comm.trim_end().to_owned())
        })
        .unwrap_or_else(|| "?".into())
}

fn expect_stop(status: WaitStatus, pid: u32) -> Result<()> {
    match status {
        WaitStatus::Stopped(_, Signal::SIGTRAP) | WaitStatus::PtraceSyscall(_) => Ok(()),
        WaitStatus::Exited(_, code) => {
            bail!("pid {pid} exited with status {code} before its allocator was loaded")
        }
        WaitStatus::Signaled(_, signal, _) => {
            bail!("pid {pid} was killed by {signal} before its allocator was loaded")
        }
        other => bail!("pid {pid} stopped unexpectedly while starting: {other:?}"),
    }
}

fn pidfd_open(pid: u32) -> Result<OwnedFd> {
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::ESRCH) {
            return Err(Failure::NoSuchProcess(pid).into());
        }
        return Err(error).context("pidfd_open");
    }
    // SAFETY: the kernel just gave us this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
