//! The board in Prometheus's text exposition format (version 0.0.4).
//!
//! Names follow Prometheus's conventions: the `leaktrace_` prefix, the unit in the name,
//! `_total` on counters. A verdict is a state set: a series per verdict, 1 for the site's.

use std::fmt::Write;

use super::{Board, ProcessFigures, SiteFigures};
use crate::{ledger::verdict::Verdict, scan::KindAmounts};

/// Every verdict, as its label value.
const VERDICTS: [(Verdict, &str); 8] = [
    (Verdict::Leaking, "leaking"),
    (Verdict::GrewThenFlat, "grew_then_flat"),
    (Verdict::Fluctuating, "fluctuating"),
    (Verdict::Stable, "stable"),
    (Verdict::Shrinking, "shrinking"),
    (Verdict::TooEarly, "too_early"),
    (Verdict::Replacing, "replacing"),
    (Verdict::FreesLost, "frees_lost"),
];

/// One metric: its samples under their label sets.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(String, f64)>,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Family {
        Family {
            name,
            kind,
            help,
            samples: Vec::new(),
        }
    }

    fn add(&mut self, labels: &[(&str, &str)], value: f64) {
        let labels = labels
            .iter()
            .map(|(name, value)| format!("{name}=\"{}\"", escape(value)))
            .collect::<Vec<_>>()
            .join(",");
        self.samples.push((labels, value));
    }

    fn write(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for (labels, value) in &self.samples {
            if labels.is_empty() {
                let _ = writeln!(out, "{} {value}", self.name);
            } else {
                let _ = writeln!(out, "{}{{{labels}}} {value}", self.name);
            }
        }
    }
}

/// A label value with backslash, double quote and line feed escaped, as the format asks.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The scan's kinds as label values, with their bytes.
fn kinds(amounts: &KindAmounts) -> [(&'static str, u64); 4] {
    [
        ("definite", amounts.definitely_lost.bytes),
        ("indirect", amounts.indirectly_lost.bytes),
        ("possible", amounts.possibly_lost.bytes),
        ("reachable", amounts.still_reachable.bytes),
    ]
}

/// The whole exposition: every process on the board, then leaktrace's own health.
/// `own_rss`: leaktrace's resident memory, when it could be read.
pub fn render(board: &Board, own_rss: Option<u64>) -> String {
    let processes = board.processes();
    let mut out = String::new();
    for family in process_families(&processes)
        .into_iter()
        .chain(site_families(&processes))
        .chain(health_families(board, processes.len(), own_rss))
    {
        family.write(&mut out);
    }
    out
}

fn process_families(processes: &[ProcessFigures]) -> Vec<Family> {
    let mut live = Family::new(
        "leaktrace_process_live_bytes",
        "gauge",
        "Bytes in heap blocks the process allocated while traced and still holds.",
    );
    let mut blocks = Family::new(
        "leaktrace_process_live_blocks",
        "gauge",
        "Heap blocks the process allocated while traced and still holds.",
    );
    let mut growth = Family::new(
        "leaktrace_process_growth_bytes_per_second",
        "gauge",
        "Growth of the traced heap's live bytes over the last intervals.",
    );
    let mut rss = Family::new(
        "leaktrace_process_rss_bytes",
        "gauge",
        "The process's resident set size.",
    );
    let mut events = Family::new(
        "leaktrace_process_events_total",
        "counter",
        "Allocations and frees taken in since the attach.",
    );
    let mut dropped = Family::new(
        "leaktrace_process_dropped_events_total",
        "counter",
        "Events lost since the attach, by kind: live figures are bounds, not exact, once any is.",
    );
    let mut overhead = Family::new(
        "leaktrace_process_overhead_ratio",
        "gauge",
        "Estimated tracing cost as a share of the process's CPU time, last interval.",
    );
    let mut scan = Family::new(
        "leaktrace_process_scan_bytes",
        "gauge",
        "Live bytes by leak kind at the last reachability scan.",
    );
    let mut sites = Family::new(
        "leaktrace_process_sites",
        "gauge",
        "Call sites that hold live bytes.",
    );
    let mut exported = Family::new(
        "leaktrace_process_sites_exported",
        "gauge",
        "Call sites exported as leaktrace_site_* series (--metrics-sites).",
    );
    for process in processes {
        let pid = process.pid.to_string();
        let labels = [("pid", pid.as_str()), ("comm", process.comm.as_str())];
        live.add(&labels, process.live_bytes as f64);
        blocks.add(&labels, process.live_blocks as f64);
        growth.add(&labels, process.growth_bytes_per_s);
        if let Some(bytes) = process.rss_bytes {
            rss.add(&labels, bytes as f64);
        }
        events.add(&labels, process.events as f64);
        for (kind, count) in process.drops.lost_by_kind() {
            dropped.add(&[labels[0], labels[1], ("kind", kind)], count as f64);
        }
        if let Some(share) = process.overhead {
            overhead.add(&labels, share);
        }
        for (kind, bytes) in process.scan.as_ref().map(kinds).into_iter().flatten() {
            scan.add(&[labels[0], labels[1], ("kind", kind)], bytes as f64);
        }
        sites.add(&labels, process.sites as f64);
        exported.add(&labels, process.top.len() as f64);
    }
    vec![
        live, blocks, growth, rss, events, dropped, overhead, scan, sites, exported,
    ]
}

fn site_families(processes: &[ProcessFigures]) -> Vec<Family> {
    let mut live = Family::new(
        "leaktrace_site_live_bytes",
        "gauge",
        "Bytes in live heap blocks allocated at the call site.",
    );
    let mut blocks = Family::new(
        "leaktrace_site_live_blocks",
        "gauge",
        "Live heap blocks allocated at the call site.",
    );
    let mut growth = Family::new(
        "leaktrace_site_growth_bytes_per_second",
        "gauge",
        "Growth of the call site's live bytes over the last intervals.",
    );
    let mut verdict = Family::new(
        "leaktrace_site_verdict",
        "gauge",
        "The call site's verdict over the live view's window: 1 for its verdict, 0 for others.",
    );
    let mut scan = Family::new(
        "leaktrace_site_scan_bytes",
        "gauge",
        "The call site's live bytes by leak kind at the last reachability scan.",
    );
    for process in processes {
        let pid = process.pid.to_string();
        for site in &process.top {
            let SiteFigures {
                site: label, id, ..
            } = site;
            let labels = [
                ("pid", pid.as_str()),
                ("comm", process.comm.as_str()),
                ("site", label.as_str()),
                ("site_id", id.as_str()),
            ];
            let with = |name, value| {
                let mut more = labels.to_vec();
                more.push((name, value));
                more
            };
            live.add(&labels, site.live_bytes as f64);
            blocks.add(&labels, site.live_blocks as f64);
            growth.add(&labels, site.growth_bytes_per_s);
            for (each, name) in VERDICTS {
                let value = if each == site.verdict { 1.0 } else { 0.0 };
                verdict.add(&with("verdict", name), value);
            }
            for (kind, bytes) in site.scan.as_ref().map(kinds).into_iter().flatten() {
                scan.add(&with("kind", kind), bytes as f64);
            }
        }
    }
    vec![live, blocks, growth, verdict, scan]
}

fn health_families(board: &Board, traced: usize, own_rss: Option<u64>) -> Vec<Family> {
    let counter = |name, help, value: u64| {
        let mut family = Family::new(name, "counter", help);
        family.add(&[], value as f64);
        family
    };
    let mut targets = Family::new("leaktrace_targets", "gauge", "Processes traced now.");
    targets.add(&[], traced as f64);
    let mut rss = Family::new(
        "leaktrace_resident_memory_bytes",
        "gauge",
        "leaktrace's own resident set size.",
    );
    if let Some(bytes) = own_rss {
        rss.add(&[], bytes as f64);
    }
    let mut build = Family::new(
        "leaktrace_build_info",
        "gauge",
        "Always 1: leaktrace's version as a label.",
    );
    build.add(&[("version", env!("CARGO_PKG_VERSION"))], 1.0);
    vec![
        targets,
        counter(
            "leaktrace_targets_attached_total",
            "Processes attached to since leaktrace started.",
            Board::count(&board.attached),
        ),
        counter(
            "leaktrace_targets_ended_total",
            "Captures ended, each with its final report written.",
            Board::count(&board.ended),
        ),
        counter(
            "leaktrace_attach_failures_total",
            "Matching processes leaktrace could not attach to.",
            Board::count(&board.attach_failures),
        ),
        rss,
        build,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board_with_a_leak() -> Board {
        let board = Board::default();
        board.publish(ProcessFigures {
            pid: 42,
            comm: "srv \"x\"".into(),
            live_bytes: 1000,
            live_blocks: 10,
            events: 25,
            sites: 3,
            top: vec![SiteFigures {
                site: "leak at a.c:1".into(),
                id: "0123456789ab".into(),
                live_bytes: 900,
                live_blocks: 9,
                growth_bytes_per_s: 12.5,
                verdict: Verdict::Leaking,
                scan: None,
            }],
            ..ProcessFigures::default()
        });
        board
    }

    #[test]
    fn each_family_has_help_and_type_before_its_samples() {
        let text = render(&board_with_a_leak(), Some(4096));
        let mut declared = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().unwrap().to_owned());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(declared.contains(name), "{name} sampled before its TYPE");
            }
        }
        assert!(text.contains("leaktrace_resident_memory_bytes 4096\n"));
    }

    #[test]
    fn a_verdict_is_a_state_set_and_labels_are_escaped() {
        let text = render(&board_with_a_leak(), None);
        let verdicts: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("leaktrace_site_verdict{"))
            .collect();
        assert_eq!(verdicts.len(), VERDICTS.len());
        let set: Vec<&&str> = verdicts.iter().filter(|l| l.ends_with(" 1")).collect();
        assert_eq!(set.len(), 1);
        assert!(set[0].contains("verdict=\"leaking\""), "{set:?}");
        assert!(
            text.contains(
                "leaktrace_site_growth_bytes_per_second{pid=\"42\",comm=\"srv \\\"x\\\"\",\
                 site=\"leak at a.c:1\",site_id=\"0123456789ab\"} 12.5"
            ),
            "{text}"
        );
    }
}
