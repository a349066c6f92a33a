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
//! | [`cost`] | hits per probe point, CPU time | what tracing costs the target, per interval |
//! | [`ledger`] | allocations and frees | outstanding blocks and per-site totals, growth |
//! | [`scan`] | the ledger's live blocks, the frozen target's memory | each block's leak kind, as valgrind tells them |
//! | [`stacks`] | kernel stacks and stack copies | call sites with symbolized frames, each labelled past its allocator wrappers |
//! | [`report`] | the ledger and its sites | text, JSON, folded stacks, SVG, HTML, pprof |
//! | [`gate`] | the report's scan | the exit code a test suite acts on (`--error-exitcode`) |
//!
//! Beside them: [`cli`] turns the flags into each stage's settings once, [`error`] names the
//! failures an operator acts on (each with an exit code), [`priority`] raises leaktrace's
//! own scheduling priority before it plans (attaching) or once its command is started, [`watch`] is `leaktrace watch`
//! (memory figures alone, no probes), and [`demo`] the built-in leaking target.

// The map above and each stage's own links name private modules too: they are for the next
// engineer, who reads them with `cargo doc --document-private-items`.
#![allow(rustdoc::private_intra_doc_links)]

mod capture;
pub mod cli;
pub mod cost;
pub mod demo;
pub mod error;
pub mod export;
pub mod gate;
pub mod kernel;
pub mod ledger;
pub mod plan;
mod priority;
pub mod report;
pub mod scan;
mod serve;
pub mod stacks;
pub mod target;
mod watch;

use anyhow::Result;
use clap::CommandFactory;

use crate::{
    cli::Cli,
    report::Ending,
    target::{Target, TargetSpec},
};

/// Runs one capture (or a subcommand: `watch`, `completions`, `man`) as the command line asks.
pub fn run(cli: Cli) -> Result<()> {
    match cli.subcommand {
        Some(cli::Subcommand::Watch {
            pid,
            interval,
            duration,
        }) => return watch::run(pid, interval, duration),
        Some(cli::Subcommand::Completions { shell }) => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "leaktrace", &mut script);
            return print_document(&script);
        }
        Some(cli::Subcommand::Serve(_)) => {
            // The flags after `serve` as given: read again, with the config file, on SIGHUP.
            let args = std::env::args_os().skip_while(|arg| arg != "serve").skip(1);
            return serve::run(args.collect());
        }
        Some(cli::Subcommand::Man) => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut page)?;
            return print_document(&page);
        }
        None => {}
    }
    let files = cli.report_files();
    files.check()?;
    let gate = cli.gate()?;
    let options = cli.capture_options();
    let spec = cli.target();
    // Before planning, which reads the target's files and symbols while it runs; after a
    // launched command is started, which keeps the priority leaktrace was given.
    let attaching = matches!(spec, TargetSpec::Running(_));
    if attaching {
        priority::raise();
    }
    let (target, plan) = Target::open(&spec, &options.choice)?;
    if !attaching {
        priority::raise();
    }
    let (report, detach) = capture::run(
        &target,
        &plan,
        &cli.probe_settings(),
        &options,
        capture::Control::Terminal,
    )?;
    let text = format!("\n{}", report::render_final(&report, options.top));
    capture::print_text(options.text_to_stderr, &text);
    let written = files.write(&report);
    capture::end_on_interrupts();
    detach.wait();
    written?;
    if report.header.ending == Ending::Failed {
        anyhow::bail!("leaktrace failed while taking in events; the report above is partial");
    }
    if let Some(leaked) = gate.judge(&report) {
        return Err(leaked.into());
    }
    Ok(())
}

/// A generated document on stdout; a reader that stops early (`| head`) is no error.
fn print_document(document: &[u8]) -> Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(document) {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => Ok(written?),
    }
}
