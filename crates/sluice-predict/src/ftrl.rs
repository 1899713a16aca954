//! [`Ftrl`]: FTRL-Proximal logistic regression over hashed features (McMahan et al., "Ad Click
//! Prediction: a View from the Trenches", KDD 2013, algorithm 1), per-coordinate learning rates
//! and L1/L2 regularisation. Weights are not stored: each is computed from `z` and `n` when used.

use serde::{Deserialize, Serialize};

/// A sparse example: (hashed index, value).
pub type Features = Vec<(u32, f32)>;

/// FTRL hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FtrlParams {
    /// log2 of the weight table size.
    pub bits: u32,
    /// Learning rate scale.
    pub alpha: f64,
    /// Learning rate smoothing.
    pub beta: f64,
    /// L1 regularisation (sparsity).
    pub l1: f64,
    /// L2 regularisation.
    pub l2: f64,
}

/// The model: per coordinate, `z` (the adjusted gradient sum) and `n` (the squared gradient
/// sum).
#[derive(Clone, Debug, PartialEq)]
pub struct Ftrl {
    pub(crate) params: FtrlParams,
    pub(crate) z: Vec<f32>,
    pub(crate) n: Vec<f32>,
}

/// Margins beyond this are clipped before the sigmoid.
const MAX_MARGIN: f64 = 35.0;

/// The logistic function, clipped.
pub fn sigmoid(margin: f64) -> f64 {
    1.0 / (1.0 + (-margin.clamp(-MAX_MARGIN, MAX_MARGIN)).exp())
}

/// Log-loss of predicting `p` for label `y`, with `p` clipped away from 0 and 1.
pub fn log_loss(p: f64, y: bool) -> f64 {
    let p = p.clamp(1e-15, 1.0 - 1e-15);
    if y { -p.ln() } else { -(1.0 - p).ln() }
}

impl Ftrl {
    /// A zero model.
    pub fn new(params: FtrlParams) -> Self {
        let size = 1usize << params.bits;
        Self {
            params,
            z: vec![0.0; size],
            n: vec![0.0; size],
        }
    }

    /// The index mask.
    pub fn mask(&self) -> u32 {
        ((1u64 << self.params.bits) - 1) as u32
    }

    fn weight(&self, i: usize) -> f64 {
        let z = f64::from(self.z[i]);
        if z.abs() <= self.params.l1 {
            return 0.0;
        }
        let n = f64::from(self.n[i]);
        -(z - z.signum() * self.params.l1)
            / ((self.params.beta + n.sqrt()) / self.params.alpha + self.params.l2)
    }

    /// The predicted probability of a positive label.
    pub fn predict(&self, x: &[(u32, f32)]) -> f64 {
        let mask = self.mask();
        let margin: f64 = x
            .iter()
            .map(|&(i, v)| self.weight((i & mask) as usize) * f64::from(v))
            .sum();
        sigmoid(margin)
    }

    /// One update with label `y`; returns the prediction made before it.
    pub fn learn(&mut self, x: &[(u32, f32)], y: bool) -> f64 {
        let p = self.predict(x);
        let mask = self.mask();
        let g_scale = p - if y { 1.0 } else { 0.0 };
        for &(i, v) in x {
            let i = (i & mask) as usize;
            let w = self.weight(i);
            let g = g_scale * f64::from(v);
            let n = f64::from(self.n[i]);
            let sigma = ((n + g * g).sqrt() - n.sqrt()) / self.params.alpha;
            self.z[i] += (g - sigma * w) as f32;
            self.n[i] += (g * g) as f32;
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_a_separable_feature() {
        let mut m = Ftrl::new(FtrlParams {
            bits: 8,
            alpha: 0.5,
            beta: 1.0,
            l1: 0.0,
            l2: 0.0,
        });
        for i in 0..2000 {
            let y = i % 3 == 0;
            let x = vec![(0, 1.0), (if y { 1 } else { 2 }, 1.0)];
            m.learn(&x, y);
        }
        assert!(m.predict(&[(0, 1.0), (1, 1.0)]) > 0.9);
        assert!(m.predict(&[(0, 1.0), (2, 1.0)]) < 0.1);
    }
}
