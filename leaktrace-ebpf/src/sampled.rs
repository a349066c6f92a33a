//! Which allocations are recorded when sampling, and the set of recorded blocks
//! (`SAMPLED_BLOCKS`) that tells which frees to report. Exact, every block is recorded and
//! none of this costs more than a load of `SAMPLE_MODE`.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use leaktrace_common::{DropCounter, sampling};

use crate::{config, drops::count_drop, maps::SAMPLED_BLOCKS};

/// Whether to record an allocation of `size` bytes: always, unless sampling.
#[inline(always)]
pub(crate) fn chosen(size: u64) -> bool {
    if config::exact() {
        return true;
    }
    let (mode, parameter) = config::sampling();
    // SAFETY: the helper takes no arguments and returns a pseudo-random number.
    let draw = unsafe { bpf_get_prandom_u32() };
    u64::from(draw) < sampling::threshold(mode, parameter, size)
}

/// Keeps a recorded block's address, when sampling, so that its free is recognised; false
/// (and counted) when there is no room, and then the block must not be reported either.
#[inline(always)]
pub(crate) fn remember_block(address: u64) -> bool {
    if config::exact() {
        return true;
    }
    if SAMPLED_BLOCKS.insert(address, 1, 0).is_err() {
        count_drop(DropCounter::SampledMapFull);
        return false;
    }
    true
}

/// Whether a freed block was recorded (and forgets it): always when exact; when sampling, one
/// map delete, which for the many unsampled blocks fails and ends the probe.
#[inline(always)]
pub(crate) fn forget_block(address: u64) -> bool {
    config::exact() || SAMPLED_BLOCKS.remove(address).is_ok()
}
