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
pub mod screen;
mod text;

use std::{
    io::IsTerminal,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde::Serialize;

pub use folded::folded_stacks;
pub use output::Format;
pub use text::{
    IntervalRow, describe_scan, human_bytes, render_final, render_interval, signed_bytes,
};

use crate::{
    cost::CostReport,
    kernel::DropCounts,
    ledger::sampling::Sampling,
    ledger::trends::Trends,
    ledger::verdict::{Judgement, Unseen, Verdict},
    ledger::{Ledger, LiveBlock, SiteId, SiteStats, Totals},
    scan::{KindAmounts, LeakScan},
    stacks::symbolize::{Frame, Symbolizer},
    stacks::{callsite::CallSites, cut::StackCut},
    target::memory::MemorySample,
};

/// One call site in the report.
#[derive(Debug, Serialize)]
pub struct SiteReport {
    #[serde(flatten)]
    pub stats: SiteStats,
    /// What the site's floor did over the whole capture ([`crate::ledger::verdict`]).
    pub verdict: Verdict,
    /// Theil–Sen slope of the site's floor (each interval's least live bytes), bytes per
    /// second: over the rising part when `leaking`, else over the whole capture.
    pub floor_growth_bytes_per_s: f64,
    /// Least-squares slope of live bytes over the last intervals ([`crate::ledger::trends`]).
    pub growth_bytes_per_s: f64,
    /// R² of that fit: how steadily the site grows, 0 to 1; `None` (null) when fitted
    /// through fewer than 3 samples.
    pub growth_steadiness: Option<f64>,
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
    /// When the stack was deeper than a site keeps: where it was cut, and how many distinct
    /// stacks that share these frames the site merged ([`crate::stacks::cut`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack_cut: Option<StackCut>,
    /// With `-a`: its oldest live blocks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub blocks: Vec<LiveBlock>,
    /// Its blocks by leak kind, when a reachability scan ran ([`crate::scan`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scan: Option<KindAmounts>,
}

/// How the capture ended, so the text can say "in use at exit" only when that is what it saw.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
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
    /// The estimated tracing cost stayed above `--max-overhead` (`limit`, in percent of the
    /// target's CPU) for [`crate::cost::limit::INTERVALS`] intervals in a row; `percent` is the
    /// last interval's.
    Overhead { percent: f64, limit: f64 },
    /// The capture goes on: a rolling window's report (`leaktrace serve`).
    Ongoing,
}

/// The final state of a capture. Its JSON form is the contract in the README: fields may be
/// added, never removed or renamed.
#[derive(Debug, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub header: ReportHeader,
    pub totals: Totals,
    pub drops: DropCounts,
    /// Every site: the `leaking` ones first, fastest floor first; then the others by live
    /// bytes (most first).
    pub sites: Vec<SiteReport>,
    /// The sites past `--max-sites`, which the report leaves out: the last in the order above.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sites_left_out: Option<LeftOut>,
    /// The target's earlier program images (before an exec) and, with `-f`, its children:
    /// each reported on its own.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<Report>,
    /// With `-f`, in the lead report: the children forked in the window that were not
    /// followed (each ended before its probes were in, or could not be probed). With the
    /// children in `processes`, every child forked in the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub children_missed: Option<u64>,
    /// With `--windows`: what each window allocated that is still live.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<WindowReport>,
    /// The target's memory (RSS, PSS, anonymous, heap…) at each interval.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub memory: Vec<MemorySample>,
    /// What tracing cost the traced processes: the capture's figures, and their inputs. In
    /// the lead report only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<CostReport>,
    /// The last reachability scan ([`crate::scan`]): the live blocks by leak kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scan: Option<LeakScan>,
}

/// What the sites a report leaves out hold: a capture can have tens of thousands of sites,
/// and a report of each would run to hundreds of megabytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LeftOut {
    pub sites: usize,
    pub live_bytes: u64,
    pub live_allocations: u64,
}

impl Report {
    /// `sites` are the ledger's sites with their stats as the report counts them
    /// ([`Ledger::site_stats`]). With a `scan`, sites that hold definitely lost bytes come
    /// first, and lost bytes rule out `replacing`: what is lost replaces nothing. The first
    /// `max_sites` in that order are reported, and symbolized.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        header: ReportHeader,
        ledger: &Ledger,
        sites: Vec<(SiteId, SiteStats, Vec<LiveBlock>)>,
        max_sites: usize,
        trends: &Trends,
        call_sites: &mut CallSites,
        symbolizer: &mut Symbolizer,
        drops: DropCounts,
        scan: Option<&LeakScan>,
    ) -> Report {
        let mut totals = ledger.totals();
        let unseen = Unseen::of(
            &totals,
            header.from_start,
            drops.frees_maybe_lost(),
            ledger.sampling(),
        );
        totals.live_bytes = sites.iter().map(|(_, s, _)| s.live_bytes).sum();
        totals.live_allocations = sites.iter().map(|(_, s, _)| s.live_allocations).sum();
        let mut sites: Vec<_> = sites
            .into_iter()
            .map(|(site, stats, blocks)| {
                let kinds = scan.map(|scan| scan.per_site.get(&site).copied().unwrap_or_default());
                let whole = trends.whole_verdict(site);
                // What a scan found lost is lost: no unseen free explains it.
                let judgement = match kinds {
                    Some(kinds) if kinds.lost_bytes() > 0 => whole,
                    _ => whole.allowing_for(&unseen, &stats),
                };
                (site, stats, blocks, judgement, kinds)
            })
            .collect();
        sites.sort_by(
            |(_, a, _, a_verdict, a_kinds), (_, b, _, b_verdict, b_kinds)| {
                let leaking = |j: &Judgement| j.verdict == Verdict::Leaking;
                let leak_rate = |j: &Judgement| {
                    if leaking(j) { j.floor_bytes_per_s } else { 0.0 }
                };
                let lost = |k: &Option<KindAmounts>| k.map_or(0, |k| k.definitely_lost.bytes);
                (lost(b_kinds).cmp(&lost(a_kinds)))
                    .then(leaking(b_verdict).cmp(&leaking(a_verdict)))
                    .then(leak_rate(b_verdict).total_cmp(&leak_rate(a_verdict)))
                    .then((b.live_bytes, b.allocs).cmp(&(a.live_bytes, a.allocs)))
            },
        );
        let left_out = sites.split_off(max_sites.min(sites.len()));
        let sites_left_out = (!left_out.is_empty()).then(|| LeftOut {
            sites: left_out.len(),
            live_bytes: left_out.iter().map(|(_, s, ..)| s.live_bytes).sum(),
            live_allocations: left_out.iter().map(|(_, s, ..)| s.live_allocations).sum(),
        });
        let mut progress = Progress::new("symbolizing", sites.len());
        for (site, ..) in &sites {
            progress.advance();
            call_sites.frames(*site, symbolizer);
        }
        progress.finish();
        let mut labels = call_sites.labels(&[], None, symbolizer).to_vec();
        let sites = sites
            .into_iter()
            .map(|(site, stats, blocks, judgement, kinds)| {
                let growth = trends.growth(site);
                let label = labels
                    .get_mut(site.index())
                    .map(std::mem::take)
                    .unwrap_or_default();
                SiteReport {
                    stats,
                    verdict: judgement.verdict,
                    floor_growth_bytes_per_s: judgement.floor_bytes_per_s,
                    growth_bytes_per_s: growth.bytes_per_s,
                    growth_steadiness: growth.shown_steadiness(),
                    series: trends.series(site).to_vec(),
                    label: label.label,
                    wrappers: label.wrappers,
                    site: label.text,
                    frames: call_sites.frames(site, symbolizer).to_vec(),
                    stack_cut: call_sites.cut(site),
                    blocks,
                    scan: kinds,
                }
            })
            .collect();
        Report {
            header,
            totals,
            drops,
            sites,
            sites_left_out,
            processes: Vec::new(),
            children_missed: None,
            windows: Vec::new(),
            memory: Vec::new(),
            cost: None,
            scan: scan.cloned(),
        }
    }

    /// The report in `format`, as the file (or standard output) gets it.
    pub fn render(&self, format: Format, top: usize) -> Result<Vec<u8>> {
        Ok(match format {
            Format::Json => (serde_json::to_string_pretty(self)? + "\n").into_bytes(),
            Format::Folded => folded_stacks(self).into_bytes(),
            Format::Flamegraph => self.flamegraph()?.into_bytes(),
            Format::Html => html::html(self, top, &self.flamegraph()?).into_bytes(),
            Format::Pprof => pprof::pprof(self)?,
        })
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
        if folded.is_empty() {
            // inferno refuses a profile with nothing in it: a picture that says so instead.
            return Ok(format!(
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"1200\" height=\"60\">\
                 <text x=\"600\" y=\"34\" text-anchor=\"middle\" font-family=\"Verdana\" \
                 font-size=\"17\">{}: no live bytes</text></svg>\n",
                html::escape(&options.title)
            ));
        }
        let mut svg = Vec::new();
        inferno::flamegraph::from_lines(&mut options, folded.lines(), &mut svg)
            .context("draw the flamegraph")?;
        let label = format!(
            "all live bytes of pid {} ({}): {} bytes in {} blocks",
            self.header.pid,
            self.header.command,
            thousands(self.totals.live_bytes),
            thousands(self.totals.live_allocations)
        );
        Ok(label_root(&String::from_utf8_lossy(&svg), &label))
    }
}

/// inferno leaves its root frame ("all") blank: write `label` in it. The root is the frame
/// whose tooltip starts "all (": its text element follows its title and rectangle.
fn label_root(svg: &str, label: &str) -> String {
    const ROOT: &str = "<title>all (";
    const EMPTY_TEXT: &str = "></text>";
    let Some(root) = svg.find(ROOT) else {
        return svg.to_owned();
    };
    let Some(text) = svg[root..].find(EMPTY_TEXT).map(|at| root + at + 1) else {
        return svg.to_owned();
    };
    let label = html::escape(label);
    format!("{}{label}{}", &svg[..text], &svg[text..])
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
    fn the_flamegraph_root_is_labelled() {
        let svg = "<g><title>leak (3 bytes, 75%)</title><rect/><text x=\"1\">leak</text></g>\
                   <g><title>all (4 bytes, 100%)</title><rect/><text x=\"0\"></text></g>";
        let labelled = label_root(svg, "all live bytes of pid 1 (a<b)");
        assert!(
            labelled.ends_with(
                "<title>all (4 bytes, 100%)</title><rect/><text x=\"0\">all live bytes of pid 1 \
                 (a&lt;b)</text></g>"
            ),
            "{labelled}"
        );
        assert_eq!(label_root("<svg/>", "x"), "<svg/>");
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
