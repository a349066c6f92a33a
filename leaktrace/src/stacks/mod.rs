//! Stacks: from what the probes caught to named call sites.
//!
//! In: each allocation's stack as the kernel recorded it, a frame-pointer walk or a copy of
//! the top of the user stack with its registers. Out: per ledger site its return addresses
//! and symbolized frames (function, file:line, inlined calls), with how each was found, and
//! its label: the function that called the allocator, past the wrappers.
//!
//! - [`unwind`]: CFI unwinding of stack copies (framehop);
//! - [`callsite`]: stack keys for the ledger, and the frames of each site;
//! - [`cut`]: stacks deeper than a site keeps, and how many each cut site merged;
//! - [`labels`]: each site named past its allocator wrappers (`createClient ← zmalloc`);
//! - [`symbolize`]: addresses to functions and lines (addr2line over the mapped modules);
//! - [`debuginfo`]: where a module's separate debug info lives;
//! - [`demangle`]: symbol names as people read them (C++ through the system's demangler).

pub mod callsite;
pub mod cut;
pub mod debuginfo;
pub mod demangle;
pub mod labels;
pub mod symbolize;
pub mod unwind;

pub use callsite::{AllocatorFrames, CallSites};
pub use labels::{AllocFns, SiteLabel};
pub use symbolize::{Frame, Symbolizer};
pub use unwind::DwarfUnwinder;
