//! The command line: the contract users and scripts rely on (the README lists it).

use std::{ffi::OsString, path::PathBuf, time::Duration};

use clap::Parser;
use regex::Regex;

use crate::{
    capture::{CaptureOptions, ImageOptions, ScanOptions},
    gate::{Gate, LeakKind, Suppressions},
    kernel::ProbeSettings,
    ledger::{BlockFilter, Sampling},
    plan::AllocatorChoice,
    report::output::{Destination, Format, ReportFiles},
    scan::mark::Heuristic,
    stacks::{AllocFns, labels::alloc_fn},
    target::TargetSpec,
};

/// Find memory leaks in a running process: uprobes on its allocator, live bytes per call site.
#[derive(Debug, Parser)]
#[command(
    name = "leaktrace",
    version,
    after_help = "With neither -p nor a command, leaktrace runs its built-in leaking demo.\n\n\
Exit codes: 0 ok, 1 other error, 2 bad arguments, 3 no such process (or it exited), 4 not permitted,\n\
5 no allocator found, 6 kernel lacks BPF/uprobes, 7 command could not start,\n\
8 output path unusable, 9 a kernel thread, 10 a zombie, 11 traced by a debugger,\n\
12 bad suppressions; with --error-exitcode N, N when leaks are found."
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub subcommand: Option<Subcommand>,

    /// Attach to this running process.
    #[arg(short, long, value_name = "PID", conflicts_with = "command")]
    pub pid: Option<u32>,

    /// End the capture after this long (e.g. 30s, 5m); default: until Ctrl-C or target exit.
    #[arg(short, long, value_name = "DUR", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Cut the capture into N windows of one interval each, and report for each window what
    /// it allocated that is still live at the end.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub windows: Option<u32>,

    /// End the capture after this many intervals (like bcc memleak's count).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub count: Option<u32>,

    /// End the capture, with its report, when the estimated tracing cost stays above PCT
    /// percent of the target's CPU time for 3 intervals in a row.
    #[arg(long, value_name = "PCT", value_parser = parse_percent)]
    pub max_overhead: Option<f64>,

    /// Tell leaked blocks from reachable ones, as valgrind does (definitely, indirectly and
    /// possibly lost, still reachable): scan the target's memory at the end of the capture,
    /// holding it still for the copy (milliseconds). A launched command is scanned at its
    /// exit without asking. SIGUSR1 to leaktrace scans at once.
    #[arg(long)]
    pub scan: bool,

    /// Scan every DUR too (e.g. 30s).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub scan_every: Option<Duration>,

    /// Do not scan a launched command at its exit.
    #[arg(long, conflicts_with_all = ["scan", "scan_every"])]
    pub no_scan: bool,

    /// The inner pointers the scan counts as start pointers, as valgrind's option of the
    /// name: stdstring, length64, newarray, multipleinheritance, all or none.
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_enum,
          default_values_t = [Heuristic::All])]
    pub leak_check_heuristics: Vec<Heuristic>,

    /// Exit with this code when the scan finds leaked bytes of the kinds
    /// --errors-for-leak-kinds names, at sites no suppression names (as valgrind's option).
    #[arg(long, value_name = "N", conflicts_with = "no_scan",
          value_parser = clap::value_parser!(i32).range(1..=255))]
    pub error_exitcode: Option<i32>,

    /// The leak kinds --error-exitcode counts (default: definite,possible, as valgrind).
    #[arg(long, value_name = "KINDS", value_delimiter = ',', value_enum,
          default_values_t = [LeakKind::Definite, LeakKind::Possible])]
    pub errors_for_leak_kinds: Vec<LeakKind>,

    /// Suppressions in LeakSanitizer's format (`leak:PATTERN` a line): sites whose stack
    /// PATTERN names do not count for --error-exitcode. Repeatable.
    #[arg(long, value_name = "FILE")]
    pub suppressions: Vec<PathBuf>,

    /// Count only live blocks at least this old (e.g. 30s; a bare number is milliseconds, as
    /// bcc memleak's -o): long-lived, not churn.
    #[arg(short = 'o', long, value_name = "AGE", value_parser = parse_age)]
    pub min_age: Option<Duration>,

    /// List each reported site's oldest live blocks, with their addresses, sizes and ages
    /// (bcc memleak's -a; up to 10 a site).
    #[arg(short = 'a', long = "show-blocks")]
    pub show_blocks: bool,

    /// Count only live blocks of at least this many bytes (units k, M, G: powers of 1024).
    #[arg(short = 'z', long, value_name = "BYTES", value_parser = parse_bytes)]
    pub min_size: Option<u64>,

    /// Count only live blocks of at most this many bytes (units k, M, G).
    #[arg(short = 'Z', long, value_name = "BYTES", value_parser = parse_bytes)]
    pub max_size: Option<u64>,

    /// Period of the live report [default: 5s; 1s for the demo].
    #[arg(short, long, value_name = "DUR", value_parser = parse_duration)]
    pub interval: Option<Duration>,

    /// Order of the live view: by growth rate, live bytes or allocations.
    #[arg(long, value_name = "KEY", default_value = "growth")]
    pub sort: SortKey,

    /// Call sites shown in each report.
    #[arg(short = 'T', long, value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub top: u32,

    /// Sites the reports hold at most, the first in the report's order (leaking and most live
    /// first); the rest are counted, not listed. Keeps a report of tens of thousands of sites
    /// in megabytes.
    #[arg(long, value_name = "N", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_sites: u32,

    /// Write folded stacks of live bytes (flamegraph.pl / inferno input) here.
    #[arg(long, value_name = "PATH")]
    pub folded: Option<PathBuf>,

    /// Write a self-contained HTML report here: plots of RSS, traced heap and the top sites
    /// over time, the top sites with their stacks, and the flamegraph.
    #[arg(long, value_name = "PATH")]
    pub html: Option<PathBuf>,

    /// Write an SVG flamegraph of live bytes here.
    #[arg(long, value_name = "PATH")]
    pub flamegraph: Option<PathBuf>,

    /// Write the final report as a gzipped pprof profile here (`go tool pprof` reads it).
    #[arg(long, value_name = "PATH")]
    pub pprof: Option<PathBuf>,

    /// Write the final report as JSON here. `-` (for one report at a time) is standard output;
    /// the text report then goes to stderr.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,

    /// Trace the target's children too (created by fork or vfork after the attach), each
    /// reported on its own. Without it, children are not traced.
    #[arg(short = 'f', long)]
    pub follow_forks: bool,

    /// How to take stacks: `fp` frame pointers only; `auto` (or `dwarf`) CFI unwinding of a
    /// copy of each new stack, by frame pointers where a module has no CFI.
    #[arg(long, value_name = "MODE", default_value = "auto")]
    pub unwind: UnwindMode,

    /// Size of the ring buffer that carries events to leaktrace: a power of two, at least a
    /// page. Too small for the event rate, events are lost (and counted). Default: 16 MiB
    /// for each CPU the target may run on, up to 256 MiB.
    #[arg(long, value_name = "BYTES", value_parser = parse_ring_bytes)]
    pub ring_bytes: Option<u32>,

    /// Record one allocation in N, at random, and scale the figures up by N (like bcc
    /// memleak's -s). Cheaper; the report's bytes and counts become estimates.
    #[arg(short = 's', long, value_name = "N", conflicts_with = "sample_bytes",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub sample_rate: Option<u64>,

    /// Record allocations as a Poisson process over allocated bytes, one every BYTES bytes on
    /// average (as tcmalloc and jemalloc profile; e.g. 524288): large blocks are almost always
    /// recorded, small ones rarely, and every estimate is unbiased.
    #[arg(long, value_name = "BYTES",
          value_parser = bytes_between(1, leaktrace_common::sampling::MAX_MEAN_BYTES))]
    pub sample_bytes: Option<u64>,

    /// Threads of the target the probes can follow at once: each takes, at its first allocator
    /// call, the slot its thread id picks among N, or, when another thread holds that slot,
    /// one of N entries of a map, for the call in flight. Past that, calls are lost (and
    /// counted).
    #[arg(long, value_name = "N", default_value_t = 16384,
          value_parser = clap::value_parser!(u32).range(1..=1 << 22))]
    pub max_threads: u32,

    /// Sampled live blocks the kernel can keep track of (with -s or --sample-bytes). Past
    /// that, sampled allocations are not recorded (and counted).
    #[arg(long, value_name = "N", default_value_t = 1 << 18,
          value_parser = clap::value_parser!(u32).range(1..=1 << 24))]
    pub sampled_blocks: u32,

    /// Bytes of stack copied for CFI unwinding (at most 16384).
    #[arg(long, value_name = "BYTES", default_value = "16k", value_parser = bytes_between(1024, 16384))]
    pub stack_bytes: u64,

    /// Count the functions this regular expression names as allocator wrappers: sites are
    /// labelled by their caller (`createClient ← zmalloc`). Matched against the whole name,
    /// with or without return type, arguments and template arguments (`my_alloc`,
    /// `Pool::get`, `arena_.*`). May be repeated.
    #[arg(long = "alloc-fn", value_name = "REGEX", value_parser = parse_alloc_fn)]
    pub alloc_fn: Vec<Regex>,

    /// Drop the built-in list of allocator wrappers (the malloc family, operator new,
    /// std::allocator, Rust's alloc, PyMem, g_malloc, xmalloc, zmalloc, …).
    #[arg(long)]
    pub no_default_alloc_fns: bool,

    /// Do not find allocator wrappers automatically (functions that only allocate, called
    /// from several places).
    #[arg(long)]
    pub no_auto_alloc_fns: bool,

    /// Look for separate debug info under this directory too (like /usr/lib/debug: by
    /// build-id in .build-id/xx/yyyy.debug, and by .gnu_debuglink name). May be repeated.
    #[arg(long, value_name = "DIR")]
    pub debug_dir: Vec<PathBuf>,

    /// Trace the program's anonymous mappings too (mmap, munmap, mremap): memory that
    /// bypasses malloc. The allocator's own mappings are not counted twice.
    #[arg(long)]
    pub mmap: bool,

    /// Probe the C allocator (malloc, free, …) in this library instead of where the target's
    /// calls bind (a path or a file name as mapped; -O as in bcc memleak).
    #[arg(short = 'O', long, value_name = "PATH")]
    pub allocator: Option<PathBuf>,

    /// The C allocator's functions carry this prefix (e.g. `je_` for a prefixed jemalloc).
    #[arg(long, value_name = "P")]
    pub symbol_prefix: Option<String>,

    /// Probe every function at its first instruction, and each C++ operator even where it
    /// only calls a probed malloc or free (as with `--unwind fp`). Slower (a first instruction the kernel cannot
    /// emulate costs ~10 µs a call under KVM); the same counts, for comparison.
    #[arg(long)]
    pub entry_probes: bool,

    /// Log what leaktrace does (probe points, maps, skipped steps).
    #[arg(short, long)]
    pub verbose: bool,

    /// Run the built-in demo workload instead of tracing (leaktrace starts itself this way).
    #[arg(long, hide = true)]
    pub demo_target: bool,

    /// Start COMMAND (one string, split as a shell would, without running one) stopped, as
    /// `-- CMD ARGS…` does: bcc memleak's -c.
    #[arg(short = 'c', long = "command", value_name = "COMMAND", value_parser = parse_command_line,
          conflicts_with_all = ["pid", "command"])]
    pub command_line: Option<CommandLine>,

    /// Report every INTERVAL seconds (as -i), as bcc memleak's trailing argument.
    #[arg(value_name = "INTERVAL", conflicts_with = "interval",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub interval_seconds: Option<u64>,

    /// End after COUNT intervals (as --count), as bcc memleak's trailing argument.
    #[arg(value_name = "COUNT", requires = "interval_seconds", conflicts_with = "count",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub count_intervals: Option<u32>,

    /// Start this command stopped, trace it from its first instruction, report at its exit.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// What leaktrace does besides a capture.
#[derive(Debug, clap::Subcommand)]
pub enum Subcommand {
    /// Watch a process's memory (RSS, PSS, anonymous, heap) with no probes, and say whether
    /// it grows: the first step of leak hunting, needing only read access to /proc.
    Watch {
        /// The process to watch.
        #[arg(short, long, value_name = "PID")]
        pid: u32,
        /// Period of the readings.
        #[arg(short, long, value_name = "DUR", default_value = "1s", value_parser = parse_duration)]
        interval: Duration,
        /// Stop after this long; default: Ctrl-C or the process's exit.
        #[arg(short, long, value_name = "DUR", value_parser = parse_duration)]
        duration: Option<Duration>,
    },
    /// Print a completion script for SHELL (e.g. `leaktrace completions bash >
    /// /etc/bash_completion.d/leaktrace`).
    Completions {
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Run as a service: trace every process chosen, as they start and restart; write rolling
    /// reports to a directory and serve Prometheus metrics. See "Running on a fleet" in the
    /// README.
    #[command(args_override_self = true)]
    Serve(Box<crate::serve::ServeArgs>),
    /// Print the manual page, in roff (e.g. `leaktrace man > /usr/local/share/man/man1/leaktrace.1`).
    Man,
}

/// How stacks are taken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum UnwindMode {
    /// Frame pointers only: no stack copies, the cheapest; stacks stop early in code built
    /// without frame pointers.
    Fp,
    /// CFI unwinding of a copy of each new stack, by frame pointers where a module has no CFI
    /// (`dwarf` is another name for it).
    #[default]
    #[value(alias = "dwarf")]
    Auto,
}

/// The order of the live view.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    /// Fastest-growing first: what is leaking now.
    #[default]
    Growth,
    /// Most live bytes first.
    Live,
    /// Most allocations first.
    Allocs,
}

/// Blocks `-a` lists per site.
const BLOCKS_LISTED: usize = 10;

impl Cli {
    pub fn target(&self) -> TargetSpec {
        match (self.pid, &self.command_line) {
            (Some(pid), _) => TargetSpec::Running(pid),
            (None, Some(CommandLine(argv))) => TargetSpec::Launch(argv.clone()),
            (None, None) if self.command.is_empty() => TargetSpec::Demo,
            (None, None) => TargetSpec::Launch(self.command.clone()),
        }
    }

    /// The sampling the flags ask for.
    pub fn sampling(&self) -> Sampling {
        match (self.sample_rate, self.sample_bytes) {
            (Some(n), _) if n > 1 => Sampling::EveryNth { n },
            (_, Some(mean_bytes)) => Sampling::Bytes { mean_bytes },
            _ => Sampling::Exact,
        }
    }

    /// Which functions to probe, and where.
    pub fn allocator_choice(&self) -> AllocatorChoice {
        AllocatorChoice {
            library: self.allocator.clone(),
            symbol_prefix: self.symbol_prefix.clone(),
            mappings: self.mmap,
            entry_probes: self.entry_probes,
            see_through_operators: !self.entry_probes && self.unwind != UnwindMode::Fp,
        }
    }

    /// How the probes are loaded.
    pub fn probe_settings(&self) -> ProbeSettings {
        ProbeSettings {
            stack_bytes: match self.unwind {
                UnwindMode::Fp => 0,
                // At most 16 KiB: the parser holds it there.
                UnwindMode::Auto => self.stack_bytes as u32,
            },
            ring_bytes: self.ring_bytes,
            sampling: self.sampling(),
            max_threads: self.max_threads,
            sampled_blocks: self.sampled_blocks,
            // Known once the target and its allocator are: see `capture`.
            free_size_header: false,
        }
    }

    /// When and how the capture reports and ends.
    pub fn capture_options(&self) -> CaptureOptions {
        let default_interval = match self.target() {
            TargetSpec::Demo => Duration::from_secs(1),
            _ => Duration::from_secs(5),
        };
        let interval = self
            .interval
            .or(self.interval_seconds.map(Duration::from_secs))
            .unwrap_or(default_interval);
        let windows = self.windows.map(|count| {
            let window_ms = interval.as_millis().try_into().unwrap_or(u32::MAX);
            (window_ms, count as usize)
        });
        CaptureOptions {
            // N windows end the capture after N intervals, unless told otherwise.
            duration: self.duration.or(self.windows.map(|count| interval * count)),
            interval,
            top: self.top as usize,
            follow_forks: self.follow_forks,
            choice: self.allocator_choice(),
            image: ImageOptions {
                sampling: self.sampling(),
                stack_copies: self.unwind == UnwindMode::Auto,
                filter: BlockFilter {
                    min_age_ms: self
                        .min_age
                        .map_or(0, |age| age.as_millis().try_into().unwrap_or(u32::MAX)),
                    min_size: self.min_size.unwrap_or(0),
                    max_size: self.max_size.unwrap_or(u64::MAX),
                },
                windows,
                list_blocks: self.show_blocks.then_some(BLOCKS_LISTED),
                interval,
                alloc_fns: self.alloc_fns(),
                max_sites: self.max_sites as usize,
            },
            debug_dirs: self.debug_dir.clone(),
            sort: self.sort,
            count: self.count.or(self.count_intervals),
            text_to_stderr: self.report_files().takes_stdout(),
            max_overhead: self.max_overhead,
            scan: ScanOptions {
                at_end: self.scan
                    || self.error_exitcode.is_some()
                    || (!self.no_scan && matches!(self.target(), TargetSpec::Launch(_))),
                every: self.scan_every,
                heuristics: self.leak_check_heuristics.clone(),
            },
        }
    }

    /// Which functions are allocator wrappers.
    pub fn alloc_fns(&self) -> AllocFns {
        AllocFns::new(
            !self.no_default_alloc_fns,
            self.alloc_fn.clone(),
            !self.no_auto_alloc_fns,
        )
    }

    /// The test-suite gate (`--error-exitcode`), its suppressions read.
    pub fn gate(&self) -> anyhow::Result<Gate> {
        let mut patterns = Suppressions::default();
        for path in &self.suppressions {
            patterns.extend(Suppressions::load(path)?);
        }
        Ok(Gate {
            code: self.error_exitcode,
            kinds: self.errors_for_leak_kinds.clone(),
            suppressions: patterns,
        })
    }

    /// The report files asked for, in the order they are written.
    pub fn report_files(&self) -> ReportFiles {
        let asked = [
            (Format::Json, &self.json),
            (Format::Folded, &self.folded),
            (Format::Pprof, &self.pprof),
            (Format::Flamegraph, &self.flamegraph),
            (Format::Html, &self.html),
        ];
        ReportFiles {
            outputs: asked
                .into_iter()
                .filter_map(|(format, path)| Some((format, Destination::from_arg(path.as_ref()?))))
                .collect(),
            top: self.top as usize,
        }
    }
}

/// A byte size: a number with an optional unit, k, M or G (powers of 1024; `KiB`, `kb` and
/// the like read the same).
pub(crate) fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is no size: write bytes like 4096, 64k or 16M"))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("unknown unit {unit:?}: use k, M or G")),
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{text} is too large"))
}

/// A parser of byte sizes from `least` to `most`.
pub(crate) fn bytes_between(least: u64, most: u64) -> impl Fn(&str) -> Result<u64, String> + Clone {
    move |text| {
        let bytes = parse_bytes(text)?;
        if !(least..=most).contains(&bytes) {
            return Err(format!("must be from {least} to {most} bytes"));
        }
        Ok(bytes)
    }
}

/// A block age: a duration, or a bare number of milliseconds (bcc memleak's -o).
fn parse_age(text: &str) -> Result<Duration, String> {
    match text.parse::<u64>() {
        Ok(0) => Err("must be longer than zero".into()),
        Ok(milliseconds) => Ok(Duration::from_millis(milliseconds)),
        Err(_) => parse_duration(text),
    }
}

/// `-c COMMAND`'s words: the program and its arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandLine(pub Vec<OsString>);

/// `-c COMMAND`: its words, split as a shell would (quotes and backslashes), run by no shell.
fn parse_command_line(text: &str) -> Result<CommandLine, String> {
    let words = shlex::split(text).ok_or("unbalanced quotes")?;
    if words.is_empty() {
        return Err("empty command".into());
    }
    Ok(CommandLine(words.into_iter().map(OsString::from).collect()))
}

fn parse_ring_bytes(text: &str) -> Result<u32, String> {
    let bytes: u32 = parse_bytes(text)?
        .try_into()
        .map_err(|_| "must be below 4G".to_owned())?;
    if bytes < 4096 || !bytes.is_power_of_two() {
        return Err("must be a power of two of at least 4096".into());
    }
    Ok(bytes)
}

fn parse_percent(text: &str) -> Result<f64, String> {
    let percent: f64 = text
        .trim_end_matches('%')
        .parse()
        .map_err(|e| format!("{e}; write a percentage like 5 or 0.5"))?;
    if !(percent > 0.0 && percent <= 100.0) {
        return Err("must be above 0 and at most 100".into());
    }
    Ok(percent)
}

fn parse_alloc_fn(text: &str) -> Result<Regex, String> {
    alloc_fn(text).map_err(|e| e.to_string())
}

pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|e| format!("{e}; write a duration like 500ms, 30s or 5m"))?;
    if duration.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        let cli =
            Cli::try_parse_from(["leaktrace", "-p", "42", "-d", "30s", "-i", "1s", "-T", "3"])
                .unwrap();
        assert_eq!(cli.pid, Some(42));
        assert_eq!(cli.duration, Some(Duration::from_secs(30)));
        assert_eq!(cli.interval, Some(Duration::from_secs(1)));
        assert_eq!(cli.top, 3);
        let cli = Cli::try_parse_from(["leaktrace", "-d", "5m", "--", "./a.out", "-x"]).unwrap();
        assert_eq!(cli.command, ["./a.out", "-x"]);
        assert_eq!(cli.duration, Some(Duration::from_secs(300)));
        for (text, percent) in [("5", 5.0), ("0.001", 0.001), ("12.5%", 12.5)] {
            let cli = Cli::try_parse_from(["leaktrace", "--max-overhead", text]).unwrap();
            assert_eq!(cli.max_overhead, Some(percent));
        }
    }

    #[test]
    fn takes_bcc_memleaks_habits() {
        let cli = Cli::try_parse_from([
            "leaktrace",
            "-p",
            "42",
            "-z",
            "1k",
            "-Z",
            "2M",
            "-o",
            "500",
            "-O",
            "libjemalloc.so.2",
            "--ring-bytes",
            "16M",
            "5",
            "3",
        ])
        .unwrap();
        assert_eq!((cli.min_size, cli.max_size), (Some(1024), Some(2 << 20)));
        assert_eq!(cli.min_age, Some(Duration::from_millis(500)));
        assert_eq!(cli.allocator, Some(PathBuf::from("libjemalloc.so.2")));
        assert_eq!(cli.ring_bytes, Some(16 << 20));
        let options = cli.capture_options();
        assert_eq!(options.interval, Duration::from_secs(5));
        assert_eq!(options.count, Some(3));
        let cli = Cli::try_parse_from(["leaktrace", "-c", "ls -l '/tmp/a b'"]).unwrap();
        assert_eq!(
            cli.target(),
            TargetSpec::Launch(vec!["ls".into(), "-l".into(), "/tmp/a b".into()])
        );
        assert_eq!(
            Cli::try_parse_from(["leaktrace", "-o", "2s"])
                .unwrap()
                .min_age,
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn alloc_fn_flags_add_to_and_drop_the_wrappers() {
        let frame = |function: &str| crate::stacks::Frame::of_function(function, None);
        let fns = Cli::try_parse_from(["leaktrace"]).unwrap().alloc_fns();
        assert!(fns.listed(&frame("zmalloc")) && !fns.listed(&frame("pool_get")));
        let cli = Cli::try_parse_from([
            "leaktrace",
            "--alloc-fn",
            "pool_get",
            "--alloc-fn",
            "arena_.*",
            "--no-default-alloc-fns",
        ])
        .unwrap();
        let fns = cli.alloc_fns();
        assert!(fns.listed(&frame("pool_get")) && fns.listed(&frame("arena_new")));
        assert!(!fns.listed(&frame("zmalloc")));
    }

    #[test]
    fn rejects_bad_durations_counts_and_pid_with_command() {
        for args in [
            &["leaktrace", "-d", "soon"][..],
            &["leaktrace", "-i", "0s"],
            &["leaktrace", "-T", "0"],
            &["leaktrace", "-p", "1", "--", "ls"],
            &["leaktrace", "-p", "-5"],
            &["leaktrace", "--ring-bytes", "5000"],
            &["leaktrace", "--ring-bytes", "1024"],
            &["leaktrace", "--ring-bytes", "8X"],
            &["leaktrace", "-z", "12 parsecs"],
            &["leaktrace", "-i", "1s", "5"],
            &["leaktrace", "--count", "2", "5", "3"],
            &["leaktrace", "-p", "1", "-c", "ls"],
            &["leaktrace", "-c", "ls 'unbalanced"],
            &["leaktrace", "-c", "ls", "--", "ls"],
            &["leaktrace", "--max-overhead", "0"],
            &["leaktrace", "--max-overhead", "101"],
            &["leaktrace", "--max-overhead", "lots"],
            &["leaktrace", "--alloc-fn", "pool_(get"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?} accepted");
        }
    }
}
