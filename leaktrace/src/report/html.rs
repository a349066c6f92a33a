//! One self-contained HTML page: plots, the top sites with their stacks, and the flamegraph.
//!
//! Everything is inline (CSS, SVG plots drawn here, inferno's SVG), with no script and no
//! network: the file opens anywhere, including on the air-gapped host it was made on.

use std::fmt::Write;

use base64::{Engine, prelude::BASE64_STANDARD};

use super::{Report, thousands};

const PLOT_WIDTH: f64 = 720.0;
const PLOT_HEIGHT: f64 = 220.0;
const COLOURS: [&str; 8] = [
    "#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

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
    page.push_str(&plot(&[("RSS", &rss), ("traced live heap", &heap)]));

    let live: Vec<_> = report
        .sites
        .iter()
        .filter(|s| s.stats.live_bytes > 0)
        .take(top)
        .collect();
    let series: Vec<(String, Vec<(f64, f64)>)> = live
        .iter()
        .map(|site| {
            let name = site.site.clone();
            let points = site.series.iter().map(|&(t, b)| (t, b as f64)).collect();
            (name, points)
        })
        .collect();
    let named: Vec<(&str, &[(f64, f64)])> = series
        .iter()
        .map(|(name, points)| (name.as_str(), points.as_slice()))
        .collect();
    page.push_str("<h2>Live bytes of the top sites</h2>\n");
    page.push_str(&plot(&named));

    page.push_str(
        "<h2>Top sites</h2>\n<table><tr><th>#</th><th>live bytes</th><th>blocks</th>\
         <th>growth</th><th>site and stack</th></tr>\n",
    );
    for (rank, site) in live.iter().enumerate() {
        let stack: Vec<String> = site.frames.iter().map(|f| escape(&f.describe())).collect();
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.0} B/s (R² {:.2})</td>\
             <td><b>{}</b><pre>{}</pre></td></tr>",
            rank + 1,
            thousands(site.stats.live_bytes),
            thousands(site.stats.live_allocations),
            site.growth_bytes_per_s,
            site.growth_steadiness,
            escape(&site.site),
            stack.join("\n")
        );
    }
    // As an image: inferno's SVG carries a script that takes the page's first <svg> for its
    // own, which here would be a plot.
    let _ = write!(
        page,
        "</table>\n<h2>Flamegraph of live bytes</h2>\n<img class=\"flame\" alt=\"flamegraph\" \
         src=\"data:image/svg+xml;base64,{}\">\n</body></html>\n",
        BASE64_STANDARD.encode(flamegraph)
    );
    page
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}\
pre{margin:0;font-size:12px}img.flame{width:100%;height:auto}\
.legend{font-size:12px}svg.plot{background:#fafafa;border:1px solid #ddd}";

/// An SVG line plot of several series against time, each in its colour, with a legend.
fn plot(series: &[(&str, &[(f64, f64)])]) -> String {
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (mut max_t, mut max_y) = (0.0f64, 0.0f64);
    for &(t, y) in points {
        max_t = max_t.max(t);
        max_y = max_y.max(y);
    }
    let (max_t, max_y) = (max_t.max(1e-9), max_y.max(1.0));
    let mut svg = format!(
        "<svg class=\"plot\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\">",
        w = PLOT_WIDTH,
        h = PLOT_HEIGHT + 20.0
    );
    let _ = write!(
        svg,
        "<text x=\"4\" y=\"12\" font-size=\"11\">{} bytes</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{:.1} s</text>",
        thousands(max_y as u64),
        PLOT_WIDTH - 4.0,
        PLOT_HEIGHT + 16.0,
        max_t
    );
    for (index, (_, points)) in series.iter().enumerate() {
        let path: Vec<String> = points
            .iter()
            .map(|&(t, y)| {
                let x = t / max_t * (PLOT_WIDTH - 10.0) + 5.0;
                let y = PLOT_HEIGHT - y / max_y * (PLOT_HEIGHT - 20.0);
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
            COLOURS[index % COLOURS.len()],
            path.join(" ")
        );
    }
    svg.push_str("</svg>\n<div class=\"legend\">");
    for (index, (name, _)) in series.iter().enumerate() {
        let _ = write!(
            svg,
            "<span style=\"color:{}\">&#9632; {}</span> ",
            COLOURS[index % COLOURS.len()],
            escape(name)
        );
    }
    svg.push_str("</div>\n");
    svg
}

fn escape(text: &str) -> String {
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

    #[test]
    fn a_plot_has_one_line_per_series_and_a_legend() {
        let a = [(0.0, 1.0), (1.0, 2.0)];
        let b = [(0.0, 5.0)];
        let svg = plot(&[("a", &a), ("b<c", &b)]);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("b&lt;c"));
    }
}
