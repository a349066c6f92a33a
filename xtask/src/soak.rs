//! `cargo xtask soak --minutes M`: leaktrace on a target that allocates at full rate, with a
//! churning site and a growing one, for M minutes. leaktrace's memory must stay flat once warm
//! (beyond the ledger entries of the blocks the target really leaks) and nothing may be
//! dropped at the default settings. Prints the figures; not part of the tests.
//!
//! `--serve`: `leaktrace serve` on a target that allocates from 2^15 distinct stacks and
//! leaks a little from each, with rolling windows every minute: leaktrace's memory must stay
//! flat once warm, and the out-dir within its limits.

use std::{
    fs,
    io::{BufReader, Write},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    bench::{Built, build},
    process::{Traced, Usage, expect_line},
};

/// Bytes leaktrace may hold per live block it tracks (the aggregator bench measures ~52).
const BYTES_PER_LIVE_BLOCK: f64 = 64.0;

/// Growth past the ledger's that still counts as flat: allocator slack and caches.
const SLACK_MIB: f64 = 8.0;

/// `soak --serve`'s limits on the out-dir.
const SERVE_KEEP: u32 = 10;
const SERVE_MAX_OUT_MIB: u64 = 64;

pub fn soak(args: &[String]) -> Result<()> {
    let mut minutes = 10.0;
    let mut serve = false;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--serve" => serve = true,
            "--minutes" => {
                minutes = args
                    .next()
                    .context("--minutes needs a number")?
                    .parse()
                    .context("--minutes")?
            }
            _ => bail!("usage: cargo xtask soak [--serve] [--minutes M]"),
        }
    }
    if serve {
        soak_serve(minutes)
    } else {
        soak_capture(minutes)
    }
}

fn soak_capture(minutes: f64) -> Result<()> {
    let Built {
        leaktrace,
        workload,
        out,
    } = build()?;
    let mut target = start_workload(&workload, "soak")?;
    let json = out.join("soak.json");
    let mut tracer = Traced::start(
        Command::new(&leaktrace)
            .args(["-p", &target.id().to_string(), "-i", "10s", "--json"])
            .arg(&json)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )?;
    let_go(&mut tracer, &mut target)?;

    let total = Duration::from_secs_f64(minutes * 60.0);
    let warm = total / 5;
    let samples = sample_rss(&tracer, total, String::new)?;
    let usage = end(tracer, target)?;
    let report: serde_json::Value = serde_json::from_str(&fs::read_to_string(&json)?)?;

    let totals = &report["totals"];
    let live = totals["live_allocations"].as_f64().unwrap_or(0.0);
    let events = totals["allocs"].as_f64().unwrap_or(0.0) + totals["frees"].as_f64().unwrap_or(0.0);
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
    println!("leaktrace CPU: {:.1} s; drops: {drops}", usage.cpu_s);
    judge_rss(&samples, warm, total, live, usage.peak_rss_mib)?;
    if lost > 0 {
        bail!("{lost} events lost at the default settings");
    }
    println!("flat, nothing lost");
    Ok(())
}

/// leaktrace's RSS every 10 s for `total`, printed with `more` of each moment.
fn sample_rss(
    tracer: &Traced,
    total: Duration,
    more: impl Fn() -> String,
) -> Result<Vec<(Duration, f64)>> {
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < total {
        std::thread::sleep(Duration::from_secs(10).min(total - started.elapsed().min(total)));
        let rss = rss_mib(tracer.pid())?;
        println!(
            "{:>6.0} s  leaktrace RSS {rss:.1} MiB{}",
            started.elapsed().as_secs_f64(),
            more()
        );
        samples.push((started.elapsed(), rss));
    }
    Ok(samples)
}

/// Fails when leaktrace's RSS grew after the warm-up by more than the ledger entries of the
/// `live` blocks leaked since, and the slack.
fn judge_rss(
    samples: &[(Duration, f64)],
    warm: Duration,
    total: Duration,
    live: f64,
    peak_mib: f64,
) -> Result<()> {
    let at_warm = samples
        .iter()
        .find(|(t, _)| *t >= warm)
        .map_or(0.0, |(_, rss)| *rss);
    let at_end = samples.last().map_or(0.0, |(_, rss)| *rss);
    // The leak grows the ledger evenly: its share since the warm-up is allowed.
    let ledger_mib = live * BYTES_PER_LIVE_BLOCK * (1.0 - warm.as_secs_f64() / total.as_secs_f64())
        / (1 << 20) as f64;
    println!(
        "leaktrace RSS: {at_warm:.1} MiB after warm-up ({:.0} s), {at_end:.1} MiB at the end \
         (peak {peak_mib:.1}); the leak's ledger entries account for {ledger_mib:.1} MiB of growth",
        warm.as_secs_f64(),
    );
    let growth = at_end - at_warm - ledger_mib;
    if growth > SLACK_MIB {
        bail!("leaktrace's RSS grew {growth:.1} MiB beyond its ledger after warm-up");
    }
    Ok(())
}

/// `leaktrace serve` on the many-sites workload: its memory and its out-dir stay bounded.
fn soak_serve(minutes: f64) -> Result<()> {
    let Built {
        leaktrace,
        workload,
        out,
    } = build()?;
    let mut target = start_workload(&workload, "sites")?;
    let out_dir = out.join("soak-serve");
    let _ = fs::remove_dir_all(&out_dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let address = format!("127.0.0.1:{port}");
    let mut tracer = Traced::start(
        Command::new(&leaktrace)
            .args(["serve", "-p", &target.id().to_string()])
            .args(["--interval", "1s", "--window", "1m", "--metrics", &address])
            .args(["--keep-windows", &SERVE_KEEP.to_string()])
            .args([
                "--max-out-bytes",
                &format!("{SERVE_MAX_OUT_MIB}M"),
                "--out-dir",
            ])
            .arg(&out_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )?;
    let_go(&mut tracer, &mut target)?;

    let total = Duration::from_secs_f64(minutes * 60.0);
    let warm = total / 5;
    let largest = std::cell::Cell::new(0u64);
    let samples = sample_rss(&tracer, total, || {
        let (reports, bytes) = dir_usage(&out_dir);
        largest.set(largest.get().max(bytes));
        format!(
            ", out-dir {reports} files, {:.1} MiB",
            bytes as f64 / (1 << 20) as f64
        )
    })?;
    let metrics = scrape(&address)?;
    let usage = end(tracer, target)?;
    let figure = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let live = figure("leaktrace_process_live_blocks{");
    let events = figure("leaktrace_process_events_total{");
    println!(
        "\nsoak --serve: {minutes} min, {events:.0} events ({:.0}/s), {:.0} sites, {live:.0} \
         blocks leaked and tracked; drops: {:.0}",
        events / total.as_secs_f64(),
        figure("leaktrace_process_sites{"),
        metrics
            .lines()
            .filter(|l| l.starts_with("leaktrace_process_dropped_events_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    );
    println!("leaktrace CPU: {:.1} s", usage.cpu_s);
    let limit = SERVE_MAX_OUT_MIB << 20;
    println!(
        "out-dir: at most {:.1} MiB (limit {SERVE_MAX_OUT_MIB} MiB, {SERVE_KEEP} reports)",
        largest.get() as f64 / (1 << 20) as f64
    );
    judge_rss(&samples, warm, total, live, usage.peak_rss_mib)?;
    if largest.get() > limit {
        bail!("the out-dir grew past --max-out-bytes");
    }
    println!("flat and bounded");
    Ok(())
}

/// Files in `dir` and their bytes.
fn dir_usage(dir: &std::path::Path) -> (usize, u64) {
    let Ok(entries) = fs::read_dir(dir) else {
        return (0, 0);
    };
    entries
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .fold((0, 0), |(n, bytes), m| (n + 1, bytes + m.len()))
}

/// The metrics page at `address`, by a plain HTTP/1.0 GET.
fn scrape(address: &str) -> Result<String> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(address).context("connect to the metrics")?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
    let mut page = String::new();
    stream.read_to_string(&mut page)?;
    Ok(page)
}

/// The workload running `scenario` on one thread, ready and waiting for its "go".
fn start_workload(workload: &std::path::Path, scenario: &str) -> Result<std::process::Child> {
    let mut target = Command::new(workload)
        .args([scenario, "1", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("start the workload")?;
    let mut output = BufReader::new(target.stdout.take().context("workload stdout")?);
    expect_line(&mut output, "ready")?;
    Ok(target)
}

/// Interrupts leaktrace, waits for its exit and ends the workload: leaktrace's usage.
fn end(tracer: Traced, mut target: std::process::Child) -> Result<Usage> {
    tracer.interrupt();
    let usage = tracer.finish();
    let _ = target.kill();
    let _ = target.wait();
    usage
}

/// Once leaktrace's probes are in, the workload starts.
fn let_go(tracer: &mut Traced, target: &mut std::process::Child) -> Result<()> {
    tracer.wait_for_line("leaktrace: attached to pid")?;
    writeln!(target.stdin.take().context("workload stdin")?, "go")?;
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
