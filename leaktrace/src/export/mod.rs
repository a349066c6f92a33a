//! Export: the figures of every traced process, for the monitoring system operators already
//! run. `leaktrace serve` only.
//!
//! In: each capture's figures, published every interval onto the [`Board`].
//! Out: the Prometheus text format on `GET /metrics` ([`Endpoint`]).
//!
//! Cardinality is bounded: a series per process and per kind, and per site only for each
//! process's first `--metrics-sites` sites (leaking and fastest-growing first). A site's
//! labels are its report label and a short id that stays the same while its stack does,
//! across windows and the process's restarts ([`crate::stacks::CallSites::stable_id`]).

mod board;
mod endpoint;
mod exposition;

pub use board::{Board, ProcessFigures, SiteFigures};
pub use endpoint::Endpoint;
