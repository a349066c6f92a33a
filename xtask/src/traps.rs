//! The bench's floor: the kernel's traps alone, on the points leaktrace chose, with no BPF
//! program. Uprobes opened through the kernel's uprobe PMU (perf_event_open) at each point
//! leaktrace's exact run hit, return probes where it had one. What leaktrace costs above this
//! row is its programs' work; what this row costs above untraced, no program can take back.

use std::{
    ffi::CString,
    fs,
    os::{
        fd::{FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::FileExt},
    },
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

use crate::bench::mapped;

/// A probe point of leaktrace's report: where it probed, and whether with a return probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrapPoint {
    pub module: PathBuf,
    pub offset: u64,
    pub returns: bool,
}

/// The leading part of the kernel's `struct perf_event_attr` (PERF_ATTR_SIZE_VER1), all a
/// uprobe counter needs: the probed file in `config1`, the offset in `config2`.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
    config2: u64,
}

const INT3: u8 = 0xcc;

/// The uprobes in place; closing them removes them. They are bound to the process's first
/// thread, but the kernel puts a uprobe's breakpoint in the process's memory and runs its
/// handler for every thread of it: each thread takes the traps.
pub struct Traps {
    points: Vec<TrapPoint>,
    _uprobes: Vec<OwnedFd>,
}

impl Traps {
    /// Opens a uprobe (a return probe too, where the point has one) at each of `points` in
    /// process `pid`, counting from now.
    pub fn open(pid: u32, points: &[TrapPoint]) -> Result<Traps> {
        if points.is_empty() {
            bail!("no points: leaktrace's exact run reported none hit");
        }
        let pmu = Path::new("/sys/bus/event_source/devices/uprobe");
        let kind: u32 = read_trimmed(&pmu.join("type"))?.parse()?;
        // "config:0": the bit that makes a uprobe a return probe.
        let retprobe_bit: u32 = read_trimmed(&pmu.join("format/retprobe"))?
            .strip_prefix("config:")
            .context("the uprobe PMU's retprobe format")?
            .parse()?;
        let mut uprobes = Vec::new();
        for point in points {
            let path = CString::new(point.module.as_os_str().as_bytes())?;
            for retprobe in [false, true].into_iter().filter(|&r| !r || point.returns) {
                let attr = PerfEventAttr {
                    kind,
                    size: size_of::<PerfEventAttr>() as u32,
                    config: u64::from(retprobe) << retprobe_bit,
                    config1: path.as_ptr() as u64,
                    config2: point.offset,
                    ..PerfEventAttr::default()
                };
                // SAFETY: `attr` is a valid attribute of the size it gives, and `path` lives
                // through the call.
                let fd = unsafe { libc::syscall(libc::SYS_perf_event_open, &attr, pid, -1, -1, 0) };
                if fd < 0 {
                    return Err(std::io::Error::last_os_error()).with_context(|| {
                        format!(
                            "open a uprobe at {}+{:#x}",
                            point.module.display(),
                            point.offset
                        )
                    });
                }
                // SAFETY: the kernel just returned this descriptor, and nothing else owns it.
                uprobes.push(unsafe { OwnedFd::from_raw_fd(fd as i32) });
            }
        }
        Ok(Traps {
            points: points.to_vec(),
            _uprobes: uprobes,
        })
    }

    /// Checks that the kernel has put each point's breakpoint (int3) in process `pid`'s
    /// memory: a floor whose probes were never in would be no floor.
    pub fn check(&self, pid: u32) -> Result<()> {
        let memory = fs::File::open(format!("/proc/{pid}/mem"))?;
        for point in &self.points {
            let (_, start, offset) = mapped(pid, |path| path == point.module)
                .with_context(|| format!("{} is not mapped", point.module.display()))?;
            let mut byte = [0u8];
            memory.read_exact_at(&mut byte, start + point.offset - offset)?;
            if byte[0] != INT3 {
                bail!(
                    "no breakpoint at {}+{:#x}",
                    point.module.display(),
                    point.offset
                );
            }
        }
        Ok(())
    }
}

fn read_trimmed(path: &Path) -> Result<String> {
    Ok(fs::read_to_string(path)
        .with_context(|| format!("read {} (no uprobe PMU?)", path.display()))?
        .trim()
        .to_owned())
}
