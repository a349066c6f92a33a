//! The capture loop: drain events into the ledger, print the live view, stop when told.

use std::{
    future::pending,
    os::fd::{AsRawFd, RawFd},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    time::{interval_at, sleep},
};

use crate::{
    allocator::ProbePlan,
    callsite::CallSites,
    events::{Event, Stack},
    ledger::Ledger,
    probes::{Detach, ProbeSet},
    report::{self, Ending, IntervalRow, Report, ReportHeader},
    symbolize::Symbolizer,
    target::Target,
    trends::IntervalChange,
};

/// Records drained per wake-up before the loop looks at its timers and signals again.
const DRAIN_BATCH: usize = 1 << 16;

/// When and how the capture reports and ends.
pub struct CaptureOptions {
    pub duration: Option<Duration>,
    pub interval: Duration,
    pub top: usize,
}

/// Everything the capture accumulates.
struct Capture {
    pid: u32,
    ledger: Ledger,
    call_sites: CallSites,
    symbolizer: Symbolizer,
    change: IntervalChange,
    /// CLOCK_MONOTONIC at the start, the clock of the events' timestamps.
    start_ns: u64,
}

impl Capture {
    /// Applies up to [`DRAIN_BATCH`] records; true when the ring buffer is empty.
    fn drain(&mut self, probes: &mut ProbeSet) -> bool {
        for _ in 0..DRAIN_BATCH {
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

    fn apply(&mut self, event: Event, probes: &ProbeSet) {
        // The probes fire for the target only; a forked child shares them until it execs.
        if event.pid() != self.pid {
            return;
        }
        match event {
            Event::Alloc {
                address,
                size,
                stack,
                timestamp_ns,
                ..
            } => {
                let allocated_ms = (timestamp_ns.saturating_sub(self.start_ns) / 1_000_000)
                    .try_into()
                    .unwrap_or(u32::MAX);
                let key = self.call_sites.key(&stack);
                let (site, is_new) = self.ledger.record_alloc(address, size, key, allocated_ms);
                if is_new {
                    let addresses = match stack {
                        Stack::Id(id) => probes.stack(id),
                        Stack::Inline(frames) => frames,
                        Stack::Lost => Vec::new(),
                    };
                    self.symbolizer.observe(&addresses);
                    self.call_sites.add(site, addresses);
                }
            }
            Event::Free { address, .. } => self.ledger.record_free(address),
            Event::ReallocFree { tid, address, .. } => {
                self.ledger.record_realloc_free(tid, address)
            }
            Event::ReallocFailed { tid, .. } => self.ledger.record_realloc_failed(tid),
        }
    }

    fn live_view(&mut self, elapsed: Duration, probes: &ProbeSet, top: usize) -> String {
        let mut sites: Vec<_> = self
            .ledger
            .sites()
            .filter(|(_, _, stats)| stats.live_bytes > 0)
            .map(|(site, _, stats)| (site, *stats))
            .collect();
        sites.sort_by_key(|(_, stats)| std::cmp::Reverse(stats.live_bytes));
        let rows: Vec<IntervalRow> = sites
            .into_iter()
            .take(top)
            .map(|(site, stats)| IntervalRow {
                live_bytes: stats.live_bytes,
                live_allocations: stats.live_allocations,
                change: self.change.change(site, stats.live_bytes),
                site: self
                    .call_sites
                    .frames(site, &mut self.symbolizer)
                    .first()
                    .map_or_else(|| "[stack not recorded]".to_owned(), |f| f.describe()),
            })
            .collect();
        self.change.advance(&self.ledger);
        let totals = self.ledger.totals();
        report::render_interval(
            elapsed.as_secs_f64(),
            totals.live_bytes,
            totals.live_allocations,
            &probes.drops().unwrap_or_default(),
            &rows,
        )
    }
}

/// Runs the capture until the window closes, a signal arrives or the target exits, then
/// builds the report while the probes are being removed.
///
/// The symbolizer must have been made while the target surely lived (before a launched target
/// is resumed); `window_start_ns` is when [`ProbeSet::open_window`] opened the window.
pub async fn run(
    target: &Target,
    plan: &ProbePlan,
    probes: &mut ProbeSet,
    symbolizer: Symbolizer,
    options: &CaptureOptions,
    window_start_ns: u64,
) -> Result<(Report, Detach)> {
    let started = Instant::now();
    let mut capture = Capture {
        pid: target.pid,
        ledger: Ledger::default(),
        call_sites: CallSites::new(plan.modules().into_iter().map(Into::into).collect()),
        symbolizer,
        change: IntervalChange::default(),
        start_ns: window_start_ns,
    };
    // SAFETY: both descriptors are owned by `probes` and `target`, which outlive this function
    // and so these registrations.
    let ring = unsafe { AsyncFd::register(probes.events.as_raw_fd() as RawFd) }
        .map_err(|e| e.into_parts().1)
        .context("watch the ring buffer")?;
    let exited = unsafe { AsyncFd::register(target.exit_fd.as_raw_fd()) }
        .map_err(|e| e.into_parts().1)
        .context("watch the target")?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let start = tokio::time::Instant::now();
    let mut ticker = interval_at(start + options.interval, options.interval);
    let window = async {
        match options.duration {
            Some(duration) => sleep(duration).await,
            None => pending().await,
        }
    };
    tokio::pin!(window);

    let ending = loop {
        tokio::select! {
            guard = ring.readable() => {
                let mut guard = guard?;
                if capture.drain(probes) {
                    guard.clear_ready();
                }
            }
            _ = ticker.tick() => {
                print!("{}", capture.live_view(started.elapsed(), probes, options.top));
            }
            _ = &mut window => break Ending::DurationElapsed,
            _ = interrupt.recv() => break Ending::Interrupted,
            _ = terminate.recv() => break Ending::Interrupted,
            _ = hangup.recv() => break Ending::Interrupted,
            _ = exited.readable() => break Ending::TargetExited { status: None },
        }
    };
    // Close the window first: then the ring buffer holds a finite tail, all of it the window's.
    let window_end_ns = probes.close_window()?;
    let detach = probes.detach_in_background();
    while !capture.drain(probes) {}
    let drops = probes.drops()?;
    let ending = match ending {
        Ending::TargetExited { .. } => Ending::TargetExited {
            status: target.reap(),
        },
        other => other,
    };
    let header = ReportHeader {
        pid: target.pid,
        command: target.command.clone(),
        allocator: plan
            .malloc_module()
            .map_or_else(String::new, |m| m.display().to_string()),
        probed: plan.describe(),
        duration_s: started.elapsed().as_secs_f64(),
        window_start_ns,
        window_end_ns,
        from_start: target.launched,
        ending,
    };
    let report = Report::build(
        header,
        &capture.ledger,
        &mut capture.call_sites,
        &mut capture.symbolizer,
        drops,
    );
    Ok((report, detach))
}
