//! What the operator reads on the terminal.

use std::fmt::Write;

use super::{Ending, Report, screen, thousands};
use crate::cost::CostReport;
use crate::kernel::DropCounts;
use crate::ledger::{SiteId, trends::Growth, verdict::Verdict};
use crate::scan::{KindAmounts, LeakScan};

/// Frames shown per site in the final text report; JSON and folded output have them all.
const FRAMES_SHOWN: usize = 12;

/// The final report, top `top` sites by live bytes, each headed by its label
/// (`#1 createClient ← zmalloc: 4,096 bytes in 1 blocks …`) above its stack; then each other
/// image or process.
pub fn render_final(report: &Report, top: usize) -> String {
    let mut out = render_one(report, top);
    for other in &report.processes {
        out.push('\n');
        out.push_str(&render_one(other, top));
    }
    out
}

fn render_one(report: &Report, top: usize) -> String {
    let mut out = String::new();
    let totals = &report.totals;
    let header = &report.header;
    let _ = writeln!(
        out,
        "leaktrace: pid {} ({}), {:.1} s, allocator {}",
        header.pid, header.command, header.duration_s, header.allocator
    );
    let _ = writeln!(out, "probed: {}", header.probed);
    if let Some(filter) = &header.live_filter {
        let _ = writeln!(out, "live counts only blocks {filter}");
    }
    if let Some(sampling) = header.sampling.describe() {
        let _ = writeln!(
            out,
            "sampled ({sampling}): every byte and block count below is an estimate"
        );
    }
    let held = format!(
        "{} bytes in {} blocks",
        thousands(totals.live_bytes),
        thousands(totals.live_allocations)
    );
    match (header.from_start, header.ending) {
        (true, Ending::TargetExited { .. }) => {
            let _ = writeln!(out, "in use at exit: {held}");
        }
        (from_start, Ending::Exec) => {
            let since = if from_start {
                ""
            } else {
                ", allocated since attach"
            };
            let _ = writeln!(
                out,
                "in use when it exec'd another program (its address space is gone): {held}{since}"
            );
        }
        (true, _) => {
            let _ = writeln!(out, "live: {held}");
        }
        (false, _) => {
            let _ = writeln!(out, "live: {held}, allocated since attach");
        }
    }
    let _ = writeln!(
        out,
        "seen: {} allocations ({} bytes), {} frees",
        thousands(totals.allocs),
        thousands(totals.alloc_bytes),
        thousands(totals.frees)
    );
    if header.ending == Ending::Failed {
        let _ = writeln!(
            out,
            "leaktrace failed while taking in events (a bug; the panic is above): this report \
             holds what it took in before"
        );
    }
    if let Ending::TargetExited { status } = header.ending {
        let status = status.map_or("unknown".to_owned(), |s| s.to_string());
        let _ = writeln!(out, "target exited with status {status}");
    }
    if let Some(missed) = report.children_missed {
        let followed: std::collections::HashSet<u32> = (report.processes.iter())
            .map(|p| p.header.pid)
            .filter(|&pid| pid != header.pid)
            .collect();
        let _ = writeln!(
            out,
            "children: {} followed, {} missed (ended before their probes were in, or could \
             not be probed)",
            thousands(followed.len() as u64),
            thousands(missed)
        );
    }
    if let Some(cost) = &report.cost {
        out.push_str(&cost_line(cost));
    }
    if let Ending::Overhead { percent, limit } = header.ending {
        let _ = writeln!(
            out,
            "ended: the tracing cost stayed above --max-overhead {}% for {} intervals in a row \
             (≈ {} of the target's CPU in the last)",
            limit,
            crate::cost::limit::INTERVALS,
            crate::cost::meter::percent(percent)
        );
    }
    if totals.unmatched_frees > 0 && !header.from_start {
        // New blocks that replace these look like growth: say how much was replaced.
        let released = if totals.unmatched_free_bytes > 0 {
            format!(
                ", {} bytes, {}/s",
                thousands(totals.unmatched_free_bytes),
                human_bytes(totals.unmatched_free_bytes as f64 / header.duration_s.max(1e-3))
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "replacing blocks allocated before attach: {} blocks{released}",
            thousands(totals.unmatched_frees)
        );
    } else if totals.unmatched_frees > 0 {
        // Traced from the start, a block not seen allocated is the allocator's own, unless
        // its allocation was lost.
        let whose = if report.drops.allocations_maybe_lost() > 0 {
            "inside the allocator, or allocations lost"
        } else {
            "inside the allocator"
        };
        let _ = writeln!(
            out,
            "frees of blocks not seen allocated ({whose}): {}",
            thousands(totals.unmatched_frees)
        );
    }
    out.push_str(&drops_line(&report.drops, totals.missed_frees));
    if let Some(scan) = &report.scan {
        let _ = writeln!(
            out,
            "leak kinds: {}\n  (scanned at {:.1} s: the target was held {:.1} ms, {} of its \
             memory copied)",
            kinds_text(&scan.totals, true),
            scan.at_s,
            scan.pause_ms,
            human_bytes(scan.scanned_bytes as f64)
        );
    }
    if let Some(left_out) = &report.sites_left_out {
        let _ = writeln!(
            out,
            "{} more sites left out of the report files (--max-sites): {} bytes in {} blocks",
            thousands(left_out.sites as u64),
            thousands(left_out.live_bytes),
            thousands(left_out.live_allocations)
        );
    }
    let live: Vec<_> = report
        .sites
        .iter()
        .filter(|s| s.stats.live_bytes > 0)
        .collect();
    if live.is_empty() {
        out.push_str("no call site holds live bytes\n");
    }
    for (rank, site) in live.iter().take(top).enumerate() {
        let stats = &site.stats;
        // The floor's slope is the leak's rate; a site that grew then went flat has one
        // too, from its growth, which would read as a rate.
        let floor = match site.verdict {
            Verdict::Leaking => {
                format!(" (floor {}/s)", signed_bytes(site.floor_growth_bytes_per_s))
            }
            _ => String::new(),
        };
        let steadiness = site
            .growth_steadiness
            .map_or_else(String::new, |r2| format!(" (R² {r2:.2})"));
        let _ = writeln!(
            out,
            "\n#{} {}: {} bytes in {} blocks (allocs {}, frees {}), {}{floor}, growth {}/s{steadiness}",
            rank + 1,
            site.site,
            thousands(stats.live_bytes),
            thousands(stats.live_allocations),
            thousands(stats.allocs),
            thousands(stats.frees),
            site.verdict,
            signed_bytes(site.growth_bytes_per_s),
        );
        if site.frames.is_empty() {
            out.push_str("    [stack not recorded]\n");
        }
        for frame in site.frames.iter().take(FRAMES_SHOWN) {
            let inlined = if frame.inlined { " (inlined)" } else { "" };
            let _ = writeln!(out, "    {}{inlined}", frame.describe());
        }
        if site.frames.len() > FRAMES_SHOWN {
            let _ = writeln!(
                out,
                "    … {} more frames",
                site.frames.len() - FRAMES_SHOWN
            );
        }
        if let Some(cut) = site.stack_cut {
            let _ = writeln!(out, "    … {cut}");
        }
        if let Some(kinds) = site.scan.as_ref().map(|k| kinds_text(k, false))
            && !kinds.is_empty()
        {
            let _ = writeln!(out, "    leak kinds: {kinds}");
        }
        if !site.blocks.is_empty() {
            let _ = writeln!(out, "    oldest live blocks:");
        }
        for block in &site.blocks {
            let _ = writeln!(
                out,
                "      {:#x}  {} bytes, {:.1} s old",
                block.address,
                thousands(block.size),
                f64::from(block.age_ms) / 1e3
            );
        }
    }
    if live.len() > top {
        let _ = writeln!(out, "\n… {} more sites hold live bytes", live.len() - top);
    }
    for window in &report.windows {
        let _ = writeln!(
            out,
            "\nwindow {:.1}–{:.1} s: {} bytes in {} blocks allocated then are still live",
            window.start_s,
            window.end_s,
            thousands(window.live_bytes),
            thousands(window.live_allocations)
        );
        for site in window.sites.iter().take(top) {
            let _ = writeln!(
                out,
                "    {:>14} B  {:>9} blocks  {}",
                thousands(site.live_bytes),
                thousands(site.live_allocations),
                site.site
            );
        }
    }
    out
}

/// "tracing cost: ≈ 12% of the target's CPU (1,234 ms of 10,280 ms; 345,678 hits)".
fn cost_line(cost: &CostReport) -> String {
    let hits = thousands(cost.hits);
    match (cost.cost_ms, cost.percent_of_target_cpu) {
        (Some(cost_ms), Some(percent)) => format!(
            "tracing cost: ≈ {} of the target's CPU ({} of {}; {hits} hits)\n",
            crate::cost::meter::percent(percent),
            milliseconds(cost_ms),
            milliseconds(cost.target_cpu_ms)
        ),
        (Some(cost_ms), None) => format!(
            "tracing cost: ≈ {} of CPU ({hits} hits)\n",
            milliseconds(cost_ms)
        ),
        (None, _) => format!("tracing cost: not measured ({hits} hits)\n"),
    }
}

/// "1,234 ms", "0.4 ms".
fn milliseconds(ms: f64) -> String {
    if ms >= 10.0 {
        format!("{} ms", thousands(ms.round() as u64))
    } else {
        format!("{ms:.1} ms")
    }
}

/// Drops are printed even when zero, so a reader knows they were checked. When something was
/// lost the line says which way the live figures may be off, and by how many blocks at most:
/// a lost free leaves its block live, a lost allocation leaves its block out.
fn drops_line(drops: &DropCounts, missed_frees: u64) -> String {
    let inline = if drops.stack_map_full > 0 {
        format!(
            " ({} stacks did not fit the stack map and came inline: none lost)",
            thousands(drops.stack_map_full)
        )
    } else {
        String::new()
    };
    if drops.lost() == 0 && missed_frees == 0 {
        return format!("drops: none{inline}\n");
    }
    format!(
        "drops: ring buffer full {}, allocations skipped {}, stack unreadable {}, pending map \
         full {}, sampled map full {}, frees missed {}: {}{inline}\n",
        thousands(drops.ring_buffer_full),
        thousands(drops.allocations_skipped),
        thousands(drops.stack_unreadable),
        thousands(drops.pending_map_full),
        thousands(drops.sampled_map_full),
        thousands(missed_frees),
        live_bias(drops, missed_frees)
    )
}

/// Which way the drops may have moved the live figures. Frees found missing were taken as
/// freed; frees lost without a count (none is known to be) would be found only that way.
fn live_bias(drops: &DropCounts, missed_frees: u64) -> String {
    let too_high = match drops.frees_maybe_lost() {
        0 if missed_frees == 0 => None,
        0 => Some("too high (frees went unseen)".to_owned()),
        frees => Some(format!("too high (up to {} frees lost)", thousands(frees))),
    };
    let too_low = match drops.allocations_maybe_lost() {
        0 => None,
        allocations => Some(format!(
            "too low (up to {} allocations lost)",
            thousands(allocations)
        )),
    };
    match (too_high, too_low) {
        (Some(high), Some(low)) => format!("live figures may be {high} and {low}"),
        (Some(high), None) => format!("live figures may be {high}"),
        (None, Some(low)) => format!("live figures may be {low}: a lower bound"),
        (None, None) => "the totals are whole, but the allocations whose stack was unreadable \
                         count under no site"
            .to_owned(),
    }
}

/// One row of the live view.
pub struct IntervalRow {
    pub id: SiteId,
    pub live_bytes: u64,
    pub live_allocations: u64,
    /// Over the interval that just ended.
    pub change: i64,
    /// Over the last intervals, the one that just ended included.
    pub growth: Growth,
    /// Over the live view's window ([`crate::ledger::trends::LIVE_WINDOW`] intervals).
    pub verdict: Verdict,
    pub site: String,
}

/// One scan's line as the capture prints it: when, what, and what it cost the target.
pub fn describe_scan(scan: &LeakScan) -> String {
    format!(
        "[{:7.1}s] scan: {}; the target was held {:.1} ms, {} copied",
        scan.at_s,
        kinds_text(&scan.totals, true),
        scan.pause_ms,
        human_bytes(scan.scanned_bytes as f64)
    )
}

/// "definitely lost 1,024 bytes in 2 blocks, indirectly lost …": valgrind's four kinds, in
/// its order; those of no block only with `all`.
fn kinds_text(kinds: &KindAmounts, all: bool) -> String {
    kinds
        .named()
        .iter()
        .filter(|(_, amount)| all || amount.blocks > 0)
        .map(|(name, amount)| {
            format!(
                "{name} {} bytes in {} blocks",
                thousands(amount.bytes),
                thousands(amount.blocks)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The live view each interval: totals, then the top sites with their change over the
/// interval, growth, steadiness (`-` from fewer than 3 samples) and verdict.
/// `memory` and `cost` are "; RSS …" and "; tracing cost …", or empty. With a terminal's
/// `width`, the totals wrap within it, and a terminal narrower than [`WIDE_ENOUGH`] gets the
/// rows in narrow columns, the site label cut to what is left.
pub fn render_interval(
    elapsed_s: f64,
    live_bytes: u64,
    live_allocations: u64,
    (memory, cost): (&str, &str),
    drops: &DropCounts,
    rows: &[IntervalRow],
    width: Option<usize>,
) -> String {
    let totals = format!(
        "[{elapsed_s:7.1}s] live {} in {} blocks{memory}{cost}; lost events {}",
        human_bytes(live_bytes as f64),
        thousands(live_allocations),
        thousands(drops.lost())
    );
    let mut out = match width {
        Some(width) => screen::wrap_parts(totals.split("; "), width),
        None => totals,
    };
    out.push('\n');
    match width {
        Some(width) if width < WIDE_ENOUGH => narrow_rows(&mut out, rows, width),
        _ => wide_rows(&mut out, rows),
    }
    out
}

/// A terminal at least this wide gets the rows' wide columns (76 characters) and most of a
/// site label.
pub const WIDE_ENOUGH: usize = 120;

/// Each row's steadiness as shown: `-` from fewer than 3 samples.
fn shown_steadiness(row: &IntervalRow) -> String {
    row.growth
        .shown_steadiness()
        .map_or_else(|| "-".to_owned(), |r2| format!("{r2:.2}"))
}

fn wide_rows(out: &mut String, rows: &[IntervalRow]) {
    let _ = writeln!(
        out,
        "  {:>11}  {:>11}  {:>9}  {:>12}  {:>5}  {:<14}  site",
        "change", "live", "blocks", "growth", "R²", "verdict"
    );
    for row in rows {
        let change = signed_bytes(row.change as f64);
        let growth = format!("{}/s", signed_bytes(row.growth.bytes_per_s));
        let _ = writeln!(
            out,
            "  {change:>11}  {:>11}  {:>9}  {growth:>12}  {:>5}  {:<14}  {}",
            human_bytes(row.live_bytes as f64),
            thousands(row.live_allocations),
            shown_steadiness(row),
            row.verdict,
            row.site
        );
    }
}

/// Columns of 60 characters: 20 are left for the site at 80.
fn narrow_rows(out: &mut String, rows: &[IntervalRow], width: usize) {
    let _ = writeln!(
        out,
        "{:>9} {:>9} {:>7} {:>11} {:>4} {:<14} site",
        "change", "live", "blocks", "growth", "R²", "verdict"
    );
    for row in rows {
        let columns = format!(
            "{:>9} {:>9} {:>7} {:>11} {:>4} {:<14} ",
            short_signed_bytes(row.change as f64),
            short_bytes(row.live_bytes as f64),
            short_count(row.live_allocations),
            format!("{}/s", short_signed_bytes(row.growth.bytes_per_s)),
            shown_steadiness(row),
            row.verdict.as_str(),
        );
        let room = width.saturating_sub(columns.chars().count());
        let _ = writeln!(out, "{columns}{}", screen::fit(&row.site, room));
    }
}

/// Bytes in at most 3 significant digits, for narrow columns: "68.6 KiB", "132 KiB", "9 B".
fn short_bytes(bytes: f64) -> String {
    let (value, unit) = match bytes {
        b if b >= 1024.0 * 1024.0 * 1024.0 => (b / (1024.0 * 1024.0 * 1024.0), "GiB"),
        b if b >= 1024.0 * 1024.0 => (b / (1024.0 * 1024.0), "MiB"),
        b if b >= 1024.0 => (b / 1024.0, "KiB"),
        b => return format!("{b:.0} B"),
    };
    if value >= 100.0 {
        format!("{value:.0} {unit}")
    } else {
        format!("{value:.1} {unit}")
    }
}

fn short_signed_bytes(bytes: f64) -> String {
    let sign = if bytes < 0.0 { '-' } else { '+' };
    format!("{sign}{}", short_bytes(bytes.abs()))
}

/// A count in at most 7 characters: "999,999", then "1.2M", "3.4G".
fn short_count(count: u64) -> String {
    match count {
        c if c < 1_000_000 => thousands(c),
        c if c < 1_000_000_000 => format!("{:.1}M", c as f64 / 1e6),
        c => format!("{:.1}G", c as f64 / 1e9),
    }
}

/// A change or rate in bytes for people: "+1.2 KiB", "-300 B".
pub fn signed_bytes(bytes: f64) -> String {
    let sign = if bytes < 0.0 { '-' } else { '+' };
    format!("{sign}{}", human_bytes(bytes.abs()))
}

/// Bytes for people: "300 B", "1.2 KiB", "3.0 MiB".
pub fn human_bytes(bytes: f64) -> String {
    let (value, unit) = match bytes {
        b if b >= 1024.0 * 1024.0 * 1024.0 => (b / (1024.0 * 1024.0 * 1024.0), "GiB"),
        b if b >= 1024.0 * 1024.0 => (b / (1024.0 * 1024.0), "MiB"),
        b if b >= 1024.0 => (b / 1024.0, "KiB"),
        b => return format!("{b:.0} B"),
    };
    format!("{value:.1} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cost_line_says_the_share_and_its_inputs() {
        let cost = CostReport {
            calibration: None,
            covers: "traps",
            hits: 345_678,
            cost_ms: Some(1234.4),
            target_cpu_ms: 10_280.0,
            percent_of_target_cpu: Some(12.0),
            points: Vec::new(),
        };
        assert_eq!(
            cost_line(&cost),
            "tracing cost: ≈ 12% of the target's CPU (1,234 ms of 10,280 ms; 345,678 hits)\n"
        );
        let idle = CostReport {
            cost_ms: Some(0.42),
            target_cpu_ms: 0.0,
            percent_of_target_cpu: None,
            ..cost.clone()
        };
        assert_eq!(
            cost_line(&idle),
            "tracing cost: ≈ 0.4 ms of CPU (345,678 hits)\n"
        );
        let unmeasured = CostReport {
            cost_ms: None,
            ..cost
        };
        assert_eq!(
            cost_line(&unmeasured),
            "tracing cost: not measured (345,678 hits)\n"
        );
    }

    #[test]
    fn the_drops_line_says_which_way_the_live_figures_may_be_off() {
        let none = DropCounts::default();
        assert_eq!(drops_line(&none, 0), "drops: none\n");
        let skipped = DropCounts {
            allocations_skipped: 5,
            ..none
        };
        assert!(drops_line(&skipped, 0).ends_with(
            ": live figures may be too low (up to 5 allocations lost): a lower bound\n"
        ));
        let full = DropCounts {
            ring_buffer_full: 1_000,
            ..skipped
        };
        assert!(drops_line(&full, 20).ends_with(
            ": live figures may be too high (up to 1,000 frees lost) and too low (up to 1,005 \
             allocations lost)\n"
        ));
        assert!(
            drops_line(&none, 3).ends_with(": live figures may be too high (frees went unseen)\n")
        );
        let unreadable = DropCounts {
            stack_unreadable: 2,
            ..none
        };
        assert!(drops_line(&unreadable, 0).ends_with("count under no site\n"));
    }

    #[test]
    fn byte_rates_are_human() {
        assert_eq!(signed_bytes(0.0), "+0 B");
        assert_eq!(signed_bytes(-300.0), "-300 B");
        assert_eq!(signed_bytes(1536.0), "+1.5 KiB");
        assert_eq!(signed_bytes(3.0 * 1024.0 * 1024.0), "+3.0 MiB");
    }
}
