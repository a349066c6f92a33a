//! leaktrace: memory leaks of a live process, found with eBPF uprobes on its allocator.
//!
//! The stages follow the data, each in its own folder:
//!
//! | stage | in | out |
//! |---|---|---|
//! | [`target`] | a pid or a command | the process, held by a pidfd; its mappings and memory |
//! | [`plan`] | the process's mapped files | where each allocator function is probed |
//! | [`kernel`] | the plan | the eBPF object attached; decoded events, drops, the window switch |
//! | [`capture`] | events | the loop: each traced image fed, the live view, the ending |
//! | [`ledger`] | allocations and frees | outstanding blocks and per-site totals, growth |
//! | [`stacks`] | kernel stacks and stack copies | call sites with symbolized frames, each labelled past its allocator wrappers |
//! | [`report`] | the ledger and its sites | text, JSON, folded stacks, SVG, HTML, pprof |
//!
//! Beside them: [`cli`] turns the flags into each stage's settings once, [`error`] names the
//! failures an operator acts on (each with an exit code), [`watch`] is `leaktrace watch`
//! (memory figures alone, no probes), and [`demo`] the built-in leaking target.

// The map above and each stage's own links name private modules too: they are for the next
// engineer, who reads them with `cargo doc --document-private-items`.
#![allow(rustdoc::private_intra_doc_links)]

mod capture;
pub mod cli;
pub mod demo;
pub mod error;
pub mod kernel;
pub mod ledger;
pub mod plan;
pub mod report;
pub mod stacks;
pub mod target;
mod watch;

use anyhow::Result;

use crate::{cli::Cli, report::Ending, target::Target};

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
    let files = cli.report_files();
    files.check()?;
    let options = cli.capture_options();
    let (target, plan) = Target::open(&cli.target(), &options.choice)?;
    let (report, detach) = capture::run(&target, &plan, &cli.probe_settings(), &options)?;
    print!("\n{}", report::render_final(&report, options.top));
    let written = files.write(&report);
    detach.wait();
    written?;
    if report.header.ending == Ending::Failed {
        anyhow::bail!("leaktrace failed while taking in events; the report above is partial");
    }
    Ok(())
}
