//! leaktrace's kernel side: uprobes on the target's allocator.
//!
//! Entry probes remember each call's arguments per thread; return probes read the result, take
//! the user stack (the callee has returned, so frame-pointer unwinding starts in the caller) and
//! emit one [`AllocEvent`](leaktrace_common::AllocEvent). Every instruction here runs on each
//! malloc of someone's production process, so the probes do only what userspace cannot: read
//! arguments, results and the stack.
//!
//! It reads like libbpf-tools' memleak.bpf.c, in the order of the modules below: what userspace
//! sets at load, every map, the helpers, then the programs.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod config;
#[cfg(target_arch = "bpf")]
mod cost;
#[cfg(target_arch = "bpf")]
mod drops;
#[cfg(target_arch = "bpf")]
mod events;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod pending;
#[cfg(target_arch = "bpf")]
mod probes;
#[cfg(target_arch = "bpf")]
mod sampled;
#[cfg(target_arch = "bpf")]
mod seen;
#[cfg(target_arch = "bpf")]
mod stacks;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// Host builds (clippy, `cargo test --workspace`) get an empty binary; the real object is built
/// for `bpfel-unknown-none` by `cargo xtask build-ebpf`.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
