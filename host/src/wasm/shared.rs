//! State that every worker's VMs see: shared data and shared queues (per `vm_id`),
//! and the metrics plugins define.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;

use crate::stats::{Counter, Gauge, Histogram, store};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Shared data of one `vm_id`: value and CAS token per key.
type Data = HashMap<Vec<u8>, (Bytes, u32)>;

fn data() -> &'static Mutex<HashMap<String, Data>> {
    static D: OnceLock<Mutex<HashMap<String, Data>>> = OnceLock::new();
    D.get_or_init(Default::default)
}

/// The value and CAS token of a key.
pub fn get(vm_id: &str, key: &[u8]) -> Option<(Bytes, u32)> {
    lock(data()).get(vm_id)?.get(key).cloned()
}

/// Sets a key; a non-zero `cas` must match the current token.
pub fn set(vm_id: &str, key: &[u8], value: Bytes, cas: u32) -> Result<(), ()> {
    let mut d = lock(data());
    let m = d.entry(vm_id.to_string()).or_default();
    match m.get_mut(key) {
        Some((v, token)) => {
            if cas != 0 && cas != *token {
                return Err(());
            }
            *v = value;
            *token = token.wrapping_add(1).max(1);
        }
        None => {
            if cas != 0 {
                return Err(());
            }
            m.insert(key.to_vec(), (value, 1));
        }
    }
    Ok(())
}

/// Sets a key that must not exist yet; false if it does.
pub fn create(vm_id: &str, key: &[u8], value: Bytes) -> bool {
    let mut d = lock(data());
    let m = d.entry(vm_id.to_string()).or_default();
    if m.contains_key(key) {
        return false;
    }
    m.insert(key.to_vec(), (value, 1));
    true
}

/// Wakes the VM that registered a queue.
pub struct QueueOwner {
    pub notify: tokio::sync::Notify,
    /// Queues with items, for the owner's `on_queue_ready`.
    pub ready: Mutex<Vec<u32>>,
}

struct Queue {
    items: VecDeque<Bytes>,
    owner: Option<Arc<QueueOwner>>,
}

#[derive(Default)]
struct Queues {
    by_name: HashMap<(String, String), u32>,
    queues: HashMap<u32, Queue>,
    next: u32,
}

fn queues() -> &'static Mutex<Queues> {
    static Q: OnceLock<Mutex<Queues>> = OnceLock::new();
    Q.get_or_init(Default::default)
}

/// Registers (or takes over) a queue; its items wake `owner`.
pub fn register_queue(vm_id: &str, name: &str, owner: Arc<QueueOwner>) -> u32 {
    let mut q = lock(queues());
    let key = (vm_id.to_string(), name.to_string());
    if let Some(&id) = q.by_name.get(&key) {
        if let Some(queue) = q.queues.get_mut(&id) {
            queue.owner = Some(owner);
        }
        return id;
    }
    q.next += 1;
    let id = q.next;
    q.by_name.insert(key, id);
    q.queues.insert(
        id,
        Queue {
            items: VecDeque::new(),
            owner: Some(owner),
        },
    );
    id
}

pub fn resolve_queue(vm_id: &str, name: &str) -> Option<u32> {
    lock(queues())
        .by_name
        .get(&(vm_id.to_string(), name.to_string()))
        .copied()
}

/// Adds an item; false when the queue does not exist.
pub fn enqueue(id: u32, value: Bytes) -> bool {
    let owner = {
        let mut q = lock(queues());
        let Some(queue) = q.queues.get_mut(&id) else {
            return false;
        };
        queue.items.push_back(value);
        queue.owner.clone()
    };
    if let Some(o) = owner {
        lock(&o.ready).push(id);
        o.notify.notify_one();
    }
    true
}

/// The next item: `Err` when the queue does not exist, `Ok(None)` when empty.
pub fn dequeue(id: u32) -> Result<Option<Bytes>, ()> {
    let mut q = lock(queues());
    let queue = q.queues.get_mut(&id).ok_or(())?;
    Ok(queue.items.pop_front())
}

/// A metric a plugin defined.
#[derive(Clone)]
pub enum Metric {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
}

/// Defines (or finds) a plugin metric. Envoy keeps them under `wasmcustom.`.
pub fn metric(kind: u32, name: &str) -> Option<Metric> {
    let full = format!("wasmcustom.{name}");
    let s = store();
    Some(match kind {
        0 => Metric::Counter(s.counter(full)),
        1 => Metric::Gauge(s.gauge(full)),
        2 => Metric::Histogram(s.histogram(full)),
        _ => return None,
    })
}
