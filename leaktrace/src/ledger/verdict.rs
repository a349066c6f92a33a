//! Which sites leak: a verdict per site from each interval's low-water mark.
//!
//! A site's live bytes at any one instant say little: a server's request buffers are large
//! mid-request and gone between requests, and a burst sampled at the wrong instant looks like
//! growth. What a leak raises is the *floor*: the least the site holds in each interval. The
//! ledger keeps, per site and interval, the lowest and highest live bytes reached
//! ([`Mark::low`], [`Mark::high`]; updated on each of the site's frees and allocations, reset
//! at each interval's end), and the verdict is decided on the series of lows:
//!
//! - **Trend test: Mann–Kendall.** S = Σ_{i<j} sign(low_j − low_i) over every pair of
//!   intervals. Under "no trend", S is near normal with mean 0 and variance
//!   (n(n−1)(2n+5) − Σ_t t(t−1)(2t+5)) / 18, where each t is the size of a group of equal lows
//!   (ties: a floor stuck at 0, or a cache that holds, is one big group, and only shrinks the
//!   variance; a tied pair adds 0 to S). Z = (S − 1)/σ for S > 0, (S + 1)/σ for S < 0 (the
//!   continuity correction), 0 for S = 0. The floor *rises significantly* when the one-sided
//!   p-value 1 − Φ(Z) is at most [`ALPHA`] (0.001, Z ≥ 3.09); it *falls significantly* when
//!   Φ(Z) is. The test uses ranks only, so one huge burst weighs as much as one byte.
//! - **Rate: Theil–Sen.** The median of the slopes (low_j − low_i)/(t_j − t_i) over every pair:
//!   bytes per second the floor gains. A single jump (clients connecting, a cache filled at
//!   once) moves few of the pairwise slopes, so the median stays 0 unless the jump sits in
//!   the middle third of the window, where the recency test below catches it.
//!
//! A window of marks *still rises* when its Theil–Sen slope is above 0 and the Theil–Sen
//! slope of its last third is at least [`RECENT_SHARE`] of it (the floor rises at the end at a
//! quarter of its pace or more); it *rises* ([`rises`]) when, besides, the Mann–Kendall test
//! finds its floor rising at [`ALPHA`]. The verdicts, first match wins:
//!
//! | verdict | when |
//! |---|---|
//! | `too early` | fewer than [`MIN_INTERVALS`] (8) marks: no trend could be significant yet |
//! | `leaking` | the window rises, or its last third (when that has 8 marks or more) does: the floor rises, significantly, and still |
//! | `grew then flat` | the floor rose (Mann–Kendall at [`ALPHA_CHANGE`]) and does not still rise: a cache that filled, a pool sized once, clients that connected |
//! | `shrinking` | the floor fell (Mann–Kendall at [`ALPHA_CHANGE`]) |
//! | `fluctuating` | none of those, and the site fell from one interval's high to a later interval's low by at least [`SWING_SHARE`] of its highest mark: bursts that come and go over a flat floor |
//! | `stable` | none of those |
//!
//! A `leaking` site may rise for what the ledger did not see, not a leak ([`Unseen`]): it is
//! `frees lost` when it holds no more blocks than lost frees may have left live, `replacing`
//! when it holds no more than blocks allocated before the attach and freed since.
//!
//! `leaking` is the verdict acted on, so it takes the stronger evidence: 8 is the fewest
//! intervals in which a floor that rises in every one of them reaches Z ≥ 3.09 (S = 28 of 28
//! pairs: Z = 3.34; 7 intervals give 3.00). Growth that stopped, or a fall, is told at
//! [`ALPHA_CHANGE`] (0.01, Z ≥ 2.33): a floor that rose in only three intervals never reaches
//! Z = 3.09 however long it stays flat after (Z tends to 3), but is `grew then flat` at 0.01.
//! A floor that rises with p between the two and still rises is none of `leaking` and `grew
//! then flat`: it ends `fluctuating` or `stable`, until the evidence is in.
//!
//! Mann–Kendall assumes independent intervals. A floor that wanders (a random walk: connections
//! that come and go over minutes) rises over some windows and is then `leaking` over them;
//! the whole capture's verdict, over more intervals, is the one to trust.

use std::fmt;

use serde::Serialize;

use super::{Sampling, SiteStats, Totals};

/// One-sided significance level of the Mann–Kendall test for `leaking`.
pub const ALPHA: f64 = 0.001;

/// One-sided significance level of the Mann–Kendall test for `grew then flat` and `shrinking`.
pub const ALPHA_CHANGE: f64 = 0.01;

/// Fewer marks than this are `too early`.
pub const MIN_INTERVALS: usize = 8;

/// A window still rises when its last third's Theil–Sen slope is at least this share of the
/// whole window's.
pub const RECENT_SHARE: f64 = 0.25;

/// A site fell this share of its highest mark from one interval's high to a later interval's
/// low: bursts.
pub const SWING_SHARE: f64 = 0.25;

/// What a site did in one interval (or in a run of them, merged): the least and the most it
/// held, and when the interval ended (seconds since the capture started).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Mark {
    pub t: f64,
    pub low: u64,
    pub high: u64,
}

impl Mark {
    /// This mark and the `later` one as one interval: the low of both, the high of both,
    /// ending when the later ends.
    pub fn merge(self, later: Mark) -> Mark {
        Mark {
            t: later.t,
            low: self.low.min(later.low),
            high: self.high.max(later.high),
        }
    }
}

/// A site's verdict: see the [module documentation](self) for each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Verdict {
    #[serde(rename = "leaking")]
    Leaking,
    #[serde(rename = "grew then flat")]
    GrewThenFlat,
    #[serde(rename = "fluctuating")]
    Fluctuating,
    #[serde(rename = "stable")]
    Stable,
    #[serde(rename = "shrinking")]
    Shrinking,
    #[serde(rename = "too early")]
    TooEarly,
    /// The floor rises, but no faster than blocks allocated before the attach are freed: new
    /// blocks replacing old ones, which the ledger never saw, not a leak.
    #[serde(rename = "replacing")]
    Replacing,
    /// The floor rises, but the site holds no more blocks than lost frees may have left live
    /// in the ledger: its figures may be nothing but those blocks.
    #[serde(rename = "frees lost")]
    FreesLost,
}

impl Verdict {
    /// As the reports print it (and JSON spells it).
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Leaking => "leaking",
            Verdict::GrewThenFlat => "grew then flat",
            Verdict::Fluctuating => "fluctuating",
            Verdict::Stable => "stable",
            Verdict::Shrinking => "shrinking",
            Verdict::TooEarly => "too early",
            Verdict::Replacing => "replacing",
            Verdict::FreesLost => "frees lost",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A verdict with the figures it was decided on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Judgement {
    pub verdict: Verdict,
    /// Theil–Sen slope of the floor, bytes per second: over the part of the window found
    /// rising when `leaking` (the whole window or its last third), else over the whole window.
    pub floor_bytes_per_s: f64,
    /// The Mann–Kendall test of the whole window's floor.
    pub trend: MannKendall,
}

/// Blocks allocated before the attach, freed while tracing: the ledger never saw them
/// allocated, so a site that makes the blocks replacing them looks like growth.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Replacement {
    /// How many such blocks were freed.
    pub blocks: u64,
    /// The bytes they released, where the allocator tells (glibc's chunk header); 0 where
    /// only the blocks are counted.
    pub bytes: u64,
}

impl Replacement {
    /// From a capture's totals; none when the target was traced from its start (every block
    /// was seen allocated, and an unmatched free is the allocator's own).
    pub fn of(totals: &Totals, from_start: bool) -> Replacement {
        if from_start {
            return Replacement::default();
        }
        Replacement {
            blocks: totals.unmatched_frees,
            bytes: totals.unmatched_free_bytes,
        }
    }

    /// Whether replacing old blocks can explain all that a site holds: everything a site
    /// holds was allocated since the attach, so that is its growth. Compared in bytes where
    /// the old blocks' sizes are known, else in blocks.
    fn explains(&self, site: &SiteStats) -> bool {
        if self.bytes > 0 {
            site.live_bytes <= self.bytes
        } else {
            site.live_allocations <= self.blocks
        }
    }
}

/// What the ledger did not see, of which a site can rise with no leak at all.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Unseen {
    pub replacement: Replacement,
    /// The most blocks that lost frees may have left live in the ledger: each event lost that
    /// may have been a free ([`DropCounts::frees_maybe_lost`]), as many blocks as a recorded
    /// block stands for at most (one, unless sampling).
    ///
    /// [`DropCounts::frees_maybe_lost`]: crate::kernel::DropCounts::frees_maybe_lost
    pub unfreed_blocks: u64,
}

impl Unseen {
    /// From a capture's totals, the events lost that may have been frees, and how blocks were
    /// sampled.
    pub fn of(totals: &Totals, from_start: bool, frees_lost: u64, sampling: Sampling) -> Unseen {
        Unseen {
            replacement: Replacement::of(totals, from_start),
            // The smallest block stands for the most blocks.
            unfreed_blocks: frees_lost.saturating_mul(sampling.weight(1).blocks),
        }
    }
}

impl Judgement {
    /// This judgement once what the ledger did not see is allowed for, at a site holding
    /// `site`. A site that rises is not leaking when it holds no more blocks than lost frees
    /// may have left live ([`Verdict::FreesLost`]: its figures may be nothing else), or no
    /// more than old blocks freed unseen ([`Verdict::Replacing`] them).
    pub fn allowing_for(self, unseen: &Unseen, site: &SiteStats) -> Judgement {
        let verdict = match self.verdict {
            Verdict::Leaking if site.live_allocations <= unseen.unfreed_blocks => {
                Verdict::FreesLost
            }
            Verdict::Leaking if unseen.replacement.explains(site) => Verdict::Replacing,
            verdict => verdict,
        };
        Judgement { verdict, ..self }
    }
}

impl Default for Judgement {
    fn default() -> Self {
        Judgement {
            verdict: Verdict::TooEarly,
            floor_bytes_per_s: 0.0,
            trend: MannKendall::default(),
        }
    }
}

/// The verdict on a window of marks, oldest first.
pub fn judge(marks: &[Mark]) -> Judgement {
    let n = marks.len();
    let trend = MannKendall::of(marks);
    let slope = floor_slope(marks);
    let judgement = |verdict, floor_bytes_per_s| Judgement {
        verdict,
        floor_bytes_per_s,
        trend,
    };
    if n < MIN_INTERVALS {
        return judgement(Verdict::TooEarly, slope);
    }
    if rises(marks) {
        return judgement(Verdict::Leaking, slope);
    }
    let last_third = &marks[n - n.div_ceil(3)..];
    if last_third.len() >= MIN_INTERVALS && rises(last_third) {
        return judgement(Verdict::Leaking, floor_slope(last_third));
    }
    let verdict = if trend.p_rising() <= ALPHA_CHANGE && !still_rises(marks) {
        Verdict::GrewThenFlat
    } else if trend.p_falling() <= ALPHA_CHANGE {
        Verdict::Shrinking
    } else if swings(marks) {
        Verdict::Fluctuating
    } else {
        Verdict::Stable
    };
    judgement(verdict, slope)
}

/// The floor of `marks` rises significantly, at a positive rate, and still at the end: see
/// the [module documentation](self).
pub fn rises(marks: &[Mark]) -> bool {
    MannKendall::of(marks).p_rising() <= ALPHA && still_rises(marks)
}

/// The floor's Theil–Sen slope is above 0, and its last third's at least [`RECENT_SHARE`] of
/// it.
fn still_rises(marks: &[Mark]) -> bool {
    let slope = floor_slope(marks);
    let last_third = &marks[marks.len() - marks.len().div_ceil(3)..];
    slope > 0.0 && floor_slope(last_third) >= RECENT_SHARE * slope
}

/// The site fell from some interval's high to a later interval's low by [`SWING_SHARE`] of
/// its highest mark. (Within one interval the order of its high and low is not known: a
/// site that grew in it has them as far apart as one that had a burst.)
fn swings(marks: &[Mark]) -> bool {
    let highest = marks.iter().map(|m| m.high).max().unwrap_or(0);
    let mut high_before = 0u64;
    let mut deepest = 0;
    for mark in marks {
        deepest = deepest.max(high_before.saturating_sub(mark.low));
        high_before = high_before.max(mark.high);
    }
    highest > 0 && deepest as f64 >= SWING_SHARE * highest as f64
}

/// Theil–Sen slope of the lows of `marks` against their times.
fn floor_slope(marks: &[Mark]) -> f64 {
    let points: Vec<(f64, f64)> = marks.iter().map(|m| (m.t, m.low as f64)).collect();
    theil_sen(&points)
}

/// Theil–Sen estimator: the median of the slopes between every two points with distinct x
/// (the mean of the two middle ones for an even count); 0 for fewer than two such points.
pub fn theil_sen(points: &[(f64, f64)]) -> f64 {
    let mut slopes = Vec::with_capacity(points.len() * points.len().saturating_sub(1) / 2);
    for (i, &(x0, y0)) in points.iter().enumerate() {
        for &(x1, y1) in &points[i + 1..] {
            if x1 != x0 {
                slopes.push((y1 - y0) / (x1 - x0));
            }
        }
    }
    median(&mut slopes)
}

/// The median (0 for none); reorders `values`.
fn median(values: &mut [f64]) -> f64 {
    let n = values.len();
    if n == 0 {
        return 0.0;
    }
    let (below, middle, _) = values.select_nth_unstable_by(n / 2, f64::total_cmp);
    let upper = *middle;
    if n % 2 == 1 {
        return upper;
    }
    let lower = below.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lower + upper) / 2.0
}

/// The Mann–Kendall trend test of a series: see the [module documentation](self).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct MannKendall {
    /// Σ sign(x_j − x_i) over i < j: concordant minus discordant pairs.
    pub s: i64,
    /// Var(S) under no trend, less what ties take.
    pub variance: f64,
    /// S standardized, with the continuity correction.
    pub z: f64,
}

impl MannKendall {
    /// The test of the lows of `marks`, oldest first.
    pub fn of(marks: &[Mark]) -> MannKendall {
        let lows: Vec<u64> = marks.iter().map(|m| m.low).collect();
        MannKendall::new(&lows)
    }

    pub fn new(values: &[u64]) -> MannKendall {
        let n = values.len() as i64;
        let mut s = 0i64;
        for (i, a) in values.iter().enumerate() {
            for b in &values[i + 1..] {
                s += b.cmp(a) as i64;
            }
        }
        let mut sorted = values.to_vec();
        sorted.sort_unstable();
        let ties: i64 = sorted
            .chunk_by(|a, b| a == b)
            .map(|group| group.len() as i64)
            .map(|t| t * (t - 1) * (2 * t + 5))
            .sum();
        let variance = (n * (n - 1) * (2 * n + 5) - ties) as f64 / 18.0;
        let z = match s {
            _ if variance <= 0.0 => 0.0,
            s if s > 0 => (s - 1) as f64 / variance.sqrt(),
            s if s < 0 => (s + 1) as f64 / variance.sqrt(),
            _ => 0.0,
        };
        MannKendall { s, variance, z }
    }

    /// One-sided p-value of "the series rises": 1 − Φ(Z).
    pub fn p_rising(&self) -> f64 {
        normal_upper_tail(self.z)
    }

    /// One-sided p-value of "the series falls": Φ(Z).
    pub fn p_falling(&self) -> f64 {
        normal_upper_tail(-self.z)
    }
}

/// P(N(0, 1) > z).
fn normal_upper_tail(z: f64) -> f64 {
    erfc(z / std::f64::consts::SQRT_2) / 2.0
}

/// The complementary error function, by the Chebyshev fit of Numerical Recipes' `erfcc`
/// (fractional error under 1.2e-7 everywhere): ample for a p-value compared with 0.001.
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let coefficients = [
        -1.265_512_23,
        1.000_023_68,
        0.374_091_96,
        0.096_784_18,
        -0.186_288_06,
        0.278_868_07,
        -1.135_203_98,
        1.488_515_87,
        -0.822_152_23,
        0.170_872_77,
    ];
    let poly = coefficients.iter().rev().fold(0.0, |acc, c| c + t * acc);
    let value = t * (-z * z + poly).exp();
    if x >= 0.0 { value } else { 2.0 - value }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Marks one second apart from lows (and highs equal to them).
    fn flat_marks(lows: &[u64]) -> Vec<Mark> {
        lows.iter()
            .enumerate()
            .map(|(i, &low)| Mark {
                t: (i + 1) as f64,
                low,
                high: low,
            })
            .collect()
    }

    fn verdict(lows: &[u64]) -> Verdict {
        judge(&flat_marks(lows)).verdict
    }

    #[test]
    fn the_normal_tail_is_right_where_it_matters() {
        assert!((normal_upper_tail(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_upper_tail(1.959_964) - 0.025).abs() < 1e-6);
        assert!((normal_upper_tail(3.090_232) - 0.001).abs() < 1e-7);
        assert!((normal_upper_tail(-3.090_232) - 0.999).abs() < 1e-7);
    }

    #[test]
    fn theil_sen_is_the_median_pairwise_slope() {
        let line: Vec<(f64, f64)> = (0..10).map(|x| (x as f64, 3.0 * x as f64 + 7.0)).collect();
        assert!((theil_sen(&line) - 3.0).abs() < 1e-12);
        // One wild point among eleven moves the fitted slope not at all.
        let mut outlier: Vec<(f64, f64)> = (0..11).map(|x| (x as f64, 2.0 * x as f64)).collect();
        outlier[5].1 = 1e9;
        assert!((theil_sen(&outlier) - 2.0).abs() < 1e-12);
        // Three points, three slopes (1, 2, 3): the middle one.
        assert_eq!(theil_sen(&[(0.0, 0.0), (1.0, 1.0), (2.0, 4.0)]), 2.0);
        // Four points, six slopes (1, 2, 3, 3, 4, 5): the mean of the two middle ones.
        assert_eq!(
            theil_sen(&[(0.0, 0.0), (1.0, 1.0), (2.0, 4.0), (3.0, 9.0)]),
            3.0
        );
        assert_eq!(theil_sen(&[(0.0, 0.0), (1.0, 1.0), (3.0, 9.0)]), 3.0);
        assert_eq!(theil_sen(&[(1.0, 5.0)]), 0.0);
        assert_eq!(theil_sen(&[(1.0, 5.0), (1.0, 9.0)]), 0.0, "no distinct x");
    }

    #[test]
    fn mann_kendall_counts_pairs_and_takes_ties_out_of_the_variance() {
        let rising = MannKendall::new(&[1, 2, 3, 4, 5]);
        assert_eq!(rising.s, 10);
        assert!((rising.variance - 5.0 * 4.0 * 15.0 / 18.0).abs() < 1e-12);
        assert!((rising.z - 9.0 / rising.variance.sqrt()).abs() < 1e-12);
        let falling = MannKendall::new(&[5, 4, 3, 2, 1]);
        assert_eq!(falling.s, -10);
        assert!((falling.z + rising.z).abs() < 1e-12);
        assert!(falling.p_falling() < 0.05 && falling.p_rising() > 0.95);

        // 0 0 0 5 5: S counts the 6 pairs across the groups; the ties (3 and 2 equal values)
        // take 3·2·11 + 2·1·9 = 84 out of 5·4·15 = 300.
        let step = MannKendall::new(&[0, 0, 0, 5, 5]);
        assert_eq!(step.s, 6);
        assert!((step.variance - (300.0 - 84.0) / 18.0).abs() < 1e-12);
        let constant = MannKendall::new(&[7; 12]);
        assert_eq!((constant.s, constant.variance, constant.z), (0, 0.0, 0.0));
        assert!((constant.p_rising() - 0.5).abs() < 1e-7);
    }

    #[test]
    fn eight_rising_intervals_are_the_fewest_that_are_significant() {
        let rising = |n: u64| MannKendall::new(&(0..n).collect::<Vec<_>>()).p_rising();
        assert!(rising(MIN_INTERVALS as u64 - 1) > ALPHA);
        assert!(rising(MIN_INTERVALS as u64) <= ALPHA);
        let seven: Vec<u64> = (0..7).collect();
        assert_eq!(verdict(&seven), Verdict::TooEarly);
        let eight: Vec<u64> = (0..8).map(|i| i * 100).collect();
        assert_eq!(verdict(&eight), Verdict::Leaking);
        let judgement = judge(&flat_marks(&eight));
        assert!((judgement.floor_bytes_per_s - 100.0).abs() < 1e-9);
    }

    #[test]
    fn a_floor_that_keeps_rising_is_leaking_with_ties_between_steps() {
        // A staircase: the floor rises every third interval.
        let stairs: Vec<u64> = (0..15).map(|i| (i / 3) * 4096).collect();
        assert_eq!(verdict(&stairs), Verdict::Leaking);
    }

    #[test]
    fn a_single_step_anywhere_is_never_leaking() {
        for n in MIN_INTERVALS..=64 {
            for at in 1..n {
                let lows: Vec<u64> = (0..n).map(|i| if i < at { 0 } else { 819_200 }).collect();
                let v = verdict(&lows);
                assert!(
                    matches!(v, Verdict::GrewThenFlat | Verdict::Stable),
                    "step at {at} of {n}: {v}"
                );
            }
        }
        // redis, as the issue saw it: 0 for 15 s, then 819,200 as benchmark clients connected.
        let mut redis = vec![0; 15];
        redis.extend([819_200; 5]);
        assert_eq!(verdict(&redis), Verdict::GrewThenFlat);
    }

    #[test]
    fn a_cache_that_filled_then_held_grew_then_flat() {
        let mut cache: Vec<u64> = (0..6).map(|i| i * 80_000).collect();
        cache.extend([400_000; 14]);
        assert_eq!(verdict(&cache), Verdict::GrewThenFlat);
        // Still filling, it cannot be told from a leak.
        assert_eq!(
            verdict(&(0..9).map(|i| i * 80_000).collect::<Vec<_>>()),
            Verdict::Leaking
        );
    }

    #[test]
    fn a_leak_that_started_late_in_a_long_capture_is_leaking() {
        let mut lows = vec![5000; 90];
        lows.extend((1..=10).map(|i| 5000 + i * 300));
        assert_eq!(verdict(&lows), Verdict::Leaking);
    }

    #[test]
    fn a_big_first_allocation_then_a_slow_leak_is_leaking() {
        let mut lows = vec![0];
        lows.extend((0..30).map(|i| 1_000_000 + i * 64));
        assert_eq!(verdict(&lows), Verdict::Leaking);
    }

    #[test]
    fn shrinking_stable_and_fluctuating() {
        let falling: Vec<u64> = (0..12).map(|i| 100_000 - i * 1000).collect();
        assert_eq!(verdict(&falling), Verdict::Shrinking);
        assert_eq!(verdict(&[4096; 12]), Verdict::Stable);
        // Twelve intervals, each from `low` up to `high` and back.
        let each = |low, high| -> Vec<Mark> {
            let mut marks = flat_marks(&[low; 12]);
            marks.iter_mut().for_each(|m| m.high = high);
            marks
        };
        // A little churn above a large holding is still stable.
        assert_eq!(judge(&each(1_000_000, 1_010_000)).verdict, Verdict::Stable);
        // Blocks allocated and freed within each interval: nothing held, much moved.
        assert_eq!(judge(&each(0, 113)).verdict, Verdict::Fluctuating);
        // Growing within the first interval, then holding, is no swing.
        let mut filled = flat_marks(&[50_000; 12]);
        filled[0].low = 0;
        assert_eq!(judge(&filled).verdict, Verdict::Stable);
    }

    #[test]
    fn a_rise_in_three_intervals_grew_then_flat_at_the_lesser_level() {
        let mut lows = vec![0, 100_000, 200_000];
        lows.extend([300_000; 9]);
        let judgement = judge(&flat_marks(&lows));
        assert!(judgement.trend.p_rising() > ALPHA);
        assert!(judgement.trend.p_rising() <= ALPHA_CHANGE);
        assert_eq!(judgement.verdict, Verdict::GrewThenFlat);
    }

    /// What a 1 MB burst every 3 s, ramped over its first 2 s and then freed at once, looks
    /// like through intervals of `interval` s starting `phase` s into its period: lows and
    /// highs of its live bytes, sampled every 10 ms.
    fn burst_marks(intervals: usize, interval: f64, phase: f64, leak_per_s: f64) -> Vec<Mark> {
        let live = |t: f64| {
            let into = (t + phase).rem_euclid(3.0);
            let burst = if into < 2.0 { 1e6 * (into / 2.0) } else { 0.0 };
            (burst + leak_per_s * t) as u64
        };
        (0..intervals)
            .map(|i| {
                let start = i as f64 * interval;
                let samples: Vec<u64> = (0..=100)
                    .map(|k| live(start + interval * k as f64 / 100.0))
                    .collect();
                Mark {
                    t: start + interval,
                    low: *samples.iter().min().unwrap(),
                    high: *samples.iter().max().unwrap(),
                }
            })
            .collect()
    }

    #[test]
    fn bursts_over_a_flat_floor_are_never_leaking_in_any_window_or_phase() {
        for interval in [0.5, 1.0, 2.0, 5.0] {
            for phase_quarters in 0..12 {
                let marks = burst_marks(120, interval, phase_quarters as f64 / 4.0, 0.0);
                for end in 1..=marks.len() {
                    for start in end.saturating_sub(30)..end {
                        let window = &marks[start..end];
                        let v = judge(window).verdict;
                        assert!(
                            matches!(v, Verdict::Fluctuating | Verdict::TooEarly),
                            "interval {interval}, phase {phase_quarters}/4, [{start}..{end}]: {v}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_slow_leak_under_bursts_is_leaking() {
        // 0.5% of the burst's byte rate (1 MB per 3 s), on the burst's own site.
        for phase_tenths in 0..30 {
            let marks = burst_marks(30, 1.0, phase_tenths as f64 / 10.0, 1e6 / 3.0 * 0.005);
            assert_eq!(
                judge(&marks).verdict,
                Verdict::Leaking,
                "phase {phase_tenths}"
            );
        }
    }

    #[test]
    fn independent_noise_is_seldom_called_a_trend() {
        // A fixed pseudo-random sequence (xorshift): 2,000 windows of 30 noisy floors.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % 100_000
        };
        let noise: Vec<u64> = (0..2030).map(|_| 1_000_000 + next()).collect();
        let marks = flat_marks(&noise);
        let called = (0..2000)
            .filter(|&start| judge(&marks[start..start + 30]).verdict == Verdict::Leaking)
            .count();
        assert!(
            called <= 10,
            "{called} of 2000 windows of noise called leaking"
        );
    }

    #[test]
    fn merged_marks_keep_the_lowest_low_and_the_highest_high() {
        let a = Mark {
            t: 1.0,
            low: 10,
            high: 50,
        };
        let b = Mark {
            t: 2.0,
            low: 20,
            high: 90,
        };
        assert_eq!(
            a.merge(b),
            Mark {
                t: 2.0,
                low: 10,
                high: 90
            }
        );
    }

    #[test]
    fn verdicts_are_spelled_as_documented() {
        let all = [
            Verdict::Leaking,
            Verdict::GrewThenFlat,
            Verdict::Fluctuating,
            Verdict::Stable,
            Verdict::Shrinking,
            Verdict::TooEarly,
            Verdict::Replacing,
            Verdict::FreesLost,
        ];
        for verdict in all {
            assert_eq!(
                serde_json::to_value(verdict).unwrap(),
                serde_json::Value::from(verdict.as_str())
            );
        }
    }

    /// A site found leaking, before what the ledger did not see is allowed for.
    const LEAKING: Judgement = Judgement {
        verdict: Verdict::Leaking,
        floor_bytes_per_s: 1000.0,
        trend: MannKendall {
            s: 0,
            variance: 0.0,
            z: 0.0,
        },
    };

    #[test]
    fn a_rising_site_that_holds_no_more_than_old_blocks_freed_is_replacing() {
        let totals = |blocks: u64, bytes: u64| Totals {
            unmatched_frees: blocks,
            unmatched_free_bytes: bytes,
            ..Totals::default()
        };
        let holding = |live_allocations: u64, live_bytes: u64| SiteStats {
            live_allocations,
            live_bytes,
            ..SiteStats::default()
        };
        let verdict = |blocks, bytes, site: SiteStats| {
            let unseen = Unseen::of(&totals(blocks, bytes), false, 0, Sampling::Exact);
            LEAKING.allowing_for(&unseen, &site).verdict
        };
        // Sizes known (glibc): bytes decide, whatever the blocks.
        assert_eq!(
            verdict(10, 15_000, holding(100, 15_000)),
            Verdict::Replacing
        );
        assert_eq!(verdict(1000, 5_000, holding(10, 5_001)), Verdict::Leaking);
        // Sizes unknown (jemalloc): blocks decide.
        assert_eq!(verdict(500, 0, holding(500, 1 << 20)), Verdict::Replacing);
        assert_eq!(verdict(499, 0, holding(500, 500)), Verdict::Leaking);
        // Traced from the start, an unmatched free is the allocator's own: nothing replaced.
        let from_start = Unseen::of(&totals(1_000_000, 1 << 40), true, 0, Sampling::Exact);
        assert_eq!(
            LEAKING.allowing_for(&from_start, &holding(1, 1)).verdict,
            Verdict::Leaking
        );
        let stable = Judgement {
            verdict: Verdict::Stable,
            ..LEAKING
        };
        let all = Unseen::of(&totals(1 << 40, 1 << 40), false, 0, Sampling::Exact);
        assert_eq!(
            stable.allowing_for(&all, &holding(1, 1)).verdict,
            Verdict::Stable
        );
    }

    #[test]
    fn a_rising_site_that_lost_frees_may_have_made_is_not_leaking() {
        let holding = |live_allocations: u64| SiteStats {
            live_allocations,
            live_bytes: live_allocations * 100,
            ..SiteStats::default()
        };
        let verdict = |frees_lost, sampling, site| {
            let unseen = Unseen::of(&Totals::default(), true, frees_lost, sampling);
            LEAKING.allowing_for(&unseen, &site).verdict
        };
        assert_eq!(verdict(0, Sampling::Exact, holding(1)), Verdict::Leaking);
        assert_eq!(
            verdict(500, Sampling::Exact, holding(500)),
            Verdict::FreesLost
        );
        assert_eq!(
            verdict(500, Sampling::Exact, holding(501)),
            Verdict::Leaking
        );
        // Sampled, a lost free may be of a block that stood for a hundred.
        let sampled = Sampling::EveryNth { n: 100 };
        assert_eq!(verdict(5, sampled, holding(500)), Verdict::FreesLost);
        assert_eq!(verdict(5, sampled, holding(501)), Verdict::Leaking);
        // Lost frees come before replaced blocks: the figures themselves are in doubt.
        let both = Unseen::of(
            &Totals {
                unmatched_frees: 1000,
                ..Totals::default()
            },
            false,
            1000,
            Sampling::Exact,
        );
        assert_eq!(
            LEAKING.allowing_for(&both, &holding(10)).verdict,
            Verdict::FreesLost
        );
    }
}
