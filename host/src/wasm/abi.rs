//! The proxy-wasm host functions (ABI 0.1.0, 0.2.0, 0.2.1) and the WASI preview1
//! calls toolchains import.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use legate_filter_api::{LocalReply, RequestHead, ResponseHead};
use wasmtime::{Caller, Linker, Module, Val};

use super::calls::{CallKind, OutCall, StreamHandle, StreamMsg, grpc_frame};
use super::shared;
use super::snapshot::encode;
use super::vm::HostState;

type C<'a> = Caller<'a, HostState>;
type R = wasmtime::Result<i32>;

// proxy-wasm statuses.
const OK: i32 = 0;
const NOT_FOUND: i32 = 1;
const BAD_ARGUMENT: i32 = 2;
const SERIALIZATION_FAILURE: i32 = 3;
const INVALID_MEMORY_ACCESS: i32 = 6;
const EMPTY: i32 = 7;
const CAS_MISMATCH: i32 = 8;

// WASI errnos.
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: i32 = 8;
const ERRNO_NOSYS: i32 = 52;
const ERRNO_SPIPE: i32 = 70;

/// Checks that the module's imports are all provided, with the right types.
pub fn check_imports(module: &Module) -> Result<(), String> {
    let linker = linker(module).map_err(|e| e.to_string())?;
    linker
        .instantiate_pre(module)
        .map(|_| ())
        .map_err(|e| format!("{e}: legate does not provide this host function"))
}

fn read(c: &C, ptr: i32, len: i32) -> Option<Vec<u8>> {
    let mem = c.data().memory?;
    let (p, l) = (ptr as u32 as usize, len as u32 as usize);
    mem.data(c).get(p..p.checked_add(l)?).map(<[u8]>::to_vec)
}

/// Runs `f` on two ranges of guest memory and the host state, without copying
/// them out; `None` when a range is out of bounds.
fn with_mem<T>(
    c: &mut C,
    (p1, l1): (i32, i32),
    (p2, l2): (i32, i32),
    f: impl FnOnce(&[u8], &[u8], &mut HostState) -> T,
) -> Option<T> {
    let mem = c.data().memory?;
    let (data, st) = mem.data_and_store_mut(c);
    let range = |p: i32, l: i32| {
        let (p, l) = (p as u32 as usize, l as u32 as usize);
        p..p.saturating_add(l)
    };
    let a = data.get(range(p1, l1))?;
    let b = data.get(range(p2, l2))?;
    Some(f(a, b, st))
}

fn write(c: &mut C, ptr: i32, bytes: &[u8]) -> bool {
    let Some(mem) = c.data().memory else {
        return false;
    };
    let p = ptr as u32 as usize;
    match mem.data_mut(c).get_mut(p..p + bytes.len()) {
        Some(dst) => {
            dst.copy_from_slice(bytes);
            true
        }
        None => false,
    }
}

fn write_u32(c: &mut C, ptr: i32, v: u32) -> bool {
    write(c, ptr, &v.to_le_bytes())
}

fn write_u64(c: &mut C, ptr: i32, v: u64) -> bool {
    write(c, ptr, &v.to_le_bytes())
}

/// Copies bytes into guest memory it allocates, and writes the pointer and size.
fn give(c: &mut C, bytes: &[u8], ptr_ptr: i32, size_ptr: i32) -> R {
    if bytes.is_empty() {
        let ok = write_u32(c, ptr_ptr, 0) && write_u32(c, size_ptr, 0);
        return Ok(if ok { OK } else { INVALID_MEMORY_ACCESS });
    }
    // Taken out for the call rather than cloned (a clone copies its type); a
    // guest allocator that called back in here would get an error.
    let Some(malloc) = c.data_mut().malloc.take() else {
        return Ok(INVALID_MEMORY_ACCESS);
    };
    let p = malloc.call(&mut *c, bytes.len() as i32);
    c.data_mut().malloc = Some(malloc);
    let p = p?;
    if p == 0 {
        return Ok(INVALID_MEMORY_ACCESS);
    }
    let ok = write(c, p, bytes)
        && write_u32(c, ptr_ptr, p as u32)
        && write_u32(c, size_ptr, bytes.len() as u32);
    Ok(if ok { OK } else { INVALID_MEMORY_ACCESS })
}

/// The foreign functions of Envoy's that take no protobuf arguments. The
/// others (`declare_property`, `set_envoy_filter_state`, `sign`,
/// `verify_signature`, CEL's `expr_*`) answer NOT_FOUND.
fn foreign(name: &[u8], args: &[u8], max_out: usize) -> Result<Vec<u8>, i32> {
    match name {
        // zlib format at zlib's default level, as Envoy's zlib `compress`.
        b"compress" => Ok(miniz_oxide::deflate::compress_to_vec_zlib(args, 6)),
        // Bounded by the VM's memory, which the result must fit in; Envoy
        // grows its buffer without a bound.
        b"uncompress" => miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(args, max_out)
            .map_err(|_| SERIALIZATION_FAILURE),
        // Acted on by the caller, which has the stream.
        b"clear_route_cache" => Ok(Vec::new()),
        _ => Err(NOT_FOUND),
    }
}

fn deserialize(b: &[u8]) -> Option<Vec<(Bytes, Bytes)>> {
    if b.is_empty() {
        return Some(Vec::new());
    }
    let n = u32::from_le_bytes(b.get(0..4)?.try_into().ok()?) as usize;
    let mut sizes = Vec::with_capacity(n.min(1024));
    let mut at = 4;
    for _ in 0..n {
        let k = u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize;
        let v = u32::from_le_bytes(b.get(at + 4..at + 8)?.try_into().ok()?) as usize;
        sizes.push((k, v));
        at += 8;
    }
    let mut out = Vec::with_capacity(sizes.len());
    for (k, v) in sizes {
        let key = Bytes::copy_from_slice(b.get(at..at + k)?);
        at += k + 1;
        let val = Bytes::copy_from_slice(b.get(at..at + v)?);
        at += v + 1;
        out.push((key, val));
    }
    Some(out)
}

/// One pseudo-header of a request head (`key` in any case).
pub(super) fn request_pseudo<'a>(h: &'a RequestHead, key: &[u8]) -> Option<&'a [u8]> {
    let v: &[u8] = if key.eq_ignore_ascii_case(b":path") {
        h.uri
            .path_and_query()
            .map_or(b"/", |p| p.as_str().as_bytes())
    } else if key.eq_ignore_ascii_case(b":authority") {
        match h.uri.authority() {
            Some(a) => a.as_str().as_bytes(),
            None => h
                .headers
                .get(http::header::HOST)
                .map_or(b"", |v| v.as_bytes()),
        }
    } else if key.eq_ignore_ascii_case(b":method") {
        h.method.as_str().as_bytes()
    } else if key.eq_ignore_ascii_case(b":scheme") {
        h.uri.scheme_str().unwrap_or("http").as_bytes()
    } else {
        return None;
    };
    Some(v)
}

const REQUEST_PSEUDO: [&[u8]; 4] = [b":authority", b":path", b":method", b":scheme"];

/// A snapshot's wire bytes when it serves map `t` in this callback.
fn snapshot_wire(st: &HostState, t: i32) -> Option<Vec<u8>> {
    let d = &st.stream;
    match t {
        0 if d.req.is_none() => d.req_seen.taken().map(|s| s.wire().to_vec()),
        2 if d.resp.is_none() => d.resp_seen.taken().map(|s| s.wire().to_vec()),
        _ => None,
    }
}

fn owned<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Vec<(Vec<u8>, Vec<u8>)> {
    pairs.map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
}

/// A header map as pairs (pseudo-headers first), or `None` when this callback
/// has no such map.
fn map_pairs(st: &HostState, t: i32) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let d = &st.stream;
    let plain = |h: &HeaderMap| {
        h.iter()
            .map(|(k, v)| (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect::<Vec<_>>()
    };
    let call = |trailers: bool| {
        st.call.as_ref().map(|c| {
            let src = if trailers { &c.trailers } else { &c.headers };
            src.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
        })
    };
    match t {
        0 if d.req.is_none() => Some(owned(d.req_seen.taken()?.pairs())),
        2 if d.resp.is_none() => Some(owned(d.resp_seen.taken()?.pairs())),
        0 => {
            let h = d.req.as_ref()?;
            let mut v: Vec<(Vec<u8>, Vec<u8>)> = REQUEST_PSEUDO
                .iter()
                .filter_map(|k| Some((k.to_vec(), request_pseudo(h, k)?.to_vec())))
                .collect();
            v.extend(plain(&h.headers));
            Some(v)
        }
        1 => d.req_trailers.as_ref().map(plain),
        2 => {
            let h = d.resp.as_ref()?;
            let mut v = vec![(b":status".to_vec(), h.status.as_str().as_bytes().to_vec())];
            v.extend(plain(&h.headers));
            Some(v)
        }
        3 => d.resp_trailers.as_ref().map(plain),
        4 | 5 => match &st.grpc_meta {
            Some((mt, pairs)) if *mt == t => Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .collect(),
            ),
            _ => None,
        },
        6 => call(false),
        7 => call(true),
        _ => None,
    }
}

/// A header's value in map `t`, written to `out`: `None` when this callback
/// has no such map, `Some(false)` when the header is absent.
fn map_value(st: &HostState, t: i32, key: &[u8], out: &mut Vec<u8>) -> Option<bool> {
    let d = &st.stream;
    let mut put = |v: &[u8]| {
        out.extend_from_slice(v);
        true
    };
    // Envoy joins repeated headers with a comma. Looked up by &str, which
    // does not allocate.
    let joined = |h: &HeaderMap, out: &mut Vec<u8>| {
        let Ok(name) = std::str::from_utf8(key) else {
            return false;
        };
        let mut found = false;
        for v in h.get_all(name) {
            if found {
                out.push(b',');
            }
            out.extend_from_slice(v.as_bytes());
            found = true;
        }
        found
    };
    Some(match t {
        0 if d.req.is_none() => d.req_seen.taken()?.joined(key, out),
        2 if d.resp.is_none() => d.resp_seen.taken()?.joined(key, out),
        0 => {
            let h = d.req.as_ref()?;
            if key.starts_with(b":") {
                request_pseudo(h, key).is_some_and(put)
            } else {
                joined(&h.headers, out)
            }
        }
        2 => {
            let h = d.resp.as_ref()?;
            if key == b":status" {
                put(h.status.as_str().as_bytes())
            } else {
                joined(&h.headers, out)
            }
        }
        1 => joined(d.req_trailers.as_ref()?, out),
        3 => joined(d.resp_trailers.as_ref()?, out),
        _ => {
            let pairs = map_pairs(st, t)?;
            pairs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .is_some_and(|(_, v)| put(v))
        }
    })
}

#[derive(Clone, Copy)]
pub(super) enum Op {
    Add,
    Replace,
    Remove,
}

pub(super) fn set_request_pseudo(h: &mut RequestHead, key: &[u8], value: &[u8], op: Op) -> bool {
    if matches!(op, Op::Remove) {
        return true;
    }
    let Ok(value) = std::str::from_utf8(value) else {
        return false;
    };
    let mut parts = std::mem::take(&mut h.uri).into_parts();
    let ok = match key {
        b":path" => value
            .parse()
            .map(|p| parts.path_and_query = Some(p))
            .is_ok(),
        b":authority" => {
            let ok = value.parse().map(|a| parts.authority = Some(a)).is_ok();
            if ok && let Ok(v) = HeaderValue::from_str(value) {
                if parts.scheme.is_none() {
                    parts.scheme = Some(http::uri::Scheme::HTTP);
                }
                if h.headers.contains_key(http::header::HOST) {
                    h.headers.insert(http::header::HOST, v);
                }
            }
            ok
        }
        b":scheme" => value.parse().map(|s| parts.scheme = Some(s)).is_ok(),
        b":method" => match http::Method::from_bytes(value.as_bytes()) {
            Ok(m) => {
                h.method = m;
                true
            }
            Err(_) => false,
        },
        _ => true,
    };
    if parts.path_and_query.is_none() && (parts.scheme.is_some() || parts.authority.is_some()) {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    h.uri = http::Uri::from_parts(parts).unwrap_or_default();
    ok
}

/// Header names a VM has set, so repeated edits skip parsing and allocation.
const NAME_CACHE: usize = 32;

/// Size of the blocks header values are cut from.
const VALUE_BLOCK: usize = 4096;

/// What a VM's header edits reuse: the names it has set, and a block of memory
/// that new values are cut from (shared, freed when its last value is), so an
/// edit usually allocates nothing.
#[derive(Default)]
pub(super) struct HeaderScratch {
    names: Vec<HeaderName>,
    values: BytesMut,
}

impl HeaderScratch {
    fn name(&mut self, key: &[u8]) -> Option<HeaderName> {
        if let Some(n) = self.names.iter().find(|n| n.as_str().as_bytes() == key) {
            return Some(n.clone());
        }
        let n = HeaderName::from_bytes(key).ok()?;
        if self.names.len() < NAME_CACHE && n.as_str().as_bytes() == key {
            self.names.push(n.clone());
        }
        Some(n)
    }

    fn value(&mut self, v: &[u8]) -> Option<HeaderValue> {
        if v.len() > VALUE_BLOCK / 4 {
            return HeaderValue::from_bytes(v).ok();
        }
        if self.values.capacity() < v.len() {
            // A new block; the old one lives on in the values cut from it.
            self.values = BytesMut::with_capacity(VALUE_BLOCK);
        }
        self.values.extend_from_slice(v);
        HeaderValue::from_maybe_shared(self.values.split().freeze()).ok()
    }
}

pub(super) fn edit(
    h: &mut HeaderMap,
    scratch: &mut HeaderScratch,
    key: &[u8],
    value: &[u8],
    op: Op,
) -> bool {
    match op {
        Op::Remove => {
            // By &str, which looks the name up without allocating.
            if let Ok(k) = std::str::from_utf8(key) {
                h.remove(k);
            }
            true
        }
        Op::Add | Op::Replace => {
            let (Some(name), Some(v)) = (scratch.name(key), scratch.value(value)) else {
                return false;
            };
            if matches!(op, Op::Add) {
                h.append(name, v);
            } else {
                h.insert(name, v);
            }
            true
        }
    }
}

/// A header name as edits match it: pseudo-headers lowercase. Other names
/// are left as they are, since `HeaderName` parsing and lookups by `&str`
/// ignore case, and the name cache only keeps lowercase names.
pub(super) fn edit_key(key: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if key.first() == Some(&b':') && key.iter().any(u8::is_ascii_uppercase) {
        key.to_ascii_lowercase().into()
    } else {
        key.into()
    }
}

/// Edits a live header map; `None` when this callback cannot write it.
fn map_edit(st: &mut HostState, t: i32, key: &[u8], value: &[u8], op: Op) -> Option<bool> {
    let d = &mut st.stream;
    let names = &mut st.header_scratch;
    let key = edit_key(key);
    Some(match t {
        0 => {
            if d.req.is_none() {
                return None;
            }
            d.clear_route_cache();
            let h = d.req.as_mut()?;
            if key.starts_with(b":") {
                set_request_pseudo(h, &key, value, op)
            } else {
                edit(&mut h.headers, names, &key, value, op)
            }
        }
        1 => edit(d.req_trailers.as_mut()?, names, &key, value, op),
        2 => {
            let h: &mut ResponseHead = d.resp.as_mut()?;
            if *key == *b":status" {
                if let Some(s) = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<u16>().ok())
                    .and_then(|v| http::StatusCode::from_u16(v).ok())
                {
                    h.status = s;
                }
                true
            } else if key.starts_with(b":") {
                true
            } else {
                edit(&mut h.headers, names, &key, value, op)
            }
        }
        3 => edit(d.resp_trailers.as_mut()?, names, &key, value, op),
        _ => return None,
    })
}

fn map_clear(st: &mut HostState, t: i32) -> bool {
    let d = &mut st.stream;
    match t {
        0 => {
            let cleared = d.req.as_mut().map(|h| h.headers.clear()).is_some();
            if cleared {
                d.clear_route_cache();
            }
            cleared
        }
        1 => d.req_trailers.as_mut().map(|h| h.clear()).is_some(),
        2 => d.resp.as_mut().map(|h| h.headers.clear()).is_some(),
        3 => d.resp_trailers.as_mut().map(|h| h.clear()).is_some(),
        _ => false,
    }
}

/// The bytes of a buffer type in this callback.
fn buffer(st: &HostState, t: i32) -> Option<Bytes> {
    match t {
        0..=3 => match &st.stream.body {
            Some((bt, b)) if *bt as i32 == t => Some(b.clone()),
            _ => None,
        },
        4 => st.call.as_ref().map(|c| c.body.clone()),
        5 => st.grpc_message.clone(),
        6 => Some(st.plugin.vm_configuration.clone()),
        7 => Some(st.plugin.configuration.clone()),
        _ => None,
    }
}

fn buffer_len(st: &HostState, t: i32) -> Option<usize> {
    match t {
        0..=3 => match &st.stream.body {
            Some((bt, b)) if *bt as i32 == t => Some(b.len()),
            _ => None,
        },
        _ => buffer(st, t).map(|b| b.len()),
    }
}

/// Envoy's `set_buffer_bytes`: replace `[start, start+size)`, clamped.
fn splice(b: &mut Bytes, start: usize, size: usize, data: &[u8]) {
    let start = start.min(b.len());
    let end = start.saturating_add(size).min(b.len());
    let mut out = BytesMut::with_capacity(start + data.len() + (b.len() - end));
    out.extend_from_slice(&b[..start]);
    out.extend_from_slice(data);
    out.extend_from_slice(&b[end..]);
    *b = out.freeze();
}

fn log_level() -> i32 {
    use tracing::level_filters::LevelFilter;
    match LevelFilter::current() {
        LevelFilter::TRACE => 0,
        LevelFilter::DEBUG => 1,
        LevelFilter::INFO => 2,
        LevelFilter::WARN => 3,
        LevelFilter::ERROR => 4,
        _ => 5,
    }
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The cluster a gRPC call targets: a serialized `GrpcService` with an
/// `envoy_grpc.cluster_name`, or the cluster name itself.
fn grpc_cluster(raw: &[u8], known: &[String]) -> Option<String> {
    if let Ok(s) = std::str::from_utf8(raw)
        && known.iter().any(|k| k == s)
    {
        return Some(s.to_string());
    }
    // field 1 (envoy_grpc), length-delimited; inside, field 1 (cluster_name).
    let inner = proto_field(raw, 1)?;
    let name = proto_field(inner, 1)?;
    std::str::from_utf8(name).ok().map(str::to_string)
}

fn proto_field(mut b: &[u8], want: u64) -> Option<&[u8]> {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&x, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(x & 0x7f) << (7 * i);
            if x & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    while !b.is_empty() {
        let key = varint(&mut b)?;
        match key & 7 {
            0 => {
                varint(&mut b)?;
            }
            1 => b = b.get(8..)?,
            5 => b = b.get(4..)?,
            2 => {
                let len = varint(&mut b)? as usize;
                let v = b.get(..len)?;
                b = &b[len..];
                if key >> 3 == want {
                    return Some(v);
                }
            }
            _ => return None,
        }
    }
    None
}

macro_rules! try_mem {
    ($e:expr) => {
        match $e {
            Some(v) => v,
            None => return Ok(INVALID_MEMORY_ACCESS),
        }
    };
}

/// A linker with every host function, plus ENOSYS stubs for the WASI calls this
/// module imports that legate does not serve.
pub fn linker(module: &Module) -> wasmtime::Result<Linker<HostState>> {
    let mut l: Linker<HostState> = Linker::new(super::engine().map_err(wasmtime::Error::msg)?);
    env(&mut l)?;
    for ns in ["wasi_snapshot_preview1", "wasi_unstable"] {
        wasi(&mut l, ns)?;
    }
    for import in module.imports() {
        let ns = import.module();
        if (ns == "wasi_snapshot_preview1" || ns == "wasi_unstable")
            && let wasmtime::ExternType::Func(ft) = import.ty()
            && !WASI_SERVED.contains(&import.name())
        {
            let results: Vec<wasmtime::ValType> = ft.results().collect();
            l.func_new(
                ns,
                import.name(),
                ft.clone(),
                move |_, _, out: &mut [Val]| {
                    for (o, t) in out.iter_mut().zip(&results) {
                        *o = match t {
                            wasmtime::ValType::I64 => Val::I64(ERRNO_NOSYS as i64),
                            _ => Val::I32(ERRNO_NOSYS),
                        };
                    }
                    Ok(())
                },
            )?;
        }
    }
    Ok(l)
}

const WASI_SERVED: &[&str] = &[
    "fd_write",
    "fd_read",
    "fd_close",
    "fd_seek",
    "fd_fdstat_get",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "environ_sizes_get",
    "environ_get",
    "args_sizes_get",
    "args_get",
    "clock_time_get",
    "clock_res_get",
    "random_get",
    "proc_exit",
    "sched_yield",
    "poll_oneoff",
];

fn env(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    const E: &str = "env";
    l.func_wrap(
        E,
        "proxy_log",
        |c: C, level: i32, ptr: i32, len: i32| -> R {
            let msg = try_mem!(read(&c, ptr, len));
            let msg = String::from_utf8_lossy(&msg);
            let plugin = c.data().plugin.name.as_str();
            match level {
                0 => tracing::trace!(target: "wasm", plugin, "{msg}"),
                1 => tracing::debug!(target: "wasm", plugin, "{msg}"),
                2 => tracing::info!(target: "wasm", plugin, "{msg}"),
                3 => tracing::warn!(target: "wasm", plugin, "{msg}"),
                _ => tracing::error!(target: "wasm", plugin, "{msg}"),
            }
            Ok(OK)
        },
    )?;
    l.func_wrap(E, "proxy_get_log_level", |mut c: C, ptr: i32| -> R {
        Ok(if write_u32(&mut c, ptr, log_level() as u32) {
            OK
        } else {
            INVALID_MEMORY_ACCESS
        })
    })?;
    l.func_wrap(
        E,
        "proxy_get_current_time_nanoseconds",
        |mut c: C, ptr: i32| -> R {
            Ok(if write_u64(&mut c, ptr, now_nanos()) {
                OK
            } else {
                INVALID_MEMORY_ACCESS
            })
        },
    )?;
    l.func_wrap(
        E,
        "proxy_set_tick_period_milliseconds",
        |mut c: C, ms: i32| -> R {
            c.data_mut().effects.tick = Some(std::time::Duration::from_millis(ms as u32 as u64));
            Ok(OK)
        },
    )?;
    l.func_wrap(
        E,
        "proxy_get_buffer_bytes",
        |mut c: C, t: i32, start: i32, max: i32, ptr_ptr: i32, size_ptr: i32| -> R {
            let Some(b) = buffer(c.data(), t) else {
                return Ok(NOT_FOUND);
            };
            let start = (start as u32 as usize).min(b.len());
            let end = start.saturating_add(max as u32 as usize).min(b.len());
            give(&mut c, &b[start..end], ptr_ptr, size_ptr)
        },
    )?;
    l.func_wrap(
        E,
        "proxy_set_buffer_bytes",
        |mut c: C, t: i32, start: i32, size: i32, ptr: i32, len: i32| -> R {
            let data = try_mem!(read(&c, ptr, len));
            match &mut c.data_mut().stream.body {
                Some((bt, b)) if *bt as i32 == t => {
                    splice(b, start as u32 as usize, size as u32 as usize, &data);
                    Ok(OK)
                }
                _ => Ok(NOT_FOUND),
            }
        },
    )?;
    l.func_wrap(
        E,
        "proxy_get_buffer_status",
        |mut c: C, t: i32, len_ptr: i32, flags_ptr: i32| -> R {
            let Some(n) = buffer_len(c.data(), t) else {
                return Ok(NOT_FOUND);
            };
            let ok = write_u32(&mut c, len_ptr, n as u32) && write_u32(&mut c, flags_ptr, 0);
            Ok(if ok { OK } else { INVALID_MEMORY_ACCESS })
        },
    )?;
    l.func_wrap(
        E,
        "proxy_get_header_map_pairs",
        |mut c: C, t: i32, ptr_ptr: i32, size_ptr: i32| -> R {
            if let Some(wire) = snapshot_wire(c.data(), t) {
                return give(&mut c, &wire, ptr_ptr, size_ptr);
            }
            let Some(pairs) = map_pairs(c.data(), t) else {
                return Ok(NOT_FOUND);
            };
            let bytes = encode(|| pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
            give(&mut c, &bytes, ptr_ptr, size_ptr)
        },
    )?;
    l.func_wrap(
        E,
        "proxy_get_header_map_size",
        |mut c: C, t: i32, size_ptr: i32| -> R {
            let Some(pairs) = map_pairs(c.data(), t) else {
                return Ok(NOT_FOUND);
            };
            let n = encode(|| pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))).len();
            Ok(if write_u32(&mut c, size_ptr, n as u32) {
                OK
            } else {
                INVALID_MEMORY_ACCESS
            })
        },
    )?;
    l.func_wrap(
        E,
        "proxy_set_header_map_pairs",
        |mut c: C, t: i32, ptr: i32, len: i32| -> R {
            let raw = try_mem!(read(&c, ptr, len));
            let Some(pairs) = deserialize(&raw) else {
                return Ok(BAD_ARGUMENT);
            };
            let st = c.data_mut();
            if !map_clear(st, t) {
                return Ok(NOT_FOUND);
            }
            for (k, v) in pairs {
                map_edit(st, t, &k, &v, Op::Add);
            }
            Ok(OK)
        },
    )?;
    l.func_wrap(
        E,
        "proxy_get_header_map_value",
        |mut c: C, t: i32, kp: i32, kl: i32, ptr_ptr: i32, size_ptr: i32| -> R {
            // The value goes through the VM's scratch buffer: no allocation.
            let mut out = std::mem::take(&mut c.data_mut().scratch);
            out.clear();
            let found = with_mem(&mut c, (kp, kl), (0, 0), |key, _, st| {
                map_value(st, t, key, &mut out)
            });
            let r = match found {
                None => Ok(INVALID_MEMORY_ACCESS),
                Some(Some(true)) => give(&mut c, &out, ptr_ptr, size_ptr),
                Some(_) => Ok(NOT_FOUND),
            };
            c.data_mut().scratch = out;
            r
        },
    )?;
    for (name, op) in [
        ("proxy_add_header_map_value", Op::Add),
        ("proxy_replace_header_map_value", Op::Replace),
    ] {
        l.func_wrap(
            E,
            name,
            move |mut c: C, t: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> R {
                let edited = try_mem!(with_mem(&mut c, (kp, kl), (vp, vl), |key, value, st| {
                    map_edit(st, t, key, value, op)
                }));
                Ok(match edited {
                    Some(true) => OK,
                    Some(false) => BAD_ARGUMENT,
                    None => NOT_FOUND,
                })
            },
        )?;
    }
    l.func_wrap(
        E,
        "proxy_remove_header_map_value",
        |mut c: C, t: i32, kp: i32, kl: i32| -> R {
            let edited = try_mem!(with_mem(&mut c, (kp, kl), (0, 0), |key, _, st| {
                map_edit(st, t, key, b"", Op::Remove)
            }));
            Ok(match edited {
                Some(_) => OK,
                None => NOT_FOUND,
            })
        },
    )?;
    l.func_wrap(E, "proxy_continue_stream", |mut c: C, _t: i32| -> R {
        let ctx = c.data().effective;
        c.data_mut().effects.resume.push(ctx);
        Ok(OK)
    })?;
    for name in ["proxy_continue_request", "proxy_continue_response"] {
        l.func_wrap(E, name, |mut c: C| -> R {
            let ctx = c.data().effective;
            c.data_mut().effects.resume.push(ctx);
            Ok(OK)
        })?;
    }
    l.func_wrap(E, "proxy_close_stream", |mut c: C, _t: i32| -> R {
        let ctx = c.data().effective;
        c.data_mut().effects.close.push(ctx);
        Ok(OK)
    })?;
    l.func_wrap(E, "proxy_clear_route_cache", |mut c: C| -> R {
        c.data_mut().stream.clear_route_cache();
        Ok(OK)
    })?;
    l.func_wrap(E, "proxy_done", |_c: C| -> R { Ok(OK) })?;
    l.func_wrap(
        E,
        "proxy_send_local_response",
        |mut c: C,
         status: i32,
         _dp: i32,
         _dl: i32,
         bp: i32,
         bl: i32,
         hp: i32,
         hl: i32,
         grpc: i32|
         -> R {
            let body = try_mem!(read(&c, bp, bl));
            let raw = try_mem!(read(&c, hp, hl));
            let Some(pairs) = deserialize(&raw) else {
                return Ok(BAD_ARGUMENT);
            };
            let Ok(status) = http::StatusCode::from_u16(status as u32 as u16) else {
                return Ok(BAD_ARGUMENT);
            };
            let mut reply = LocalReply::new(status, body);
            reply.details = "wasm_local_reply";
            for (k, v) in pairs {
                if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(&k), HeaderValue::from_bytes(&v)) {
                    reply.headers.append(k, v);
                }
            }
            if grpc >= 0 {
                reply.grpc_status = Some(grpc as u32);
            }
            let ctx = c.data().effective;
            c.data_mut().effects.replies.push((ctx, Box::new(reply)));
            Ok(OK)
        },
    )?;
    l.func_wrap(
        E,
        "proxy_http_call",
        |mut c: C,
         up: i32,
         ul: i32,
         hp: i32,
         hl: i32,
         bp: i32,
         bl: i32,
         tp: i32,
         tl: i32,
         timeout: i32,
         token_ptr: i32|
         -> R {
            let cluster = try_mem!(read(&c, up, ul));
            let headers = try_mem!(read(&c, hp, hl));
            let body = try_mem!(read(&c, bp, bl));
            let _trailers = try_mem!(read(&c, tp, tl));
            let cluster = String::from_utf8_lossy(&cluster).into_owned();
            if !c.data().cluster_names.contains(&cluster) {
                return Ok(BAD_ARGUMENT);
            }
            let Some(headers) = deserialize(&headers) else {
                return Ok(BAD_ARGUMENT);
            };
            let has = |n: &[u8]| headers.iter().any(|(k, _)| k.as_ref() == n);
            // Envoy refuses a call without these.
            if !has(b":method") || !has(b":path") || !has(b":authority") {
                return Ok(BAD_ARGUMENT);
            }
            dispatch(
                &mut c,
                cluster,
                headers,
                Bytes::from(body),
                timeout,
                CallKind::Http,
                token_ptr,
            )
        },
    )?;
    l.func_wrap(
        E,
        "proxy_grpc_call",
        |mut c: C,
         up: i32,
         ul: i32,
         sp: i32,
         sl: i32,
         mp: i32,
         ml: i32,
         ip: i32,
         il: i32,
         msgp: i32,
         msgl: i32,
         timeout: i32,
         token_ptr: i32|
         -> R {
            let upstream = try_mem!(read(&c, up, ul));
            let service = try_mem!(read(&c, sp, sl));
            let method = try_mem!(read(&c, mp, ml));
            let meta = try_mem!(read(&c, ip, il));
            let msg = try_mem!(read(&c, msgp, msgl));
            let Some((cluster, headers)) = grpc_request(&c, &upstream, &service, &method, &meta)
            else {
                return Ok(BAD_ARGUMENT);
            };
            dispatch(
                &mut c,
                cluster,
                headers,
                grpc_frame(&msg),
                timeout,
                CallKind::Grpc,
                token_ptr,
            )
        },
    )?;
    l.func_wrap(
        E,
        "proxy_grpc_stream",
        |mut c: C,
         up: i32,
         ul: i32,
         sp: i32,
         sl: i32,
         mp: i32,
         ml: i32,
         ip: i32,
         il: i32,
         token_ptr: i32|
         -> R {
            let upstream = try_mem!(read(&c, up, ul));
            let service = try_mem!(read(&c, sp, sl));
            let method = try_mem!(read(&c, mp, ml));
            let meta = try_mem!(read(&c, ip, il));
            let Some((cluster, headers)) = grpc_request(&c, &upstream, &service, &method, &meta)
            else {
                return Ok(BAD_ARGUMENT);
            };
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let cancel = std::sync::Arc::new(tokio::sync::Notify::new());
            let token = c.data().next_token;
            c.data_mut().streams.insert(
                token,
                StreamHandle {
                    tx,
                    cancel: cancel.clone(),
                },
            );
            let status = dispatch(
                &mut c,
                cluster,
                headers,
                Bytes::new(),
                0,
                CallKind::GrpcStream,
                token_ptr,
            )?;
            if let Some(call) = c.data_mut().effects.calls.last_mut() {
                call.stream = Some((rx, cancel));
            }
            Ok(status)
        },
    )?;
    l.func_wrap(
        E,
        "proxy_grpc_send",
        |c: C, token: i32, p: i32, len: i32, end: i32| -> R {
            let msg = try_mem!(read(&c, p, len));
            let Some(h) = c.data().streams.get(&(token as u32)) else {
                return Ok(NOT_FOUND);
            };
            let _ = h.tx.send(StreamMsg::Data(grpc_frame(&msg)));
            if end != 0 {
                let _ = h.tx.send(StreamMsg::End);
            }
            Ok(OK)
        },
    )?;
    // Cancel: no more callbacks for the stream; close: half-close our side.
    l.func_wrap(E, "proxy_grpc_cancel", |mut c: C, token: i32| -> R {
        match c.data_mut().streams.remove(&(token as u32)) {
            Some(h) => {
                h.cancel.notify_one();
                Ok(OK)
            }
            None => Ok(NOT_FOUND),
        }
    })?;
    l.func_wrap(E, "proxy_grpc_close", |c: C, token: i32| -> R {
        match c.data().streams.get(&(token as u32)) {
            Some(h) => {
                let _ = h.tx.send(StreamMsg::End);
                Ok(OK)
            }
            None => Ok(NOT_FOUND),
        }
    })?;
    l.func_wrap(
        E,
        "proxy_get_status",
        |mut c: C, code_ptr: i32, ptr_ptr: i32, size_ptr: i32| -> R {
            let st = c.data();
            let status = st
                .grpc_status
                .clone()
                .or_else(|| st.call.as_ref().map(|r| r.grpc_status.clone()));
            let Some((code, msg)) = status else {
                return Ok(NOT_FOUND);
            };
            if !write_u32(&mut c, code_ptr, code) {
                return Ok(INVALID_MEMORY_ACCESS);
            }
            give(&mut c, &msg, ptr_ptr, size_ptr)
        },
    )?;
    l.func_wrap(
        E,
        "proxy_get_shared_data",
        |mut c: C, kp: i32, kl: i32, ptr_ptr: i32, size_ptr: i32, cas_ptr: i32| -> R {
            let key = try_mem!(read(&c, kp, kl));
            let Some((v, cas)) = shared::get(&c.data().plugin.vm_id, &key) else {
                return Ok(NOT_FOUND);
            };
            if !write_u32(&mut c, cas_ptr, cas) {
                return Ok(INVALID_MEMORY_ACCESS);
            }
            give(&mut c, &v, ptr_ptr, size_ptr)
        },
    )?;
    l.func_wrap(
        E,
        "proxy_set_shared_data",
        |c: C, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32| -> R {
            let key = try_mem!(read(&c, kp, kl));
            let value = try_mem!(read(&c, vp, vl));
            Ok(
                match shared::set(&c.data().plugin.vm_id, &key, Bytes::from(value), cas as u32) {
                    Ok(()) => OK,
                    Err(()) => CAS_MISMATCH,
                },
            )
        },
    )?;
    l.func_wrap(
        E,
        "proxy_register_shared_queue",
        |mut c: C, np: i32, nl: i32, id_ptr: i32| -> R {
            let name = try_mem!(read(&c, np, nl));
            let st = c.data();
            let id = shared::register_queue(
                &st.plugin.vm_id,
                &String::from_utf8_lossy(&name),
                st.queue_owner.clone(),
            );
            Ok(if write_u32(&mut c, id_ptr, id) {
                OK
            } else {
                INVALID_MEMORY_ACCESS
            })
        },
    )?;
    l.func_wrap(
        E,
        "proxy_resolve_shared_queue",
        |mut c: C, vp: i32, vl: i32, np: i32, nl: i32, id_ptr: i32| -> R {
            let vm_id = try_mem!(read(&c, vp, vl));
            let name = try_mem!(read(&c, np, nl));
            match shared::resolve_queue(
                &String::from_utf8_lossy(&vm_id),
                &String::from_utf8_lossy(&name),
            ) {
                Some(id) => Ok(if write_u32(&mut c, id_ptr, id) {
                    OK
                } else {
                    INVALID_MEMORY_ACCESS
                }),
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    l.func_wrap(
        E,
        "proxy_enqueue_shared_queue",
        |c: C, id: i32, vp: i32, vl: i32| -> R {
            let v = try_mem!(read(&c, vp, vl));
            Ok(if shared::enqueue(id as u32, Bytes::from(v)) {
                OK
            } else {
                NOT_FOUND
            })
        },
    )?;
    l.func_wrap(
        E,
        "proxy_dequeue_shared_queue",
        |mut c: C, id: i32, ptr_ptr: i32, size_ptr: i32| -> R {
            match shared::dequeue(id as u32) {
                Err(()) => Ok(NOT_FOUND),
                Ok(None) => Ok(EMPTY),
                Ok(Some(v)) => give(&mut c, &v, ptr_ptr, size_ptr),
            }
        },
    )?;
    l.func_wrap(
        E,
        "proxy_define_metric",
        |mut c: C, kind: i32, np: i32, nl: i32, id_ptr: i32| -> R {
            let name = try_mem!(read(&c, np, nl));
            let key = (kind as u32, String::from_utf8_lossy(&name).into_owned());
            // Defining a metric again gives the same id, as in Envoy.
            let id = match c.data().metric_ids.get(&key) {
                Some(&id) => id,
                None => {
                    let Some(m) = shared::metric(key.0, &key.1) else {
                        return Ok(BAD_ARGUMENT);
                    };
                    let st = c.data_mut();
                    st.metrics.push(m);
                    let id = st.metrics.len() as u32;
                    st.metric_ids.insert(key, id);
                    id
                }
            };
            Ok(if write_u32(&mut c, id_ptr, id) {
                OK
            } else {
                INVALID_MEMORY_ACCESS
            })
        },
    )?;
    l.func_wrap(E, "proxy_record_metric", |c: C, id: i32, v: i64| -> R {
        let Some(m) = (id as u32)
            .checked_sub(1)
            .and_then(|i| c.data().metrics.get(i as usize))
        else {
            return Ok(NOT_FOUND);
        };
        match m {
            shared::Metric::Counter(ctr) => {
                let cur = ctr.value();
                ctr.add((v as u64).saturating_sub(cur));
            }
            shared::Metric::Gauge(g) => g.set(v),
            shared::Metric::Histogram(h) => h.record(v as f64),
        }
        Ok(OK)
    })?;
    l.func_wrap(E, "proxy_increment_metric", |c: C, id: i32, v: i64| -> R {
        let Some(m) = (id as u32)
            .checked_sub(1)
            .and_then(|i| c.data().metrics.get(i as usize))
        else {
            return Ok(NOT_FOUND);
        };
        match m {
            shared::Metric::Counter(ctr) if v >= 0 => ctr.add(v as u64),
            shared::Metric::Gauge(g) => g.add(v),
            _ => return Ok(BAD_ARGUMENT),
        }
        Ok(OK)
    })?;
    l.func_wrap(E, "proxy_get_metric", |mut c: C, id: i32, ptr: i32| -> R {
        let Some(m) = (id as u32)
            .checked_sub(1)
            .and_then(|i| c.data().metrics.get(i as usize))
        else {
            return Ok(NOT_FOUND);
        };
        let v = match m {
            shared::Metric::Counter(ctr) => ctr.value(),
            shared::Metric::Gauge(g) => g.value() as u64,
            shared::Metric::Histogram(_) => return Ok(BAD_ARGUMENT),
        };
        Ok(if write_u64(&mut c, ptr, v) {
            OK
        } else {
            INVALID_MEMORY_ACCESS
        })
    })?;
    l.func_wrap(
        E,
        "proxy_get_property",
        |mut c: C, pp: i32, pl: i32, ptr_ptr: i32, size_ptr: i32| -> R {
            let path = try_mem!(read(&c, pp, pl));
            match super::properties::get(&c.data().plugin, &c.data().stream, &path) {
                Some(v) => give(&mut c, &v, ptr_ptr, size_ptr),
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    l.func_wrap(
        E,
        "proxy_set_property",
        |mut c: C, pp: i32, pl: i32, vp: i32, vl: i32| -> R {
            let path = try_mem!(read(&c, pp, pl));
            let value = try_mem!(read(&c, vp, vl));
            c.data_mut()
                .stream
                .properties
                .insert(path, Bytes::from(value));
            Ok(OK)
        },
    )?;
    l.func_wrap(
        E,
        "proxy_call_foreign_function",
        |mut c: C, np: i32, nl: i32, ap: i32, al: i32, rp: i32, rl: i32| -> R {
            let name = try_mem!(read(&c, np, nl));
            let args = try_mem!(read(&c, ap, al));
            let limit = c.data().plugin.limits.max_memory_bytes;
            if name == b"clear_route_cache" {
                c.data_mut().stream.clear_route_cache();
            }
            match foreign(&name, &args, limit) {
                Ok(out) => give(&mut c, &out, rp, rl),
                Err(status) => Ok(status),
            }
        },
    )?;
    l.func_wrap(
        E,
        "proxy_set_effective_context",
        |mut c: C, ctx: i32| -> R {
            if ctx == 0 {
                return Ok(BAD_ARGUMENT);
            }
            c.data_mut().effective = ctx as u32;
            Ok(OK)
        },
    )?;
    l.func_wrap(
        E,
        "proxy_get_configuration",
        |mut c: C, ptr_ptr: i32, size_ptr: i32| -> R {
            let cfg = c.data().plugin.configuration.clone();
            give(&mut c, &cfg, ptr_ptr, size_ptr)
        },
    )?;
    Ok(())
}

/// The cluster and request headers of a gRPC call or stream.
fn grpc_request(
    c: &C,
    upstream: &[u8],
    service: &[u8],
    method: &[u8],
    meta: &[u8],
) -> Option<(String, Vec<(Bytes, Bytes)>)> {
    let cluster = grpc_cluster(upstream, &c.data().cluster_names)?;
    if !c.data().cluster_names.contains(&cluster) {
        return None;
    }
    let meta = deserialize(meta)?;
    let mut path = b"/".to_vec();
    path.extend_from_slice(service);
    path.push(b'/');
    path.extend_from_slice(method);
    let mut headers = vec![
        (Bytes::from_static(b":method"), Bytes::from_static(b"POST")),
        (Bytes::from_static(b":path"), Bytes::from(path)),
        (
            Bytes::from_static(b"content-type"),
            Bytes::from_static(b"application/grpc"),
        ),
        (Bytes::from_static(b"te"), Bytes::from_static(b"trailers")),
    ];
    headers.extend(meta);
    Some((cluster, headers))
}

fn dispatch(
    c: &mut C,
    cluster: String,
    headers: Vec<(Bytes, Bytes)>,
    body: Bytes,
    timeout_ms: i32,
    kind: CallKind,
    token_ptr: i32,
) -> R {
    let st = c.data_mut();
    let token = st.next_token;
    st.next_token = st.next_token.wrapping_add(1).max(1);
    let context = st.effective;
    st.effects.calls.push(OutCall {
        token,
        context,
        cluster,
        headers,
        body,
        timeout: std::time::Duration::from_millis((timeout_ms as u32).max(1) as u64),
        kind,
        stream: None,
    });
    Ok(if write_u32(c, token_ptr, token) {
        OK
    } else {
        INVALID_MEMORY_ACCESS
    })
}

fn wasi(l: &mut Linker<HostState>, ns: &str) -> wasmtime::Result<()> {
    l.func_wrap(
        ns,
        "fd_write",
        |mut c: C, fd: i32, iovs: i32, n: i32, written: i32| -> R {
            let mut out = Vec::new();
            for i in 0..n {
                let Some(iov) = read(&c, iovs + i * 8, 8) else {
                    return Ok(ERRNO_BADF);
                };
                let p = u32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]) as i32;
                let len = u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]) as i32;
                match read(&c, p, len) {
                    Some(b) => out.extend_from_slice(&b),
                    None => return Ok(ERRNO_BADF),
                }
            }
            let text = String::from_utf8_lossy(&out);
            let text = text.trim_end();
            let plugin = c.data().plugin.name.as_str();
            match fd {
                1 => tracing::info!(target: "wasm", plugin, "{text}"),
                2 => tracing::error!(target: "wasm", plugin, "{text}"),
                _ => return Ok(ERRNO_BADF),
            }
            write_u32(&mut c, written, out.len() as u32);
            Ok(ERRNO_SUCCESS)
        },
    )?;
    l.func_wrap(
        ns,
        "fd_read",
        |mut c: C, _fd: i32, _iovs: i32, _n: i32, nread: i32| -> R {
            write_u32(&mut c, nread, 0);
            Ok(ERRNO_SUCCESS)
        },
    )?;
    l.func_wrap(ns, "fd_close", |_c: C, _fd: i32| -> R { Ok(ERRNO_SUCCESS) })?;
    l.func_wrap(
        ns,
        "fd_seek",
        |_c: C, _fd: i32, _off: i64, _w: i32, _p: i32| -> R { Ok(ERRNO_SPIPE) },
    )?;
    l.func_wrap(ns, "fd_fdstat_get", |mut c: C, fd: i32, ptr: i32| -> R {
        if !(0..=2).contains(&fd) {
            return Ok(ERRNO_BADF);
        }
        // filetype 2 (character device), no flags, no rights.
        let mut stat = [0u8; 24];
        stat[0] = 2;
        write(&mut c, ptr, &stat);
        Ok(ERRNO_SUCCESS)
    })?;
    l.func_wrap(ns, "fd_prestat_get", |_c: C, _fd: i32, _p: i32| -> R {
        Ok(ERRNO_BADF)
    })?;
    l.func_wrap(
        ns,
        "fd_prestat_dir_name",
        |_c: C, _fd: i32, _p: i32, _l: i32| -> R { Ok(ERRNO_BADF) },
    )?;
    l.func_wrap(
        ns,
        "environ_sizes_get",
        |mut c: C, count: i32, size: i32| -> R {
            let env = &c.data().plugin.environment;
            let n = env.len() as u32;
            let total: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
            write_u32(&mut c, count, n);
            write_u32(&mut c, size, total as u32);
            Ok(ERRNO_SUCCESS)
        },
    )?;
    l.func_wrap(ns, "environ_get", |mut c: C, ptrs: i32, buf: i32| -> R {
        let env = c.data().plugin.environment.clone();
        let mut at = buf;
        for (i, (k, v)) in env.iter().enumerate() {
            let entry = format!("{k}={v}\0");
            write_u32(&mut c, ptrs + 4 * i as i32, at as u32);
            write(&mut c, at, entry.as_bytes());
            at += entry.len() as i32;
        }
        Ok(ERRNO_SUCCESS)
    })?;
    l.func_wrap(
        ns,
        "args_sizes_get",
        |mut c: C, count: i32, size: i32| -> R {
            write_u32(&mut c, count, 0);
            write_u32(&mut c, size, 0);
            Ok(ERRNO_SUCCESS)
        },
    )?;
    l.func_wrap(ns, "args_get", |_c: C, _a: i32, _b: i32| -> R {
        Ok(ERRNO_SUCCESS)
    })?;
    l.func_wrap(
        ns,
        "clock_time_get",
        |mut c: C, id: i32, _prec: i64, ptr: i32| -> R {
            let v = if id == 0 {
                now_nanos()
            } else {
                static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
                START
                    .get_or_init(std::time::Instant::now)
                    .elapsed()
                    .as_nanos() as u64
            };
            write_u64(&mut c, ptr, v);
            Ok(ERRNO_SUCCESS)
        },
    )?;
    l.func_wrap(ns, "clock_res_get", |mut c: C, _id: i32, ptr: i32| -> R {
        write_u64(&mut c, ptr, 1_000);
        Ok(ERRNO_SUCCESS)
    })?;
    l.func_wrap(ns, "random_get", |mut c: C, ptr: i32, len: i32| -> R {
        let mut b = vec![0u8; len as u32 as usize];
        if getrandom::fill(&mut b).is_err() {
            fastrand::fill(&mut b);
        }
        Ok(if write(&mut c, ptr, &b) {
            ERRNO_SUCCESS
        } else {
            ERRNO_BADF
        })
    })?;
    l.func_wrap(
        ns,
        "proc_exit",
        |_c: C, code: i32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::msg(format!(
                "the filter called proc_exit({code})"
            )))
        },
    )?;
    l.func_wrap(ns, "sched_yield", |_c: C| -> R { Ok(ERRNO_SUCCESS) })?;
    l.func_wrap(
        ns,
        "poll_oneoff",
        |_c: C, _a: i32, _b: i32, _n: i32, _p: i32| -> R { Ok(ERRNO_NOSYS) },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_match_names_in_any_case() {
        let mut h = HeaderMap::new();
        let mut names = HeaderScratch::default();
        for (key, op) in [
            (&b"X-Up"[..], Op::Replace),
            (b"x-up", Op::Add),
            (b"X-UP", Op::Add),
        ] {
            assert!(edit(&mut h, &mut names, &edit_key(key), b"v", op));
        }
        assert_eq!(h.get_all("x-up").iter().count(), 3);
        assert!(edit(
            &mut h,
            &mut names,
            &edit_key(b"x-UP"),
            b"",
            Op::Remove
        ));
        assert!(h.is_empty());
        // Pseudo-headers are compared lowercase, so only they are copied.
        assert_eq!(&*edit_key(b":PATH"), b":path");
        assert!(matches!(edit_key(b"X-Up"), std::borrow::Cow::Borrowed(_)));
    }
}
