//! `--max-overhead`: the capture ends when the estimate stays above a limit.

/// Intervals in a row the estimate must stay above the limit: one busy interval is not
/// enough, since a burst of allocations is what a leak hunt is often after.
pub const INTERVALS: u32 = 3;

/// The limit, and how many intervals in a row the estimate has been above it.
#[derive(Clone, Copy, Debug)]
pub struct OverheadLimit {
    /// Percent of the target's CPU time.
    pub percent: f64,
    above: u32,
}

impl OverheadLimit {
    pub fn new(percent: f64) -> OverheadLimit {
        OverheadLimit { percent, above: 0 }
    }

    /// Takes one interval's estimate (the probes' share of the target's CPU time, 0 to 1;
    /// None when there was none); true once it has been above the limit for [`INTERVALS`]
    /// intervals in a row.
    pub fn exceeded(&mut self, share: Option<f64>) -> bool {
        match share {
            Some(share) if share * 100.0 > self.percent => self.above += 1,
            _ => self.above = 0,
        }
        self.above >= INTERVALS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_intervals_in_a_row_above_the_limit_end_the_capture() {
        let mut limit = OverheadLimit::new(5.0);
        let above = Some(0.06);
        assert!(!limit.exceeded(above));
        assert!(!limit.exceeded(above));
        assert!(!limit.exceeded(Some(0.05)), "at the limit is not above it");
        assert!(!limit.exceeded(above));
        assert!(!limit.exceeded(None), "no estimate breaks the run");
        assert!(!limit.exceeded(above));
        assert!(!limit.exceeded(above));
        assert!(limit.exceeded(above));
        let mut tiny = OverheadLimit::new(0.001);
        assert!(!tiny.exceeded(Some(0.0001)));
        assert!(!tiny.exceeded(Some(0.0001)));
        assert!(tiny.exceeded(Some(0.0001)), "0.01% is above 0.001%");
    }
}
