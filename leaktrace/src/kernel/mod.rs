//! Kernel: the eBPF object and what crosses between it and leaktrace.
//!
//! In: a [`crate::plan::ProbePlan`] and the [`ProbeSettings`] from the command line. Out: the
//! target's allocator calls as decoded [`Event`]s, in the order the target made them, plus
//! the stack map, the drop counters and the window switch that starts and stops recording in
//! every probe at once.
//!
//! - [`probes`]: load, attach, detach, the window switch, the maps userspace writes;
//! - [`multi`]: uprobe_multi links, one per program and binary, where the kernel has them;
//! - [`events`]: decoding the ring buffer's records;
//! - [`ring`]: the ring buffer's default size;
//! - [`drops`]: what the probes could not deliver;
//! - [`hits`]: how often each probe point was hit;
//! - [`log`]: the probes' own log of rare events (`--verbose`);
//! - [`clock`]: the clock of the events' timestamps.

mod clock;
mod drops;
mod events;
mod hits;
mod log;
mod multi;
mod probes;
mod ring;

pub use clock::monotonic_ns;
pub use drops::DropCounts;
pub use events::{Event, Stack};
pub use hits::{HitKind, HitPoint};
pub use probes::{Detach, ProbeSet, ProbeSettings, time_programs};
