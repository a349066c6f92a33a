//! `leaktrace serve`'s flags: on its command line, and in a `--config` file re-read on SIGHUP.
//!
//! The file holds the same flags, one or more a line (`--comm redis-server`), `#` comments
//! and blank lines ignored, split as a shell would. Its flags come after the command line's:
//! a setting given in both takes the file's value, and lists (`--comm`) join.

use std::{ffi::OsString, fs, path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser};

use crate::cli::{Cli, bytes_between, parse_bytes, parse_duration};

/// Runs as a service: traces every process that matches, as they come and go; writes rolling
/// reports and serves Prometheus metrics.
#[derive(Args, Clone, Debug, PartialEq)]
pub struct ServeArgs {
    /// Trace this process (repeatable).
    #[arg(short, long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Trace processes of this name, as /proc/PID/comm has it (repeatable).
    #[arg(long, value_name = "NAME")]
    pub comm: Vec<String>,
    /// Trace processes running this executable (repeatable).
    #[arg(long, value_name = "PATH")]
    pub exe: Vec<PathBuf>,
    /// Trace processes in this cgroup or below it, e.g. a systemd unit's
    /// /system.slice/redis-server.service (repeatable).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Vec<PathBuf>,
    /// Every DUR, write each process's report so far (pprof and JSON) to --out-dir.
    #[arg(long, value_name = "DUR", default_value = "10m", value_parser = parse_duration)]
    pub window: Duration,
    /// Where window and final reports go.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/leaktrace")]
    pub out_dir: PathBuf,
    /// Reports kept in --out-dir, the oldest removed first (a report is its JSON and pprof).
    #[arg(long, value_name = "N", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_windows: u32,
    /// Bytes --out-dir may hold in reports, the oldest removed first (units k, M, G).
    #[arg(long, value_name = "BYTES", default_value = "1G", value_parser = parse_bytes)]
    pub max_out_bytes: u64,
    /// Serve Prometheus metrics on this address, at /metrics.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9782")]
    pub metrics: String,
    /// Sites per process exported as metrics (leaking and fastest-growing first).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub metrics_sites: usize,
    /// Sites per report file.
    #[arg(long, value_name = "N", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_sites: u32,
    /// Period of the figures: each process's trends and verdicts are over intervals of DUR.
    #[arg(short, long, value_name = "DUR", default_value = "10s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Run a reachability scan of each process every DUR: leak kinds in the metrics.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub scan_every: Option<Duration>,
    /// Record one allocation in N: lighter, estimated figures.
    #[arg(long, value_name = "N", conflicts_with = "sample_bytes",
          value_parser = clap::value_parser!(u64).range(2..))]
    pub sample_rate: Option<u64>,
    /// Record an allocation per BYTES allocated, on average: lighter, estimated figures that
    /// rarely miss a large block.
    #[arg(long, value_name = "BYTES",
          value_parser = bytes_between(1, leaktrace_common::sampling::MAX_MEAN_BYTES))]
    pub sample_bytes: Option<u64>,
    /// Read more of these flags from FILE, and again on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The flags on their own, to parse the command line's with a file's.
#[derive(Parser, Debug)]
#[command(name = "leaktrace serve", args_override_self = true)]
struct ServeCommand {
    #[command(flatten)]
    args: ServeArgs,
}

impl ServeArgs {
    /// The command line's flags (`command_line`, after `serve`) with the config file's, read
    /// now. Fails on a file that cannot be read or parsed, and on no selection at all.
    pub fn load(command_line: &[OsString]) -> Result<ServeArgs> {
        let first = ServeCommand::try_parse_from(program().chain(command_line.iter().cloned()))?;
        let args = match &first.args.config {
            None => first.args,
            Some(path) => {
                let text = fs::read_to_string(path)
                    .with_context(|| format!("read the config file {}", path.display()))?;
                let from_file = file_flags(&text)
                    .with_context(|| format!("in the config file {}", path.display()))?;
                let all = program()
                    .chain(command_line.iter().cloned())
                    .chain(from_file.into_iter().map(OsString::from));
                ServeCommand::try_parse_from(all)
                    .with_context(|| format!("in the config file {}", path.display()))?
                    .args
            }
        };
        if args.pids.is_empty()
            && args.comm.is_empty()
            && args.exe.is_empty()
            && args.cgroup.is_empty()
        {
            bail!(
                "serve traces nothing: choose processes with -p PID, --comm NAME, --exe PATH \
                 or --cgroup PATH"
            );
        }
        Ok(args)
    }

    /// The capture of one process, as `leaktrace -p PID` with these settings would run it.
    pub fn capture_cli(&self, pid: u32) -> Cli {
        let mut cli = Cli::parse_from(["leaktrace"]);
        cli.pid = Some(pid);
        cli.interval = Some(self.interval);
        cli.scan_every = self.scan_every;
        cli.sample_rate = self.sample_rate;
        cli.sample_bytes = self.sample_bytes;
        cli.max_sites = self.max_sites;
        cli
    }
}

fn program() -> impl Iterator<Item = OsString> {
    std::iter::once(OsString::from("leaktrace serve"))
}

/// The flags in a config file's text.
fn file_flags(text: &str) -> Result<Vec<String>> {
    let mut flags = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let words = shlex::split(line)
            .with_context(|| format!("line {}: unbalanced quotes", number + 1))?;
        flags.extend(words);
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<OsString> {
        line.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn the_file_adds_to_lists_and_overrides_settings() {
        let dir = std::env::temp_dir().join(format!("leaktrace-settings-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("serve.conf");
        fs::write(
            &file,
            "# the fleet's settings\n--comm 'redis server'\n\n--window 5m --metrics-sites 7\n",
        )
        .unwrap();
        let line = format!("--comm a --window 1m --config {}", file.display());
        let args = ServeArgs::load(&words(&line)).unwrap();
        assert_eq!(args.comm, ["a", "redis server"]);
        assert_eq!(args.window, Duration::from_secs(300));
        assert_eq!(args.metrics_sites, 7);
        fs::write(&file, "--window\n").unwrap();
        let error = ServeArgs::load(&words(&line)).unwrap_err();
        assert!(
            format!("{error:#}").contains("in the config file"),
            "{error:#}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_selection_is_refused() {
        let error = ServeArgs::load(&words("--window 1m")).unwrap_err();
        assert!(error.to_string().contains("-p PID, --comm NAME"), "{error}");
    }
}
