//! Which sites grow: each site's live bytes sampled every interval, and a fitted growth rate.
//!
//! "Most live bytes" is not "leaking": a cache that filled once holds many bytes and grows no
//! more. The growth rate is the least-squares slope of live bytes over the last
//! [`TREND_INTERVALS`] intervals, so a site that grew and went flat falls down the ranking
//! within a few intervals while a steady leak stays on top. Its steadiness is the fit's R²:
//! near 1 for a leak that grows like clockwork, near 0 for noise.

use serde::Serialize;

use crate::ledger::{Ledger, SiteId};

/// Intervals the growth rate is fitted over.
pub const TREND_INTERVALS: usize = 5;

/// Samples kept per site for the report's time series (an hour at 1 s intervals).
const MAX_SAMPLES: usize = 3600;

/// How a site's live bytes move.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Growth {
    pub bytes_per_s: f64,
    /// R² of the fit, 0 to 1; 0 when the site did not move at all.
    pub steadiness: f64,
}

/// Live bytes of every site at every sample: (seconds since the start, bytes).
#[derive(Default)]
pub struct Trends {
    series: Vec<Vec<(f64, u64)>>,
}

impl Trends {
    /// Samples every site of `ledger` at `seconds` since the capture started.
    pub fn sample(&mut self, ledger: &Ledger, seconds: f64) {
        for (site, _, stats) in ledger.sites() {
            if self.series.len() <= site.index() {
                self.series.resize_with(site.index() + 1, Vec::new);
            }
            let series = &mut self.series[site.index()];
            if series.len() == MAX_SAMPLES {
                series.remove(0);
            }
            series.push((seconds, stats.live_bytes));
        }
    }

    /// Live bytes gained (or lost, if negative) since the last sample.
    pub fn change(&self, site: SiteId, live_bytes: u64) -> i64 {
        let before = self.series(site).last().map_or(0, |&(_, bytes)| bytes);
        live_bytes as i64 - before as i64
    }

    /// The growth over the last [`TREND_INTERVALS`] intervals.
    pub fn growth(&self, site: SiteId) -> Growth {
        let series = self.series(site);
        fit(&series[series.len().saturating_sub(TREND_INTERVALS + 1)..])
    }

    pub fn series(&self, site: SiteId) -> &[(f64, u64)] {
        self.series.get(site.index()).map_or(&[], Vec::as_slice)
    }
}

/// Least-squares line through `points`: its slope, and R².
pub fn fit(points: &[(f64, u64)]) -> Growth {
    if points.len() < 2 {
        return Growth::default();
    }
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1 as f64).sum::<f64>() / n;
    let (mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0);
    for &(x, y) in points {
        let (dx, dy) = (x - mean_x, y as f64 - mean_y);
        sxx += dx * dx;
        sxy += dx * dy;
        syy += dy * dy;
    }
    if sxx == 0.0 {
        return Growth::default();
    }
    let slope = sxy / sxx;
    let steadiness = if syy == 0.0 {
        0.0
    } else {
        (sxy * sxy / (sxx * syy)).clamp(0.0, 1.0)
    };
    Growth {
        bytes_per_s: slope,
        steadiness,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_leak_has_its_rate_and_full_steadiness() {
        let points: Vec<_> = (0..6).map(|t| (t as f64, 1000 * t as u64)).collect();
        let growth = fit(&points);
        assert!((growth.bytes_per_s - 1000.0).abs() < 1e-9);
        assert!((growth.steadiness - 1.0).abs() < 1e-9);
    }

    #[test]
    fn a_flat_site_has_no_growth_and_no_steadiness() {
        assert_eq!(
            fit(&[(0.0, 500), (1.0, 500), (2.0, 500)]),
            Growth::default()
        );
        assert_eq!(fit(&[(0.0, 500)]), Growth::default());
    }

    #[test]
    fn a_site_that_grew_then_went_flat_falls_to_zero_growth() {
        let mut ledger = Ledger::default();
        let mut trends = Trends::default();
        let mut address = 0x1000;
        let mut site = None;
        for second in 0..12 {
            if second < 3 {
                for _ in 0..100 {
                    site = Some(ledger.record_alloc(address, 1000, 1, 0).0);
                    address += 0x1000;
                }
            }
            trends.sample(&ledger, second as f64);
        }
        let site = site.unwrap();
        assert_eq!(
            trends.growth(site).bytes_per_s,
            0.0,
            "flat for the last intervals"
        );
        assert_eq!(trends.series(site).len(), 12);
    }

    #[test]
    fn change_is_measured_from_the_last_sample() {
        let mut ledger = Ledger::default();
        let mut trends = Trends::default();
        let (site, _) = ledger.record_alloc(0x10, 100, 1, 0);
        assert_eq!(trends.change(site, ledger.site(site).live_bytes), 100);
        trends.sample(&ledger, 1.0);
        ledger.record_alloc(0x20, 40, 1, 0);
        ledger.record_free(0x10, 0);
        assert_eq!(trends.change(site, ledger.site(site).live_bytes), -60);
    }
}
