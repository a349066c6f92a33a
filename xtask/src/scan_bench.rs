//! The reachability scan's cost: how long it holds a target still per 100 MB of its memory,
//! how long the marking after takes, and leaktrace's peak memory meanwhile. The target is
//! Debian's python3 holding a given number of MiB in small objects, idle: the pause is the
//! freeze and the copy, nothing of the target's own work.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::process::Traced;

/// Live MiB the target holds, per row.
const SIZES_MIB: [u64; 2] = [25, 100];

/// Holds about argv[1] MiB in 200-byte bytes objects, says "ready", then sleeps.
const HOLDER: &str = "import sys, time
keep = [bytes(200) for _ in range(int(sys.argv[1]) * 1024 * 1024 // 256)]
print('ready', flush=True)
while True:
    time.sleep(1)
";

#[derive(Debug, Serialize)]
pub struct ScanRow {
    pub held_mib: u64,
    pub copied_mib: f64,
    pub pause_ms: f64,
    pub pause_ms_per_100_mb: f64,
    pub mark_ms: f64,
    pub leaktrace_peak_rss_mib: f64,
}

/// Each size, median of `runs`.
pub fn bench_scan(leaktrace: &Path, out: &Path, runs: usize) -> Result<Vec<ScanRow>> {
    let mut rows = Vec::new();
    for held_mib in SIZES_MIB {
        let mut samples = Vec::new();
        for _ in 0..runs.max(1) {
            samples.push(scan_once(leaktrace, out, held_mib)?);
        }
        let pick = |f: fn(&ScanRow) -> f64| median(samples.iter().map(f).collect());
        rows.push(ScanRow {
            held_mib,
            copied_mib: pick(|r| r.copied_mib),
            pause_ms: pick(|r| r.pause_ms),
            pause_ms_per_100_mb: pick(|r| r.pause_ms_per_100_mb),
            mark_ms: pick(|r| r.mark_ms),
            leaktrace_peak_rss_mib: pick(|r| r.leaktrace_peak_rss_mib),
        });
    }
    println!("\nreachability scan of an idle python3 holding N MiB, median of {runs} run(s)");
    println!("  held MiB  copied MiB  pause ms  pause ms/100 MB  mark ms  leaktrace RSS MiB");
    for row in &rows {
        println!(
            "  {:>8}  {:>10.1}  {:>8.1}  {:>15.1}  {:>7.1}  {:>17.1}",
            row.held_mib,
            row.copied_mib,
            row.pause_ms,
            row.pause_ms_per_100_mb,
            row.mark_ms,
            row.leaktrace_peak_rss_mib
        );
    }
    Ok(rows)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn scan_once(leaktrace: &Path, out: &Path, held_mib: u64) -> Result<ScanRow> {
    let mut holder = Traced::start(
        Command::new("/usr/bin/python3")
            .args(["-c", HOLDER, &held_mib.to_string()])
            .stdout(Stdio::piped()),
    )?;
    holder.wait_for_line("ready")?;
    let json = out.join("scan.json");
    let tracer = Traced::start(
        Command::new(leaktrace)
            .args([
                "-p",
                &holder.pid().to_string(),
                "--scan",
                "-d",
                "1s",
                "--json",
            ])
            .arg(&json)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )?;
    let usage = tracer.finish()?;
    // The holder is killed as it is dropped.
    drop(holder);
    let report: serde_json::Value = serde_json::from_str(&fs::read_to_string(&json)?)?;
    let scan = &report["scan"];
    let number = |key: &str| scan[key].as_f64().with_context(|| format!("scan.{key}"));
    let copied = number("scanned_bytes")?;
    let pause_ms = number("pause_ms")?;
    Ok(ScanRow {
        held_mib,
        copied_mib: copied / (1 << 20) as f64,
        pause_ms,
        pause_ms_per_100_mb: pause_ms * 1e8 / copied.max(1.0),
        mark_ms: number("mark_ms")?,
        leaktrace_peak_rss_mib: usage.peak_rss_mib,
    })
}
