//! Every door into the allocator, traced from a program's start: exact bytes and blocks per
//! door, and the same "in use at exit" as valgrind where valgrind supports the door.

mod support;

use std::process::Command;

use serde_json::Value;
use support::*;

fn launch(test: &str, binary: &std::path::Path, args: &[&str]) -> (Value, Vec<String>) {
    launch_json(test, &[], binary, args)
}

/// One door of `doors.c`: its leak_DOOR site holds exactly DOOR_BYTES in DOOR_BLOCKS, the
/// door's failure paths leave nothing, and the totals agree with valgrind.
fn check_door(door: &str, compare_with_valgrind: bool) {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture("doors");
    let (report, stdout) = launch(&format!("door_{door}"), &binary, &[door]);
    let define =
        |suffix: &str| fixture_define("doors", &format!("{}_{suffix}", door.to_uppercase()));
    let site = sites_of(&report, &format!("leak_{door}"));
    assert_eq!(
        (site.live_bytes, site.live_allocations),
        (define("BYTES"), define("BLOCKS")),
        "{door}: {site:?}"
    );
    let totals = &report["totals"];
    assert_eq!(totals["unmatched_frees"], 0, "{door}: every free matched");
    assert_eq!(totals["missed_frees"], 0, "{door}");
    if compare_with_valgrind {
        assert_same_as_valgrind(&stdout, &binary, &[door], &[]);
    }
}

#[test]
fn door_malloc() {
    check_door("malloc", true);
}

#[test]
fn door_calloc_and_its_overflow() {
    check_door("calloc", true);
}

#[test]
fn door_realloc_null_zero_growth_and_failure() {
    check_door("realloc", true);
}

#[test]
fn door_reallocarray_and_its_overflow() {
    check_door("reallocarray", true);
}

#[test]
fn door_posix_memalign_and_a_bad_alignment() {
    check_door("posix_memalign", true);
}

#[test]
fn door_aligned_alloc() {
    check_door("aligned_alloc", true);
}

#[test]
fn door_memalign() {
    check_door("memalign", true);
}

#[test]
fn door_valloc() {
    check_door("valloc", true);
}

/// valgrind 3.19 lets pvalloc through untracked ("0 bytes in 0 blocks"); glibc allocates a
/// whole page, which is what leaktrace counts.
#[test]
fn door_pvalloc() {
    check_door("pvalloc", false);
}

/// Sites whose first frame's function starts with `prefix` (C++ names carry their arguments).
fn cxx_sites(report: &Value, prefix: &str) -> SiteSum {
    sites_where(report, |function| function.starts_with(prefix))
}

#[test]
fn cxx_new_and_delete_each_variant_and_the_caller_of_new_is_the_site() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture("cxx");
    let (report, stdout) = launch("cxx_doors", &binary, &["doors"]);
    let define = |name: &str| fixture_define("cxx", name);

    // The top site is the function that called new, with its callers, not libstdc++.
    let top = &report["sites"][0];
    let functions: Vec<&str> = top["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["function"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        functions[..3],
        ["leak_new_here()", "build_cache()", "handle_request()"]
    );
    assert_eq!(top["live_bytes"], define("REQUEST_BYTES"));
    // And it is named by that caller.
    assert_eq!(top["label"], "leak_new_here()");
    assert_eq!(top["site"], "leak_new_here");

    for (function, bytes) in [
        ("leak_plain_new", "PLAIN_BYTES"),
        ("leak_nothrow_new", "NOTHROW_BYTES"),
        ("leak_aligned_new", "ALIGNED_BYTES"),
        ("leak_aligned_array_new", "ALIGNED_ARRAY_BYTES"),
    ] {
        let site = cxx_sites(&report, &format!("{function}("));
        assert_eq!(
            (site.live_bytes, site.live_allocations),
            (define(bytes), 1),
            "{function}"
        );
    }
    let pairs = define("BALANCED_PAIRS");
    let balanced = cxx_sites(&report, "balanced(");
    assert_eq!(
        (balanced.live_bytes, balanced.allocs, balanced.frees),
        (0, pairs, pairs),
        "every delete matched its new, once"
    );
    assert_eq!(report["totals"]["unmatched_frees"], 0);
    assert_same_as_valgrind(&stdout, &binary, &["doors"], &[]);
}

/// bcc's memleak lost allocations when operator new's pending entry was overwritten by the
/// malloc it calls (199,998 of 200,000 counted).
#[test]
fn every_one_of_200_000_news_is_counted_once() {
    let Some(_bpf) = require_bpf() else { return };
    let count = fixture_define("cxx", "MAX_COUNT");
    let binary = build_fixture("cxx");
    let (report, _) = launch("cxx_count", &binary, &["count", &count.to_string()]);
    let site = cxx_sites(&report, "count_new(");
    assert_eq!((site.allocs, site.live_allocations), (count, count));
    assert_nothing_lost(&report);
}

/// The three sites of `fixture exit` with known leaks, summed: (bytes, blocks).
fn fixture_leaks(report: &Value) -> (u64, u64) {
    let define = |name: &str| fixture_define("fixture", name);
    let expected = (
        define("BURST_LEAKS") * define("LEAK_BYTES")
            + define("CALLOC_TABLES") * define("CALLOC_COUNT") * define("CALLOC_SIZE")
            + define("GROW_STEPS") * define("GROW_STEP"),
        define("BURST_LEAKS") + define("CALLOC_TABLES") + 1,
    );
    let seen = ["leak_here", "calloc_table", "grow_buffer"]
        .iter()
        .map(|f| sites_of(report, f))
        .fold((0, 0), |(b, n), s| {
            (b + s.live_bytes, n + s.live_allocations)
        });
    assert_eq!(seen, expected);
    seen
}

#[test]
fn jemalloc_is_probed_where_malloc_binds_without_flags() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture_with("fixture", &["-ljemalloc"]);
    let (report, stdout) = launch("jemalloc", &binary, &["exit"]);
    let allocator = report["allocator"].as_str().unwrap();
    assert!(
        allocator.ends_with("libjemalloc.so.2"),
        "probed {allocator}"
    );
    fixture_leaks(&report);
    let synonyms = "--soname-synonyms=somalloc=*jemalloc*";
    assert_same_as_valgrind(&stdout, &binary, &["exit"], &[synonyms]);
}

#[test]
fn the_allocator_flag_overrides_the_binding() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture_with("fixture", &["-ljemalloc"]);
    let (report, _) = launch_json(
        "allocator_flag",
        &["--allocator", "libc.so.6"],
        &binary,
        &["exit"],
    );
    let allocator = report["allocator"].as_str().unwrap();
    assert!(allocator.ends_with("libc.so.6"), "probed {allocator}");
    // The program's mallocs go to jemalloc, which the flag told leaktrace not to probe.
    assert_eq!(sites_of(&report, "leak_here").allocs, 0);
}

#[test]
fn a_symbol_prefix_finds_the_prefixed_allocator() {
    let Some(_bpf) = require_bpf() else { return };
    // glibc exports its allocator a second time as __libc_malloc, __libc_free, …
    let binary = build_fixture("fixture");
    let (report, _) = launch_json(
        "symbol_prefix",
        &["--symbol-prefix", "__libc_"],
        &binary,
        &["exit"],
    );
    assert!(report["probed"].as_str().unwrap().contains("__libc_malloc"));
    fixture_leaks(&report);
}

#[test]
fn a_static_binary_is_probed_in_itself() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture_with("fixture", &["-static"]);
    let (report, _) = launch("static", &binary, &["exit"]);
    assert_eq!(
        report["allocator"].as_str().unwrap(),
        binary.to_str().unwrap()
    );
    // valgrind cannot replace a static binary's malloc: the fixture's own numbers decide.
    fixture_leaks(&report);
    assert_eq!(report["totals"]["missed_frees"], 0);
}

/// An allocator library stripped of its symbol table is probed through its dynamic symbols,
/// counts what the fixture leaks, and the report says how its functions were found.
#[test]
fn a_stripped_allocator_library_is_probed_through_its_dynamic_symbols() {
    let Some(_bpf) = require_bpf() else { return };
    let library = build_fixture_with("interposer", &["-shared", "-fPIC"]);
    let stripped = library.with_extension("stripped.so");
    let status = Command::new("strip")
        .args(["--strip-all", "-o"])
        .arg(&stripped)
        .arg(&library)
        .status()
        .unwrap();
    assert!(status.success());
    let binary = build_fixture("fixture");
    let json = output_path("stripped", "json");
    let mut leaktrace = Running::start(
        Command::new(LEAKTRACE)
            .env("LD_PRELOAD", &stripped)
            .arg("--json")
            .arg(&json)
            .arg("--")
            .arg(&binary)
            .arg("exit"),
    );
    assert_eq!(leaktrace.wait(WAIT), 0, "{:?}", leaktrace.stderr.rest());
    let report = read_json(&json);
    let probed = report["probed"].as_str().unwrap();
    assert!(
        probed.contains(&format!(
            "in {} (stripped: found in .dynsym)",
            stripped.display()
        )),
        "{probed}"
    );
    assert_eq!(report["allocator"], stripped.to_str().unwrap());
    fixture_leaks(&report);
}

/// The thread_leak site holds what `threads.c` leaves, and saw every allocation and free.
fn assert_thread_leaks(report: &Value) {
    let define = |name: &str| fixture_define("threads", name);
    let allocs = define("THREADS") * define("BLOCKS");
    let site = sites_of(report, "thread_leak");
    assert_eq!(
        (
            site.live_bytes,
            site.live_allocations,
            site.allocs,
            site.frees
        ),
        (
            allocs / 2 * define("BLOCK_BYTES"),
            allocs / 2,
            allocs,
            allocs / 2,
        )
    );
}

/// `threads exit` launched under leaktrace with `options`: nothing lost, every block counted,
/// and the same in use at exit as valgrind.
fn check_threads_exit(test: &str, options: &[&str]) {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture("threads");
    let (report, stdout) = launch_json(test, options, &binary, &["exit"]);
    assert_nothing_lost(&report);
    assert_thread_leaks(&report);
    assert_same_as_valgrind(&stdout, &binary, &["exit"], &[]);
}

#[test]
fn eight_threads_with_cross_thread_frees() {
    check_threads_exit("threads", &[]);
}

/// Eight workers, alive together, and seven thread slots: at least one worker finds its slot
/// held by another thread (their ids are equal modulo 7) and keeps its calls in the map for
/// such threads, which has room for seven. Every call still counts.
#[test]
fn threads_that_share_a_slot_are_counted_exactly() {
    check_threads_exit("shared_slots", &["--max-threads", "7"]);
}

#[test]
fn threads_created_after_attach_are_traced() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture("threads");
    let mut target = start_ready(&binary, &["wait"]);
    let json = output_path("threads_after_attach", "json");
    let mut leaktrace = attach_with_json(target.pid(), &json, &[]);
    target.signal(libc::SIGUSR1);
    target.stdout.wait_for(|l| l == "done", WAIT);
    leaktrace.signal(libc::SIGINT);
    assert_eq!(leaktrace.wait(WAIT), 0, "{:?}", leaktrace.stderr.rest());
    assert_thread_leaks(&read_json(&json));
}

fn lifecycle_define(name: &str) -> u64 {
    fixture_define("lifecycle", name)
}

#[test]
fn without_follow_forks_a_child_is_not_mixed_in() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture("lifecycle");
    let (report, _) = launch("fork_not_followed", &binary, &["fork"]);
    let parent = sites_of(&report, "parent_leak");
    assert_eq!(parent.live_allocations, lifecycle_define("PARENT_LEAKS"));
    assert_eq!(sites_of(&report, "child_leak").allocs, 0);
    assert!(report.get("processes").is_none(), "{report:#}");
}

/// The lifecycle fixture in `mode` (fork-wait, vfork-wait, spawn-wait) launched under `leaktrace -f`:
/// once its child is followed and ready, it is told to go on, and both run to their end. The
/// parent's JSON report, which holds its parent's leaks and not the child's; the child's pid
/// and its report, which holds its leaks; and leaktrace's stdout.
fn follow_lifecycle_child(test: &str, mode: &str) -> (Value, i32, Value, Vec<String>) {
    let binary = build_fixture("lifecycle");
    let json = output_path(test, "json");
    let mut leaktrace = Running::start(
        Command::new(LEAKTRACE)
            .args(["-f", "--json"])
            .arg(&json)
            .arg("--")
            .arg(&binary)
            .arg(mode),
    );
    let following = leaktrace
        .stderr
        .wait_for(|l| l.starts_with("leaktrace: following child "), WAIT);
    let child: i32 = following["leaktrace: following child ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // Its SIGUSR1 handler is in once it says so (a vforked child sets it after its exec).
    leaktrace.stdout.wait_for(|l| l == "child ready", WAIT);
    assert_eq!(unsafe { libc::kill(child, libc::SIGUSR1) }, 0);
    assert_eq!(leaktrace.wait(WAIT), 0, "{:?}", leaktrace.stderr.rest());

    let report = read_json(&json);
    assert_eq!(
        sites_of(&report, "parent_leak").live_allocations,
        lifecycle_define("PARENT_LEAKS")
    );
    assert_eq!(
        sites_of(&report, "child_leak").allocs,
        0,
        "not in the parent's report"
    );
    let processes = report["processes"].as_array().expect("the child's report");
    let child_report = processes
        .iter()
        .find(|r| r["pid"] == child)
        .unwrap_or_else(|| panic!("no report for pid {child}: {processes:#?}"))
        .clone();
    let leaks = sites_of(&child_report, "child_leak");
    let expected = lifecycle_define("CHILD_LEAKS");
    assert_eq!((leaks.allocs, leaks.live_allocations), (expected, expected));
    assert_eq!(leaks.live_bytes, expected * lifecycle_define("BLOCK_BYTES"));
    (report, child, child_report, leaktrace.stdout.rest())
}

/// A vforked child has exec'd by the time vfork returns in the parent (the g++ driver starts
/// cc1plus so): it is followed as the program it runs now, its allocations its own.
#[test]
fn follow_forks_follows_a_vforked_child_into_the_program_it_execs() {
    let Some(_bpf) = require_bpf() else { return };
    follow_lifecycle_child("vfork_followed", "vfork-wait");
}

/// posix_spawn (GNU make starts its commands so) returns once its child has exec'd, as vfork
/// does: the child is followed as the program it runs.
#[test]
fn follow_forks_follows_a_posix_spawned_child() {
    let Some(_bpf) = require_bpf() else { return };
    follow_lifecycle_child("spawn_followed", "spawn-wait");
}

#[test]
fn follow_forks_reports_the_child_on_its_own() {
    let Some(_bpf) = require_bpf() else { return };
    let (report, child, child_report, stdout) =
        follow_lifecycle_child("fork_followed", "fork-wait");
    let expected = lifecycle_define("CHILD_LEAKS");
    let child_report = &child_report;

    // The text: the parent's report, then the child's, each with its own leaks and ending.
    let text = TextReport::from_stdout(&stdout);
    let parent_text = text.process(report["pid"].as_i64().unwrap());
    let child_text = text.process(child.into());
    for (who, text, json, function, leaks, ended) in [
        (
            "parent",
            &parent_text,
            &report,
            "parent_leak",
            lifecycle_define("PARENT_LEAKS"),
            Ended::TargetExited(Some(0)),
        ),
        (
            "child",
            &child_text,
            child_report,
            "child_leak",
            expected,
            // Only the parent's status comes to leaktrace.
            Ended::TargetExited(None),
        ),
    ] {
        ended.assert_said(who, text, json);
        let shown = text.sites_of(function);
        let held = (leaks * lifecycle_define("BLOCK_BYTES"), leaks);
        assert_eq!(
            (shown.live_bytes, shown.live_allocations),
            held,
            "{who}: {text}"
        );
        let totals = &json["totals"];
        let totals = (
            totals["live_bytes"].as_u64(),
            totals["live_allocations"].as_u64(),
        );
        let (bytes, blocks) = text.held();
        assert_eq!((Some(bytes), Some(blocks)), totals, "{who}: {text}");
    }
    assert_eq!(parent_text.sites_of("child_leak").sites, 0, "{parent_text}");
}

#[test]
fn an_exec_ends_one_image_and_starts_the_next() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture("lifecycle");
    let json = output_path("exec", "json");
    let mut leaktrace = Running::start(
        Command::new(LEAKTRACE)
            .arg("--json")
            .arg(&json)
            .arg("--")
            .arg(&binary)
            .arg("exec"),
    );
    leaktrace.stderr.wait_for(
        |l| l.starts_with("leaktrace: pid ") && l.contains("exec'd"),
        WAIT,
    );
    leaktrace.stdout.wait_for(|l| l == "after exec done", WAIT);
    leaktrace.signal(libc::SIGINT);
    assert_eq!(leaktrace.wait(WAIT), 0, "{:?}", leaktrace.stderr.rest());
    let report = read_json(&json);
    // The target lives on: leave nothing behind.
    unsafe { libc::kill(report["pid"].as_i64().unwrap() as i32, libc::SIGKILL) };

    // The running program leads the report, traced from its first instruction.
    let after = sites_of(&report, "after_exec");
    let expected = lifecycle_define("AFTER_EXEC_LEAKS");
    assert_eq!((after.allocs, after.live_allocations), (expected, expected));
    assert_eq!(report["from_start"], true);
    assert_eq!(sites_of(&report, "before_exec").allocs, 0);

    let before_image = &report["processes"][0];
    assert_eq!(before_image["ending"], "exec");
    let before = sites_of(before_image, "before_exec");
    assert_eq!(before.live_allocations, lifecycle_define("EXEC_LEAKS"));
}

/// The exec event can reach leaktrace after the new program has exited and been reaped: its
/// image cannot be read then. leaktrace is held stopped across the exec, the exit and the reap,
/// so that it takes in the event only afterwards.
#[test]
fn an_exec_whose_program_is_gone_before_it_is_seen_ends_with_a_report() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture("lifecycle");
    let mut fixture = start_ready(&binary, &["exec-exit"]);
    let json = output_path("exec_gone", "json");
    let mut leaktrace = attach_with_json(fixture.pid(), &json, &[]);
    leaktrace.signal(libc::SIGSTOP);
    fixture.signal(libc::SIGUSR1);
    assert_eq!(fixture.wait(WAIT), 0, "the exec'd program exits 0");
    leaktrace.signal(libc::SIGCONT);
    assert_eq!(leaktrace.wait(WAIT), 0, "{:?}", leaktrace.stderr.rest());
    let report = read_json(&json);
    assert_eq!(report["ending"], "exec", "{report:#}");
    let before = sites_of(&report, "before_exec");
    assert_eq!(before.live_allocations, lifecycle_define("EXEC_LEAKS"));
}

fn mappings_define(name: &str) -> u64 {
    fixture_define("mappings", name)
}

#[test]
fn mmap_counts_the_programs_anonymous_mappings_once() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture("mappings");
    let (report, _) = launch_json("mmap", &["--mmap"], &binary, &[]);
    let page = mappings_define("PAGE");
    let regions = mappings_define("REGIONS");

    // One region unmapped whole, one split by unmapping its middle page, one moved by mremap.
    let mapped = sites_of(&report, "map_region");
    assert_eq!(
        (
            mapped.live_bytes,
            mapped.live_allocations,
            mapped.allocs,
            mapped.frees
        ),
        ((mappings_define("REGION_PAGES") - 1) * page, 2, regions, 2)
    );
    let remapped = sites_of(&report, "remap_region");
    assert_eq!(
        (remapped.live_bytes, remapped.live_allocations),
        (mappings_define("REMAP_PAGES") * page, 1)
    );
    // malloc maps a big block itself: counted once, as the block.
    let big = sites_of(&report, "big_block");
    assert_eq!(
        (big.live_bytes, big.live_allocations),
        (mappings_define("BIG_BLOCK_BYTES"), 1)
    );
    assert_eq!(
        report["totals"]["live_bytes"].as_u64().unwrap(),
        mapped.live_bytes + remapped.live_bytes + big.live_bytes,
        "nothing counted twice, and the file mapping not at all"
    );
}

#[test]
fn without_the_mmap_flag_mappings_are_not_traced() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture("mappings");
    let (report, _) = launch("no_mmap", &binary, &[]);
    assert_eq!(sites_of(&report, "map_region").allocs, 0);
    assert_eq!(
        report["totals"]["live_bytes"].as_u64().unwrap(),
        mappings_define("BIG_BLOCK_BYTES")
    );
}

/// Per function of the first frame, a report's live bytes, live blocks, allocations and
/// frees, and its totals. How a function's allocations split into sites depends on which of
/// their stacks got copied first, which is a matter of timing.
fn per_function(report: &Value) -> (Value, std::collections::BTreeMap<String, [u64; 4]>) {
    let mut by_function: std::collections::BTreeMap<String, [u64; 4]> = Default::default();
    for site in report["sites"].as_array().unwrap() {
        let function = site["frames"][0]["function"].as_str().unwrap_or("?");
        let sums = by_function.entry(function.to_owned()).or_default();
        for (sum, field) in
            sums.iter_mut()
                .zip(["live_bytes", "live_allocations", "allocs", "frees"])
        {
            *sum += site[field].as_u64().unwrap();
        }
    }
    (report["totals"].clone(), by_function)
}

/// `fixture ARGS` built with `flags`, traced at the probe points leaktrace chooses and at
/// every function's entry: both reports, which must agree function by function.
fn chosen_and_entry(fixture: &str, flags: &[&str], args: &str) -> (Value, Value) {
    let binary = build_fixture_with(fixture, flags);
    let test = format!(
        "points_{fixture}_{args}_{}",
        flags.concat().replace([':', '.'], "_")
    );
    let (chosen, _) = launch_json(&test, &[], &binary, &[args]);
    let (entry, _) = launch_json(
        &format!("{test}_entry"),
        &["--entry-probes"],
        &binary,
        &[args],
    );
    assert_eq!(
        per_function(&chosen),
        per_function(&entry),
        "{fixture} {args} {flags:?}"
    );
    (chosen, entry)
}

/// The probe points leaktrace chooses (free after its NULL test, C++ operators seen through
/// malloc and free) count exactly what probes at every function's entry count.
#[test]
fn chosen_probe_points_count_the_same_as_entry_probes() {
    let Some(_bpf) = require_bpf() else { return };
    for (fixture, args) in [("cxx", "doors"), ("doors", "realloc"), ("fixture", "exit")] {
        let (chosen, entry) = chosen_and_entry(fixture, &[], args);
        if fixture == "cxx" {
            assert!(
                !chosen["probed"].as_str().unwrap().contains("_ZdlPv"),
                "operator delete is seen through free: {}",
                chosen["probed"]
            );
            assert!(entry["probed"].as_str().unwrap().contains("_ZdlPv"));
        }
    }
}

/// jemalloc, tcmalloc and mimalloc, probed past their entries where that is emulated (and
/// mimalloc's arguments read where it moved them): the same counts as probes at every entry,
/// through each door of the C family and C++'s new and delete.
#[test]
fn each_allocator_counts_the_same_at_its_chosen_points_as_at_its_entries() {
    let Some(_bpf) = require_bpf() else { return };
    for (library, flag) in [
        ("libjemalloc.so.2", "-l:libjemalloc.so.2"),
        ("libtcmalloc_minimal.so.4", "-l:libtcmalloc_minimal.so.4"),
        ("libmimalloc.so.2", "-l:libmimalloc.so.2"),
    ] {
        let (chosen, _) = chosen_and_entry("fixture", &[flag], "exit");
        let allocator = chosen["allocator"].as_str().unwrap();
        assert!(allocator.contains(library), "{flag}: probed {allocator}");
        fixture_leaks(&chosen);
        for door in ["calloc", "realloc", "posix_memalign", "memalign"] {
            let (chosen, _) = chosen_and_entry("doors", &[flag], door);
            let define = |suffix: &str| {
                fixture_define("doors", &format!("{}_{suffix}", door.to_uppercase()))
            };
            let site = sites_of(&chosen, &format!("leak_{door}"));
            assert_eq!(
                (site.live_bytes, site.live_allocations),
                (define("BYTES"), define("BLOCKS")),
                "{library} {door}"
            );
        }
        chosen_and_entry("cxx", &[flag], "doors");
    }
}
