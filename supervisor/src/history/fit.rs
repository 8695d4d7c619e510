//! Robust statistics for `tune`: medians, the Theil–Sen line, thinning.
//!
//! Theil–Sen takes the median of the slopes between every pair of points, so a
//! spike (a garbage collection, a burst of requests) moves it no more than one
//! point moves a median. It is O(n²) in pairs: series are first thinned to at most
//! [`MAX_FIT_POINTS`] points by averaging neighbours.

/// Points a series is thinned to before the fit (≈ 20,000 pairs).
pub const MAX_FIT_POINTS: usize = 200;

/// The median of `v` (reordered); `None` when empty.
pub fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mid = v.len() / 2;
    let (_, m, _) = v.select_nth_unstable_by(mid, f64::total_cmp);
    let m = *m;
    if v.len() % 2 == 1 {
        return Some(m);
    }
    let below = v[..mid].iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some((below + m) / 2.0)
}

/// The weighted median: the value where half the weight lies on each side.
pub fn weighted_median(pairs: &mut [(f64, f64)]) -> Option<f64> {
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total: f64 = pairs.iter().map(|p| p.1).sum();
    if pairs.is_empty() || total <= 0.0 {
        return None;
    }
    let mut acc = 0.0;
    for (v, w) in pairs.iter() {
        acc += w;
        if acc >= total / 2.0 {
            return Some(*v);
        }
    }
    pairs.last().map(|p| p.0)
}

/// The `q` quantile (0..=1) of `v` (sorted in place), nearest rank.
pub fn quantile(v: &mut [f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// At most `max` points: consecutive runs averaged.
pub fn thin(points: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max {
        return points.to_vec();
    }
    let per = points.len().div_ceil(max);
    points
        .chunks(per)
        .map(|c| {
            let n = c.len() as f64;
            (
                c.iter().map(|p| p.0).sum::<f64>() / n,
                c.iter().map(|p| p.1).sum::<f64>() / n,
            )
        })
        .collect()
}

/// A fitted line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Line {
    pub slope: f64,
    pub intercept: f64,
    /// The median absolute residual: how far points stray from the line.
    pub noise: f64,
}

impl Line {
    pub fn at(&self, x: f64) -> f64 {
        self.intercept + self.slope * x
    }
}

/// The Theil–Sen line through `points` (x, y); `None` with fewer than two
/// distinct x.
pub fn theil_sen(points: &[(f64, f64)]) -> Option<Line> {
    let p = thin(points, MAX_FIT_POINTS);
    let mut slopes = Vec::with_capacity(p.len() * p.len() / 2);
    for i in 0..p.len() {
        for j in i + 1..p.len() {
            let dx = p[j].0 - p[i].0;
            if dx.abs() > f64::EPSILON {
                slopes.push((p[j].1 - p[i].1) / dx);
            }
        }
    }
    let slope = median(&mut slopes)?;
    let mut offsets: Vec<f64> = p.iter().map(|(x, y)| y - slope * x).collect();
    let intercept = median(&mut offsets)?;
    let mut residuals: Vec<f64> = p
        .iter()
        .map(|(x, y)| (y - (intercept + slope * x)).abs())
        .collect();
    let noise = median(&mut residuals).unwrap_or(0.0);
    Some(Line {
        slope,
        intercept,
        noise,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_quantiles() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
        assert_eq!(quantile(&mut [5.0, 1.0, 4.0, 2.0, 3.0], 0.95), Some(5.0));
        assert_eq!(
            weighted_median(&mut [(1.0, 1.0), (10.0, 5.0), (2.0, 1.0)]),
            Some(10.0)
        );
    }

    #[test]
    fn theil_sen_ignores_spikes_that_least_squares_would_follow() {
        // y = 3x + 10, with every tenth point a huge spike.
        let pts: Vec<(f64, f64)> = (0..1000)
            .map(|i| {
                let x = i as f64;
                let spike = if i % 10 == 0 { 5000.0 } else { 0.0 };
                (x, 3.0 * x + 10.0 + spike)
            })
            .collect();
        let l = theil_sen(&pts).unwrap();
        assert!((l.slope - 3.0).abs() < 0.1, "{l:?}");
        let flat: Vec<(f64, f64)> = (0..100).map(|i| (i as f64, 7.0)).collect();
        let l = theil_sen(&flat).unwrap();
        assert_eq!((l.slope, l.intercept, l.noise), (0.0, 7.0, 0.0));
        assert_eq!(theil_sen(&[(1.0, 1.0)]), None);
    }
}
