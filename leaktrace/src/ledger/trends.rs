//! Which sites grow: each site's live bytes sampled every interval with a fitted growth rate,
//! and each interval's low and high-water marks, which the [`verdict`] is decided on.
//!
//! "Most live bytes" is not "leaking": a cache that filled once holds many bytes and grows no
//! more. The growth rate is the least-squares slope of live bytes over the last
//! [`TREND_INTERVALS`] intervals, the latest included, so a site that grew and went flat
//! falls down the ranking within a few intervals while a steady leak stays on top. Its
//! steadiness is the fit's R²: near 1 for a leak that grows like clockwork, near 0 for noise;
//! not shown from fewer than [`Growth::MIN_POINTS_FOR_STEADINESS`] samples, through which any
//! line fits.
//!
//! Memory per site is bounded: at most [`MAX_SAMPLES`] samples of live bytes, the older ones
//! thinned as the capture goes on ([`thin`]); the last
//! [`LIVE_WINDOW`] intervals' marks (the live view's window); and the whole capture's marks in
//! at most [`MAX_BUCKETS`] buckets: when they are full, each two neighbours merge into one
//! (the lowest low and the highest high of both, which is the low and high-water mark over
//! both intervals), and from then on each bucket spans twice as many intervals. An hour at
//! 1 s intervals is 3,600 intervals in 57 buckets of 64 intervals.

use std::collections::VecDeque;

use serde::Serialize;

use crate::ledger::{
    SiteId, SiteStats, Watermarks,
    verdict::{self, Judgement, Mark},
};

/// Intervals the growth rate is fitted over.
pub const TREND_INTERVALS: usize = 5;

/// Samples kept at most per site for the report's time series. A service runs for days
/// with tens of thousands of sites: at 16 bytes a sample, 32,768 sites hold at most 126 MB.
pub const MAX_SAMPLES: usize = 240;

/// The latest samples, never thinned: the growth is fitted through the last few, and the
/// series reads best at full resolution near its end.
const RECENT_SAMPLES: usize = 80;

/// Intervals the live view's verdict is decided over: its sliding window.
pub const LIVE_WINDOW: usize = 30;

/// Buckets of marks kept per site for the whole capture's verdict; a power of two.
pub const MAX_BUCKETS: usize = 64;

/// How a site's live bytes move.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Growth {
    pub bytes_per_s: f64,
    /// R² of the fit, 0 to 1; 0 when the site did not move at all.
    pub steadiness: f64,
    /// Samples the line was fitted through.
    #[serde(skip)]
    pub points: usize,
}

impl Growth {
    /// Through fewer samples than this any line fits (R² is 1 through two points).
    pub const MIN_POINTS_FOR_STEADINESS: usize = 3;

    /// The steadiness, when there were samples enough for it to mean something.
    pub fn shown_steadiness(&self) -> Option<f64> {
        (self.points >= Self::MIN_POINTS_FOR_STEADINESS).then_some(self.steadiness)
    }
}

/// Every site's live bytes at every sample, and its marks per interval.
#[derive(Default)]
pub struct Trends {
    /// Per site: (seconds since the start, live bytes) at each sample.
    series: Vec<Vec<(f64, u64)>>,
    /// Per site: its marks.
    marks: Vec<SiteMarks>,
    /// When the last interval ended (seconds since the start).
    last_end: f64,
}

/// One site's marks, kept two ways.
#[derive(Default)]
struct SiteMarks {
    /// The last [`LIVE_WINDOW`] intervals, one mark each, oldest first.
    recent: VecDeque<Mark>,
    /// The whole capture, oldest first: buckets of `width` intervals each.
    buckets: Vec<Mark>,
    /// Intervals per bucket: 1, then doubling at each merge.
    width: usize,
    /// The bucket being filled, and how many intervals it holds so far (fewer than `width`).
    partial: Option<(Mark, usize)>,
}

impl SiteMarks {
    fn push(&mut self, mark: Mark) {
        if self.recent.len() == LIVE_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(mark);
        self.width = self.width.max(1);
        let (bucket, intervals) = match self.partial.take() {
            Some((partial, intervals)) => (partial.merge(mark), intervals + 1),
            None => (mark, 1),
        };
        if intervals < self.width {
            self.partial = Some((bucket, intervals));
            return;
        }
        self.buckets.push(bucket);
        if self.buckets.len() == MAX_BUCKETS {
            self.buckets = self
                .buckets
                .chunks(2)
                .map(|pair| pair[0].merge(pair[1]))
                .collect();
            self.width *= 2;
        }
    }

    /// A stretch too short to be an interval of its own: the last interval takes it in.
    fn extend_last(&mut self, mark: Mark) {
        let Some(last) = self.recent.back_mut() else {
            return self.push(mark);
        };
        *last = last.merge(mark);
        match (&mut self.partial, self.buckets.last_mut()) {
            (Some((partial, _)), _) => *partial = partial.merge(mark),
            (None, Some(bucket)) => *bucket = bucket.merge(mark),
            (None, None) => {}
        }
    }

    /// The whole capture's marks: the buckets, and the partial one on its own when it spans
    /// at least half a bucket's intervals (else merged into the last bucket).
    fn whole(&self) -> Vec<Mark> {
        let mut marks = self.buckets.clone();
        if let Some((partial, intervals)) = self.partial {
            match marks.last_mut() {
                Some(last) if intervals * 2 < self.width => *last = last.merge(partial),
                _ => marks.push(partial),
            }
        }
        marks
    }
}

impl Trends {
    /// Every site's live bytes now, `seconds` since the capture started, as the reports count
    /// them (`sites`, by site index): for the growth and the reports' series.
    pub fn sample(&mut self, sites: &[(SiteId, SiteStats)], seconds: f64) {
        self.grow_to(sites.iter().map(|(site, _)| site.index() + 1).max());
        for (site, stats) in sites {
            let series = &mut self.series[site.index()];
            if series.len() == MAX_SAMPLES {
                thin(series);
            }
            series.push((seconds, stats.live_bytes));
        }
    }

    /// An interval ended at `seconds` since the capture started: each site's low and
    /// high-water marks over it (by site index).
    pub fn end_interval(&mut self, watermarks: &[Watermarks], seconds: f64) {
        self.record(watermarks, seconds, true);
    }

    /// The capture ended at `seconds`: the watermarks since the last interval's end make an
    /// interval of their own if that stretch lasted at least half of `interval_s`, else join
    /// the last interval. (With `--count` the capture ends right after an interval: its
    /// verdict is on exactly that many.)
    pub fn end_capture(&mut self, watermarks: &[Watermarks], seconds: f64, interval_s: f64) {
        let own = seconds - self.last_end >= interval_s / 2.0;
        self.record(watermarks, seconds, own);
    }

    fn grow_to(&mut self, sites: Option<usize>) {
        let count = sites.unwrap_or(0).max(self.series.len());
        self.series.resize_with(count, Vec::new);
        self.marks.resize_with(count, SiteMarks::default);
    }

    fn record(&mut self, watermarks: &[Watermarks], seconds: f64, own_interval: bool) {
        self.grow_to(Some(watermarks.len()));
        for (index, w) in watermarks.iter().enumerate() {
            let mark = Mark {
                t: seconds,
                low: w.low,
                high: w.high,
            };
            let marks = &mut self.marks[index];
            if own_interval {
                marks.push(mark);
            } else {
                marks.extend_last(mark);
            }
        }
        if own_interval {
            self.last_end = seconds;
        }
    }

    /// Live bytes gained (or lost, if negative) between the last two samples; for a site
    /// sampled once, all it holds.
    pub fn change(&self, site: SiteId) -> i64 {
        match self.series(site) {
            [.., (_, before), (_, now)] => *now as i64 - *before as i64,
            [(_, now)] => *now as i64,
            [] => 0,
        }
    }

    /// The growth over the last [`TREND_INTERVALS`] intervals, the latest sample included.
    pub fn growth(&self, site: SiteId) -> Growth {
        let series = self.series(site);
        fit(&series[series.len().saturating_sub(TREND_INTERVALS + 1)..])
    }

    pub fn series(&self, site: SiteId) -> &[(f64, u64)] {
        self.series.get(site.index()).map_or(&[], Vec::as_slice)
    }

    /// The verdict over the last [`LIVE_WINDOW`] intervals: the live view's.
    pub fn recent_verdict(&self, site: SiteId) -> Judgement {
        self.marks
            .get(site.index())
            .map_or_else(Judgement::default, |marks| {
                let window: Vec<Mark> = marks.recent.iter().copied().collect();
                verdict::judge(&window)
            })
    }

    /// The verdict over the whole capture: the final report's.
    pub fn whole_verdict(&self, site: SiteId) -> Judgement {
        self.marks
            .get(site.index())
            .map_or_else(Judgement::default, |marks| verdict::judge(&marks.whole()))
    }

    /// The whole capture's marks of `site`, as its verdict sees them.
    pub fn marks(&self, site: SiteId) -> Vec<Mark> {
        self.marks
            .get(site.index())
            .map_or_else(Vec::new, SiteMarks::whole)
    }
}

/// Halves the resolution of a full series' older samples, the [`RECENT_SAMPLES`] kept whole:
/// every other one goes. The series still spans the whole capture, its start the sparsest,
/// as a long-running capture's chart would be drawn anyway.
pub fn thin<T>(series: &mut Vec<T>) {
    let older = series.len() - RECENT_SAMPLES;
    let mut index = 0;
    series.retain(|_| {
        index += 1;
        index > older || index % 2 == 1
    });
}

/// Least-squares line through `points`: its slope, and R².
pub fn fit(points: &[(f64, u64)]) -> Growth {
    if points.len() < 2 {
        return Growth {
            points: points.len(),
            ..Growth::default()
        };
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
        return Growth {
            points: points.len(),
            ..Growth::default()
        };
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
        points: points.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{BlockFilter, Ledger, verdict::Verdict};

    /// An interval of `ledger` ends at `seconds`.
    fn tick(trends: &mut Trends, ledger: &mut Ledger, seconds: f64) {
        let sites = ledger.site_stats(&BlockFilter::default(), 0);
        trends.sample(&sites, seconds);
        trends.end_interval(&ledger.take_watermarks(), seconds);
    }

    #[test]
    fn a_steady_leak_has_its_rate_and_full_steadiness() {
        let points: Vec<_> = (0..6).map(|t| (t as f64, 1000 * t as u64)).collect();
        let growth = fit(&points);
        assert!((growth.bytes_per_s - 1000.0).abs() < 1e-9);
        assert!((growth.steadiness - 1.0).abs() < 1e-9);
        assert_eq!(growth.shown_steadiness(), Some(growth.steadiness));
    }

    #[test]
    fn a_flat_site_has_no_growth_and_no_steadiness() {
        let flat = fit(&[(0.0, 500), (1.0, 500), (2.0, 500)]);
        assert_eq!((flat.bytes_per_s, flat.steadiness), (0.0, 0.0));
        assert_eq!(fit(&[(0.0, 500)]).bytes_per_s, 0.0);
    }

    #[test]
    fn two_points_show_no_steadiness() {
        let two = fit(&[(0.0, 0), (1.0, 1000)]);
        assert_eq!(two.bytes_per_s, 1000.0);
        assert_eq!(two.shown_steadiness(), None, "any line fits two points");
        let three = fit(&[(0.0, 0), (1.0, 1000), (2.0, 2100)]);
        assert!(three.shown_steadiness().is_some());
    }

    #[test]
    fn a_site_that_grew_then_went_flat_falls_to_zero_growth() {
        let mut ledger = Ledger::default();
        let mut trends = Trends::default();
        let mut address = 0x1000;
        let mut site = None;
        for second in 1..=12 {
            if second <= 3 {
                for _ in 0..100 {
                    site = Some(ledger.record_alloc(address, 1000, 1, 0).0);
                    address += 0x1000;
                }
            }
            tick(&mut trends, &mut ledger, second as f64);
        }
        let site = site.unwrap();
        assert_eq!(
            trends.growth(site).bytes_per_s,
            0.0,
            "flat for the last intervals"
        );
        assert_eq!(trends.series(site).len(), 12);
        assert_eq!(trends.whole_verdict(site).verdict, Verdict::GrewThenFlat);
        assert_eq!(trends.recent_verdict(site).verdict, Verdict::GrewThenFlat);
    }

    #[test]
    fn the_growth_and_the_change_include_the_latest_interval() {
        // cc1plus, as the issue saw it: a site that had just dropped by 832 KiB still ranked
        // first at +170.5 KiB/s, the slope of the two samples before the drop.
        let kib = 1024;
        let mut ledger = Ledger::default();
        let mut trends = Trends::default();
        let (site, _) = ledger.record_alloc(0x10, 500 * kib, 1, 0);
        tick(&mut trends, &mut ledger, 1.0);
        assert_eq!(
            trends.change(site),
            500 * kib as i64,
            "a new site: all it holds"
        );
        ledger.record_alloc(0x20, 170 * kib, 1, 0);
        tick(&mut trends, &mut ledger, 2.0);
        ledger.record_alloc(0x30, 170 * kib, 1, 0);
        tick(&mut trends, &mut ledger, 3.0);
        assert!((trends.growth(site).bytes_per_s - 170.0 * kib as f64).abs() < 1e-6);
        ledger.record_free(0x10, 0);
        ledger.record_free(0x20, 0);
        ledger.record_free(0x30, 0);
        ledger.record_alloc(0x40, 8 * kib, 1, 0);
        tick(&mut trends, &mut ledger, 4.0);
        assert_eq!(trends.change(site), -832 * kib as i64);
        assert!(
            trends.growth(site).bytes_per_s < 0.0,
            "{:?}",
            trends.growth(site)
        );
    }

    #[test]
    fn marks_stay_bounded_and_keep_each_intervals_extremes() {
        let mut ledger = Ledger::default();
        let mut trends = Trends::default();
        let (site, _) = ledger.record_alloc(0x10, 100, 1, 0);
        let intervals = 10_000;
        for second in 1..=intervals {
            // A burst that comes and goes, and a dip to 0 in interval 5,000 only.
            ledger.record_alloc(0x20, 7000, 1, 0);
            ledger.record_free(0x20, 0);
            if second == 5000 {
                ledger.record_free(0x10, 0);
                ledger.record_alloc(0x10, 100, 1, 0);
            }
            tick(&mut trends, &mut ledger, second as f64);
        }
        let marks = &trends.marks[site.index()];
        assert!(marks.buckets.len() <= MAX_BUCKETS);
        assert_eq!(marks.recent.len(), LIVE_WINDOW);
        let series = trends.series(site);
        assert!(series.len() <= MAX_SAMPLES);
        assert_eq!(
            series.first().unwrap().0,
            1.0,
            "the series still starts at the start"
        );
        let recent: Vec<f64> = series[series.len() - RECENT_SAMPLES..]
            .iter()
            .map(|s| s.0)
            .collect();
        let expected: Vec<f64> = (intervals - RECENT_SAMPLES + 1..=intervals)
            .map(|s| s as f64)
            .collect();
        assert_eq!(recent, expected, "the latest samples are all kept");
        let whole = trends.marks(site);
        let spanned: usize =
            marks.buckets.len() * marks.width + marks.partial.map_or(0, |(_, intervals)| intervals);
        assert_eq!(spanned, intervals);
        assert_eq!(whole.iter().filter(|m| m.low == 0).count(), 2, "{whole:?}");
        assert!(whole.iter().all(|m| m.high == 7100));
        assert_eq!(whole.last().unwrap().t, intervals as f64);
        assert_eq!(trends.whole_verdict(site).verdict, Verdict::Fluctuating);
    }

    #[test]
    fn a_short_last_stretch_joins_the_last_interval() {
        let mut ledger = Ledger::default();
        let mut trends = Trends::default();
        let (site, _) = ledger.record_alloc(0x10, 100, 1, 0);
        tick(&mut trends, &mut ledger, 1.0);
        ledger.record_alloc(0x20, 900, 1, 0);
        let end = |trends: &mut Trends, ledger: &mut Ledger, seconds| {
            let sites = ledger.site_stats(&BlockFilter::default(), 0);
            trends.sample(&sites, seconds);
            trends.end_capture(&ledger.take_watermarks(), seconds, 1.0);
        };
        end(&mut trends, &mut ledger, 1.2);
        assert_eq!(
            trends.marks(site),
            [Mark {
                t: 1.2,
                low: 0,
                high: 1000
            }]
        );
        assert_eq!(trends.series(site).len(), 2, "live bytes are sampled still");
        end(&mut trends, &mut ledger, 1.9);
        assert_eq!(
            trends.marks(site).len(),
            2,
            "0.9 of an interval since the last"
        );
    }
}
