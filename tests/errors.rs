//! Bad input: one line on stderr, a distinct exit code, and no capture started.

mod support;

use std::process::{Command, Output};

use support::*;

fn run(args: &[&str]) -> Output {
    Command::new(LEAKTRACE).args(args).output().unwrap()
}

fn assert_one_line_error(output: &Output, code: i32, mentions: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains(mentions),
        "{stderr:?} should mention {mentions:?}"
    );
}

#[test]
fn a_pid_that_does_not_exist_exits_3() {
    // A child that has been reaped: its pid names no process now.
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let output = run(&["-p", &pid.to_string()]);
    assert_one_line_error(&output, 3, &format!("no process with pid {pid}"));
}

#[test]
fn a_command_that_cannot_start_exits_7() {
    let output = run(&["--", "/nonexistent/program"]);
    assert_one_line_error(&output, 7, "could not start `/nonexistent/program`");
}

#[test]
fn an_output_file_in_a_missing_directory_exits_8_before_attaching() {
    let output = run(&["--json", "/nonexistent-dir/r.json", "-p", "1"]);
    assert_one_line_error(&output, 8, "/nonexistent-dir");
}

#[test]
fn a_bad_duration_exits_2_and_says_how_to_write_one() {
    let output = run(&["-d", "soon", "-p", "1"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("like 500ms, 30s or 5m"));
}
