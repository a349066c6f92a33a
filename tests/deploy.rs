//! The deployment files in deploy/, checked by what consumes them: promtool takes the scrape
//! config and the alerting rules and runs the rules' unit tests, systemd-analyze verifies the
//! unit, Debian's Prometheus runs with the rules, and leaktrace runs with exactly the unit's
//! capabilities and system call filter.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use support::{
    prometheus::{Prometheus, Scrape, rules_file, sample_values},
    *,
};

/// The uid the unit's DynamicUser=yes gives the service: the first of systemd's dynamic range,
/// neither root nor the owner of what leaktrace traces.
const SERVICE_UID: u32 = 61184;

fn deployed(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

/// Runs a checker that must accept what it checks; its stdout and stderr together.
fn accepted(command: &mut Command, package: &str) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("run {command:?} (`cargo xtask test` installs {package}): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{command:?} refused it: {text}");
    text
}

#[test]
fn promtool_accepts_the_scrape_config_and_the_rules_it_names() {
    let config = deployed("prometheus/prometheus.yml");
    let text = accepted(
        Command::new("promtool")
            .args(["check", "config"])
            .arg(&config),
        "prometheus",
    );
    // check config checks the rule files the config names too: the deployed ones.
    assert!(text.contains("SUCCESS: 1 rule files found"), "{text}");
    assert!(text.contains("SUCCESS: 3 rules found"), "{text}");
    let text = accepted(
        Command::new("promtool")
            .args(["check", "rules"])
            .arg(rules_file()),
        "prometheus",
    );
    assert!(text.contains("SUCCESS: 3 rules found"), "{text}");
}

/// The rules' unit tests pass, and each alert of the rules file has some.
#[test]
fn each_alert_fires_on_its_test_series_and_not_on_the_others() {
    let tests = deployed("prometheus/leaktrace-rules.test.yml");
    let text = accepted(
        Command::new("promtool").args(["test", "rules"]).arg(&tests),
        "prometheus",
    );
    assert!(text.contains("SUCCESS"), "{text}");
    let rules = fs::read_to_string(rules_file()).unwrap();
    let tests = fs::read_to_string(&tests).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(alerts.len(), 3, "{alerts:?}");
    for alert in alerts {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "no test of {alert}"
        );
    }
}

/// `systemd-analyze verify` on the unit, with ExecStart pointing at the leaktrace this test
/// built (verify checks that the program exists; the README installs it as
/// /usr/local/bin/leaktrace) and the manual page its Documentation= names rendered by it.
#[test]
fn systemd_analyze_verifies_the_unit() {
    let unit = fs::read_to_string(deployed("systemd/leaktrace.service")).unwrap();
    let installed = "ExecStart=/usr/local/bin/leaktrace serve ";
    assert!(unit.contains(installed), "{unit}");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deploy-unit");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("man/man1")).unwrap();
    let path = dir.join("leaktrace.service");
    fs::write(
        &path,
        unit.replace(installed, &format!("ExecStart={LEAKTRACE} serve ")),
    )
    .unwrap();
    let manual = Command::new(LEAKTRACE).arg("man").output().unwrap();
    assert!(manual.status.success());
    fs::write(dir.join("man/man1/leaktrace.1"), manual.stdout).unwrap();

    let text = accepted(
        Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .env("MANPATH", dir.join("man")),
        "systemd",
    );
    // verify passes a unit with unknown or misspelt settings, saying so: it must say nothing.
    assert_eq!(text, "", "systemd-analyze verify: {text}");
}

/// The unit runs leaktrace as a user of its own (DynamicUser) with only its
/// AmbientCapabilities, under no_new_privs, within its SystemCallFilter. So run, as a user that
/// is neither root nor the target's owner, leaktrace traces another user's process: every leak
/// of a burst is counted, the tracing cost is estimated and the memory scanned. Every system
/// call it makes, as strace sees them, is one the filter allows.
#[test]
fn the_units_capabilities_and_system_calls_let_it_trace_another_users_process() {
    let Some(_bpf) = require_bpf() else { return };
    let unit = fs::read_to_string(deployed("systemd/leaktrace.service")).unwrap();
    let capabilities = setting(&unit, "AmbientCapabilities");
    assert_eq!(setting(&unit, "CapabilityBoundingSet"), capabilities);
    let capabilities = capabilities
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect::<Vec<_>>()
        .join(",");

    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deploy-service");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(SERVICE_UID), Some(SERVICE_UID)).unwrap();
    let json = dir.join("report.json");
    let syscalls = dir.join("strace.txt");

    let mut fixture = Running::start(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(build_fixture("fixture"))
            .arg("burst"),
    );
    fixture.stdout.wait_for(|l| l == "ready", WAIT);
    let uid = SERVICE_UID.to_string();
    // At the unit's priority, as systemd starts it: leaktrace keeps a nice value it was given.
    let nice = setting(&unit, "Nice");
    let mut strace = Running::start(
        Command::new("nice")
            .args(["-n", &nice[0], "setpriv"])
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                &format!("--inh-caps=-all,{capabilities}"),
                &format!("--ambient-caps=-all,{capabilities}"),
                &format!("--bounding-set=-all,{capabilities}"),
                "--no-new-privs",
                "strace",
                "-f",
                "-qq",
                "-o",
            ])
            .arg(&syscalls)
            .arg(LEAKTRACE)
            .args(["-p", &fixture.pid().to_string(), "--scan", "--json"])
            .arg(&json),
    );
    strace.stderr.wait_for(is_attached_line, WAIT);
    run_burst(&mut fixture);
    // strace keeps fatal signals from itself while its command runs: end leaktrace, its child.
    let leaktrace = fs::read_to_string(format!("/proc/{0}/task/{0}/children", strace.pid()))
        .unwrap()
        .trim()
        .parse::<i32>()
        .unwrap();
    assert_eq!(unsafe { libc::kill(leaktrace, libc::SIGINT) }, 0);
    let status = strace.wait(WAIT);
    let stderr = strace.stderr.rest();
    assert_eq!(status, 0, "{stderr:?}");

    let report = read_json(&json);
    let leaked = fixture_define("fixture", "BURST_LEAKS") * fixture_define("fixture", "LEAK_BYTES");
    assert_eq!(sites_of(&report, "leak_here").live_bytes, leaked);
    // The cost calibration opens leaktrace's own code through /proc/PID/map_files.
    assert!(
        report["cost"]["percent_of_target_cpu"].is_number(),
        "{}",
        report["cost"]
    );
    // The scan seized the target and read its memory; the burst's blocks got a kind.
    assert!(report["scan"].is_object(), "no scan: {stderr:?}");
    assert!(
        LeakKinds::from_json(&report["scan"]).total().0 >= leaked,
        "{}",
        report["scan"]
    );

    let (allowed, denied) = system_call_filter(&unit);
    let made = system_calls_made(&syscalls);
    let outside: Vec<&String> = made
        .iter()
        // x86-64's uretprobe (335): the return probes on leaktrace's own code make it from
        // their trampoline, and the kernel lets it past any seccomp filter.
        .filter(|call| *call != "syscall_0x14f")
        .filter(|call| !allowed.contains(*call) || denied.contains(*call))
        .collect();
    assert!(
        outside.is_empty(),
        "the unit's SystemCallFilter would refuse {outside:?}"
    );
}

/// The test support's Prometheus, for the end-to-end test of `leaktrace serve`: it starts,
/// scrapes its target every second, loads the deployed rules and answers queries.
#[test]
fn a_test_prometheus_scrapes_its_target_and_loads_the_deployed_rules() {
    let prometheus = Prometheus::start(Scrape::Itself);
    let up = prometheus.wait_for(r#"up{job="leaktrace"}"#, |result| {
        sample_values(result) == [1.0]
    });
    assert_eq!(up[0]["metric"]["instance"], prometheus.address.to_string());
    prometheus.wait_for(
        r#"prometheus_rule_group_rules{rule_group=~".*;leaktrace"}"#,
        |result| sample_values(result) == [3.0],
    );
}

/// The words of a unit's `KEY=` lines, in order.
fn setting(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .flat_map(|value| value.split_whitespace().map(str::to_owned))
        .collect()
}

/// The system calls a unit's SystemCallFilter lines allow and deny (a `~` line denies), with
/// every `@group` expanded as systemd-analyze lists it.
fn system_call_filter(unit: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let listing = accepted(
        Command::new("systemd-analyze").arg("syscall-filter"),
        "systemd",
    );
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut group = None;
    for line in listing.lines() {
        if line.starts_with('@') {
            group = Some(line.trim().to_owned());
        } else if let Some(group) = &group {
            let word = line.trim();
            if !word.is_empty() && !word.starts_with('#') {
                groups
                    .entry(group.clone())
                    .or_default()
                    .push(word.to_owned());
            }
        }
    }
    fn expand(name: &str, groups: &BTreeMap<String, Vec<String>>, into: &mut BTreeSet<String>) {
        if name.starts_with('@') {
            let members = groups
                .get(name)
                .unwrap_or_else(|| panic!("systemd-analyze lists no group {name}"));
            for member in members {
                expand(member, groups, into);
            }
        } else {
            into.insert(name.to_owned());
        }
    }
    let (mut allowed, mut denied) = (BTreeSet::new(), BTreeSet::new());
    for line in unit
        .lines()
        .filter_map(|line| line.strip_prefix("SystemCallFilter="))
    {
        let (into, names) = match line.strip_prefix('~') {
            Some(names) => (&mut denied, names),
            None => (&mut allowed, line),
        };
        for name in names.split_whitespace() {
            expand(name, &groups, into);
        }
    }
    assert!(!allowed.is_empty(), "the unit has no SystemCallFilter");
    (allowed, denied)
}

/// The system calls in an `strace -f -qq -o FILE` log (`PID name(args…`).
fn system_calls_made(log: &Path) -> BTreeSet<String> {
    let log = fs::read_to_string(log).unwrap();
    let made: BTreeSet<String> = log
        .lines()
        .filter_map(|line| {
            let call = line.split_whitespace().nth(1)?;
            let (name, _) = call.split_once('(')?;
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
                .then(|| name.to_owned())
        })
        .collect();
    assert!(made.contains("bpf"), "strace saw no bpf call: {made:?}");
    made
}
