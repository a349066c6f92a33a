//! `cargo xtask soak --minutes M`: leaktrace on a target that allocates at full rate, with a
//! churning site and a growing one, for M minutes. leaktrace's memory must stay flat once warm
//! (beyond the ledger entries of the blocks the target really leaks) and nothing may be
//! dropped at the default settings. Prints the figures; not part of the tests.

use std::{
    fs,
    io::{BufReader, Write},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    bench::{Built, build},
    process::{Traced, expect_line},
};

/// Bytes leaktrace may hold per live block it tracks (the aggregator bench measures ~52).
const BYTES_PER_LIVE_BLOCK: f64 = 64.0;

/// Growth past the ledger's that still counts as flat: allocator slack and caches.
const SLACK_MIB: f64 = 8.0;

pub fn soak(args: &[String]) -> Result<()> {
    let minutes: f64 = match args {
        [flag, value] if flag == "--minutes" => value.parse().context("--minutes")?,
        [] => 10.0,
        _ => bail!("usage: cargo xtask soak [--minutes M]"),
    };
    let Built {
        leaktrace,
        workload,
        out,
    } = build()?;
    let mut target = Command::new(&workload)
        .args(["soak", "1", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("start the workload")?;
    let mut output = BufReader::new(target.stdout.take().context("workload stdout")?);
    expect_line(&mut output, "ready")?;
    let json = out.join("soak.json");
    let mut tracer = Traced::start(
        Command::new(&leaktrace)
            .args(["-p", &target.id().to_string(), "-i", "10s", "--json"])
            .arg(&json)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )?;
    tracer.wait_for_line("leaktrace: attached to pid")?;
    writeln!(target.stdin.take().context("workload stdin")?, "go")?;

    let total = Duration::from_secs_f64(minutes * 60.0);
    let warm = total / 5;
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < total {
        std::thread::sleep(Duration::from_secs(10).min(total - started.elapsed().min(total)));
        let rss = rss_mib(tracer.pid())?;
        println!(
            "{:>6.0} s  leaktrace RSS {rss:.1} MiB",
            started.elapsed().as_secs_f64()
        );
        samples.push((started.elapsed(), rss));
    }
    tracer.interrupt();
    let usage = tracer.finish();
    let _ = target.kill();
    let _ = target.wait();
    let usage = usage?;
    let report: serde_json::Value = serde_json::from_str(&fs::read_to_string(&json)?)?;

    let at_warm = samples
        .iter()
        .find(|(t, _)| *t >= warm)
        .map_or(0.0, |(_, rss)| *rss);
    let at_end = samples.last().map_or(0.0, |(_, rss)| *rss);
    let totals = &report["totals"];
    let live = totals["live_allocations"].as_f64().unwrap_or(0.0);
    let events = totals["allocs"].as_f64().unwrap_or(0.0) + totals["frees"].as_f64().unwrap_or(0.0);
    // The leak grows the ledger evenly: its share since the warm-up is allowed.
    let ledger_mib = live * BYTES_PER_LIVE_BLOCK * (1.0 - warm.as_secs_f64() / total.as_secs_f64())
        / (1 << 20) as f64;
    let drops = &report["drops"];
    let lost: u64 = [
        "ring_buffer_full",
        "stack_unreadable",
        "pending_map_full",
        "sampled_map_full",
        "allocations_skipped",
    ]
    .iter()
    .map(|name| drops[name].as_u64().unwrap_or(0))
    .sum();
    println!(
        "\nsoak: {minutes} min, {events:.0} events ({:.0}/s), {live:.0} blocks leaked and tracked",
        events / total.as_secs_f64()
    );
    println!(
        "leaktrace RSS: {at_warm:.1} MiB after warm-up ({:.0} s), {at_end:.1} MiB at the end \
         (peak {:.1}); the leak's ledger entries account for {ledger_mib:.1} MiB of growth",
        warm.as_secs_f64(),
        usage.peak_rss_mib
    );
    println!("leaktrace CPU: {:.1} s; drops: {drops}", usage.cpu_s);
    let growth = at_end - at_warm - ledger_mib;
    if growth > SLACK_MIB {
        bail!("leaktrace's RSS grew {growth:.1} MiB beyond its ledger after warm-up");
    }
    if lost > 0 {
        bail!("{lost} events lost at the default settings");
    }
    println!("flat, nothing lost");
    Ok(())
}

/// VmRSS of a process, in MiB.
fn rss_mib(pid: u32) -> Result<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")?;
    Ok(kib / 1024.0)
}
