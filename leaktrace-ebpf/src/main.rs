//! leaktrace's kernel side: uprobes on the target's allocator.
//!
//! Entry probes remember each call's arguments per thread; return probes read the result, take
//! the user stack (the callee has returned, so frame-pointer unwinding starts in the caller) and
//! emit one [`AllocEvent`]. Every instruction here runs on each malloc of someone's production
//! process, so the probes do only what userspace cannot: read arguments, results and the stack.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod probes;

/// Host builds (clippy, `cargo test --workspace`) get an empty binary; the real object is built
/// for `bpfel-unknown-none` by `cargo xtask build-ebpf`.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
