//! A plugin's instance slot on one worker: the instance in service, rebuilt
//! after a failure. The first rebuild is immediate, so one bad request costs one
//! stream; an instance that keeps failing soon after being rebuilt waits
//! `reload_config.backoff` (doubling up to its max) between rebuilds.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::Plugin;
use super::vm::{Data, IdHasher};

/// What a slot holds: a per-worker instance of a plugin.
pub trait Instance: Sized + 'static {
    /// Builds and configures an instance for this worker.
    fn build(plugin: &Plugin) -> Result<Rc<Self>, String>;
    /// Whether it failed and must be replaced.
    fn is_failed(&self) -> bool;
}

pub struct Slot<V> {
    plugin: Weak<Plugin>,
    vm: RefCell<Option<Rc<V>>>,
    /// When the instance in service was built.
    built_at: Cell<Option<Instant>>,
    /// Rebuilds since an instance last lived longer than the max backoff.
    quick_rebuilds: Cell<u32>,
    /// No rebuild before this.
    retry_at: Cell<Option<Instant>>,
    /// Stream data of ended streams, cleared, for the next ones.
    spare: RefCell<Vec<Data>>,
}

/// Spare stream data kept per worker and plugin.
const SPARE_DATA: usize = 64;

/// A stream's data, lent by its slot. The `Option` lets the stream's `Drop`
/// hand it back without allocating a replacement.
pub struct Lent(Option<Data>);

impl std::ops::Deref for Lent {
    type Target = Data;
    fn deref(&self) -> &Data {
        self.0
            .as_ref()
            .expect("stream data is only given back on drop")
    }
}

impl std::ops::DerefMut for Lent {
    fn deref_mut(&mut self) -> &mut Data {
        self.0
            .as_mut()
            .expect("stream data is only given back on drop")
    }
}

impl<V> Slot<V> {
    /// Stream data for a new stream, reused when one ended.
    pub fn take_data(&self) -> Lent {
        Lent(Some(self.spare.borrow_mut().pop().unwrap_or_default()))
    }

    /// Takes back an ended stream's data.
    pub fn give_back(&self, lent: &mut Lent) {
        let Some(mut data) = lent.0.take() else {
            return;
        };
        let mut spare = self.spare.borrow_mut();
        if spare.len() < SPARE_DATA {
            data.reset();
            spare.push(data);
        }
    }
}

impl<V: Instance> Slot<V> {
    /// The instance in service, if there is a healthy one, without building.
    pub fn current(&self) -> Option<Rc<V>> {
        self.vm.borrow().clone().filter(|vm| !vm.is_failed())
    }

    /// The instance in service, building one if there is none or the last failed.
    pub fn vm(&self) -> Result<Rc<V>, String> {
        if let Some(vm) = self.vm.borrow().as_ref()
            && !vm.is_failed()
        {
            return Ok(vm.clone());
        }
        let Some(plugin) = self.plugin.upgrade() else {
            return Err("the plugin was retired".into());
        };
        let now = Instant::now();
        if let Some(at) = self.retry_at.get()
            && now < at
        {
            plugin.stats.vm_reload_backoff.inc();
            return Err("the VM failed and is waiting to be rebuilt".into());
        }
        let (base, max) = plugin.config.reload_backoff;
        let failed_vm = self.vm.borrow().is_some();
        if failed_vm {
            let lived = self.built_at.get().map_or(Duration::MAX, |b| now - b);
            if lived > max {
                self.quick_rebuilds.set(0);
            }
            let n = self.quick_rebuilds.get();
            if n > 0 && self.retry_at.get().is_none() {
                // A crash loop: wait before this rebuild.
                let wait = (base * 2u32.saturating_pow(n - 1)).min(max);
                self.retry_at.set(Some(now + wait));
                plugin.stats.vm_reload_backoff.inc();
                return Err("the VM failed and is waiting to be rebuilt".into());
            }
        }
        self.retry_at.set(None);
        if failed_vm {
            plugin.stats.vm_reload.inc();
        }
        match V::build(&plugin) {
            Ok(vm) => {
                if failed_vm {
                    self.quick_rebuilds.set(self.quick_rebuilds.get() + 1);
                    plugin.stats.vm_reload_success.inc();
                    tracing::info!(plugin = %plugin.config.name, "Wasm VM rebuilt");
                }
                self.built_at.set(Some(now));
                *self.vm.borrow_mut() = Some(vm.clone());
                Ok(vm)
            }
            Err(e) => {
                if failed_vm {
                    plugin.stats.vm_reload_failure.inc();
                }
                let n = self.quick_rebuilds.get() + 1;
                self.quick_rebuilds.set(n);
                self.retry_at
                    .set(Some(now + (base * 2u32.saturating_pow(n - 1)).min(max)));
                tracing::error!(plugin = %plugin.config.name, "cannot start Wasm VM: {e}");
                Err(e)
            }
        }
    }
}

type SlotEntry = (Weak<Plugin>, Rc<dyn Any>);

type Slots = HashMap<usize, SlotEntry, std::hash::BuildHasherDefault<IdHasher>>;

thread_local! {
    /// This worker's slots, by plugin address. The weak handle keeps a retired
    /// plugin's allocation, so no new plugin takes its address while its entry
    /// is here.
    static SLOTS: RefCell<Slots> = RefCell::new(Slots::default());
}

/// This worker's slot for a plugin.
pub fn slot<V: Instance>(plugin: &Arc<Plugin>) -> Rc<Slot<V>> {
    let key = Arc::as_ptr(plugin) as usize;
    SLOTS.with(|s| {
        let mut s = s.borrow_mut();
        if let Some((_, slot)) = s.get(&key)
            && let Ok(slot) = slot.clone().downcast::<Slot<V>>()
        {
            return slot;
        }
        // Forget the slots of retired plugins (their instances end with the
        // streams still holding them).
        s.retain(|_, (w, _)| w.strong_count() > 0);
        let slot = Rc::new(Slot {
            plugin: Arc::downgrade(plugin),
            vm: RefCell::new(None),
            built_at: Cell::new(None),
            quick_rebuilds: Cell::new(0),
            retry_at: Cell::new(None),
            spare: RefCell::new(Vec::new()),
        });
        s.insert(key, (Arc::downgrade(plugin), slot.clone()));
        slot
    })
}
