//! Quantiles from histogram buckets, the way Prometheus' `histogram_quantile` estimates them:
//! find the bucket holding the rank and interpolate linearly inside it, assuming observations
//! spread evenly there; a rank in the `+Inf` bucket answers the highest finite bound.

/// `buckets`: (upper bound, cumulative count) in any order, counts being increases over a
/// window. `None` when there was nothing observed, or without a `+Inf` bucket.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let mut b: Vec<(f64, f64)> = buckets.to_vec();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    if b.len() < 2 || b.last()?.0 != f64::INFINITY {
        return None;
    }
    // Counts added from separate series may be non-monotonic after a reset; Prometheus makes
    // them monotonic the same way.
    for i in 1..b.len() {
        if b[i].1 < b[i - 1].1 {
            b[i].1 = b[i - 1].1;
        }
    }
    let total = b.last()?.1;
    if total <= 0.0 || q.is_nan() {
        return None;
    }
    if q < 0.0 {
        return Some(f64::NEG_INFINITY);
    }
    if q > 1.0 {
        return Some(f64::INFINITY);
    }
    let rank = q * total;
    let i = b.iter().position(|(_, count)| *count >= rank)?;
    if i == b.len() - 1 {
        return Some(b[b.len() - 2].0);
    }
    let (end, count) = b[i];
    if i == 0 && end <= 0.0 {
        return Some(end);
    }
    let (start, below) = if i == 0 { (0.0, 0.0) } else { b[i - 1] };
    let in_bucket = count - below;
    if in_bucket <= 0.0 {
        return Some(end);
    }
    Some(start + (end - start) * ((rank - below) / in_bucket))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INF: f64 = f64::INFINITY;

    #[test]
    fn quantiles_interpolate_as_prometheus_does() {
        // 100 observations: 50 up to 10 ms, 40 more up to 100, 10 more up to 1000.
        let b = [(10.0, 50.0), (100.0, 90.0), (1000.0, 100.0), (INF, 100.0)];
        let cases = [
            (0.5, Some(10.0)),
            (0.25, Some(5.0)),
            // rank 70: 20 of the 40 in (10, 100].
            (0.7, Some(55.0)),
            // rank 95: 5 of the 10 in (100, 1000].
            (0.95, Some(550.0)),
            (0.99, Some(910.0)),
            (1.0, Some(1000.0)),
            (1.5, Some(INF)),
            (-0.1, Some(f64::NEG_INFINITY)),
        ];
        for (q, want) in cases {
            let got = histogram_quantile(q, &b);
            match (got, want) {
                (Some(g), Some(w)) if g.is_infinite() => assert_eq!(g, w, "q={q}"),
                (Some(g), Some(w)) => assert!((g - w).abs() < 1e-9, "q={q}: {g} != {w}"),
                _ => assert_eq!(got, want, "q={q}"),
            }
        }
    }

    #[test]
    fn edge_cases() {
        // In the +Inf bucket: the highest finite bound.
        let b = [(10.0, 1.0), (INF, 10.0)];
        assert_eq!(histogram_quantile(0.99, &b), Some(10.0));
        // Nothing observed, no +Inf, a single bucket: no answer.
        assert_eq!(histogram_quantile(0.5, &[(10.0, 0.0), (INF, 0.0)]), None);
        assert_eq!(histogram_quantile(0.5, &[(10.0, 5.0), (20.0, 6.0)]), None);
        assert_eq!(histogram_quantile(0.5, &[(INF, 6.0)]), None);
        // Any order; non-monotonic counts are evened out.
        let b = [(INF, 4.0), (1.0, 4.0), (0.5, 2.0), (5.0, 3.0)];
        assert_eq!(histogram_quantile(0.5, &b), Some(0.5));
        assert_eq!(histogram_quantile(1.0, &b), Some(1.0));
        // A first bucket at or below zero answers its bound.
        assert_eq!(
            histogram_quantile(0.5, &[(0.0, 2.0), (INF, 2.0)]),
            Some(0.0)
        );
    }
}
