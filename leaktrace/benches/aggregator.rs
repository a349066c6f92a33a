//! How fast userspace takes in events, and what each live block costs it in memory.
//!
//! `cargo bench -p leaktrace --bench aggregator` decodes recorded ring-buffer records (a churn
//! of allocations and frees over a thousand call sites, as the probes send them) and feeds them
//! to the ledger, on one core; then holds a million live blocks and counts the heap bytes the
//! ledger uses for them. Targets: at least 2 M events/s, at most 64 bytes per live block.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    hint::black_box,
    sync::atomic::{AtomicUsize, Ordering},
    time::Instant,
};

use leaktrace::{
    kernel::{Event, Stack},
    ledger::Ledger,
    stacks::{AllocFns, AllocatorFrames, CallSites},
};
use leaktrace_common::{AllocEvent, EventKind, FreeEvent};

/// The system allocator, counting the bytes in use.
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        IN_USE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const SITES: u64 = 1000;
const EVENTS: usize = 4_000_000;
const LIVE_BLOCKS: u64 = 1_000_000;
const RUNS: usize = 5;

/// A small, fixed pseudo-random sequence (xorshift): the same stream on every run.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn bytes_of<T>(record: &T) -> Vec<u8> {
    let ptr = (record as *const T).cast::<u8>();
    unsafe { std::slice::from_raw_parts(ptr, size_of::<T>()) }.to_vec()
}

/// Records as the ring buffer carries them: allocations from `SITES` stacks, each freed at
/// random some time later, around 50,000 blocks live at any time.
fn churn() -> Vec<Vec<u8>> {
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    let mut live: Vec<u64> = Vec::new();
    let mut next_address = 0x10_0000u64;
    let mut records = Vec::with_capacity(EVENTS);
    for i in 0..EVENTS as u64 {
        let timestamp = i * 100;
        if live.len() < 50_000 && random.next().is_multiple_of(2) || live.is_empty() {
            let site = random.next() % SITES + 1;
            let size = 16 + random.next() % 512;
            records.push(bytes_of(&AllocEvent {
                timestamp_ns: timestamp,
                address: next_address,
                size,
                stack_hash: site,
                tgid: 1,
                tid: 1,
                stack_id: 0,
                kind: EventKind::Alloc as u32,
            }));
            live.push(next_address);
            next_address += 16 + size.div_ceil(16) * 16;
        } else {
            let index = (random.next() % live.len() as u64) as usize;
            let address = live.swap_remove(index);
            records.push(bytes_of(&FreeEvent {
                timestamp_ns: timestamp,
                address,
                size: 0,
                tgid: 1,
                kind: EventKind::Free as u32,
            }));
        }
    }
    records
}

/// What capture does with each record for a known stack: decode it, find the stack's key,
/// and book it in the ledger.
fn take_in(records: &[Vec<u8>], ledger: &mut Ledger, sites: &mut CallSites) {
    for bytes in records {
        match Event::decode(bytes) {
            Some(Event::Alloc {
                address,
                size,
                stack,
                timestamp_ns,
                ..
            }) => {
                let key = match sites.known_key(&stack) {
                    Some(key) => key,
                    None => {
                        let Stack::Copied(hash) = stack else { continue };
                        sites.intern(&stack, &[hash])
                    }
                };
                ledger.record_alloc(address, size, key, (timestamp_ns / 1_000_000) as u32);
            }
            Some(Event::Free {
                address,
                timestamp_ns,
                ..
            }) => {
                ledger.record_free(address, (timestamp_ns / 1_000_000) as u32);
            }
            _ => {}
        }
    }
}

fn throughput() -> f64 {
    let records = churn();
    let mut rates: Vec<f64> = (0..RUNS)
        .map(|_| {
            let mut ledger = Ledger::default();
            let mut sites = CallSites::new(AllocatorFrames::default(), AllocFns::default());
            let started = Instant::now();
            take_in(&records, &mut ledger, &mut sites);
            let elapsed = started.elapsed().as_secs_f64();
            black_box(ledger.totals());
            records.len() as f64 / elapsed
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[RUNS / 2]
}

fn bytes_per_live_block() -> f64 {
    let mut random = Random(7);
    let before = IN_USE.load(Ordering::Relaxed);
    let mut ledger = Ledger::default();
    for i in 0..LIVE_BLOCKS {
        let site = (random.next() % SITES) as i64;
        ledger.record_alloc(0x10_0000 + i * 64, 48, site, 0);
    }
    let used = IN_USE.load(Ordering::Relaxed) - before;
    assert_eq!(ledger.totals().live_allocations, LIVE_BLOCKS);
    used as f64 / LIVE_BLOCKS as f64
}

fn main() {
    // `cargo test --benches` runs this too: a smoke run is all that needs.
    if std::env::args().any(|a| a == "--bench") {
        let rate = throughput();
        println!(
            "aggregator: {:.2} M events/s on one core (median of {RUNS} runs of {EVENTS} \
             events; target >= 2 M/s)",
            rate / 1e6
        );
        println!(
            "aggregator: {:.1} bytes per live block with {LIVE_BLOCKS} live (target <= 64)",
            bytes_per_live_block()
        );
    }
}
