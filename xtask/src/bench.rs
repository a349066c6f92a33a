//! `cargo xtask bench`: what tracing costs the target, against an untraced run and bcc's
//! memleak, in three parts:
//! - a workload that does nothing but allocate (bench/workload.cc), built once per allocator
//!   (glibc's malloc, jemalloc, tcmalloc, mimalloc), which times itself: ns per
//!   allocation-and-free pair, per thread; with a floor, the kernel's traps alone on the
//!   points leaktrace chose ([`crate::traps`]);
//! - redis-server (Debian's, on jemalloc) under redis-benchmark: requests per second and median
//!   latency;
//! - how long leaktrace takes to attach and to detach (idle targets, 500 busy threads, redis,
//!   a launched command), and how many functions it probes.
//!
//! Each figure is the median of several runs. A tracer that cannot trace a target gets a row
//! that says how it failed. Benchmarks report; they never fail on a timing.

use std::{
    cell::RefCell,
    fs,
    io::{BufReader, Write},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use object::{Object, ObjectSection, ObjectSymbol};
use serde::Serialize;

use crate::{
    build_c_fixture, install_missing,
    process::{TRACER_WAIT, Traced, Usage, expect_line},
    run,
    traps::{TrapPoint, Traps},
    workspace,
};

const USAGE: &str = "usage: cargo xtask bench [--runs N] [--pairs N] [--requests N] [--quick] [--json PATH] \
     [--only workload|redis|attach|scan|forks]";

/// Debian packages the bench needs: g++ for the workload and gcc for the swarm fixture, the
/// allocators the workload is linked with (their run-time libraries: it links each by its
/// soname), and redis.
const BENCH_PACKAGES: [&str; 7] = [
    "g++",
    "gcc",
    "libjemalloc2",
    "libtcmalloc-minimal4",
    "libmimalloc2.0",
    "redis-server",
    "redis-tools",
];

/// The malloc a workload is built with.
#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Allocator {
    Glibc,
    Jemalloc,
    Tcmalloc,
    Mimalloc,
}

impl Allocator {
    const ALL: [Allocator; 4] = [
        Allocator::Glibc,
        Allocator::Jemalloc,
        Allocator::Tcmalloc,
        Allocator::Mimalloc,
    ];

    fn name(self) -> &'static str {
        match self {
            Allocator::Glibc => "glibc",
            Allocator::Jemalloc => "jemalloc",
            Allocator::Tcmalloc => "tcmalloc",
            Allocator::Mimalloc => "mimalloc",
        }
    }

    /// The file its malloc is in: the library the workload links (`-l:` the soname, so that
    /// the dynamic linker binds malloc to it ahead of libc), or libc itself.
    fn library(self) -> &'static str {
        match self {
            Allocator::Glibc => "libc.so.6",
            Allocator::Jemalloc => "libjemalloc.so.2",
            Allocator::Tcmalloc => "libtcmalloc_minimal.so.4",
            Allocator::Mimalloc => "libmimalloc.so.2",
        }
    }
}

/// One workload setting.
#[derive(Clone, Copy, Serialize)]
struct Scenario {
    workload: &'static str,
    threads: u32,
    allocator: Allocator,
}

const SCENARIOS: [Scenario; 6] = [
    Scenario {
        workload: "churn",
        threads: 1,
        allocator: Allocator::Glibc,
    },
    Scenario {
        workload: "churn",
        threads: 4,
        allocator: Allocator::Glibc,
    },
    Scenario {
        workload: "mix",
        threads: 1,
        allocator: Allocator::Glibc,
    },
    Scenario {
        workload: "churn",
        threads: 1,
        allocator: Allocator::Jemalloc,
    },
    Scenario {
        workload: "churn",
        threads: 1,
        allocator: Allocator::Tcmalloc,
    },
    Scenario {
        workload: "churn",
        threads: 1,
        allocator: Allocator::Mimalloc,
    },
];

/// Who watches the target.
#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Tracer {
    Untraced,
    LeaktraceExact,
    /// No tracer: uprobes with no program on the points leaktrace's last exact run hit.
    TrapsAlone,
    LeaktraceSampled,
    BccMemleak,
}

impl Tracer {
    /// In the order they run: the floor after the exact run it takes its points from.
    const ALL: [Tracer; 5] = [
        Tracer::Untraced,
        Tracer::LeaktraceExact,
        Tracer::TrapsAlone,
        Tracer::LeaktraceSampled,
        Tracer::BccMemleak,
    ];

    /// Its name in a table, for a target whose malloc is in `library`: bcc memleak probes
    /// libc unless told the object (`-O`).
    fn label(self, library: &Path) -> String {
        match self {
            Tracer::Untraced => "untraced".into(),
            Tracer::LeaktraceExact => "leaktrace exact".into(),
            Tracer::TrapsAlone => "traps alone (no BPF program)".into(),
            Tracer::LeaktraceSampled => "leaktrace --sample-bytes 524288".into(),
            Tracer::BccMemleak if is_libc(library) => "bcc memleak".into(),
            Tracer::BccMemleak => format!("bcc memleak -O {}", file_name(library)),
        }
    }

    fn is_leaktrace(self) -> bool {
        matches!(self, Tracer::LeaktraceExact | Tracer::LeaktraceSampled)
    }

    /// Pairs per thread for one run: each run lasts about a second on glibc's malloc, whatever
    /// the cost (where the probes are single-stepped, several).
    fn pairs(self) -> u64 {
        match self {
            Tracer::Untraced => 20_000_000,
            Tracer::LeaktraceExact | Tracer::TrapsAlone | Tracer::LeaktraceSampled => 400_000,
            Tracer::BccMemleak => 100_000,
        }
    }
}

/// What a tracer cost itself in one run, and what it lost.
#[derive(Clone, Default, Serialize)]
struct Cost {
    /// Nonzero drop counters of leaktrace's report.
    drops: Vec<(String, u64)>,
    /// The tracer's own CPU time (user + system) and peak RSS.
    cpu_s: Option<f64>,
    peak_rss_mib: Option<f64>,
    /// From starting the tracer to its probes being in.
    attach_ms: Option<f64>,
    /// From SIGINT to its exit, where it was interrupted.
    detach_ms: Option<f64>,
    /// From the last line of its report to its exit.
    report_to_exit_ms: Option<f64>,
}

/// One run of the workload.
#[derive(Clone, Default, Serialize)]
struct Run {
    ns_per_pair: f64,
    /// Events the tracer received per second of the workload's run (leaktrace exact only).
    events_per_s: Option<f64>,
    #[serde(flatten)]
    cost: Cost,
}

/// One tracer's runs on one target; `failed` says how, where runs failed.
#[derive(Serialize)]
struct Row<S, R> {
    #[serde(flatten)]
    setting: S,
    tracer: Tracer,
    label: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    failed: Option<Failed>,
    median: Option<R>,
    runs: Vec<R>,
}

/// Runs that failed, and how the first one did.
#[derive(Clone, Serialize)]
struct Failed {
    runs: usize,
    reason: String,
}

/// Failed runs after which a tracer is given up on a target: once may be bad luck.
const GIVE_UP_AFTER: usize = 2;

impl<S, R> Row<S, R> {
    fn new(setting: S, tracer: Tracer, label: String) -> Row<S, R> {
        Row {
            setting,
            tracer,
            label,
            failed: None,
            median: None,
            runs: Vec::new(),
        }
    }

    /// Whether another run is due: fewer than `runs` worked, and it is not given up.
    fn wants_more(&self, runs: usize) -> bool {
        self.runs.len() < runs && self.failed.as_ref().is_none_or(|f| f.runs < GIVE_UP_AFTER)
    }

    fn record(&mut self, run: Result<R>) {
        match run {
            Ok(run) => self.runs.push(run),
            Err(error) => {
                let failed = self.failed.get_or_insert_with(|| Failed {
                    runs: 0,
                    reason: reason(&error),
                });
                failed.runs += 1;
            }
        }
    }

    /// Its median; or none, and then its table row says how it failed (`width`: the first
    /// column's).
    fn figures(&self, width: usize) -> Option<&R> {
        if self.median.is_none() {
            let reason = self.failed.as_ref().map_or("no run", |f| f.reason.as_str());
            println!("  {:<width$} failed: {reason}", self.label);
        }
        self.median.as_ref()
    }

    /// Runs that failed on a row that has figures too.
    fn note(&self) -> String {
        match &self.failed {
            Some(failed) if self.median.is_some() => {
                format!(" ({} run(s) failed: {})", failed.runs, failed.reason)
            }
            _ => String::new(),
        }
    }
}

#[derive(Serialize)]
struct Results {
    workload: Vec<Row<Scenario, Run>>,
    redis: Vec<Row<RedisSetting, RedisRun>>,
    attach: Vec<Row<AttachSetting, Timing>>,
    scan: Vec<crate::scan_bench::ScanRow>,
    forks: Vec<crate::forks_bench::ForksRow>,
}

struct Options {
    runs: usize,
    pairs: Option<u64>,
    requests: u64,
    quick: bool,
    json: Option<PathBuf>,
    /// One table alone.
    only: Option<String>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options> {
        let mut options = Options {
            runs: 5,
            pairs: None,
            requests: 200_000,
            quick: false,
            json: None,
            only: None,
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
                "--requests" => options.requests = value()?.parse().context("--requests")?,
                "--json" => options.json = Some(value()?.into()),
                "--quick" => options.quick = true,
                "--only" => options.only = Some(value()?.clone()),
                _ => bail!("unknown argument {arg}\n{USAGE}"),
            }
        }
        if options.quick {
            options.runs = 1;
            options.requests /= 10;
        }
        Ok(options)
    }

    /// Whether the table `name` is measured.
    fn wants(&self, name: &str) -> bool {
        self.only.as_deref().is_none_or(|only| only == name)
    }

    fn pairs(&self, tracer: Tracer) -> u64 {
        let pairs = self.pairs.unwrap_or(tracer.pairs());
        if self.quick { pairs / 10 } else { pairs }
    }
}

/// Release leaktrace and the workload (on glibc's malloc), built; and where to put results.
pub struct Built {
    pub leaktrace: PathBuf,
    pub workload: PathBuf,
    pub out: PathBuf,
}

pub fn build() -> Result<Built> {
    let (leaktrace, out) = build_leaktrace()?;
    let workload = build_workload(&out, Allocator::Glibc)?.path;
    Ok(Built {
        leaktrace,
        workload,
        out,
    })
}

/// A table's rows when it is `wanted`; a table that fails says so under its `name` and leaves
/// the others to run.
fn table<T>(wanted: bool, name: &str, bench: impl FnOnce() -> Result<Vec<T>>) -> Vec<T> {
    if !wanted {
        return Vec::new();
    }
    bench().unwrap_or_else(|error| {
        println!("\n{name}: failed: {error:#}");
        Vec::new()
    })
}

/// Release leaktrace, and the directory for the bench's files.
fn build_leaktrace() -> Result<(PathBuf, PathBuf)> {
    let root = workspace();
    run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(&root)
            .args(["build", "--release", "-p", "leaktrace"]),
    )?;
    let out = root.join("target/bench");
    fs::create_dir_all(&out)?;
    Ok((root.join("target/release/leaktrace"), out))
}

/// The workload built for one allocator.
struct Workload {
    allocator: Allocator,
    path: PathBuf,
    /// The library its calls to malloc bind to, as it says (canonical).
    library: PathBuf,
}

/// Builds the workload linked with `allocator`, and checks that its malloc is that one.
fn build_workload(out: &Path, allocator: Allocator) -> Result<Workload> {
    let path = match allocator {
        Allocator::Glibc => out.join("workload"),
        _ => out.join(format!("workload-{}", allocator.name())),
    };
    let mut command = Command::new("g++");
    command
        .args(["-O2", "-pthread", "-o"])
        .arg(&path)
        .arg(workspace().join("xtask/bench/workload.cc"));
    if allocator != Allocator::Glibc {
        command.arg(format!("-l:{}", allocator.library()));
    }
    run(&mut command)
        .context("build the workload (`cargo xtask bench` installs g++ and the allocators)")?;
    let bound = PathBuf::from(&Target::start(&path, "churn", 1, 0)?.malloc);
    if file_name(&bound) != allocator.library() {
        bail!(
            "{} allocates through {}, not {}",
            path.display(),
            bound.display(),
            allocator.library()
        );
    }
    Ok(Workload {
        allocator,
        library: fs::canonicalize(&bound)?,
        path,
    })
}

pub fn bench(args: &[String]) -> Result<()> {
    let options = Options::parse(args)?;
    install_missing(&BENCH_PACKAGES)?;
    let (leaktrace, out) = build_leaktrace()?;
    let workloads = Allocator::ALL
        .into_iter()
        .map(|allocator| build_workload(&out, allocator))
        .collect::<Result<Vec<_>>>()?;
    let bcc = match crate::peers::setup_bcc() {
        Ok(memleak) => Some(memleak),
        Err(error) => {
            println!("bcc memleak: could not be installed ({error:#}), left out");
            None
        }
    };
    let tracers = Tracers {
        leaktrace,
        bcc,
        out,
        hit_points: RefCell::default(),
    };
    let workload = if options.wants("workload") {
        bench_workloads(&tracers, &workloads, &options)
    } else {
        Vec::new()
    };
    let redis = table(
        options.wants("redis") || options.wants("attach"),
        "redis",
        || bench_redis(&tracers, &options),
    );
    let attach = if options.wants("attach") {
        bench_attach(&tracers, &workloads, &redis, &options)
    } else {
        Vec::new()
    };
    let forks = table(options.wants("forks"), "forks", || {
        crate::forks_bench::bench_forks(&tracers.leaktrace, &tracers.out, options.runs)
    });
    let scan = table(options.wants("scan"), "scan", || {
        crate::scan_bench::bench_scan(&tracers.leaktrace, &tracers.out, options.runs)
    });
    if let Some(path) = options.json {
        let results = Results {
            workload,
            redis,
            attach,
            scan,
            forks,
        };
        fs::write(&path, serde_json::to_string_pretty(&results)? + "\n")
            .with_context(|| format!("write {}", path.display()))?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}

/// The workload under each tracer, in each scenario.
fn bench_workloads(
    tracers: &Tracers,
    workloads: &[Workload],
    options: &Options,
) -> Vec<Row<Scenario, Run>> {
    let mut rows = Vec::new();
    for scenario in SCENARIOS {
        let Some(workload) = workloads.iter().find(|w| w.allocator == scenario.allocator) else {
            continue;
        };
        println!(
            "\n{} x {} thread(s) on {} (malloc from {}), median of {} run(s)",
            scenario.workload,
            scenario.threads,
            scenario.allocator.name(),
            workload.library.display(),
            options.runs
        );
        let mut table = Vec::new();
        for tracer in tracers.available() {
            let bench = Bench {
                tracers,
                workload,
                scenario,
                pairs: options.pairs(tracer),
            };
            let mut row = Row::new(scenario, tracer, tracer.label(&workload.library));
            while row.wants_more(options.runs) {
                row.record(bench.run(tracer));
            }
            let runs = &row.runs;
            row.median = (!runs.is_empty()).then(|| Run {
                ns_per_pair: middle(runs.iter().map(|r| Some(r.ns_per_pair))).unwrap_or(0.0),
                events_per_s: middle(runs.iter().map(|r| r.events_per_s)),
                cost: Cost::median(runs.iter().map(|r| &r.cost)),
            });
            table.push(row);
        }
        print_workload_table(&table);
        rows.extend(table);
    }
    rows
}

/// A failure, short enough for a table row.
fn reason(error: &anyhow::Error) -> String {
    let text = format!("{error:#}");
    match text.char_indices().nth(140) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// The middle one of the values there are.
fn middle(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let mut values: Vec<f64> = values.flatten().collect();
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}

impl Cost {
    /// The per-figure median (each figure on its own); drops at their highest.
    fn median<'a>(costs: impl Iterator<Item = &'a Cost> + Clone) -> Cost {
        let of = |figure: fn(&Cost) -> Option<f64>| middle(costs.clone().map(figure));
        let mut drops: Vec<(String, u64)> = Vec::new();
        for (name, count) in costs.clone().flat_map(|c| &c.drops) {
            match drops.iter_mut().find(|(n, _)| n == name) {
                Some((_, total)) => *total = (*total).max(*count),
                None => drops.push((name.clone(), *count)),
            }
        }
        Cost {
            drops,
            cpu_s: of(|c| c.cpu_s),
            peak_rss_mib: of(|c| c.peak_rss_mib),
            attach_ms: of(|c| c.attach_ms),
            detach_ms: of(|c| c.detach_ms),
            report_to_exit_ms: of(|c| c.report_to_exit_ms),
        }
    }

    fn drops(&self) -> String {
        if self.drops.is_empty() {
            return "none".to_owned();
        }
        self.drops
            .iter()
            .map(|(name, count)| format!("{name} {count}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The width of a table's first column: its longest label.
fn label_width<S, R>(rows: &[Row<S, R>]) -> usize {
    rows.iter()
        .map(|row| row.label.chars().count())
        .max()
        .unwrap_or(0)
        .max("tracer".len())
}

fn show(value: Option<f64>, precision: usize) -> String {
    value.map_or("-".to_owned(), |v| format!("{v:.precision$}"))
}

/// The workload table's columns after the tracer.
const WORKLOAD_COLUMNS: [(&str, usize); 8] = [
    ("ns/pair", 10),
    ("x untraced", 10),
    ("overhead ns", 12),
    ("bcc ovh / x", 11),
    ("events/s", 10),
    ("CPU s", 7),
    ("RSS MiB", 9),
    ("attach", 8),
];

fn print_workload_table(rows: &[Row<Scenario, Run>]) {
    let ns = |tracer: Tracer| {
        let row = rows.iter().find(|r| r.tracer == tracer)?;
        row.median.as_ref().map(|m| m.ns_per_pair)
    };
    let base = ns(Tracer::Untraced);
    let overhead = |ns: f64| base.map(|b| ns - b);
    let bcc = ns(Tracer::BccMemleak).and_then(overhead);
    let width = label_width(rows);
    print_header(width, "tracer", &WORKLOAD_COLUMNS, "  drops");
    for (row, m) in figures(rows, width) {
        let vs_bcc = match (bcc, overhead(m.ns_per_pair)) {
            (Some(bcc), Some(own)) if row.tracer != Tracer::Untraced && own > 0.0 => {
                Some(bcc / own)
            }
            _ => None,
        };
        let cells = [
            show(Some(m.ns_per_pair), 1),
            show(base.map(|b| m.ns_per_pair / b), 1),
            show(overhead(m.ns_per_pair), 0),
            show(vs_bcc, 1),
            show(m.events_per_s, 0),
            show(m.cost.cpu_s, 2),
            show(m.cost.peak_rss_mib, 1),
            show(m.cost.attach_ms, 0),
        ];
        let tail = match row.tracer {
            Tracer::Untraced | Tracer::TrapsAlone => String::new(),
            _ => format!("  {}{}", m.cost.drops(), row.note()),
        };
        print_line(width, &row.label, &WORKLOAD_COLUMNS, &cells, &tail);
    }
}

/// One line of a table: the first column `width` wide, then each cell right-aligned to its
/// column's width, then `tail`.
fn print_line(width: usize, first: &str, columns: &[(&str, usize)], cells: &[String], tail: &str) {
    let mut line = format!("  {first:<width$}");
    for ((_, column), cell) in columns.iter().zip(cells) {
        line += &format!(" {cell:>column$}");
    }
    line += tail;
    println!("{}", line.trim_end());
}

fn print_header(width: usize, first: &str, columns: &[(&str, usize)], tail: &str) {
    let titles: Vec<String> = columns.iter().map(|(title, _)| title.to_string()).collect();
    print_line(width, first, columns, &titles, tail);
}

/// The rows that have figures, with them; each of the others is printed as it failed.
fn figures<S, R>(rows: &[Row<S, R>], width: usize) -> impl Iterator<Item = (&Row<S, R>, &R)> {
    rows.iter()
        .filter_map(move |row| Some((row, row.figures(width)?)))
}

/// The tracers there are, and what they need.
struct Tracers {
    leaktrace: PathBuf,
    /// memleak-bpfcc, where installed.
    bcc: Option<PathBuf>,
    out: PathBuf,
    /// The points leaktrace's last exact run hit, for [`Tracer::TrapsAlone`].
    hit_points: RefCell<Vec<TrapPoint>>,
}

/// Runs bcc's Python with `bpf_attach_uprobe` given its last argument, the reference counter's
/// offset, as 0. Debian's bcc 0.26 declares the function to Python without it
/// (iovisor/bcc#5236), so the kernel gets whatever a register holds (6, here): memleak's
/// uprobes then clash with any other uprobe on the same instruction, such as another tracer's
/// or a test's, and whichever comes second fails with EINVAL ("ref_ctr_offset mismatch" in
/// the kernel log).
const BCC_REF_CTR_FIX: &str = "\
import ctypes, runpy, sys
from bcc import libbcc
attach = libbcc.lib.bpf_attach_uprobe
attach.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p,
                   ctypes.c_uint64, ctypes.c_int, ctypes.c_uint32]
libbcc.lib.bpf_attach_uprobe = lambda *args: attach(*args, *[0] * (7 - len(args)))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
";

/// memleak-bpfcc under its own Python (its `#!` line), with [`BCC_REF_CTR_FIX`].
fn bcc_command(memleak: &Path) -> Result<Command> {
    let script = fs::read_to_string(memleak)?;
    let mut python = script
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("#!"))
        .map(str::split_whitespace)
        .with_context(|| format!("{} has no #! line", memleak.display()))?;
    let mut command = Command::new(python.next().context("an empty #! line")?);
    command
        .args(python)
        .args(["-c", BCC_REF_CTR_FIX])
        .arg(memleak);
    Ok(command)
}

/// A tracer with its probes in.
struct Attached {
    process: Traced,
    attach_ms: f64,
}

impl Tracers {
    /// For [`Tracer::TrapsAlone`], its uprobes on process `pid`, at the points the last exact
    /// run hit, checked in place.
    fn traps(&self, tracer: Tracer, pid: u32) -> Result<Option<Traps>> {
        if tracer != Tracer::TrapsAlone {
            return Ok(None);
        }
        let traps = Traps::open(pid, &self.hit_points.borrow())?;
        traps.check(pid)?;
        Ok(Some(traps))
    }

    /// The report of `tracer`'s run; an exact run's hit points are kept for the floor's.
    fn read_report(&self, tracer: Tracer, json: &Path) -> Result<Report> {
        let report = read_report(json)?;
        if tracer == Tracer::LeaktraceExact {
            self.hit_points.replace(report.hit_points.clone());
        }
        Ok(report)
    }

    fn available(&self) -> Vec<Tracer> {
        Tracer::ALL
            .into_iter()
            .filter(|&t| t != Tracer::BccMemleak || self.bcc.is_some())
            .collect()
    }

    /// Starts `tracer` on process `pid`, whose malloc is in `library`, and waits until its
    /// probes are in; leaktrace writes its JSON report to `json`. None: untraced.
    fn attach(
        &self,
        tracer: Tracer,
        pid: u32,
        library: &Path,
        json: &Path,
    ) -> Result<Option<Attached>> {
        if matches!(tracer, Tracer::Untraced | Tracer::TrapsAlone) {
            return Ok(None);
        }
        let _ = fs::remove_file(json);
        let started = Instant::now();
        let (process, attached) = self
            .start(tracer, pid, library, json)
            .context("fails at attach")?;
        Ok(Some(Attached {
            process,
            attach_ms: ms(attached - started),
        }))
    }

    /// Starts a tracer; returns it with the time its probes were in.
    fn start(
        &self,
        tracer: Tracer,
        pid: u32,
        library: &Path,
        json: &Path,
    ) -> Result<(Traced, Instant)> {
        let pid_arg = pid.to_string();
        match tracer {
            Tracer::Untraced | Tracer::TrapsAlone => bail!("no tracer to start"),
            Tracer::LeaktraceExact | Tracer::LeaktraceSampled => {
                let mut command = Command::new(&self.leaktrace);
                command
                    .args(["-p", &pid_arg, "-i", "1h", "--json"])
                    .arg(json);
                if tracer == Tracer::LeaktraceSampled {
                    command.args(["--sample-bytes", "524288"]);
                }
                let mut process =
                    Traced::start(command.stdout(Stdio::piped()).stderr(Stdio::piped()))?;
                let attached = process.wait_for_line("leaktrace: attached to pid")?;
                Ok((process, attached))
            }
            Tracer::BccMemleak => {
                let memleak = self.bcc.as_deref().context("bcc is not installed")?;
                let mut command = bcc_command(memleak)?;
                command.args(["-p", &pid_arg]);
                if !is_libc(library) {
                    command.arg("-O").arg(library);
                }
                command
                    .arg("3600")
                    .env("PYTHONUNBUFFERED", "1")
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                let mut process = Traced::start(&mut command)?;
                // memleak says "Attaching" before it attaches; free is its last probe.
                process.wait_for_line("Attaching to pid")?;
                wait_for_breakpoint(pid, library, "free", &mut process)?;
                Ok((process, Instant::now()))
            }
        }
    }
}

impl Attached {
    /// Waits for the tracer to end (`interrupt`: after a SIGINT), and takes its cost.
    fn finish(self, interrupt: bool) -> Result<Cost> {
        let sent = interrupt.then(|| self.process.interrupt());
        let usage = self.process.finish()?;
        Ok(Cost {
            drops: Vec::new(),
            cpu_s: Some(usage.cpu_s),
            peak_rss_mib: Some(usage.peak_rss_mib),
            attach_ms: Some(self.attach_ms),
            detach_ms: sent.map(|sent| ms(usage.ended - sent)),
            report_to_exit_ms: report_to_exit_ms(&usage),
        })
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// What the bench takes from leaktrace's JSON report.
struct Report {
    /// Allocations and frees recorded (estimates when sampled).
    events: f64,
    /// Nonzero drop counters.
    drops: Vec<(String, u64)>,
    /// Functions probed.
    probed: usize,
    /// The points that were hit.
    hit_points: Vec<TrapPoint>,
}

fn read_report(json: &Path) -> Result<Report> {
    let report: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(json).context("leaktrace wrote no report")?)?;
    let totals = &report["totals"];
    let drops = report["drops"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(name, count)| Some((name.clone(), count.as_u64()?)))
        .filter(|(_, count)| *count > 0)
        .collect();
    // "malloc, free in /usr/lib/…/libjemalloc.so.2 (…); fork in /usr/lib/…/libc.so.6 (…)"
    let probed = report["probed"]
        .as_str()
        .unwrap_or_default()
        .split("; ")
        .filter(|group| !group.is_empty())
        .map(|group| {
            let names = group.split_once(" in ").map_or(group, |(names, _)| names);
            names.split(", ").count()
        })
        .sum();
    Ok(Report {
        events: totals["allocs"].as_f64().unwrap_or(0.0) + totals["frees"].as_f64().unwrap_or(0.0),
        drops,
        probed,
        hit_points: hit_points(&report["cost"]["points"]),
    })
}

/// The points of a report's cost section that were hit, each once: its entry and return
/// programs are listed apart, with one module and offset.
fn hit_points(points: &serde_json::Value) -> Vec<TrapPoint> {
    let mut hit: Vec<TrapPoint> = Vec::new();
    for point in points.as_array().into_iter().flatten() {
        let offset = point["offset"].as_str().and_then(|o| o.strip_prefix("0x"));
        let (Some(module), Some(Ok(offset))) = (
            point["module"].as_str(),
            offset.map(|o| u64::from_str_radix(o, 16)),
        ) else {
            continue;
        };
        if point["hits"].as_u64().unwrap_or(0) == 0 {
            continue;
        }
        let returns = point["kind"] == "return";
        match hit
            .iter_mut()
            .find(|p| p.module == Path::new(module) && p.offset == offset)
        {
            Some(known) => known.returns |= returns,
            None => hit.push(TrapPoint {
                module: module.into(),
                offset,
                returns,
            }),
        }
    }
    hit
}

/// The workload, started and waiting for "go"; killed and reaped however the run ends.
struct Target {
    child: Child,
    output: BufReader<ChildStdout>,
    /// The object its malloc binds to, as it says.
    malloc: String,
}

impl Target {
    fn start(workload: &Path, scenario: &str, threads: u32, pairs: u64) -> Result<Target> {
        let mut child = Command::new(workload)
            .arg(scenario)
            .arg(threads.to_string())
            .arg(pairs.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("start the workload")?;
        let mut output = BufReader::new(child.stdout.take().context("workload stdout")?);
        let malloc = expect_line(&mut output, "malloc ")?;
        expect_line(&mut output, "ready")?;
        Ok(Target {
            child,
            output,
            malloc,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs the workload to its end: ns per pair.
    fn go(&mut self) -> Result<f64> {
        let mut stdin = self.child.stdin.take().context("workload stdin")?;
        writeln!(stdin, "go")?;
        let ns_per_pair = expect_line(&mut self.output, "ns_per_pair ")?
            .parse()
            .context("the workload's figure")?;
        let _ = self.child.wait();
        Ok(ns_per_pair)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One run of the workload under one tracer.
struct Bench<'a> {
    tracers: &'a Tracers,
    workload: &'a Workload,
    scenario: Scenario,
    pairs: u64,
}

impl Bench<'_> {
    fn run(&self, tracer: Tracer) -> Result<Run> {
        let mut target = Target::start(
            &self.workload.path,
            self.scenario.workload,
            self.scenario.threads,
            self.pairs,
        )?;
        let json = self.tracers.out.join("report.json");
        let attached = self
            .tracers
            .attach(tracer, target.pid(), &self.workload.library, &json)?;
        let _traps = self.tracers.traps(tracer, target.pid())?;
        let ns_per_pair = target.go()?;
        let mut run = Run {
            ns_per_pair,
            ..Run::default()
        };
        if let Some(attached) = attached {
            // leaktrace ends with its target; bcc memleak is told to.
            run.cost = attached.finish(tracer == Tracer::BccMemleak)?;
        }
        if tracer.is_leaktrace() {
            let report = self.tracers.read_report(tracer, &json)?;
            let seconds = ns_per_pair * self.pairs as f64 / 1e9;
            // Sampled, the report's counts are estimates, not events: none is shown then.
            run.events_per_s =
                (tracer == Tracer::LeaktraceExact).then(|| report.events / seconds.max(1e-9));
            run.cost.drops = report.drops;
        }
        Ok(run)
    }
}

fn file_name(path: &Path) -> &str {
    path.file_name()
        .and_then(|name| name.to_str())
        .unwrap_or_default()
}

fn is_libc(library: &Path) -> bool {
    file_name(library).starts_with("libc.so")
}

/// The first executable mapping of process `pid` whose file passes `wanted`: the file, the
/// mapping's start address and its offset in the file.
pub(crate) fn mapped(pid: u32, wanted: impl Fn(&Path) -> bool) -> Option<(PathBuf, u64, u64)> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    maps.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (range, perms, offset, path) = (fields[0], fields[1], fields[2], fields.get(5)?);
        if !perms.contains('x') || !wanted(Path::new(path)) {
            return None;
        }
        let start = u64::from_str_radix(range.split('-').next()?, 16).ok()?;
        let offset = u64::from_str_radix(offset, 16).ok()?;
        Some((PathBuf::from(path), start, offset))
    })
}

/// Waits until the first byte of `function` in `library`, as process `pid` maps it, is a
/// breakpoint (int3); fails with the tracer's last words if it ends first.
fn wait_for_breakpoint(
    pid: u32,
    library: &Path,
    function: &str,
    tracer: &mut Traced,
) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let (path, start, offset) = mapped(pid, |path| path == library)
        .with_context(|| format!("{} is not mapped in the target", library.display()))?;
    let data = fs::read(&path)?;
    let file = object::File::parse(&*data)?;
    let symbol = file
        .dynamic_symbols()
        .find(|s| s.name() == Ok(function))
        .with_context(|| format!("no {function} in {}", path.display()))?;
    let text = file
        .sections()
        .find(|s| (s.address()..s.address() + s.size()).contains(&symbol.address()))
        .context("no section holds it")?;
    let file_offset =
        symbol.address() - text.address() + text.file_range().context("no file range")?.0;
    let address = start + file_offset - offset;
    let memory = fs::File::open(format!("/proc/{pid}/mem"))?;
    let deadline = Instant::now() + TRACER_WAIT;
    let mut byte = [0u8];
    while Instant::now() < deadline {
        memory.read_exact_at(&mut byte, address)?;
        if byte[0] == 0xcc {
            return Ok(());
        }
        if tracer.exited() {
            bail!("{}", tracer.last_words());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{function} never got its breakpoint")
}

// redis-server under redis-benchmark.

/// One redis-benchmark test (SET, GET).
#[derive(Clone, Serialize)]
struct Test {
    name: String,
    rps: f64,
    p50_ms: f64,
}

/// One run of redis-benchmark.
#[derive(Clone, Default, Serialize)]
struct RedisRun {
    tests: Vec<Test>,
    /// Functions leaktrace probed.
    probed: Option<usize>,
    #[serde(flatten)]
    cost: Cost,
}

#[derive(Clone, Serialize)]
struct RedisSetting {
    redis: String,
    requests: u64,
    clients: u32,
}

/// redis-server on a free port of 127.0.0.1, without persistence; killed when dropped.
struct Redis {
    child: Child,
    port: String,
    /// "7.0.15, jemalloc-5.3.0" from its INFO.
    describe: String,
    /// The library its malloc is in.
    library: PathBuf,
}

/// Clients redis-benchmark runs at once.
const REDIS_CLIENTS: u32 = 50;

impl Redis {
    fn start() -> Result<Redis> {
        let port = TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
            .to_string();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--daemonize", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start redis-server")?;
        let mut redis = Redis {
            child,
            port,
            describe: String::new(),
            library: PathBuf::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !redis
            .cli(&["ping"])
            .is_ok_and(|reply| reply.trim() == "PONG")
        {
            if Instant::now() > deadline {
                bail!("redis-server did not answer on port {}", redis.port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let info = redis.cli(&["info"])?;
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .unwrap_or("?")
                .trim()
                .to_owned()
        };
        redis.describe = format!("{}, {}", field("redis_version"), field("mem_allocator"));
        let pid = redis.child.id();
        redis.library = ["libjemalloc.so", "libc.so"]
            .into_iter()
            .find_map(|prefix| mapped(pid, |path| file_name(path).starts_with(prefix)))
            .context("redis-server maps neither libjemalloc nor libc")?
            .0;
        Ok(redis)
    }

    fn cli(&self, args: &[&str]) -> Result<String> {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("run redis-cli")?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// redis-benchmark's SET and GET tests.
    fn benchmark(&self, requests: u64) -> Result<Vec<Test>> {
        let output = Command::new("redis-benchmark")
            .args(["-h", "127.0.0.1", "-p", &self.port, "-q", "--csv"])
            .args(["-n", &requests.to_string()])
            .args(["-c", &REDIS_CLIENTS.to_string(), "-t", "set,get"])
            .stdin(Stdio::null())
            .output()
            .context("run redis-benchmark")?;
        if !output.status.success() {
            bail!("redis-benchmark failed: {}", output.status);
        }
        parse_benchmark(&String::from_utf8_lossy(&output.stdout))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// redis-benchmark's `--csv`: a header, then one quoted row per test.
fn parse_benchmark(csv: &str) -> Result<Vec<Test>> {
    let mut rows = csv.lines().map(|line| {
        line.split(',')
            .map(|field| field.trim().trim_matches('"'))
            .collect::<Vec<_>>()
    });
    let header = rows.next().context("redis-benchmark printed nothing")?;
    let column = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .with_context(|| format!("redis-benchmark --csv has no {name}: {header:?}"))
    };
    let (rps, p50) = (column("rps")?, column("p50_latency_ms")?);
    rows.filter(|fields| fields.len() == header.len())
        .map(|fields| {
            Ok(Test {
                name: fields[0].to_owned(),
                rps: fields[rps].parse().context("rps")?,
                p50_ms: fields[p50].parse().context("p50")?,
            })
        })
        .collect()
}

/// redis-server under redis-benchmark, each tracer in turn within each run.
fn bench_redis(tracers: &Tracers, options: &Options) -> Result<Vec<Row<RedisSetting, RedisRun>>> {
    let redis = Redis::start()?;
    let setting = RedisSetting {
        redis: redis.describe.clone(),
        requests: options.requests,
        clients: REDIS_CLIENTS,
    };
    println!(
        "\nredis-server {} (malloc from {}) under redis-benchmark -n {} -c {} -t set,get, \
         median of {} run(s)",
        setting.redis,
        redis.library.display(),
        setting.requests,
        setting.clients,
        options.runs
    );
    redis.benchmark((options.requests / 4).max(1000))?;
    let mut rows: Vec<Row<RedisSetting, RedisRun>> = tracers
        .available()
        .into_iter()
        .map(|tracer| Row::new(setting.clone(), tracer, tracer.label(&redis.library)))
        .collect();
    // Interleaved, so that a drift in the machine's load falls on every tracer alike.
    while rows.iter().any(|row| row.wants_more(options.runs)) {
        for row in rows.iter_mut().filter(|row| row.wants_more(options.runs)) {
            row.record(redis_run(tracers, &redis, row.tracer, options.requests));
        }
    }
    for row in &mut rows {
        if row.runs.is_empty() {
            continue;
        }
        let names: Vec<String> = row.runs[0].tests.iter().map(|t| t.name.clone()).collect();
        let tests = names
            .into_iter()
            .map(|name| {
                let of = |figure: fn(&Test) -> f64| {
                    middle(
                        row.runs
                            .iter()
                            .map(|run| run.tests.iter().find(|t| t.name == name).map(figure)),
                    )
                    .unwrap_or(0.0)
                };
                Test {
                    rps: of(|t| t.rps),
                    p50_ms: of(|t| t.p50_ms),
                    name,
                }
            })
            .collect();
        row.median = Some(RedisRun {
            tests,
            probed: row.runs[0].probed,
            cost: Cost::median(row.runs.iter().map(|r| &r.cost)),
        });
    }
    print_redis_table(&rows);
    Ok(rows)
}

fn redis_run(tracers: &Tracers, redis: &Redis, tracer: Tracer, requests: u64) -> Result<RedisRun> {
    let json = tracers.out.join("redis.json");
    let attached = tracers.attach(tracer, redis.child.id(), &redis.library, &json)?;
    let _traps = tracers.traps(tracer, redis.child.id())?;
    let tests = redis.benchmark(requests)?;
    let mut run = RedisRun {
        tests,
        ..RedisRun::default()
    };
    if let Some(attached) = attached {
        run.cost = attached.finish(true)?;
    }
    if tracer.is_leaktrace() {
        let report = tracers.read_report(tracer, &json)?;
        run.cost.drops = report.drops;
        run.probed = Some(report.probed);
    }
    Ok(run)
}

/// The redis table's columns after the tracer.
const REDIS_COLUMNS: [(&str, usize); 9] = [
    ("test", 5),
    ("rps", 9),
    ("x untraced", 10),
    ("p50 ms", 7),
    ("x untraced", 10),
    ("CPU s", 7),
    ("RSS MiB", 9),
    ("attach", 8),
    ("detach", 8),
];

fn print_redis_table(rows: &[Row<RedisSetting, RedisRun>]) {
    let untraced = rows
        .iter()
        .find(|r| r.tracer == Tracer::Untraced)
        .and_then(|r| r.median.as_ref());
    let width = label_width(rows);
    print_header(width, "tracer", &REDIS_COLUMNS, "  drops");
    for (row, m) in figures(rows, width) {
        for (i, test) in m.tests.iter().enumerate() {
            let base = untraced.and_then(|u| u.tests.iter().find(|t| t.name == test.name));
            // The tracer's own figures cover the whole run: shown once.
            let own = |value: String| if i == 0 { value } else { String::new() };
            let cells = [
                test.name.clone(),
                show(Some(test.rps), 0),
                show(base.map(|b| test.rps / b.rps), 2),
                show(Some(test.p50_ms), 3),
                show(base.map(|b| test.p50_ms / b.p50_ms), 2),
                own(show(m.cost.cpu_s, 2)),
                own(show(m.cost.peak_rss_mib, 1)),
                own(show(m.cost.attach_ms, 0)),
                own(show(m.cost.detach_ms, 0)),
            ];
            let tail = match row.tracer {
                Tracer::Untraced | Tracer::TrapsAlone => String::new(),
                _ => own(format!("  {}{}", m.cost.drops(), row.note())),
            };
            print_line(
                width,
                &own(row.label.clone()),
                &REDIS_COLUMNS,
                &cells,
                &tail,
            );
        }
    }
}

// leaktrace's attach and detach times.

/// Attach and detach times of one run.
#[derive(Clone, Default, Serialize)]
struct Timing {
    attach_ms: Option<f64>,
    /// SIGINT to exit.
    detach_ms: Option<f64>,
    report_to_exit_ms: Option<f64>,
    /// Start to exit, for a launched command.
    total_ms: Option<f64>,
}

/// What leaktrace attached to is the row's label.
#[derive(Serialize)]
struct AttachSetting {
    /// Functions leaktrace probed, as its report lists them.
    probed: Option<usize>,
}

/// leaktrace's attach and detach times: on each idle workload, on 500 busy threads, on redis
/// (from its runs), and launching /bin/true.
fn bench_attach(
    tracers: &Tracers,
    workloads: &[Workload],
    redis: &[Row<RedisSetting, RedisRun>],
    options: &Options,
) -> Vec<Row<AttachSetting, Timing>> {
    println!(
        "\nleaktrace exact: attach and detach, median of {} run(s)",
        options.runs
    );
    let mut rows = Vec::new();
    for workload in workloads {
        let target = format!("-p workload on {} (idle)", workload.allocator.name());
        rows.push(timing_row(target, options.runs, || {
            let target = Target::start(&workload.path, "churn", 1, 0)?;
            tracers.attach_for_a_moment(target.pid(), &workload.library)
        }));
    }
    // Many threads, all of them busy: the attach waits on the target's CPUs and address space.
    let swarm = build_swarm(&tracers.out);
    let target = format!("-p swarm: {SWARM_THREADS} busy threads, more coming and going");
    rows.push(timing_row(target, options.runs, || {
        let swarm = swarm.as_ref().map_err(|error| anyhow!("{error:#}"))?;
        let running = Swarm::start(swarm)?;
        tracers.attach_for_a_moment(running.child.id(), Path::new("libc.so.6"))
    }));
    if let Some(row) = redis.iter().find(|r| r.tracer == Tracer::LeaktraceExact) {
        // Taken from the redis runs, not run again.
        let mut runs = row.runs.iter().map(|r| {
            let timing = Timing {
                attach_ms: r.cost.attach_ms,
                detach_ms: r.cost.detach_ms,
                report_to_exit_ms: r.cost.report_to_exit_ms,
                total_ms: None,
            };
            (timing, r.probed)
        });
        let target = "-p redis-server, after redis-benchmark".to_owned();
        let mut timing = timing_row(target, row.runs.len(), || {
            runs.next().context("no more runs")
        });
        timing.failed = row.failed.clone();
        rows.push(timing);
    }
    rows.push(timing_row("-- /bin/true".into(), options.runs, || {
        tracers.launch_true()
    }));
    if let Some(workload) = workloads.first() {
        rows.push(tracers.serve_row(workload, options.runs));
    }
    print_attach_table(&rows);
    rows
}

/// The threads that tests/fixtures/swarm.c keeps busy.
const SWARM_THREADS: u32 = 500;

/// tests/fixtures/swarm.c, built: [`SWARM_THREADS`] threads that each allocate and free
/// every millisecond, plus threads that come and go.
fn build_swarm(out: &Path) -> Result<PathBuf> {
    build_c_fixture(out, "swarm", &["-O1", "-pthread"])
}

/// The swarm fixture, running until dropped; the end of its input ends it.
struct Swarm {
    child: Child,
}

impl Swarm {
    fn start(path: &Path) -> Result<Swarm> {
        let mut child = Command::new(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("start the swarm fixture")?;
        let mut output = BufReader::new(child.stdout.take().context("swarm stdout")?);
        let swarm = Swarm { child };
        expect_line(&mut output, "ready")?;
        Ok(swarm)
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Tracers {
    /// `leaktrace serve --exe WORKLOAD` following the workload as it starts again and again:
    /// from its start to the service's attached line (the "within 1 s").
    fn serve_row(&self, workload: &Workload, runs: usize) -> Row<AttachSetting, Timing> {
        let mut serve = Traced::start(
            Command::new(&self.leaktrace)
                .args(["serve", "--exe"])
                .arg(&workload.path)
                .args(["--interval", "1s", "--metrics", "127.0.0.1:0", "--out-dir"])
                .arg(self.out.join("serve-bench"))
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        )
        .and_then(|mut serve| {
            serve.wait_for_line("leaktrace: serving metrics")?;
            Ok(serve)
        });
        let target = format!(
            "serve: {} started, until attached",
            workload.allocator.name()
        );
        let row = timing_row(target, runs, || {
            let serve = serve.as_mut().map_err(|error| anyhow!("{error:#}"))?;
            let started = Instant::now();
            let target = Target::start(&workload.path, "churn", 1, 0)?;
            let attached =
                serve.wait_for_line(&format!("leaktrace: attached to pid {} ", target.pid()))?;
            let timing = Timing {
                attach_ms: Some(attached.duration_since(started).as_secs_f64() * 1000.0),
                detach_ms: None,
                report_to_exit_ms: None,
                total_ms: None,
            };
            Ok((timing, None))
        });
        if let Ok(serve) = serve {
            serve.interrupt();
            let _ = serve.finish();
        }
        row
    }

    /// leaktrace on process `pid`, whose malloc is in `library`: attach, a moment, SIGINT.
    fn attach_for_a_moment(&self, pid: u32, library: &Path) -> Result<(Timing, Option<usize>)> {
        let json = self.out.join("attach.json");
        let attached = self
            .attach(Tracer::LeaktraceExact, pid, library, &json)?
            .context("leaktrace is a tracer")?;
        let attach_ms = attached.attach_ms;
        std::thread::sleep(Duration::from_millis(200));
        let cost = attached.finish(true)?;
        let timing = Timing {
            attach_ms: Some(attach_ms),
            detach_ms: cost.detach_ms,
            report_to_exit_ms: cost.report_to_exit_ms,
            total_ms: None,
        };
        Ok((timing, Some(read_report(&json)?.probed)))
    }

    /// `leaktrace -- /bin/true`, start to exit.
    fn launch_true(&self) -> Result<(Timing, Option<usize>)> {
        let json = self.out.join("true.json");
        let started = Instant::now();
        let mut process = Traced::start(
            Command::new(&self.leaktrace)
                .arg("--json")
                .arg(&json)
                .args(["--", "/bin/true"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )?;
        let attached = process.wait_for_line("leaktrace: attached to pid")?;
        let usage = process.finish()?;
        let timing = Timing {
            attach_ms: Some(ms(attached - started)),
            detach_ms: None,
            report_to_exit_ms: report_to_exit_ms(&usage),
            total_ms: Some(ms(usage.ended - started)),
        };
        Ok((timing, Some(read_report(&json)?.probed)))
    }
}

/// From the last line on the tracer's stdout (the end of leaktrace's report) to its exit.
fn report_to_exit_ms(usage: &Usage) -> Option<f64> {
    let last = usage.lines.iter().rfind(|line| line.stdout)?;
    Some(ms(usage.ended.saturating_duration_since(last.at)))
}

/// A row of the attach table: `runs` of `once`, each timing with the functions probed.
fn timing_row(
    target: String,
    runs: usize,
    mut once: impl FnMut() -> Result<(Timing, Option<usize>)>,
) -> Row<AttachSetting, Timing> {
    let setting = AttachSetting { probed: None };
    let mut row = Row::new(setting, Tracer::LeaktraceExact, target);
    while row.wants_more(runs) {
        let run = once().map(|(timing, probed)| {
            row.setting.probed = row.setting.probed.or(probed);
            timing
        });
        row.record(run);
    }
    let of = |figure: fn(&Timing) -> Option<f64>| middle(row.runs.iter().map(figure));
    row.median = (!row.runs.is_empty()).then(|| Timing {
        attach_ms: of(|t| t.attach_ms),
        detach_ms: of(|t| t.detach_ms),
        report_to_exit_ms: of(|t| t.report_to_exit_ms),
        total_ms: of(|t| t.total_ms),
    });
    row
}

/// The attach table's columns after the target.
const ATTACH_COLUMNS: [(&str, usize); 5] = [
    ("probed", 6),
    ("attach ms", 10),
    ("detach ms", 10),
    ("report→exit ms", 15),
    ("total ms", 9),
];

fn print_attach_table(rows: &[Row<AttachSetting, Timing>]) {
    let width = label_width(rows);
    print_header(width, "leaktrace", &ATTACH_COLUMNS, "");
    for (row, m) in figures(rows, width) {
        let cells = [
            row.setting.probed.map_or("-".to_owned(), |n| n.to_string()),
            show(m.attach_ms, 0),
            show(m.detach_ms, 0),
            show(m.report_to_exit_ms, 0),
            show(m.total_ms, 0),
        ];
        print_line(width, &row.label, &ATTACH_COLUMNS, &cells, &row.note());
    }
}
