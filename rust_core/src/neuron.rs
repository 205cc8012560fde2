//! The current-based LIF neuron of DESIGN.md (unit capacitance):
//!
//! ```text
//! dV/dt = -V / tau_m + I        dI/dt = -I / tau_s
//! ```
//!
//! Between input arrivals the state `(V, I)` evolves in closed form; an arrival adds its weight to
//! `I`. Everything here is written in terms of that two-number state so that the same code serves
//! the TTFS scan, the multi-spike simulation and the gradient formulas.

use crate::error::{param_err, Result};

/// How the spike-time equation `V(s) = theta` is solved on one inter-event interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Solver {
    /// `tau_m == tau_s`: principal-branch Lambert W.
    LambertW,
    /// `tau_m == 2 tau_s`: the quadratic in `exp(-s / tau_m)`.
    Quadratic,
    /// Any other ratio: bracketed, safeguarded Newton.
    Bracketed,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neuron {
    pub tau_m: f64,
    pub tau_s: f64,
    pub theta: f64,
    // 1/tau_s - 1/tau_m, the rate of the kernel's expm1 form (0 for equal taus).
    delta: f64,
    solver: Solver,
}

impl Neuron {
    /// A time-to-first-spike neuron: no reset, only the first threshold crossing exists.
    pub fn new(tau_m: f64, tau_s: f64, theta: f64) -> Result<Self> {
        for (name, v) in [("tau_m", tau_m), ("tau_s", tau_s), ("theta", theta)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(param_err(format!("neuron: {name} must be finite and > 0, got {v}")));
            }
        }
        // Exact comparisons on purpose: a ratio that is only close to 1 or 2 is handled by the
        // bracketed solver, which is exact for every ratio.
        let solver = if tau_m == tau_s {
            Solver::LambertW
        } else if tau_m == 2.0 * tau_s {
            Solver::Quadratic
        } else {
            Solver::Bracketed
        };
        let delta = if tau_m == tau_s { 0.0 } else { 1.0 / tau_s - 1.0 / tau_m };
        Ok(Self { tau_m, tau_s, theta, delta, solver })
    }

    pub fn solver(&self) -> Solver {
        self.solver
    }

    /// Membrane response `K(s)` to a unit current jump `s` after it (0 for `s <= 0`).
    ///
    /// Written as `exp(-s/tau_s) * expm1(s * delta) / delta`, which equals the textbook
    /// `tau_m tau_s / (tau_m - tau_s) (exp(-s/tau_m) - exp(-s/tau_s))` but stays accurate when
    /// the two time constants are close, and becomes `s exp(-s/tau)` at `delta = 0`.
    #[inline]
    pub fn kernel(&self, s: f64) -> f64 {
        if s <= 0.0 {
            return 0.0;
        }
        let e = (-s / self.tau_s).exp();
        if self.delta == 0.0 {
            s * e
        } else {
            e * (s * self.delta).exp_m1() / self.delta
        }
    }

    /// `dK/ds`, from the ODE itself: `K' = -K / tau_m + exp(-s / tau_s)`.
    #[inline]
    pub fn kernel_ds(&self, s: f64) -> f64 {
        if s <= 0.0 {
            return 0.0;
        }
        -self.kernel(s) / self.tau_m + (-s / self.tau_s).exp()
    }

    /// `(V, I)` after `s >= 0` of free evolution from `(v, i)`.
    #[inline]
    pub fn evolve(&self, v: f64, i: f64, s: f64) -> (f64, f64) {
        if s == 0.0 {
            return (v, i);
        }
        (v * (-s / self.tau_m).exp() + i * self.kernel(s), i * (-s / self.tau_s).exp())
    }

    /// `V` after `s` of free evolution.
    #[inline]
    pub fn voltage(&self, v: f64, i: f64, s: f64) -> f64 {
        v * (-s / self.tau_m).exp() + i * self.kernel(s)
    }

    /// `dV/ds` after `s` of free evolution.
    #[inline]
    pub fn voltage_ds(&self, v: f64, i: f64, s: f64) -> f64 {
        let vs = self.voltage(v, i, s);
        -vs / self.tau_m + i * (-s / self.tau_s).exp()
    }

    /// The time `s > 0` at which the free voltage has its only stationary point, if any.
    ///
    /// `V(s) = v e^{-s/tau_m} + i K(s)` is a sum of two exponentials, so it has at most one
    /// stationary point; before it V is monotone, after it V relaxes monotonically to 0.
    pub fn stationary_point(&self, v: f64, i: f64) -> Option<f64> {
        if i == 0.0 {
            return None;
        }
        if self.delta == 0.0 {
            // V' = (i - (v + i s) / tau) e^{-s/tau} = 0
            let s = self.tau_m - v / i;
            return (s > 0.0).then_some(s);
        }
        // V = (v + c i) e^{-s/tau_m} - c i e^{-s/tau_s}, c = 1/delta.
        // V' = 0  <=>  e^{s delta} = (c i / tau_s) / ((v + c i) / tau_m)
        let c = 1.0 / self.delta;
        let num = c * i / self.tau_s;
        let den = (v + c * i) / self.tau_m;
        let r = num / den;
        if !(r > 0.0) || !r.is_finite() {
            return None;
        }
        let s = r.ln() / self.delta;
        (s > 0.0 && s.is_finite()).then_some(s)
    }
}
