//! One traced program image: its ledger, its call sites and the means to name them.

use std::{cell::OnceCell, collections::HashMap};

use anyhow::{Context, Result};

use crate::{
    cli::SortKey,
    kernel::{DropCounts, ProbeSet, Stack, monotonic_ns},
    ledger::{
        BlockFilter, Ledger, Sampling, SiteId, SiteStats, Totals, Trends, Watermarks,
        trends::Growth,
        verdict::{Judgement, Unseen, Verdict},
    },
    plan::{Family, ProbePlan},
    report::{Ending, IntervalRow, Report, ReportHeader, WindowReport, WindowSite},
    scan::{LeakScan, TrackedBlock, mark::Block},
    stacks::{
        AllocFns, AllocatorFrames, CallSites, DwarfUnwinder, Symbolizer,
        cut::Cut,
        labels::simple_name,
        symbolize::FoundBy,
        unwind::{StackCopy, Unwound},
    },
};

/// An interval's view of an image: what the live view shows, and a service exports.
pub struct LiveView {
    pub live_bytes: u64,
    pub live_allocations: u64,
    /// Sites that hold live bytes.
    pub sites: usize,
    /// The first sites in the view's order.
    pub rows: Vec<IntervalRow>,
}

/// "older than 30000 ms, of 16 to 4096 bytes", for the report header.
fn describe(filter: &BlockFilter) -> String {
    let mut parts = Vec::new();
    if filter.min_age_ms > 0 {
        parts.push(format!("older than {} ms", filter.min_age_ms));
    }
    if filter.min_size > 0 || filter.max_size < u64::MAX {
        let max = if filter.max_size == u64::MAX {
            "any".to_owned()
        } else {
            filter.max_size.to_string()
        };
        parts.push(format!("of {} to {max} bytes", filter.min_size));
    }
    parts.join(", ")
}

/// Each site's live bytes now as both its watermarks.
fn live_now(sites: &[(SiteId, SiteStats)]) -> Vec<Watermarks> {
    sites
        .iter()
        .map(|(_, stats)| Watermarks {
            low: stats.live_bytes,
            high: stats.live_bytes,
        })
        .collect()
}

/// A stack the kernel walked by frame pointers: its first address is the exact ip.
fn frame_pointer_stack(addresses: Vec<u64>) -> (Vec<u64>, Vec<FoundBy>) {
    let found_by = (0..addresses.len())
        .map(|i| {
            if i == 0 {
                FoundBy::Ip
            } else {
                FoundBy::FramePointers
            }
        })
        .collect();
    (addresses, found_by)
}

/// What an image is named and unwound with, made ready (for the target's first image) before
/// the recording window opens: its files opened (a launched command may be gone by the first
/// event) and, with stack copies, its CFI read.
pub struct Prepared {
    pub symbolizer: Symbolizer,
    pub unwinder: DwarfUnwinder,
}

impl Prepared {
    pub fn new(pid: u32, debug_dirs: &[std::path::PathBuf], stack_copies: bool) -> Result<Self> {
        let symbolizer =
            Symbolizer::new(pid, debug_dirs).with_context(|| format!("read /proc/{pid}/maps"))?;
        let unwinder = DwarfUnwinder::new(&symbolizer, stack_copies);
        Ok(Prepared {
            symbolizer,
            unwinder,
        })
    }
}

/// The frames of `plan`'s allocator: every frame in the modules of its C functions, and its
/// seen-through C++ operators.
fn allocator_frames(plan: &ProbePlan) -> AllocatorFrames {
    let mut modules = Vec::new();
    for point in &plan.points {
        if point.function.family != Family::Cxx && !modules.contains(&point.module) {
            modules.push(point.module.clone());
        }
    }
    let operators = plan
        .delegated
        .iter()
        .map(|operator| {
            let name = addr2line::demangle_auto(operator.symbol.as_str().into(), None);
            (operator.module.clone(), simple_name(&name))
        })
        .collect();
    AllocatorFrames { modules, operators }
}

/// How long each live view may spend symbolizing sites beyond its rows, which the labels
/// are named among: events wait meanwhile.
const LABEL_BUDGET: std::time::Duration = std::time::Duration::from_millis(100);

/// How every image is traced and counted.
#[derive(Clone, Debug, Default)]
pub struct ImageOptions {
    pub sampling: Sampling,
    /// The probes send stack copies to unwind (`--unwind auto`): see [`DwarfUnwinder::new`].
    pub stack_copies: bool,
    /// Which live blocks the reports count.
    pub filter: BlockFilter,
    /// `--windows`: the window length in ms, and how many.
    pub windows: Option<(u32, usize)>,
    /// `-a`: list this many of each site's oldest live blocks.
    pub list_blocks: Option<usize>,
    /// The live view's period: an interval of the trends and verdicts.
    pub interval: std::time::Duration,
    /// Which functions are allocator wrappers, folded into the sites' labels.
    pub alloc_fns: AllocFns,
    /// Sites a report holds at most (`--max-sites`).
    pub max_sites: usize,
}

/// What one process did while it ran one program.
///
/// A process that execs starts a new image (the old address space, and every block in it, is
/// gone); a child followed across fork has its own. Each image is reported on its own.
pub struct TracedImage {
    pub pid: u32,
    pub command: String,
    /// Traced from the image's first instruction: then nothing was allocated unseen.
    pub from_start: bool,
    /// What was probed in it: what a child it forks has to be probed at.
    pub plan: ProbePlan,
    allocator: String,
    probed: String,
    ledger: Ledger,
    call_sites: CallSites,
    symbolizer: Symbolizer,
    trends: Trends,
    /// Which live blocks the report counts.
    filter: BlockFilter,
    windows: Option<(u32, usize)>,
    /// `-a`: how many of each site's oldest live blocks the report lists.
    list_blocks: Option<usize>,
    max_sites: usize,
    interval: std::time::Duration,
    /// None once the image has ended: nothing is unwound in it any more.
    unwinder: Option<DwarfUnwinder>,
    /// CFI-unwound stacks by key, waiting for their allocation event.
    unwound: HashMap<u64, Unwound>,
    /// The last stack unwound under each key, for an allocation whose copy could not be sent.
    last_copy: HashMap<u64, Unwound>,
    /// CLOCK_MONOTONIC when recording of this image started, the clock of event timestamps.
    start_ns: u64,
    /// Set when the image ended before the capture did (exec).
    pub ended: Option<(Ending, u64)>,
    /// The latest reachability scan: each live block's leak kind, by site.
    pub scan: Option<LeakScan>,
    /// glibc's `main_arena` in this image, once a scan looked for it.
    pub main_arena: OnceCell<Option<Block>>,
}

impl TracedImage {
    pub fn new(
        pid: u32,
        command: String,
        plan: &ProbePlan,
        prepared: Prepared,
        options: ImageOptions,
        from_start: bool,
        start_ns: u64,
    ) -> Self {
        TracedImage {
            pid,
            command,
            from_start,
            plan: plan.clone(),
            allocator: plan
                .malloc_module()
                .map_or_else(String::new, |m| m.display().to_string()),
            probed: plan.describe(),
            // With a block filter the marks are of the filtered live bytes at each interval's
            // end: the ledger's, by event time, count every block.
            ledger: Ledger::with_intervals(
                options.sampling,
                if options.filter.is_active() {
                    0
                } else {
                    options.interval.as_millis().try_into().unwrap_or(u32::MAX)
                },
            ),
            call_sites: CallSites::new(allocator_frames(plan), options.alloc_fns),
            symbolizer: prepared.symbolizer,
            trends: Trends::default(),
            filter: options.filter,
            windows: options.windows,
            list_blocks: options.list_blocks,
            max_sites: options.max_sites,
            interval: options.interval,
            unwinder: Some(prepared.unwinder),
            unwound: HashMap::new(),
            last_copy: HashMap::new(),
            start_ns,
            ended: None,
            scan: None,
            main_arena: OnceCell::new(),
        }
    }

    /// What naming and unwinding `child`, just forked from this image's process, takes: this
    /// image's, shared, with what the child mapped since.
    pub fn prepared_for_child(&self, child: u32) -> Result<Prepared> {
        let unwinder = self
            .unwinder
            .as_ref()
            .context("the parent's image has ended")?
            .forked();
        let symbolizer = self
            .symbolizer
            .forked(child)
            .with_context(|| format!("read /proc/{child}/maps"))?;
        Ok(Prepared {
            symbolizer,
            unwinder,
        })
    }

    /// Every live heap block, for a scan.
    pub fn live_blocks(&self) -> Vec<TrackedBlock> {
        self.ledger.live_blocks()
    }

    /// A heap block, or with `mapping` an anonymous mapping.
    pub fn record_alloc(
        &mut self,
        address: u64,
        size: u64,
        stack: Stack,
        timestamp_ns: u64,
        mapping: bool,
        probes: &ProbeSet,
    ) {
        let allocated_ms = self.ms(timestamp_ns);
        let mut first_seen = None;
        let mut cut = None;
        let key = match self.call_sites.known_key(&stack) {
            Some(key) => {
                // A stack sent whole may be a new deeper stack under known frames.
                if let Stack::Inline(addresses, stack_key) = &stack {
                    cut = Cut::of_inline(self.pid, addresses, *stack_key);
                }
                key
            }
            None => {
                let (mut addresses, mut found_by) = match &stack {
                    Stack::Id(id) => frame_pointer_stack(probes.stack(*id)),
                    Stack::Copied(hash) | Stack::OwnCopy(hash) => match self.unwound.remove(hash) {
                        Some(cfi) => {
                            let stack = (cfi.addresses.clone(), cfi.found_by.clone());
                            self.last_copy.insert(*hash, cfi);
                            stack
                        }
                        // Its copy could not be sent: the last one under its key stands in.
                        None => self
                            .last_copy
                            .get(hash)
                            .map_or_else(Default::default, |cfi| {
                                (cfi.addresses.clone(), cfi.found_by.clone())
                            }),
                    },
                    Stack::Inline(frames, _) => frame_pointer_stack(frames.clone()),
                    Stack::Lost => (Vec::new(), Vec::new()),
                };
                cut = Cut::apply(self.pid, &stack, &mut addresses, &mut found_by);
                self.symbolizer.observe(&addresses);
                let key = self.call_sites.intern(&stack, &addresses);
                first_seen = Some((addresses, found_by));
                key
            }
        };
        let (site, is_new) = if mapping {
            self.ledger.record_mmap(address, size, key)
        } else {
            self.ledger.record_alloc(address, size, key, allocated_ms)
        };
        if is_new {
            let (addresses, found_by) = first_seen.unwrap_or_default();
            self.call_sites.add(site, addresses, found_by);
        }
        if let Some(cut) = cut {
            self.call_sites.note_cut(site, cut);
        }
    }

    /// Unwinds a stack copy now, while the image's modules are surely mapped; the allocation
    /// event that follows picks the result up. What the unwinding learned of return-address
    /// offsets goes to the probes, so that later stacks get told apart by their callers.
    pub fn record_stack_sample(
        &mut self,
        stack_hash: u64,
        copy: &StackCopy,
        probes: &mut ProbeSet,
    ) {
        self.symbolizer.observe(&[copy.ip]);
        let Some(unwinder) = &mut self.unwinder else {
            return;
        };
        let unwound = unwinder.unwind(copy, &self.symbolizer);
        probes.learn_return_offsets(&unwound.return_offsets);
        self.unwound.insert(stack_hash, unwound);
    }

    pub fn ledger_mut(&mut self) -> &mut Ledger {
        &mut self.ledger
    }

    /// Milliseconds since this image's recording started, at an event's timestamp.
    pub fn ms(&self, timestamp_ns: u64) -> u32 {
        (timestamp_ns.saturating_sub(self.start_ns) / 1_000_000)
            .try_into()
            .unwrap_or(u32::MAX)
    }

    /// Seconds since this image's recording started.
    fn now(&self) -> f64 {
        monotonic_ns().saturating_sub(self.start_ns) as f64 / 1e9
    }

    /// A live view's moment: every site's live bytes go into the trends, and so do the
    /// watermarks of each interval of the target's time that ended since the last (by the
    /// events' timestamps, so however late this comes: [`Ledger::with_intervals`]). With a
    /// block filter, the filtered live bytes now stand for both watermarks of an interval
    /// that ends now.
    fn end_interval(&mut self) -> Vec<(SiteId, SiteStats)> {
        let now = self.now();
        let now_ms = (now * 1000.0) as u32;
        let sites = self.ledger.site_stats(&self.filter, now_ms);
        self.trends.sample(&sites, now);
        if self.filter.is_active() {
            self.trends.end_interval(&live_now(&sites), now);
        } else {
            for closed in self.ledger.close_intervals(now_ms) {
                let end = closed.end_ms as f64 / 1000.0;
                self.trends.end_interval(&closed.watermarks, end);
            }
        }
        sites
    }

    /// The interval that ends now: live bytes and blocks, and the top `top` sites by `sort`
    /// with their change over the interval, growth and verdict over the live view's window.
    /// Sorted by growth, `leaking` sites come first. `frees_lost`: events lost so far that may
    /// have been frees ([`DropCounts::frees_maybe_lost`]).
    pub fn live_view(&mut self, top: usize, sort: SortKey, frees_lost: u64) -> LiveView {
        // The sample is of the ledger as it is now; symbolizing the rows may take a while.
        let sites = self.end_interval();
        let unseen = Unseen::of(
            &self.ledger.totals(),
            self.from_start,
            frees_lost,
            self.ledger.sampling(),
        );
        let mut judged: Vec<(SiteId, SiteStats, Growth, Judgement)> = sites
            .into_iter()
            .filter(|(_, stats)| stats.live_bytes > 0 || sort == SortKey::Allocs)
            .map(|(site, stats)| {
                let growth = self.trends.growth(site);
                let judgement = self
                    .trends
                    .recent_verdict(site)
                    .allowing_for(&unseen, &stats);
                (site, stats, growth, judgement)
            })
            .collect();
        let holding = judged.iter().filter(|(_, s, ..)| s.live_bytes > 0).count();
        match sort {
            SortKey::Growth => judged.sort_by(|a, b| {
                let leaking = |j: &Judgement| j.verdict == Verdict::Leaking;
                // Until there are samples to fit, live bytes decide.
                (leaking(&b.3).cmp(&leaking(&a.3)))
                    .then(b.2.bytes_per_s.total_cmp(&a.2.bytes_per_s))
                    .then(b.1.live_bytes.cmp(&a.1.live_bytes))
            }),
            SortKey::Live => judged.sort_by_key(|(_, s, _, _)| std::cmp::Reverse(s.live_bytes)),
            SortKey::Allocs => judged.sort_by_key(|(_, s, _, _)| std::cmp::Reverse(s.allocs)),
        }
        // The rows first; then other sites, for the labels' context, as time allows.
        let shown: Vec<SiteId> = judged.iter().take(top).map(|(site, ..)| *site).collect();
        let labels = self
            .call_sites
            .labels(&shown, Some(LABEL_BUDGET), &mut self.symbolizer);
        let rows = judged
            .into_iter()
            .take(top)
            .map(|(site, stats, growth, judgement)| IntervalRow {
                id: site,
                live_bytes: stats.live_bytes,
                live_allocations: stats.live_allocations,
                change: self.trends.change(site),
                growth,
                verdict: judgement.verdict,
                site: labels
                    .get(site.index())
                    .map_or_else(String::new, |label| label.text.clone()),
            })
            .collect();
        let totals = self.ledger.totals();
        LiveView {
            live_bytes: totals.live_bytes,
            live_allocations: totals.live_allocations,
            sites: holding,
            rows,
        }
    }

    /// Allocations and frees taken in so far, and what they leave live.
    pub fn totals(&self) -> Totals {
        self.ledger.totals()
    }

    /// An id of `site` that stays the same while its stack does: across reports, and across
    /// the process's restarts ([`CallSites::stable_id`]).
    pub fn stable_id(&mut self, site: SiteId) -> String {
        self.call_sites.stable_id(site, &mut self.symbolizer)
    }

    /// A report of the image so far, while it goes on: its trends are left open.
    pub fn snapshot(&mut self, drops: DropCounts) -> Report {
        self.build_report(Ending::Ongoing, monotonic_ns(), drops)
    }

    /// Ends the image's capture now (its process exited): its trends take their last sample,
    /// and what unwinding it took is let go.
    pub fn end(&mut self, ending: Ending, end_ns: u64) {
        self.finish_trends();
        self.ended = Some((ending, end_ns));
        self.unwinder = None;
        self.unwound = HashMap::new();
        self.last_copy = HashMap::new();
    }

    /// The trends' last sample and the capture's end, at the image's end.
    fn finish_trends(&mut self) {
        let now = self.now();
        let now_ms = (now * 1000.0) as u32;
        let sites = self.ledger.site_stats(&self.filter, now_ms);
        self.trends.sample(&sites, now);
        let last = if self.filter.is_active() {
            live_now(&sites)
        } else {
            for closed in self.ledger.close_intervals(now_ms) {
                let end = closed.end_ms as f64 / 1000.0;
                self.trends.end_interval(&closed.watermarks, end);
            }
            self.ledger.take_watermarks()
        };
        let interval_s = self.interval.as_secs_f64();
        self.trends.end_capture(&last, now, interval_s);
    }

    /// The image's report. `ending` and `end_ns` apply unless the image ended earlier.
    pub fn report(&mut self, ending: Ending, end_ns: u64, drops: DropCounts) -> Report {
        if self.ended.is_none() {
            self.finish_trends();
        }
        let (ending, end_ns) = self.ended.unwrap_or((ending, end_ns));
        self.build_report(ending, end_ns, drops)
    }

    fn build_report(&mut self, ending: Ending, end_ns: u64, drops: DropCounts) -> Report {
        let duration_s = end_ns.saturating_sub(self.start_ns) as f64 / 1e9;
        let header = ReportHeader {
            pid: self.pid,
            command: self.command.clone(),
            allocator: self.allocator.clone(),
            probed: self.probed.clone(),
            duration_s,
            window_start_ns: self.start_ns,
            window_end_ns: end_ns,
            from_start: self.from_start,
            ending,
            live_filter: self.filter.is_active().then(|| describe(&self.filter)),
            sampling: self.ledger.sampling(),
        };
        let now_ms = self.ms(end_ns);
        let mut blocks = match self.list_blocks {
            Some(most) => self.ledger.oldest_blocks(&self.filter, now_ms, most),
            None => HashMap::new(),
        };
        let sites = self
            .ledger
            .site_stats(&self.filter, now_ms)
            .into_iter()
            .map(|(site, stats)| (site, stats, blocks.remove(&site).unwrap_or_default()))
            .collect();
        let mut report = Report::build(
            header,
            &self.ledger,
            sites,
            self.max_sites,
            &self.trends,
            &mut self.call_sites,
            &mut self.symbolizer,
            drops,
            self.scan.as_ref(),
        );
        if let Some((window_ms, count)) = self.windows {
            report.windows = self.window_reports(window_ms, count);
        }
        report
    }

    fn window_reports(&mut self, window_ms: u32, count: usize) -> Vec<WindowReport> {
        let by_window = self.ledger.live_by_window(window_ms, count);
        let sites: Vec<SiteId> = self.ledger.sites().map(|(site, _, _)| site).collect();
        let labels = self
            .call_sites
            .labels(&[], None, &mut self.symbolizer)
            .to_vec();
        by_window
            .into_iter()
            .enumerate()
            .map(|(index, live)| {
                let mut window_sites: Vec<WindowSite> = sites
                    .iter()
                    .filter(|site| live[site.index()].1 > 0)
                    .map(|&site| WindowSite {
                        live_bytes: live[site.index()].0,
                        live_allocations: live[site.index()].1,
                        site: labels
                            .get(site.index())
                            .map_or_else(String::new, |label| label.text.clone()),
                    })
                    .collect();
                window_sites.sort_by_key(|s| std::cmp::Reverse(s.live_bytes));
                let window_s = f64::from(window_ms) / 1000.0;
                WindowReport {
                    start_s: index as f64 * window_s,
                    end_s: (index + 1) as f64 * window_s,
                    live_bytes: window_sites.iter().map(|s| s.live_bytes).sum(),
                    live_allocations: window_sites.iter().map(|s| s.live_allocations).sum(),
                    sites: window_sites,
                }
            })
            .collect()
    }
}
