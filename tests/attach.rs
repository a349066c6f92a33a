//! `leaktrace -p PID`: attaching to a running fixture, exact numbers per site.

mod support;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use support::*;

/// Starts `fixture MODE` and waits until it says it is ready (libc loaded, main running).
fn start_fixture(mode: &str) -> Running {
    start_ready(&build_fixture("fixture"), &[mode])
}

/// `fixture MODE` (burst or crash) with leaktrace attached, its burst done: the fixture,
/// leaktrace, and where its JSON report goes.
fn burst_under_leaktrace(mode: &str, test: &str) -> (Running, Running, PathBuf) {
    burst_under_leaktrace_env(mode, test, &[])
}

/// [`burst_under_leaktrace`] with environment variables for leaktrace.
fn burst_under_leaktrace_env(
    mode: &str,
    test: &str,
    env: &[(&str, &str)],
) -> (Running, Running, PathBuf) {
    let mut fixture = start_fixture(mode);
    let json = output_path(test, "json");
    let leaktrace = attach_with_json_env(fixture.pid(), &json, &[], env);
    run_burst(&mut fixture);
    (fixture, leaktrace, json)
}

/// The type of each BPF link leaktrace holds ("uprobe_multi", "perf", …), from its fdinfo.
fn held_links(pid: u32) -> Vec<String> {
    let mut link_types = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        let info = fs::read_to_string(entry.path()).unwrap_or_default();
        if let Some(kind) = info.lines().find_map(|l| l.strip_prefix("link_type:")) {
            link_types.push(kind.trim().to_owned());
        }
    }
    link_types
}

fn count(links: &[String], kind: &str) -> usize {
    links.iter().filter(|link| *link == kind).count()
}

fn define(name: &str) -> u64 {
    fixture_define("fixture", name)
}

/// On a kernel with uprobe_multi (6.6+) the probes go in through one link per program and
/// binary, never one perf event per point: those are removed one grace period at a time.
#[test]
fn attach_counts_every_block_of_a_burst_exactly() {
    let Some(_bpf) = require_bpf() else { return };
    let (_fixture, leaktrace, json) = burst_under_leaktrace("burst", "attach_burst");
    let links = held_links(leaktrace.pid());
    // malloc's entry and return, free's entry at least.
    assert!(count(&links, "uprobe_multi") >= 3, "{links:?}");
    assert_eq!(count(&links, "perf"), 0, "{links:?}");
    assert_burst_counted_exactly(leaktrace, &json);
}

/// Where the kernel lacks uprobe_multi, each point is a perf-event uprobe: the same counts.
/// (Debug builds take `LEAKTRACE_SINGLE_UPROBES` to act so on any kernel.)
#[test]
fn with_single_uprobes_a_burst_is_counted_the_same() {
    let Some(_bpf) = require_bpf() else { return };
    let env = [("LEAKTRACE_SINGLE_UPROBES", "1")];
    let (_fixture, leaktrace, json) = burst_under_leaktrace_env("burst", "single_burst", &env);
    let links = held_links(leaktrace.pid());
    assert_eq!(count(&links, "uprobe_multi"), 0, "{links:?}");
    assert!(count(&links, "perf") >= 3, "{links:?}");
    assert_burst_counted_exactly(leaktrace, &json);
}

/// The burst's report, once leaktrace is interrupted: every site exact, nothing lost.
fn assert_burst_counted_exactly(mut leaktrace: Running, json: &Path) {
    leaktrace.signal(libc::SIGINT);
    assert_eq!(
        leaktrace.wait(WAIT),
        0,
        "stderr: {:?}",
        leaktrace.stderr.rest()
    );

    let report = read_json(json);
    let leak_bytes = define("LEAK_BYTES");
    let leaks = define("BURST_LEAKS");
    let leak = sites_of(&report, "leak_here");
    assert_eq!(
        (
            leak.live_bytes,
            leak.live_allocations,
            leak.allocs,
            leak.frees
        ),
        (leaks * leak_bytes, leaks, leaks, 0)
    );

    let tables = define("CALLOC_TABLES");
    let table_bytes = define("CALLOC_COUNT") * define("CALLOC_SIZE");
    let calloc = sites_of(&report, "calloc_table");
    assert_eq!(
        (calloc.live_bytes, calloc.live_allocations),
        (tables * table_bytes, tables)
    );

    // realloc is a free of the old block and an allocation of the new one.
    let steps = define("GROW_STEPS");
    let grown = sites_of(&report, "grow_buffer");
    assert_eq!(
        (
            grown.live_bytes,
            grown.live_allocations,
            grown.allocs,
            grown.frees
        ),
        (steps * define("GROW_STEP"), 1, steps, steps - 1)
    );

    // strdup calls malloc from inside libc and uses rbp as a plain register: a frame-pointer
    // walk ends in strdup, the CFI unwinding goes on to its caller. strdup's frame, in the
    // allocator library, is cut.
    let name = fixture_define_text("fixture", "NAME");
    let copy = sites_of(&report, "copy_name");
    assert_eq!(
        (copy.live_bytes, copy.live_allocations),
        (name.trim_matches('"').len() as u64 + 1, 1)
    );

    let pairs = define("CHURN_PAIRS");
    let churn = sites_of(&report, "churn");
    assert_eq!(
        (
            churn.live_bytes,
            churn.live_allocations,
            churn.allocs,
            churn.frees
        ),
        (0, 0, pairs, pairs)
    );

    let totals = &report["totals"];
    assert_eq!(
        totals["live_bytes"].as_u64().unwrap(),
        leak.live_bytes + calloc.live_bytes + grown.live_bytes + copy.live_bytes,
        "nothing else in the fixture allocates during the burst"
    );
    assert_eq!(totals["unmatched_frees"], 0);
    assert_nothing_lost(&report);
    assert_eq!(report["ending"], "interrupted");
}

#[test]
fn attach_names_leak_here_first_and_matches_the_fixtures_own_count() {
    let Some(_bpf) = require_bpf() else { return };
    let mut fixture = start_fixture("continuous");
    let json = output_path("attach_continuous", "json");
    let folded = output_path("attach_continuous", "folded");
    let folded_arg = folded.to_str().unwrap();
    let args = ["--count", "3", "-i", "1s", "--folded", folded_arg];
    let mut leaktrace = attach_with_json(fixture.pid(), &json, &args);
    assert_eq!(
        leaktrace.wait(WAIT),
        0,
        "stderr: {:?}",
        leaktrace.stderr.rest()
    );
    let stdout = leaktrace.stdout.rest();
    let report = read_json(&json);

    let first = &report["sites"][0];
    let frame = &first["frames"][0];
    assert_eq!(frame["function"], "leak_here", "{first:#}");
    assert!(frame["file"].as_str().unwrap().ends_with("fixture.c"));
    assert_eq!(
        frame["line"].as_u64().unwrap(),
        fixture_line("fixture", "/* the leak */")
    );

    // The fixture logs each leak with its CLOCK_MONOTONIC time; count those inside the window.
    let leaks_in_window = leaks_logged_in_window(&mut fixture, &report).len() as u64;
    let leak = sites_of(&report, "leak_here");
    let leak_bytes = define("LEAK_BYTES");
    assert!(
        leaks_in_window > 100,
        "3 s at one leak per 10 ms of the fixture's clock: {leaks_in_window}"
    );
    assert!(
        leak.live_bytes.abs_diff(leaks_in_window * leak_bytes) <= leak_bytes,
        "traced {} bytes, fixture logged {leaks_in_window} leaks in the window",
        leak.live_bytes
    );
    assert_eq!(sites_of(&report, "churn").live_bytes, 0);
    assert!(sites_of(&report, "churn").frees > 0);

    // The live view showed the site growing each interval, named by its function.
    let growing = stdout
        .iter()
        .filter(|l| l.contains("  leak_here") && l.trim_start().starts_with('+'))
        .count();
    assert!(growing >= 2, "live view: {stdout:#?}");

    // The folded stack ends in leak_here, root first, with the same bytes.
    let folded = fs::read_to_string(&folded).unwrap();
    let line = folded
        .lines()
        .find(|l| l.contains(";leak_here "))
        .unwrap_or_else(|| panic!("no leak_here stack in {folded}"));
    assert!(line.contains("main;leak_here "), "{line}");
    let bytes: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(bytes, leak.live_bytes);

    // A real consumer of the format draws it.
    let mut svg = Vec::new();
    inferno::flamegraph::from_lines(
        &mut inferno::flamegraph::Options::default(),
        folded.lines(),
        &mut svg,
    )
    .expect("inferno reads the folded stacks");
    assert!(String::from_utf8(svg).unwrap().contains("leak_here"));
}

#[test]
fn a_target_that_exits_mid_capture_ends_it_with_a_report() {
    let Some(_bpf) = require_bpf() else { return };
    let (fixture, mut leaktrace, json) = burst_under_leaktrace("burst", "attach_target_exit");
    fixture.signal(libc::SIGKILL);
    assert_eq!(leaktrace.wait(WAIT), 0, "{:?}", leaktrace.stderr.rest());
    // Symbolized from what leaktrace kept: the process and its /proc entries are gone. Only
    // a parent learns how a process ended: an attached leaktrace cannot say.
    let ended = Ended::TargetExited(None);
    assert_burst_reported("killed", &leaktrace.stdout.rest(), &read_json(&json), ended);
}

#[test]
fn sigterm_ends_the_capture_with_a_report() {
    let Some(_bpf) = require_bpf() else { return };
    let (_fixture, mut leaktrace, json) = burst_under_leaktrace("burst", "attach_sigterm");
    leaktrace.signal(libc::SIGTERM);
    assert_eq!(leaktrace.wait(WAIT), 0, "{:?}", leaktrace.stderr.rest());
    let ended = Ended::Interrupted;
    assert_burst_reported(
        "SIGTERM",
        &leaktrace.stdout.rest(),
        &read_json(&json),
        ended,
    );
}

/// The allocator library deleted while the target runs (an upgrade under a live process): the
/// probes go on the mapped inode itself, through /proc/PID/map_files.
#[test]
fn a_deleted_allocator_library_is_still_probed() {
    let Some(_bpf) = require_bpf() else { return };
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("deleted-libc");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let libc = dir.join("libc.so.6");
    fs::copy("/lib/x86_64-linux-gnu/libc.so.6", &libc).unwrap();
    let mut fixture = Running::start(
        Command::new(build_fixture("fixture"))
            .arg("burst")
            .env("LD_LIBRARY_PATH", &dir),
    );
    fixture.stdout.wait_for(|l| l == "ready", WAIT);
    fs::remove_file(&libc).unwrap();
    let maps = fs::read_to_string(format!("/proc/{}/maps", fixture.pid())).unwrap();
    assert!(maps.contains("libc.so.6 (deleted)"), "{maps}");

    let json = output_path("deleted_libc", "json");
    let mut leaktrace = attach_with_json(fixture.pid(), &json, &[]);
    run_burst(&mut fixture);
    leaktrace.signal(libc::SIGINT);
    assert_eq!(leaktrace.wait(WAIT), 0, "{:?}", leaktrace.stderr.rest());
    let report = read_json(&json);
    assert!(report["allocator"].as_str().unwrap().ends_with("libc.so.6"));
    let leak = sites_of(&report, "leak_here");
    assert_eq!(leak.live_allocations, define("BURST_LEAKS"));
}

#[test]
fn a_target_that_crashes_mid_capture_ends_it_with_a_report() {
    let Some(_bpf) = require_bpf() else { return };
    let (_fixture, mut leaktrace, json) = burst_under_leaktrace("crash", "attach_target_crash");
    // The fixture dies of SIGSEGV on its own; leaktrace notices and reports.
    assert_eq!(leaktrace.wait(WAIT), 0, "{:?}", leaktrace.stderr.rest());
    let ended = Ended::TargetExited(None);
    assert_burst_reported(
        "crashed",
        &leaktrace.stdout.rest(),
        &read_json(&json),
        ended,
    );
}

/// Frees of blocks allocated before the attach are counted, with the bytes glibc says each
/// released: a new block that replaces one of them is not growth.
#[test]
fn frees_of_blocks_from_before_the_attach_say_what_they_release() {
    let Some(_bpf) = require_bpf() else { return };
    let mut fixture = start_fixture("replace");
    let json = output_path("replace", "json");
    let mut leaktrace = attach_with_json(fixture.pid(), &json, &[]);
    fixture.signal(libc::SIGUSR1);
    let freed = fixture.stdout.wait_for(|l| l.starts_with("freed "), WAIT);
    let usable: u64 = freed["freed ".len()..].parse().unwrap();
    leaktrace.signal(libc::SIGINT);
    assert_eq!(leaktrace.wait(WAIT), 0, "{:?}", leaktrace.stderr.rest());
    let report = read_json(&json);
    assert_eq!(
        report["totals"]["unmatched_frees"],
        define("PRE_ATTACH_BLOCKS")
    );
    assert_eq!(
        report["totals"]["unmatched_free_bytes"], usable,
        "{report:#}"
    );
    let text = leaktrace.stdout.rest();
    let line = format!(
        "replacing blocks allocated before attach: {} blocks, {} bytes",
        define("PRE_ATTACH_BLOCKS"),
        leaktrace::report::thousands(usable)
    );
    assert!(
        text.iter().any(|l| l.starts_with(&line)),
        "{line} not in {text:?}"
    );
}

/// 500 threads that each allocate and free every millisecond, and threads that come and go,
/// each allocating and freeing, traced at the default settings: either nothing is lost, or
/// the report's bounds hold the blocks the fixture counts itself. Every block it holds at the
/// end was made after the attach (it says "renewed"), so the ledger may know them all.
#[test]
fn many_busy_threads_give_live_bounds_that_hold_what_the_target_holds() {
    let Some(_bpf) = require_bpf() else { return };
    let mut swarm = Running::start_with_input(&mut Command::new(build_fixture("swarm")));
    swarm.stdout.wait_for(|l| l == "ready", WAIT);
    let json = output_path("swarm", "json");
    let mut leaktrace = attach_with_json(swarm.pid(), &json, &[]);
    swarm.tell("mark");
    swarm.stdout.wait_for(|l| l == "renewed", WAIT);
    // A live view taken under the load.
    leaktrace.stdout.wait_for(|l| l.starts_with('['), WAIT);
    swarm.tell("stop");
    let held = swarm.stdout.wait_for(|l| l.starts_with("holding "), WAIT);
    let held: u64 = held.split(' ').nth(1).unwrap().parse().unwrap();
    leaktrace.signal(libc::SIGINT);
    assert_eq!(leaktrace.wait(WAIT), 0, "{:?}", leaktrace.stderr.rest());
    let report = read_json(&json);
    let stdout = leaktrace.stdout.rest();
    let (too_high, too_low) = live_bounds_said(&stdout);
    let live =
        sites_of(&report, "hold").live_allocations + sites_of(&report, "pass").live_allocations;
    let bounds = live.saturating_sub(too_high.unwrap_or(0))..=live + too_low.unwrap_or(0);
    assert!(
        bounds.contains(&held),
        "the fixture holds {held} blocks, the report says {bounds:?}: {}\n{}",
        report["drops"],
        TextReport::from_stdout(&stdout)
    );
}
