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
    /// An Arrow IPC frame that cannot be read as a spike table: not a stream, truncated, the
    /// wrong columns, or more rows than allowed. `code` says which (see [`FrameCode`]).
    #[error("{message}")]
    Frame { code: FrameCode, message: String },
    /// The run was interrupted from outside (Ctrl-C in Python).
    #[error("interrupted")]
    Interrupted,
}

/// Why a frame was refused, in the words of the hardware protocol's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameCode {
    /// Not a readable Arrow IPC stream (garbage, truncated, corrupt).
    BadFrame,
    /// A stream with the wrong columns or column types.
    BadSchema,
    /// More rows than the reader was allowed to accept.
    TooLarge,
}

impl FrameCode {
    /// The protocol's spelling (`bad_frame`, `bad_schema`, `too_large`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadFrame => "bad_frame",
            Self::BadSchema => "bad_schema",
            Self::TooLarge => "too_large",
        }
    }
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
pub(crate) fn frame_err(code: FrameCode, msg: impl Into<String>) -> Error {
    Error::Frame { code, message: msg.into() }
}
