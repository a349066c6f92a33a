//! One self-contained HTML page: plots, the top sites with their verdicts and stacks, and the
//! flamegraph.
//!
//! Everything is inline (CSS, SVG plots drawn here, inferno's SVG), with no script and no
//! network: the file opens anywhere, including on the air-gapped host it was made on.
//!
//! Each plot has both axes with ticks and units (seconds; B, KiB, MiB or GiB), a zero line,
//! and one colour per line, the same colour marking the site's row in the table.

use std::fmt::Write;

use base64::{Engine, prelude::BASE64_STANDARD};

use super::{Report, SiteReport, signed_bytes, thousands};
use crate::ledger::verdict::Verdict;

const PLOT_WIDTH: f64 = 760.0;
const PLOT_HEIGHT: f64 = 280.0;
/// Room around the plotting area: tick labels left and below, axis titles outside them.
const MARGIN_LEFT: f64 = 88.0;
const MARGIN_RIGHT: f64 = 16.0;
const MARGIN_TOP: f64 = 12.0;
const MARGIN_BOTTOM: f64 = 46.0;

/// Tableau 10: ten colours told apart on screen and by most colour-blind readers; past ten,
/// hues a golden angle apart.
const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];

/// The colour of the `index`th line: distinct for every index.
fn colour(index: usize) -> String {
    match PALETTE.get(index) {
        Some(colour) => (*colour).to_owned(),
        None => {
            let hue = (index - PALETTE.len()) as f64 * 137.507_764 % 360.0;
            let lightness = [42, 55, 35][(index - PALETTE.len()) / 3 % 3];
            format!("hsl({hue:.1},70%,{lightness}%)")
        }
    }
}

/// The page; `flamegraph` is an SVG document to embed (or empty).
pub fn html(report: &Report, top: usize, flamegraph: &str) -> String {
    let header = &report.header;
    let mut page = String::new();
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">\
         <title>leaktrace: pid {pid} ({command})</title><style>{STYLE}</style></head><body>\n\
         <h1>leaktrace: pid {pid} ({command})</h1>\n<p>{duration:.1} s; allocator {allocator}; \
         live {live} bytes in {blocks} blocks</p>\n",
        pid = header.pid,
        command = escape(&header.command),
        duration = header.duration_s,
        allocator = escape(&header.allocator),
        live = thousands(report.totals.live_bytes),
        blocks = thousands(report.totals.live_allocations),
    );

    let rss: Vec<(f64, f64)> = report
        .memory
        .iter()
        .map(|m| (m.t, m.vm_rss as f64))
        .collect();
    let heap: Vec<(f64, f64)> = report
        .memory
        .iter()
        .map(|m| (m.t, m.traced_heap as f64))
        .collect();
    page.push_str("<h2>Process memory and traced heap</h2>\n");
    page.push_str(&plot(
        "memory",
        &[
            Line {
                name: "RSS".into(),
                colour: colour(0),
                points: rss,
            },
            Line {
                name: "traced live heap".into(),
                colour: colour(1),
                points: heap,
            },
        ],
    ));

    let live: Vec<&SiteReport> = report
        .sites
        .iter()
        .filter(|s| s.stats.live_bytes > 0)
        .take(top)
        .collect();
    let lines: Vec<Line> = live
        .iter()
        .enumerate()
        .map(|(index, site)| Line {
            name: format!("#{} {} ({})", index + 1, site.site, site.verdict),
            colour: colour(index),
            points: site.series.iter().map(|&(t, b)| (t, b as f64)).collect(),
        })
        .collect();
    page.push_str("<h2>Live bytes of the top sites</h2>\n");
    page.push_str(&plot("live bytes", &lines));

    page.push_str(
        "<h2>Top sites</h2>\n<table class=\"sites\"><tr><th>#</th><th>verdict</th>\
         <th>live bytes</th><th>blocks</th><th>allocs</th><th>frees</th><th>temporary</th>\
         <th>floor growth</th><th>growth (R²)</th><th>site and stack</th></tr>\n",
    );
    for (rank, site) in live.iter().enumerate() {
        let stack: Vec<String> = site.frames.iter().map(|f| escape(&f.describe())).collect();
        let steadiness = site
            .growth_steadiness
            .map_or_else(String::new, |r2| format!(" ({r2:.2})"));
        let stats = &site.stats;
        let _ = writeln!(
            page,
            "<tr><td class=\"rank\" style=\"border-left-color:{colour}\">{rank}</td>\
             <td class=\"verdict {class}\">{verdict}</td><td>{live}</td><td>{blocks}</td>\
             <td>{allocs}</td><td>{frees}</td><td>{temporary}</td><td>{floor}</td>\
             <td>{growth}/s{steadiness}</td><td><b>{name}</b><pre>{stack}</pre></td></tr>",
            colour = colour(rank),
            rank = rank + 1,
            class = verdict_class(site.verdict),
            verdict = site.verdict,
            live = thousands(stats.live_bytes),
            blocks = thousands(stats.live_allocations),
            allocs = thousands(stats.allocs),
            frees = thousands(stats.frees),
            temporary = thousands(stats.temporary),
            floor = floor_growth(site),
            growth = signed_bytes(site.growth_bytes_per_s),
            name = escape(&site.site),
            stack = stack.join("\n"),
        );
    }
    page.push_str("</table>\n");
    if live.is_empty() {
        page.push_str("<p>No call site holds live bytes.</p>\n");
    }
    page.push_str(VERDICTS);
    // As an image: inferno's SVG carries a script that takes the page's first <svg> for its
    // own, which here would be a plot.
    let _ = write!(
        page,
        "<h2>Flamegraph of live bytes</h2>\n<img class=\"flame\" alt=\"flamegraph\" \
         src=\"data:image/svg+xml;base64,{}\">\n</body></html>\n",
        BASE64_STANDARD.encode(flamegraph)
    );
    page
}

/// What the verdicts mean, under the table.
const VERDICTS: &str = "<p class=\"legend\">Verdicts, from each interval's least live bytes \
(the floor) over the whole capture: <b>leaking</b> the floor rises, significantly, and \
still; <b>grew then flat</b> it rose, and rises no more; <b>fluctuating</b> bursts over a \
flat floor; <b>stable</b> flat; <b>shrinking</b> the floor falls; <b>too early</b> fewer \
than 8 intervals; <b>replacing</b> the floor rises no faster than blocks allocated before the \
attach are freed; <b>frees lost</b> the floor rises, but lost frees may have left as many blocks \
live as the site holds. Floor growth is a leaking floor's Theil–Sen slope; growth the \
least-squares slope of live bytes over the last intervals.</p>\n";

fn verdict_class(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Leaking => "leaking",
        Verdict::GrewThenFlat => "grew",
        Verdict::Fluctuating => "fluctuating",
        Verdict::Stable => "stable",
        Verdict::Shrinking => "shrinking",
        Verdict::TooEarly => "early",
        Verdict::Replacing => "replacing",
        Verdict::FreesLost => "frees-lost",
    }
}

/// The floor's growth where it is the leak's rate: for a `leaking` site. (A site that grew
/// then went flat has a positive slope too, from its growth, which would read as a rate.)
fn floor_growth(site: &SiteReport) -> String {
    match site.verdict {
        Verdict::Leaking => format!("{}/s", signed_bytes(site.floor_growth_bytes_per_s)),
        _ => "–".to_owned(),
    }
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}\
td{text-align:right}td:last-child{text-align:left}\
td.rank{border-left:8px solid #ccc}td.verdict{text-align:left;white-space:nowrap}\
.leaking{background:#fbd5d5;font-weight:bold}.grew{background:#fdf0cf}\
.fluctuating{background:#dbeaf7}.shrinking{background:#dcf2dc}\
pre{margin:0;font-size:12px;text-align:left;white-space:pre-wrap;overflow-wrap:anywhere}img.flame{width:100%;height:auto}\
.legend{font-size:12px;max-width:760px}svg.plot{background:#fff;border:1px solid #ddd}\
svg.plot text{font-size:11px;fill:#333}";

/// One line of a plot.
struct Line {
    name: String,
    colour: String,
    /// (seconds, bytes)
    points: Vec<(f64, f64)>,
}

/// 1, 2 or 5 times a power of ten, the least at or above `raw`.
fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let power = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|&step| step >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * power)
}

/// The binary unit ticks up to `max` bytes read best in: (bytes in it, its name).
fn byte_unit(max: f64) -> (f64, &'static str) {
    match max {
        m if m >= 1024.0 * 1024.0 * 1024.0 => (1024.0 * 1024.0 * 1024.0, "GiB"),
        m if m >= 1024.0 * 1024.0 => (1024.0 * 1024.0, "MiB"),
        m if m >= 1024.0 => (1024.0, "KiB"),
        _ => (1.0, "B"),
    }
}

/// A tick's label with as many decimals as its step needs.
fn tick_label(value: f64, step: f64, unit: &str) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    let value = if value.abs() < step * 1e-6 {
        0.0
    } else {
        value
    };
    format!("{value:.decimals$} {unit}")
}

/// Ticks from `low` to at least `high`, `step` apart, on multiples of the step.
fn ticks(low: f64, high: f64, step: f64) -> Vec<f64> {
    let first = (low / step).floor() as i64;
    let last = ((high / step) - 1e-9).ceil().max(first as f64 + 1.0) as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// An SVG line plot of bytes against seconds, each line in its colour, with both axes
/// (ticks, units and titles), a zero line and a legend.
fn plot(what: &str, lines: &[Line]) -> String {
    let points = || lines.iter().flat_map(|l| l.points.iter());
    let max_t = points().map(|p| p.0).fold(0.0, f64::max);
    let max_y = points().map(|p| p.1).fold(0.0, f64::max);
    let min_y = points().map(|p| p.1).fold(0.0, f64::min);

    // Time runs to the last sample; bytes to the first tick above the highest.
    let t_end = max_t.max(1e-3);
    let t_step = nice_step(t_end / 6.0);
    let mut t_ticks = ticks(0.0, t_end, t_step);
    t_ticks.retain(|&t| t <= t_end * (1.0 + 1e-9));
    let (unit, unit_name) = byte_unit(max_y.max(-min_y));
    let y_step = nice_step((max_y - min_y).max(1.0) / unit / 5.0);
    let y_ticks = ticks(min_y / unit, (max_y / unit).max(y_step), y_step);
    let (y_low, y_high) = (y_ticks[0] * unit, *y_ticks.last().unwrap() * unit);

    let (left, right) = (MARGIN_LEFT, PLOT_WIDTH - MARGIN_RIGHT);
    let (top, bottom) = (MARGIN_TOP, PLOT_HEIGHT - MARGIN_BOTTOM);
    let x = |t: f64| left + t / t_end * (right - left);
    let y = |bytes: f64| bottom - (bytes - y_low) / (y_high - y_low) * (bottom - top);

    let mut svg = format!(
        "<svg class=\"plot\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\" role=\"img\"><title>{what} over time</title>",
        w = PLOT_WIDTH,
        h = PLOT_HEIGHT,
        what = escape(what),
    );
    // Grid and y ticks.
    for &tick in &y_ticks {
        let at = y(tick * unit);
        let _ = write!(
            svg,
            "<line class=\"grid\" x1=\"{left}\" x2=\"{right}\" y1=\"{at:.1}\" y2=\"{at:.1}\" \
             stroke=\"#e6e6e6\"/><line x1=\"{l}\" x2=\"{left}\" y1=\"{at:.1}\" y2=\"{at:.1}\" \
             stroke=\"#333\"/><text class=\"ytick\" x=\"{lx}\" y=\"{ty:.1}\" \
             text-anchor=\"end\">{label}</text>",
            l = left - 5.0,
            lx = left - 8.0,
            ty = at + 4.0,
            label = tick_label(tick, y_step, unit_name),
        );
    }
    // x ticks.
    for &tick in &t_ticks {
        let at = x(tick);
        let _ = write!(
            svg,
            "<line x1=\"{at:.1}\" x2=\"{at:.1}\" y1=\"{bottom}\" y2=\"{b}\" stroke=\"#333\"/>\
             <text class=\"xtick\" x=\"{at:.1}\" y=\"{ty}\" text-anchor=\"middle\">{label}</text>",
            b = bottom + 5.0,
            ty = bottom + 18.0,
            label = tick_label(tick, t_step, "s"),
        );
    }
    // Axes, the zero line, axis titles.
    let zero = y(0.0);
    let _ = write!(
        svg,
        "<line class=\"axis\" x1=\"{left}\" x2=\"{left}\" y1=\"{top}\" y2=\"{bottom}\" \
         stroke=\"#333\"/><line class=\"axis\" x1=\"{left}\" x2=\"{right}\" y1=\"{bottom}\" \
         y2=\"{bottom}\" stroke=\"#333\"/><line class=\"zero\" x1=\"{left}\" x2=\"{right}\" \
         y1=\"{zero:.1}\" y2=\"{zero:.1}\" stroke=\"#000\" stroke-width=\"1.5\"/>\
         <text class=\"xtitle\" x=\"{mid_x:.1}\" y=\"{xt}\" text-anchor=\"middle\">\
         seconds since the capture started</text><text class=\"ytitle\" \
         transform=\"translate(14,{mid_y:.1}) rotate(-90)\" text-anchor=\"middle\">\
         {what} ({unit_name})</text>",
        mid_x = (left + right) / 2.0,
        xt = PLOT_HEIGHT - 8.0,
        mid_y = (top + bottom) / 2.0,
        what = escape(what),
    );
    for line in lines {
        let path: Vec<String> = line
            .points
            .iter()
            .map(|&(t, b)| format!("{:.1},{:.1}", x(t), y(b)))
            .collect();
        if let [only] = path.as_slice() {
            let (cx, cy) = only.split_once(',').unwrap();
            let _ = write!(
                svg,
                "<circle cx=\"{cx}\" cy=\"{cy}\" r=\"3\" fill=\"{}\"/>",
                line.colour
            );
        }
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
            line.colour,
            path.join(" ")
        );
    }
    svg.push_str("</svg>\n<div class=\"legend\">");
    for line in lines {
        let _ = write!(
            svg,
            "<span style=\"color:{}\">&#9632;</span> {} &nbsp; ",
            line.colour,
            escape(&line.name)
        );
    }
    svg.push_str("</div>\n");
    svg
}

pub(super) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped() {
        assert_eq!(
            escape("std::vector<int> & \"x\""),
            "std::vector&lt;int&gt; &amp; &quot;x&quot;"
        );
    }

    fn line(name: &str, index: usize, points: &[(f64, f64)]) -> Line {
        Line {
            name: name.into(),
            colour: colour(index),
            points: points.to_vec(),
        }
    }

    #[test]
    fn a_plot_has_one_line_per_series_and_a_legend() {
        let svg = plot(
            "live bytes",
            &[
                line("a", 0, &[(0.0, 1.0), (1.0, 2.0)]),
                line("b<c", 1, &[(0.0, 5.0)]),
            ],
        );
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 1, "a lone point shows");
        assert!(svg.contains("b&lt;c"));
    }

    #[test]
    fn a_plot_has_axes_with_ticks_units_and_a_zero_line() {
        let mib = 1024.0 * 1024.0;
        let svg = plot(
            "live bytes",
            &[line(
                "a",
                0,
                &[(0.0, 0.0), (12.0, 3.2 * mib), (20.0, 2.0 * mib)],
            )],
        );
        assert_eq!(svg.matches("class=\"zero\"").count(), 1);
        assert_eq!(svg.matches("class=\"axis\"").count(), 2);
        let labels = |class: &str| -> Vec<&str> {
            svg.split(&format!("class=\"{class}\""))
                .skip(1)
                .map(|s| &s[s.find('>').unwrap() + 1..s.find("</text>").unwrap()])
                .collect()
        };
        assert_eq!(
            labels("ytick"),
            ["0 MiB", "1 MiB", "2 MiB", "3 MiB", "4 MiB"]
        );
        assert_eq!(labels("xtick"), ["0 s", "5 s", "10 s", "15 s", "20 s"]);
        assert!(svg.contains("seconds since the capture started"));
        assert!(svg.contains("live bytes (MiB)"));
    }

    #[test]
    fn ticks_are_round_numbers_covering_the_data() {
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(1.3), 2.0);
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(7.0), 10.0);
        assert_eq!(nice_step(0.03), 0.05);
        assert_eq!(ticks(0.0, 9.0, 2.0), [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(ticks(-3.0, 4.0, 2.0), [-4.0, -2.0, 0.0, 2.0, 4.0]);
        assert_eq!(tick_label(0.25, 0.05, "KiB"), "0.25 KiB");
        assert_eq!(tick_label(1.5, 0.5, "s"), "1.5 s");
        // A plot of nothing still has its axes.
        assert!(plot("memory", &[]).contains("class=\"zero\""));
    }

    #[test]
    fn every_site_gets_its_own_colour() {
        let colours: Vec<String> = (0..100).map(colour).collect();
        let mut unique = colours.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), colours.len());
    }
}
