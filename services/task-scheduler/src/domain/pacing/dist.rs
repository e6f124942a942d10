//! Learned duration distributions for the predictive pacer: a histogram on
//! a fixed grid with exponential forgetting, so that it follows a shift's
//! drift, and without a shape assumed (ring-outs pile up at the ring
//! timeout, talk times have long tails).

/// An empirical distribution of durations (ms) with exponential forgetting.
#[derive(Debug, Clone)]
pub(crate) struct Histogram {
    bin_ms: f64,
    /// Weights per bin; the last bin holds everything at or past the grid.
    w: Vec<f64>,
    /// The weight of the next sample: grows by `1 / keep` per sample, which
    /// ages every older sample by `keep` without touching it.
    inc: f64,
    keep: f64,
    total: f64,
    wsum_ms: f64,
    count: u64,
    /// `cdf[i]` = P(X < (i + 1) · bin), valid when `!dirty`.
    cdf: Vec<f64>,
    mean_ms: f64,
    dirty: bool,
}

impl Histogram {
    /// A histogram of `max_ms / bin_ms` bins remembering about `window`
    /// samples.
    pub(crate) fn new(bin_ms: u64, max_ms: u64, window: f64) -> Self {
        let bins = (max_ms / bin_ms.max(1)).max(2) as usize + 1;
        Self {
            bin_ms: bin_ms.max(1) as f64,
            w: vec![0.0; bins],
            inc: 1.0,
            keep: 1.0 - 1.0 / window.max(2.0),
            total: 0.0,
            wsum_ms: 0.0,
            count: 0,
            cdf: vec![0.0; bins],
            mean_ms: 0.0,
            dirty: true,
        }
    }

    pub(crate) fn add(&mut self, ms: u64) {
        let last = self.w.len() - 1;
        let bin = ((ms as f64 / self.bin_ms) as usize).min(last);
        self.w[bin] += self.inc;
        self.total += self.inc;
        self.wsum_ms += self.inc * ms as f64;
        self.count += 1;
        self.inc /= self.keep;
        if self.inc > 1e100 {
            let s = 1.0 / self.inc;
            self.w.iter_mut().for_each(|w| *w *= s);
            self.total *= s;
            self.wsum_ms *= s;
            self.inc = 1.0;
        }
        self.dirty = true;
    }

    /// Samples seen (not aged).
    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    /// Rebuilds the cumulative table after samples were added.
    pub(crate) fn refresh(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        if self.total <= 0.0 {
            return;
        }
        let mut acc = 0.0;
        for (c, w) in self.cdf.iter_mut().zip(&self.w) {
            acc += w;
            *c = (acc / self.total).min(1.0);
        }
        self.mean_ms = self.wsum_ms / self.total;
    }

    /// The weighted mean (ms); 0 before any sample.
    pub(crate) fn mean_ms(&self) -> f64 {
        self.mean_ms
    }

    /// P(X ≤ x), samples spread evenly within their bin; past the grid an
    /// exponential tail of the distribution's mean.
    pub(crate) fn cdf(&self, x_ms: f64) -> f64 {
        if self.total <= 0.0 || x_ms.is_nan() || x_ms <= 0.0 {
            return 0.0;
        }
        let pos = x_ms / self.bin_ms;
        let last = self.cdf.len() - 1;
        if pos >= last as f64 {
            let below = if last == 0 { 0.0 } else { self.cdf[last - 1] };
            let past = x_ms - last as f64 * self.bin_ms;
            let scale = self.mean_ms.max(self.bin_ms);
            return below + (1.0 - below) * (1.0 - (-past / scale).exp());
        }
        let i = pos as usize;
        let lo = if i == 0 { 0.0 } else { self.cdf[i - 1] };
        lo + (self.cdf[i] - lo) * (pos - i as f64)
    }

    /// P(X ≤ e + more | X > e): what has lasted `e` ends within `more`.
    pub(crate) fn ends_within(&self, elapsed_ms: f64, more_ms: f64) -> f64 {
        if more_ms <= 0.0 || self.total <= 0.0 {
            return 0.0;
        }
        let f0 = self.cdf(elapsed_ms);
        let survive = 1.0 - f0;
        if survive < 1e-9 {
            // Longer than anything seen: an exponential residual of the mean.
            let scale = self.mean_ms.max(self.bin_ms);
            return 1.0 - (-more_ms / scale).exp();
        }
        ((self.cdf(elapsed_ms + more_ms) - f0) / survive).clamp(0.0, 1.0)
    }

    /// P(X > x).
    pub(crate) fn survival(&self, x_ms: f64) -> f64 {
        1.0 - self.cdf(x_ms)
    }

    /// The smallest grid point with P(X ≤ x) ≥ q.
    pub(crate) fn quantile(&self, q: f64) -> f64 {
        if self.total <= 0.0 {
            return 0.0;
        }
        let i = self.cdf.partition_point(|&c| c < q);
        let i = i.min(self.cdf.len() - 1);
        let lo = if i == 0 { 0.0 } else { self.cdf[i - 1] };
        let frac = if self.cdf[i] > lo {
            ((q - lo) / (self.cdf[i] - lo)).clamp(0.0, 1.0)
        } else {
            0.0
        };
        (i as f64 + frac) * self.bin_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_cdf_and_residuals() {
        let mut h = Histogram::new(1_000, 100_000, 1e9);
        for ms in [10_000, 20_000, 30_000, 40_000] {
            h.add(ms);
        }
        h.refresh();
        assert_eq!(h.count(), 4);
        assert!((h.mean_ms() - 25_000.0).abs() < 1e-3);
        assert!((h.cdf(15_000.0) - 0.25).abs() < 1e-9);
        assert!((h.cdf(41_000.0) - 1.0).abs() < 1e-9);
        // Lasted 25 s: one of the two left ends by 35 s.
        assert!((h.ends_within(25_000.0, 10_000.0) - 0.5).abs() < 1e-9);
        // Past everything seen: the exponential residual, never NaN.
        let p = h.ends_within(500_000.0, 25_000.0);
        assert!(p > 0.0 && p < 1.0);
        // Any point between the second and third sample is a median.
        let median = h.quantile(0.5);
        assert!((20_000.0..=31_000.0).contains(&median), "{median}");
        assert!((h.quantile(0.9) - 40_600.0).abs() < 1.0);
        assert_eq!(Histogram::new(1_000, 10_000, 10.0).cdf(5.0), 0.0);
    }

    #[test]
    fn histogram_forgets() {
        let mut h = Histogram::new(1_000, 100_000, 50.0);
        for _ in 0..1_000 {
            h.add(10_000);
        }
        for _ in 0..500 {
            h.add(50_000);
        }
        h.refresh();
        assert!(h.cdf(20_000.0) < 0.01, "old samples forgotten");
    }
}
