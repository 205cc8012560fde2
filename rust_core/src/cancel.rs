//! Cooperative cancellation of long core calls.
//!
//! A [`Cancel`] token is checked between samples; once set, a batch call stops and returns
//! [`Error::Interrupted`]. Whoever started the call may also give a *poll* hook: the batch
//! driver calls it, only on the calling thread and about every [`POLL_INTERVAL`], while the
//! call runs, and cancels when it returns `true`. That is how the Python bindings let Ctrl-C
//! through (the hook takes the GIL and checks for signals, which only the main thread can do).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How often the poll hook is called while a call runs.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// A cancellation flag, optionally with a poll hook (see the module documentation).
pub struct Cancel<'a> {
    flag: AtomicBool,
    poll: Option<&'a (dyn Fn() -> bool + Sync)>,
}

impl Default for Cancel<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> Cancel<'a> {
    /// A token that is only cancelled by [`Cancel::cancel`].
    pub fn new() -> Self {
        Self { flag: AtomicBool::new(false), poll: None }
    }

    /// A token that is also cancelled when `poll` returns `true`.
    pub fn with_poll(poll: &'a (dyn Fn() -> bool + Sync)) -> Self {
        Self { flag: AtomicBool::new(false), poll: Some(poll) }
    }

    pub fn cancel(&self) {
        self.flag.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// `Err(Interrupted)` once cancelled.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(Error::Interrupted)
        } else {
            Ok(())
        }
    }

    pub(crate) fn has_poll(&self) -> bool {
        self.poll.is_some()
    }

    /// Runs the poll hook (calling thread only) and cancels if it asks to.
    pub(crate) fn poll(&self) {
        if let Some(poll) = self.poll {
            if poll() {
                self.cancel();
            }
        }
    }
}

/// The per-sample check of one chunk of work: reads the flag, and on the calling thread also
/// runs the poll hook when [`POLL_INTERVAL`] has passed.
pub struct Checkpoint<'c, 'a> {
    cancel: &'c Cancel<'a>,
    last_poll: Option<Instant>,
}

impl<'c, 'a> Checkpoint<'c, 'a> {
    /// For work on a pool thread: the flag only.
    pub(crate) fn worker(cancel: &'c Cancel<'a>) -> Self {
        Self { cancel, last_poll: None }
    }

    /// For work on the calling thread: the flag and, if there is one, the poll hook.
    pub(crate) fn caller(cancel: &'c Cancel<'a>) -> Self {
        Self { cancel, last_poll: cancel.has_poll().then(Instant::now) }
    }

    #[inline]
    pub fn check(&mut self) -> Result<()> {
        if let Some(last) = self.last_poll {
            if last.elapsed() >= POLL_INTERVAL {
                self.cancel.poll();
                self.last_poll = Some(Instant::now());
            }
        }
        self.cancel.check()
    }
}
