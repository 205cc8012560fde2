//! One error type for the whole core. Each variant maps to one Python exception class in the
//! bindings, so the split below is the split users can catch on.

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum Error {
    /// A spike table is malformed: missing/mistyped column, null, NaN, id out of range.
    #[error("{0}")]
    Spikes(String),
    /// Arrays whose shapes do not fit together.
    #[error("{0}")]
    Shape(String),
    /// A parameter value that the model cannot use (non-finite weight, negative delay, tau <= 0).
    #[error("{0}")]
    Parameter(String),
    /// The run was interrupted from outside (Ctrl-C in Python).
    #[error("interrupted")]
    Interrupted,
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn spikes_err(msg: impl Into<String>) -> Error {
    Error::Spikes(msg.into())
}
pub(crate) fn shape_err(msg: impl Into<String>) -> Error {
    Error::Shape(msg.into())
}
pub(crate) fn param_err(msg: impl Into<String>) -> Error {
    Error::Parameter(msg.into())
}
