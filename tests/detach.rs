//! However leaktrace ends, nothing of it stays in the target: every breakpoint it planted is
//! gone, checked byte for byte in the target's memory.

mod support;

use std::{fs, path::Path, time::Duration};

use leaktrace::{
    allocator::{AllocatorChoice, AllocatorSearch},
    proc_maps::ProcessMaps,
};
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

/// Attaches to a fixture, checks the breakpoints are in, ends leaktrace with `end`, and checks
/// they are all gone; returns whether the JSON report was written.
fn ends_clean(test: &str, args: &[&str], end: impl FnOnce(&Running)) -> bool {
    ends_clean_with(test, args, &[], end).0
}

/// [`ends_clean`] with environment variables for leaktrace; also returns its exit code.
fn ends_clean_with(
    test: &str,
    args: &[&str],
    env: &[(&str, &str)],
    end: impl FnOnce(&Running),
) -> (bool, Option<i32>) {
    let target = start_ready(&build_fixture("fixture"), &["continuous"]);
    let json = output_path(test, "json");
    let _ = fs::remove_file(&json);
    let mut leaktrace = attach_with_json_env(target.pid(), &json, args, env);
    let planted = probed_bytes(target.pid());
    assert!(!planted.is_empty());
    assert!(
        planted.iter().all(|&(memory, _)| memory == INT3),
        "the probes are in: {planted:?}"
    );
    end(&leaktrace);
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = leaktrace.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "leaktrace did not end"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let left = probed_bytes(target.pid());
    assert!(
        left.iter().all(|&(memory, file)| memory == file),
        "breakpoints left behind: {left:?}"
    );
    (json.exists(), status.code())
}

/// leaktrace's debug builds panic on purpose after `LEAKTRACE_PANIC_AFTER` records.
#[test]
fn a_panic_inside_leaktrace_detaches_and_reports() {
    let Some(_bpf) = require_bpf() else { return };
    let (written, code) = ends_clean_with(
        "detach_panic",
        &[],
        &[("LEAKTRACE_PANIC_AFTER", "100")],
        |_| {},
    );
    assert!(written, "the report is written");
    assert_eq!(code, Some(1), "and leaktrace says it failed");
    let report = read_json(&output_path("detach_panic", "json"));
    assert_eq!(report["ending"], "failed");
    assert!(report["totals"]["allocs"].as_u64().unwrap() > 0);
}

fn signal(leaktrace: &Running, signal: i32) {
    leaktrace.signal(signal);
}

#[test]
fn sigint_detaches_and_reports() {
    let Some(_bpf) = require_bpf() else { return };
    assert!(ends_clean("detach_sigint", &[], |l| signal(
        l,
        libc::SIGINT
    )));
}

#[test]
fn sigterm_detaches_and_reports() {
    let Some(_bpf) = require_bpf() else { return };
    assert!(ends_clean("detach_sigterm", &[], |l| signal(
        l,
        libc::SIGTERM
    )));
}

#[test]
fn sighup_detaches_and_reports() {
    let Some(_bpf) = require_bpf() else { return };
    assert!(ends_clean("detach_sighup", &[], |l| signal(
        l,
        libc::SIGHUP
    )));
}

#[test]
fn the_end_of_the_window_detaches_and_reports() {
    let Some(_bpf) = require_bpf() else { return };
    assert!(ends_clean("detach_duration", &["-d", "1s"], |_| {}));
}

#[test]
fn kill_9_leaves_nothing_attached() {
    let Some(_bpf) = require_bpf() else { return };
    // No report can be written; the kernel takes the probes away with leaktrace's files.
    ends_clean("detach_kill", &[], |l| signal(l, libc::SIGKILL));
}
