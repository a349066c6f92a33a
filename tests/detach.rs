//! However leaktrace ends, nothing of it stays in the target: every breakpoint it planted is
//! gone, checked byte for byte in the target's memory. Unless it was killed outright, it also
//! reports what it saw, and how the capture ended.

mod support;

use std::{fs, os::unix::process::ExitStatusExt, path::Path};

use leaktrace::{
    plan::{AllocatorChoice, AllocatorSearch},
    target::maps::ProcessMaps,
};
use serde_json::Value;
use support::*;

/// The first byte of every probed function, as the target's memory has it and as its file does.
fn probed_bytes(pid: u32) -> Vec<(u8, u8)> {
    let maps = ProcessMaps::read(pid).unwrap();
    let plan = AllocatorSearch::new(AllocatorChoice::default())
        .plan(pid, &maps)
        .unwrap();
    plan.points
        .iter()
        .filter_map(|point| {
            let mapping = maps.mappings().iter().find(|m| {
                m.executable
                    && m.path.as_deref() == Some(point.module.as_path())
                    && (m.offset..m.offset + (m.end - m.start)).contains(&point.offset)
            })?;
            let address = mapping.start + (point.offset - mapping.offset);
            let in_memory = read_byte(&format!("/proc/{pid}/mem"), address);
            let in_file = read_byte(point.host_path.to_str().unwrap(), point.offset);
            Some((in_memory, in_file))
        })
        .collect()
}

fn read_byte(path: &str, offset: u64) -> u8 {
    use std::os::unix::fs::FileExt;
    let mut byte = [0u8];
    fs::File::open(Path::new(path))
        .unwrap()
        .read_exact_at(&mut byte, offset)
        .unwrap();
    byte[0]
}

const INT3: u8 = 0xcc;

/// How a row ends leaktrace, attached to a fixture that runs a burst of leaks once the
/// breakpoints are seen in: `fixture busy`, which calls malloc and free all along, or for the
/// panic `fixture burst`, quiet until then.
#[derive(Clone, Copy, Debug)]
enum End {
    /// This signal, sent once the burst is done.
    Signal(i32),
    /// The `-d` window closes, long after the burst is done.
    Window,
    /// leaktrace's debug builds panic on purpose after `LEAKTRACE_PANIC_AFTER` records: here
    /// amid the burst.
    Panic,
}

/// The window of [`End::Window`]: the burst it must hold takes milliseconds.
const WINDOW: &str = "10s";

/// What leaktrace must leave behind, besides a target without breakpoints.
#[derive(Clone, Copy, Debug)]
enum Leaves {
    /// A text and a JSON report that say the capture ended so.
    Report(Ended),
    /// No report: SIGKILL gives leaktrace no chance to write one.
    NoReport,
}

use End::*;
use Leaves::*;

/// One #[test] per row, named by it.
macro_rules! rows {
    ($($row:ident: $end:expr => $leaves:expr,)*) => {$(
        #[test]
        fn $row() {
            ends_clean(stringify!($row), $end, $leaves);
        }
    )*};
}

rows! {
    sigint_detaches_and_reports:                   Signal(libc::SIGINT)  => Report(Ended::Interrupted),
    sigterm_detaches_and_reports:                  Signal(libc::SIGTERM) => Report(Ended::Interrupted),
    sighup_detaches_and_reports:                   Signal(libc::SIGHUP)  => Report(Ended::Interrupted),
    the_end_of_the_window_detaches_and_reports:    Window                => Report(Ended::WindowElapsed),
    a_panic_inside_leaktrace_detaches_and_reports: Panic                 => Report(Ended::Failed),
    kill_9_leaves_nothing_attached:                Signal(libc::SIGKILL) => NoReport,
}

/// Attaches to a fixture, checks the breakpoints are in, ends leaktrace as the row says,
/// checks they are all gone and that leaktrace left what the row says.
fn ends_clean(row: &str, end: End, leaves: Leaves) {
    let Some(_bpf) = require_bpf() else { return };
    // The panic must not come before the breakpoints are seen in: no record before the burst.
    let (mode, args, env): (_, &[&str], &[(&str, &str)]) = match end {
        Panic => ("burst", &[], &[("LEAKTRACE_PANIC_AFTER", "100")]),
        Window => ("busy", &["-d", WINDOW], &[]),
        Signal(_) => ("busy", &[], &[]),
    };
    let mut target = start_ready(&build_fixture("fixture"), &[mode]);
    let json = output_path(&format!("detach_{row}"), "json");
    let _ = fs::remove_file(&json);
    let mut leaktrace = attach_with_json_env(target.pid(), &json, args, env);
    let planted = probed_bytes(target.pid());
    assert!(!planted.is_empty(), "{row}: nothing probed");
    assert!(
        planted.iter().all(|&(memory, _)| memory == INT3),
        "{row}: the probes are in: {planted:?}"
    );
    run_burst(&mut target);
    if let Signal(signal) = end {
        leaktrace.signal(signal);
    }
    let status = leaktrace.wait_status(WAIT);
    let left = probed_bytes(target.pid());
    assert!(
        left.iter().all(|&(memory, file)| memory == file),
        "{row}: breakpoints left behind: {left:?}"
    );
    let stderr = leaktrace.stderr.rest();
    match leaves {
        NoReport => {
            assert_eq!(status.signal(), Some(libc::SIGKILL), "{row}: {stderr:?}");
            assert!(!json.exists(), "{row}: a report from a killed leaktrace");
        }
        Report(ended) => {
            let failed = ended == Ended::Failed;
            assert_eq!(status.code(), Some(failed.into()), "{row}: {stderr:?}");
            let stdout = leaktrace.stdout.rest();
            let report = read_json(&json);
            if failed {
                assert_partial_report(row, &stdout, &stderr, &report);
            } else {
                assert_burst_reported(row, &stdout, &report, ended);
            }
        }
    }
}

/// After the injected panic: the panic is on stderr, and the report holds the burst's first
/// leaks, those taken in before it, each whole, none freed, the text as the JSON.
fn assert_partial_report(row: &str, stdout: &[String], stderr: &[String], json: &Value) {
    assert!(
        stderr.iter().any(|l| l.contains("LEAKTRACE_PANIC_AFTER")),
        "{row}: the panic is told: {stderr:#?}"
    );
    let text = TextReport::from_stdout(stdout);
    Ended::Failed.assert_said(row, &text, json);
    let leak_bytes = fixture_define("fixture", "LEAK_BYTES");
    let traced = sites_of(json, "leak_here");
    let shown = text.sites_of("leak_here");
    let leaks = fixture_define("fixture", "BURST_LEAKS");
    assert!(
        (1..=leaks).contains(&traced.live_allocations),
        "{row}: {traced:?}: {text}"
    );
    assert_eq!(
        (traced.live_bytes, traced.allocs, traced.frees),
        (
            traced.live_allocations * leak_bytes,
            traced.live_allocations,
            0
        ),
        "{row}: {traced:?}"
    );
    assert_eq!(
        (shown.live_bytes, shown.live_allocations),
        (traced.live_bytes, traced.live_allocations),
        "{row}: {text}"
    );
    let totals = &json["totals"];
    assert_eq!(
        text.held(),
        (
            totals["live_bytes"].as_u64().unwrap(),
            totals["live_allocations"].as_u64().unwrap()
        ),
        "{row}: the text's in-use figure"
    );
}
