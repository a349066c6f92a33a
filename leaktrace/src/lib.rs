//! leaktrace: memory leaks of a live process, found with eBPF uprobes on its allocator.
//!
//! The modules follow the data: [`allocator`] finds the library to probe, [`probes`] attaches
//! to it, [`events`] decodes what the ring buffer brings, [`ledger`] keeps the outstanding
//! blocks and per-site totals, [`trends`] the change between reports, [`symbolize`] and
//! [`callsite`] turn stacks into frames, and [`report`] renders the result. [`capture`] runs
//! the loop that ties them together.

pub mod allocator;
pub mod callsite;
pub mod capture;
pub mod cli;
pub mod debuginfo;
pub mod demo;
pub mod error;
pub mod events;
pub mod image;
pub mod ledger;
pub mod placement;
pub mod probes;
pub mod proc_maps;
pub mod procmem;
pub mod report;
pub mod sampling;
pub mod symbolize;
pub mod target;
pub mod trends;
pub mod unwind;
pub mod watch;

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};

use crate::{
    allocator::AllocatorChoice,
    capture::{CaptureOptions, Interrupts},
    cli::Cli,
    error::Failure,
    image::{ImageOptions, Prepared},
    ledger::BlockFilter,
    probes::{ProbeSet, ProbeSettings},
    report::render_final,
    target::Target,
    unwind::UnwindMode,
};

/// Runs one capture (or `watch`) as the command line asks.
pub fn run(cli: Cli) -> Result<()> {
    if let Some(cli::Watch::Watch {
        pid,
        interval,
        duration,
    }) = cli.watch
    {
        return watch::run(pid, interval, duration);
    }
    let outputs = [
        &cli.json,
        &cli.folded,
        &cli.pprof,
        &cli.flamegraph,
        &cli.html,
    ];
    for path in outputs.into_iter().flatten() {
        check_output_path(path)?;
    }
    let demo = cli.pid.is_none() && cli.command.is_empty();
    let choice = AllocatorChoice {
        library: cli.allocator.clone(),
        symbol_prefix: cli.symbol_prefix.clone(),
        mappings: cli.mmap,
        entry_probes: cli.entry_probes,
        see_through_operators: !cli.entry_probes && cli.unwind != UnwindMode::Fp,
    };
    let (target, plan) = match cli.pid {
        Some(pid) => {
            let target = Target::existing(pid)?;
            let plan = target.probe_plan(choice.clone())?;
            (target, plan)
        }
        None if demo => {
            let exe = std::env::current_exe().context("find leaktrace's own binary")?;
            Target::launch(
                &[exe.into(), OsString::from("--demo-target")],
                choice.clone(),
            )?
        }
        None => Target::launch(&cli.command, choice.clone())?,
    };
    log::debug!("probing {}", plan.describe());
    for decision in plan.decisions() {
        log::debug!("{decision}");
    }
    let stack_bytes = match cli.unwind {
        UnwindMode::Fp => 0,
        UnwindMode::Auto => cli.stack_bytes,
    };
    let settings = ProbeSettings {
        stack_bytes,
        ring_bytes: cli.ring_bytes,
        sampling: cli.sampling(),
        max_threads: cli.max_threads,
        sampled_blocks: cli.sampled_blocks,
    };
    let mut probes = ProbeSet::attach(target.pid, &plan, &settings)?;
    // Had the process gone while the probes went in, its pid could be another's by now.
    if !target.launched && !target.still_running() {
        return Err(Failure::NoSuchProcess(target.pid).into());
    }
    let prepared = Prepared::new(target.pid, &cli.debug_dir, cli.unwind == UnwindMode::Auto)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let interrupts = {
        let _inside = runtime.enter();
        Interrupts::catch()?
    };
    let window_start_ns = probes.open_window()?;
    target.resume()?;
    eprintln!(
        "leaktrace: attached to pid {} ({}); probing {}{}",
        target.pid,
        target.command,
        plan.modules()
            .iter()
            .map(|m| m.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        settings
            .sampling
            .describe()
            .map_or_else(String::new, |s| format!("; sampling {s}"))
    );

    let default_interval = if demo { 1 } else { 5 };
    let interval = cli
        .interval
        .unwrap_or(Duration::from_secs(default_interval));
    let windows = cli.windows.map(|count| {
        let window_ms = interval.as_millis().try_into().unwrap_or(u32::MAX);
        (window_ms, count as usize)
    });
    let options = CaptureOptions {
        // N windows end the capture after N intervals, unless told otherwise.
        duration: cli.duration.or(cli.windows.map(|count| interval * count)),
        interval,
        top: cli.top as usize,
        follow_forks: cli.follow_forks,
        choice,
        image: ImageOptions {
            sampling: cli.sampling(),
            stack_copies: cli.unwind == UnwindMode::Auto,
            filter: BlockFilter {
                min_age_ms: cli
                    .min_age
                    .map_or(0, |age| age.as_millis().try_into().unwrap_or(u32::MAX)),
                min_size: cli.min_size.unwrap_or(0),
                max_size: cli.max_size.unwrap_or(u64::MAX),
            },
            windows,
        },
        debug_dirs: cli.debug_dir.clone(),
        sort: cli.sort,
        count: cli.count,
    };
    let (report, detach) = runtime.block_on(capture::run(
        &target,
        &plan,
        &mut probes,
        prepared,
        &options,
        window_start_ns,
        interrupts,
    ))?;
    print!("\n{}", render_final(&report, options.top));
    let written = write_outputs(&report, &cli);
    detach.wait();
    drop(probes);
    written?;
    if report.header.ending == report::Ending::Failed {
        anyhow::bail!("leaktrace failed while taking in events; the report above is partial");
    }
    Ok(())
}

fn write_outputs(report: &report::Report, cli: &Cli) -> Result<()> {
    if let Some(path) = &cli.json {
        report.write_json(path)?;
    }
    if let Some(path) = &cli.folded {
        report.write_folded(path)?;
    }
    if let Some(path) = &cli.pprof {
        report.write_pprof(path)?;
    }
    if let Some(path) = &cli.flamegraph {
        report.write_flamegraph(path)?;
    }
    if let Some(path) = &cli.html {
        report.write_html(path, cli.top as usize)?;
    }
    Ok(())
}

/// Fails before the capture, not after it, when a report could not be written.
fn check_output_path(path: &Path) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let reason = if !parent.is_dir() {
        format!("directory {} does not exist", parent.display())
    } else if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        "it is a symbolic link, which leaktrace does not follow".to_owned()
    } else {
        return Ok(());
    };
    Err(Failure::OutputPath {
        path: path.to_path_buf(),
        reason,
    }
    .into())
}
