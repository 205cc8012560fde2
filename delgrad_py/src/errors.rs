//! The Python exception classes of the core's errors, and the one way the bindings run a core
//! call: GIL released, Ctrl-C honoured, errors converted.

use std::sync::{Mutex, PoisonError};

use delgrad_core::{self as core, Cancel};
use pyo3::create_exception;
use pyo3::exceptions::{PyKeyboardInterrupt, PyValueError};
use pyo3::prelude::*;

create_exception!(
    delgrad,
    SpikeError,
    PyValueError,
    "A spike table is malformed (column, null, NaN, id out of range)."
);
create_exception!(delgrad, ShapeError, PyValueError, "Arrays whose shapes do not fit together.");
create_exception!(delgrad, ParameterError, PyValueError, "A parameter value the model cannot use.");
create_exception!(
    delgrad,
    FrameError,
    PyValueError,
    "An Arrow IPC frame that cannot be read as a spike table; `code` is the hardware protocol's \
     error code (bad_frame, bad_schema, too_large)."
);

/// The Python exception of a core error (each variant has its class).
pub fn to_py(e: core::Error) -> PyErr {
    match e {
        core::Error::Frame { code, message } => {
            let err = FrameError::new_err(message);
            Python::attach(|py| err.value(py).setattr("code", code.as_str()).map(|_| err)).unwrap_or_else(|e| e)
        }
        core::Error::Spikes(m) => SpikeError::new_err(m),
        core::Error::Shape(m) => ShapeError::new_err(m),
        core::Error::Parameter(m) => ParameterError::new_err(m),
        core::Error::Interrupted => PyKeyboardInterrupt::new_err("interrupted"),
    }
}

/// Runs the core call `f` with the GIL released. While it runs, the calling thread takes the
/// GIL back about every 50 ms to run Python's signal handlers (`check_signals`, which only the
/// main thread can do); when one raises (Ctrl-C: `KeyboardInterrupt`), `f`'s token is
/// cancelled, the core stops at its next sample and that exception is returned. Core errors
/// become their Python classes.
pub fn run<T: Send>(py: Python<'_>, f: impl FnOnce(&Cancel) -> core::Result<T> + Send) -> PyResult<T> {
    let raised: Mutex<Option<PyErr>> = Mutex::new(None);
    let poll = || {
        Python::attach(|py| match py.check_signals() {
            Ok(()) => false,
            Err(e) => {
                *raised.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
                true
            }
        })
    };
    let cancel = Cancel::with_poll(&poll);
    let result = py.detach(|| f(&cancel));
    // A handler that raised has consumed its signal: its exception must reach the caller even if
    // the call finished first.
    if let Some(e) = raised.into_inner().unwrap_or_else(PoisonError::into_inner) {
        return Err(e);
    }
    result.map_err(to_py)
}

/// A core result without a long computation behind it: only the error conversion.
pub fn check<T>(r: core::Result<T>) -> PyResult<T> {
    r.map_err(to_py)
}
