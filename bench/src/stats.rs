//! Means and 95 % confidence intervals over repetitions (Student's t, two-sided).

/// Two-sided 95 % critical values of Student's t for 1..=30 degrees of freedom.
const T95: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
    2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
    2.052, 2.048, 2.045, 2.042,
];

/// Mean and the half-width of its 95 % confidence interval (0 with one sample).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Estimate {
    /// Mean of the samples.
    pub mean: f64,
    /// Half-width of the 95 % confidence interval of the mean.
    pub ci95: f64,
    /// Number of samples.
    pub n: usize,
}

impl Estimate {
    /// The estimate of `samples` (NaN mean when empty).
    pub fn of(samples: &[f64]) -> Estimate {
        let n = samples.len();
        if n == 0 {
            return Estimate {
                mean: f64::NAN,
                ci95: f64::NAN,
                n,
            };
        }
        let mean = samples.iter().sum::<f64>() / n as f64;
        if n == 1 {
            return Estimate { mean, ci95: 0.0, n };
        }
        let var = samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let t = T95.get(n - 2).copied().unwrap_or(1.96);
        Estimate {
            mean,
            ci95: t * (var / n as f64).sqrt(),
            n,
        }
    }

    /// Lower bound of the interval.
    pub fn lo(&self) -> f64 {
        self.mean - self.ci95
    }

    /// Upper bound of the interval.
    pub fn hi(&self) -> f64 {
        self.mean + self.ci95
    }

    /// `mean ± ci` with `decimals` digits.
    pub fn fmt(&self, decimals: usize) -> String {
        if self.mean.is_nan() {
            return "—".into();
        }
        if self.n < 2 {
            return format!("{:.*}", decimals, self.mean);
        }
        format!("{:.*} ± {:.*}", decimals, self.mean, decimals, self.ci95)
    }
}

/// Paired per-repetition quotients `a[i] / b[i]`.
pub fn paired_ratio(a: &[f64], b: &[f64]) -> Estimate {
    let r: Vec<f64> = a
        .iter()
        .zip(b)
        .filter(|(_, y)| **y != 0.0)
        .map(|(x, y)| x / y)
        .collect();
    Estimate::of(&r)
}

/// Paired per-repetition differences `a[i] - b[i]`.
pub fn paired_diff(a: &[f64], b: &[f64]) -> Estimate {
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    Estimate::of(&d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_sample_has_no_interval() {
        let e = Estimate::of(&[3.0]);
        assert_eq!((e.mean, e.ci95, e.n), (3.0, 0.0, 1));
    }

    #[test]
    fn five_samples_use_the_t_value_for_four_degrees_of_freedom() {
        let e = Estimate::of(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        assert!((e.mean - 3.0).abs() < 1e-12);
        // sd = sqrt(2.5), se = sd / sqrt(5), t(4) = 2.776
        let want = 2.776 * (2.5f64 / 5.0).sqrt();
        assert!((e.ci95 - want).abs() < 1e-9, "{e:?}");
    }

    #[test]
    fn paired_ratio_divides_repetition_by_repetition() {
        let e = paired_ratio(&[2.0, 4.0], &[1.0, 4.0]);
        assert!((e.mean - 1.5).abs() < 1e-12);
        let d = paired_diff(&[2.0, 4.0], &[1.0, 4.0]);
        assert!((d.mean - 0.5).abs() < 1e-12);
    }
}
