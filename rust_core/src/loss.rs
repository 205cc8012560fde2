//! Losses on output first-spike times, and the class prediction (earliest output spike).
//!
//! Times come as a dense `(n_samples, n_out)` matrix with `+inf` for silent neurons. A silent
//! neuron enters the loss at the stand-in time `t_silent` (as the TTFS papers do, so nothing
//! becomes NaN) and gets zero gradient: without a spike there is no spike time to move; the
//! trainer's weight bumping is what wakes it up.

use crate::error::{param_err, shape_err, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Loss {
    /// DelGrad's shift-invariant MSE: `1/2 sum_{n != l} (t_n - t_l - delta)^2`. It depends only on
    /// differences to the label neuron's time, pushing every other neuron `delta` behind it.
    Mse { delta: f64 },
    /// Fast&Deep's cross-entropy on `softmax(-t / (xi tau_s))` plus the regulariser
    /// `alpha (exp(t_l / (beta tau_s)) - 1)` that keeps the label neuron early.
    CrossEntropy { xi: f64, alpha: f64, beta: f64 },
}

impl Loss {
    /// The loss named `kind` (`"mse"`, `"ce"` or `"cross_entropy"`) with its parameters (only
    /// the named loss's own are used).
    pub fn parse(kind: &str, delta: f64, xi: f64, alpha: f64, beta: f64) -> Result<Self> {
        match kind {
            "mse" => Ok(Self::Mse { delta }),
            "ce" | "cross_entropy" => Ok(Self::CrossEntropy { xi, alpha, beta }),
            _ => Err(param_err(format!("unknown loss '{kind}' (expected 'mse' or 'ce')"))),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LossOut {
    /// Mean loss over the batch.
    pub loss: f64,
    /// `dL/dt`, shape `(n_samples, n_out)`; 0 for silent neurons.
    pub grad: Vec<f64>,
    /// Earliest-spiking output neuron per sample (ties: lowest index), `-1` if all are silent.
    pub predictions: Vec<i64>,
}

pub fn predict(times: &[f64], n_out: usize) -> Vec<i64> {
    times
        .chunks_exact(n_out.max(1))
        .map(|row| {
            let mut best = -1i64;
            let mut tb = f64::INFINITY;
            for (j, &t) in row.iter().enumerate() {
                if t < tb {
                    tb = t;
                    best = j as i64;
                }
            }
            best
        })
        .collect()
}

pub fn evaluate(times: &[f64], n_out: usize, labels: &[i64], loss: Loss, tau_s: f64, t_silent: f64) -> Result<LossOut> {
    evaluate_part(times, n_out, labels, loss, tau_s, t_silent, labels.len())
}

/// [`evaluate`] for rows that are part of a batch of `batch_size` samples (a shard of it): the
/// loss is this part's sum divided by `batch_size`, and each row's gradient is the one the
/// whole batch gives it, whichever part the row is computed in.
pub fn evaluate_part(
    times: &[f64],
    n_out: usize,
    labels: &[i64],
    loss: Loss,
    tau_s: f64,
    t_silent: f64,
    batch_size: usize,
) -> Result<LossOut> {
    if batch_size < labels.len() {
        return Err(shape_err(format!(
            "loss: batch_size {batch_size} is smaller than the {} rows given",
            labels.len()
        )));
    }
    if n_out == 0 || times.len() != labels.len() * n_out {
        return Err(shape_err(format!(
            "loss: times have {} entries, expected n_samples * n_out = {} * {n_out}",
            times.len(),
            labels.len()
        )));
    }
    if let Some(k) = labels.iter().position(|&l| l < 0 || l as usize >= n_out) {
        return Err(shape_err(format!("loss: label {} at sample {k} is out of range (n_out = {n_out})", labels[k])));
    }
    if !t_silent.is_finite() {
        return Err(param_err(format!("loss: t_silent must be finite, got {t_silent}")));
    }
    match loss {
        Loss::Mse { delta } if !delta.is_finite() => return Err(param_err("loss: delta must be finite")),
        Loss::CrossEntropy { xi, beta, alpha } if !(xi > 0.0 && beta > 0.0 && alpha.is_finite()) => {
            return Err(param_err("loss: xi and beta must be > 0, alpha finite"))
        }
        _ => {}
    }
    let inv_n = 1.0 / batch_size.max(1) as f64;
    let mut grad = vec![0.0; times.len()];
    let mut total = 0.0;
    let mut t = vec![0.0; n_out];
    let mut g = vec![0.0; n_out];
    for (s, (row, &label)) in times.chunks_exact(n_out).zip(labels).enumerate() {
        let l = label as usize;
        for (tj, &x) in t.iter_mut().zip(row) {
            *tj = if x.is_finite() { x } else { t_silent };
        }
        g.iter_mut().for_each(|x| *x = 0.0);
        match loss {
            Loss::Mse { delta } => {
                for j in (0..n_out).filter(|&j| j != l) {
                    let e = t[j] - t[l] - delta;
                    total += 0.5 * e * e;
                    g[j] += e;
                    g[l] -= e;
                }
            }
            Loss::CrossEntropy { xi, alpha, beta } => {
                let scale = 1.0 / (xi * tau_s);
                let zmax = t.iter().map(|&x| -x * scale).fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = t.iter().map(|&x| (-x * scale - zmax).exp()).sum();
                let log_z = zmax + sum.ln();
                let reg = (t[l] / (beta * tau_s)).exp();
                total += log_z + t[l] * scale + alpha * (reg - 1.0);
                for j in 0..n_out {
                    let p = (-t[j] * scale - log_z).exp();
                    g[j] = -(p - if j == l { 1.0 } else { 0.0 }) * scale;
                }
                g[l] += alpha * reg / (beta * tau_s);
            }
        }
        for j in 0..n_out {
            if row[j].is_finite() {
                grad[s * n_out + j] = g[j] * inv_n;
            }
        }
    }
    Ok(LossOut { loss: total * inv_n, grad, predictions: predict(times, n_out) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd_check(loss: Loss) {
        let times = [1.2, 0.9, 1.7, 2.0, 1.1, 1.3];
        let labels = [1, 2];
        let out = evaluate(&times, 3, &labels, loss, 1.0, 10.0).unwrap();
        for k in 0..times.len() {
            let h = 1e-6;
            let mut p = times;
            p[k] += h;
            let mut m = times;
            m[k] -= h;
            let fd = (evaluate(&p, 3, &labels, loss, 1.0, 10.0).unwrap().loss
                - evaluate(&m, 3, &labels, loss, 1.0, 10.0).unwrap().loss)
                / (2.0 * h);
            assert!((fd - out.grad[k]).abs() < 1e-7, "{loss:?} entry {k}: {} vs {fd}", out.grad[k]);
        }
        assert_eq!(out.predictions, vec![1, 1]);
    }

    #[test]
    fn gradients_match_finite_differences() {
        fd_check(Loss::Mse { delta: 0.3 });
        fd_check(Loss::CrossEntropy { xi: 0.2, alpha: 0.005, beta: 2.7 });
    }

    #[test]
    fn a_part_of_a_batch_gives_each_row_the_whole_batch_gradient() {
        let times = [1.2, 0.9, 1.7, 2.0, 1.1, 1.3, 0.4, f64::INFINITY, 0.8];
        let labels = [1, 2, 0];
        for loss in [Loss::Mse { delta: 0.3 }, Loss::CrossEntropy { xi: 0.2, alpha: 0.005, beta: 2.7 }] {
            let whole = evaluate(&times, 3, &labels, loss, 1.0, 10.0).unwrap();
            let head = evaluate_part(&times[..3], 3, &labels[..1], loss, 1.0, 10.0, 3).unwrap();
            let tail = evaluate_part(&times[3..], 3, &labels[1..], loss, 1.0, 10.0, 3).unwrap();
            let parts: Vec<u64> = head.grad.iter().chain(&tail.grad).map(|g| g.to_bits()).collect();
            assert_eq!(parts, whole.grad.iter().map(|g| g.to_bits()).collect::<Vec<_>>(), "{loss:?}");
            assert!((head.loss + tail.loss - whole.loss).abs() < 1e-12);
        }
        assert!(evaluate_part(&times, 3, &labels, Loss::Mse { delta: 0.3 }, 1.0, 10.0, 2).is_err());
    }

    #[test]
    fn silent_neurons_use_stand_in_and_get_no_gradient() {
        let inf = f64::INFINITY;
        let out = evaluate(&[inf, 1.0, inf], 3, &[0], Loss::CrossEntropy { xi: 0.2, alpha: 0.0, beta: 1.0 }, 1.0, 5.0)
            .unwrap();
        assert!(out.loss.is_finite() && out.loss > 0.0);
        assert_eq!(out.grad[0], 0.0);
        assert_eq!(out.grad[2], 0.0);
        assert!(out.grad[1] < 0.0, "descent moves the wrong neuron later");
        assert_eq!(evaluate(&[inf, inf], 2, &[0], Loss::Mse { delta: 0.1 }, 1.0, 5.0).unwrap().predictions, vec![-1]);
    }
}
