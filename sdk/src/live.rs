//! The streams (or connections) an instance is filtering, by the numbers the
//! host names them with. Numbers are slots, reused once their stream ends, so a
//! stream costs no allocation of its own once the table has grown.

use std::any::Any;
use std::cell::RefCell;

/// Live items of one kind, by number.
pub(crate) struct Live<S> {
    slots: Vec<Option<S>>,
    free: Vec<u32>,
}

impl<S> Default for Live<S> {
    fn default() -> Self {
        Live {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<S> Live<S> {
    /// Keeps `item` and returns its number.
    pub(crate) fn insert(&mut self, item: S) -> u32 {
        match self.free.pop() {
            Some(n) => {
                self.slots[n as usize] = Some(item);
                n
            }
            None => {
                self.slots.push(Some(item));
                u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 live streams")
            }
        }
    }

    /// The item numbered `n`. The host only names items it was given, so an
    /// unknown number is a host bug, and the panic traps the instance.
    pub(crate) fn get(&mut self, n: u32) -> &mut S {
        match self.slots.get_mut(n as usize) {
            Some(Some(item)) => item,
            _ => panic!("legate-sdk: the host named number {n}, which is not live"),
        }
    }

    /// Takes the item numbered `n` out; its number may be given again.
    pub(crate) fn remove(&mut self, n: u32) -> Option<S> {
        let item = self.slots.get_mut(n as usize)?.take()?;
        self.free.push(n);
        Some(item)
    }
}

/// Where an instance keeps its table: the export's is thread-local, a test
/// stream has its own.
pub(crate) type Cell = RefCell<Option<Box<dyn Any>>>;

thread_local! {
    /// The instance's table. A component exports one world, so it holds one
    /// kind of table. (Wasm instances are single-threaded.)
    static INSTANCE: Cell = const { RefCell::new(None) };
}

/// Runs `f` on the instance's cell.
pub(crate) fn instance<R>(f: impl FnOnce(&Cell) -> R) -> R {
    INSTANCE.with(f)
}

/// Runs `f` on the table of type `T` in `cell`, made by `make` on first use.
/// `f` must not come back here: the hooks it runs cannot, since no API of this
/// crate reaches the table.
pub(crate) fn with<T: 'static, R>(
    cell: &Cell,
    make: impl FnOnce() -> T,
    f: impl FnOnce(&mut T) -> R,
) -> R {
    let mut cell = cell.borrow_mut();
    let table = cell
        .get_or_insert_with(|| Box::new(make()))
        .downcast_mut::<T>()
        .expect("legate-sdk: one kind of filter per component");
    f(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_of_removed_items_are_given_again() {
        let mut live = Live::default();
        assert_eq!(live.insert("a"), 0);
        assert_eq!(live.insert("b"), 1);
        assert_eq!(live.remove(0), Some("a"));
        assert_eq!(live.remove(0), None, "removed once only");
        assert_eq!(live.insert("c"), 0);
        assert_eq!(*live.get(0), "c");
        assert_eq!(*live.get(1), "b");
        assert_eq!(live.remove(7), None);
    }

    #[test]
    #[should_panic(expected = "not live")]
    fn an_unknown_number_panics() {
        Live::<u8>::default().get(3);
    }
}
