//! `leaktrace watch`: process memory alone, and a verdict on its trend.

mod support;

use std::process::Command;

use support::*;

/// `leaktrace watch` on `rss MODE` for a few seconds: its last line.
fn verdict(mode: &str) -> String {
    let binary = build_fixture("rss");
    let target = start_ready(&binary, &[mode]);
    let output = Command::new(LEAKTRACE)
        .args([
            "watch",
            "-p",
            &target.pid().to_string(),
            "-i",
            "250ms",
            "-d",
            "3s",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let samples = stdout.lines().filter(|l| l.contains(" RSS ")).count();
    assert!(samples >= 10, "a reading every 250 ms for 3 s: {stdout}");
    stdout.lines().last().unwrap().to_owned()
}

#[test]
fn watch_says_growing_when_rss_grows() {
    let last = verdict("grow");
    assert!(last.contains("RSS growing at"), "{last}");
}

#[test]
fn watch_says_stable_for_an_idle_process() {
    let last = verdict("idle");
    assert!(last.contains("RSS stable"), "{last}");
}
