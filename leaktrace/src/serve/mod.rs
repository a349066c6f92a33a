//! Serve: leaktrace as a long-running service on a host of a fleet.
//!
//! In: the processes chosen by pid, name, executable or cgroup ([`selector`]), found by
//! reading /proc every [`DISCOVERY_PERIOD`], so that a process that starts or restarts is
//! attached to within a second; the settings, from the command line and a `--config` file
//! re-read on SIGHUP ([`settings`]).
//! Out: a capture per process, each in its own thread as `leaktrace -p PID` would run it
//! ([`crate::capture`], told to publish rather than print); its figures on the
//! Prometheus endpoint ([`crate::export`]); a report per process at each `--window`'s end
//! and at its capture's end, in `--out-dir`, rotated ([`windows`]).
//!
//! SIGTERM or Ctrl-C ends every capture with its final report, and the probes go.

mod selector;
mod settings;
mod windows;

pub use settings::ServeArgs;

use std::{
    collections::{HashMap, HashSet},
    ffi::OsString,
    sync::{Arc, Mutex, PoisonError},
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc::{UnboundedSender, unbounded_channel},
    time::{Instant, Interval, MissedTickBehavior, interval, interval_at},
};

use self::{
    selector::{Candidate, Selector},
    windows::{ReportKind, WindowStore},
};
use crate::{
    capture::{self, Control, Order, Outlet, Served},
    error::Failure,
    export::{Board, Endpoint},
    ledger::verdict::Verdict,
    report::{Report, thousands},
    target::Target,
};

/// How often /proc is read for processes to attach to: with an attach's ~0.2 s, a new
/// process is traced within a second of its start.
pub const DISCOVERY_PERIOD: Duration = Duration::from_millis(200);

/// Runs the service until SIGTERM or Ctrl-C. `command_line`: the flags after `serve`, kept
/// to be read again, with the config file, on SIGHUP.
pub fn run(command_line: Vec<OsString>) -> Result<()> {
    let args = ServeArgs::load(&command_line).map_err(settings_failure)?;
    // Every capture thread inherits it: busy targets must not starve the readers.
    crate::priority::raise();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut service = Service::new(args, command_line)?;
        service.run().await
    })
}

/// Bad settings are bad arguments: exit 2, as clap's.
fn settings_failure(error: anyhow::Error) -> anyhow::Error {
    Failure::Settings(format!("{error:#}")).into()
}

/// One traced process.
struct Traced {
    start_time: u64,
    comm: String,
    orders: UnboundedSender<Order>,
    thread: JoinHandle<Result<()>>,
}

struct Service {
    command_line: Vec<OsString>,
    args: ServeArgs,
    selector: Selector,
    store: Arc<Mutex<WindowStore>>,
    board: Arc<Board>,
    traced: HashMap<u32, Traced>,
    /// Processes (pid, start time) whose capture failed: not tried again.
    failed: HashSet<(u32, u64)>,
    /// Processes (pid, start time) that mapped no allocator when last tried, and when: a
    /// process found just after its exec has not had its libraries loaded yet. Tried again
    /// every [`NO_ALLOCATOR_RETRY`], said once.
    no_allocator: HashMap<(u32, u64), Instant>,
}

/// How often a chosen process that mapped no allocator is tried again.
const NO_ALLOCATOR_RETRY: Duration = Duration::from_secs(1);

impl Service {
    fn new(args: ServeArgs, command_line: Vec<OsString>) -> Result<Service> {
        let store = store_of(&args).map_err(settings_failure)?;
        Ok(Service {
            command_line,
            selector: Selector::new(&args),
            args,
            store: Arc::new(Mutex::new(store)),
            board: Arc::new(Board::default()),
            traced: HashMap::new(),
            failed: HashSet::new(),
            no_allocator: HashMap::new(),
        })
    }

    async fn run(&mut self) -> Result<()> {
        // Caught before anything says the service is up: a reload or stop sent as soon as it
        // is must not meet the signals' default action, which ends the process.
        let mut hangups = signal(SignalKind::hangup())?;
        let mut terminations = signal(SignalKind::terminate())?;
        let mut interrupts = signal(SignalKind::interrupt())?;
        let endpoint = Endpoint::bind(&self.args.metrics)
            .await
            .map_err(settings_failure)?;
        eprintln!(
            "leaktrace: serving metrics on http://{}/metrics; reports in {}",
            endpoint.address,
            self.args.out_dir.display()
        );
        tokio::spawn(endpoint.serve(Arc::clone(&self.board)));
        let mut discovery = interval(DISCOVERY_PERIOD);
        discovery.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut windows = window_ticker(self.args.window);
        loop {
            tokio::select! {
                _ = discovery.tick() => self.discover(),
                _ = windows.tick() => self.order_all(Order::Window),
                _ = hangups.recv() => match self.reload() {
                    Ok(true) => windows = window_ticker(self.args.window),
                    Ok(false) => {}
                    Err(error) => eprintln!(
                        "leaktrace: the settings were not reloaded, the old ones stay: {error:#}"
                    ),
                },
                _ = terminations.recv() => break,
                _ = interrupts.recv() => break,
            }
        }
        self.order_all(Order::Stop);
        for (_, traced) in self.traced.drain() {
            let _ = traced.thread.join();
        }
        Ok(())
    }

    /// Reaps the captures that ended, and starts one for each matching process not traced.
    fn discover(&mut self) {
        let ended: Vec<u32> = self
            .traced
            .iter()
            .filter(|(_, traced)| traced.thread.is_finished())
            .map(|(&pid, _)| pid)
            .collect();
        for pid in ended {
            let traced = self.traced.remove(&pid).expect("listed above");
            let key = (pid, traced.start_time);
            let error = match traced.thread.join() {
                Ok(Ok(())) => continue,
                Ok(Err(error)) => error,
                Err(_) => anyhow::anyhow!("its capture panicked"),
            };
            let no_allocator = matches!(error.downcast_ref(), Some(Failure::NoAllocator(_)));
            let said_before = no_allocator && self.no_allocator.contains_key(&key);
            if !said_before {
                Board::add(&self.board.attach_failures);
                eprintln!("leaktrace: pid {pid} ({}): {error:#}", traced.comm);
            }
            if no_allocator {
                self.no_allocator.insert(key, Instant::now());
            } else {
                self.failed.insert(key);
            }
        }
        let pids = Candidate::pids();
        self.no_allocator.retain(|(pid, _), _| pids.contains(pid));
        // A traced process is not read again: only the others may have started to match.
        let untraced: Vec<u32> = pids
            .into_iter()
            .filter(|pid| !self.traced.contains_key(pid))
            .collect();
        for process in untraced.into_iter().filter_map(Candidate::read) {
            let key = (process.pid, process.start_time);
            let due = self
                .no_allocator
                .get(&key)
                .is_none_or(|tried| tried.elapsed() >= NO_ALLOCATOR_RETRY);
            if self.selector.matches(&process) && !self.failed.contains(&key) && due {
                self.start(process);
            }
        }
    }

    fn start(&mut self, process: Candidate) {
        let (orders, received) = unbounded_channel();
        let outlet = Outlet {
            board: Arc::clone(&self.board),
            sites: self.args.metrics_sites,
            on_window: {
                let store = Arc::clone(&self.store);
                Box::new(move |report| {
                    let _ = write_report(&store, &report, ReportKind::Window);
                })
            },
        };
        let cli = self.args.capture_cli(process.pid);
        let store = Arc::clone(&self.store);
        let board = Arc::clone(&self.board);
        let pid = process.pid;
        let thread = std::thread::Builder::new()
            .name(format!("capture {pid}"))
            .spawn(move || {
                let traced = trace(
                    &cli,
                    Served {
                        orders: received,
                        outlet,
                    },
                    &store,
                );
                board.remove(pid);
                if traced.is_ok() {
                    Board::add(&board.ended);
                }
                traced
            });
        match thread {
            Ok(thread) => {
                self.traced.insert(
                    pid,
                    Traced {
                        start_time: process.start_time,
                        comm: process.comm,
                        orders,
                        thread,
                    },
                );
            }
            Err(error) => eprintln!("leaktrace: cannot start a capture of pid {pid}: {error}"),
        }
    }

    fn order_all(&self, order: Order) {
        for traced in self.traced.values() {
            // A capture that ended has dropped its receiver: nothing to order.
            let _ = traced.orders.send(order);
        }
    }

    /// Reads the settings again. Captures of processes no longer chosen end; the sites
    /// exported change at once; the window's length from now on. The other capture settings
    /// apply to processes attached from now on. True when the window's length changed.
    fn reload(&mut self) -> Result<bool> {
        let args = ServeArgs::load(&self.command_line)?;
        if args.metrics != self.args.metrics {
            eprintln!(
                "leaktrace: --metrics changes when leaktrace restarts; still serving on {}",
                self.args.metrics
            );
        }
        let store = store_of(&args)?;
        *self.store.lock().unwrap_or_else(PoisonError::into_inner) = store;
        self.selector = Selector::new(&args);
        for (&pid, traced) in &self.traced {
            let chosen = Candidate::read(pid).is_some_and(|p| self.selector.matches(&p));
            if !chosen {
                let _ = traced.orders.send(Order::Stop);
            }
        }
        if args.metrics_sites != self.args.metrics_sites {
            self.order_all(Order::Sites(args.metrics_sites));
        }
        let window_changed = args.window != self.args.window;
        self.failed.clear();
        self.no_allocator.clear();
        self.args = args;
        eprintln!("leaktrace: settings reloaded");
        Ok(window_changed)
    }
}

fn store_of(args: &ServeArgs) -> Result<WindowStore> {
    WindowStore::open(
        &args.out_dir,
        args.keep_windows as usize,
        args.max_out_bytes,
    )
}

fn window_ticker(window: Duration) -> Interval {
    let mut ticker = interval_at(Instant::now() + window, window);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker
}

/// One process's capture, from its attach to its final report.
fn trace(cli: &crate::cli::Cli, served: Served, store: &Mutex<WindowStore>) -> Result<()> {
    let options = cli.capture_options();
    let (target, plan) = Target::open(&cli.target(), &options.choice)?;
    let (report, detach) = capture::run(
        &target,
        &plan,
        &cli.probe_settings(),
        &options,
        Control::Served(served),
    )?;
    let written = write_report(store, &report, ReportKind::Final);
    eprintln!("{}", ending_line(&report, written.as_deref().ok()));
    detach.wait();
    written.map(|_| ())
}

/// Writes a report into the store; says where, or why not.
fn write_report(
    store: &Mutex<WindowStore>,
    report: &Report,
    kind: ReportKind,
) -> Result<std::path::PathBuf> {
    let store = store.lock().unwrap_or_else(PoisonError::into_inner).clone();
    store
        .write(report, kind)
        .with_context(|| format!("pid {}: the report was not written", report.header.pid))
        .inspect_err(|error| eprintln!("leaktrace: {error:#}"))
}

/// The line that says a capture ended: what it holds, and where its report went.
fn ending_line(report: &Report, stem: Option<&std::path::Path>) -> String {
    let leaking = report
        .sites
        .iter()
        .filter(|site| site.verdict == Verdict::Leaking)
        .count();
    format!(
        "leaktrace: pid {} ({}) done: {} bytes in {} blocks live, {leaking} sites leaking; {}",
        report.header.pid,
        report.header.command,
        thousands(report.totals.live_bytes),
        thousands(report.totals.live_allocations),
        stem.map_or_else(
            || "no report written".to_owned(),
            |stem| format!("report {}.json", stem.display())
        )
    )
}
