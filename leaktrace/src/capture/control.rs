//! Who runs a capture, and so what it listens to and where its figures go: the operator at a
//! terminal (signals, and the live view on the screen), or `leaktrace serve` (its orders, the
//! exporter's board, and the rolling windows' files).

use std::sync::Arc;

use tokio::sync::mpsc::UnboundedReceiver;

use crate::{export::Board, report::Report};

pub enum Control {
    Terminal,
    Served(Served),
}

/// A capture that `leaktrace serve` runs, one per traced process.
pub struct Served {
    pub orders: UnboundedReceiver<Order>,
    pub outlet: Outlet,
}

/// What the service asks of a capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// A rolling window ended: hand over a report of the capture so far.
    Window,
    /// Publish this many sites from now on (the settings were reloaded).
    Sites(usize),
    /// End, with the final report: leaktrace is stopping, or the process no longer matches.
    Stop,
}

/// Where a served capture's figures go.
pub struct Outlet {
    pub board: Arc<Board>,
    /// Sites published per interval.
    pub sites: usize,
    /// Takes each window's report (to write it).
    pub on_window: Box<dyn FnMut(Report) + Send>,
}
