//! The loaded eBPF object: its uprobes attached to the target's allocator, the maps userspace
//! reads and writes, and their removal.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    num::NonZeroU32,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use aya::{
    Ebpf, EbpfLoader, include_bytes_aligned,
    maps::{Array, MapData, PerCpuArray, RingBuf, StackTraceMap},
    programs::{
        ProgramError, RawTracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeScope},
    },
};
use leaktrace_common::{
    CONTROL_ENABLED, DropCounter, RETURN_OFFSET_SLOTS, allocated_here, maps, programs,
    return_offsets,
};

use super::{
    clock::monotonic_ns,
    drops::DropCounts,
    hits::{HitCounter, HitPoint},
    log::ProbeLog,
    multi::{MultiPoint, MultiPrograms, is_unsupported, load_refused},
    ring,
};
use crate::{
    error::{CAPTURE_CAPABILITIES, Failure, capability_remedy, os_error},
    ledger::Sampling,
    plan::{Family, ProbePlan, ProbePoint},
};

/// The committed object `cargo xtask build-ebpf` writes; build.rs checks it is current.
static OBJECT: &[u8] = include_bytes_aligned!("../../bpf/leaktrace.bpf.o");

/// The raw tracepoint programs, and where each goes.
const TRACEPOINTS: [(&str, &str); 2] = [
    (programs::PROCESS_EXEC, "sched_process_exec"),
    (programs::THREAD_EXIT, "sched_process_exit"),
];

/// How the probes are loaded.
#[derive(Clone, Copy, Debug)]
pub struct ProbeSettings {
    /// How much stack each new stack's copy takes for CFI unwinding; 0 for none (frame
    /// pointers only).
    pub stack_bytes: u32,
    /// The ring buffer's size; None: sized for the CPUs the target may run on
    /// ([`ring::default_ring_bytes`]).
    pub ring_bytes: Option<u32>,
    pub sampling: Sampling,
    /// Slots of the per-thread table of calls in flight, and entries of the map for threads
    /// whose slot another thread holds (`--max-threads`).
    pub max_threads: u32,
    /// Entries of the map of sampled live blocks (`--sampled-blocks`); the default holds, at
    /// `--sample-bytes 524288`, a heap of 128 GiB in small blocks.
    pub sampled_blocks: u32,
    /// free's probe reads glibc's chunk header, to tell what frees of blocks allocated before
    /// the attach release.
    pub free_size_header: bool,
}

/// The attached probes and the maps userspace reads. Dropping it (or
/// [`ProbeSet::detach_in_background`]) removes every probe from the target.
pub struct ProbeSet {
    ebpf: Option<Ebpf>,
    /// The uprobe programs loaded for uprobe_multi links, where the kernel has them; else
    /// each point is attached through aya, one perf-event uprobe each.
    multi: Option<MultiPrograms>,
    /// Each process's links, leaktrace's own (the calibration probes) among them: a process's
    /// go as soon as its capture ends ([`ProbeSet::detach_process`]).
    links: HashMap<u32, Vec<Link>>,
    /// Links being closed, for [`Detach`] to wait on.
    closing: Vec<std::thread::JoinHandle<()>>,
    /// (pid, module, offset) of every attached point, so a point is never attached twice.
    attached: HashSet<(u32, PathBuf, u64)>,
    traced: aya::maps::HashMap<MapData, u32, u32>,
    return_offsets: Array<MapData, [u64; 2]>,
    /// What `return_offsets` holds, slot by slot.
    learned: Vec<[u64; 2]>,
    pub events: RingBuf<MapData>,
    stacks: StackTraceMap<MapData>,
    drops: PerCpuArray<MapData, u64>,
    /// Each attached point's number, and the probes' hit counts by number.
    hits: HitCounter,
    /// Whether functions that can be are probed by uprobe sessions, which skip the return
    /// probe of an unsampled call: when sampling without `--mmap`, until the kernel refuses
    /// one.
    sessions: bool,
    control: Array<MapData, u32>,
    /// Kept to the end, after the probes are gone: their last words come then.
    _probe_log: Option<ProbeLog>,
}

impl ProbeSet {
    /// Loads the programs and attaches every point of `plan` to `pid`, with the capture window
    /// still closed. The window switch makes the order of attaching irrelevant.
    pub fn attach(pid: u32, plan: &ProbePlan, settings: &ProbeSettings) -> Result<ProbeSet> {
        preflight()?;
        raise_memlock_limit();
        let (sample_mode, sample_parameter) = settings.sampling.probe_settings();
        // Not sampling, the map is never used: one entry.
        let sampled_blocks = if settings.sampling.is_exact() {
            1
        } else {
            settings.sampled_blocks
        };
        // The probes log their first drop of each kind only when it would be read: under
        // --verbose, which turns leaktrace's debug log on.
        let log_drops = u32::from(log::log_enabled!(log::Level::Debug));
        let free_size_header = u32::from(settings.free_size_header);
        // Without sizes read at free, the bitmap of blocks allocated since the attach is never
        // used: one word.
        let allocated_here_words = if settings.free_size_header {
            allocated_here::WORDS
        } else {
            1
        };
        let ring_bytes = settings
            .ring_bytes
            .unwrap_or_else(|| ring::default_ring_bytes(pid));
        log::debug!("ring buffer: {} KiB", ring_bytes >> 10);
        let mut loader = EbpfLoader::new();
        loader
            .override_global("STACK_BYTES", &settings.stack_bytes, true)
            .override_global("SAMPLE_MODE", &sample_mode, true)
            .override_global("SAMPLE_PARAMETER", &sample_parameter, true)
            .override_global("LOG_DROPS", &log_drops, true)
            .override_global("FREE_SIZE_HEADER", &free_size_header, true)
            .override_global("THREAD_SLOT_COUNT", &settings.max_threads, true)
            .map_max_entries(maps::EVENTS, ring_bytes)
            .map_max_entries(maps::SAMPLED_BLOCKS, sampled_blocks)
            .map_max_entries(maps::ALLOCATED_HERE, allocated_here_words)
            .map_max_entries(maps::PENDING, settings.max_threads)
            .map_max_entries(maps::THREAD_SLOTS, settings.max_threads)
            .map_max_entries(maps::SLOT_OWNERS, settings.max_threads);
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|error| classify(anyhow::Error::new(error), "load BPF programs"))?;
        let multi = if single_uprobes_forced() {
            None
        } else {
            MultiPrograms::load(OBJECT, &ebpf)
                .inspect_err(|error| {
                    log::debug!(
                        "no uprobe_multi links ({error:#}): one perf-event uprobe per point"
                    )
                })
                .ok()
        };
        for (name, tracepoint) in TRACEPOINTS {
            let program: &mut RawTracePoint = ebpf
                .program_mut(name)
                .with_context(|| format!("the eBPF object has no program {name}"))?
                .try_into()?;
            program.load().map_err(|error| load_failed(name, error))?;
            program
                .attach(tracepoint)
                .with_context(|| format!("attach to the {tracepoint} tracepoint"))?;
        }
        let events = RingBuf::try_from(take(&mut ebpf, maps::EVENTS)?)?;
        let stacks = StackTraceMap::try_from(take(&mut ebpf, maps::STACKS)?)?;
        let drops = PerCpuArray::try_from(take(&mut ebpf, maps::DROPS)?)?;
        let hits = HitCounter::new(PerCpuArray::try_from(take(&mut ebpf, maps::HITS)?)?);
        let control = Array::try_from(take(&mut ebpf, maps::CONTROL)?)?;
        let traced = aya::maps::HashMap::try_from(take(&mut ebpf, maps::TRACED)?)?;
        let return_offsets = Array::try_from(take(&mut ebpf, maps::RETURN_OFFSETS)?)?;
        let probe_log = if log_drops != 0 {
            Some(ProbeLog::forward(&mut ebpf)?)
        } else {
            None
        };
        let mut probes = ProbeSet {
            ebpf: Some(ebpf),
            multi,
            links: HashMap::new(),
            closing: Vec::new(),
            attached: HashSet::new(),
            traced,
            return_offsets,
            learned: vec![[0, 0]; RETURN_OFFSET_SLOTS as usize],
            events,
            stacks,
            drops,
            hits,
            // A session's unsampled call leaves no entry behind, so a mapping its allocator
            // makes inside it would look like the program's own: not with --mmap.
            sessions: !settings.sampling.is_exact()
                && !plan
                    .points
                    .iter()
                    .any(|p| p.function.family == Family::Mapping),
            control,
            _probe_log: probe_log,
        };
        probes.attach_process(pid, plan)?;
        Ok(probes)
    }

    /// Attaches the points of `plan` that `pid` lacks (a child just forked, or a process that
    /// exec'd a program with another allocator) and traces its execs. True when every point
    /// was attached already: then the image has been fully probed from its first instruction.
    pub fn attach_process(&mut self, pid: u32, plan: &ProbePlan) -> Result<bool> {
        let ebpf = self.ebpf.as_mut().context("the probes are detached")?;
        let nonzero = NonZeroU32::new(pid).context("pid 0 is not a process")?;
        let new: Vec<&ProbePoint> = plan
            .points
            .iter()
            .filter(|point| {
                self.attached
                    .insert((pid, point.module.clone(), point.offset))
            })
            .collect();
        let all_attached_before = !plan.points.is_empty() && new.is_empty();
        if let Some(multi) = &mut self.multi {
            let mut linked = link_points(multi, &mut self.hits, &new, nonzero, self.sessions);
            if self.sessions
                && let Err(error) = &linked
            {
                log::debug!(
                    "no uprobe sessions ({error:#}): malloc and calloc keep their return probes"
                );
                self.sessions = false;
                linked = link_points(multi, &mut self.hits, &new, nonzero, false);
            }
            match linked {
                Ok(links) => {
                    log::debug!(
                        "pid {pid}: {} points attached through {} uprobe_multi links",
                        new.len(),
                        links.len()
                    );
                    let links = links.into_iter().map(Link::Multi);
                    self.links.entry(pid).or_default().extend(links);
                    self.traced.insert(pid, 1, 0)?;
                    return Ok(all_attached_before);
                }
                Err(error) if self.links.is_empty() && is_unsupported(&error) => {
                    log::debug!(
                        "no uprobe_multi links ({error:#}): one perf-event uprobe per point"
                    );
                    self.multi = None;
                }
                Err(error) => return Err(error),
            }
        }
        for point in new {
            for program in point.function.entry.into_iter().chain(point.function.exit) {
                let cookie = self.hits.cookie(point, program);
                let link = attach_program(
                    ebpf,
                    program,
                    point.offset,
                    &point.host_path,
                    cookie,
                    nonzero,
                )
                .with_context(|| format!("probe {} in {}", point.symbol, point.module.display()))?;
                self.links.entry(pid).or_default().push(link);
            }
        }
        self.traced.insert(pid, 1, 0)?;
        Ok(all_attached_before)
    }

    /// Puts the calibration probes, which return at once, on functions of leaktrace's own
    /// `binary` for leaktrace's own process, through the same kind of attachment as the
    /// target's: an entry probe at each of `entries`, and a return probe at each of `returns`.
    /// They stay until [`ProbeSet::detach_in_background`], with the rest.
    pub fn attach_calibration(
        &mut self,
        binary: &Path,
        entries: &[u64],
        returns: &[u64],
    ) -> Result<()> {
        let ebpf = self.ebpf.as_mut().context("the probes are detached")?;
        let pid = NonZeroU32::new(std::process::id()).context("leaktrace has no pid")?;
        let sets = [
            (programs::CALIBRATION_ENTER, entries),
            (programs::CALIBRATION_EXIT, returns),
        ];
        for (program, offsets) in sets.into_iter().filter(|(_, o)| !o.is_empty()) {
            if let Some(multi) = &mut self.multi {
                let points: Vec<MultiPoint> = offsets
                    .iter()
                    .map(|&offset| MultiPoint { offset, cookie: 0 })
                    .collect();
                let link = multi.link(program, binary, &points, pid.get())?;
                self.links
                    .entry(pid.get())
                    .or_default()
                    .push(Link::Multi(link));
            } else {
                for &offset in offsets {
                    let link = attach_program(ebpf, program, offset, binary, 0, pid)?;
                    self.links.entry(pid.get()).or_default().push(link);
                }
            }
        }
        Ok(())
    }

    /// Every point the probes count hits of, by number.
    pub fn hit_points(&self) -> &[HitPoint] {
        self.hits.points()
    }

    /// The hits of each of [`ProbeSet::hit_points`] so far, window open or not.
    pub fn hits(&self) -> Result<Vec<u64>> {
        self.hits.read()
    }

    /// Each uprobe program's runs and run time in ns, summed over its loads (through aya and
    /// for uprobe_multi links), as the kernel counts them while BPF statistics are on
    /// ([`time_programs`]); empty once detached.
    pub fn program_runs(&self) -> HashMap<String, (u64, u64)> {
        let mut runs: HashMap<String, (u64, u64)> = HashMap::new();
        let mut add = |name: &str, count: u64, ns: u64| {
            let entry = runs.entry(name.to_owned()).or_default();
            *entry = (entry.0 + count, entry.1 + ns);
        };
        if let Some(ebpf) = &self.ebpf {
            for (name, program) in ebpf.programs() {
                if let (aya::programs::Program::UProbe(_), Ok(info)) = (program, program.info()) {
                    add(name, info.run_count(), info.run_time().as_nanos() as u64);
                }
            }
        }
        if let Some(multi) = &self.multi {
            for (name, count, ns) in multi.runs() {
                add(&name, count, ns);
            }
        }
        runs
    }

    /// Starts recording, in every probe at once; returns the instant (CLOCK_MONOTONIC ns).
    pub fn open_window(&mut self) -> Result<u64> {
        self.control.set(CONTROL_ENABLED, 1, 0)?;
        Ok(monotonic_ns())
    }

    /// Stops recording in every probe at once; returns the instant (CLOCK_MONOTONIC ns).
    pub fn close_window(&mut self) -> Result<u64> {
        self.control.set(CONTROL_ENABLED, 0, 0)?;
        Ok(monotonic_ns())
    }

    /// Removes the probes of `pid`, whose capture has ended (a followed child exited), on
    /// threads of their own: the loop goes on meanwhile, and [`Detach::wait`] waits for them.
    pub fn detach_process(&mut self, pid: u32) {
        let _ = self.traced.remove(&pid);
        self.attached.retain(|(attached, _, _)| *attached != pid);
        if let Some(links) = self.links.remove(&pid) {
            self.closing.push(close_in_background(links));
        }
    }

    /// Removes the probes on threads of their own and returns them, to be joined before
    /// leaktrace exits. The kernel takes ~85 ms per uprobe to quiesce it, which the final
    /// report need not wait for: the window is closed, so the probes record nothing more.
    /// The target's own links go first. The maps stay readable meanwhile.
    pub fn detach_in_background(&mut self, target: u32) -> Detach {
        let ebpf = self.ebpf.take();
        let mut links = std::mem::take(&mut self.links);
        let mut closing = std::mem::take(&mut self.closing);
        if let Some(first) = links.remove(&target) {
            closing.insert(0, close_in_background(first));
        }
        closing.push(close_in_background(links.into_values().flatten().collect()));
        Detach(std::thread::spawn(move || {
            for thread in closing {
                let _ = thread.join();
            }
            drop(ebpf);
        }))
    }

    /// Teaches the probes where return addresses lie, and where stacks end (see
    /// [`crate::stacks::unwind::Unwound`]), in the slots [`return_offsets::slot_to_write`] picks.
    pub fn learn_return_offsets(&mut self, offsets: &[(u64, u64)]) {
        for &(pc, offset) in offsets {
            let learned = &self.learned;
            let read = |slot: u32| learned.get(slot as usize).copied();
            if let Some(slot) = return_offsets::slot_to_write(pc, offset, read) {
                self.learned[slot as usize] = [pc, offset];
                let _ = self.return_offsets.set(slot, [pc, offset], 0);
            }
        }
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
            stack_samples_skipped: count(DropCounter::StackSampleSkipped)?,
            sampled_map_full: count(DropCounter::SampledMapFull)?,
            allocations_skipped: count(DropCounter::AllocationSkipped)?,
        })
    }
}

/// Turns on the kernel's run-time statistics of every BPF program ([`ProbeSet::program_runs`])
/// until the descriptor returned is closed. They cost every BPF program on the machine two
/// clock reads a run while on.
pub fn time_programs() -> Result<OwnedFd> {
    Ok(aya::sys::enable_stats(aya::sys::Stats::RunTime)?)
}

/// One attachment of a program: a uprobe_multi link, or a perf-event uprobe. Dropping it
/// removes it.
enum Link {
    Multi(#[allow(dead_code, reason = "held to be dropped")] OwnedFd),
    Single(#[allow(dead_code, reason = "held to be dropped")] UProbeLink),
}

/// Closes `links` at once, each on a thread of its own: each waits out a grace period as it
/// goes, and closed together they share it.
fn close_in_background(links: Vec<Link>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        std::thread::scope(|scope| {
            for link in links {
                scope.spawn(move || drop(link));
            }
        });
    })
}

/// Probes being removed; [`Detach::wait`] returns once none is left in the target.
#[must_use = "leaktrace must not exit before its probes are gone"]
pub struct Detach(std::thread::JoinHandle<()>);

impl Detach {
    pub fn wait(self) {
        let _ = self.0.join();
    }
}

fn take(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    ebpf.take_map(name)
        .with_context(|| format!("the eBPF object has no map {name}"))
}

/// Debug builds only: `LEAKTRACE_SINGLE_UPROBES` attaches as on a kernel without uprobe_multi,
/// so that the tests cover that path on any kernel.
fn single_uprobes_forced() -> bool {
    cfg!(debug_assertions) && std::env::var_os("LEAKTRACE_SINGLE_UPROBES").is_some()
}

/// One uprobe_multi link per program and binary, for every point of `points` it serves; with
/// `sessions`, a uprobe session for each function that can be one.
fn link_points(
    multi: &mut MultiPrograms,
    hits: &mut HitCounter,
    points: &[&ProbePoint],
    pid: NonZeroU32,
    sessions: bool,
) -> Result<Vec<OwnedFd>> {
    let mut groups: BTreeMap<(&str, &Path), Vec<MultiPoint>> = BTreeMap::new();
    for point in points {
        let session = point.function.session().filter(|_| sessions);
        let programs: Vec<(&str, u64)> = match session
            .and_then(|program| Some((program, hits.session_cookie(point, program)?)))
        {
            Some(session) => vec![session],
            None => (point.function.entry.into_iter().chain(point.function.exit))
                .map(|program| (program, hits.cookie(point, program)))
                .collect(),
        };
        for (program, cookie) in programs {
            groups
                .entry((program, &point.host_path))
                .or_default()
                .push(MultiPoint {
                    offset: point.offset,
                    cookie,
                });
        }
    }
    groups
        .into_iter()
        .map(|((program, binary), points)| {
            multi
                .link(program, binary, &points, pid.get())
                .map_err(|error| classify(error, &format!("attach uprobes to pid {pid}")))
                .with_context(|| format!("probe {program} in {}", binary.display()))
        })
        .collect()
}

/// One perf-event uprobe: `program` at `offset` of `binary`, for process `pid`.
fn attach_program(
    ebpf: &mut Ebpf,
    program: &str,
    offset: u64,
    binary: &Path,
    cookie: u64,
    pid: NonZeroU32,
) -> Result<Link> {
    let name = program;
    let program: &mut UProbe = ebpf
        .program_mut(name)
        .with_context(|| format!("the eBPF object has no program {name}"))?
        .try_into()?;
    if program.fd().is_err() {
        program.load().map_err(|error| load_failed(name, error))?;
    }
    let id = program
        .attach(
            UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(offset),
                cookie: Some(cookie),
            },
            binary,
            UProbeScope::OneProcess(pid),
        )
        .map_err(|error| {
            classify(
                anyhow::Error::new(error),
                &format!("attach uprobes to pid {pid}"),
            )
        })?;
    Ok(Link::Single(program.take_link(id)?))
}

/// aya's refusal to load the program `name`, as the operator can act on it.
fn load_failed(name: &str, error: ProgramError) -> anyhow::Error {
    let error = match error {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => load_refused(name, io_error, &verifier_log.to_string()),
        error => anyhow::Error::new(error),
    };
    classify(error, "load BPF programs")
}

/// Turns a kernel refusal into the [`Failure`] the operator can act on.
fn classify(error: anyhow::Error, action: &str) -> anyhow::Error {
    match os_error(error.as_ref()) {
        Some(libc::EPERM | libc::EACCES) => anyhow::Error::new(Failure::NotPermitted {
            action: action.to_owned(),
            remedy: capability_remedy(&CAPTURE_CAPABILITIES),
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

#[cfg(test)]
mod tests {
    use object::{Object, ObjectSection, ObjectSymbol};

    use super::*;
    use crate::plan::FUNCTIONS;

    /// The program names userspace attaches by name each name a program of the right kind in
    /// the committed object: `#[uprobe]` names a program after its function, which nothing
    /// else ties to [`programs`].
    #[test]
    fn every_program_userspace_attaches_is_in_the_object() {
        let object = object::File::parse(OBJECT).expect("parse the eBPF object");
        let section_of = |program: &str| -> Option<String> {
            let symbol = object.symbols().find(|s| s.name() == Ok(program))?;
            let section = object.section_by_index(symbol.section_index()?).ok()?;
            section.name().ok().map(str::to_owned)
        };
        for function in &FUNCTIONS {
            let programs = [
                (function.entry, "uprobe"),
                (function.exit, "uretprobe"),
                (function.session(), "uprobe"),
            ];
            for (program, section) in programs {
                if let Some(program) = program {
                    let found = section_of(program);
                    assert_eq!(
                        found.as_deref(),
                        Some(section),
                        "{}: {program}",
                        function.symbol
                    );
                }
            }
        }
        for (program, tracepoint) in TRACEPOINTS {
            let found = section_of(program);
            assert_eq!(found, Some(format!("raw_tp/{tracepoint}")), "{program}");
        }
        for (program, section) in [
            (programs::CALIBRATION_ENTER, "uprobe"),
            (programs::CALIBRATION_EXIT, "uretprobe"),
        ] {
            assert_eq!(section_of(program).as_deref(), Some(section), "{program}");
        }
    }
}
