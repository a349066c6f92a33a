//! The report in the formats other tools read, checked by those tools.

mod support;

use std::process::Command;

use leaktrace::report::thousands;
use support::*;

#[test]
fn go_tool_pprof_lists_the_leaking_function_first() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture("fixture");
    let profile = output_path("pprof", "pb.gz");
    let profile_arg = profile.to_str().unwrap();
    launch_json("pprof", &["--pprof", profile_arg], &binary, &["exit"]);
    for (index, leak_here_value) in [("inuse_space", "39.06kB"), ("inuse_objects", "40")] {
        let output = Command::new("go")
            .args(["tool", "pprof", "-top", &format!("-sample_index={index}")])
            .arg(&profile)
            .env("HOME", env!("CARGO_TARGET_TMPDIR"))
            .output()
            .expect("run go tool pprof (`cargo xtask test` installs golang-go)");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        // The rows follow the "flat  flat%  sum%  cum  cum%" header; the first is the top.
        let top = text
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("flat"))
            .nth(1)
            .unwrap_or_default();
        assert!(top.ends_with(" leak_here"), "{index}: {text}");
        assert!(
            top.trim_start().starts_with(leak_here_value),
            "{index}: {text}"
        );
    }
    // Each sample carries its site's verdict and its label as tags.
    let output = Command::new("go")
        .args(["tool", "pprof", "-tags"])
        .arg(&profile)
        .env("HOME", env!("CARGO_TARGET_TMPDIR"))
        .output()
        .expect("run go tool pprof");
    let text = String::from_utf8_lossy(&output.stdout);
    let verdicts = text
        .split("verdict: Total")
        .nth(1)
        .unwrap_or_else(|| panic!("no verdict tag: {text}"));
    let tagged: Vec<&str> = verdicts
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.rsplit_once("): ").map(|(_, verdict)| verdict.trim()))
        .collect();
    let sites = text.split("site: Total").nth(1).unwrap_or_default();
    assert!(sites.contains("): leak_here"), "{text}");
    assert!(!tagged.is_empty(), "{text}");
    assert!(tagged.iter().all(|v| VERDICTS.contains(v)), "{text}");
}

#[test]
fn the_flamegraph_is_well_formed_svg_with_the_leaking_function() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture("fixture");
    let svg = output_path("flamegraph", "svg");
    launch_json(
        "flamegraph",
        &["--flamegraph", svg.to_str().unwrap()],
        &binary,
        &["exit"],
    );
    let status = Command::new("xmllint")
        .arg("--noout")
        .arg(&svg)
        .status()
        .expect("run xmllint (`cargo xtask test` installs libxml2-utils)");
    assert!(status.success(), "xmllint rejects {}", svg.display());
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("leak_here"));
    assert!(
        text.contains(">all live bytes of pid "),
        "the root frame is labelled"
    );
}

#[test]
fn the_html_report_opens_in_chromium_with_both_plots_and_no_network() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture("windows");
    let html = output_path("report", "html");
    let (report, _) = launch_json(
        "html",
        &["-i", "500ms", "--html", html.to_str().unwrap()],
        &binary,
        &[],
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert_eq!(page.matches("<svg class=\"plot\"").count(), 2, "two plots");
    for part in ["class=\"zero\"", "class=\"xtick\"", "class=\"ytick\""] {
        assert!(page.matches(part).count() >= 2, "each plot has {part}");
    }
    assert!(page.contains("<img class=\"flame\""), "the flamegraph");
    // What the fixture holds at its exit, the first site its leak, with its stack.
    let blocks = fixture_define("windows", "WINDOW_LEAKS");
    let bytes = blocks * fixture_define("windows", "BLOCK_BYTES");
    assert_eq!(
        (
            report["totals"]["live_bytes"].as_u64(),
            report["totals"]["live_allocations"].as_u64()
        ),
        (Some(bytes), Some(blocks))
    );
    let held = format!("live {} bytes in {blocks} blocks", thousands(bytes));
    assert!(page.contains(&held), "the page says {held}");
    // The top row: rank 1, a verdict, the leak's bytes and blocks, its stack.
    let held = format!("<td>{}</td><td>{blocks}</td>", thousands(bytes));
    let row = page
        .split("<tr>")
        .find(|row| row.contains(&held))
        .unwrap_or_else(|| panic!("no row with {held}"));
    let row = row.split("</tr>").next().unwrap();
    assert!(row.contains(">1</td><td class=\"verdict "), "{row}");
    assert!(
        VERDICTS
            .iter()
            .any(|v| row.contains(&format!("\">{v}</td>{held}"))),
        "{row}"
    );
    assert!(
        row.contains("<pre>second_window_leak at "),
        "the top site and its stack: {row}"
    );
    for reference in ["src=\"http", "href=\"http", "url(http", "@import"] {
        assert!(
            !page.contains(reference),
            "nothing fetched from a network: {reference}"
        );
    }

    let screenshot = output_path("report", "png");
    let profile = output_path("chromium-profile", "d");
    let output = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
        ])
        .args(["--no-first-run", "--disable-background-networking"])
        .args([
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
        ])
        .args(["--window-size=1000,1400"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("run chromium (`cargo xtask test` installs it)");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    assert!(!log.contains("Uncaught"), "a script error: {log}");
    let png = std::fs::read(&screenshot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "a real screenshot"
    );

    // The page as Chromium parsed it: the table's columns, one verdict per row.
    let output = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu"])
        .args(["--no-first-run", "--disable-background-networking"])
        .args(["--disable-component-update", "--disable-sync"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("run chromium");
    assert!(output.status.success());
    let dom = String::from_utf8_lossy(&output.stdout);
    let columns: Vec<&str> = dom
        .split("<th>")
        .skip(1)
        .map(|th| th.split("</th>").next().unwrap())
        .collect();
    assert_eq!(
        columns,
        [
            "#",
            "verdict",
            "live bytes",
            "blocks",
            "allocs",
            "frees",
            "temporary",
            "floor growth",
            "growth (R²)",
            "site and stack"
        ],
        "{dom}"
    );
    let verdicts: Vec<&str> = dom
        .split("<td class=\"verdict ")
        .skip(1)
        .filter_map(|td| td.split_once('>')?.1.split("</td>").next())
        .collect();
    assert!(!verdicts.is_empty(), "{dom}");
    assert!(
        verdicts.iter().all(|v| VERDICTS.contains(v)),
        "{verdicts:?}"
    );
}

/// A capture in which nothing is allocated is a normal answer: every output is written, valid,
/// and says that nothing is live.
#[test]
fn an_empty_capture_writes_every_output_and_says_so() {
    let Some(_bpf) = require_bpf() else { return };
    // Waiting for its signal, the fixture allocates nothing.
    let fixture = start_ready(&build_fixture("fixture"), &["burst"]);
    let json = output_path("empty", "json");
    let [folded, svg, html, pprof] =
        ["folded", "svg", "html", "pb.gz"].map(|extension| output_path("empty", extension));
    let mut leaktrace = attach_with_json(
        fixture.pid(),
        &json,
        &[
            "--count",
            "1",
            "-i",
            "100ms",
            "--folded",
            folded.to_str().unwrap(),
            "--flamegraph",
            svg.to_str().unwrap(),
            "--html",
            html.to_str().unwrap(),
            "--pprof",
            pprof.to_str().unwrap(),
        ],
    );
    assert_eq!(leaktrace.wait(WAIT), 0, "{:?}", leaktrace.stderr.rest());
    let report = read_json(&json);
    assert_eq!(report["totals"]["live_bytes"], 0, "{report:#}");
    assert_eq!(std::fs::read_to_string(&folded).unwrap(), "");
    let status = Command::new("xmllint")
        .arg("--noout")
        .arg(&svg)
        .status()
        .unwrap();
    assert!(status.success(), "xmllint rejects {}", svg.display());
    assert!(
        std::fs::read_to_string(&svg)
            .unwrap()
            .contains("no live bytes")
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("No call site holds live bytes"), "{page}");
    let output = Command::new("go")
        .args(["tool", "pprof", "-top"])
        .arg(&pprof)
        .env("HOME", env!("CARGO_TARGET_TMPDIR"))
        .output()
        .expect("run go tool pprof (`cargo xtask test` installs golang-go)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `--json -` writes the report to standard output, whole, and the text report goes to
/// stderr instead.
#[test]
fn a_report_can_go_to_standard_output() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture("fixture");
    let output = Command::new(LEAKTRACE)
        .args(["--json", "-", "--"])
        .arg(&binary)
        .arg("exit")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // The fixture's own lines come first, on the stdout it shares.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json = &stdout[stdout.find('{').expect("a JSON report")..];
    let report: serde_json::Value = serde_json::from_str(json).expect("one whole JSON document");
    assert_eq!(
        sites_of(&report, "leak_here").live_allocations,
        fixture_define("fixture", "BURST_LEAKS")
    );
    assert!(stderr.contains("in use at exit"), "{stderr}");
    assert!(!stdout.contains("in use at exit"), "{stdout}");
}
