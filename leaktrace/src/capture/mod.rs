//! Capture: the loop that ties the stages together while the target runs.
//!
//! In: attached probes ([`crate::kernel`]) and the [`CaptureOptions`] from the command line.
//! Out: a [`Report`] of every traced image, and the probes' removal under way.
//!
//! The loop drains events into each image's ledger, prints the live view every interval with
//! what tracing costs the target ([`crate::cost`]), and stops at the window's end, a signal
//! ([`signals`]), the target's exit, or a cost above `--max-overhead`. A process that
//! execs or a child followed with `-f` starts a new [`TracedImage`] ([`image`]).

mod control;
mod image;
mod publish;
mod signals;

pub use control::{Control, Order, Outlet, Served};
pub use image::{ImageOptions, LiveView, Prepared, TracedImage};
pub use signals::{Signals, end_on_interrupts};

use std::{
    collections::HashMap,
    future::pending,
    io::Write,
    os::fd::{AsRawFd, RawFd},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tokio::{
    io::unix::AsyncFd,
    sync::mpsc::UnboundedReceiver,
    time::{MissedTickBehavior, interval, interval_at, sleep},
};

use crate::{
    cli::SortKey,
    cost::{Calibration, CostMeter, IntervalCost, OverheadLimit},
    error::Failure,
    export::Board,
    kernel::{Detach, Event, ProbeSet, ProbeSettings, monotonic_ns, time_programs},
    plan::{AllocatorChoice, AllocatorSearch, ProbePlan},
    report::{self, Ending, Report, screen::Screen},
    scan::{
        self,
        freeze::Freeze,
        mark::Heuristic,
        roots::{self, Policy},
        snapshot::{Precopy, Snapshot},
    },
    stacks::{DwarfUnwinder, Symbolizer},
    target::{
        Target,
        maps::ProcessMaps,
        memory::MemoryTrend,
        process_name,
        tracee::{Seen, Tracee},
    },
};

/// Whether a scan must stop the target itself, or finds it held already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Held {
    NotYet,
    /// A traced command stopped at its exit.
    AtItsExit,
}

/// Records drained per wake-up before the loop looks at its timers and signals again.
const DRAIN_BATCH: usize = 1 << 16;

/// How often the ring buffer is read when the probes have not woken the reader: the records'
/// longest wait. At 2 M events/s, 10 ms of them fill a tenth of the default ring buffer.
const RING_POLL: Duration = Duration::from_millis(10);

/// When and how the capture reports and ends.
pub struct CaptureOptions {
    pub duration: Option<Duration>,
    pub interval: Duration,
    pub top: usize,
    /// Trace the target's children too (`-f`).
    pub follow_forks: bool,
    /// For re-planning the probes after an exec.
    pub choice: AllocatorChoice,
    pub image: ImageOptions,
    /// `--debug-dir` roots.
    pub debug_dirs: Vec<PathBuf>,
    /// The live view's order.
    pub sort: SortKey,
    /// End after this many intervals.
    pub count: Option<u32>,
    /// The live view goes to stderr: standard output carries a report file (`-`).
    pub text_to_stderr: bool,
    /// End when the tracing cost stays above this percent of the target's CPU
    /// (`--max-overhead`).
    pub max_overhead: Option<f64>,
    pub scan: ScanOptions,
}

/// When the reachability scan runs, besides on SIGUSR1.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanOptions {
    /// At the end of the capture (a launched command: at its exit).
    pub at_end: bool,
    /// Every so often (`--scan-every`).
    pub every: Option<Duration>,
    /// The inner pointers counted as start pointers (`--leak-check-heuristics`).
    pub heuristics: Vec<Heuristic>,
}

/// Everything the capture accumulates: every image of every traced process.
struct Capture<'a> {
    options: &'a CaptureOptions,
    /// The launched command leaktrace traces, if so: its exec stop is answered before its
    /// new image is planned, since its loader must run for that.
    tracee: Option<&'a Tracee>,
    /// When the window opened, for the live view's clock.
    started: Instant,
    /// In the order they started; the first is the target's first image.
    images: Vec<TracedImage>,
    /// The image each traced pid is running now.
    current: HashMap<u32, usize>,
    /// The children followed (`-f`) that still run, held by their pidfds: each one's capture
    /// ends, and its probes go, when it exits.
    children: HashMap<u32, Target>,
    /// Children forked in the window that were not followed: each ended before its probes
    /// were in, or could not be probed.
    children_missed: u64,
    /// The window has closed: a fork taken in from now on is of a child not followed.
    closing: bool,
    /// The target's RSS and friends beside its traced heap.
    memory: MemoryTrend,
    /// Where a served capture's figures go; none on a terminal.
    outlet: Option<Outlet>,
    /// What tracing costs the traced processes, interval by interval.
    cost: CostMeter,
    /// The last interval's estimate.
    last_cost: Option<IntervalCost>,
    /// `--max-overhead`.
    limit: Option<OverheadLimit>,
    target_pid: u32,
    /// Where the live view goes: a terminal's width, and the line redrawn above it.
    screen: Screen,
    /// Records taken in (debug builds: for [`Capture::injected_panic`]).
    #[cfg(debug_assertions)]
    records: u64,
}

impl Capture<'_> {
    /// Applies up to [`DRAIN_BATCH`] records; true when the ring buffer is empty.
    fn drain(&mut self, probes: &mut ProbeSet) -> bool {
        for _ in 0..DRAIN_BATCH {
            #[cfg(debug_assertions)]
            self.injected_panic();
            let Some(record) = probes.events.next() else {
                return true;
            };
            let event = Event::decode(&record);
            drop(record);
            if let Some(event) = event {
                self.apply(event, probes);
            }
        }
        false
    }

    /// [`Capture::drain`], a panic in it caught: Err(()) when taking in events failed.
    /// The capture then ends with what it has, and still detaches and reports.
    fn drain_caught(&mut self, probes: &mut ProbeSet) -> Result<bool, ()> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.drain(probes)))
            .map_err(|_| ())
    }

    /// Debug builds only: `LEAKTRACE_PANIC_AFTER=N` panics after N records, so that the tests
    /// can check a panic still ends in a report and a clean detach.
    #[cfg(debug_assertions)]
    fn injected_panic(&mut self) {
        self.records += 1;
        let limit = std::env::var("LEAKTRACE_PANIC_AFTER").ok();
        if limit.and_then(|n| n.parse().ok()) == Some(self.records) {
            panic!(
                "injected after {} records (LEAKTRACE_PANIC_AFTER)",
                self.records
            );
        }
    }

    fn apply(&mut self, event: Event, probes: &mut ProbeSet) {
        let Some(&index) = self.current.get(&event.pid()) else {
            return;
        };
        let image = &mut self.images[index];
        match event {
            Event::Alloc {
                address,
                size,
                stack,
                timestamp_ns,
                mapping,
                ..
            } => image.record_alloc(address, size, stack, timestamp_ns, mapping, probes),
            Event::Unmap { address, size, .. } => image.ledger_mut().record_munmap(address, size),
            Event::StackSample {
                stack_hash, copy, ..
            } => image.record_stack_sample(stack_hash, &copy, probes),
            Event::Free {
                address,
                size,
                timestamp_ns,
                ..
            } => {
                let freed_ms = image.ms(timestamp_ns);
                let ledger = image.ledger_mut();
                if !ledger.record_free(address, freed_ms) {
                    ledger.record_release_before_attach(size);
                }
            }
            Event::ReallocFree {
                tid,
                address,
                timestamp_ns,
                ..
            } => {
                let freed_ms = image.ms(timestamp_ns);
                image
                    .ledger_mut()
                    .record_realloc_free(tid, address, freed_ms)
            }
            Event::ReallocFailed { tid, .. } => image.ledger_mut().record_realloc_failed(tid),
            Event::Exec { pid, timestamp_ns } => {
                image.ended = Some((Ending::Exec, timestamp_ns));
                self.start_image(pid, timestamp_ns, probes);
            }
            Event::Fork {
                child,
                execd,
                timestamp_ns,
                ..
            } if self.options.follow_forks => {
                if !self.follow(index, child, execd, timestamp_ns, probes) {
                    self.children_missed += 1;
                }
            }
            Event::Fork { .. } => {}
        }
    }

    /// Follows `child`, just forked by the process of image `parent`: probes it as its parent
    /// is probed, and names and unwinds it with its parent's modules; or, `execd` (vforked, so
    /// it runs a program of its own by now), as that program's image, probed where it needs.
    /// False when it was not followed: it ended before its probes were in (most children of a
    /// few ms do, since the fork is read up to [`RING_POLL`] later), or could not be probed.
    fn follow(
        &mut self,
        parent: usize,
        child: u32,
        execd: bool,
        start_ns: u64,
        probes: &mut ProbeSet,
    ) -> bool {
        if self.closing {
            return false;
        }
        // Held from before its probes go in: its pid cannot be another's while it is held.
        let Ok(process) = Target::child(child) else {
            return false;
        };
        let plan = if execd {
            self.plan_for(child)
        } else {
            self.images[parent].plan.clone()
        };
        if let Err(error) = probes.attach_process(child, &plan) {
            if !process.exited() {
                log::warn!("cannot probe child {child}: {error:#}");
            }
            probes.detach_process(child);
            return false;
        }
        let prepared = if execd {
            self.prepared_for(child)
        } else {
            self.images[parent].prepared_for_child(child).ok()
        };
        let prepared = match prepared {
            Some(prepared) if !process.exited() => prepared,
            _ => {
                probes.detach_process(child);
                return false;
            }
        };
        eprintln!("leaktrace: following child {child} ({})", process.command);
        self.images.push(TracedImage::new(
            child,
            process.command.clone(),
            &plan,
            prepared,
            self.options.image.clone(),
            false,
            start_ns,
        ));
        self.current.insert(child, self.images.len() - 1);
        self.children.insert(child, process);
        true
    }

    /// Ends the capture of every followed child that has exited, once its last events are in,
    /// and removes its probes. Err(()) when taking in events failed.
    fn end_exited_children(&mut self, probes: &mut ProbeSet) -> Result<(), ()> {
        let exited: Vec<u32> = self
            .children
            .iter()
            .filter(|(_, process)| process.exited())
            .map(|(&pid, _)| pid)
            .collect();
        if exited.is_empty() {
            return Ok(());
        }
        // An exited process made its last call: its events are all in the ring buffer.
        self.drain_to_end(probes)?;
        let end_ns = monotonic_ns();
        for pid in exited {
            self.children.remove(&pid);
            if let Some(index) = self.current.remove(&pid) {
                self.images[index].end(Ending::TargetExited { status: None }, end_ns);
            }
            probes.detach_process(pid);
        }
        Ok(())
    }

    /// A new image for `pid` after its exec. Its probes are attached where they are missing;
    /// an image whose allocator was fully probed before its first instruction is traced from
    /// its start.
    fn start_image(&mut self, pid: u32, start_ns: u64, probes: &mut ProbeSet) {
        if let Some(tracee) = self.tracee.filter(|t| t.pid() == pid) {
            tracee.pending();
        }
        let plan = self.plan_for(pid);
        let all_probed_before = match probes.attach_process(pid, &plan) {
            Ok(all_probed_before) => all_probed_before,
            Err(error) => {
                log::warn!("pid {pid}: cannot probe its new image: {error:#}");
                false
            }
        };
        let Some(prepared) = self.prepared_for(pid) else {
            // Gone already: nothing of it will be reported.
            self.current.remove(&pid);
            return;
        };
        eprintln!("leaktrace: pid {pid} exec'd {}", process_name(pid));
        self.images.push(TracedImage::new(
            pid,
            process_name(pid),
            &plan,
            prepared,
            self.options.image.clone(),
            all_probed_before,
            start_ns,
        ));
        self.current.insert(pid, self.images.len() - 1);
    }

    /// The symbolizer and unwinder of the program process `pid` runs now, from its maps;
    /// None once it is gone.
    fn prepared_for(&self, pid: u32) -> Option<Prepared> {
        let symbolizer = Symbolizer::new(pid, &self.options.debug_dirs).ok()?;
        let unwinder = DwarfUnwinder::new(&symbolizer, self.options.image.stack_copies);
        Some(Prepared {
            symbolizer,
            unwinder,
        })
    }

    /// The probe plan of a process that has just exec'd. After an exec the dynamic
    /// loader may still be mapping libraries: wait a little for them, as launch mode does.
    fn plan_for(&self, pid: u32) -> ProbePlan {
        const ATTEMPTS: u32 = 40;
        let mut search = AllocatorSearch::while_loading(self.options.choice.clone());
        for _ in 0..ATTEMPTS {
            let Ok(maps) = ProcessMaps::read(pid) else {
                break;
            };
            if let Some(plan) = search.plan(pid, &maps) {
                return plan;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        ProcessMaps::read(pid)
            .ok()
            .and_then(|maps| AllocatorSearch::new(self.options.choice.clone()).plan(pid, &maps))
            .unwrap_or_default()
    }

    /// The traced processes now, in pid order.
    fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.current.keys().copied().collect();
        pids.sort_unstable();
        pids
    }

    /// True when the estimate has stayed above `--max-overhead` long enough to end.
    fn over_limit(&mut self) -> bool {
        let share = self.last_cost.and_then(|cost| cost.share());
        self.limit
            .as_mut()
            .is_some_and(|limit| limit.exceeded(share))
    }

    fn live_view(&mut self, probes: &ProbeSet, top: usize) -> String {
        let elapsed = self.started.elapsed();
        let mut out = String::new();
        let drops = probes.drops().unwrap_or_default();
        let cost = self.cost.sample(probes, &self.pids());
        self.last_cost = Some(cost);
        let cost = format!("; {}", cost.describe());
        let mut running: Vec<usize> = self.current.values().copied().collect();
        running.sort_unstable();
        for index in running {
            let image = &mut self.images[index];
            let LiveView {
                live_bytes,
                live_allocations,
                rows,
                ..
            } = image.live_view(top, self.options.sort, drops.frees_maybe_lost());
            let mut memory = String::new();
            let mut shown_cost = "";
            if image.pid == self.target_pid {
                shown_cost = &cost;
                self.memory
                    .record(image.pid, elapsed.as_secs_f64(), live_bytes);
                if let Some((rss, growth)) = self.memory.rss() {
                    memory = format!(
                        "; RSS {} ({}/s)",
                        report::human_bytes(rss as f64),
                        report::signed_bytes(growth.bytes_per_s)
                    );
                }
            } else {
                out.push_str(&format!("  pid {} ({}):\n", image.pid, image.command));
            }
            out.push_str(&report::render_interval(
                elapsed.as_secs_f64(),
                live_bytes,
                live_allocations,
                (&memory, shown_cost),
                &drops,
                &rows,
                self.screen.width,
            ));
            if image.pid == self.target_pid
                && let Some(warning) = self.memory.divergence()
            {
                out.push_str(&warning);
                out.push('\n');
            }
        }
        out
    }
}

/// Attaches the probes, records until the capture ends, and builds the report while the
/// probes are being removed: setup, loop, teardown.
pub fn run(
    target: &Target,
    plan: &ProbePlan,
    settings: &ProbeSettings,
    options: &CaptureOptions,
    control: Control,
) -> Result<(Report, Detach)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (orders, outlet) = match control {
        Control::Terminal => (None, None),
        Control::Served(Served { orders, outlet }) => (Some(orders), Some(outlet)),
    };
    let Attached {
        mut probes,
        prepared,
        signals,
        window_start_ns,
        cost,
        attached,
    } = attach(target, plan, settings, options, &runtime, outlet.is_none())
        .map_err(|e| target.unless_exited(e))?;
    if let Some(outlet) = &outlet {
        Board::add(&outlet.board.attached);
    }
    let screen = Screen::of_output(options.text_to_stderr, attached);
    let mut capture = Capture::new(
        target,
        plan,
        prepared,
        options,
        (window_start_ns, cost),
        screen,
        outlet,
    );
    let ending = runtime.block_on(capture.record(target, &mut probes, signals, orders))?;
    capture.finish(target, &mut probes, ending)
}

/// What [`attach`] hands the loop.
struct Attached {
    probes: ProbeSet,
    /// The line that says what is attached, as printed.
    attached: String,
    /// Made while the target surely lived: before a launched target is resumed.
    prepared: Prepared,
    signals: Signals,
    /// When the window opened (CLOCK_MONOTONIC ns).
    window_start_ns: u64,
    /// Metering from the window's opening.
    cost: CostMeter,
}

/// Attaches every probe with the window closed, reads what naming and unwinding the target
/// takes, catches the signals that end a capture, then opens the window in every probe at
/// once and lets a launched target go. Signals are caught only for a capture at a `terminal`.
fn attach(
    target: &Target,
    plan: &ProbePlan,
    settings: &ProbeSettings,
    options: &CaptureOptions,
    runtime: &tokio::runtime::Runtime,
    terminal: bool,
) -> Result<Attached> {
    log::debug!("probing {}", plan.describe());
    for decision in plan.decisions() {
        log::debug!("{decision}");
    }
    // Blocks from before an attach are freed unseen: where free is glibc's, its probe reads
    // what each releases.
    let settings = ProbeSettings {
        free_size_header: !target.launched && plan.free_is_glibc(),
        ..*settings
    };
    let mut probes = ProbeSet::attach(target.pid, plan, &settings)?;
    // Had the process gone while the probes went in, its pid could be another's by now: they
    // come out again ([`Target::unless_exited`] then says the process exited).
    if !target.launched && !target.still_running() {
        anyhow::bail!("the probes went in by its pid, which another process may hold now");
    }
    let calibration = Calibration::measure(&mut probes)
        .inspect(|c| {
            log::debug!(
                "a hit costs {:.0} ns on an emulated instruction, {:.0} ns on a single-stepped \
                 one, {:.0} ns more for a return probe (timed in {:.1} ms)",
                c.emulated_ns,
                c.single_stepped_ns,
                c.return_ns,
                c.took_ms
            )
        })
        .inspect_err(|error| {
            log::warn!("cannot time a probe hit ({error:#}): the tracing cost is not estimated")
        })
        .ok();
    let prepared = Prepared::new(target.pid, &options.debug_dirs, options.image.stack_copies)?;
    let signals = if terminal {
        let _inside = runtime.enter();
        Signals::catch()?
    } else {
        Signals::default()
    };
    // The programs' own run time, counted by the kernel until enough runs are timed.
    let statistics = time_programs()
        .inspect_err(|error| {
            log::debug!("no BPF run-time statistics ({error:#}): the cost covers the traps")
        })
        .ok();
    let window_start_ns = probes.open_window()?;
    let cost = CostMeter::new(calibration, statistics, &probes, target.pid);
    // A launched command to scan at its exit stays traced, to be stopped there.
    target.resume(options.scan.at_end)?;
    let attached = format!(
        "leaktrace: attached to pid {} ({}); probing {}{}",
        target.pid,
        target.command,
        plan.modules()
            .iter()
            .map(|m| m.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        settings
            .sampling
            .describe()
            .map_or_else(String::new, |s| format!("; sampling {s}"))
    );
    eprintln!("{attached}");
    Ok(Attached {
        probes,
        attached,
        prepared,
        signals,
        window_start_ns,
        cost,
    })
}

impl<'a> Capture<'a> {
    fn new(
        target: &'a Target,
        plan: &ProbePlan,
        prepared: Prepared,
        options: &'a CaptureOptions,
        (window_start_ns, cost): (u64, CostMeter),
        screen: Screen,
        outlet: Option<Outlet>,
    ) -> Capture<'a> {
        let first = TracedImage::new(
            target.pid,
            target.command.clone(),
            plan,
            prepared,
            options.image.clone(),
            target.launched,
            window_start_ns,
        );
        Capture {
            options,
            tracee: target.tracee(),
            started: Instant::now(),
            images: vec![first],
            current: HashMap::from([(target.pid, 0)]),
            children: HashMap::new(),
            children_missed: 0,
            closing: false,
            memory: MemoryTrend::default(),
            outlet,
            cost,
            last_cost: None,
            limit: options.max_overhead.map(OverheadLimit::new),
            target_pid: target.pid,
            screen,
            #[cfg(debug_assertions)]
            records: 0,
        }
    }

    /// Takes in events and prints the live view (or publishes its figures, when served) until
    /// the window closes, a signal or order arrives or the target exits; says which.
    async fn record(
        &mut self,
        target: &Target,
        probes: &mut ProbeSet,
        signals: Signals,
        mut orders: Option<UnboundedReceiver<Order>>,
    ) -> Result<Ending> {
        let Signals {
            mut interrupts,
            mut scan_requests,
            mut child_stops,
        } = signals;
        let options = self.options;
        // SAFETY: both descriptors are owned by `probes` and `target`, which outlive this
        // function and so these registrations.
        let ring = unsafe { AsyncFd::register(probes.events.as_raw_fd() as RawFd) }
            .map_err(|e| e.into_parts().1)
            .context("watch the ring buffer")?;
        // SAFETY: as above.
        let exited = unsafe { AsyncFd::register(target.exit_fd.as_raw_fd()) }
            .map_err(|e| e.into_parts().1)
            .context("watch the target")?;
        // A command that stopped before the loop began has its SIGCHLD behind it.
        self.answer_stops(target, probes)?;
        let start = tokio::time::Instant::now();
        let mut ticker = interval_at(start + options.interval, options.interval);
        // A late tick is skipped, not caught up: two samples close together make a wild slope.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let scan_every = options.scan.every.unwrap_or(Duration::MAX / 4);
        let mut scans = interval_at(start + scan_every, scan_every);
        scans.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let window = async {
            match options.duration {
                Some(duration) => sleep(duration).await,
                None => pending().await,
            }
        };
        tokio::pin!(window);

        // The probes wake the reader only when the ring buffer is a quarter full; the poll
        // finds the rest. Readiness is cleared before draining, never after: a wake-up for a
        // record committed after the last read is then never lost, and a backlog is drained
        // to the end.
        let mut poll = interval(RING_POLL);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut backlog = false;
        let mut intervals = 0;
        let ending = loop {
            tokio::select! {
                guard = ring.readable(), if !backlog => {
                    guard?.clear_ready();
                    backlog = true;
                }
                _ = poll.tick(), if !backlog => {
                    if self.end_exited_children(probes).is_err() {
                        break Ending::Failed;
                    }
                    self.cost.end_timing_when_done(probes);
                    backlog = true;
                }
                _ = std::future::ready(()), if backlog => {
                    match self.drain_caught(probes) {
                        Ok(done) => backlog = !done,
                        Err(()) => break Ending::Failed,
                    }
                }
                _ = ticker.tick() => {
                    // Sample what the target has done up to now, not up to the last wake-up.
                    if self.drain_to_end(probes).is_err() {
                        break Ending::Failed;
                    }
                    if self.outlet.is_some() {
                        self.publish(probes);
                    } else {
                        let view = self.live_view(probes, options.top);
                        print_text(options.text_to_stderr, &self.screen.frame(&view));
                    }
                    intervals += 1;
                    if self.over_limit() {
                        break Ending::Overhead {
                            percent: self
                                .last_cost
                                .and_then(|cost| cost.share())
                                .unwrap_or_default()
                                * 100.0,
                            limit: options.max_overhead.unwrap_or_default(),
                        };
                    }
                    if options.count.is_some_and(|count| intervals >= count) {
                        break Ending::DurationElapsed;
                    }
                }
                _ = &mut window => break Ending::DurationElapsed,
                _ = signals::interrupted(&mut interrupts) => break Ending::Interrupted,
                order = next_order(&mut orders) => match order {
                    Order::Stop => break Ending::Interrupted,
                    Order::Window => {
                        if self.drain_to_end(probes).is_err() {
                            break Ending::Failed;
                        }
                        self.hand_over_window(probes);
                    }
                    Order::Sites(sites) => {
                        if let Some(outlet) = &mut self.outlet {
                            outlet.sites = sites;
                        }
                    }
                },
                _ = signals::next(&mut scan_requests) => self.scan_now(target, probes, Held::NotYet)?,
                _ = scans.tick(), if options.scan.every.is_some() => {
                    self.scan_now(target, probes, Held::NotYet)?;
                }
                _ = signals::next(&mut child_stops), if target.tracee().is_some() => {
                    self.answer_stops(target, probes)?;
                }
                _ = exited.readable() => break Ending::TargetExited { status: None },
            }
        };
        Ok(ending)
    }

    /// Closes the window, starts removing the probes, takes in the ring buffer's tail and
    /// reports every image: the target's current one first, then its earlier images and the
    /// children followed.
    fn finish(
        mut self,
        target: &Target,
        probes: &mut ProbeSet,
        ending: Ending,
    ) -> Result<(Report, Detach)> {
        // While the target still runs, and before the window closes. A traced command may
        // be waiting at its exit already: then that is where it is scanned.
        let exiting = self.answer_stops(target, probes)?;
        let gone = matches!(ending, Ending::Failed | Ending::TargetExited { .. });
        if self.options.scan.at_end && !gone && !exiting && target.still_running() {
            self.scan_now(target, probes, Held::NotYet)?;
        }
        // Close the window first: then the ring buffer holds a finite tail, all of it the
        // window's.
        let window_end_ns = probes.close_window()?;
        // Before the programs go, and before a launched target is reaped.
        let cost = self.cost.report(probes, &self.pids());
        let detach = probes.detach_in_background(target.pid);
        self.closing = true;
        // After a failure, what is left in the ring buffer is left alone: it may fail again.
        let tail_failed = ending != Ending::Failed && self.drain_to_end(probes).is_err();
        let ending = match ending {
            _ if tail_failed => Ending::Failed,
            Ending::TargetExited { .. } => Ending::TargetExited {
                status: target.reap(),
            },
            other => other,
        };
        let drops = probes.drops()?;
        // The target's latest image leads. It may be an image that ended in an exec: the
        // new program can be gone before its image was started.
        let lead = self
            .images
            .iter()
            .rposition(|image| image.pid == target.pid)
            .unwrap_or(0);
        let mut report = self.images[lead].report(ending, window_end_ns, drops);
        report.memory = std::mem::take(&mut self.memory.samples);
        report.cost = Some(cost);
        report.children_missed = self.options.follow_forks.then_some(self.children_missed);
        for (index, image) in self.images.iter_mut().enumerate() {
            if index != lead {
                let ending = if image.pid == target.pid || process_exists(image.pid) {
                    ending
                } else {
                    Ending::TargetExited { status: None }
                };
                report
                    .processes
                    .push(image.report(ending, window_end_ns, drops));
            }
        }
        Ok((report, detach))
    }

    /// Answers the traced command's stops; at its exit, scans it before it goes on. True
    /// when it was at its exit.
    fn answer_stops(&mut self, target: &Target, probes: &mut ProbeSet) -> Result<bool> {
        let Some(tracee) = target.tracee() else {
            return Ok(false);
        };
        if tracee.pending() != Seen::Exiting {
            return Ok(false);
        }
        let scanned = self.scan_now(target, probes, Held::AtItsExit);
        tracee.let_exit();
        scanned.map(|()| true)
    }

    /// A reachability scan of the target's current image, now; its result replaces the
    /// last. A scan that fails is said and skipped, unless another tracer holds the target.
    fn scan_now(&mut self, target: &Target, probes: &mut ProbeSet, held: Held) -> Result<()> {
        match self.scan(target, probes, held) {
            Ok(line) => print_text(self.options.text_to_stderr, &line),
            Err(error)
                if error
                    .chain()
                    .any(|c| matches!(c.downcast_ref(), Some(Failure::Traced { .. }))) =>
            {
                return Err(error);
            }
            Err(error) => eprintln!("leaktrace: the scan failed: {error:#}"),
        }
        Ok(())
    }

    /// Freezes the target, takes in every event up to the freeze, copies its memory and
    /// lets it go; then classifies. The line that says what it found.
    fn scan(&mut self, target: &Target, probes: &mut ProbeSet, held: Held) -> Result<String> {
        let index = *self
            .current
            .get(&target.pid)
            .context("the target has no current image")?;
        let precopy = Precopy::take(target.pid);
        let mut freeze = match held {
            Held::NotYet => Freeze::new(target.pid, target.tracee())?,
            Held::AtItsExit => Freeze::at_exit(target.pid)?,
        };
        // The target's threads are stopped: every allocation and free it made is in the
        // ring buffer, and the ledger matches its memory once they are in.
        self.drain_to_end(probes)
            .map_err(|()| anyhow::anyhow!("take in the events before the scan"))?;
        let blocks = self.images[index].live_blocks();
        let snapshot = Snapshot::take(target.pid, precopy)?;
        let pause_ms = freeze.held_ms();
        let registers = std::mem::take(&mut freeze.registers);
        drop(freeze);
        let policy = if self.images[index].from_start {
            Policy::EveryBlockTracked
        } else {
            Policy::SomeBlocksUnknown
        };
        // Where libc's arena is does not change within an image: its symbols are read once.
        let main_arena = *self.images[index]
            .main_arena
            .get_or_init(|| roots::main_arena(target.pid, &snapshot.maps));
        let mut scan = scan::classify(
            main_arena,
            &snapshot,
            &registers,
            blocks,
            policy,
            &self.options.scan.heuristics,
            pause_ms,
        );
        scan.at_s = self.started.elapsed().as_secs_f64();
        let line = format!("{}\n", report::describe_scan(&scan));
        self.images[index].scan = Some(scan);
        Ok(line)
    }

    fn drain_to_end(&mut self, probes: &mut ProbeSet) -> Result<(), ()> {
        while !self.drain_caught(probes)? {}
        Ok(())
    }
}

/// The service's next order; never, for a capture at a terminal. A service gone is a stop.
async fn next_order(orders: &mut Option<UnboundedReceiver<Order>>) -> Order {
    match orders {
        Some(orders) => orders.recv().await.unwrap_or(Order::Stop),
        None => pending().await,
    }
}

fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The text leaktrace shows the operator, on stdout unless a report file took it.
pub fn print_text(to_stderr: bool, text: &str) {
    let written = if to_stderr {
        let mut stderr = std::io::stderr().lock();
        stderr
            .write_all(text.as_bytes())
            .and_then(|()| stderr.flush())
    } else {
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
    };
    // A closed pipe must not end the capture: the report files still get written.
    let _ = written;
}
