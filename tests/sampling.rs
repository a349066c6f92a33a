//! Sampling (`--sample-bytes`, `-s`): the reported figures are unbiased estimates of what the
//! target really holds, and the report says they are estimates.
//!
//! The fixture leaks a known amount (gigabytes, so that a sample of one allocation per 512 KiB
//! holds enough blocks to estimate from) and exits; launch mode reports what is in use at exit.

mod support;

use support::*;

const MEAN_BYTES: u64 = 512 * 1024;

/// The trends fixture, finite and scaled up: 2 GB leaked in 100 kB blocks, 2 GB cached in
/// 1 MB blocks, a million malloc/free pairs.
const SCALED: [&str; 5] = [
    "-DTICK_MS=0",
    "-DTICKS=20000",
    "-DLEAK_BYTES=100000",
    "-DCACHE_TICKS=2000",
    "-DCACHE_BYTES=1000000",
];

fn define(flag_name: &str) -> u64 {
    let prefix = format!("-D{flag_name}=");
    SCALED
        .iter()
        .find_map(|flag| flag.strip_prefix(&prefix))
        .unwrap()
        .parse()
        .unwrap()
}

/// The standard deviation of the estimated bytes of `blocks` blocks of `size` bytes, each
/// recorded with probability p = 1 - e^(-size/mean) and counted size/p when it is.
fn poisson_sigma(blocks: u64, size: u64) -> f64 {
    let p = 1.0 - (-(size as f64) / MEAN_BYTES as f64).exp();
    (blocks as f64 * (size as f64).powi(2) * (1.0 / p - 1.0)).sqrt()
}

fn assert_estimate(what: &str, estimate: u64, truth: u64, sigma: f64) {
    let error = estimate as f64 - truth as f64;
    eprintln!(
        "{what}: estimated {estimate} B of {truth} B, error {:+.2}% ({:+.1} sigma)",
        100.0 * error / truth as f64,
        error / sigma
    );
    assert!(
        error.abs() < 5.0 * sigma,
        "{what}: {estimate} is more than 5 sigma ({sigma:.0} B) from {truth}"
    );
}

#[test]
fn sampling_by_bytes_estimates_each_sites_live_bytes_without_bias() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture_with("trends", &SCALED);
    let (report, stdout) = launch_json(
        "sampling_bytes",
        &["--sample-bytes", &MEAN_BYTES.to_string()],
        &binary,
        &[],
    );
    assert_eq!(
        report["sampling"]["mode"], "bytes",
        "{}",
        report["sampling"]
    );
    assert_eq!(report["sampling"]["mean_bytes"], MEAN_BYTES);
    assert!(
        stdout.iter().any(|l| l.contains("is an estimate")),
        "the text report must say its figures are estimates: {stdout:?}"
    );
    assert_nothing_lost(&report);

    let (ticks, leak) = (define("TICKS"), define("LEAK_BYTES"));
    let (cache_ticks, cache) = (define("CACHE_TICKS"), define("CACHE_BYTES"));
    assert_estimate(
        "steady_leak",
        sites_of(&report, "steady_leak").live_bytes,
        ticks * leak,
        poisson_sigma(ticks, leak),
    );
    assert_estimate(
        "fill_cache",
        sites_of(&report, "fill_cache").live_bytes,
        cache_ticks * cache,
        poisson_sigma(cache_ticks, cache),
    );
    // Churn frees what it allocates: a sampled block is recorded freed as surely as allocated.
    assert_eq!(sites_of(&report, "churn").live_bytes, 0);
}

#[test]
fn sampling_one_in_n_scales_blocks_by_n() {
    let Some(_bpf) = require_bpf() else { return };
    let n = 20;
    let binary = build_fixture_with("trends", &SCALED);
    // ~100,000 sampled events of 56 bytes, made as fast as the fixture can: a ring buffer
    // that holds them all loses none, however late leaktrace reads it (stack copies stop at
    // half full). In a smaller ring buffer, a leaktrace starved through the run could lose events,
    // leaks among them.
    let (report, _) = launch_json(
        "sampling_rate",
        &[
            "-s",
            &n.to_string(),
            "--ring-bytes",
            &(64u32 << 20).to_string(),
        ],
        &binary,
        &[],
    );
    assert_nothing_lost(&report);
    assert_eq!(
        report["sampling"],
        serde_json::json!({"mode": "every_nth", "n": n})
    );
    let ticks = define("TICKS");
    let leak = sites_of(&report, "steady_leak");
    // Blocks recorded ~ Binomial(ticks, 1/n), each counted n times.
    let p = 1.0 / n as f64;
    let sigma = n as f64 * (ticks as f64 * p * (1.0 - p)).sqrt();
    let error = leak.live_allocations as f64 - ticks as f64;
    eprintln!(
        "steady_leak blocks: estimated {} of {ticks}, error {:+.2}%",
        leak.live_allocations,
        100.0 * error / ticks as f64
    );
    assert!(
        error.abs() < 5.0 * sigma,
        "{} blocks",
        leak.live_allocations
    );
    assert_eq!(
        leak.live_bytes,
        leak.live_allocations * define("LEAK_BYTES")
    );
}
