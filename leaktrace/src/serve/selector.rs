//! Which running processes the service traces: by pid, name, executable or cgroup.

use std::{
    fs,
    path::{Path, PathBuf},
};

use super::settings::ServeArgs;
use crate::target::Stat;

/// A process as the selector sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub pid: u32,
    /// With the pid, names this process and no later one that reuses the pid.
    pub start_time: u64,
    pub comm: String,
    pub exe: Option<PathBuf>,
    /// Its cgroup v2 path, e.g. `/system.slice/redis-server.service`.
    pub cgroup: Option<String>,
}

impl Candidate {
    /// The process now; None for a kernel thread or a process gone.
    pub fn read(pid: u32) -> Option<Candidate> {
        let stat = Stat::read(pid)?;
        if stat.is_kernel_thread() || stat.state == 'Z' {
            return None;
        }
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        Some(Candidate {
            pid,
            start_time: stat.start_time,
            comm: comm.trim_end().to_owned(),
            exe: fs::read_link(format!("/proc/{pid}/exe")).ok(),
            cgroup: fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .ok()
                .and_then(|text| unified_cgroup(&text)),
        })
    }

    /// The pid of every process but leaktrace itself: /proc's numbered entries.
    pub fn pids() -> Vec<u32> {
        let own = std::process::id();
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| pid != own)
            .collect()
    }
}

/// The cgroup v2 line of /proc/PID/cgroup (`0::/path`).
fn unified_cgroup(text: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_owned)
}

/// The processes asked for: any that matches one of the choices.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    pids: Vec<u32>,
    comms: Vec<String>,
    exes: Vec<PathBuf>,
    /// cgroup v2 paths, relative to the hierarchy's root.
    cgroups: Vec<String>,
}

impl Selector {
    pub fn new(args: &ServeArgs) -> Selector {
        Selector {
            pids: args.pids.clone(),
            comms: args.comm.clone(),
            exes: args.exe.iter().map(|e| canonical(e)).collect(),
            cgroups: args.cgroup.iter().map(|c| cgroup_path(c)).collect(),
        }
    }

    pub fn matches(&self, process: &Candidate) -> bool {
        self.pids.contains(&process.pid)
            || self.comms.contains(&process.comm)
            || process
                .exe
                .as_ref()
                .is_some_and(|exe| self.exes.contains(exe))
            || process.cgroup.as_deref().is_some_and(|cgroup| {
                self.cgroups
                    .iter()
                    .any(|wanted| cgroup == wanted || cgroup.starts_with(&format!("{wanted}/")))
            })
    }
}

/// An executable as /proc/PID/exe names it: with its links resolved.
fn canonical(path: &Path) -> PathBuf {
    fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// A cgroup given as a path in the hierarchy or in its mount (/sys/fs/cgroup/…), in the
/// hierarchy's terms, without a trailing slash.
fn cgroup_path(path: &Path) -> String {
    let path = path.to_string_lossy();
    let relative = path.strip_prefix("/sys/fs/cgroup").unwrap_or(&path);
    let trimmed = relative.trim_end_matches('/');
    if trimmed.starts_with('/') {
        trimmed.to_owned()
    } else {
        format!("/{trimmed}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(comm: &str, cgroup: &str) -> Candidate {
        Candidate {
            pid: 7,
            start_time: 1,
            comm: comm.into(),
            exe: Some("/opt/srv/bin/server".into()),
            cgroup: Some(cgroup.into()),
        }
    }

    #[test]
    fn a_cgroup_matches_itself_and_below_in_either_spelling() {
        let args = ServeArgs::load(&[
            "--cgroup".into(),
            "/sys/fs/cgroup/system.slice/a.service/".into(),
        ])
        .unwrap();
        let selector = Selector::new(&args);
        assert!(selector.matches(&process("x", "/system.slice/a.service")));
        assert!(selector.matches(&process("x", "/system.slice/a.service/sub")));
        assert!(!selector.matches(&process("x", "/system.slice/a.service2")));
    }

    #[test]
    fn a_name_or_executable_matches() {
        let by_comm = Selector::new(&ServeArgs::load(&["--comm".into(), "redis".into()]).unwrap());
        assert!(by_comm.matches(&process("redis", "/")));
        assert!(!by_comm.matches(&process("redis-cli", "/")));
        let by_exe = Selector::new(
            &ServeArgs::load(&["--exe".into(), "/opt/srv/bin/server".into()]).unwrap(),
        );
        assert!(by_exe.matches(&process("anything", "/")));
    }

    #[test]
    fn this_process_is_read_with_its_cgroup() {
        let own = Candidate::read(std::process::id()).unwrap();
        assert_eq!(own.exe, std::env::current_exe().ok());
        assert!(own.cgroup.is_some_and(|c| c.starts_with('/')));
    }
}
