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
fn a_program_without_malloc_exits_5() {
    let binary = build_fixture_with("no_malloc", &["-static", "-nostdlib", "-ffreestanding"]);
    let target = Running::start(&mut Command::new(binary));
    let output = run(&["-p", &target.pid().to_string()]);
    assert_one_line_error(&output, 5, "no allocator found");
}

/// Runs leaktrace as the unprivileged user `nobody`, the way an operator without sudo would.
fn run_as_nobody(args: &[&str]) -> Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(LEAKTRACE)
        .args(args)
        .output()
        .expect("run setpriv (util-linux)")
}

#[test]
fn an_unprivileged_user_is_told_which_capability_is_missing() {
    let Some(_root) = require_root("becoming another user needs root") else {
        return;
    };
    // Someone else's process: not ours to trace. Every capability lacking is named.
    let output = run_as_nobody(&["-p", "1"]);
    assert_one_line_error(&output, 4, "lacks CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE");
    // Watching it takes less: its owner's uid, or CAP_SYS_PTRACE.
    let output = run_as_nobody(&["watch", "-p", "1"]);
    assert_one_line_error(&output, 4, "belongs to another user");
    assert_one_line_error(&output, 4, "lacks CAP_SYS_PTRACE");

    // Our own process: readable, but loading BPF needs capabilities.
    let own = Running::start(Command::new("setpriv").args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "sleep",
        "30",
    ]));
    // Wait for setpriv to become sleep, so the pid's maps name libc.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{}/comm", own.pid())).unwrap() != "sleep\n" {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let output = run_as_nobody(&["-p", &own.pid().to_string()]);
    assert_one_line_error(&output, 4, "lacks CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE");
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

/// Every output that could not be written is refused before the probes go in (pid 1 is never
/// attached to: the check comes first), with the reason.
#[test]
fn outputs_that_cannot_be_written_exit_8_before_attaching() {
    let dir = std::env::temp_dir();
    let same = output_path("twice", "out");
    let same = same.to_str().unwrap();
    for (args, mentions) in [
        (vec!["--json", dir.to_str().unwrap()], "is a directory"),
        (
            vec!["--json", "/proc/leaktrace-report.json"],
            "cannot create a file",
        ),
        (
            vec!["--json", same, "--html", same],
            "another report goes there",
        ),
        (vec!["--json", "-", "--folded", "-"], "only one report"),
    ] {
        let output = run(&[&args[..], &["-p", "1"]].concat());
        assert_one_line_error(&output, 8, mentions);
    }
}

#[test]
fn a_bad_duration_exits_2_and_says_how_to_write_one() {
    let output = run(&["-d", "soon", "-p", "1"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("like 500ms, 30s or 5m"));
}

#[test]
fn an_output_path_that_is_a_symbolic_link_exits_8_before_attaching() {
    let link = output_path("symlinked", "json");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
    let output = run(&["--json", link.to_str().unwrap(), "-p", "1"]);
    assert_one_line_error(&output, 8, "symbolic link");
}

#[test]
fn a_kernel_thread_exits_9() {
    // A kernel thread has PF_KTHREAD (0x00200000) in the flags of /proc/PID/stat.
    let kernel_thread = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let after_name = stat.rsplit(')').next().unwrap_or_default();
            let flags = after_name
                .split_whitespace()
                .nth(6)
                .and_then(|f| f.parse::<u64>().ok());
            flags.is_some_and(|f| f & 0x0020_0000 != 0)
        })
        .expect("kernel threads are visible in /proc");
    let output = run(&["-p", &kernel_thread.to_string()]);
    assert_one_line_error(&output, 9, "kernel thread");
}

#[test]
fn a_zombie_exits_10() {
    // A child that has exited and that we do not reap yet.
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap()
        .contains(") Z ")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the child never exited"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let output = run(&["-p", &pid.to_string()]);
    child.wait().unwrap();
    assert_one_line_error(&output, 10, "zombie");
}

/// The target exits while leaktrace attaches to it: leaktrace, stopped once it says what it
/// is about to probe, goes on when the target has been killed and reaped, and says that the
/// target exited, with exit code 3, through either kind of attachment. (Debug builds take
/// `LEAKTRACE_SINGLE_UPROBES` to attach one perf-event uprobe per point.)
#[test]
fn a_target_that_exits_while_leaktrace_attaches_exits_3() {
    let Some(_bpf) = require_bpf() else { return };
    for (attachment, env) in [
        ("uprobe_multi", &[][..]),
        ("perf-event", &[("LEAKTRACE_SINGLE_UPROBES", "1")][..]),
    ] {
        let mut target = start_ready(&build_fixture("fixture"), &["burst"]);
        let pid = target.pid();
        let mut leaktrace = Running::start(
            Command::new(LEAKTRACE)
                .args(["-v", "-p", &pid.to_string()])
                .envs(env.iter().copied()),
        );
        leaktrace.stderr.wait_for(|l| l.contains(" probing "), WAIT);
        leaktrace.signal(libc::SIGSTOP);
        target.child.kill().unwrap();
        target.child.wait().unwrap();
        leaktrace.signal(libc::SIGCONT);
        let code = leaktrace.wait(WAIT);
        let stderr = leaktrace.stderr.rest();
        assert_eq!(code, 3, "{attachment}: {stderr:#?}");
        let said = stderr.last().unwrap();
        assert!(
            said.starts_with(&format!(
                "leaktrace: pid {pid} exited while leaktrace attached to it"
            )),
            "{attachment}: {said}"
        );
    }
}

/// The disk fills up during the capture: the paths could take a file when leaktrace checked
/// them, and no report fits when it writes them. Every report is tried, each one that could
/// not be written is named with why, and leaktrace exits 8. (The full disk is a tmpfs of one
/// page, filled, mounted where only leaktrace's own mount namespace sees it.)
#[test]
fn a_full_disk_names_every_report_it_could_not_write_and_exits_8() {
    let Some(_bpf) = require_bpf() else { return };
    let dir = output_path("full-disk", "d");
    std::fs::create_dir_all(&dir).unwrap();
    let dir = dir.to_str().unwrap();
    let reports =
        ["json", "flamegraph", "html"].map(|format| (format, format!("{dir}/r.{format}")));
    let flags: Vec<String> = reports
        .iter()
        .map(|(format, path)| format!("--{format} {path}"))
        .collect();
    let script = format!(
        "mount -t tmpfs -o size=4k leaktrace-full {dir} && \
         (head -c 1M /dev/zero > {dir}/filler 2>/dev/null || true) && \
         exec {LEAKTRACE} {} -- {} exact",
        flags.join(" "),
        build_fixture("pairs").display()
    );
    let output = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("run unshare (util-linux)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(8), "{stderr}");
    let said = stderr.lines().last().unwrap_or_default();
    for (_, path) in reports {
        assert!(
            said.contains(&format!("cannot write {path}: ")),
            "{path}: {said}"
        );
    }
    assert!(said.contains("No space left on device"), "{said}");
}

/// `--help` on a terminal of 80 columns wraps within them (clap's wrap_help): every line
/// of it, escapes for bold and underline aside.
#[test]
fn help_wraps_to_the_terminal() {
    let command = format!("stty cols 80 rows 40; {LEAKTRACE} --help");
    let output = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .output()
        .expect("run script (util-linux)");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    let mut visible = String::new();
    let mut escape = false;
    for c in help.chars() {
        match c {
            '\x1b' => escape = true,
            'm' if escape => escape = false,
            _ if escape => {}
            '\r' => {}
            _ => visible.push(c),
        }
    }
    assert!(visible.contains("--max-threads"), "{visible}");
    for line in visible.lines() {
        assert!(
            line.chars().count() <= 80,
            "{} columns: {line}",
            line.chars().count()
        );
    }
}

/// `leaktrace man` is a manual page `man` renders, with every flag.
#[test]
fn the_manual_page_renders_with_man() {
    let page = output_path("leaktrace", "1");
    let output = run(&["man"]);
    assert!(output.status.success());
    std::fs::write(&page, &output.stdout).unwrap();
    let rendered = Command::new("man")
        .arg("-l")
        .arg(&page)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "80")
        .output()
        .expect("run man (`cargo xtask test` installs man-db)");
    let text = String::from_utf8_lossy(&rendered.stdout);
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    for wanted in ["leaktrace", "--pid", "--max-threads", "completions"] {
        assert!(text.contains(wanted), "{wanted} missing from:\n{text}");
    }
}

/// `leaktrace completions SHELL` prints a script the shell accepts, offering the flags.
#[test]
fn completion_scripts_parse_in_their_shell() {
    let output = run(&["completions", "bash"]);
    assert!(output.status.success());
    let script = String::from_utf8_lossy(&output.stdout);
    assert!(script.contains("--pid"), "{script}");
    let path = output_path("completion", "bash");
    std::fs::write(&path, &output.stdout).unwrap();
    let status = Command::new("bash").arg("-n").arg(&path).status().unwrap();
    assert!(status.success(), "bash -n rejects the script");
    let unknown = run(&["completions", "nosuchshell"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("possible values: bash"));
}
