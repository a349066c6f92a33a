//! What tracing costs the target: hits counted per probe point, the estimate in the live
//! view's header and the report, and `--max-overhead`.

mod support;

use leaktrace::report::thousands;
use serde_json::Value;
use support::*;

/// The hits of the point where `program` reads `symbol`, from the JSON report.
fn hits(report: &Value, symbol: &str, program: &str) -> u64 {
    hits_of_kind(report, symbol, program, None)
}

/// The hits of the point where `program` reads `symbol`, of `kind` ("emulated", "return")
/// where a program has points of two kinds there (a uprobe session's entry and return).
fn hits_of_kind(report: &Value, symbol: &str, program: &str, kind: Option<&str>) -> u64 {
    let points = report["cost"]["points"].as_array().unwrap();
    let found: Vec<&Value> = points
        .iter()
        .filter(|p| p["symbol"] == symbol && p["program"] == program)
        .filter(|p| kind.is_none_or(|kind| p["kind"] == kind))
        .collect();
    assert_eq!(found.len(), 1, "{symbol} {program} {kind:?}: {points:#?}");
    found[0]["hits"].as_u64().unwrap()
}

/// Traced from its first instruction, a program that makes PAIRS malloc/free pairs and
/// nothing else hits malloc's entry and return and free's probe exactly PAIRS times each,
/// through uprobe_multi links and through perf-event uprobes alike.
#[test]
fn each_point_counts_exactly_the_calls_the_target_made() {
    let Some(_bpf) = require_bpf() else { return };
    let fixture = build_fixture("pairs");
    let pairs = fixture_define("pairs", "PAIRS");
    for (attachment, env) in [
        ("uprobe_multi", &[][..]),
        ("perf-event", &[("LEAKTRACE_SINGLE_UPROBES", "1")]),
    ] {
        let test = format!("cost_exact_{attachment}");
        let (report, stdout) = launch_json_env(&test, &[], &fixture, &["exact"], env);
        let text = TextReport::from_stdout(&stdout);

        // The ledger saw the pairs and nothing else...
        assert_eq!(report["totals"]["allocs"], pairs, "{attachment}");
        assert_eq!(report["totals"]["frees"], pairs, "{attachment}");
        let seen = format!("seen: {0} allocations (", thousands(pairs));
        assert!(
            text.lines.iter().any(|l| l.starts_with(&seen)),
            "{attachment}: {text}"
        );
        // ...and each point was hit once a call: malloc at its entry and its return.
        assert_eq!(
            hits(&report, "malloc", "alloc_enter"),
            pairs,
            "{attachment}"
        );
        assert_eq!(hits(&report, "malloc", "alloc_exit"), pairs, "{attachment}");
        assert_eq!(hits(&report, "free", "free_enter"), pairs, "{attachment}");
        let cost = &report["cost"];
        assert_eq!(
            cost["hits"],
            3 * pairs,
            "{attachment}: no other point was hit"
        );
        let kinds: Vec<&str> = ["alloc_enter", "alloc_exit"]
            .iter()
            .map(|program| {
                let points = cost["points"].as_array().unwrap();
                let point = points
                    .iter()
                    .find(|p| p["symbol"] == "malloc" && p["program"] == *program)
                    .unwrap();
                point["kind"].as_str().unwrap()
            })
            .collect();
        assert_eq!(
            kinds,
            ["emulated", "return"],
            "{attachment}: glibc's malloc starts with push"
        );
        for figure in ["emulated_ns", "single_stepped_ns", "return_ns"] {
            assert!(
                cost["calibration"][figure].is_number(),
                "{attachment}: {figure} in {cost:#}"
            );
        }
        // The text report says the same hits.
        let line = format!("; {} hits)", thousands(3 * pairs));
        assert!(
            text.lines
                .iter()
                .any(|l| l.starts_with("tracing cost: ≈ ") && l.ends_with(&line)),
            "{attachment}: {text}"
        );
    }
}

/// Sampling, malloc and calloc are probed by uprobe sessions (Linux 6.13+): an unsampled call
/// skips its return probe, so the return runs only for the calls recorded, each of which the
/// report counts n times. Through perf-event uprobes, which have no sessions, every call
/// still returns through its probe.
#[test]
fn sampling_malloc_returns_through_its_probe_only_when_recorded() {
    sampled_returns_only_when_recorded("exact", "malloc", "alloc_session", "alloc_enter");
}

#[test]
fn sampling_calloc_returns_through_its_probe_only_when_recorded() {
    sampled_returns_only_when_recorded("calloc", "calloc", "calloc_session", "calloc_enter");
}

/// The pairs fixture in `mode`, whose PAIRS calls to `function` are each followed by a free:
/// sampled, through `session`, and through perf-event uprobes, through `entry`.
fn sampled_returns_only_when_recorded(mode: &str, function: &str, session: &str, entry: &str) {
    let Some(_bpf) = require_bpf() else { return };
    let fixture = build_fixture("pairs");
    let pairs = fixture_define("pairs", "PAIRS");
    let n = 20;
    let sampling = ["-s", &n.to_string()];
    let test = format!("cost_session_{mode}");
    let (report, _) = launch_json_env(&test, &sampling, &fixture, &[mode], &[]);
    let entries = hits_of_kind(&report, function, session, Some("emulated"));
    let returns = hits_of_kind(&report, function, session, Some("return"));
    assert_eq!(entries, pairs);
    assert!(returns > 0 && returns < pairs / 2, "{returns} of {pairs}");
    assert_eq!(
        report["totals"]["allocs"],
        returns * n,
        "{:#}",
        report["totals"]
    );
    assert_eq!(hits(&report, "free", "free_enter"), pairs);

    let single = [("LEAKTRACE_SINGLE_UPROBES", "1")];
    let test = format!("cost_no_session_{mode}");
    let (report, _) = launch_json_env(&test, &sampling, &fixture, &[mode], &single);
    assert_eq!(hits(&report, function, entry), pairs);
    assert_eq!(hits(&report, function, "alloc_exit"), pairs);
}

/// "[    0.3s] live …; tracing cost ≈ 12% of the target's CPU (41 ms CPU/s, 3,400 hits/s);
/// lost events 0" → (12.0, 3400).
fn header_cost(line: &str) -> Option<(f64, u64)> {
    let rest = &line[line.find("; tracing cost ≈ ")? + "; tracing cost ≈ ".len()..];
    let (percent, rest) = rest.split_once("% of the target's CPU (")?;
    let hits = rest.split(", ").nth(1)?.split(" hits/s)").next()?;
    Some((percent.parse().ok()?, hits.replace(',', "").parse().ok()?))
}

/// A target busy with malloc and free: each interval's header estimates the cost, with the
/// hits per second it comes from, and the JSON carries the estimate and its inputs.
#[test]
fn a_busy_targets_header_shows_its_hits_and_their_cost() {
    let Some(_bpf) = require_bpf() else { return };
    let fixture = build_fixture("pairs");
    let target = start_ready(&fixture, &["busy"]);
    let json = output_path("cost_busy", "json");
    let mut leaktrace = attach_with_json(target.pid(), &json, &["-i", "300ms", "--count", "3"]);
    assert_eq!(leaktrace.wait(WAIT), 0, "{:?}", leaktrace.stderr.rest());
    let stdout = leaktrace.stdout.rest();
    let headers: Vec<&String> = stdout.iter().filter(|l| l.starts_with('[')).collect();
    assert_eq!(headers.len(), 3, "{stdout:#?}");
    // Every interval the target is scheduled in, it calls malloc and free.
    let busy: Vec<(f64, u64)> = headers
        .iter()
        .filter_map(|l| header_cost(l))
        .filter(|(_, hits)| *hits > 0)
        .collect();
    assert!(!busy.is_empty(), "no interval with hits: {headers:#?}");
    assert!(busy.iter().all(|(percent, _)| *percent > 0.0), "{busy:?}");

    let cost = &read_json(&json)["cost"];
    assert!(cost["hits"].as_u64().unwrap() > 0, "{cost:#}");
    assert!(cost["cost_ms"].as_f64().unwrap() > 0.0, "{cost:#}");
    assert!(cost["target_cpu_ms"].as_f64().unwrap() > 0.0, "{cost:#}");
    assert!(
        cost["percent_of_target_cpu"].as_f64().unwrap() > 0.0,
        "{cost:#}"
    );
    let malloc = hits(&read_json(&json), "malloc", "alloc_enter");
    assert!(malloc > 0);
}

/// Timing the programs costs every run two clock reads, so the kernel's BPF statistics are on
/// only until enough runs are timed: on a busy target that is well before the first interval
/// (here an hour away), and the report still has each program's run time.
#[test]
fn a_busy_targets_programs_are_timed_then_the_timing_goes_off() {
    let Some(_bpf) = require_bpf() else { return };
    let fixture = build_fixture("pairs");
    let target = start_ready(&fixture, &["busy"]);
    let json = output_path("cost_timing_off", "json");
    let mut leaktrace = attach_with_json(target.pid(), &json, &["-v", "-i", "1h"]);
    let said = leaktrace
        .stderr
        .wait_for(|line| line.contains("BPF run-time statistics off: "), WAIT);
    let runs: u64 = said
        .split("off: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|runs| runs.parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    assert!(runs >= 100_000, "{said}");
    leaktrace.signal(libc::SIGINT);
    assert_eq!(leaktrace.wait(WAIT), 0, "{:?}", leaktrace.stderr.rest());
    let report = read_json(&json);
    let cost = &report["cost"];
    assert_eq!(cost["covers"], "traps_and_programs", "{cost:#}");
    let alloc_exit = cost["points"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["symbol"] == "malloc" && p["program"] == "alloc_exit")
        .unwrap_or_else(|| panic!("{cost:#}"));
    assert!(
        alloc_exit["program_ns"].as_f64().unwrap() > 0.0,
        "{alloc_exit}"
    );
}

/// `--max-overhead` with a limit any busy target passes: the capture ends, with its report,
/// once three intervals in a row were above it, and both reports say why.
#[test]
fn a_cost_above_max_overhead_for_three_intervals_ends_the_capture() {
    let Some(_bpf) = require_bpf() else { return };
    let fixture = build_fixture("pairs");
    let target = start_ready(&fixture, &["busy"]);
    let json = output_path("cost_max_overhead", "json");
    // Nothing else would end this capture.
    let mut leaktrace = attach_with_json(
        target.pid(),
        &json,
        &["-i", "200ms", "--max-overhead", "0.001"],
    );
    assert_eq!(leaktrace.wait(WAIT), 0, "{:?}", leaktrace.stderr.rest());
    let stdout = leaktrace.stdout.rest();
    let report = read_json(&json);
    let ending = &report["ending"]["overhead"];
    assert_eq!(ending["limit"], 0.001, "{report:#}");
    assert!(ending["percent"].as_f64().unwrap() > 0.001, "{ending}");

    // The last three intervals were all above the limit.
    let headers: Vec<&String> = stdout.iter().filter(|l| l.starts_with('[')).collect();
    assert!(headers.len() >= 3, "{stdout:#?}");
    for header in &headers[headers.len() - 3..] {
        let (percent, _) = header_cost(header).unwrap_or_else(|| panic!("{header}"));
        assert!(percent > 0.001, "{header}");
    }
    let text = TextReport::from_stdout(&stdout);
    let said =
        "ended: the tracing cost stayed above --max-overhead 0.001% for 3 intervals in a row";
    assert!(
        text.lines.iter().any(|l| l.starts_with(said)),
        "{said}: {text}"
    );
    // The report is whole: the target's churn is all it saw, balanced.
    let totals = &report["totals"];
    assert!(totals["allocs"].as_u64().unwrap() > 0, "{totals}");
}
