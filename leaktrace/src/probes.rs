//! Loading the eBPF object and attaching its uprobes to the target's allocator.

use std::{num::NonZeroU32, path::Path};

use anyhow::{Context, Result};
use aya::{
    Ebpf, EbpfLoader, include_bytes_aligned,
    maps::{Array, MapData, PerCpuArray, RingBuf, StackTraceMap},
    programs::{UProbe, uprobe::UProbeScope},
};
use leaktrace_common::{CONTROL_ENABLED, DropCounter, maps};
use serde::Serialize;

use crate::{
    allocator::Allocator,
    error::{Failure, os_error},
};

/// The committed object `cargo xtask build-ebpf` writes; build.rs checks it is current.
static OBJECT: &[u8] = include_bytes_aligned!("../bpf/leaktrace.bpf.o");

/// A uprobe program on one allocator function.
struct ProbePoint {
    function: &'static str,
    program: &'static str,
}

const fn point(function: &'static str, program: &'static str) -> ProbePoint {
    ProbePoint { function, program }
}

/// Return probes go in first: an entry that fires before its return probe exists would leave a
/// pending call that no return ever takes.
const RETURN_PROBES: [ProbePoint; 3] = [
    point("malloc", "alloc_exit"),
    point("calloc", "alloc_exit"),
    point("realloc", "realloc_exit"),
];
const ENTRY_PROBES: [ProbePoint; 4] = [
    point("malloc", "malloc_enter"),
    point("calloc", "calloc_enter"),
    point("realloc", "realloc_enter"),
    point("free", "free_enter"),
];

/// What the kernel side could not deliver whole, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DropCounts {
    /// Events lost: the ring buffer was full.
    pub ring_buffer_full: u64,
    /// Stacks that did not fit the stack map. Nothing is lost: they came inline instead.
    pub stack_map_full: u64,
    /// Allocations whose stack could not be read: counted, under an unknown call site.
    pub stack_unreadable: u64,
    /// Allocations lost: no room to remember the call between entry and return.
    pub pending_map_full: u64,
}

impl DropCounts {
    /// Events or stacks actually lost; [`DropCounts::stack_map_full`] is not among them.
    pub fn lost(&self) -> u64 {
        self.ring_buffer_full + self.stack_unreadable + self.pending_map_full
    }
}

/// The attached probes and the maps userspace reads. Dropping it (or [`ProbeSet::detach`])
/// removes every probe from the target.
pub struct ProbeSet {
    ebpf: Option<Ebpf>,
    pub events: RingBuf<MapData>,
    stacks: StackTraceMap<MapData>,
    drops: PerCpuArray<MapData, u64>,
    control: Array<MapData, u32>,
}

impl ProbeSet {
    pub fn attach(pid: u32, allocator: &Allocator) -> Result<ProbeSet> {
        preflight()?;
        raise_memlock_limit();
        let mut ebpf = EbpfLoader::new().load(OBJECT).map_err(|error| {
            classify(
                anyhow::Error::new(error),
                "load BPF programs",
                "CAP_BPF and CAP_PERFMON",
            )
        })?;
        let pid_nonzero = NonZeroU32::new(pid).context("pid 0 is not a process")?;
        for point in RETURN_PROBES.iter().chain(&ENTRY_PROBES) {
            attach_point(&mut ebpf, point, &allocator.host_path, pid_nonzero)?;
        }
        let events = RingBuf::try_from(take(&mut ebpf, maps::EVENTS)?)?;
        let stacks = StackTraceMap::try_from(take(&mut ebpf, maps::STACKS)?)?;
        let drops = PerCpuArray::try_from(take(&mut ebpf, maps::DROPS)?)?;
        let control = Array::try_from(take(&mut ebpf, maps::CONTROL)?)?;
        Ok(ProbeSet {
            ebpf: Some(ebpf),
            events,
            stacks,
            drops,
            control,
        })
    }

    /// Starts recording, in every probe at once; returns the instant (CLOCK_MONOTONIC ns).
    pub fn open_window(&mut self) -> Result<u64> {
        self.control.set(CONTROL_ENABLED, 1, 0)?;
        Ok(monotonic_ns())
    }

    /// Stops recording in every probe at once, then removes the probes (slow: the kernel
    /// waits for each to quiesce). The maps stay readable for the final report. Returns the
    /// instant recording stopped.
    pub fn close_window_and_detach(&mut self) -> Result<u64> {
        self.control.set(CONTROL_ENABLED, 0, 0)?;
        let closed = monotonic_ns();
        self.ebpf = None;
        Ok(closed)
    }

    /// The return addresses of a recorded stack, innermost first.
    pub fn stack(&self, stack_id: u32) -> Vec<u64> {
        self.stacks
            .get(&stack_id, 0)
            .map(|trace| trace.frames().iter().map(|frame| frame.ip).collect())
            .unwrap_or_default()
    }

    pub fn drops(&self) -> Result<DropCounts> {
        let count = |counter: DropCounter| -> Result<u64> {
            let per_cpu = self.drops.get(&(counter as u32), 0)?;
            Ok(per_cpu.iter().sum())
        };
        Ok(DropCounts {
            ring_buffer_full: count(DropCounter::RingBufferFull)?,
            stack_map_full: count(DropCounter::StackMapFull)?,
            stack_unreadable: count(DropCounter::StackUnreadable)?,
            pending_map_full: count(DropCounter::PendingMapFull)?,
        })
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of the kernel's event timestamps.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

fn take(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    ebpf.take_map(name)
        .with_context(|| format!("the eBPF object has no map {name}"))
}

fn attach_point(
    ebpf: &mut Ebpf,
    point: &ProbePoint,
    library: &Path,
    pid: NonZeroU32,
) -> Result<()> {
    let program: &mut UProbe = ebpf
        .program_mut(point.program)
        .with_context(|| format!("the eBPF object has no program {}", point.program))?
        .try_into()?;
    if program.fd().is_err() {
        program.load().map_err(|error| {
            classify(
                anyhow::Error::new(error),
                "load BPF programs",
                "CAP_BPF and CAP_PERFMON",
            )
        })?;
    }
    program
        .attach(point.function, library, UProbeScope::OneProcess(pid))
        .map_err(|error| {
            classify(
                anyhow::Error::new(error),
                &format!("attach uprobes to pid {pid}"),
                "CAP_PERFMON and CAP_SYS_PTRACE",
            )
        })
        .with_context(|| format!("probe {} in {}", point.function, library.display()))?;
    Ok(())
}

/// Turns a kernel refusal into the [`Failure`] the operator can act on.
fn classify(error: anyhow::Error, action: &str, capability: &'static str) -> anyhow::Error {
    match os_error(error.as_ref()) {
        Some(libc::EPERM | libc::EACCES) => anyhow::Error::new(Failure::NotPermitted {
            action: action.to_owned(),
            capability,
        }),
        Some(libc::ENOSYS) => anyhow::Error::new(Failure::KernelUnsupported(
            "no bpf() system call (CONFIG_BPF_SYSCALL)".into(),
        )),
        _ => error,
    }
}

/// Checks what the kernel must offer before trying, so the error names the missing piece.
fn preflight() -> Result<()> {
    if !Path::new("/sys/bus/event_source/devices/uprobe").exists() {
        return Err(Failure::KernelUnsupported(
            "no uprobe PMU in /sys/bus/event_source/devices (CONFIG_UPROBE_EVENTS)".into(),
        )
        .into());
    }
    Ok(())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK. Newer ones charge the cgroup, and
/// raising the limit may be refused without CAP_SYS_RESOURCE: that is fine.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        log::debug!(
            "setrlimit(RLIMIT_MEMLOCK) failed: {}; not needed on this kernel",
            std::io::Error::last_os_error()
        );
    }
}
