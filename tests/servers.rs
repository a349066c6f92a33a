//! Real programs nobody here wrote, as an operator meets them: redis-server (Debian's, on
//! jemalloc) under redis-benchmark, and Debian's CPython. Each capture runs until leaktrace
//! has printed [`INTERVALS`] live views, enough for every verdict but `too early`, however
//! fast the machine is.

mod support;

use std::{
    io::Write,
    net::TcpListener,
    process::{Command, Stdio},
};

use serde_json::Value;
use support::*;

/// Live views to wait for before ending a capture.
const INTERVALS: usize = 12;

/// redis's allocator wrappers: a label that is one of these says nothing of the caller.
const REDIS_WRAPPERS: [&str; 4] = ["zmalloc", "zcalloc", "zrealloc", "ztry"];

/// Keys loaded before the attach; the benchmark picks among them.
const KEYS: usize = 100_000;

/// Waits until `leaktrace` has printed `count` live views.
fn wait_for_intervals(leaktrace: &mut Running, count: usize) {
    for _ in 0..count {
        leaktrace
            .stdout
            .wait_for(|line| line.starts_with('['), WAIT);
    }
}

/// Ends a capture with Ctrl-C; its stdout, once it has exited 0.
fn interrupt(mut leaktrace: Running) -> Vec<String> {
    leaktrace.signal(libc::SIGINT);
    assert_eq!(leaktrace.wait(WAIT), 0, "{:?}", leaktrace.stderr.rest());
    leaktrace.stdout.rest()
}

/// The label of each site of a JSON report, with its verdict.
fn labels_and_verdicts(report: &Value) -> Vec<(String, String)> {
    report["sites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|site| {
            (
                site["label"].as_str().unwrap().to_owned(),
                site["verdict"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The site label a live view's row shows, without the wrapper it calls or what tells it
/// from others: its first word.
fn row_label(row: &LiveRow) -> &str {
    let site = row.line.split("  ").last().unwrap_or_default().trim();
    site.split(' ').next().unwrap_or_default()
}

/// redis-server on a free loopback port, ready; its port. The slowlog is off: it is a list
/// of 128 entries that fills with whatever commands a loaded machine makes slow, and rises,
/// rightly `leaking`, until it is full.
fn start_redis() -> (Running, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Running::start(Command::new("redis-server").args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--slowlog-log-slower-than",
        "-1",
    ]));
    server
        .stdout
        .wait_for(|line| line.contains("Ready to accept connections"), WAIT);
    (server, port)
}

/// SETs every key redis-benchmark's `-r KEYS` picks from (`key:` and `counter:`, the random
/// part 12 digits), through `redis-cli --pipe`.
fn load_keys(port: u16) {
    let mut commands = String::new();
    for i in 0..KEYS {
        for (key, value) in [
            (format!("key:{i:012}"), "xxx"),
            (format!("counter:{i:012}"), "0"),
        ] {
            commands += &format!(
                "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
                key.len(),
                value.len()
            );
        }
    }
    let mut cli = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "--pipe"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("redis-cli");
    cli.stdin
        .take()
        .unwrap()
        .write_all(commands.as_bytes())
        .unwrap();
    let output = cli.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains("errors: 0"), "{said}");
}

/// redis-benchmark on existing keys, `clients` at once, each connecting for every request
/// unless `keep_alive`: until it is killed.
fn benchmark(port: u16, clients: usize, keep_alive: bool) -> Running {
    Running::start(Command::new("redis-benchmark").args([
        "-p",
        &port.to_string(),
        "-c",
        &clients.to_string(),
        "-k",
        if keep_alive { "1" } else { "0" },
        "-r",
        &KEYS.to_string(),
        "-n",
        "100000000",
        "-t",
        "set,get,incr",
        "-q",
    ]))
}

#[test]
fn redis_under_load_has_no_leaking_site_its_sites_named_past_zmalloc_and_says_what_it_replaced() {
    let Some(_bpf) = require_bpf() else { return };
    let (server, port) = start_redis();
    load_keys(port);
    let json = output_path("redis", "json");
    let mut leaktrace = attach_with_json(server.pid(), &json, &["-i", "1s"]);
    let steady = benchmark(port, 20, true);
    let connecting = benchmark(port, 4, false);
    wait_for_intervals(&mut leaktrace, INTERVALS);
    drop((steady, connecting));
    let stdout = interrupt(leaktrace);
    let report = read_json(&json);
    let sites = labels_and_verdicts(&report);

    // SET and INCR replace values loaded before the attach: new blocks, whose old ones'
    // frees match nothing. The report says so, and no site is called leaking for it.
    assert!(
        report["totals"]["unmatched_frees"].as_u64().unwrap() > 0,
        "{:#}",
        report["totals"]
    );
    assert!(
        stdout
            .iter()
            .any(|l| l.starts_with("replacing blocks allocated before attach: ")),
        "{stdout:#?}"
    );
    assert!(
        sites.iter().all(|(_, verdict)| verdict != "leaking"),
        "{sites:#?}"
    );
    // Every site, in the report and in every live view, is named by zmalloc's caller; but
    // a stack cut at the wrapper itself (under load a stack may be taken by frame pointers,
    // which redis lacks) has no caller to be named by.
    let is_wrapper = |label: &str| REDIS_WRAPPERS.iter().any(|w| label.starts_with(w));
    let cut: Vec<&str> = report["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|site| {
            site["frames"]
                .as_array()
                .unwrap()
                .iter()
                .all(|frame| frame["function"].as_str().is_some_and(is_wrapper))
        })
        .map(|site| site["site"].as_str().unwrap())
        .collect();
    let named_past = |label: &str, site: &str| !is_wrapper(label) || cut.contains(&site);
    assert!(!sites.is_empty());
    for site in report["sites"].as_array().unwrap() {
        let (label, text) = (
            site["label"].as_str().unwrap(),
            site["site"].as_str().unwrap(),
        );
        assert!(named_past(label, text), "{site:#}");
    }
    let views = live_views(&stdout);
    assert!(views.len() >= INTERVALS, "{stdout:#?}");
    for view in &views {
        for row in &view.rows {
            let site = row.line.split("  ").last().unwrap_or_default().trim();
            assert!(named_past(row_label(row), site), "{view:#?}");
        }
    }
}

#[test]
fn cpython_a_list_of_bytearrays_leaks_by_its_c_function_and_a_bounded_cache_does_not() {
    let Some(_bpf) = require_bpf() else { return };
    // Debian's interpreter, stripped (its exported functions are in .dynsym), whatever
    // python3 comes first in PATH.
    let mut python =
        Running::start(Command::new("/usr/bin/python3").arg(fixtures_dir().join("bytearrays.py")));
    let cache_block: u64 = python
        .stdout
        .wait_for(|l| l.starts_with("cache block "), WAIT)
        .trim_start_matches("cache block ")
        .parse()
        .unwrap();
    python.stdout.wait_for(|l| l == "ready", WAIT);
    let json = output_path("cpython", "json");
    let mut leaktrace = attach_with_json(python.pid(), &json, &["-i", "1s"]);
    wait_for_intervals(&mut leaktrace, INTERVALS);
    let stdout = interrupt(leaktrace);
    let report = read_json(&json);
    let sites = labels_and_verdicts(&report);

    // The bytearrays' buffers are made by PyByteArray_Resize, through CPython's allocator:
    // the first site, leaking, and named by the former.
    assert_eq!(
        sites[0],
        ("PyByteArray_Resize".to_owned(), "leaking".to_owned()),
        "{sites:#?}"
    );
    let allocator = |label: &str| label.contains("PyObject_Malloc") || label.starts_with("PyMem_");
    assert!(
        sites.iter().all(|(label, _)| !allocator(label)),
        "{sites:#?}"
    );
    let last = live_views(&stdout).pop().expect("a live view");
    assert!(
        last.rows
            .first()
            .is_some_and(|row| row_label(row) == "PyByteArray_Resize"),
        "{last:#?}"
    );
    // The cache: one site holding its 200 values (201 between an insert and an eviction),
    // blocks of one size, and not leaking.
    let cache: Vec<&Value> = report["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|site| {
            let blocks = site["live_allocations"].as_u64().unwrap();
            (200..=201).contains(&blocks)
                && site["live_bytes"].as_u64() == Some(blocks * cache_block)
        })
        .collect();
    assert_eq!(cache.len(), 1, "{:#?}", report["sites"]);
    assert_ne!(cache[0]["verdict"], "leaking", "{:#}", cache[0]);
}
