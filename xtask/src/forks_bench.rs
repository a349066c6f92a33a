//! `-f` at scale: a parent that forks a child every 10 ms, children that live 1 ms or 300 ms,
//! traced with and without `-f`. How many children were followed and missed, leaktrace's peak
//! memory, and how long it takes from the report to leaktrace's exit (the probes' removal).
//! The parent is the tests' fixture `tests/fixtures/forks.c`.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::{build_c_fixture, process::Traced};

/// Children forked per run, one every [`PERIOD_MS`].
const FORKS: u32 = 300;
const PERIOD_MS: u32 = 10;
/// How long the children live, per row.
const CHILD_MS: [u32; 2] = [1, 300];

#[derive(Debug, Serialize)]
pub struct ForksRow {
    pub child_ms: u32,
    pub follow_forks: bool,
    pub followed: u64,
    pub missed: Option<u64>,
    pub leaktrace_peak_rss_mib: f64,
    /// SIGINT to the last line of the report.
    pub interrupt_to_report_ms: f64,
    pub report_to_exit_ms: f64,
}

/// Each child lifetime, with and without `-f`, median of `runs`.
pub fn bench_forks(leaktrace: &Path, out: &Path, runs: usize) -> Result<Vec<ForksRow>> {
    let parent = build_c_fixture(out, "forks", &["-O1", "-g"])?;
    let mut rows = Vec::new();
    for child_ms in CHILD_MS {
        for follow_forks in [false, true] {
            let mut samples = Vec::new();
            for _ in 0..runs.max(1) {
                samples.push(forks_once(leaktrace, &parent, out, child_ms, follow_forks)?);
            }
            let pick = |f: fn(&ForksRow) -> f64| {
                let mut values: Vec<f64> = samples.iter().map(f).collect();
                values.sort_by(f64::total_cmp);
                values[values.len() / 2]
            };
            let last = samples.last().context("no run")?;
            rows.push(ForksRow {
                child_ms,
                follow_forks,
                followed: last.followed,
                missed: last.missed,
                leaktrace_peak_rss_mib: pick(|r| r.leaktrace_peak_rss_mib),
                interrupt_to_report_ms: pick(|r| r.interrupt_to_report_ms),
                report_to_exit_ms: pick(|r| r.report_to_exit_ms),
            });
        }
    }
    println!(
        "\n-p on a parent forking {FORKS} children, one every {PERIOD_MS} ms, median of {runs} \
         run(s) (followed and missed: the last run's)"
    );
    println!(
        "  child ms  -f   followed  missed  leaktrace RSS MiB  SIGINT→report ms  report→exit ms"
    );
    for row in &rows {
        println!(
            "  {:>8}  {:<3}  {:>8}  {:>6}  {:>17.1}  {:>16.0}  {:>14.0}",
            row.child_ms,
            if row.follow_forks { "yes" } else { "no" },
            row.followed,
            row.missed.map_or("-".to_owned(), |m| m.to_string()),
            row.leaktrace_peak_rss_mib,
            row.interrupt_to_report_ms,
            row.report_to_exit_ms
        );
    }
    Ok(rows)
}

fn forks_once(
    leaktrace: &Path,
    parent: &Path,
    out: &Path,
    child_ms: u32,
    follow_forks: bool,
) -> Result<ForksRow> {
    let mut fixture = Traced::start(
        Command::new(parent)
            .args([FORKS, PERIOD_MS, child_ms].map(|n| n.to_string()))
            .stdout(Stdio::piped()),
    )?;
    fixture.wait_for_line("ready")?;
    let json = out.join("forks.json");
    let mut tracer = Traced::start(
        Command::new(leaktrace)
            .args(["-p", &fixture.pid().to_string(), "--json"])
            .arg(&json)
            .args(follow_forks.then_some("-f"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )?;
    tracer.wait_for_line("leaktrace: attached")?;
    unsafe { libc::kill(fixture.pid() as i32, libc::SIGUSR1) };
    fixture.wait_for_line("forked all")?;
    let interrupted: Instant = tracer.interrupt();
    let usage = tracer.finish()?;
    // The fixture waits to be told to exit: it is killed as it is dropped.
    drop(fixture);
    let report: serde_json::Value = serde_json::from_str(&fs::read_to_string(&json)?)?;
    let last = usage
        .lines
        .iter()
        .rfind(|line| line.stdout)
        .context("leaktrace printed no report")?;
    let followed = report["processes"].as_array().map_or(0, |p| p.len()) as u64;
    Ok(ForksRow {
        child_ms,
        follow_forks,
        followed,
        missed: report["children_missed"].as_u64(),
        leaktrace_peak_rss_mib: usage.peak_rss_mib,
        interrupt_to_report_ms: last.at.saturating_duration_since(interrupted).as_secs_f64() * 1e3,
        report_to_exit_ms: usage.ended.saturating_duration_since(last.at).as_secs_f64() * 1e3,
    })
}
