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
    // Reciprocals: divisions in the inner loops cost more than the exponentials' neighbours.
    pub(crate) inv_tau_m: f64,
    pub(crate) inv_tau_s: f64,
    pub(crate) inv_delta: f64,
    // An upper bound of the PSP kernel, max_s K(s) (rounded up): V(s) <= max(v, 0) + i K_max
    // rules most intervals out without locating their peak (a log and two exps).
    pub(crate) k_max: f64,
    solver: Solver,
    /// `k` when `tau_m = k tau_s` exactly for an integer `3 <= k <= 8` (the bracketed solver then
    /// works on a polynomial), else 0.
    pub(crate) power: i32,
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
        let inv_delta = if delta == 0.0 { 0.0 } else { 1.0 / delta };
        let mut n = Self {
            tau_m,
            tau_s,
            theta,
            delta,
            inv_tau_m: 1.0 / tau_m,
            inv_tau_s: 1.0 / tau_s,
            inv_delta,
            k_max: f64::INFINITY,
            solver,
            power: (3..=8).find(|&k| tau_m == k as f64 * tau_s).unwrap_or(0),
        };
        // K peaks where K' = e_s - K/tau_m = 0: at tau for equal taus, else at ln(tau_m/tau_s)/delta.
        n.k_max = n.kernel(n.kernel_peak()) * (1.0 + 1e-12);
        Ok(n)
    }

    pub fn solver(&self) -> Solver {
        self.solver
    }

    /// `(exp(-s/tau_m), exp(-s/tau_s))` with as few transcendental calls as the ratio allows:
    /// these exponentials are most of the cost of a pass.
    #[inline]
    pub fn decays(&self, s: f64) -> (f64, f64) {
        match self.solver {
            Solver::LambertW => {
                let e = (-s * self.inv_tau_s).exp();
                (e, e)
            }
            Solver::Quadratic => {
                let x = (-s * self.inv_tau_m).exp();
                (x, x * x)
            }
            Solver::Bracketed => ((-s * self.inv_tau_m).exp(), (-s * self.inv_tau_s).exp()),
        }
    }

    /// `K(s)` from the decays at `s`.
    ///
    /// `K = (e^{-s/tau_m} - e^{-s/tau_s}) / delta` with `delta = 1/tau_s - 1/tau_m`, which is the
    /// textbook `tau_m tau_s / (tau_m - tau_s) (...)`; for a general ratio and short `s` the
    /// difference is taken as `e^{-s/tau_s} expm1(s delta)` so that it keeps its relative
    /// accuracy when the time constants are close. Equal taus: `s e^{-s/tau}`.
    #[inline]
    pub fn kernel_from(&self, s: f64, em: f64, es: f64) -> f64 {
        match self.solver {
            Solver::LambertW => s * es,
            Solver::Quadratic => (em - es) * self.inv_delta,
            Solver::Bracketed => {
                let x = s * self.delta;
                if x.abs() < 0.5 {
                    es * x.exp_m1() * self.inv_delta
                } else {
                    (em - es) * self.inv_delta
                }
            }
        }
    }

    /// `K(s)` from the decays as `(e_m - e_s) / delta` without the `expm1` refinement of
    /// [`Neuron::kernel_from`] (for the multi-spike scans, whose decays come from products of
    /// per-spike and per-synapse factors). The cancellation for short `s` costs absolute, not
    /// relative, accuracy (about `ulp / |delta|`), which is negligible against the state it is added
    /// to; for time constants within 10 % of each other the refined form is used.
    #[inline]
    pub fn kernel_from_fast(&self, s: f64, em: f64, es: f64) -> f64 {
        match self.solver {
            Solver::LambertW => s * es,
            Solver::Quadratic => (em - es) * self.inv_delta,
            Solver::Bracketed => {
                if (self.delta * self.tau_s).abs() < 0.1 {
                    self.kernel_from(s, em, es)
                } else {
                    (em - es) * self.inv_delta
                }
            }
        }
    }

    /// Whether [`Neuron::kernel_from_fast`] is `(e_m - e_s) / delta`: then a sum of kernels over
    /// many arrivals factors into two sums of per-arrival factors (the binned scan's premise).
    pub(crate) fn kernel_is_difference(&self) -> bool {
        match self.solver {
            Solver::LambertW => false,
            Solver::Quadratic => true,
            Solver::Bracketed => (self.delta * self.tau_s).abs() >= 0.1,
        }
    }

    /// Where `K` peaks (it rises before, falls after): `tau` for equal taus, else
    /// `ln(tau_m / tau_s) / delta`.
    pub(crate) fn kernel_peak(&self) -> f64 {
        if self.delta == 0.0 {
            self.tau_m
        } else {
            (self.tau_m / self.tau_s).ln() / self.delta
        }
    }

    /// Membrane response `K(s)` to a unit current jump `s` after it (0 for `s <= 0`).
    #[inline]
    pub fn kernel(&self, s: f64) -> f64 {
        if s <= 0.0 {
            return 0.0;
        }
        let (em, es) = self.decays(s);
        self.kernel_from(s, em, es)
    }

    /// `dK/ds`, from the ODE itself: `K' = -K / tau_m + exp(-s / tau_s)`.
    #[inline]
    pub fn kernel_ds(&self, s: f64) -> f64 {
        if s <= 0.0 {
            return 0.0;
        }
        let (em, es) = self.decays(s);
        -self.kernel_from(s, em, es) * self.inv_tau_m + es
    }

    /// `(V, I)` after `s >= 0` of free evolution from `(v, i)`.
    #[inline]
    pub fn evolve(&self, v: f64, i: f64, s: f64) -> (f64, f64) {
        if s <= 0.0 {
            return (v, i);
        }
        let (em, es) = self.decays(s);
        (v * em + i * self.kernel_from(s, em, es), i * es)
    }

    /// [`Neuron::evolve`] with the decays `(exp(-s/tau_m), exp(-s/tau_s))` supplied.
    #[inline]
    pub fn evolve_with(&self, v: f64, i: f64, s: f64, em: f64, es: f64) -> (f64, f64) {
        if s <= 0.0 {
            return (v, i);
        }
        (v * em + i * self.kernel_from(s, em, es), i * es)
    }

    /// Whether both decays are powers of the single factor `exp(-s/tau_m)` (ratio 1 or 2), so
    /// that they can be built from per-spike and per-synapse factors without calling `exp`.
    pub fn single_rate(&self) -> bool {
        self.solver != Solver::Bracketed
    }

    /// `exp(-s/tau_s)` from `em = exp(-s/tau_m)` for a [`Neuron::single_rate`] neuron.
    #[inline]
    pub fn es_from_em(&self, em: f64) -> f64 {
        if self.solver == Solver::Quadratic {
            em * em
        } else {
            em
        }
    }

    /// `V` after `s >= 0` of free evolution.
    #[inline]
    pub fn voltage(&self, v: f64, i: f64, s: f64) -> f64 {
        self.evolve(v, i, s).0
    }

    /// `dV/ds` after `s >= 0` of free evolution.
    #[inline]
    pub fn voltage_ds(&self, v: f64, i: f64, s: f64) -> f64 {
        let (vs, is) = self.evolve(v, i, s);
        -vs * self.inv_tau_m + is
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
