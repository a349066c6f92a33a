//! `cargo xtask bench`: what tracing costs the target, against an untraced run and bcc's
//! memleak, on a workload that does nothing but allocate (bench/workload.cc).
//!
//! Each figure is the median of several runs of the workload, which times itself: ns per
//! allocation-and-free pair, per thread. Benchmarks report; they never fail on a timing.

use std::{
    fs,
    io::{BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use object::{Object, ObjectSymbol};
use serde::Serialize;

use crate::{
    process::{TRACER_WAIT, Traced, expect_line, which},
    run, workspace,
};

const USAGE: &str = "usage: cargo xtask bench [--runs N] [--pairs N] [--quick] [--json PATH]";

/// One workload setting.
#[derive(Clone, Copy, Serialize)]
struct Scenario {
    workload: &'static str,
    threads: u32,
}

const SCENARIOS: [Scenario; 3] = [
    Scenario {
        workload: "churn",
        threads: 1,
    },
    Scenario {
        workload: "churn",
        threads: 4,
    },
    Scenario {
        workload: "mix",
        threads: 1,
    },
];

/// Who watches the workload.
#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Tracer {
    Untraced,
    LeaktraceExact,
    LeaktraceSampled,
    BccMemleak,
}

impl Tracer {
    fn name(self) -> &'static str {
        match self {
            Tracer::Untraced => "untraced",
            Tracer::LeaktraceExact => "leaktrace exact",
            Tracer::LeaktraceSampled => "leaktrace --sample-bytes 524288",
            Tracer::BccMemleak => "bcc memleak",
        }
    }

    /// Pairs per thread for one run: each run lasts about a second, whatever the cost.
    fn pairs(self) -> u64 {
        match self {
            Tracer::Untraced => 20_000_000,
            Tracer::LeaktraceExact | Tracer::LeaktraceSampled => 400_000,
            Tracer::BccMemleak => 100_000,
        }
    }
}

/// One run's figures.
#[derive(Clone, Default, Serialize)]
struct Run {
    ns_per_pair: f64,
    /// Events the tracer received per second of the workload's run (leaktrace only).
    events_per_s: Option<f64>,
    /// Nonzero drop counters of leaktrace's report.
    drops: Vec<(String, u64)>,
    /// The tracer's own CPU time (user + system) and peak RSS.
    cpu_s: Option<f64>,
    peak_rss_mib: Option<f64>,
    /// From starting the tracer to its probes being in.
    attach_ms: Option<f64>,
}

#[derive(Serialize)]
struct Row {
    scenario: Scenario,
    tracer: Tracer,
    median: Run,
    runs: Vec<Run>,
}

struct Options {
    runs: usize,
    pairs: Option<u64>,
    quick: bool,
    json: Option<PathBuf>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options> {
        let mut options = Options {
            runs: 5,
            pairs: None,
            quick: false,
            json: None,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = || {
                args.next()
                    .with_context(|| format!("{arg} needs a value\n{USAGE}"))
            };
            match arg.as_str() {
                "--runs" => options.runs = value()?.parse().context("--runs")?,
                "--pairs" => options.pairs = Some(value()?.parse().context("--pairs")?),
                "--json" => options.json = Some(value()?.into()),
                "--quick" => options.quick = true,
                _ => bail!("unknown argument {arg}\n{USAGE}"),
            }
        }
        if options.quick {
            options.runs = 1;
        }
        Ok(options)
    }

    fn pairs(&self, tracer: Tracer) -> u64 {
        let pairs = self.pairs.unwrap_or(tracer.pairs());
        if self.quick { pairs / 10 } else { pairs }
    }
}

/// Release leaktrace and the workload, built; and where to put results.
pub struct Built {
    pub leaktrace: PathBuf,
    pub workload: PathBuf,
    pub out: PathBuf,
}

pub fn build() -> Result<Built> {
    let root = workspace();
    run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(&root)
            .args(["build", "--release", "-p", "leaktrace"]),
    )?;
    let out = root.join("target/bench");
    fs::create_dir_all(&out)?;
    let workload = out.join("workload");
    run(Command::new("g++")
        .args(["-O2", "-pthread", "-o"])
        .arg(&workload)
        .arg(root.join("xtask/bench/workload.cc")))
    .context("build the workload (g++ is needed: `cargo xtask test` installs it)")?;
    Ok(Built {
        leaktrace: root.join("target/release/leaktrace"),
        workload,
        out,
    })
}

pub fn bench(args: &[String]) -> Result<()> {
    let options = Options::parse(args)?;
    let Built {
        leaktrace,
        workload,
        out,
    } = build()?;
    let bcc = which("memleak-bpfcc");
    if bcc.is_none() {
        println!("bcc memleak: not installed, left out (../shared/peers/setup-bcc.sh installs it)");
    }
    let tracers = [
        Tracer::Untraced,
        Tracer::LeaktraceExact,
        Tracer::LeaktraceSampled,
        Tracer::BccMemleak,
    ];
    let mut rows = Vec::new();
    for scenario in SCENARIOS {
        println!(
            "\n{} x {} thread(s), median of {} run(s)",
            scenario.workload, scenario.threads, options.runs
        );
        let mut table = Vec::new();
        for tracer in tracers {
            if tracer == Tracer::BccMemleak && bcc.is_none() {
                continue;
            }
            let mut runs = Vec::new();
            for _ in 0..options.runs {
                let bench = Bench {
                    workload: &workload,
                    leaktrace: &leaktrace,
                    scenario,
                    pairs: options.pairs(tracer),
                    out: &out,
                };
                match bench.run(tracer) {
                    Ok(run) => runs.push(run),
                    Err(error) => {
                        println!("  {}: failed: {error:#}", tracer.name());
                        break;
                    }
                }
            }
            if !runs.is_empty() {
                table.push(Row {
                    scenario,
                    tracer,
                    median: median(&runs),
                    runs,
                });
            }
        }
        print_table(&table);
        rows.extend(table);
    }
    if let Some(path) = options.json {
        fs::write(&path, serde_json::to_string_pretty(&rows)? + "\n")
            .with_context(|| format!("write {}", path.display()))?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}

/// The per-figure median of several runs (each figure on its own).
fn median(runs: &[Run]) -> Run {
    fn middle(mut values: Vec<f64>) -> Option<f64> {
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied()
    }
    let of = |figure: fn(&Run) -> Option<f64>| middle(runs.iter().filter_map(figure).collect());
    let mut drops: Vec<(String, u64)> = Vec::new();
    for (name, count) in runs.iter().flat_map(|r| &r.drops) {
        match drops.iter_mut().find(|(n, _)| n == name) {
            Some((_, total)) => *total = (*total).max(*count),
            None => drops.push((name.clone(), *count)),
        }
    }
    Run {
        ns_per_pair: of(|r| Some(r.ns_per_pair)).unwrap_or_default(),
        events_per_s: of(|r| r.events_per_s),
        drops,
        cpu_s: of(|r| r.cpu_s),
        peak_rss_mib: of(|r| r.peak_rss_mib),
        attach_ms: of(|r| r.attach_ms),
    }
}

fn print_table(rows: &[Row]) {
    let base = rows
        .iter()
        .find(|r| r.tracer == Tracer::Untraced)
        .map(|r| r.median.ns_per_pair);
    let overhead = |row: &Row| base.map(|b| row.median.ns_per_pair - b);
    let bcc = rows
        .iter()
        .find(|r| r.tracer == Tracer::BccMemleak)
        .and_then(overhead);
    println!(
        "  {:<32} {:>10} {:>10} {:>12} {:>11} {:>10} {:>7} {:>9} {:>8}  drops",
        "tracer",
        "ns/pair",
        "x untraced",
        "overhead ns",
        "bcc ovh / x",
        "events/s",
        "CPU s",
        "RSS MiB",
        "attach"
    );
    let show = |value: Option<f64>, precision: usize| {
        value.map_or("-".to_owned(), |v| format!("{v:.precision$}"))
    };
    for row in rows {
        let m = &row.median;
        let ratio = base.map(|b| m.ns_per_pair / b);
        let vs_bcc = match (bcc, overhead(row)) {
            (Some(bcc), Some(own)) if row.tracer != Tracer::Untraced && own > 0.0 => {
                Some(bcc / own)
            }
            _ => None,
        };
        let drops = if m.drops.is_empty() {
            "none".to_owned()
        } else {
            m.drops
                .iter()
                .map(|(name, count)| format!("{name} {count}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "  {:<32} {:>10.1} {:>10} {:>12} {:>11} {:>10} {:>7} {:>9} {:>8}  {}",
            row.tracer.name(),
            m.ns_per_pair,
            show(ratio, 1),
            show(overhead(row), 0),
            show(vs_bcc, 1),
            show(m.events_per_s, 0),
            show(m.cpu_s, 2),
            show(m.peak_rss_mib, 1),
            show(m.attach_ms, 0),
            if row.tracer == Tracer::Untraced {
                ""
            } else {
                &drops
            },
        );
    }
}

/// One run of the workload under one tracer.
struct Bench<'a> {
    workload: &'a Path,
    leaktrace: &'a Path,
    scenario: Scenario,
    pairs: u64,
    out: &'a Path,
}

impl Bench<'_> {
    fn run(&self, tracer: Tracer) -> Result<Run> {
        let mut workload = Command::new(self.workload)
            .arg(self.scenario.workload)
            .arg(self.scenario.threads.to_string())
            .arg(self.pairs.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("start the workload")?;
        let mut output = BufReader::new(workload.stdout.take().context("workload stdout")?);
        let result = self.traced(tracer, &mut workload, &mut output);
        let _ = workload.kill();
        let _ = workload.wait();
        result
    }

    fn traced(
        &self,
        tracer: Tracer,
        workload: &mut Child,
        output: &mut BufReader<ChildStdout>,
    ) -> Result<Run> {
        expect_line(output, "ready")?;
        let pid = workload.id();
        let json = self.out.join("report.json");
        let _ = fs::remove_file(&json);
        let started = Instant::now();
        let mut tracer_process = match tracer {
            Tracer::Untraced => None,
            Tracer::LeaktraceExact | Tracer::LeaktraceSampled => {
                let mut command = Command::new(self.leaktrace);
                command
                    .args(["-p", &pid.to_string(), "-i", "1h", "--json"])
                    .arg(&json);
                if tracer == Tracer::LeaktraceSampled {
                    command.args(["--sample-bytes", "524288"]);
                }
                let mut child =
                    Traced::start(command.stdout(Stdio::null()).stderr(Stdio::piped()))?;
                child.wait_for_line("leaktrace: attached to pid")?;
                Some(child)
            }
            Tracer::BccMemleak => {
                let mut command = Command::new("memleak-bpfcc");
                command
                    .args(["-p", &pid.to_string(), "3600"])
                    .env("PYTHONUNBUFFERED", "1")
                    .stdout(Stdio::piped())
                    // Its cleanup complains of the tracefs this machine need not have.
                    .stderr(Stdio::null());
                let mut child = Traced::start(&mut command)?;
                // memleak says "Attaching" before it attaches; free is its last probe.
                child.wait_for_line("Attaching to pid")?;
                wait_for_breakpoint(pid, "free")?;
                Some(child)
            }
        };
        let attach_ms = tracer_process
            .as_ref()
            .map(|_| started.elapsed().as_secs_f64() * 1e3);
        let mut stdin = workload.stdin.take().context("workload stdin")?;
        writeln!(stdin, "go")?;
        let ns_per_pair: f64 = expect_line(output, "ns_per_pair ")?
            .parse()
            .context("the workload's figure")?;
        let _ = workload.wait();
        let mut run = Run {
            ns_per_pair,
            attach_ms,
            ..Run::default()
        };
        if let Some(child) = tracer_process.take() {
            if tracer == Tracer::BccMemleak {
                child.interrupt();
            }
            let usage = child.finish()?;
            run.cpu_s = Some(usage.cpu_s);
            run.peak_rss_mib = Some(usage.peak_rss_mib);
        }
        if matches!(tracer, Tracer::LeaktraceExact | Tracer::LeaktraceSampled) {
            // Sampled, the report's counts are estimates, not events: none is shown then.
            let report: serde_json::Value = serde_json::from_str(
                &fs::read_to_string(&json).context("leaktrace wrote no report")?,
            )?;
            let events = report["totals"]["allocs"].as_f64().unwrap_or(0.0)
                + report["totals"]["frees"].as_f64().unwrap_or(0.0);
            let seconds = ns_per_pair * self.pairs as f64 / 1e9;
            run.events_per_s =
                (tracer == Tracer::LeaktraceExact).then(|| events / seconds.max(1e-9));
            if let Some(drops) = report["drops"].as_object() {
                run.drops = drops
                    .iter()
                    .filter_map(|(name, count)| Some((name.clone(), count.as_u64()?)))
                    .filter(|(_, count)| *count > 0)
                    .collect();
            }
        }
        Ok(run)
    }
}

/// Waits until the first byte of `function` in the target's libc is a breakpoint (int3).
fn wait_for_breakpoint(pid: u32, function: &str) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let maps = fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let (start, offset, path) = maps
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (range, perms, offset, path) = (fields[0], fields[1], fields[2], *fields.get(5)?);
            (perms.contains('x') && path.contains("libc.so")).then(|| {
                let start = u64::from_str_radix(range.split('-').next()?, 16).ok()?;
                Some((
                    start,
                    u64::from_str_radix(offset, 16).ok()?,
                    path.to_owned(),
                ))
            })?
        })
        .next()
        .context("no libc mapped in the workload")?;
    let data = fs::read(&path)?;
    let file = object::File::parse(&*data)?;
    let symbol = file
        .dynamic_symbols()
        .find(|s| s.name() == Ok(function))
        .with_context(|| format!("no {function} in {path}"))?;
    let text = file
        .sections()
        .find(|s| {
            use object::ObjectSection;
            (s.address()..s.address() + s.size()).contains(&symbol.address())
        })
        .context("no section holds it")?;
    let file_offset = {
        use object::ObjectSection;
        symbol.address() - text.address() + text.file_range().context("no file range")?.0
    };
    let address = start + file_offset - offset;
    let memory = fs::File::open(format!("/proc/{pid}/mem"))?;
    let deadline = Instant::now() + TRACER_WAIT;
    let mut byte = [0u8];
    while Instant::now() < deadline {
        memory.read_exact_at(&mut byte, address)?;
        if byte[0] == 0xcc {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{function} never got its breakpoint")
}
