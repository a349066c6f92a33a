//! `leaktrace -- CMD` and the built-in demo: traced from the first instruction, reported at exit.

mod support;

use std::{cell::Cell, process::Command};

use leaktrace::{demo, report::thousands};
use support::*;

#[test]
fn launch_mode_matches_valgrinds_in_use_at_exit() {
    let Some(_bpf) = require_bpf() else { return };
    let fixture = build_fixture("fixture");
    let json = output_path("launch_exit", "json");
    let mut leaktrace = Running::start(
        Command::new(LEAKTRACE)
            .arg("--json")
            .arg(&json)
            .arg("--")
            .arg(&fixture)
            .arg("exit"),
    );
    assert_eq!(leaktrace.wait(WAIT), 0, "{:?}", leaktrace.stderr.rest());
    assert_same_as_valgrind(&leaktrace.stdout.rest(), &fixture, &["exit"], &[]);

    let report = read_json(&json);
    assert_eq!(report["from_start"], true);
    assert_eq!(report["ending"]["target_exited"]["status"], 0);
    let leaks = fixture_define("fixture", "BURST_LEAKS");
    assert_eq!(sites_of(&report, "leak_here").live_allocations, leaks);
}

/// The target's exit code, or 128 + the signal that killed it, in both reports.
#[test]
fn launch_mode_reports_the_targets_exit_status() {
    let Some(_bpf) = require_bpf() else { return };
    // (shell script, the status leaktrace reports)
    let rows = [("exit 3", 3), ("kill -9 $$", 128 + libc::SIGKILL)];
    for (script, status) in rows {
        let json = output_path("launch_status", "json");
        let mut leaktrace = Running::start(
            Command::new(LEAKTRACE)
                .arg("--json")
                .arg(&json)
                .args(["--", "sh", "-c", script]),
        );
        let code = leaktrace.wait(WAIT);
        assert_eq!(code, 0, "{script}: {:?}", leaktrace.stderr.rest());
        let report = read_json(&json);
        let text = TextReport::from_stdout(&leaktrace.stdout.rest());
        Ended::TargetExited(Some(status)).assert_said(script, &text, &report);
        // Traced from its start, what it held is what it held at exit.
        let totals = &report["totals"];
        let in_use = format!(
            "in use at exit: {} bytes in {} blocks",
            thousands(totals["live_bytes"].as_u64().unwrap()),
            thousands(totals["live_allocations"].as_u64().unwrap())
        );
        assert!(text.lines.contains(&in_use), "{script}: {in_use}: {text}");
    }
}

#[test]
fn the_demo_shows_its_leaking_site_with_exact_bytes() {
    let Some(_bpf) = require_bpf() else { return };
    let json = output_path("demo", "json");
    let mut leaktrace = Running::start(Command::new(LEAKTRACE).arg("--json").arg(&json));
    assert_eq!(leaktrace.wait(WAIT), 0, "{:?}", leaktrace.stderr.rest());
    let stdout = leaktrace.stdout.rest();
    let report = read_json(&json);

    let top = &report["sites"][0];
    let function = top["frames"][0]["function"].as_str().unwrap_or_default();
    assert!(function.ends_with("remember_session"), "{top:#}");
    assert!(
        top["label"]
            .as_str()
            .is_some_and(|l| l.ends_with("remember_session")),
        "{top:#}"
    );
    // No site is named by Rust's allocator: each is named past it.
    for site in report["sites"].as_array().unwrap() {
        let label = site["label"].as_str().unwrap();
        assert!(
            !label.starts_with("alloc::") && !["alloc", "__rust_alloc"].contains(&label),
            "{site:#}"
        );
    }
    // The live view's top row is the leak, by its name alone; no row is Rust's allocator.
    let rows: Vec<&String> = stdout
        .iter()
        .filter(|l| l.trim_start().starts_with(['+', '-']))
        .collect();
    assert!(!rows.is_empty(), "a live view: {stdout:#?}");
    let last_view = stdout
        .iter()
        .rposition(|l| l.trim_start().starts_with("change "))
        .expect("a live view header");
    assert!(
        stdout[last_view + 1].ends_with("remember_session"),
        "{}",
        stdout[last_view + 1]
    );
    assert!(
        rows.iter().all(|row| !row.contains("alloc::alloc")),
        "{rows:#?}"
    );
    let expected = (demo::REQUESTS * demo::LEAK_BYTES) as u64;
    assert_eq!(top["live_bytes"], expected);
    assert_eq!(top["live_allocations"], demo::REQUESTS as u64);
    // And the terminal says so: the first ranked site, then its frame.
    let rank = stdout
        .iter()
        .position(|l| l.starts_with("#1 "))
        .expect("a ranked site");
    let held = format!("{} bytes in {} blocks", thousands(expected), demo::REQUESTS);
    assert!(
        stdout[rank].contains(&held),
        "{} lacks {held}",
        stdout[rank]
    );
    assert!(
        stdout[rank + 1].contains("remember_session at"),
        "{}",
        stdout[rank + 1]
    );
}

#[test]
fn stacks_that_collide_in_the_stack_map_keep_their_own_sites() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture("many_stacks");
    let json = output_path("many_stacks", "json");
    // Frame-pointer stacks go through the kernel's stack map (copied stacks do not).
    let mut leaktrace = Running::start(
        Command::new(LEAKTRACE)
            .args(["--unwind", "fp", "--max-sites", "100000", "--json"])
            .arg(&json)
            .arg("--")
            .arg(&binary),
    );
    assert_eq!(leaktrace.wait(WAIT), 0, "{:?}", leaktrace.stderr.rest());
    let report = read_json(&json);
    let stacks = fixture_define("many_stacks", "OUTERS") * fixture_define("many_stacks", "MIDDLES");
    assert!(report.get("sites_left_out").is_none());
    let leaf = sites_of(&report, "leaf");
    assert_eq!(
        (leaf.sites, leaf.live_allocations),
        (stacks, stacks),
        "one site per distinct stack, one block each"
    );
    assert_eq!(
        leaf.live_bytes,
        stacks * fixture_define("many_stacks", "BLOCK_BYTES")
    );
    let drops = &report["drops"];
    assert!(
        drops["stack_map_full"].as_u64().unwrap() > 0,
        "this many stacks must collide in the stack map, or the test proves nothing"
    );
    assert_eq!(drops["stack_unreadable"], 0);
    assert_eq!(drops["ring_buffer_full"], 0);
}

#[test]
fn max_sites_keeps_the_first_sites_and_counts_the_rest() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture("many_stacks");
    let (report, stdout) = launch_json(
        "max_sites",
        &["--unwind", "fp", "--max-sites", "100"],
        &binary,
        &[],
    );
    let stacks = fixture_define("many_stacks", "OUTERS") * fixture_define("many_stacks", "MIDDLES");
    let block = fixture_define("many_stacks", "BLOCK_BYTES");
    let sites = report["sites"].as_array().unwrap();
    let left_out = &report["sites_left_out"];
    assert_eq!(sites.len(), 100);
    let leaf = sites_of(&report, "leaf");
    assert_eq!(
        leaf.sites + left_out["sites"].as_u64().unwrap(),
        stacks,
        "every leaking stack is listed or counted"
    );
    assert_eq!(
        leaf.live_bytes + left_out["live_bytes"].as_u64().unwrap(),
        stacks * block
    );
    assert_eq!(
        report["totals"]["live_bytes"].as_u64(),
        Some(stacks * block),
        "the totals still count every site"
    );
    let said = stdout
        .iter()
        .find_map(|line| line.split_once(" more sites left out of the report files (--max-sites)"))
        .unwrap_or_else(|| panic!("the text says sites were left out: {stdout:?}"));
    assert_eq!(said.0.replace(',', ""), left_out["sites"].to_string());
}

#[test]
fn a_ring_buffer_too_small_loses_events_and_says_so() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture("cxx");
    let (report, stdout) = launch_json(
        "small_ring",
        &["--ring-bytes", "4096"],
        &binary,
        &["count", "200000"],
    );
    let drops = &report["drops"];
    let lost = drops["ring_buffer_full"].as_u64().unwrap();
    let skipped = drops["allocations_skipped"].as_u64().unwrap();
    assert!(
        skipped > 0,
        "200,000 events through 4 KiB: allocations give way to frees: {drops}"
    );
    let loss = format!(
        "ring buffer full {}, allocations skipped {}",
        thousands(lost),
        thousands(skipped)
    );
    assert_drops_said(&stdout, &loss, &report);
}

/// The report's drops line names the loss, and says by how many blocks at most the live
/// figures may be too high (each event lost that may have been a free) and too low (each that
/// may have been an allocation), as the JSON's drops count them.
fn assert_drops_said(stdout: &[String], loss: &str, report: &serde_json::Value) {
    let line = stdout
        .iter()
        .find(|l| l.starts_with("drops: "))
        .unwrap_or_else(|| panic!("no drops line: {stdout:#?}"));
    assert!(line.contains(loss), "{loss}: {line}");
    let count = |name: &str| report["drops"][name].as_u64().unwrap();
    let frees = count("ring_buffer_full") + count("pending_map_full");
    let allocations = frees + count("allocations_skipped") + count("sampled_map_full");
    let said = |n: u64| (n > 0).then_some(n);
    assert_eq!(
        live_bounds_said(stdout),
        (said(frees), said(allocations)),
        "{line}"
    );
}

/// Two threads that always hold exactly 8,192 blocks between them, churning through a ring
/// buffer far too small for their events: events are lost, allocations first, and the report
/// says by how much its live figures may be off either way. Those bounds hold what the
/// fixture holds; a report that called its live figures a lower bound while frees were lost
/// said more than it knew. The site rises by the blocks whose frees were lost: it is not
/// `leaking`. (Launched, so that no free is taken for one of a block from before an attach,
/// which would make the site `replacing` them.)
#[test]
fn a_full_ring_buffer_gives_live_bounds_that_hold_what_the_target_holds() {
    let Some(_bpf) = require_bpf() else { return };
    let json = output_path("holding", "json");
    let mut leaktrace = Running::start(
        Command::new(LEAKTRACE)
            .args(["--ring-bytes", "4096", "-i", "100ms", "--json"])
            .arg(&json)
            .arg("--")
            .arg(build_fixture("holding")),
    );
    let attached = leaktrace.stderr.wait_for(is_attached_line, WAIT);
    let pid: i32 = attached["leaktrace: attached to pid ".len()..]
        .split(' ')
        .next()
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {attached:?}"));
    let signal = |signal| assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    // The fixture's output comes on leaktrace's, among the live views.
    leaktrace.stdout.wait_for(|l| l == "ready", WAIT);
    signal(libc::SIGUSR1);
    // Enough intervals for a verdict, and enough churn to overflow the ring many times over,
    // in whichever order the two streams interleave.
    let (views, churned) = (Cell::new(0), Cell::new(false));
    leaktrace.stdout.wait_for(
        |l| {
            views.set(views.get() + usize::from(l.starts_with('[')));
            churned.set(churned.get() || l == "round 10");
            views.get() >= 12 && churned.get()
        },
        WAIT,
    );
    signal(libc::SIGUSR2);
    let held = leaktrace
        .stdout
        .wait_for(|l| l.starts_with("holding "), WAIT);
    let held: u64 = held["holding ".len()..].parse().unwrap();
    leaktrace.signal(libc::SIGINT);
    assert_eq!(leaktrace.wait(WAIT), 0, "{:?}", leaktrace.stderr.rest());
    let report = read_json(&json);
    let stdout = leaktrace.stdout.rest();
    let drops = &report["drops"];
    assert!(
        drops["allocations_skipped"].as_u64().unwrap() > 0,
        "{drops}"
    );
    let (too_high, too_low) = live_bounds_said(&stdout);
    let live = sites_of(&report, "hold").live_allocations;
    let bounds = live.saturating_sub(too_high.unwrap_or(0))..=live + too_low.unwrap_or(0);
    let text = TextReport::from_stdout(&stdout);
    assert!(
        bounds.contains(&held),
        "the fixture holds {held}, the report says {bounds:?}: {drops}\n{text}"
    );
    let verdicts = verdicts_of(&report, "hold");
    assert!(!verdicts.contains(&"leaking".to_owned()), "{text}");
}

/// More threads than `--max-threads` allows (two slots, and two entries for threads whose slot
/// another holds): the calls of the others are lost, counted as `pending_map_full`, and the
/// report says its live figures may be too high (a free's call lost) or too low (an
/// allocation's).
#[test]
fn too_few_thread_entries_lose_calls_and_say_so() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture("threads");
    let (report, stdout) = launch_json("max_threads", &["--max-threads", "2"], &binary, &["exit"]);
    let lost = report["drops"]["pending_map_full"].as_u64().unwrap();
    assert!(
        lost > 0,
        "9 threads in 2 slots and 2 entries: {}",
        report["drops"]
    );
    let loss = format!("pending map full {}", thousands(lost));
    assert_drops_said(&stdout, &loss, &report);
}

/// Sampling with room for fewer sampled blocks than the target keeps: the rest are not
/// recorded, counted as `sampled_map_full` in the live view and the JSON, and the report says
/// its live figures may be too low.
#[test]
fn a_full_map_of_sampled_blocks_is_counted_and_shown() {
    let Some(_bpf) = require_bpf() else { return };
    let target = start_ready(&build_fixture("fixture"), &["continuous"]);
    let json = output_path("sampled_blocks", "json");
    let mut leaktrace = attach_with_json(
        target.pid(),
        &json,
        &[
            "-s",
            "2",
            "--sampled-blocks",
            "4",
            "-i",
            "300ms",
            "-d",
            "3s",
        ],
    );
    assert_eq!(leaktrace.wait(WAIT), 0);
    let report = read_json(&json);
    let lost = report["drops"]["sampled_map_full"].as_u64().unwrap();
    assert!(
        lost > 0,
        "4 entries for ~150 sampled leaks: {}",
        report["drops"]
    );
    let stdout = leaktrace.stdout.rest();
    let last_view = stdout
        .iter()
        .rfind(|l| l.contains("; lost events "))
        .unwrap_or_else(|| panic!("no live view: {stdout:#?}"));
    assert!(!last_view.ends_with("lost events 0"), "{last_view}");
    let loss = format!("sampled map full {}", thousands(lost));
    assert_drops_said(&stdout, &loss, &report);
}

/// bcc memleak's `-c COMMAND` starts the command as `-- CMD ARGS…` does.
#[test]
fn dash_c_launches_a_command_line() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture("fixture");
    let json = output_path("dash_c", "json");
    let mut leaktrace = Running::start(
        Command::new(LEAKTRACE)
            .arg("--json")
            .arg(&json)
            .arg("-c")
            .arg(format!("{} exit", binary.display())),
    );
    assert_eq!(leaktrace.wait(WAIT), 0, "{:?}", leaktrace.stderr.rest());
    let report = read_json(&json);
    assert_eq!(report["from_start"], true, "{report:#}");
    assert_eq!(
        sites_of(&report, "leak_here").live_allocations,
        fixture_define("fixture", "BURST_LEAKS")
    );
}

/// bcc memleak's `-a`: each site lists its oldest live blocks, with their sizes and ages.
#[test]
fn dash_a_lists_each_sites_oldest_blocks() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture("fixture");
    let (report, stdout) = launch_json("dash_a", &["-a"], &binary, &["exit"]);
    let site = report["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["frames"][0]["function"] == "leak_here")
        .expect("the leak_here site");
    let blocks = site["blocks"].as_array().expect("its blocks");
    let leaks = fixture_define("fixture", "BURST_LEAKS");
    assert_eq!(blocks.len() as u64, leaks.min(10), "{site:#}");
    let mut addresses: Vec<u64> = blocks
        .iter()
        .map(|b| b["address"].as_u64().unwrap())
        .collect();
    for block in blocks {
        assert_eq!(block["size"], fixture_define("fixture", "LEAK_BYTES"));
    }
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), blocks.len(), "each block once");
    assert!(
        stdout.iter().any(|l| l.contains("oldest live blocks")),
        "{stdout:?}"
    );
}
