//! The built-in demo target: what `leaktrace` with no pid and no command traces, so a newcomer
//! sees a real report without writing a leaky program first.
//!
//! It plays a tiny request handler for about three seconds: each request takes scratch memory
//! and frees it (balanced traffic), and `remember_session` keeps 512 bytes that nothing ever
//! frees (the leak).

use std::{ffi::OsString, thread, time::Duration};

use anyhow::{Context, Result};

/// Requests the demo serves.
pub const REQUESTS: usize = 60;
/// Bytes each request leaks.
pub const LEAK_BYTES: usize = 512;

/// How leaktrace starts the demo: itself, with the hidden flag that runs [`run`].
pub fn command() -> Result<Vec<OsString>> {
    let exe = std::env::current_exe().context("find leaktrace's own binary")?;
    Ok(vec![exe.into(), OsString::from("--demo-target")])
}

/// The demo's workload.
pub fn run() {
    let mut sessions = Vec::with_capacity(REQUESTS);
    for request in 0..REQUESTS {
        handle_request(request, &mut sessions);
        thread::sleep(Duration::from_millis(50));
    }
    // The pointers are dropped here without free: the leak the report shows.
    println!("demo: served {REQUESTS} requests");
}

#[inline(never)]
fn handle_request(request: usize, sessions: &mut Vec<usize>) {
    // SAFETY: plain libc allocation, freed below.
    unsafe {
        let scratch = libc::malloc(4096).cast::<u8>();
        if !scratch.is_null() {
            scratch.write_bytes(request as u8, 4096);
            libc::free(scratch.cast());
        }
    }
    sessions.push(remember_session(request));
}

/// The leak: a session record that is never freed.
#[inline(never)]
fn remember_session(request: usize) -> usize {
    // SAFETY: plain libc allocation; the demo leaks it on purpose.
    unsafe {
        let record = libc::malloc(LEAK_BYTES).cast::<u8>();
        if !record.is_null() {
            record.write_bytes(request as u8, LEAK_BYTES);
        }
        record as usize
    }
}
