//! Cost: what tracing costs the target, estimated while it runs.
//!
//! In: the hits of each probe point, counted by the probes ([`crate::kernel`]); the CPU time
//! of the traced processes ([`crate::target::cpu`]); what one hit costs, by kind, timed once
//! per run on leaktrace's own functions. Out: each interval's estimate for the live view's
//! header, warnings about hot points the kernel single-steps, the `--max-overhead` verdict,
//! and the figures and their inputs for the report.
//!
//! - [`calibration`]: what a hit of each kind of probe costs, timed at the start;
//! - [`meter`]: hits × cost per hit against CPU time, interval by interval and in total;
//! - [`limit`]: `--max-overhead`, which ends the capture.
//!
//! The estimate covers the kernel's traps (entry, single step, return trampoline) and, when
//! the kernel's BPF statistics could be turned on (until the programs ran 100,000 times), the
//! programs' own run time. It leaves out what a probe does to the target's caches and branch predictors,
//! and leaktrace's own CPU time, which is not the target's.

pub mod calibration;
pub mod limit;
pub mod meter;

pub use calibration::Calibration;
pub use limit::OverheadLimit;
pub use meter::{CostMeter, CostReport, IntervalCost};
