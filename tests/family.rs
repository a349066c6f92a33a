//! Every door into the allocator, traced from a program's start: exact bytes and blocks per
//! door, and the same "in use at exit" as valgrind where valgrind supports the door.

mod support;

use std::{process::Command, time::Duration};

use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(60);

/// `leaktrace --json … -- BINARY ARGS…`: the report, and leaktrace's stdout.
fn launch(test: &str, binary: &std::path::Path, args: &[&str]) -> (Value, Vec<String>) {
    let json = output_path(test, "json");
    let mut leaktrace = Running::start(
        Command::new(LEAKTRACE)
            .arg("--json")
            .arg(&json)
            .arg("--")
            .arg(binary)
            .args(args),
    );
    assert_eq!(leaktrace.wait(WAIT), 0, "{:?}", leaktrace.stderr.rest());
    (read_json(&json), leaktrace.stdout.rest())
}

/// One door of `doors.c`: its leak_DOOR site holds exactly DOOR_BYTES in DOOR_BLOCKS, the
/// door's failure paths leave nothing, and the totals agree with valgrind.
fn check_door(door: &str, compare_with_valgrind: bool) {
    if !bpf_available() {
        return;
    }
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
        let traced = in_use_at_exit(&stdout).expect("an in-use-at-exit line");
        assert_eq!(
            traced,
            valgrind_in_use_at_exit(&binary, &[door], &[]),
            "{door}"
        );
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
