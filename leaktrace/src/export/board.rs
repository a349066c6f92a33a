//! The latest figures of every traced process, as the exporter shows them.

use std::{
    collections::BTreeMap,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use crate::{kernel::DropCounts, ledger::verdict::Verdict, scan::KindAmounts};

/// One traced process at its last interval.
#[derive(Clone, Debug, Default)]
pub struct ProcessFigures {
    pub pid: u32,
    pub comm: String,
    pub live_bytes: u64,
    pub live_blocks: u64,
    /// The traced heap's growth over the last intervals.
    pub growth_bytes_per_s: f64,
    pub rss_bytes: Option<u64>,
    /// Allocations and frees taken in since the attach.
    pub events: u64,
    pub drops: DropCounts,
    /// The estimated tracing cost, a share of the target's CPU.
    pub overhead: Option<f64>,
    /// The last reachability scan, when scans run.
    pub scan: Option<KindAmounts>,
    /// Sites that hold live bytes, exported or not.
    pub sites: usize,
    /// The first sites in the live view's order.
    pub top: Vec<SiteFigures>,
}

/// One site of a process.
#[derive(Clone, Debug)]
pub struct SiteFigures {
    pub site: String,
    pub id: String,
    pub live_bytes: u64,
    pub live_blocks: u64,
    pub growth_bytes_per_s: f64,
    pub verdict: Verdict,
    pub scan: Option<KindAmounts>,
}

/// Every process's latest figures and leaktrace's own counters, shared by the captures that
/// publish and the endpoint that reads. A process leaves the board when its capture ends.
#[derive(Default)]
pub struct Board {
    processes: Mutex<BTreeMap<u32, ProcessFigures>>,
    pub attached: AtomicU64,
    pub ended: AtomicU64,
    pub attach_failures: AtomicU64,
}

impl Board {
    pub fn publish(&self, figures: ProcessFigures) {
        self.lock().insert(figures.pid, figures);
    }

    pub fn remove(&self, pid: u32) {
        self.lock().remove(&pid);
    }

    /// The figures as they stand.
    pub fn processes(&self) -> Vec<ProcessFigures> {
        self.lock().values().cloned().collect()
    }

    pub fn count(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A capture that panicked while publishing left figures that are still whole.
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, ProcessFigures>> {
        self.processes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
