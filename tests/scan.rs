//! The reachability scan: each live block told definitely lost, indirectly lost, possibly
//! lost or still reachable, as valgrind's memcheck tells them. Launched, leaktrace scans the
//! target at its exit, where valgrind checks: on each scenario of the leak_kinds fixtures both
//! must give the same bytes and blocks of each kind, in all and per site. Attached, a block
//! whose address is kept anywhere in the target is never lost.

mod support;

use std::{collections::BTreeMap, path::Path};

use leaktrace::report::thousands;
use serde_json::Value;
use support::{LeakKind::*, *};

/// The fixtures' sources: a site is named by its innermost frame in one of them, for
/// valgrind's loss records and leaktrace's sites alike. glibc's own allocations (a thread's
/// DTV, dlopen's link map) are so named by the fixture's call that made them.
const SOURCES: [&str; 3] = ["leak_kinds.c", "leak_kinds_lib.c", "leak_kinds_cxx.cc"];

/// valgrind's options besides full leak checking of every kind: exit 0 whatever leaked, and
/// stacks deep enough to reach the fixture's frame from inside dlopen.
const VALGRIND_OPTIONS: [&str; 2] = ["--errors-for-leak-kinds=none", "--num-callers=50"];

fn define(name: &str) -> u64 {
    fixture_define("leak_kinds", name)
}

fn none() -> LeakKinds {
    LeakKinds::default()
}

/// "keep_array()" → "keep_array": valgrind and leaktrace may write C++ parameters apart.
fn site_name(function: &str) -> String {
    function.split('(').next().unwrap_or(function).to_owned()
}

fn is_source(file: &str) -> bool {
    let name = Path::new(file).file_name().and_then(|n| n.to_str());
    name.is_some_and(|name| SOURCES.contains(&name))
}

/// What `sites` say of `site`: nothing where they do not name it.
fn of_site<T: Copy + Default>(sites: &BTreeMap<Option<String>, T>, site: &str) -> T {
    sites
        .get(&Some(site.to_owned()))
        .copied()
        .unwrap_or_default()
}

/// valgrind's loss records summed per site; `None` for those with no frame in the fixtures.
fn valgrind_sites(leaks: &ValgrindLeaks) -> BTreeMap<Option<String>, LeakKinds> {
    let mut sites: BTreeMap<Option<String>, LeakKinds> = BTreeMap::new();
    for record in &leaks.records {
        let site = record
            .frames
            .iter()
            .find(|(_, file)| file.as_deref().is_some_and(is_source))
            .map(|(function, _)| site_name(function));
        let kinds = sites.entry(site).or_default();
        *kinds = kinds.with(record.kind, record.bytes, record.blocks);
    }
    sites
}

/// The name [`valgrind_sites`] would give leaktrace's `site`.
fn site_name_of(site: &Value) -> Option<String> {
    let frames = site["frames"].as_array().expect("frames");
    frames
        .iter()
        .find(|frame| frame["file"].as_str().is_some_and(is_source))
        .map(|frame| site_name(frame["function"].as_str().unwrap_or_default()))
}

/// `value` of leaktrace's sites summed by `plus` per site name, leaving out what is zero.
fn sum_by_site<T: Copy + Default + PartialEq>(
    report: &Value,
    value: impl Fn(&Value) -> T,
    plus: impl Fn(T, T) -> T,
) -> BTreeMap<Option<String>, T> {
    let mut sums: BTreeMap<Option<String>, T> = BTreeMap::new();
    for site in report["sites"].as_array().expect("sites") {
        let value = value(site);
        if value != T::default() {
            let sum = sums.entry(site_name_of(site)).or_default();
            *sum = plus(*sum, value);
        }
    }
    sums
}

/// The `scan` of leaktrace's sites, summed as [`valgrind_sites`] sums valgrind's records.
fn leaktrace_sites(report: &Value) -> BTreeMap<Option<String>, LeakKinds> {
    sum_by_site(
        report,
        |site| LeakKinds::from_json(&site["scan"]),
        LeakKinds::plus,
    )
}

/// The live (bytes, blocks) of leaktrace's sites, summed as [`leaktrace_sites`].
fn live_sites(report: &Value) -> BTreeMap<Option<String>, (u64, u64)> {
    let live = |site: &Value| {
        let field = |name: &str| site[name].as_u64().expect(name);
        (field("live_bytes"), field("live_allocations"))
    };
    sum_by_site(report, live, |a, b| (a.0 + b.0, a.1 + b.1))
}

/// The text report's line of the scan's totals.
fn leak_kinds_line(kinds: &LeakKinds) -> String {
    let kinds: Vec<String> = LeakKind::ALL
        .into_iter()
        .map(|kind| {
            let (bytes, blocks) = kinds.of(kind);
            format!(
                "{} {} bytes in {} blocks",
                kind.words(),
                thousands(bytes),
                thousands(blocks)
            )
        })
        .collect();
    format!("leak kinds: {}", kinds.join(", "))
}

/// valgrind's leak check of `binary args`, once it is known to give each of `expected`'s
/// sites its kinds (nothing, where they are empty) and to suppress nothing (a suppressed block
/// is in no kind).
fn valgrind_checked(binary: &Path, args: &[&str], expected: &[(&str, LeakKinds)]) -> ValgrindLeaks {
    let scenario = args[0];
    let valgrind = valgrind_leaks(binary, args, &VALGRIND_OPTIONS);
    assert_eq!(valgrind.suppressed, (0, 0), "{scenario}: {valgrind:#?}");
    let by_valgrind = valgrind_sites(&valgrind);
    for (site, kinds) in expected {
        let said = of_site(&by_valgrind, site);
        assert_eq!(
            said, *kinds,
            "{scenario}: valgrind on {site}, of {by_valgrind:#?}"
        );
    }
    valgrind
}

/// leaktrace's report and stdout of `scenario`, launched, say what `valgrind` says: the same
/// live blocks at the same sites, and the same kinds from the scan at the exit, in all, in the
/// text report, and per site.
fn assert_like_valgrind(
    scenario: &str,
    report: &Value,
    stdout: &[String],
    valgrind: &ValgrindLeaks,
) {
    let by_valgrind = valgrind_sites(valgrind);
    // The same blocks at the same sites, before any is told a kind.
    let valgrind_live: BTreeMap<_, _> = by_valgrind
        .iter()
        .map(|(site, kinds)| (site.clone(), kinds.total()))
        .collect();
    assert_eq!(
        live_sites(report),
        valgrind_live,
        "{scenario}: live (bytes, blocks) per site, leaktrace's (left), valgrind's (right)"
    );
    let scan = &report["scan"];
    assert!(scan.is_object(), "{scenario}: no scan in the report");
    assert_eq!(
        LeakKinds::from_json(scan),
        valgrind.summary,
        "{scenario}: leaktrace's kinds (left), valgrind's (right)"
    );
    let line = leak_kinds_line(&valgrind.summary);
    let text = TextReport::from_stdout(stdout);
    assert!(
        text.lines.iter().any(|l| l.starts_with(&line)),
        "{scenario}: {line:?} in {text}"
    );
    assert_eq!(
        leaktrace_sites(report),
        by_valgrind,
        "{scenario}: leaktrace's sites (left), valgrind's (right)"
    );
}

/// `binary args` under valgrind, then launched under leaktrace: see [`valgrind_checked`] and
/// [`assert_like_valgrind`].
fn assert_scan_matches_valgrind(binary: &Path, args: &[&str], expected: &[(&str, LeakKinds)]) {
    let valgrind = valgrind_checked(binary, args, expected);
    let (report, stdout) = launch_json(&format!("scan_{}", args[0]), &[], binary, args);
    assert_like_valgrind(args[0], &report, &stdout, &valgrind);
}

/// [`assert_scan_matches_valgrind`] on `leak_kinds SCENARIO`.
fn assert_scenario(scenario: &str, expected: &[(&str, LeakKinds)]) {
    assert_scan_matches_valgrind(&build_fixture("leak_kinds"), &[scenario], expected);
}

/// [`assert_scenario`] where `site` holds one block of `kind`, of the fixture's `bytes`.
fn assert_one_block(scenario: &str, site: &str, kind: LeakKind, bytes: &str) {
    assert_scenario(scenario, &[(site, none().with(kind, define(bytes), 1))]);
}

#[test]
fn a_lost_cycle_is_one_block_definitely_lost_and_one_indirectly() {
    let Some(_bpf) = require_bpf() else { return };
    let node = define("CYCLE_NODE_BYTES");
    let cycle = none()
        .with(DefinitelyLost, node, 1)
        .with(IndirectlyLost, node, 1);
    assert_scenario("cycle", &[("cycle_node", cycle)]);
}

#[test]
fn a_tree_whose_root_is_lost_loses_the_rest_indirectly() {
    let Some(_bpf) = require_bpf() else { return };
    let root = define("TREE_ROOT_BYTES");
    let children = 2 * define("TREE_CHILD_BYTES");
    let grandchildren = 4 * define("TREE_GRANDCHILD_BYTES");
    assert_scenario(
        "tree",
        &[
            ("tree_root", none().with(DefinitelyLost, root, 1)),
            ("tree_child", none().with(IndirectlyLost, children, 2)),
            (
                "tree_grandchild",
                none().with(IndirectlyLost, grandchildren, 4),
            ),
        ],
    );
}

#[test]
fn a_block_known_only_by_an_interior_pointer_is_possibly_lost() {
    let Some(_bpf) = require_bpf() else { return };
    assert_one_block("interior", "interior_block", PossiblyLost, "INTERIOR_BYTES");
}

#[test]
fn a_block_past_its_length_word_is_reachable_by_the_length64_heuristic() {
    let Some(_bpf) = require_bpf() else { return };
    assert_one_block(
        "length64",
        "length64_block",
        StillReachable,
        "LENGTH64_BYTES",
    );
}

#[test]
fn a_pointer_only_in_a_register_of_a_blocked_thread_keeps_its_block() {
    let Some(_bpf) = require_bpf() else { return };
    assert_one_block(
        "register",
        "register_block",
        StillReachable,
        "REGISTER_BYTES",
    );
}

#[test]
fn a_pointer_only_on_another_threads_stack_keeps_its_block() {
    let Some(_bpf) = require_bpf() else { return };
    assert_one_block("thread_stack", "stack_block", StillReachable, "STACK_BYTES");
}

#[test]
fn a_pointer_only_in_the_main_threads_tls_keeps_its_block() {
    let Some(_bpf) = require_bpf() else { return };
    assert_one_block("tls", "tls_block", StillReachable, "TLS_BYTES");
}

/// The library's .bss past its file-backed page, its dynamic TLS (a block glibc allocates
/// in __tls_get_addr, kept in the main thread's DTV), and dlopen's own blocks. Under
/// leaktrace the fixture waits before it exits until the live view names the library's
/// sites.
#[test]
fn pointers_in_a_dlopened_librarys_bss_and_tls_keep_their_blocks() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture("leak_kinds");
    let library = build_fixture_with("leak_kinds_lib", &["-shared", "-fPIC"]);
    let library = library.to_str().unwrap();
    let lib_define = |name| fixture_define("leak_kinds_lib", name);
    let reachable = |bytes| none().with(StillReachable, bytes, 1);
    let expected = [
        ("lib_bss_block", reachable(lib_define("LIB_BSS_BYTES"))),
        ("lib_tls_block", reachable(lib_define("LIB_TLS_BYTES"))),
        ("lib_keep", reachable(8)), // glibc's TLS block for the library's one pointer
    ];
    let valgrind = valgrind_checked(&binary, &["library", library], &expected);
    let args = ["library", library, "wait"];
    let (report, stdout) = launch_until_named("scan_library", &binary, &args, "lib_tls_block");
    assert_like_valgrind("library", &report, &stdout, &valgrind);
}

/// glibc's main_arena keeps chunk addresses that fall inside lost blocks: the unsorted
/// bin's list head and the top chunk. They are no pointers of the program's.
#[test]
fn the_allocators_own_pointers_into_lost_blocks_do_not_keep_them() {
    let Some(_bpf) = require_bpf() else { return };
    let lost = |bytes| none().with(DefinitelyLost, bytes, 1);
    assert_scenario(
        "arena",
        &[
            ("arena_below_free", lost(define("ARENA_BELOW_FREE_BYTES"))),
            ("arena_below_top", lost(define("ARENA_BELOW_TOP_BYTES"))),
        ],
    );
}

#[test]
fn a_pointer_left_in_freed_memory_does_not_keep_its_block() {
    let Some(_bpf) = require_bpf() else { return };
    assert_one_block(
        "stale",
        "stale_target",
        DefinitelyLost,
        "STALE_TARGET_BYTES",
    );
}

#[test]
fn a_block_freed_after_it_was_lost_is_no_leak_at_exit() {
    let Some(_bpf) = require_bpf() else { return };
    assert_scenario("freed", &[("freed_block", none())]);
}

fn cxx_define(name: &str) -> u64 {
    fixture_define("leak_kinds_cxx", name)
}

/// [`assert_scan_matches_valgrind`] on `leak_kinds_cxx SCENARIO`, whose one site holds
/// `bytes` in a block reachable by one of valgrind's heuristics.
fn assert_cxx_heuristic(scenario: &str, site: &str, bytes: u64) {
    let reachable = none().with(StillReachable, bytes, 1);
    let binary = build_fixture("leak_kinds_cxx");
    assert_scan_matches_valgrind(&binary, &[scenario], &[(site, reachable)]);
}

#[test]
fn a_cow_string_known_by_its_characters_is_reachable_by_the_stdstring_heuristic() {
    let Some(_bpf) = require_bpf() else { return };
    // The header (length, capacity, reference count), the characters, a NUL.
    let bytes = 24 + cxx_define("STRING_CHARS") + 1;
    assert_cxx_heuristic("string", "keep_string", bytes);
}

#[test]
fn a_new_array_known_past_its_count_is_reachable_by_the_newarray_heuristic() {
    let Some(_bpf) = require_bpf() else { return };
    let bytes = 8 + 8 * cxx_define("ARRAY_ELEMENTS");
    assert_cxx_heuristic("new_array", "keep_array", bytes);
}

#[test]
fn an_object_known_by_its_second_base_is_reachable_by_the_multipleinheritance_heuristic() {
    let Some(_bpf) = require_bpf() else { return };
    let bytes = cxx_define("BOTH_BYTES");
    assert_cxx_heuristic("multiple_inheritance", "keep_second_base", bytes);
}

#[test]
fn no_scan_leaves_the_scan_out_of_both_reports() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture("leak_kinds");
    let (report, stdout) = launch_json("scan_off", &["--no-scan"], &binary, &["cycle"]);
    assert!(report["scan"].is_null(), "{}", report["scan"]);
    for site in report["sites"].as_array().unwrap() {
        assert!(site["scan"].is_null(), "{site:#}");
    }
    let text = TextReport::from_stdout(&stdout);
    assert!(
        !text.lines.iter().any(|l| l.starts_with("leak kinds:")),
        "{text}"
    );
}

/// Attached, leaktrace never saw the blocks allocated before: their bytes, like every
/// writable byte outside the blocks it tracks, are roots. Blocks allocated after the attach
/// and kept by address anywhere (see leak_kinds.c's `planted`) are all still reachable; the
/// one whose only pointer was dropped is definitely lost.
#[test]
fn attached_a_block_kept_anywhere_is_reachable_and_a_dropped_one_lost() {
    let Some(_bpf) = require_bpf() else { return };
    let mut fixture = start_ready(&build_fixture("leak_kinds"), &["planted"]);
    let json = output_path("scan_planted", "json");
    let mut leaktrace = attach_with_json(fixture.pid(), &json, &["--scan"]);
    fixture.signal(libc::SIGUSR1);
    let planted = fixture.stdout.wait_for(|l| l.starts_with("planted "), WAIT);
    let planted: u64 = planted["planted ".len()..].parse().unwrap();
    leaktrace.signal(libc::SIGINT);
    assert_eq!(leaktrace.wait(WAIT), 0, "{:?}", leaktrace.stderr.rest());

    let report = read_json(&json);
    let planted_bytes = planted * define("PLANTED_BYTES");
    let expected = [
        (
            "planted_block",
            none().with(StillReachable, planted_bytes, planted),
        ),
        (
            "chain_block",
            none().with(StillReachable, define("CHAIN_BYTES"), 1),
        ),
        (
            "leaked_block",
            none().with(DefinitelyLost, define("LEAKED_BYTES"), 1),
        ),
    ];
    let live = live_sites(&report);
    for (site, kinds) in &expected {
        let traced = of_site(&live, site);
        assert_eq!(traced, kinds.total(), "{site} live, of {live:#?}");
    }
    assert!(report["scan"].is_object(), "no scan in the report");
    let sites = leaktrace_sites(&report);
    for (site, kinds) in &expected {
        assert_eq!(of_site(&sites, site), *kinds, "{site}, of {sites:#?}");
    }
}

/// `leaktrace ARGS -- leak_kinds SCENARIO`, to its end: its exit code and stderr.
fn gate(args: &[&str], scenario: &str) -> (i32, Vec<String>) {
    let binary = build_fixture("leak_kinds");
    let mut leaktrace = Running::start(
        std::process::Command::new(LEAKTRACE)
            .args(args)
            .arg("--")
            .arg(&binary)
            .arg(scenario),
    );
    let code = leaktrace.wait(WAIT);
    (code, leaktrace.stderr.rest())
}

/// As valgrind's --error-exitcode: leaked bytes of the kinds asked for (definite and
/// possible by default) make the run exit with the code asked for, unless a suppression in
/// LeakSanitizer's format names their site; a bad suppressions file is exit 12.
#[test]
fn error_exitcode_gates_a_run_on_its_leaks_and_suppressions_lift_it() {
    let Some(_bpf) = require_bpf() else { return };
    // The lost cycle: definitely and indirectly lost, at cycle_node.
    let (code, stderr) = gate(&["--error-exitcode", "42"], "cycle");
    assert_eq!(code, 42, "{stderr:#?}");
    let bytes = thousands(define("CYCLE_NODE_BYTES"));
    assert!(
        stderr
            .last()
            .is_some_and(|l| l.contains(&format!("{bytes} bytes in 1 blocks leaked"))),
        "the definitely lost node alone counts by default: {stderr:#?}"
    );
    // Only still reachable blocks: nothing of the default kinds.
    assert_eq!(gate(&["--error-exitcode", "42"], "tls").0, 0);
    let reachable = [
        "--error-exitcode",
        "42",
        "--errors-for-leak-kinds",
        "reachable",
    ];
    assert_eq!(gate(&reachable, "tls").0, 42);

    let suppressions = output_path("cycle", "supp");
    std::fs::write(&suppressions, "# the fixture's own\nleak:^cycle_node$\n").unwrap();
    let path = suppressions.to_str().unwrap();
    let with = ["--error-exitcode", "42", "--suppressions", path];
    assert_eq!(gate(&with, "cycle").0, 0);

    std::fs::write(&suppressions, "race:cycle_node\n").unwrap();
    let (code, stderr) = gate(&with, "cycle");
    assert_eq!(code, 12, "{stderr:#?}");
    assert_eq!(stderr.len(), 1, "one line: {stderr:#?}");
    assert!(stderr[0].contains("leak:PATTERN"), "{stderr:#?}");
}

/// `--leak-check-heuristics` chooses them, as valgrind's option: with none, the new[] array
/// known past its count is known by an inner pointer alone, and so possibly lost; with
/// newarray alone, reachable again.
#[test]
fn heuristics_are_chosen_as_in_valgrind() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture("leak_kinds_cxx");
    let bytes = 8 + 8 * cxx_define("ARRAY_ELEMENTS");
    for (choice, kind) in [("none", "possibly_lost"), ("newarray", "still_reachable")] {
        let options = ["--leak-check-heuristics", choice];
        let (report, _) = launch_json("heuristics", &options, &binary, &["new_array"]);
        let site = report["sites"]
            .as_array()
            .unwrap()
            .iter()
            .find(|site| site_name_of(site).as_deref() == Some("keep_array"))
            .unwrap_or_else(|| panic!("no keep_array site: {report:#}"));
        assert_eq!(
            site["scan"][kind]["bytes"], bytes,
            "{choice}: {:#}",
            site["scan"]
        );
        assert_eq!(
            site["scan"][kind]["blocks"], 1,
            "{choice}: {:#}",
            site["scan"]
        );
    }
}

/// A target another tracer holds (a debugger) cannot be frozen for a scan: one line that
/// says so, and exit 11.
#[test]
fn a_target_a_debugger_holds_is_refused_with_exit_11() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture("leak_kinds");
    let target = start_ready(&binary, &["planted"]);
    // This test's thread is the "debugger": it seizes the target, which runs on.
    // SAFETY: PTRACE_SEIZE on a child of ours; no memory is passed.
    let seized = unsafe { libc::ptrace(libc::PTRACE_SEIZE, target.pid(), 0, 0) };
    assert_eq!(seized, 0, "{}", std::io::Error::last_os_error());
    let json = output_path("traced", "json");
    let mut leaktrace = attach_with_json(
        target.pid(),
        &json,
        &["--scan", "--count", "1", "-i", "100ms"],
    );
    let code = leaktrace.wait(WAIT);
    let stderr = leaktrace.stderr.rest();
    assert_eq!(code, 11, "{stderr:#?}");
    let last = stderr.last().expect("an error line");
    assert!(last.contains("is traced by pid"), "{stderr:#?}");
}
