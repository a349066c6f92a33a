//! What tracing costs the target: every probe counts its hits, per point, for userspace to
//! weigh with what a hit costs; and the two programs userspace times that cost with.

use aya_ebpf::{
    EbpfContext,
    helpers::generated::bpf_get_attach_cookie,
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use leaktrace_common::cookie;

use crate::maps::HITS;

/// Counts one hit of the point this probe is attached to (its cookie's point index), window
/// open or not: the target pays for the trap either way. One per-CPU array slot, which the
/// verifier inlines, and a plain add: no other CPU writes it. Returns the cookie, for the
/// entry probes to read their arguments with, so that it is read once a hit.
#[inline(always)]
pub(crate) fn count_hit<C: EbpfContext>(ctx: &C) -> u64 {
    let cookie = attach_cookie(ctx);
    count_hit_at(cookie::point(cookie));
    cookie
}

/// The cookie this probe was attached with.
#[inline(always)]
pub(crate) fn attach_cookie<C: EbpfContext>(ctx: &C) -> u64 {
    // SAFETY: the helper reads the cookie this probe was attached with; its context is ours.
    unsafe { bpf_get_attach_cookie(ctx.as_ptr()) }
}

/// Counts one hit of the point numbered `point`.
#[inline(always)]
pub(crate) fn count_hit_at(point: u32) {
    if let Some(slot) = HITS.get_ptr_mut(point) {
        // SAFETY: the pointer is this CPU's slot of a map value, valid while the program runs.
        unsafe { *slot += 1 };
    }
}

/// Calibration: an entry probe that does nothing, so that timing calls to a function it sits
/// on times the trap alone.
#[uprobe]
pub fn calibration_enter(_ctx: ProbeContext) -> u32 {
    0
}

/// Calibration: a return probe that does nothing.
#[uretprobe]
pub fn calibration_exit(_ctx: RetProbeContext) -> u32 {
    0
}
