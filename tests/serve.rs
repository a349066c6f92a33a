//! `leaktrace serve`: processes chosen by executable, followed across restarts, each run's
//! final report and rolling windows in the out-dir, settings reloaded on SIGHUP.

mod support;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use serde_json::Value;
use support::{
    prometheus::{Prometheus, Scrape, sample_values},
    *,
};

/// The trends fixture, a binary of the test's own: each test's service chooses its targets
/// by executable, and must not find another test's.
fn trends_of(test: &str) -> PathBuf {
    build_fixture_with("trends", &[&format!("-DSERVE_TEST_{test}")])
}

/// A fresh out-dir for `test`.
fn out_dir(test: &str) -> PathBuf {
    let dir = output_path(test, "out");
    let _ = fs::remove_dir_all(&dir);
    dir
}

/// `leaktrace serve ARGS` with its reports in `out`, metrics on a port of the kernel's choice.
fn serve(out: &Path, args: &[&str]) -> Running {
    let mut serve = Running::start(
        Command::new(LEAKTRACE)
            .arg("serve")
            .args([
                "--interval",
                "200ms",
                "--metrics",
                "127.0.0.1:0",
                "--out-dir",
            ])
            .arg(out)
            .args(args),
    );
    serve.stderr.wait_for(
        |l| l.starts_with("leaktrace: serving metrics on http://127.0.0.1:"),
        WAIT,
    );
    serve
}

/// Waits until the service says `line` (or has said it: captures start in any order).
fn until_said(serve: &mut Running, line: impl Fn(&str) -> bool) {
    if !serve.stderr.received().iter().any(|l| line(l)) {
        serve.stderr.wait_for(line, WAIT);
    }
}

/// Waits until the service says it attached to `pid`.
fn until_attached(serve: &mut Running, pid: u32) {
    until_said(serve, |l| {
        is_attached_line(l) && attached_pid(l) == pid as i32
    });
}

/// The reports in `out` of `pid` of `kind` (window or final), oldest first.
fn reports(out: &Path, pid: u32, kind: &str) -> Vec<Value> {
    let mut paths: Vec<PathBuf> = fs::read_dir(out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.contains(&format!("-{pid}-{kind}-")) && name.ends_with(".json")
        })
        .collect();
    paths.sort();
    for path in &paths {
        let pprof = path.to_string_lossy().replace(".json", ".pb.gz");
        assert!(
            Path::new(&pprof).exists(),
            "each report has its pprof: {pprof}"
        );
    }
    paths.iter().map(|p| read_json(p)).collect()
}

/// Lets the trends fixture leak `ticks` more times, counted by its own log.
fn leaks(fixture: &mut Running, ticks: usize) {
    fixture.stdout.received();
    for _ in 0..ticks {
        fixture.stdout.wait_for(|l| l.starts_with("leak "), WAIT);
    }
}

/// The trends fixture's leak in `report` matches its own log since the report's window
/// opened: every block logged, but perhaps the last (each is logged just before its malloc).
fn assert_leaks_match_log(report: &Value, fixture: &mut Running) {
    let since_ns = report["window_start_ns"].as_u64().unwrap();
    let logged = fixture
        .stdout
        .received()
        .iter()
        .filter_map(|l| {
            l.strip_prefix("leak ")?
                .split(' ')
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .filter(|&ns| ns >= since_ns)
        .count() as u64;
    assert!(logged >= 8, "{logged}");
    let blocks = sites_of(report, "steady_leak").live_allocations;
    assert!(
        (logged - 1..=logged).contains(&blocks),
        "{blocks} blocks, {logged} logged"
    );
}

#[test]
fn a_restarted_target_is_followed_and_each_run_gets_its_final_report() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = trends_of("RESTART");
    let out = out_dir("serve_restart");
    let mut first = start_ready(&binary, &["log"]);
    let mut serve = serve(&out, &["--exe", binary.to_str().unwrap(), "--window", "1s"]);
    until_attached(&mut serve, first.pid());
    leaks(&mut first, 8);
    // The supervisor: the test kills the target and starts it again.
    first.signal(libc::SIGKILL);
    first.wait_status(WAIT);
    let restarted = Instant::now();
    let mut second = start_ready(&binary, &["log"]);
    until_attached(&mut serve, second.pid());
    eprintln!(
        "restarted target attached {:.0} ms after its start",
        restarted.elapsed().as_secs_f64() * 1000.0
    );
    let done = format!("leaktrace: pid {} (", first.pid());
    until_said(&mut serve, |l| l.starts_with(&done));
    leaks(&mut second, 8);
    // A window's report of the second run, before it ends.
    let deadline = Instant::now() + WAIT;
    while reports(&out, second.pid(), "window").is_empty() {
        assert!(
            Instant::now() < deadline,
            "no window report of the second run"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    serve.signal(libc::SIGTERM);
    assert_eq!(serve.wait(WAIT), 0, "{:?}", serve.stderr.rest());

    let [first_final] = &reports(&out, first.pid(), "final")[..] else {
        panic!("one final report of the first run");
    };
    assert_eq!(
        first_final["ending"]["target_exited"]["status"],
        Value::Null
    );
    assert_leaks_match_log(first_final, &mut first);
    let [second_final] = &reports(&out, second.pid(), "final")[..] else {
        panic!("one final report of the second run");
    };
    assert_eq!(second_final["ending"], "interrupted");
    assert!(sites_of(second_final, "steady_leak").live_allocations >= 8);
    let windows = reports(&out, second.pid(), "window");
    assert!(windows.iter().all(|w| w["ending"] == "ongoing"));
}

#[test]
fn sighup_reloads_the_settings_and_keeps_the_old_on_a_bad_file() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = trends_of("RELOAD");
    let out = out_dir("serve_reload");
    let config = output_path("serve_reload", "conf");
    fs::write(&config, "# nothing of ours yet\n--comm no-such-process\n").unwrap();
    let fixture = start_ready(&binary, &[]);
    let mut serve = serve(&out, &["--config", config.to_str().unwrap()]);
    fs::write(&config, format!("--exe {}\n", binary.display())).unwrap();
    serve.signal(libc::SIGHUP);
    serve
        .stderr
        .wait_for(|l| l == "leaktrace: settings reloaded", WAIT);
    until_attached(&mut serve, fixture.pid());
    fs::write(&config, "--window\n").unwrap();
    serve.signal(libc::SIGHUP);
    let refused = serve
        .stderr
        .wait_for(|l| l.contains("the settings were not reloaded"), WAIT);
    assert!(refused.contains("config file"), "{refused}");
    serve.signal(libc::SIGTERM);
    assert_eq!(serve.wait(WAIT), 0, "{:?}", serve.stderr.rest());
    assert_eq!(reports(&out, fixture.pid(), "final").len(), 1);
}

#[test]
fn bad_settings_exit_2_with_one_line() {
    let out = out_dir("serve_bad");
    let mut nothing = Running::start(
        Command::new(LEAKTRACE)
            .args(["serve", "--out-dir"])
            .arg(&out),
    );
    assert_eq!(nothing.wait(WAIT), 2);
    let said = nothing.stderr.rest();
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].contains("-p PID, --comm NAME"), "{said:?}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let mut busy = Running::start(
        Command::new(LEAKTRACE)
            .args(["serve", "--comm", "x", "--metrics", &address, "--out-dir"])
            .arg(&out),
    );
    assert_eq!(busy.wait(WAIT), 2);
    let said = busy.stderr.rest();
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].contains("--metrics"), "{said:?}");
}

/// The address in the service's first line.
fn metrics_address(serve: &mut Running) -> std::net::SocketAddr {
    let line = &serve.stderr.received()[0];
    let address = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no address in {line}"));
    address.parse().unwrap()
}

#[test]
fn prometheus_sees_the_leak_leaking_and_the_steady_server_not() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = trends_of("PROMETHEUS");
    let out = out_dir("serve_prometheus");
    // Both wait for SIGUSR1 until serve is attached: it sees each cache fill from its start.
    let leaky = start_ready(&binary, &["wait"]);
    let steady = start_ready(&binary, &["wait", "steady"]);
    let mut serve = serve(
        &out,
        &["--exe", binary.to_str().unwrap(), "--interval", "500ms"],
    );
    until_attached(&mut serve, leaky.pid());
    until_attached(&mut serve, steady.pid());
    leaky.signal(libc::SIGUSR1);
    steady.signal(libc::SIGUSR1);
    let prometheus = Prometheus::start(Scrape::Address(metrics_address(&mut serve)));

    let leaking = format!(
        "leaktrace_site_verdict{{pid=\"{}\",verdict=\"leaking\",site=~\"steady_leak.*\"}} == 1",
        leaky.pid()
    );
    prometheus.wait_for(&leaking, |r| sample_values(r).len() == 1);
    let growth = prometheus.query(&format!(
        "leaktrace_site_growth_bytes_per_second{{pid=\"{}\",site=~\"steady_leak.*\"}}",
        leaky.pid()
    ));
    assert!(sample_values(&growth)[0] > 0.0, "{growth}");

    // The steady server's cache has had its verdict: it grew, then went flat.
    let steady_pid = steady.pid();
    prometheus.wait_for(
        &format!(
            "leaktrace_site_verdict{{pid=\"{steady_pid}\",verdict=\"grew_then_flat\",\
             site=~\"fill_cache.*\"}} == 1"
        ),
        |r| sample_values(r).len() == 1,
    );
    let ever_leaking = prometheus.query(&format!(
        "max_over_time(leaktrace_site_verdict{{pid=\"{steady_pid}\",verdict=\"leaking\"}}[10m]) \
         == 1"
    ));
    assert_eq!(
        sample_values(&ever_leaking),
        Vec::<f64>::new(),
        "{ever_leaking}"
    );
    let series = prometheus.query(&format!(
        "leaktrace_process_live_bytes{{pid=\"{steady_pid}\"}}"
    ));
    assert_eq!(
        sample_values(&series).len(),
        1,
        "the steady server is exported too"
    );
    serve.signal(libc::SIGTERM);
    assert_eq!(serve.wait(WAIT), 0, "{:?}", serve.stderr.rest());
}
