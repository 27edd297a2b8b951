//! Exponential (base-2) histogram buckets, as OpenTelemetry's exponential histogram and Prometheus'
//! native histogram both define them: at scale `s` the base is `2^(2^-s)` and bucket `i` holds the values
//! in `(base^i, base^(i+1)]` (OpenTelemetry's index; Prometheus counts the same bucket as `i + 1`).
//! Recording and merging keep at most a stated number of buckets, halving the resolution when a wider
//! range arrives, so one series costs a bounded amount whatever values it is fed.

/// One side (positive or negative values) of an exponential histogram: counts of consecutive buckets
/// starting at bucket index `offset`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExpBuckets {
    /// Index of the first bucket in `counts`.
    pub offset: i32,
    /// Count of each bucket (not cumulative).
    pub counts: Vec<u64>,
}

/// Exponential buckets with their zero bucket. Sum and count live beside it in the histogram value.
#[derive(Debug, Clone, PartialEq)]
pub struct Exponential {
    /// Resolution: each power of two is split into `2^scale` buckets.
    pub scale: i32,
    /// Values with an absolute value at or below this count in the zero bucket.
    pub zero_threshold: f64,
    /// Count of the zero bucket.
    pub zero_count: u64,
    /// Buckets of values above the zero threshold.
    pub positive: ExpBuckets,
    /// Buckets of values below minus the zero threshold (indexed by absolute value).
    pub negative: ExpBuckets,
    /// Smallest and largest value recorded, where known (OTLP carries them; a window taken by
    /// [`Exponential::minus`] does not know them).
    pub min_max: Option<(f64, f64)>,
}

/// Lowest scale kept: below it the buckets are too wide to mean anything.
pub const MIN_SCALE: i32 = -10;

impl ExpBuckets {
    fn is_empty(&self) -> bool {
        self.counts.iter().all(|c| *c == 0)
    }

    /// Adds `n` to bucket `index`, growing the run of buckets as needed.
    fn add(&mut self, index: i32, n: u64) {
        if self.counts.is_empty() {
            self.offset = index;
            self.counts.push(n);
            return;
        }
        if index < self.offset {
            let grow = (self.offset - index) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0, grow));
            self.offset = index;
        }
        let at = (index - self.offset) as usize;
        if at >= self.counts.len() {
            self.counts.resize(at + 1, 0);
        }
        self.counts[at] = self.counts[at].saturating_add(n);
    }

    /// The number of buckets the run would span with `index` in it.
    fn span_with(&self, index: i32) -> i64 {
        if self.counts.is_empty() {
            return 1;
        }
        let lo = i64::from(self.offset.min(index));
        let hi = (i64::from(self.offset) + self.counts.len() as i64 - 1).max(i64::from(index));
        hi - lo + 1
    }

    /// Halves the resolution `by` times: bucket `i` becomes `i >> by`.
    fn downscale(&mut self, by: u32) {
        if by == 0 || self.counts.is_empty() {
            return;
        }
        let old = std::mem::take(&mut self.counts);
        let old_offset = self.offset;
        self.offset = old_offset >> by;
        for (k, c) in old.into_iter().enumerate() {
            let idx = old_offset + k as i32;
            let at = ((idx >> by) - self.offset) as usize;
            if at >= self.counts.len() {
                self.counts.resize(at + 1, 0);
            }
            self.counts[at] = self.counts[at].saturating_add(c);
        }
    }

    /// `(index, count)` of each bucket.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (i32, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .map(move |(k, c)| (self.offset + k as i32, *c))
    }
}

impl Exponential {
    /// An empty histogram at `scale` with the given zero threshold.
    pub fn new(scale: i32, zero_threshold: f64) -> Self {
        Exponential {
            scale,
            zero_threshold,
            zero_count: 0,
            positive: ExpBuckets::default(),
            negative: ExpBuckets::default(),
            min_max: None,
        }
    }

    /// The bucket index of a positive finite value at this scale.
    pub fn index_of(&self, v: f64) -> i32 {
        index_at(v, self.scale)
    }

    /// Lower bound of bucket `index` (the upper bound is that of `index + 1`).
    pub fn lower_bound(&self, index: i32) -> f64 {
        (f64::from(index) * 2f64.powi(-self.scale)).exp2()
    }

    /// Records one observation, keeping each side within `max_buckets` buckets by lowering the scale.
    /// NaN is ignored (it has no bucket); infinities land in the outermost bucket a float can name.
    pub fn record(&mut self, v: f64, max_buckets: usize) {
        if v.is_nan() {
            return;
        }
        let clamped = v.clamp(-f64::MAX, f64::MAX);
        self.min_max = Some(match self.min_max {
            None => (clamped, clamped),
            Some((lo, hi)) => (lo.min(clamped), hi.max(clamped)),
        });
        if v.abs() <= self.zero_threshold {
            self.zero_count = self.zero_count.saturating_add(1);
            return;
        }
        let a = v.abs().min(f64::MAX);
        loop {
            let index = self.index_of(a);
            let side = if v > 0.0 {
                &mut self.positive
            } else {
                &mut self.negative
            };
            if side.span_with(index) <= max_buckets as i64 || self.scale <= MIN_SCALE {
                side.add(index, 1);
                return;
            }
            self.downscale(1);
        }
    }

    /// Lowers the scale by `by`, merging neighbouring buckets.
    pub fn downscale(&mut self, by: u32) {
        let by = by.min((self.scale - MIN_SCALE).max(0) as u32);
        self.positive.downscale(by);
        self.negative.downscale(by);
        self.scale -= by as i32;
    }

    /// Lowers the scale until each side spans at most `max_buckets` buckets.
    pub fn limit(&mut self, max_buckets: usize) {
        while (self.positive.counts.len() > max_buckets || self.negative.counts.len() > max_buckets)
            && self.scale > MIN_SCALE
        {
            self.downscale(1);
        }
    }

    /// Adds `other` into this histogram at the lower of the two scales, then keeps `max_buckets`.
    pub fn merge(&mut self, other: &Exponential, max_buckets: usize) {
        // Both ranges known: the union; one side empty: the other's; otherwise unknown.
        self.min_max = match (self.min_max, other.min_max) {
            (Some((a, b)), Some((c, d))) => Some((a.min(c), b.max(d))),
            (m, None) if other.is_empty() => m,
            (None, m) if self.is_empty() => m,
            _ => None,
        };
        let mut other = other.clone();
        if other.scale > self.scale {
            other.downscale((other.scale - self.scale) as u32);
        } else if self.scale > other.scale {
            self.downscale((self.scale - other.scale) as u32);
        }
        self.zero_threshold = self.zero_threshold.max(other.zero_threshold);
        self.zero_count = self.zero_count.saturating_add(other.zero_count);
        for (i, c) in other.positive.iter() {
            self.positive.add(i, c);
        }
        for (i, c) in other.negative.iter() {
            self.negative.add(i, c);
        }
        self.limit(max_buckets);
    }

    /// The observations in `self` that are not in `base` (an earlier reading of the same cumulative
    /// histogram), at the lower of the two scales; a bucket that shrank (a reset) counts as empty.
    pub fn minus(&self, base: &Exponential) -> Exponential {
        let (mut now, mut base) = (self.clone(), base.clone());
        if now.scale > base.scale {
            now.downscale((now.scale - base.scale) as u32);
        } else if base.scale > now.scale {
            base.downscale((base.scale - now.scale) as u32);
        }
        now.zero_count = now.zero_count.saturating_sub(base.zero_count);
        now.min_max = None;
        for (side, old) in [
            (&mut now.positive, &base.positive),
            (&mut now.negative, &base.negative),
        ] {
            for (i, c) in old.iter() {
                let at = i64::from(i) - i64::from(side.offset);
                if let Some(held) = usize::try_from(at)
                    .ok()
                    .and_then(|at| side.counts.get_mut(at))
                {
                    *held = held.saturating_sub(c);
                }
            }
        }
        now
    }

    /// Total count of every bucket, the zero bucket included.
    pub fn total(&self) -> u64 {
        self.positive
            .counts
            .iter()
            .chain(&self.negative.counts)
            .fold(self.zero_count, |a, c| a.saturating_add(*c))
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.zero_count == 0 && self.positive.is_empty() && self.negative.is_empty()
    }

    /// The `q` quantile (0..=1), interpolated geometrically inside its bucket (the buckets are
    /// exponential, so that is where the error is smallest); None when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = q * total as f64;
        let mut seen = 0u64;
        // Negative buckets from the most negative value up.
        for (i, c) in self.negative.iter().rev() {
            if c == 0 {
                continue;
            }
            if (seen + c) as f64 >= rank {
                let f = (rank - seen as f64) / c as f64;
                let (hi, lo) = (self.lower_bound(i + 1), self.lower_bound(i));
                return Some(-(hi * (lo / hi).powf(f)));
            }
            seen += c;
        }
        if self.zero_count > 0 && (seen + self.zero_count) as f64 >= rank {
            return Some(0.0);
        }
        seen += self.zero_count;
        for (i, c) in self.positive.iter() {
            if c == 0 {
                continue;
            }
            if (seen + c) as f64 >= rank {
                let f = (rank - seen as f64) / c as f64;
                let (lo, hi) = (self.lower_bound(i), self.lower_bound(i + 1));
                return Some(lo * (hi / lo).powf(f));
            }
            seen += c;
        }
        None
    }
}

/// The index of the bucket holding positive finite `v` at `scale`: the `i` with base^i < v <= base^(i+1).
/// Exact powers of two at scales of zero and below are computed from the exponent bits, so a bound is
/// never put into the bucket above it by rounding.
pub fn index_at(v: f64, scale: i32) -> i32 {
    let bits = v.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32;
    let mantissa = bits & ((1u64 << 52) - 1);
    if exp != 0 && mantissa == 0 {
        // v = 2^(exp - 1023): the upper bound of the bucket below it at every scale >= 0.
        let e = exp - 1023;
        if scale >= 0 {
            return (e << scale) - 1;
        }
        return (e - 1) >> -scale;
    }
    let x = v.log2() * 2f64.powi(scale);
    let i = x.ceil() - 1.0;
    i.clamp(i32::MIN as f64, i32::MAX as f64) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_follow_the_bounds() {
        // Scale 0: (1, 2] is bucket 0, (2, 4] bucket 1, (0.5, 1] bucket -1.
        assert_eq!(index_at(1.5, 0), 0);
        assert_eq!(index_at(2.0, 0), 0);
        assert_eq!(index_at(2.1, 0), 1);
        assert_eq!(index_at(1.0, 0), -1);
        assert_eq!(index_at(0.75, 0), -1);
        // Scale 2: base 2^(1/4); 1 is the upper bound of bucket -1.
        assert_eq!(index_at(1.0, 2), -1);
        assert_eq!(index_at(1.1, 2), 0);
        assert_eq!(index_at(4.0, 2), 7);
        // Scale -1: base 4: (1, 4] is bucket 0, (4, 16] bucket 1.
        assert_eq!(index_at(4.0, -1), 0);
        assert_eq!(index_at(2.0, -1), 0);
        assert_eq!(index_at(5.0, -1), 1);
        assert_eq!(index_at(1.0, -1), -1);
        for scale in [-3, 0, 3, 4, 8] {
            let h = Exponential::new(scale, 0.0);
            for v in [0.0007, 0.013, 0.1, 0.4, 1.0, 3.3, 59.0] {
                let i = h.index_of(v);
                assert!(h.lower_bound(i) < v && v <= h.lower_bound(i + 1) * (1.0 + 1e-12));
            }
        }
    }

    #[test]
    fn recording_stays_within_the_bucket_limit() {
        let mut h = Exponential::new(4, 1e-6);
        // 1 ms to 100 s is 16.6 doublings: 266 buckets at scale 4, so it must come down to scale 3.
        let mut v = 0.001;
        let mut n = 0;
        while v < 100.0 {
            h.record(v, 160);
            v *= 1.01;
            n += 1;
        }
        h.record(0.0, 160);
        h.record(-0.5, 160);
        assert_eq!(h.scale, 3);
        assert!(h.positive.counts.len() <= 160);
        assert_eq!(h.zero_count, 1);
        assert_eq!(h.negative.counts.iter().sum::<u64>(), 1);
        assert_eq!(h.total(), n + 2);
    }

    #[test]
    fn merging_two_scales_keeps_counts() {
        let mut a = Exponential::new(4, 0.0);
        let mut b = Exponential::new(2, 0.0);
        for v in [0.01, 0.02, 0.5] {
            a.record(v, 160);
        }
        for v in [0.03, 7.0] {
            b.record(v, 160);
        }
        assert_eq!(a.min_max, Some((0.01, 0.5)));
        a.merge(&b, 160);
        assert_eq!(a.scale, 2);
        assert_eq!(a.total(), 5);
        assert_eq!(a.min_max, Some((0.01, 7.0)), "the union of both ranges");
        // A side whose range is unknown leaves the merged range unknown, unless it is empty.
        let mut unknown = Exponential::new(2, 0.0);
        unknown.zero_count = 1;
        let mut c = a.clone();
        c.merge(&unknown, 160);
        assert_eq!(c.min_max, None);
        let mut d = Exponential::new(4, 0.0);
        d.merge(&a, 160);
        assert_eq!(d.min_max, Some((0.01, 7.0)), "merged into an empty one");
        // Every value lies inside the bucket its index names after the merge.
        for v in [0.01, 0.02, 0.5, 0.03, 7.0] {
            let i = a.index_of(v);
            let at = (i - a.positive.offset) as usize;
            assert!(a.positive.counts[at] >= 1, "{v}");
        }
    }

    #[test]
    fn quantiles_land_within_one_bucket_of_the_truth() {
        let mut h = Exponential::new(4, 1e-6);
        let values: Vec<f64> = (1..=10_000).map(|i| 0.001 * f64::from(i)).collect();
        for v in &values {
            h.record(*v, 160);
        }
        let width = 2f64.powf(1.0 / 16.0) - 1.0;
        for q in [0.5, 0.95, 0.99] {
            let exact = values[(q * values.len() as f64) as usize - 1];
            let got = h.quantile(q).unwrap_or(f64::NAN);
            assert!((got / exact - 1.0).abs() <= width, "q{q}: {got} vs {exact}");
        }
        assert_eq!(Exponential::new(4, 0.0).quantile(0.5), None);
    }

    #[test]
    fn a_window_is_the_difference_of_two_readings() {
        let mut before = Exponential::new(4, 1e-6);
        for v in [0.01, 0.02, 0.03] {
            before.record(v, 160);
        }
        let mut after = before.clone();
        for v in [0.5, 0.5, 0.02] {
            after.record(v, 160);
        }
        // A reading past a lowered scale still subtracts bucket by bucket.
        after.downscale(1);
        let d = after.minus(&before);
        assert_eq!(d.min_max, None, "a window's extremes are not known");
        assert_eq!(d.scale, 3);
        assert_eq!(d.total(), 3);
        let p = d.quantile(0.9).unwrap_or(0.0);
        assert!((p / 0.5 - 1.0).abs() < 0.1, "{p}");
    }
}
