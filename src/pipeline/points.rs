//! OTLP data points as every metrics consumer reads them, written once for the app metric store and the
//! runtime picker: numbers, explicit and exponential histograms as classic buckets (and exponential ones
//! as the model's native buckets), summaries, the checks that refuse an inconsistent point, delta
//! accumulation and the windows that make a repeated delta count once.
//!
//! Exponential buckets become classic upper bounds: positive bucket `i` of scale `s` holds
//! `(base^i, base^(i+1)]`, `base = 2^(2^-s)`; the zero bucket ends at the zero threshold; negative
//! buckets are mirrored below zero (negative bucket `i` ends at `-base^i`). Mirrored, not folded into
//! the zero bucket: folding would keep count and sum but tell a quantile that a value of -8 lies
//! between 0 and the zero threshold, and the classic buckets would disagree with the native ones kept
//! beside them. OpenTelemetry's Prometheus compatibility rules likewise carry negative buckets into the
//! native histogram's negative buckets. Pause and delay histograms never hold negatives, so for them the
//! choice changes nothing.

use std::collections::VecDeque;

use crate::model::exponential::{ExpBuckets, Exponential};

use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{
    exponential_histogram_data_point, number_data_point, AggregationTemporality,
    ExponentialHistogramDataPoint, HistogramDataPoint, NumberDataPoint, SummaryDataPoint,
};

/// Most buckets a histogram (or quantiles a summary) may hold; a point with more is refused.
pub const MAX_BUCKETS: usize = 512;
/// Delta windows remembered per series, so a repeated or late delta export is applied once.
pub const DELTA_WINDOWS_REMEMBERED: usize = 8;
/// Exponential scales taken (OpenTelemetry's SDKs use -10..20).
const SCALES: std::ops::RangeInclusive<i32> = -10..=20;

/// Why a point cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PointError {
    /// A number point without a value.
    #[error("number point has no value")]
    NoValue,
    /// Bucket counts and bounds do not pair up.
    #[error("histogram point has {counts} bucket counts for {bounds} bounds")]
    BucketsForBounds {
        /// Bucket counts sent.
        counts: usize,
        /// Bounds sent.
        bounds: usize,
    },
    /// Bounds out of order, repeated, or not finite.
    #[error("histogram bounds are not finite and strictly increasing")]
    Bounds,
    /// More buckets than [`MAX_BUCKETS`].
    #[error("histogram point has more than {MAX_BUCKETS} buckets")]
    TooManyBuckets,
    /// The buckets do not add up to the count (or their sum overflows).
    #[error("histogram point count {0} differs from the sum of its bucket counts")]
    Count(u64),
    /// An exponential scale outside -10..20.
    #[error("exponential histogram scale {0} is outside -10..20")]
    Scale(i32),
    /// More exponential buckets than [`MAX_BUCKETS`] (both sides and the zero bucket).
    #[error("exponential histogram point has more than {MAX_BUCKETS} buckets")]
    TooManyExponentialBuckets,
    /// The exponential buckets do not add up to the count.
    #[error("exponential histogram point count {0} differs from the sum of its bucket counts")]
    ExponentialCount(u64),
    /// A quantile outside 0..1.
    #[error("summary quantile outside 0..1")]
    Quantile,
    /// More quantiles than [`MAX_BUCKETS`].
    #[error("summary point has more than {MAX_BUCKETS} quantiles")]
    TooManyQuantiles,
    /// A quantile given twice (it would write one series twice).
    #[error("summary point repeats a quantile")]
    RepeatedQuantile,
}

/// True for delta aggregation temporality.
pub fn is_delta(temporality: i32) -> bool {
    temporality == AggregationTemporality::Delta as i32
}

/// True when a point's flags say it has no recorded value: the SDK's way of saying the series ended.
pub fn ended(flags: u32) -> bool {
    flags & 1 == 1
}

/// A number point's value, integers as floats (NaN and infinities as sent).
pub fn number(dp: &NumberDataPoint) -> Option<f64> {
    match dp.value? {
        number_data_point::Value::AsDouble(d) => Some(d),
        number_data_point::Value::AsInt(i) => Some(i as f64),
    }
}

/// The fields every OTLP data point type shares.
pub trait DataPoint {
    /// The point's attributes.
    fn attributes(&self) -> &[KeyValue];
    /// Its flags (see [`ended`]).
    fn flags(&self) -> u32;
    /// Start of its series (cumulative) or window (delta), Unix ns.
    fn start(&self) -> u64;
    /// When it was taken, Unix ns.
    fn time(&self) -> u64;
}

macro_rules! data_point {
    ($($t:ty),*) => {$(
        impl DataPoint for $t {
            fn attributes(&self) -> &[KeyValue] { &self.attributes }
            fn flags(&self) -> u32 { self.flags }
            fn start(&self) -> u64 { self.start_time_unix_nano }
            fn time(&self) -> u64 { self.time_unix_nano }
        }
    )*};
}
data_point!(
    NumberDataPoint,
    HistogramDataPoint,
    ExponentialHistogramDataPoint,
    SummaryDataPoint
);

/// A histogram as classic buckets: each bucket's own (not cumulative) count per upper bound, ascending,
/// the last `+Inf`; with sum and count.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Own count per upper bound.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of the observations (0 when the point carried none).
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// No observations and no buckets: what a first delta is added to.
    pub fn empty() -> Self {
        Histogram {
            buckets: Vec::new(),
            sum: 0.0,
            count: 0,
        }
    }

    /// An explicit-bucket point, refused when its buckets and bounds do not fit together, its bounds
    /// are not finite and strictly increasing, it has more than [`MAX_BUCKETS`] buckets, or its buckets
    /// do not add up to its count. A point without buckets is one `+Inf` bucket of its count.
    pub fn explicit(dp: &HistogramDataPoint) -> Result<Self, PointError> {
        let sum = dp.sum.unwrap_or(0.0);
        if dp.bucket_counts.is_empty() && dp.explicit_bounds.is_empty() {
            return Ok(Histogram {
                buckets: vec![(f64::INFINITY, dp.count)],
                sum,
                count: dp.count,
            });
        }
        if dp.bucket_counts.len() != dp.explicit_bounds.len() + 1 {
            return Err(PointError::BucketsForBounds {
                counts: dp.bucket_counts.len(),
                bounds: dp.explicit_bounds.len(),
            });
        }
        if dp
            .explicit_bounds
            .windows(2)
            .any(|w| w[0].partial_cmp(&w[1]) != Some(std::cmp::Ordering::Less))
            || dp.explicit_bounds.iter().any(|b| !b.is_finite())
        {
            return Err(PointError::Bounds);
        }
        if dp.bucket_counts.len() > MAX_BUCKETS {
            return Err(PointError::TooManyBuckets);
        }
        let total = dp
            .bucket_counts
            .iter()
            .try_fold(0u64, |a, c| a.checked_add(*c));
        if total != Some(dp.count) {
            return Err(PointError::Count(dp.count));
        }
        let buckets = dp
            .explicit_bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(dp.bucket_counts.iter().copied())
            .collect();
        Ok(Histogram {
            buckets,
            sum,
            count: dp.count,
        })
    }

    /// An exponential point as classic buckets (see the module's note on negative buckets), refused
    /// when its scale is outside -10..20, it has more than [`MAX_BUCKETS`] buckets, or they do not add
    /// up to its count. Bounds past f64's range fold into `+Inf`; bounds that come out equal (steps
    /// that underflow, a zero threshold on a bucket bound) are one bucket, so no bound repeats.
    pub fn exponential(dp: &ExponentialHistogramDataPoint) -> Result<Self, PointError> {
        if !SCALES.contains(&dp.scale) {
            return Err(PointError::Scale(dp.scale));
        }
        let pos = dp.positive.as_ref();
        let neg = dp.negative.as_ref();
        let n = pos.map_or(0, |b| b.bucket_counts.len()) + neg.map_or(0, |b| b.bucket_counts.len());
        if n + 2 > MAX_BUCKETS {
            return Err(PointError::TooManyExponentialBuckets);
        }
        // base^i = 2^(i * 2^-scale): exp2 keeps whole powers of two exact (le="2", not
        // "1.9999999999999998").
        let step = 2f64.powi(-dp.scale);
        let bound = |i: i64| (i as f64 * step).exp2();
        let mut out = Vec::with_capacity(n + 2);
        if let Some(b) = neg {
            for (k, c) in b
                .bucket_counts
                .iter()
                .enumerate()
                .rev()
                .filter(|(_, c)| **c > 0)
            {
                out.push((-bound(b.offset as i64 + k as i64), *c));
            }
        }
        out.push((dp.zero_threshold.max(0.0), dp.zero_count));
        if let Some(b) = pos {
            for (k, c) in b.bucket_counts.iter().enumerate() {
                out.push((bound(b.offset as i64 + k as i64 + 1), *c));
            }
        }
        let total = out.iter().try_fold(0u64, |a, (_, c)| a.checked_add(*c));
        if total != Some(dp.count) {
            return Err(PointError::ExponentialCount(dp.count));
        }
        let mut overflowed = 0u64;
        out.retain(|(b, c)| {
            if b.is_finite() {
                true
            } else {
                overflowed = overflowed.saturating_add(*c);
                false
            }
        });
        for (b, _) in out.iter_mut() {
            // -0 and 0 are one bound (a negative bucket whose bound underflowed).
            if *b == 0.0 {
                *b = 0.0;
            }
        }
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out.dedup_by(|later, kept| {
            if later.0 == kept.0 {
                kept.1 = kept.1.saturating_add(later.1);
                true
            } else {
                false
            }
        });
        out.push((f64::INFINITY, overflowed));
        Ok(Histogram {
            buckets: out,
            sum: dp.sum.unwrap_or(0.0),
            count: dp.count,
        })
    }

    /// The same histogram in another unit: bounds and sum times `factor` (positive).
    pub fn scaled(mut self, factor: f64) -> Self {
        if factor != 1.0 {
            for (b, _) in &mut self.buckets {
                *b *= factor;
            }
            self.sum *= factor;
        }
        self
    }

    /// Adds a delta: counts by bound (buckets at new bounds inserted in order), sum and count. When the
    /// buckets together would pass [`MAX_BUCKETS`], the series starts again from the delta; returns
    /// false then.
    pub fn add(&mut self, delta: Histogram) -> bool {
        for &(b, c) in &delta.buckets {
            match self.buckets.binary_search_by(|(x, _)| x.total_cmp(&b)) {
                Ok(i) => self.buckets[i].1 = self.buckets[i].1.saturating_add(c),
                Err(i) => self.buckets.insert(i, (b, c)),
            }
        }
        if self.buckets.len() > MAX_BUCKETS {
            *self = delta;
            return false;
        }
        self.sum += delta.sum;
        self.count = self.count.saturating_add(delta.count);
        true
    }

    /// Cumulative counts per upper bound (saturating: counts near u64::MAX never wrap into a smaller
    /// `+Inf`).
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut acc = 0u64;
        self.buckets
            .iter()
            .map(|(b, c)| {
                acc = acc.saturating_add(*c);
                (*b, acc)
            })
            .collect()
    }
}

/// The exponential buckets of a point that [`Histogram::exponential`] accepted, as the model keeps them
/// for exporters that carry native histograms, within `max_buckets` per side (finer points are merged
/// down to fit); min and max kept only when finite and in order.
pub fn native_buckets(dp: &ExponentialHistogramDataPoint, max_buckets: usize) -> Exponential {
    let side = |b: Option<&exponential_histogram_data_point::Buckets>| ExpBuckets {
        offset: b.map_or(0, |b| b.offset),
        counts: b.map_or_else(Vec::new, |b| b.bucket_counts.clone()),
    };
    let mut e = Exponential {
        scale: dp.scale,
        zero_threshold: dp.zero_threshold.max(0.0),
        zero_count: dp.zero_count,
        positive: side(dp.positive.as_ref()),
        negative: side(dp.negative.as_ref()),
        min_max: match (dp.min, dp.max) {
            (Some(lo), Some(hi)) if lo.is_finite() && hi.is_finite() && lo <= hi => Some((lo, hi)),
            _ => None,
        },
    };
    e.limit(max_buckets);
    e
}

/// A summary point: quantiles ascending, with sum and count.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// (quantile, value), quantiles in 0..1, ascending, none twice.
    pub quantiles: Vec<(f64, f64)>,
    /// Sum of the observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Summary {
    /// A summary point, refused when a quantile is outside 0..1 or repeated, or it has more than
    /// [`MAX_BUCKETS`] quantiles.
    pub fn read(dp: &SummaryDataPoint) -> Result<Self, PointError> {
        let mut quantiles: Vec<(f64, f64)> = dp
            .quantile_values
            .iter()
            .map(|q| (q.quantile, q.value))
            .collect();
        if quantiles.iter().any(|(q, _)| !(0.0..=1.0).contains(q)) {
            return Err(PointError::Quantile);
        }
        if quantiles.len() > MAX_BUCKETS {
            return Err(PointError::TooManyQuantiles);
        }
        quantiles.sort_by(|a, b| a.0.total_cmp(&b.0));
        if quantiles.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(PointError::RepeatedQuantile);
        }
        Ok(Summary {
            quantiles,
            sum: dp.sum,
            count: dp.count,
        })
    }
}

/// The last [`DELTA_WINDOWS_REMEMBERED`] `(start, end)` windows of deltas applied to a series, so a
/// retried or late delta counts once.
#[derive(Debug, Clone, Default)]
pub struct DeltaWindows(VecDeque<(u64, u64)>);

impl DeltaWindows {
    /// Records the window `(start, time)`; false when it was applied already (then nothing changes).
    pub fn admit(&mut self, start: u64, time: u64) -> bool {
        if self.0.contains(&(start, time)) {
            return false;
        }
        if self.0.len() == DELTA_WINDOWS_REMEMBERED {
            self.0.pop_front();
        }
        self.0.push_back((start, time));
        true
    }

    /// True before the first delta.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::metrics::v1::exponential_histogram_data_point::Buckets;

    fn expo(
        scale: i32,
        zero: (f64, u64),
        pos: (i32, &[u64]),
        neg: (i32, &[u64]),
        sum: f64,
    ) -> ExponentialHistogramDataPoint {
        ExponentialHistogramDataPoint {
            count: zero.1 + pos.1.iter().sum::<u64>() + neg.1.iter().sum::<u64>(),
            sum: Some(sum),
            scale,
            zero_count: zero.1,
            zero_threshold: zero.0,
            positive: Some(Buckets {
                offset: pos.0,
                bucket_counts: pos.1.to_vec(),
            }),
            negative: Some(Buckets {
                offset: neg.0,
                bucket_counts: neg.1.to_vec(),
            }),
            ..Default::default()
        }
    }

    /// The one behaviour for negative buckets: mirrored below zero. Observations -3, -3, -0.7, 0, 0.7,
    /// 1.5, 3 at scale 0 (base 2): negative bucket 1 holds [-4, -2), bucket -1 holds [-1, -0.5).
    #[test]
    fn negative_exponential_buckets_are_mirrored_below_zero() {
        let dp = expo(0, (0.0, 1), (-1, &[1, 1, 1]), (-1, &[1, 0, 2]), -1.5);
        let h = Histogram::exponential(&dp).unwrap();
        assert_eq!(
            h.buckets,
            [
                (-2.0, 2),
                (-0.5, 1),
                (0.0, 1),
                (1.0, 1),
                (2.0, 1),
                (4.0, 1),
                (f64::INFINITY, 0)
            ]
        );
        // Count and sum stay those of the point, and the buckets add up to the count.
        assert_eq!((h.count, h.sum), (7, -1.5));
        assert_eq!(h.cumulative().last(), Some(&(f64::INFINITY, 7)));
        // The median (4th of 7) lies at or below 0, not in a zero bucket that would claim
        // everything negative is between 0 and the threshold; two values are at or below -2.
        let c = h.cumulative();
        assert_eq!(c.iter().find(|(_, n)| *n >= 4).map(|b| b.0), Some(0.0));
        assert_eq!(c[0], (-2.0, 2));
    }

    #[test]
    fn bucket_limits_count_both_sides() {
        let many = vec![1u64; 300];
        let dp = expo(0, (0.0, 0), (0, &many), (0, &many), 0.0);
        assert_eq!(
            Histogram::exponential(&dp),
            Err(PointError::TooManyExponentialBuckets)
        );
    }

    #[test]
    fn scaled_histograms_keep_counts_and_infinity() {
        let dp = HistogramDataPoint {
            count: 3,
            sum: Some(250.0),
            bucket_counts: vec![1, 2, 0],
            explicit_bounds: vec![100.0, 200.0],
            ..Default::default()
        };
        let h = Histogram::explicit(&dp).unwrap().scaled(1e-3);
        assert_eq!(h.buckets, [(0.1, 1), (0.2, 2), (f64::INFINITY, 0)]);
        assert_eq!((h.sum, h.count), (0.25, 3));
    }

    #[test]
    fn deltas_merge_by_bound_and_start_again_past_the_bucket_limit() {
        let mut h = Histogram {
            buckets: vec![(1.0, 1), (f64::INFINITY, 0)],
            sum: 0.5,
            count: 1,
        };
        assert!(h.add(Histogram {
            buckets: vec![(0.5, 2), (f64::INFINITY, 1)],
            sum: 3.0,
            count: 3,
        }));
        assert_eq!(h.buckets, [(0.5, 2), (1.0, 1), (f64::INFINITY, 1)]);
        assert_eq!((h.sum, h.count), (3.5, 4));
        let wide = Histogram {
            buckets: (0..MAX_BUCKETS).map(|i| (i as f64 + 10.0, 1)).collect(),
            sum: 1.0,
            count: MAX_BUCKETS as u64,
        };
        assert!(!h.add(wide.clone()));
        assert_eq!(h, wide);
    }

    #[test]
    fn a_delta_window_counts_once_and_only_the_last_few_are_remembered() {
        let mut w = DeltaWindows::default();
        assert!(w.is_empty());
        assert!(w.admit(0, 10));
        assert!(!w.admit(0, 10));
        for i in 1..=DELTA_WINDOWS_REMEMBERED as u64 {
            assert!(w.admit(i * 10, i * 10 + 10));
        }
        // The first window has been forgotten.
        assert!(w.admit(0, 10));
    }
}
