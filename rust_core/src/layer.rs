//! Parameters of one fully connected layer: weights `(n_out, n_in)` row-major, and the
//! transmission delays in one of DelGrad's three parametrisations. All three reduce to one
//! effective delay per synapse, `d_ji`; their gradients are the synaptic gradient summed over
//! the synapses that share the parameter.

use crate::error::{param_err, shape_err, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DelayKind {
    /// No delays (all zero).
    None,
    /// One delay per synapse, shape `(n_out, n_in)`.
    Synaptic,
    /// One delay per source neuron, shape `(n_in,)` (what BrainScaleS-2 realises).
    Axonal,
    /// One delay per target neuron, shape `(n_out,)`.
    Dendritic,
}

impl DelayKind {
    /// Every kind, in the order their names are listed to users.
    pub const ALL: [Self; 4] = [Self::None, Self::Synaptic, Self::Axonal, Self::Dendritic];

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Self::None),
            "synaptic" => Ok(Self::Synaptic),
            "axonal" => Ok(Self::Axonal),
            "dendritic" => Ok(Self::Dendritic),
            _ => Err(param_err(format!("unknown delay kind '{s}' (expected none, synaptic, axonal or dendritic)"))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Synaptic => "synaptic",
            Self::Axonal => "axonal",
            Self::Dendritic => "dendritic",
        }
    }
    /// Number of delay parameters for a layer of this shape.
    pub fn len(self, n_out: usize, n_in: usize) -> usize {
        self.shape(n_out, n_in).iter().product()
    }

    /// The shape of the delay array of a layer with weights `(n_out, n_in)`: synaptic
    /// `(n_out, n_in)`, axonal `(n_in,)`, dendritic `(n_out,)`, none `(0,)`.
    pub fn shape(self, n_out: usize, n_in: usize) -> Vec<usize> {
        match self {
            Self::None => vec![0],
            Self::Synaptic => vec![n_out, n_in],
            Self::Axonal => vec![n_in],
            Self::Dendritic => vec![n_out],
        }
    }

    /// The shape in words, for messages.
    fn shape_words(self, n_out: usize, n_in: usize) -> String {
        match self {
            Self::None => "no entries".to_string(),
            Self::Synaptic => format!("shape (n_out, n_in) = ({n_out}, {n_in})"),
            Self::Axonal => format!("shape (n_in,) = ({n_in},)"),
            Self::Dendritic => format!("shape (n_out,) = ({n_out},)"),
        }
    }
}

/// A layer's parameters, borrowed (from numpy arrays in the bindings, without a copy).
#[derive(Debug, Clone, Copy)]
pub struct LayerRef<'a> {
    pub n_in: usize,
    pub n_out: usize,
    pub weights: &'a [f64],
    pub kind: DelayKind,
    pub delays: &'a [f64],
}

impl<'a> LayerRef<'a> {
    /// Validates shapes and values; `what` names the layer in messages.
    pub fn new(
        n_out: usize,
        n_in: usize,
        weights: &'a [f64],
        kind: DelayKind,
        delays: &'a [f64],
        what: &str,
    ) -> Result<Self> {
        if weights.len() != n_out * n_in {
            return Err(shape_err(format!(
                "{what}: weights have {} entries, expected (n_out, n_in) = ({n_out}, {n_in})",
                weights.len()
            )));
        }
        let want = kind.len(n_out, n_in);
        if delays.len() != want {
            return Err(shape_err(format!(
                "{what}: {} delays have {} entries, expected {}",
                kind.name(),
                delays.len(),
                kind.shape_words(n_out, n_in)
            )));
        }
        if let Some(k) = weights.iter().position(|w| !w.is_finite()) {
            return Err(param_err(format!(
                "{what}: weight [{}, {}] is {} (must be finite)",
                k / n_in.max(1),
                k % n_in.max(1),
                weights[k]
            )));
        }
        if let Some(k) = delays.iter().position(|d| !(d.is_finite() && *d >= 0.0)) {
            return Err(param_err(format!(
                "{what}: {} delay at index {k} is {} (delays must be finite and >= 0)",
                kind.name(),
                delays[k]
            )));
        }
        Ok(Self { n_in, n_out, weights, kind, delays })
    }

    /// [`LayerRef::new`] from arrays with their shapes (as numpy hands them over): weights
    /// must be 2-d, and delays (when given and the kind has any) must have the kind's number
    /// of dimensions, a synaptic array the weights' shape.
    pub fn from_arrays(
        weights_shape: &[usize],
        weights: &'a [f64],
        kind: DelayKind,
        delays_shape: Option<&[usize]>,
        delays: &'a [f64],
        what: &str,
    ) -> Result<Self> {
        let &[n_out, n_in] = weights_shape else {
            return Err(shape_err(format!("{what}: weights must be 2-dimensional, got shape {weights_shape:?}")));
        };
        if let (Some(shape), false) = (delays_shape, kind == DelayKind::None) {
            let want = kind.shape(n_out, n_in);
            if shape.len() != want.len() {
                return Err(shape_err(format!(
                    "{what}: {} delays must be {}-dimensional, got shape {shape:?}",
                    kind.name(),
                    want.len()
                )));
            }
            if kind == DelayKind::Synaptic && shape != want {
                return Err(shape_err(format!(
                    "{what}: synaptic delays have shape {shape:?}, weights have {weights_shape:?}"
                )));
            }
        }
        Self::new(n_out, n_in, weights, kind, delays, what)
    }

    #[inline]
    pub fn weight(&self, j: usize, i: usize) -> f64 {
        self.weights[j * self.n_in + i]
    }

    /// Effective delay of synapse `i -> j`.
    #[inline]
    pub fn delay(&self, j: usize, i: usize) -> f64 {
        match self.kind {
            DelayKind::None => 0.0,
            DelayKind::Synaptic => self.delays[j * self.n_in + i],
            DelayKind::Axonal => self.delays[i],
            DelayKind::Dendritic => self.delays[j],
        }
    }

    /// Sums a per-synapse delay gradient into the layer's own parametrisation.
    pub fn reduce_delay_grad(&self, syn: &[f64]) -> Vec<f64> {
        match self.kind {
            DelayKind::None => Vec::new(),
            DelayKind::Synaptic => syn.to_vec(),
            DelayKind::Axonal => {
                let mut g = vec![0.0; self.n_in];
                for row in syn.chunks_exact(self.n_in) {
                    for (gi, x) in g.iter_mut().zip(row) {
                        *gi += x;
                    }
                }
                g
            }
            DelayKind::Dendritic => syn.chunks_exact(self.n_in.max(1)).map(|r| r.iter().sum()).collect(),
        }
    }
}

/// Gradient of a loss with respect to one layer's parameters, shaped like them.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerGrad {
    pub weights: Vec<f64>,
    pub delays: Vec<f64>,
}
