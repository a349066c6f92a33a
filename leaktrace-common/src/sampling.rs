//! Which allocations the probes record when sampling, in integer arithmetic both sides share.
//!
//! The kernel side decides with a random draw against a threshold; userspace scales each
//! recorded block back up by the inverse of the same probability. Because both compute the
//! threshold with this one function, the estimates are unbiased whatever the rounding in it:
//! a block of probability `p` is recorded with probability exactly `p` and counted `1/p` times.

/// Probability 1, in units of 2^-32: thresholds are compared with a 32-bit random draw.
pub const ALWAYS: u64 = 1 << 32;

/// Largest `--sample-bytes` mean: keeps `(size % mean) << 32` within 64 bits.
pub const MAX_MEAN_BYTES: u64 = 1 << 30;

/// Probes record every allocation.
pub const MODE_EXACT: u32 = 0;
/// Probes record one allocation in N, whatever its size (bcc memleak's `-s`).
pub const MODE_EVERY_NTH: u32 = 1;
/// Probes record allocations as a Poisson process over allocated bytes (tcmalloc's and
/// jemalloc's heap profilers): a block of `size` bytes with probability 1 - e^(-size/mean).
pub const MODE_BYTES: u32 = 2;

/// e^-n in units of 2^-32, for n = 1..=22; past that the probability of skipping a block is
/// below 2^-32 and every block is recorded.
const EXP_NEG_WHOLE: [u64; 22] = [
    1580030169, 581260615, 213833830, 78665070, 28939262, 10646160, 3916503, 1440801, 530041,
    194991, 71733, 26389, 9708, 3571, 1314, 483, 178, 65, 24, 9, 3, 1,
];

/// The chance, in units of 2^-32 (at most [`ALWAYS`]), that an allocation of `size` bytes is
/// recorded under `mode` with its parameter: N for [`MODE_EVERY_NTH`], the mean bytes between
/// samples for [`MODE_BYTES`].
#[inline(always)]
pub fn threshold(mode: u32, parameter: u64, size: u64) -> u64 {
    match mode {
        MODE_EVERY_NTH if parameter > 1 => ALWAYS / parameter,
        MODE_BYTES if parameter > 0 => poisson_threshold(size, parameter),
        _ => ALWAYS,
    }
}

/// 1 - e^(-size/mean) in units of 2^-32.
#[inline(always)]
fn poisson_threshold(size: u64, mean: u64) -> u64 {
    let whole = size / mean;
    if whole > EXP_NEG_WHOLE.len() as u64 {
        return ALWAYS;
    }
    // The fraction of size/mean in units of 2^-32; mean <= 2^30 keeps the shift in range.
    let fraction = ((size % mean) << 32) / mean;
    let mut skip = exp_neg_fraction(fraction);
    if whole > 0 {
        // Both factors are below 2^32 here (e^-1 < 1), so the product fits 64 bits.
        skip = (EXP_NEG_WHOLE[(whole - 1) as usize] * skip) >> 32;
    }
    ALWAYS - skip
}

/// e^-f for f in [0, 1), both in units of 2^-32: the Taylor series to the 10th power in
/// Horner form, 1 - f(1 - f/2(1 - f/3(…))), good to about 1e-8.
#[inline(always)]
fn exp_neg_fraction(f: u64) -> u64 {
    let mut sum = ALWAYS;
    let mut k = 10;
    while k > 0 {
        // f < 2^32 and sum <= 2^32: the product fits 64 bits.
        sum = ALWAYS - ((f * sum) >> 32) / k;
        k -= 1;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probability(mode: u32, parameter: u64, size: u64) -> f64 {
        threshold(mode, parameter, size) as f64 / ALWAYS as f64
    }

    #[test]
    fn poisson_probability_is_one_minus_exp_of_size_over_mean() {
        let mean = 512 * 1024;
        for size in [
            1,
            16,
            100,
            4096,
            65536,
            524_288,
            1_000_000,
            5 << 20,
            11 << 20,
        ] {
            let expected = 1.0 - (-(size as f64) / mean as f64).exp();
            let got = probability(MODE_BYTES, mean, size);
            assert!(
                (got - expected).abs() <= expected * 1e-6 + 1e-9,
                "size {size}: {got} vs {expected}"
            );
        }
        assert_eq!(threshold(MODE_BYTES, mean, 23 * mean), ALWAYS);
        assert_eq!(threshold(MODE_BYTES, mean, 0), 0);
    }

    #[test]
    fn every_nth_and_exact() {
        assert_eq!(threshold(MODE_EVERY_NTH, 4, 10), ALWAYS / 4);
        assert_eq!(threshold(MODE_EVERY_NTH, 1, 10), ALWAYS);
        assert_eq!(threshold(MODE_EXACT, 0, 10), ALWAYS);
    }

    #[test]
    fn table_holds_exp_of_minus_n() {
        for (i, &value) in EXP_NEG_WHOLE.iter().enumerate() {
            let expected = (-((i + 1) as f64)).exp() * ALWAYS as f64;
            assert!((value as f64 - expected).abs() <= 1.0, "e^-{}", i + 1);
        }
    }
}
