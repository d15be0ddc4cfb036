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

/// The filter of a stream, or the hook future that has it while it runs or
/// awaits a call. A hook future gives the filter back when done.
pub(crate) enum Slot<F, Fut> {
    Idle(F),
    Busy(Pin<Box<Fut>>),
    /// Only while a hook runs, or after a filter panicked.
    Empty,
}

/// Boxes of finished hook futures, for the next hooks: a hook that finishes
/// at once then allocates nothing.
pub(crate) struct Spare<Fut>(Vec<Pin<Box<Fut>>>);

/// Boxes kept; more are only needed while many hooks await calls.
const SPARE_BOXES: usize = 8;

impl<Fut> Default for Spare<Fut> {
    fn default() -> Self {
        Spare(Vec::new())
    }
}

impl<F, T, Fut: Future<Output = (F, T)>> Slot<F, Fut> {
    /// Starts a hook: `hook` gets the filter and returns a future that gives it back.
    pub(crate) fn start(
        &mut self,
        hook: impl FnOnce(F) -> Fut,
        spare: &mut Spare<Fut>,
    ) -> Option<T> {
        let Slot::Idle(f) = std::mem::replace(self, Slot::Empty) else {
            // A hook called while another awaits: the host never does this.
            panic!("legate-sdk: a hook was called while another one is pending");
        };
        let future = hook(f);
        let task = match spare.0.pop() {
            Some(mut task) => {
                // The finished future is dropped in place and the new one
                // takes its box.
                task.as_mut().set(future);
                task
            }
            None => Box::pin(future),
        };
        self.run(task, spare)
    }

    /// Polls the pending hook again after a call result was delivered.
    pub(crate) fn resume(&mut self, spare: &mut Spare<Fut>) -> Option<T> {
        match std::mem::replace(self, Slot::Empty) {
            Slot::Busy(task) => self.run(task, spare),
            other => {
                *self = other;
                None
            }
        }
    }

    /// Polls once. Nothing needs waking: the host calls in again when a call
    /// completes.
    fn run(&mut self, mut task: Pin<Box<Fut>>, spare: &mut Spare<Fut>) -> Option<T> {
        match task.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready((f, out)) => {
                *self = Slot::Idle(f);
                if spare.0.len() < SPARE_BOXES {
                    spare.0.push(task);
                }
                Some(out)
            }
            Poll::Pending => {
                *self = Slot::Busy(task);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    /// Pending while `hold` is set.
    struct Gate(Rc<Cell<bool>>);

    impl Future for Gate {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            if self.0.get() {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        }
    }

    async fn hook(f: u32, hold: Rc<Cell<bool>>) -> (u32, u32) {
        Gate(hold).await;
        (f + 1, f * 10)
    }

    #[test]
    fn finished_hooks_give_their_box_to_the_next() {
        let hold = Rc::new(Cell::new(false));
        let mut spare = Spare::default();
        let mut slot = Slot::Idle(1);
        assert_eq!(slot.start(|f| hook(f, hold.clone()), &mut spare), Some(10));
        assert_eq!(spare.0.len(), 1);
        let first: *const _ = &*spare.0[0];
        // The next hook runs in the same box, and it goes back again.
        assert_eq!(slot.start(|f| hook(f, hold.clone()), &mut spare), Some(20));
        assert_eq!(spare.0.len(), 1);
        assert!(std::ptr::eq(first, &*spare.0[0]));
        // A pending hook keeps its box until it finishes.
        hold.set(true);
        assert_eq!(slot.start(|f| hook(f, hold.clone()), &mut spare), None);
        assert!(spare.0.is_empty());
        assert!(matches!(slot, Slot::Busy(_)));
        assert_eq!(slot.resume(&mut spare), None);
        hold.set(false);
        assert_eq!(slot.resume(&mut spare), Some(30));
        assert_eq!(spare.0.len(), 1);
        assert!(matches!(slot, Slot::Idle(4)));
    }
}
