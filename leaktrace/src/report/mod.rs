//! Report: the final report, one model ([`Report`]) rendered six ways: text for the terminal,
//! JSON, folded stacks, an SVG flamegraph, a self-contained HTML page and a gzipped pprof
//! profile. The live view's rows are rendered here too.
//!
//! In: each traced image's ledger, call sites and symbolizer. Out: the terminal text and the
//! files [`output::ReportFiles`] names.

mod folded;
mod html;
pub mod output;
mod pprof;
mod text;

use std::{
    io::IsTerminal,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde::Serialize;

pub use folded::folded_stacks;
pub use text::{IntervalRow, human_bytes, render_final, render_interval, signed_bytes};

use crate::{
    kernel::DropCounts,
    ledger::sampling::Sampling,
    ledger::trends::Trends,
    ledger::{Ledger, SiteId, SiteStats, Totals},
    stacks::callsite::CallSites,
    stacks::symbolize::{Frame, Symbolizer},
    target::memory::MemorySample,
};

/// One call site in the report.
#[derive(Debug, Serialize)]
pub struct SiteReport {
    #[serde(flatten)]
    pub stats: SiteStats,
    /// Least-squares slope of live bytes over the last intervals ([`crate::ledger::trends`]).
    pub growth_bytes_per_s: f64,
    /// R² of that fit: how steadily the site grows, 0 to 1.
    pub growth_steadiness: f64,
    /// (seconds since the start, live bytes) at each interval and at the end.
    pub series: Vec<(f64, u64)>,
    /// The function named past the allocator wrappers ([`crate::stacks::labels`]).
    pub label: String,
    /// The wrappers folded into the label, innermost first: the first frames of `frames`.
    pub wrappers: Vec<String>,
    /// The site as the text report and the live view name it: `createClient ← zmalloc`,
    /// with what tells it apart from sites of the same label.
    pub site: String,
    /// Innermost first; `frames[0]` is the first frame outside the allocator.
    pub frames: Vec<Frame>,
}

/// How the capture ended, so the text can say "in use at exit" only when that is what it saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// The window (`-d`) closed.
    DurationElapsed,
    /// Ctrl-C, SIGTERM or SIGHUP.
    Interrupted,
    /// The target exited; `status` is its exit code, or 128 + signal.
    TargetExited { status: Option<i32> },
    /// The process exec'd another program: this image's address space is gone.
    Exec,
    /// leaktrace itself failed while taking in events (a bug): the report holds what it took
    /// in before.
    Failed,
}

/// The final state of a capture. Its JSON form is the contract in the README: fields may be
/// added, never removed or renamed.
#[derive(Debug, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub header: ReportHeader,
    pub totals: Totals,
    pub drops: DropCounts,
    /// Every site, by live bytes (most first).
    pub sites: Vec<SiteReport>,
    /// The target's earlier program images (before an exec) and, with `-f`, its children:
    /// each reported on its own.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<Report>,
    /// With `--windows`: what each window allocated that is still live.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<WindowReport>,
    /// The target's memory (RSS, PSS, anonymous, heap…) at each interval.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub memory: Vec<MemorySample>,
}

impl Report {
    /// `sites` are the ledger's sites with their stats as the report counts them
    /// ([`Ledger::site_stats`]).
    pub fn build(
        header: ReportHeader,
        ledger: &Ledger,
        mut sites: Vec<(SiteId, SiteStats)>,
        trends: &Trends,
        call_sites: &mut CallSites,
        symbolizer: &mut Symbolizer,
        drops: DropCounts,
    ) -> Report {
        let mut totals = ledger.totals();
        totals.live_bytes = sites.iter().map(|(_, s)| s.live_bytes).sum();
        totals.live_allocations = sites.iter().map(|(_, s)| s.live_allocations).sum();
        sites.sort_by_key(|(_, stats)| std::cmp::Reverse((stats.live_bytes, stats.allocs)));
        let mut progress = Progress::new("symbolizing", sites.len());
        for (site, _) in &sites {
            progress.advance();
            call_sites.frames(*site, symbolizer);
        }
        progress.finish();
        let mut labels = call_sites.labels(&[], None, symbolizer).to_vec();
        let sites = sites
            .into_iter()
            .map(|(site, stats)| {
                let growth = trends.growth(site);
                let label = labels
                    .get_mut(site.index())
                    .map(std::mem::take)
                    .unwrap_or_default();
                SiteReport {
                    stats,
                    growth_bytes_per_s: growth.bytes_per_s,
                    growth_steadiness: growth.steadiness,
                    series: trends.series(site).to_vec(),
                    label: label.label,
                    wrappers: label.wrappers,
                    site: label.text,
                    frames: call_sites.frames(site, symbolizer).to_vec(),
                }
            })
            .collect();
        Report {
            header,
            totals,
            drops,
            sites,
            processes: Vec::new(),
            windows: Vec::new(),
            memory: Vec::new(),
        }
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        write_report(path, (json + "\n").as_bytes())
    }

    pub fn write_folded(&self, path: &Path) -> Result<()> {
        write_report(path, folded_stacks(self).as_bytes())
    }

    pub fn write_flamegraph(&self, path: &Path) -> Result<()> {
        let svg = self.flamegraph()?;
        write_report(path, svg.as_bytes())
    }

    /// The self-contained HTML report, with the top `top` sites.
    pub fn write_html(&self, path: &Path, top: usize) -> Result<()> {
        let page = html::html(self, top, &self.flamegraph()?);
        write_report(path, page.as_bytes())
    }

    /// An SVG flamegraph of live bytes, drawn by inferno from the folded stacks.
    fn flamegraph(&self) -> Result<String> {
        let folded = folded_stacks(self);
        let mut options = inferno::flamegraph::Options::default();
        options.title = format!(
            "live bytes, pid {} ({})",
            self.header.pid, self.header.command
        );
        options.count_name = "bytes".to_owned();
        let mut svg = Vec::new();
        if folded.is_empty() {
            // inferno refuses an empty profile; say so in the picture instead.
            options.title.push_str(": no live bytes");
            inferno::flamegraph::from_lines(&mut options, ["[nothing live] 0"], &mut svg)
        } else {
            inferno::flamegraph::from_lines(&mut options, folded.lines(), &mut svg)
        }
        .context("draw the flamegraph")?;
        Ok(String::from_utf8_lossy(&svg).into_owned())
    }

    pub fn write_pprof(&self, path: &Path) -> Result<()> {
        let profile = pprof::pprof(self)?;
        write_report(path, &profile)
    }
}

/// Every report file goes out this way: atomically, never through a link, owned by the sudo
/// user.
fn write_report(path: &Path, contents: &[u8]) -> Result<()> {
    output::write_atomically(path, contents, output::invoking_user())
}

/// One capture window (`--windows`): the blocks allocated in it and still live at the end,
/// memray's "leaks in a time range".
#[derive(Debug, Serialize)]
pub struct WindowReport {
    pub start_s: f64,
    pub end_s: f64,
    pub live_bytes: u64,
    pub live_allocations: u64,
    /// By live bytes, most first; sites with nothing live from this window left out.
    pub sites: Vec<WindowSite>,
}

#[derive(Debug, Serialize)]
pub struct WindowSite {
    pub live_bytes: u64,
    pub live_allocations: u64,
    /// The site as the text report shows it ([`SiteReport::site`]).
    pub site: String,
}

/// What the report says about the capture itself.
#[derive(Debug, Serialize)]
pub struct ReportHeader {
    pub pid: u32,
    pub command: String,
    /// The module the target's malloc binds to.
    pub allocator: String,
    /// Every probed function and its module.
    pub probed: String,
    pub duration_s: f64,
    /// CLOCK_MONOTONIC (ns) when recording started and stopped: the window the numbers cover,
    /// comparable with the target's own clock readings.
    pub window_start_ns: u64,
    pub window_end_ns: u64,
    /// True when leaktrace started the target: then nothing was allocated unseen.
    pub from_start: bool,
    pub ending: Ending,
    /// Which live blocks are counted, when not all (`-o`, `-z`, `-Z`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live_filter: Option<String>,
    /// How allocations were sampled; unless exact, every byte and block count is an estimate.
    pub sampling: Sampling,
}

/// "symbolizing 120/4,096 sites" on a terminal's stderr, once the work has taken a second:
/// debug info for large programs takes a while to read, and silence looks like a hang.
struct Progress {
    what: &'static str,
    total: usize,
    done: usize,
    started: Instant,
    shown: bool,
    terminal: bool,
}

impl Progress {
    fn new(what: &'static str, total: usize) -> Progress {
        Progress {
            what,
            total,
            done: 0,
            started: Instant::now(),
            shown: false,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn advance(&mut self) {
        self.done += 1;
        if self.terminal && self.started.elapsed() > Duration::from_secs(1) {
            let (done, total) = (thousands(self.done as u64), thousands(self.total as u64));
            eprint!("\r{} {done}/{total} sites", self.what);
            self.shown = true;
        }
    }

    fn finish(self) {
        if self.shown {
            eprintln!();
        }
    }
}

/// 1234567 → "1,234,567": byte counts are read by people first.
pub fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
