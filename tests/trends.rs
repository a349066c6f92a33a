//! Which site is leaking, over time: growth ranks a steady leak above a full cache.

mod support;

use std::process::Command;

use support::*;

#[test]
fn a_steady_leak_outranks_a_cache_that_filled_and_churn_does_not_grow() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture("trends");
    let target = start_ready(&binary, &[]);
    let json = output_path("trends", "json");
    let mut leaktrace = attach_with_json(target.pid(), &json, &["-i", "1s", "-d", "10s"]);
    assert_eq!(leaktrace.wait(WAIT), 0, "{:?}", leaktrace.stderr.rest());
    let stdout = leaktrace.stdout.rest();
    let report = read_json(&json);

    let growth = |function: &str| {
        let site = report["sites"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["frames"][0]["function"] == function)
            .unwrap_or_else(|| panic!("no {function} site"));
        (
            site["growth_bytes_per_s"].as_f64().unwrap(),
            site["growth_steadiness"].as_f64().unwrap(),
            site["live_bytes"].as_u64().unwrap(),
        )
    };
    let define = |name: &str| fixture_define("trends", name) as f64;
    let leak_rate = define("LEAK_BYTES") * 1000.0 / define("TICK_MS");
    let (leak, leak_steadiness, leak_live) = growth("steady_leak");
    let (cache, _, cache_live) = growth("fill_cache");
    assert!(
        (leak - leak_rate).abs() < leak_rate * 0.2,
        "the leak grows at its rate: {leak} vs {leak_rate}"
    );
    assert!(leak_steadiness > 0.9, "and steadily: {leak_steadiness}");
    assert!(
        cache_live > leak_live,
        "the cache holds more: {cache_live} vs {leak_live}"
    );
    assert!(cache.abs() < leak_rate * 0.05, "but does not grow: {cache}");
    assert_eq!(sites_of(&report, "churn").live_bytes, 0);
    assert!(growth("churn").0.abs() < 1.0);

    // The live view, sorted by growth, has the leak on top once there is a trend to fit: the
    // first row under the last block's column headings. Piped, it is plain text.
    let last_block = stdout
        .iter()
        .rposition(|l| l.starts_with('['))
        .expect("a live view block");
    let top = &stdout[last_block + 2];
    assert!(top.contains("steady_leak"), "{stdout:#?}");
    assert!(
        !stdout.iter().any(|l| l.contains('\x1b')),
        "no terminal codes when piped"
    );
}

/// RSS growing through mmap, which the heap probes do not see: the live view says the growth
/// is elsewhere, and the JSON carries the memory samples.
#[test]
fn rss_growth_the_traced_heap_does_not_explain_is_flagged() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture("rss");
    let target = start_ready(&binary, &["map"]);
    let json = output_path("rss_divergence", "json");
    let mut leaktrace = attach_with_json(target.pid(), &json, &["-i", "500ms", "-d", "5s"]);
    assert_eq!(leaktrace.wait(WAIT), 0, "{:?}", leaktrace.stderr.rest());
    let stdout = leaktrace.stdout.rest();
    assert!(
        stdout.iter().any(|l| l.starts_with("warning: RSS grows")),
        "{stdout:#?}"
    );
    let memory = read_json(&json)["memory"].as_array().unwrap().clone();
    let rss = |i: usize| memory[i]["vm_rss"].as_u64().unwrap();
    assert!(memory.len() >= 8, "{memory:#?}");
    assert!(rss(memory.len() - 1) > rss(0) + 1_000_000, "{memory:#?}");
}

#[test]
fn min_age_counts_only_old_blocks_and_count_ends_the_capture() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture("trends");
    let target = start_ready(&binary, &[]);
    let json = output_path("min_age", "json");
    let mut leaktrace = attach_with_json(
        target.pid(),
        &json,
        &["-i", "1s", "--count", "4", "-o", "2s"],
    );
    assert_eq!(leaktrace.wait(WAIT), 0, "{:?}", leaktrace.stderr.rest());
    let report = read_json(&json);
    assert_eq!(report["ending"], "duration_elapsed");
    let duration = report["duration_s"].as_f64().unwrap();
    assert!(
        (3.5..6.0).contains(&duration),
        "four 1 s intervals: {duration}"
    );
    assert!(
        report["live_filter"]
            .as_str()
            .unwrap()
            .contains("older than 2000 ms")
    );

    // Half the window's leaks are younger than 2 s: not counted as live, still as allocated.
    let leak = sites_of(&report, "steady_leak");
    assert!(leak.live_allocations > 0, "{leak:?}");
    assert!(leak.live_allocations * 3 < leak.allocs * 2, "{leak:?}");
    // Churn is all temporary: freed right after allocation.
    let churn = report["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["frames"][0]["function"] == "churn")
        .unwrap();
    assert_eq!(churn["temporary"], churn["frees"]);
    assert!(churn["frees"].as_u64().unwrap() > 0);
}

#[test]
fn a_leak_in_the_second_of_three_windows_is_attributed_to_it() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture("windows");
    let (report, _) = launch_json("windows", &["--windows", "3", "-i", "1s"], &binary, &[]);
    let windows = report["windows"].as_array().expect("three windows");
    assert_eq!(windows.len(), 3);
    let leaks = fixture_define("windows", "WINDOW_LEAKS");
    let in_window = |w: &serde_json::Value| {
        w["sites"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| {
                s["site"]
                    .as_str()
                    .unwrap()
                    .starts_with("second_window_leak")
            })
            .map(|s| s["live_allocations"].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(
        [
            in_window(&windows[0]),
            in_window(&windows[1]),
            in_window(&windows[2])
        ],
        [0, leaks, 0],
        "{windows:#?}"
    );
}

/// On a terminal the live view redraws in place, like top.
#[test]
fn on_a_terminal_the_live_view_redraws_in_place() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture("trends");
    let target = start_ready(&binary, &[]);
    // script(1) gives leaktrace a pseudo-terminal for its stdout.
    let command = format!("{LEAKTRACE} -p {} -i 500ms -d 2s", target.pid());
    let output = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .output()
        .expect("run script (util-linux)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let screen = String::from_utf8_lossy(&output.stdout);
    assert!(screen.matches("\x1b[H\x1b[2J").count() >= 2, "{screen}");
    assert!(screen.contains("steady_leak"), "{screen}");
}
