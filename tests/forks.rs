//! `-f` on a process that forks short-lived children at a steady pace: every child forked in
//! the window is reported or counted as missed, no probe stays in the parent once leaktrace
//! is done, and leaktrace's memory does not grow with the children.

mod support;

use std::{
    collections::HashSet,
    fs,
    io::{Read, Seek, SeekFrom},
};

use serde_json::Value;
use support::*;

/// Children forked, one every PERIOD_MS; each lives CHILD_MS.
const FORKS: u32 = 300;
const PERIOD_MS: &str = "10";
const CHILD_MS: &str = "1";

/// The byte of the parent's memory at each probed point of the report, with the byte of the
/// file there: (symbol, in memory, in the file).
fn probed_bytes(pid: u32, report: &Value) -> Vec<(String, u8, u8)> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut memory = fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let points = report["cost"]["points"].as_array().expect("probe points");
    let mut bytes = Vec::new();
    for point in points {
        let module = point["module"].as_str().unwrap();
        let offset = point["offset"].as_str().unwrap();
        let offset = u64::from_str_radix(offset.trim_start_matches("0x"), 16).unwrap();
        let address = maps.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(5) != Some(&module) {
                return None;
            }
            let (start, end) = fields[0].split_once('-')?;
            let start = u64::from_str_radix(start, 16).ok()?;
            let end = u64::from_str_radix(end, 16).ok()?;
            let mapped = u64::from_str_radix(fields[2], 16).ok()?;
            (mapped..mapped + (end - start))
                .contains(&offset)
                .then(|| start + offset - mapped)
        });
        let address = address.unwrap_or_else(|| panic!("{module}+{offset:#x} is not mapped"));
        let mut in_memory = [0u8];
        memory.seek(SeekFrom::Start(address)).unwrap();
        memory.read_exact(&mut in_memory).unwrap();
        let mut in_file = [0u8];
        let mut file = fs::File::open(module).unwrap();
        file.seek(SeekFrom::Start(offset)).unwrap();
        file.read_exact(&mut in_file).unwrap();
        let symbol = point["symbol"].as_str().unwrap().to_owned();
        bytes.push((symbol, in_memory[0], in_file[0]));
    }
    bytes
}

/// One capture of the forking fixture, `-f` or not, ended once it has forked every child.
/// Its report, leaktrace's peak RSS (KiB), the children the fixture forked, and the fixture,
/// still running, for a look at its memory.
struct Capture {
    report: Value,
    peak_rss_kib: u64,
    forked: HashSet<i64>,
    fixture: Running,
}

fn capture(test: &str, options: &[&str]) -> Capture {
    let binary = build_fixture("forks");
    let mut fixture = start_ready(&binary, &[&FORKS.to_string(), PERIOD_MS, CHILD_MS]);
    let json = output_path(test, "json");
    let leaktrace = attach_with_json(fixture.pid(), &json, options);
    fixture.signal(libc::SIGUSR1);
    fixture
        .stdout
        .wait_for(|l| l == format!("forked all {FORKS}"), WAIT);
    // The report of a capture ended now has every probe point: read the bytes there after.
    leaktrace.signal(libc::SIGINT);
    let (code, peak_rss_kib, _) = leaktrace.wait_with_peak_rss(WAIT);
    assert_eq!(code, 0);
    let report = read_json(&json);
    let forked = fixture
        .stdout
        .received()
        .iter()
        .filter_map(|l| l.strip_prefix("forked ")?.parse().ok())
        .collect();
    Capture {
        report,
        peak_rss_kib,
        forked,
        fixture,
    }
}

#[test]
fn follow_forks_reports_or_counts_every_child_and_leaves_no_probe_behind() {
    let Some(_bpf) = require_bpf() else { return };
    let without = capture("forks_not_followed", &[]);
    let with = capture("forks_followed", &["-f"]);

    assert_eq!(with.forked.len(), FORKS as usize);
    assert_nothing_lost(&with.report);
    let followed: HashSet<i64> = with.report["processes"]
        .as_array()
        .map(|p| p.iter().filter_map(|r| r["pid"].as_i64()).collect())
        .unwrap_or_default();
    assert!(
        followed.is_subset(&with.forked),
        "reported pids the fixture did not fork: {:?}",
        followed.difference(&with.forked).collect::<Vec<_>>()
    );
    let missed = with.report["children_missed"]
        .as_u64()
        .expect("children_missed in the JSON report");
    assert_eq!(
        followed.len() as u64 + missed,
        u64::from(FORKS),
        "followed {} + missed {missed}",
        followed.len()
    );
    eprintln!(
        "followed {}, missed {missed}; peak RSS {} KiB with -f, {} KiB without",
        followed.len(),
        with.peak_rss_kib,
        without.peak_rss_kib
    );
    assert!(
        without.report.get("children_missed").is_none(),
        "no children counted without -f"
    );

    // Once leaktrace has exited, the parent's code at every probed point is the file's again.
    let parent = with.fixture.pid();
    for (symbol, in_memory, in_file) in probed_bytes(parent, &with.report) {
        assert_eq!(
            in_memory, in_file,
            "{symbol}: the parent still has a breakpoint ({in_memory:#x}) after leaktrace exited"
        );
    }
    // While leaktrace is attached, each of those points is a breakpoint (int3): what the
    // check above looks for is there to see.
    let json = output_path("forks_attached_again", "json");
    let again = attach_with_json(parent, &json, &[]);
    for (symbol, in_memory, _) in probed_bytes(parent, &with.report) {
        assert_eq!(in_memory, 0xcc, "{symbol}: no breakpoint while attached");
    }
    again.signal(libc::SIGINT);
    let (code, _, _) = again.wait_with_peak_rss(WAIT);
    assert_eq!(code, 0);
    assert!(
        with.peak_rss_kib <= 2 * without.peak_rss_kib,
        "leaktrace -f peaked at {} KiB, without -f at {} KiB",
        with.peak_rss_kib,
        without.peak_rss_kib
    );
}
