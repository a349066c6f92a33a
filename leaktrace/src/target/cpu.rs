//! The CPU time a process has used: every thread's, live or exited, user and system, in ns.
//!
//! Read through the process's CPU-time clock (clock_getcpuclockid(3)), which is what
//! /proc/PID/stat's utime + stime add up to, but in nanoseconds where stat has clock ticks
//! (10 ms): a target that uses 3% of a CPU would read 0 or 10 ms in most 200 ms intervals.
//! The time a uprobe takes is the probed thread's, so it is in there too.

use std::io;

/// A process's CPU-time clock.
#[derive(Clone, Copy, Debug)]
pub struct CpuClock {
    clock: libc::clockid_t,
}

impl CpuClock {
    /// The clock of process `pid`; it reads until the process is reaped.
    pub fn of(pid: u32) -> io::Result<CpuClock> {
        let mut clock: libc::clockid_t = 0;
        // SAFETY: the call writes one clockid_t, which `clock` is.
        let error = unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) };
        if error != 0 {
            return Err(io::Error::from_raw_os_error(error));
        }
        Ok(CpuClock { clock })
    }

    /// The process's CPU time so far, in ns; None once it is gone.
    pub fn read(&self) -> Option<u64> {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: the call writes one timespec, which `now` is.
        if unsafe { libc::clock_gettime(self.clock, &mut now) } != 0 {
            return None;
        }
        Some(now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_child_is_seen_using_cpu_and_its_zombie_still_reads() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"])
            .spawn()
            .unwrap();
        let clock = CpuClock::of(child.id()).unwrap();
        let first = clock.read().unwrap();
        // Exited, not yet reaped: its clock still reads, all of its time.
        while std::fs::read_to_string(format!("/proc/{}/stat", child.id()))
            .unwrap()
            .split(") ")
            .nth(1)
            .is_some_and(|rest| !rest.starts_with('Z'))
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let last = clock.read().expect("a zombie's clock reads");
        assert!(last > first, "{first} then {last}");
        child.wait().unwrap();
        assert_eq!(clock.read(), None, "a reaped process has no clock");
    }
}
