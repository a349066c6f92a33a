//! The ring buffer's size when `--ring-bytes` does not say: room for what the CPUs the
//! target may run on can send while leaktrace is away from it.
//!
//! A busy CPU sends at most about 36 MB a second: glibc's malloc/free churn under the probes
//! makes a pair in ~2,700 ns, and a pair is 96 bytes of ring (a 48-byte allocation record and
//! a 32-byte free record, each behind an 8-byte header). 16 MiB per CPU then holds ~0.45 s
//! of the most the target can send: a first symbolization, a scan's marking, a loaded
//! machine's scheduling. What the reader falls behind by for longer is lost whatever the
//! size, and counted. The kernel sizes a ring buffer once, at load, so the size is chosen
//! before the first event from what the target's CPUs can do, not from its rate.

/// Ring bytes for each CPU the target may run on.
const PER_CPU: u32 = 16 << 20;

/// The largest default: 16 CPUs' worth. Beyond that, a target busy on every CPU is rare
/// and the ring's pages are memory the kernel keeps for leaktrace.
const MOST: u32 = 256 << 20;

/// [`PER_CPU`] for each CPU `pid` may run on (its affinity; leaktrace's own for a pid whose
/// affinity cannot be read), rounded up to a power of two, at most [`MOST`].
pub fn default_ring_bytes(pid: u32) -> u32 {
    let cpus = cpus_of(pid).unwrap_or_else(|| cpus_of(0).unwrap_or(1));
    ring_bytes_for(cpus)
}

fn ring_bytes_for(cpus: u32) -> u32 {
    PER_CPU
        .saturating_mul(cpus.max(1))
        .checked_next_power_of_two()
        .map_or(MOST, |bytes| bytes.min(MOST))
}

/// How many CPUs process `pid` (0: the calling thread) may run on.
fn cpus_of(pid: u32) -> Option<u32> {
    // SAFETY: cpu_set_t is a plain bit set; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the call writes at most the size given into `set`.
    let result = unsafe {
        libc::sched_getaffinity(
            pid as libc::pid_t,
            std::mem::size_of::<libc::cpu_set_t>(),
            &mut set,
        )
    };
    // SAFETY: `set` is a cpu_set_t the call above filled.
    (result == 0).then(|| unsafe { libc::CPU_COUNT(&set) } as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixteen_mib_per_cpu_as_a_power_of_two_up_to_256_mib() {
        assert_eq!(ring_bytes_for(0), 16 << 20);
        assert_eq!(ring_bytes_for(1), 16 << 20);
        assert_eq!(ring_bytes_for(2), 32 << 20);
        assert_eq!(ring_bytes_for(3), 64 << 20);
        assert_eq!(ring_bytes_for(16), 256 << 20);
        assert_eq!(ring_bytes_for(64), 256 << 20);
        assert_eq!(ring_bytes_for(1 << 20), 256 << 20);
    }

    /// leaktrace's own process may run on the CPUs the machine has online, or fewer.
    #[test]
    fn a_process_runs_on_at_least_one_cpu() {
        let online = std::thread::available_parallelism().unwrap().get() as u32;
        let own = cpus_of(std::process::id()).unwrap();
        assert!((1..=online).contains(&own), "{own} of {online}");
        assert_eq!(default_ring_bytes(std::process::id()), ring_bytes_for(own));
    }
}
