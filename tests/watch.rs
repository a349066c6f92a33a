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
    // A reading every 250 ms for 3 s; fewer on a machine too busy to read smaps that often,
    // but never fewer than a trend needs.
    let samples: Vec<&str> = stdout.lines().filter(|l| l.starts_with('[')).collect();
    assert!(samples.len() >= 3, "{stdout}");
    // Sizes for people: "RSS 3.4 MiB  HWM …", not a count of bytes.
    for sample in samples {
        assert!(sample.contains("iB  HWM "), "{sample}");
    }
    stdout.lines().last().unwrap().to_owned()
}

#[test]
fn watch_says_growing_when_rss_grows() {
    let last = verdict("grow");
    assert!(last.contains("RSS growing at +"), "{last}");
    // A rate for people: "+97.7 KiB/s".
    assert!(
        last.contains("KiB/s (R²") || last.contains("MiB/s (R²"),
        "{last}"
    );
}

#[test]
fn watch_says_stable_for_an_idle_process() {
    let last = verdict("idle");
    assert!(last.contains("RSS stable"), "{last}");
}

/// A pid freed by its process's exit and handed to a new process is not the old process:
/// `watch` says the one it watched is gone instead of reading on from the newcomer.
#[test]
fn watch_never_takes_a_recycled_pid_for_the_process_it_watched() {
    let Some(_root) = require_root("forcing the next pid (ns_last_pid) needs root") else {
        return;
    };
    let mut old = Command::new("sleep").arg("600").spawn().unwrap();
    let pid = old.id();
    let mut watch = Running::start(Command::new(LEAKTRACE).args([
        "watch",
        "-p",
        &pid.to_string(),
        "-i",
        "100ms",
    ]));
    watch.stdout.wait_for(|l| l.contains(" RSS "), WAIT);
    // Stop the watch between readings, so that the old process's exit and the new one's
    // start both fall inside one interval.
    watch.signal(libc::SIGSTOP);
    old.kill().unwrap();
    old.wait().unwrap();
    // The kernel gives out last_pid + 1 next; other processes may win the race: retry.
    let newcomer = (0..50)
        .find_map(|_| {
            std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).ok()?;
            let mut child = Command::new("sleep").arg("600").spawn().ok()?;
            if child.id() == pid {
                Some(child)
            } else {
                let _ = child.kill();
                let _ = child.wait();
                None
            }
        })
        .expect("pid reused within 50 tries");
    watch.signal(libc::SIGCONT);
    watch
        .stdout
        .wait_for(|l| l == format!("pid {pid} is gone"), WAIT);
    assert_eq!(watch.wait(WAIT), 0);
    let mut newcomer = newcomer;
    newcomer.kill().unwrap();
    newcomer.wait().unwrap();
}
