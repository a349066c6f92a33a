//! Tracing changes nothing the target does: the same output, the same exit code, with the
//! reachability scan holding it still every 10 ms and at its exit besides.

mod support;

use std::process::Command;

use support::*;

#[test]
fn a_traced_multithreaded_program_computes_what_it_computes_untraced() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture("checksum");
    let untraced = Command::new(&binary).output().unwrap();
    let checksum = |stdout: &[u8]| {
        String::from_utf8_lossy(stdout)
            .lines()
            .find(|l| l.starts_with("checksum "))
            .map(str::to_owned)
    };
    let expected = checksum(&untraced.stdout).expect("the fixture prints its checksum");
    assert_eq!(
        untraced.status.code(),
        Some(fixture_define("checksum", "EXIT_CODE") as i32)
    );

    let json = output_path("unchanged", "json");
    // The tests run a debug build of leaktrace, which takes in events slower than four
    // threads make them: a ring buffer that holds them all keeps this test about the checksum.
    let traced = Command::new(LEAKTRACE)
        .args(["--ring-bytes", "67108864", "--scan-every", "10ms", "--json"])
        .arg(&json)
        .arg("--")
        .arg(&binary)
        .output()
        .unwrap();
    assert!(
        traced.status.success(),
        "{}",
        String::from_utf8_lossy(&traced.stderr)
    );
    assert_eq!(checksum(&traced.stdout), Some(expected));
    let report = read_json(&json);
    assert_eq!(
        report["ending"]["target_exited"]["status"],
        fixture_define("checksum", "EXIT_CODE"),
        "the target's exit code is its own"
    );
    // And it was traced: every round's block was seen and freed.
    let rounds = fixture_define("checksum", "THREADS") * fixture_define("checksum", "ROUNDS");
    assert!(report["totals"]["allocs"].as_u64().unwrap() >= rounds * 2);
    assert_nothing_lost(&report);
    // Scanned at its exit at least, with every block it left accounted for.
    let scan = &report["scan"];
    let kinds = [
        "definitely_lost",
        "indirectly_lost",
        "possibly_lost",
        "still_reachable",
    ];
    let blocks: u64 = kinds
        .iter()
        .map(|k| scan[k]["blocks"].as_u64().unwrap())
        .sum();
    assert_eq!(
        blocks,
        report["totals"]["live_allocations"].as_u64().unwrap(),
        "{scan:#}"
    );
}
