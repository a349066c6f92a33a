//! Folded stacks (`root;…;leaf bytes`), the input of flamegraph.pl and inferno.

use std::collections::BTreeMap;

use super::Report;

/// One line per distinct stack with live bytes, root first. Sites whose frames read the same
/// (different return addresses on one line) are merged, as the format expects.
pub fn folded_stacks(report: &Report) -> String {
    let mut stacks: BTreeMap<String, u64> = BTreeMap::new();
    for site in report.sites.iter().filter(|s| s.stats.live_bytes > 0) {
        let names: Vec<String> = site
            .frames
            .iter()
            .rev()
            // Consumers split a line at its last space, so only ';' needs escaping.
            .map(|frame| frame.name().replace(';', "_"))
            .collect();
        let stack = if names.is_empty() {
            "[unknown stack]".to_owned()
        } else {
            names.join(";")
        };
        *stacks.entry(stack).or_default() += site.stats.live_bytes;
    }
    stacks
        .into_iter()
        .map(|(stack, bytes)| format!("{stack} {bytes}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        kernel::DropCounts,
        ledger::{SiteStats, Totals},
        report::{Ending, ReportHeader, SiteReport},
        stacks::Frame,
    };

    fn frame(function: &str) -> Frame {
        Frame::of_function(function, Some("/bin/x"))
    }

    fn site(live_bytes: u64, innermost_first: &[&str]) -> SiteReport {
        SiteReport {
            stats: SiteStats {
                live_bytes,
                ..SiteStats::default()
            },
            verdict: crate::ledger::verdict::Verdict::TooEarly,
            floor_growth_bytes_per_s: 0.0,
            growth_bytes_per_s: 0.0,
            growth_steadiness: None,
            series: Vec::new(),
            label: innermost_first
                .first()
                .map_or_else(String::new, |f| f.to_string()),
            wrappers: Vec::new(),
            site: innermost_first
                .first()
                .map_or_else(String::new, |f| f.to_string()),
            frames: innermost_first.iter().map(|f| frame(f)).collect(),
            stack_cut: None,
            blocks: Vec::new(),
            scan: None,
        }
    }

    fn report(sites: Vec<SiteReport>) -> Report {
        Report {
            header: ReportHeader {
                pid: 1,
                command: "x".into(),
                allocator: "libc".into(),
                probed: "malloc in libc".into(),
                duration_s: 1.0,
                window_start_ns: 0,
                window_end_ns: 1,
                from_start: false,
                ending: Ending::Interrupted,
                live_filter: None,
                sampling: Default::default(),
            },
            totals: Totals::default(),
            drops: DropCounts::default(),
            sites,
            sites_left_out: None,
            processes: Vec::new(),
            children_missed: None,
            windows: Vec::new(),
            memory: Vec::new(),
            cost: None,
            scan: None,
        }
    }

    #[test]
    fn root_first_joined_by_semicolons_then_bytes() {
        let text = folded_stacks(&report(vec![site(300, &["leak_here", "work", "main"])]));
        assert_eq!(text, "main;work;leak_here 300\n");
    }

    #[test]
    fn identical_stacks_merge_and_freed_sites_are_left_out() {
        let text = folded_stacks(&report(vec![
            site(100, &["leak", "main"]),
            site(50, &["leak", "main"]),
            site(0, &["balanced", "main"]),
        ]));
        assert_eq!(text, "main;leak 150\n");
    }

    #[test]
    fn a_semicolon_inside_a_name_cannot_split_a_frame() {
        let text = folded_stacks(&report(vec![site(
            1,
            &["operator new(unsigned long)", "a;b"],
        )]));
        assert_eq!(text, "a_b;operator new(unsigned long) 1\n");
    }
}
