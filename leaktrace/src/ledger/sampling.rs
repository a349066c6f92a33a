//! Sampling: which allocations the probes record, and how each recorded block is scaled back
//! up into an estimate of all of them.

use leaktrace_common::sampling::{self, ALWAYS};
use serde::Serialize;

/// How allocations are sampled (`-s`, `--sample-bytes`), or not.
///
/// Sampling leaves the trap of each probe (the floor of a uprobe's cost) but skips the stack
/// walk, the event and userspace's bookkeeping for most allocations, and a free of a block
/// that was not recorded costs one failed map delete in the kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Sampling {
    /// Every allocation: exact figures.
    #[default]
    Exact,
    /// One allocation in `n`, chosen at random whatever its size (bcc memleak's `-s`).
    EveryNth { n: u64 },
    /// A Poisson process over allocated bytes with `mean_bytes` between samples, as tcmalloc
    /// and jemalloc profile: a block of `size` bytes is recorded with probability
    /// 1 - e^(-size/mean), so large blocks are rarely missed and every estimate is unbiased.
    Bytes { mean_bytes: u64 },
}

/// What one recorded block stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Weight {
    pub bytes: u64,
    pub blocks: u64,
}

impl Sampling {
    /// The mode and parameter the probes read ([`leaktrace_common::sampling`]).
    pub fn probe_settings(self) -> (u32, u64) {
        match self {
            Sampling::Exact => (sampling::MODE_EXACT, 0),
            Sampling::EveryNth { n } => (sampling::MODE_EVERY_NTH, n),
            Sampling::Bytes { mean_bytes } => (sampling::MODE_BYTES, mean_bytes),
        }
    }

    pub fn is_exact(self) -> bool {
        self == Sampling::Exact
    }

    /// The estimate a recorded block of `size` bytes adds: the inverse of the probability the
    /// probes recorded it with, computed by the same function.
    pub fn weight(self, size: u64) -> Weight {
        let (mode, parameter) = self.probe_settings();
        let threshold = sampling::threshold(mode, parameter, size);
        if threshold >= ALWAYS || threshold == 0 {
            return Weight {
                bytes: size,
                blocks: 1,
            };
        }
        let scale = ALWAYS as f64 / threshold as f64;
        Weight {
            bytes: (size as f64 * scale).round() as u64,
            blocks: scale.round() as u64,
        }
    }

    /// "1 in 100 allocations", for report headers; None when exact.
    pub fn describe(self) -> Option<String> {
        match self {
            Sampling::Exact => None,
            Sampling::EveryNth { n } => Some(format!("1 in {n} allocations")),
            Sampling::Bytes { mean_bytes } => {
                Some(format!("Poisson by bytes, mean {mean_bytes} B"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_weighs_each_block_once() {
        let weight = Sampling::Exact.weight(100);
        assert_eq!(
            weight,
            Weight {
                bytes: 100,
                blocks: 1
            }
        );
    }

    #[test]
    fn every_nth_scales_by_n() {
        let weight = Sampling::EveryNth { n: 4 }.weight(100);
        assert_eq!(
            weight,
            Weight {
                bytes: 400,
                blocks: 4
            }
        );
    }

    #[test]
    fn poisson_scales_small_blocks_to_about_the_mean_and_large_ones_not_at_all() {
        let sampling = Sampling::Bytes {
            mean_bytes: 1 << 19,
        };
        let small = sampling.weight(16);
        // size / (1 - e^(-size/mean)) tends to the mean (plus half the size) for small blocks.
        assert!(
            (small.bytes as f64 - ((1 << 19) as f64 + 8.0)).abs() < 2.0,
            "{small:?}"
        );
        assert_eq!(
            sampling.weight(64 << 20),
            Weight {
                bytes: 64 << 20,
                blocks: 1
            }
        );
    }
}
