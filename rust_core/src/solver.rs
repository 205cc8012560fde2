//! The spike-time solver: the first `s` in `[0, len]` at which the free membrane potential,
//! started from state `(v, i)` with `v < theta`, reaches `theta`.
//!
//! No time grid. The structure that makes this exact and cheap: on a free interval V has at
//! most one stationary point `s_c` and relaxes monotonically to 0 after it, so a crossing exists
//! iff `V(min(s_c, len)) >= theta`, and then it is the unique root on the increasing stretch
//! `[0, min(s_c, len)]`. That root is found in closed form where one exists (Lambert W for
//! `tau_m = tau_s`, a quadratic for `tau_m = 2 tau_s`) and by safeguarded Newton otherwise.

use crate::neuron::{Neuron, Solver};

/// First threshold crossing within `[0, len]` (`len` may be infinite), or `None`.
pub fn first_crossing(n: &Neuron, v: f64, i: f64, len: f64) -> Option<f64> {
    debug_assert!(v < n.theta);
    // With I <= 0 the potential can only approach 0 from below or decay: never theta > 0.
    if !(i > 0.0) || !peak_may_reach(n, v, i, len) {
        return None;
    }
    let peak = n.stationary_point(v, i)?;
    let end = peak.min(len);
    if n.voltage(v, i, end) < n.theta {
        return None;
    }
    Some(root_on_rise(n, v, i, end))
}

/// [`first_crossing`] on a finite interval whose end state `(v_end, i_end)` the caller has
/// already computed (the scan needs it for the next interval anyway). The slopes at both ends
/// decide most intervals without locating the stationary point: rising at the end means rising
/// throughout, falling at both ends means falling throughout.
#[inline]
pub fn crossing_in_interval(n: &Neuron, v: f64, i: f64, len: f64, v_end: f64, i_end: f64) -> Option<f64> {
    debug_assert!(v < n.theta);
    if !may_cross(n, v, i, len, v_end, i_end) {
        return None;
    }
    if i_end - v_end * n.inv_tau_m >= 0.0 {
        Some(root_on_rise(n, v, i, len))
    } else {
        first_crossing(n, v, i, len)
    }
}

/// Whether the interval may hold a crossing, from its end states alone (no `exp`, `ln`): `I > 0`,
/// and either rising at the end and at threshold there, or falling at the end but rising at the
/// start (a peak inside) with the peak bound allowing theta. `false` is certain: the scans skip
/// such intervals without calling the solver.
#[inline]
pub fn may_cross(n: &Neuron, v: f64, i: f64, len: f64, v_end: f64, i_end: f64) -> bool {
    if !(i > 0.0) {
        return false;
    }
    if i_end - v_end * n.inv_tau_m >= 0.0 {
        v_end >= n.theta
    } else {
        i - v * n.inv_tau_m > 0.0 && peak_may_reach(n, v, i, len)
    }
}

/// `V(s) = v e_m(s) + i K(s) <= max(v, 0) + i min(s, K_max)` (`K' <= 1`) reaches theta within
/// `[0, len]`: most peaks are ruled out here, before the log and exponentials that locate them.
#[inline]
fn peak_may_reach(n: &Neuron, v: f64, i: f64, len: f64) -> bool {
    v.max(0.0) + i * n.k_max.min(len) >= n.theta
}

/// The root of `V = theta` on `[0, end]`, where V rises from below theta to at least theta.
fn root_on_rise(n: &Neuron, v: f64, i: f64, end: f64) -> f64 {
    let s = match n.solver() {
        Solver::LambertW => lambert_root(n, v, i).map(|s| (s, false)),
        Solver::Quadratic => quadratic_root(n, v, i),
        Solver::Bracketed if n.power > 0 => power_root(n, v, i, end).map(|s| (s, false)),
        Solver::Bracketed => None,
    };
    match s {
        Some((s, true)) if (0.0..=end).contains(&s) => s,
        Some((s, _)) if (0.0..=end).contains(&s) => polish(n, v, i, s, end),
        // The closed form fell outside the bracket by rounding (a crossing at an interval end):
        // the bracketed solver settles it.
        _ => bracketed_root(n, v, i, end),
    }
}

/// `tau_m = tau_s = tau`: `(v + i s) e^{-s/tau} = theta`, i.e. with `y = s + v/i`,
/// `(-y/tau) e^{-y/tau} = z`, `z = -theta/(i tau) e^{-v/(i tau)}`. The rising side of the
/// PSP is the principal branch.
fn lambert_root(n: &Neuron, v: f64, i: f64) -> Option<f64> {
    let tau = n.tau_m;
    let log_mz = (n.theta / (i * tau)).ln() - v / (i * tau);
    if log_mz > -1.0 {
        return None;
    }
    let z = -log_mz.exp();
    let w = lambert_w::lambert_w0(z);
    if !w.is_finite() {
        return None;
    }
    Some((-tau * w - v / i).max(0.0))
}

/// `tau_m = 2 tau_s`: with `x = e^{-s/tau_m}`, `V = a x - b x^2` (`b = c i`, `a = v + b`,
/// `c = 2 tau_s`). The first crossing in time is the larger root in `x`. Also returns whether
/// the root is well conditioned, i.e. accurate as computed: `a > 0` rules out cancellation in
/// `a + sqrt(disc)`, and with `disc >= 1e-6 a^2` the rounding of `disc` moves `x` by at most
/// `~1e3` ulps, `s` by `~2e-13 tau_m`. Only near a tangency (`disc -> 0`) is the Newton polish
/// worth its two exponentials.
fn quadratic_root(n: &Neuron, v: f64, i: f64) -> Option<(f64, bool)> {
    let c = 2.0 * n.tau_s;
    let b = c * i;
    let a = v + b;
    let disc = a * a - 4.0 * b * n.theta;
    if !(a > 0.0) || disc < 0.0 {
        return None;
    }
    let x = ((a + disc.sqrt()) / (2.0 * b)).min(1.0);
    Some((-n.tau_m * x.ln(), disc >= 1e-6 * a * a))
}

/// `tau_m = k tau_s` for an integer `k >= 3`: with `x = e^{-s/tau_m}`, `e_s = x^k` and
/// `V = (v + c) x - c x^k` (`c = i / delta`), a polynomial. On the rising stretch `[0, end]`, `x`
/// runs over `[e^{-end/tau_m}, 1]` where `f = V - theta` is concave and decreasing, with
/// `f(1) = v - theta < 0`: Newton from `x = 1` stays right of the root (the tangent lies above
/// `f`) and decreases monotonically to it. No `exp` per iteration (the bracketed solver's two or
/// three); the caller polishes the result in `s`. `None` when it does not settle (near a
/// tangency, where convergence slows down), for the bracketed solver.
fn power_root(n: &Neuron, v: f64, i: f64, end: f64) -> Option<f64> {
    let k = n.power;
    let c = i * n.inv_delta;
    let a = v + c;
    let x_end = (-end * n.inv_tau_m).exp();
    let mut x = 1.0_f64;
    for _ in 0..60 {
        let xk1 = x.powi(k - 1);
        let (fx, dx) = (a * x - c * xk1 * x - n.theta, a - k as f64 * c * xk1);
        if !(dx < 0.0) {
            return None;
        }
        let next = x - fx / dx;
        // The iterates decrease; a step that does not is rounding: converged.
        if !(next < x) || x - next <= 4.0 * f64::EPSILON * x || fx == 0.0 {
            let x = next.min(x);
            // Rounding may leave the root a hair outside the stretch: the caller's range check.
            return (x >= x_end * (1.0 - 1e-12) && x > 0.0).then(|| -n.tau_m * x.ln());
        }
        x = next;
    }
    None
}

/// Safeguarded Newton on the increasing stretch `[0, end]` where `V(0) < theta <= V(end)`.
fn bracketed_root(n: &Neuron, v: f64, i: f64, end: f64) -> f64 {
    let f = |s: f64| n.voltage(v, i, s) - n.theta;
    let (mut lo, mut hi) = (0.0_f64, end);
    if f(hi) == 0.0 {
        return hi;
    }
    let mut s = hi;
    for _ in 0..200 {
        let fs = f(s);
        if fs == 0.0 {
            return s;
        }
        if fs < 0.0 {
            lo = s;
        } else {
            hi = s;
        }
        let d = n.voltage_ds(v, i, s);
        let mut next = if d > 0.0 { s - fs / d } else { f64::NAN };
        if !(next > lo && next < hi) {
            next = 0.5 * (lo + hi);
        }
        if (next - s).abs() <= 4.0 * f64::EPSILON * s.abs().max(1e-300) || hi - lo <= f64::EPSILON * hi.abs() {
            return next;
        }
        s = next;
    }
    0.5 * (lo + hi)
}

/// One Newton step on the exact voltage. The closed forms go through `ln`/`sqrt`/`W` and lose
/// a few ulps; a step that is a small correction is taken as is, anything larger (near a
/// tangency, where Newton is unreliable) is only kept if it improves the residual.
fn polish(n: &Neuron, v: f64, i: f64, s: f64, end: f64) -> f64 {
    let (vs, is) = n.evolve(v, i, s);
    let r = vs - n.theta;
    if r == 0.0 {
        return s;
    }
    let d = is - vs * n.inv_tau_m;
    if !(d > 0.0) {
        return s;
    }
    let step = r / d;
    let t = s - step;
    if !(0.0..=end).contains(&t) {
        return s;
    }
    if step.abs() <= 1e-9 * (1.0 + s.abs()) || (n.voltage(v, i, t) - n.theta).abs() < r.abs() {
        t
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The polynomial root for `tau_m = k tau_s` (k = 3, 4, 5) against the bracketed solver on the
    /// same rising stretches, including near-tangent ones.
    #[test]
    fn power_root_matches_the_bracketed_solver() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        let (mut checked, mut direct_hits) = (0, 0);
        for k in [3.0, 4.0, 5.0] {
            let n = Neuron::new(k * 2.0, 2.0, 1.0).unwrap();
            assert!(n.power == k as i32);
            for _ in 0..2000 {
                let (v, i) = (next() * 1.6 - 0.6, next() * 3.0);
                if !(v < n.theta && i > 0.0) {
                    continue;
                }
                let Some(peak) = n.stationary_point(v, i) else { continue };
                if n.voltage(v, i, peak) < n.theta {
                    continue;
                }
                let end = peak * (0.5 + 0.5 * next());
                let end = if n.voltage(v, i, end) >= n.theta { end } else { peak };
                let got = root_on_rise(&n, v, i, end);
                let want = bracketed_root(&n, v, i, end);
                if let Some(direct) = power_root(&n, v, i, end) {
                    // Before the polish in `s`.
                    assert!((direct - want).abs() <= 1e-9 * (1.0 + want), "k {k}: unpolished {direct} vs {want}");
                    direct_hits += 1;
                }
                assert!((got - want).abs() <= 1e-11 * (1.0 + want), "k {k} v {v} i {i} end {end}: {got} vs {want}");
                assert!((n.voltage(v, i, got) - n.theta).abs() < 1e-12, "k {k}: residual at {got}");
                checked += 1;
            }
        }
        assert!(checked > 1000, "only {checked} cases");
        assert!(direct_hits * 10 > checked * 9, "the polynomial root settled in {direct_hits} of {checked}");
    }
}
