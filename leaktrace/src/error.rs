//! Failures an operator must act on, each with its own exit code so scripts can tell them apart.

use std::{io, path::PathBuf};

/// A failure with a remedy. Anything else leaktrace reports exits with [`EXIT_OTHER`].
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("no process with pid {0}: check the pid with `ps -p {0}`")]
    NoSuchProcess(u32),
    /// The target was there when leaktrace opened it, and exited while leaktrace attached to
    /// it: the failure that made leaktrace notice (a probe it could not put in a process that
    /// is gone) follows as the cause.
    #[error("pid {0} exited while leaktrace attached to it")]
    ExitedDuringAttach(u32),
    #[error("not permitted to {action}: {remedy}")]
    NotPermitted { action: String, remedy: String },
    #[error("no allocator found in pid {0}: it maps no library that defines malloc")]
    NoAllocator(u32),
    #[error("this kernel cannot run leaktrace: {0}")]
    KernelUnsupported(String),
    #[error("could not start `{command}`: {source}")]
    LaunchFailed { command: String, source: io::Error },
    /// Report paths that cannot take their report, every one of them: found before the
    /// capture, or when the reports were written (a full disk).
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    OutputPaths(Vec<OutputPath>),
    #[error("pid {0} is a kernel thread: it has no user-space allocator to trace")]
    KernelThread(u32),
    #[error("pid {0} is a zombie: it has exited and waits for its parent to reap it")]
    Zombie(u32),
    #[error(
        "pid {pid} is traced by pid {tracer} (a debugger?): the reachability scan must stop it \
         itself; detach the tracer, or capture without --scan"
    )]
    Traced { pid: u32, tracer: u32 },
    #[error("cannot use the suppressions in {}: {reason}", path.display())]
    Suppressions { path: PathBuf, reason: String },
    /// `leaktrace serve`'s settings, on its command line or in its config file, cannot be
    /// used: bad arguments, as clap's.
    #[error("{0}")]
    Settings(String),
    #[error(
        "{bytes} bytes in {blocks} blocks leaked (--errors-for-leak-kinds), unsuppressed: \
         exit {code} as --error-exitcode asks"
    )]
    Leaked { bytes: u64, blocks: u64, code: i32 },
}

/// A report path that cannot take its report, and why.
#[derive(Debug)]
pub struct OutputPath {
    pub path: PathBuf,
    pub reason: String,
}

impl std::fmt::Display for OutputPath {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "cannot write {}: {}", self.path.display(), self.reason)
    }
}

/// The capabilities leaktrace's work takes, by their numbers in linux/capability.h.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capability {
    SysPtrace = 19,
    Perfmon = 38,
    Bpf = 39,
}

impl Capability {
    fn name(self) -> &'static str {
        match self {
            Capability::SysPtrace => "CAP_SYS_PTRACE",
            Capability::Perfmon => "CAP_PERFMON",
            Capability::Bpf => "CAP_BPF",
        }
    }
}

/// What a capture takes: loading BPF, attaching uprobes, reading another process's memory.
pub const CAPTURE_CAPABILITIES: [Capability; 3] =
    [Capability::Bpf, Capability::Perfmon, Capability::SysPtrace];

/// What to do about a refusal of work that takes `needed`: each of them this process lacks,
/// named; or, when it has them all, what else refuses.
pub fn capability_remedy(needed: &[Capability]) -> String {
    let effective = effective_capabilities();
    let missing: Vec<&str> = needed
        .iter()
        .filter(|c| effective & (1 << **c as u64) == 0)
        .map(|c| c.name())
        .collect();
    let all: Vec<&str> = needed.iter().map(|c| c.name()).collect();
    if missing.is_empty() {
        return format!(
            "refused although leaktrace has {}: a security module (SELinux, AppArmor, \
             lockdown) or a kernel setting forbids it",
            english_list(&all)
        );
    }
    format!(
        "leaktrace lacks {}: run it as root, or grant it {}",
        english_list(&missing),
        english_list(&all)
    )
}

/// This process's effective capability set (CapEff in /proc/self/status).
fn effective_capabilities() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
            u64::from_str_radix(hex.trim(), 16).ok()
        })
        .unwrap_or(0)
}

/// "A, B and C".
fn english_list(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// Exit code for failures that are not a [`Failure`].
pub const EXIT_OTHER: i32 = 1;

impl Failure {
    /// The process exit code; the README lists them.
    pub fn exit_code(&self) -> i32 {
        match self {
            Failure::NoSuchProcess(_) | Failure::ExitedDuringAttach(_) => 3,
            Failure::NotPermitted { .. } => 4,
            Failure::NoAllocator(_) => 5,
            Failure::KernelUnsupported(_) => 6,
            Failure::LaunchFailed { .. } => 7,
            Failure::OutputPaths(_) => 8,
            Failure::KernelThread(_) => 9,
            Failure::Zombie(_) => 10,
            Failure::Traced { .. } => 11,
            Failure::Suppressions { .. } => 12,
            Failure::Settings(_) => 2,
            // The test suite's own choice, not one of leaktrace's.
            Failure::Leaked { code, .. } => *code,
        }
    }
}

/// The exit code for an error chain: the first [`Failure`] in it decides, whether it is the
/// error or context given to it (anyhow looks through contexts, outermost first; the
/// chain's causes, as plain errors, do not show a context's type).
pub fn exit_code(error: &anyhow::Error) -> i32 {
    error
        .downcast_ref::<Failure>()
        .map_or(EXIT_OTHER, Failure::exit_code)
}

/// The errno of the first I/O error in a chain, for classifying kernel refusals.
pub fn os_error(error: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(errno) = current
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return Some(errno);
        }
        cause = current.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every exit code leaktrace can give: each failure's, clap's 2 for bad flags and
    /// arguments, any other error's, and success. (A target that exited during the attach is
    /// not there, as a pid that names no process is not: both give 3.)
    fn every_exit_code() -> Vec<i32> {
        let failures = [
            Failure::NoSuchProcess(1),
            Failure::NotPermitted {
                action: "x".into(),
                remedy: "y".into(),
            },
            Failure::NoAllocator(1),
            Failure::KernelUnsupported("x".into()),
            Failure::LaunchFailed {
                command: "x".into(),
                source: io::Error::from_raw_os_error(2),
            },
            Failure::OutputPaths(Vec::new()),
            Failure::KernelThread(1),
            Failure::Zombie(1),
            Failure::Traced { pid: 1, tracer: 2 },
            Failure::Suppressions {
                path: "x".into(),
                reason: "y".into(),
            },
        ];
        let mut codes: Vec<i32> = failures.iter().map(Failure::exit_code).collect();
        codes.extend([EXIT_OTHER, 2, 0]);
        codes
    }

    #[test]
    fn each_failure_has_its_own_exit_code() {
        let mut codes = every_exit_code();
        let count = codes.len();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), count, "exit codes collide: {codes:?}");
    }

    /// The README's table and `--help` list exactly the codes leaktrace gives.
    #[test]
    fn every_exit_code_is_documented() {
        let mut codes = every_exit_code();
        codes.sort();
        let readme = include_str!("../../README.md");
        let table = readme
            .split("### Exit codes")
            .nth(1)
            .expect("the README has an exit code table");
        let mut documented: Vec<i32> = table
            .lines()
            .skip_while(|l| !l.starts_with("| code"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .filter_map(|l| {
                l.trim_start_matches('|')
                    .split('|')
                    .next()?
                    .trim()
                    .parse()
                    .ok()
            })
            .collect();
        documented.sort();
        assert_eq!(documented, codes, "the README's exit codes");
        use clap::CommandFactory;
        let help = crate::cli::Cli::command()
            .get_after_help()
            .expect("--help lists the exit codes")
            .to_string();
        let listed = help.split("Exit codes:").nth(1).expect("an exit code list");
        let mut in_help: Vec<i32> = listed
            .split(',')
            .filter_map(|item| item.split_whitespace().next()?.parse().ok())
            .collect();
        in_help.sort();
        assert_eq!(in_help, codes, "--help's exit codes: {listed}");
    }

    #[test]
    fn exit_code_finds_a_failure_given_as_context() {
        let error = anyhow::anyhow!("probe malloc: No such process")
            .context(Failure::ExitedDuringAttach(7));
        assert_eq!(exit_code(&error), 3);
        assert_eq!(
            format!("{error:#}"),
            "pid 7 exited while leaktrace attached to it: probe malloc: No such process"
        );
    }

    #[test]
    fn exit_code_finds_a_failure_behind_context() {
        let error = anyhow::Error::new(Failure::NoAllocator(7)).context("attaching");
        assert_eq!(exit_code(&error), 5);
        assert_eq!(exit_code(&anyhow::anyhow!("plain")), EXIT_OTHER);
    }

    #[test]
    fn a_list_reads_as_english() {
        assert_eq!(english_list(&["A"]), "A");
        assert_eq!(english_list(&["A", "B"]), "A and B");
        assert_eq!(english_list(&["A", "B", "C"]), "A, B and C");
    }
}
