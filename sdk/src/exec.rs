//! Runs async hooks without an executor thread: a hook's future is polled when
//! the hook is called and again each time the host delivers the result of a
//! call it awaits. Wasm is single-threaded, so the state is thread-local.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::http::{CallError, Response};

thread_local! {
    /// Results of finished calls that their futures have not taken yet.
    static RESULTS: RefCell<Vec<(u32, Result<Response, CallError>)>> = const { RefCell::new(Vec::new()) };
}

/// Hands a call's result to the future awaiting it.
pub(crate) fn deliver(call: u32, result: Result<Response, CallError>) {
    RESULTS.with(|r| r.borrow_mut().push((call, result)));
}

/// Takes a delivered result.
pub(crate) fn take(call: u32) -> Option<Result<Response, CallError>> {
    RESULTS.with(|r| {
        let mut r = r.borrow_mut();
        let i = r.iter().position(|(id, _)| *id == call)?;
        Some(r.swap_remove(i).1)
    })
}

/// A boxed hook future; it gives back the filter it borrowed when done.
pub(crate) type Task<F, T> = Pin<Box<dyn Future<Output = (F, T)>>>;

/// Polls a hook once. Nothing needs waking: the host calls in again when a
/// call completes.
pub(crate) fn poll<F, T>(task: &mut Task<F, T>) -> Poll<(F, T)> {
    task.as_mut().poll(&mut Context::from_waker(Waker::noop()))
}

/// The filter of a stream, or the hook that has it while it awaits a call.
pub(crate) enum Slot<F, T> {
    Idle(F),
    Busy(Task<F, T>),
    /// Only while a hook runs, or after a filter panicked.
    Empty,
}

impl<F: 'static, T: 'static> Slot<F, T> {
    /// Starts a hook: `hook` gets the filter and returns a future that gives it back.
    pub(crate) fn start<Fut>(&mut self, hook: impl FnOnce(F) -> Fut) -> Option<T>
    where
        Fut: Future<Output = (F, T)> + 'static,
    {
        let Slot::Idle(f) = std::mem::replace(self, Slot::Empty) else {
            // A hook called while another awaits: the host never does this.
            panic!("legate-sdk: a hook was called while another one is pending");
        };
        self.run(Box::pin(hook(f)))
    }

    /// Polls the pending hook again after a call result was delivered.
    pub(crate) fn resume(&mut self) -> Option<T> {
        match std::mem::replace(self, Slot::Empty) {
            Slot::Busy(task) => self.run(task),
            other => {
                *self = other;
                None
            }
        }
    }

    fn run(&mut self, mut task: Task<F, T>) -> Option<T> {
        match poll(&mut task) {
            Poll::Ready((f, out)) => {
                *self = Slot::Idle(f);
                Some(out)
            }
            Poll::Pending => {
                *self = Slot::Busy(task);
                None
            }
        }
    }

    /// The filter, when no hook has it.
    pub(crate) fn idle(&mut self) -> Option<&mut F> {
        match self {
            Slot::Idle(f) => Some(f),
            _ => None,
        }
    }
}
