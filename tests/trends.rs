//! Which site is leaking, over time: growth ranks a steady leak above a full cache.

mod support;

use std::process::Command;

use support::*;

/// The trends fixture, started and waiting; leaktrace attached to it with `args`; then the
/// fixture let go. Everything it allocates is seen: its cache, which it fills in its first
/// 2 s, whole, however long the attach took.
fn trace_trends(test: &str, fixture_args: &[&str], args: &[&str]) -> (Running, Running) {
    let binary = build_fixture("trends");
    let mut wait_args = vec!["wait"];
    wait_args.extend(fixture_args);
    let target = start_ready(&binary, &wait_args);
    let json = output_path(test, "json");
    let leaktrace = attach_with_json(target.pid(), &json, args);
    target.signal(libc::SIGUSR1);
    (target, leaktrace)
}

#[test]
fn a_steady_leak_outranks_a_cache_that_filled_and_churn_does_not_grow() {
    let Some(_bpf) = require_bpf() else { return };
    let intervals = 10;
    let (_target, mut leaktrace) = trace_trends(
        "trends",
        &[],
        &["-i", "1s", "--count", &intervals.to_string()],
    );
    assert_eq!(leaktrace.wait(WAIT), 0, "{:?}", leaktrace.stderr.rest());
    let stdout = leaktrace.stdout.rest();
    let report = read_json(&output_path("trends", "json"));

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
    // The fixture keeps its rate by its own clock, catching up a late tick.
    let leak_rate = define("LEAK_BYTES") * 1000.0 / define("TICK_MS");
    let (leak, leak_steadiness, leak_live) = growth("steady_leak");
    let (cache, _, cache_live) = growth("fill_cache");
    assert!(
        (leak - leak_rate).abs() < leak_rate * 0.2,
        "the leak grows at its rate: {leak} vs {leak_rate}"
    );
    assert!(leak_steadiness > 0.9, "and steadily: {leak_steadiness}");
    let cache_bytes = (define("CACHE_BYTES") * define("CACHE_TICKS")) as u64;
    assert_eq!(cache_live, cache_bytes, "the whole cache is seen");
    assert!(
        cache_live > leak_live,
        "the cache holds more: {cache_live} vs {leak_live}"
    );
    assert!(cache.abs() < leak_rate * 0.05, "but does not grow: {cache}");
    assert_eq!(sites_of(&report, "churn").live_bytes, 0);
    assert!(growth("churn").0.abs() < 1.0);
    assert_eq!(verdicts_of(&report, "steady_leak"), ["leaking"]);
    assert_eq!(report["sites"][0]["frames"][0]["function"], "steady_leak");
    assert!(!verdicts_of(&report, "fill_cache").contains(&"leaking".to_owned()));
    assert!(!verdicts_of(&report, "churn").contains(&"leaking".to_owned()));

    // The live view, sorted by growth, has the leak on top once there is a trend to fit: the
    // first row of the last view. Piped, it is plain text.
    let views = live_views(&stdout);
    assert_eq!(views.len(), intervals, "one view per interval: {stdout:#?}");
    let top = &views.last().unwrap().rows[0];
    assert!(top.line.contains("steady_leak"), "{stdout:#?}");
    assert_eq!(top.verdict, "leaking", "{stdout:#?}");
    assert!(
        !stdout.iter().any(|l| l.contains('\x1b')),
        "no terminal codes when piped"
    );
}

/// The bursts fixture at `-i 1s`: a site that bursts to 1 MB every 3 s and frees it all, a
/// leak of 0.5% of that byte rate, and a cache filled in its first 5 s. The leak is
/// `leaking` within 10 intervals, the bursts never, and the cache `grew then flat`.
///
/// The fixture keeps its pace by its own clock and starts when told, once leaktrace is
/// attached; leaktrace ends after a count of intervals. Nothing asserted depends on how fast
/// either runs: a starved fixture catches its steps up, a late interval is only longer.
#[test]
fn under_bursts_the_leak_is_leaking_the_bursts_never_and_the_cache_grew_then_flat() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture("bursts");
    let target = start_ready(&binary, &["wait"]);
    let json = output_path("bursts", "json");
    let intervals = 20;
    let mut leaktrace = attach_with_json(
        target.pid(),
        &json,
        &["-i", "1s", "--count", &intervals.to_string()],
    );
    target.signal(libc::SIGUSR1);
    assert_eq!(leaktrace.wait(WAIT), 0, "{:?}", leaktrace.stderr.rest());
    let stdout = leaktrace.stdout.rest();
    let report = read_json(&json);
    let views = live_views(&stdout);
    assert_eq!(views.len(), intervals, "{stdout:#?}");

    // Each interval's verdicts, for the record (and for the failure message).
    let timeline: Vec<String> = views
        .iter()
        .enumerate()
        .map(|(i, view)| {
            let verdict = |function| {
                view.row(function)
                    .map_or("-".to_owned(), |row| row.verdict.clone())
            };
            format!(
                "{:>2}: slow_leak {:<14} burst {:<14} fill_cache {}",
                i + 1,
                verdict("slow_leak"),
                verdict("burst"),
                verdict("fill_cache")
            )
        })
        .collect();
    eprintln!("{}", timeline.join("\n"));

    let leaking_from = views
        .iter()
        .position(|v| v.row("slow_leak").is_some_and(|r| r.verdict == "leaking"))
        .map(|i| i + 1);
    assert!(
        leaking_from.is_some_and(|n| n <= 10),
        "the leak is leaking within 10 intervals: {timeline:#?}"
    );
    for (i, view) in views.iter().enumerate() {
        if let Some(row) = view.row("burst") {
            assert_ne!(row.verdict, "leaking", "interval {}: {timeline:#?}", i + 1);
        }
    }

    assert_eq!(verdicts_of(&report, "slow_leak"), ["leaking"], "{report:#}");
    assert_eq!(verdicts_of(&report, "burst"), ["fluctuating"], "{report:#}");
    assert_eq!(
        verdicts_of(&report, "fill_cache"),
        ["grew then flat"],
        "{report:#}"
    );
    assert_eq!(report["sites"][0]["frames"][0]["function"], "slow_leak");
    let define = |name: &str| fixture_define("bursts", name) as f64;
    let leak_rate = define("LEAK_BYTES") * 1000.0 / define("STEP_MS");
    let floor = report["sites"][0]["floor_growth_bytes_per_s"]
        .as_f64()
        .unwrap();
    assert!(
        (floor - leak_rate).abs() < leak_rate * 0.25,
        "the leak's floor rises at its rate: {floor} vs {leak_rate}"
    );

    // The text report: the leak first, each site with its verdict.
    let text = TextReport::from_stdout(&stdout);
    let sites = text.sites();
    assert!(sites[0].first_frame.starts_with("slow_leak at "), "{text}");
    assert_eq!(sites[0].verdict, "leaking", "{text}");
    let verdict_shown = |function: &str| {
        sites
            .iter()
            .find(|s| s.first_frame.starts_with(&format!("{function} at ")))
            .map(|s| s.verdict.clone())
    };
    assert_eq!(
        verdict_shown("fill_cache").as_deref(),
        Some("grew then flat")
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
    let mut leaktrace = attach_with_json(target.pid(), &json, &["-i", "500ms", "--count", "10"]);
    assert_eq!(leaktrace.wait(WAIT), 0, "{:?}", leaktrace.stderr.rest());
    let stdout = leaktrace.stdout.rest();
    assert!(
        stdout.iter().any(|l| l.starts_with("warning: RSS grows")),
        "{stdout:#?}"
    );
    let memory = read_json(&json)["memory"].as_array().unwrap().clone();
    let rss = |i: usize| memory[i]["vm_rss"].as_u64().unwrap();
    assert!(memory.len() >= 10, "a sample each interval: {memory:#?}");
    assert!(rss(memory.len() - 1) > rss(0) + 1_000_000, "{memory:#?}");
}

#[test]
fn min_age_counts_only_old_blocks_and_count_ends_the_capture() {
    let Some(_bpf) = require_bpf() else { return };
    let (mut target, mut leaktrace) = trace_trends(
        "min_age",
        &["log"],
        &["-i", "1s", "--count", "4", "-o", "2s"],
    );
    assert_eq!(leaktrace.wait(WAIT), 0, "{:?}", leaktrace.stderr.rest());
    let stdout = leaktrace.stdout.rest();
    let report = read_json(&output_path("min_age", "json"));
    assert_eq!(report["ending"], "duration_elapsed");
    assert_eq!(live_views(&stdout).len(), 4, "four intervals: {stdout:#?}");
    let duration = report["duration_s"].as_f64().unwrap();
    assert!(duration >= 4.0, "four 1 s intervals: {duration}");
    assert!(
        report["live_filter"]
            .as_str()
            .unwrap()
            .contains("older than 2000 ms")
    );

    // The fixture logs each leak with its CLOCK_MONOTONIC time: those 2 s older than the
    // window's end are counted as live, every one as allocated. (A leak logged within a
    // millisecond of either cut may fall on the other side of it.)
    let end = report["window_end_ns"].as_u64().unwrap();
    let logged = leaks_logged_in_window(&mut target, &report);
    let old_enough = logged
        .iter()
        .filter(|&&ns| ns + 2_000_000_000 <= end)
        .count() as u64;
    let leak = sites_of(&report, "steady_leak");
    assert!(
        leak.allocs.abs_diff(logged.len() as u64) <= 1,
        "{leak:?}, {} logged",
        logged.len()
    );
    assert!(
        leak.live_allocations.abs_diff(old_enough) <= 1,
        "{leak:?}, {old_enough} logged 2 s before the end"
    );
    assert!(leak.live_allocations > 0 && leak.live_allocations < leak.allocs);
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

/// The windows fixture leaks when told, which the test does once the first interval has
/// ended: then, on any machine that answers within a second, in the second window. Whichever
/// window it is, the report puts each block in the window its time falls in, as the fixture
/// logged it.
#[test]
fn a_leak_in_the_second_of_three_windows_is_attributed_to_it() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture("windows");
    let mut target = start_ready(&binary, &["wait"]);
    let json = output_path("windows", "json");
    let mut leaktrace = attach_with_json(target.pid(), &json, &["--windows", "3", "-i", "1s"]);
    leaktrace.stdout.wait_for(|l| l.starts_with('['), WAIT);
    target.signal(libc::SIGUSR1);
    target.stdout.wait_for(|l| l == "leaked", WAIT);
    assert_eq!(leaktrace.wait(WAIT), 0, "{:?}", leaktrace.stderr.rest());
    let report = read_json(&json);
    let windows = report["windows"].as_array().expect("three windows");
    assert_eq!(windows.len(), 3);
    let leaks = fixture_define("windows", "WINDOW_LEAKS");

    // Each block's window by the fixture's clock, read just before its malloc: the probe's
    // timestamp comes microseconds later, so a block read within a millisecond of a cut may
    // be in either window.
    let start = report["window_start_ns"].as_u64().unwrap();
    let window_of = |ns: u64| ((ns.saturating_sub(start) / 1_000_000_000) as usize).min(2);
    let (mut surely, mut maybe) = ([0u64; 3], [0u64; 3]);
    let logged: Vec<u64> = target
        .stdout
        .seen
        .iter()
        .filter_map(|l| l.strip_prefix("leak ")?.parse().ok())
        .collect();
    assert_eq!(logged.len() as u64, leaks);
    for ns in logged {
        let (early, late) = (window_of(ns), window_of(ns + 1_000_000));
        if early == late {
            surely[early] += 1;
        }
        maybe[early] += 1;
        maybe[late] += u64::from(early != late);
    }
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
    let reported: Vec<u64> = windows.iter().map(in_window).collect();
    assert_eq!(reported.iter().sum::<u64>(), leaks, "{windows:#?}");
    for w in 0..3 {
        assert!(
            (surely[w]..=maybe[w]).contains(&reported[w]),
            "window {w}: {reported:?}, by the fixture's clock {surely:?} to {maybe:?}"
        );
    }
}

/// On a terminal the live view redraws in place, like top.
#[test]
fn on_a_terminal_the_live_view_redraws_in_place_within_80_columns_under_its_attach_line() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture("trends");
    let target = start_ready(&binary, &[]);
    // script(1) gives leaktrace a pseudo-terminal for its stdout, 80 columns wide.
    let command = format!(
        "stty cols 80 rows 40; {LEAKTRACE} -p {} -i 500ms --count 3",
        target.pid()
    );
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
    let redraws: Vec<&str> = screen.split("\x1b[H\x1b[2J").skip(1).collect();
    assert_eq!(redraws.len(), 3, "{screen}");
    for redraw in &redraws {
        // The final report, after the last view, is not redrawn and may be wider.
        let view = redraw.split("\r\n\r\n").next().unwrap();
        let lines: Vec<&str> = view.split("\r\n").collect();
        assert!(
            lines[0].starts_with("leaktrace: attached to pid"),
            "{redraw}"
        );
        for line in &lines {
            assert!(
                line.chars().count() <= 80,
                "{} columns: {line}",
                line.chars().count()
            );
        }
        assert!(
            lines.iter().any(|l| l.trim_end().ends_with("steady_leak")),
            "{redraw}"
        );
    }
}
