//! The `legate:filter` host interfaces: log, metrics, shared-data, properties
//! and http-client.

use wasmtime::StoreContextMut;
use wasmtime::component::WasmList;

use super::*;
use crate::wasm::abi::{Op, edit, edit_key, request_pseudo, set_request_pseudo};
use crate::wasm::vm::StreamData;

/// Only ever lifted from the guest, never built here.
#[allow(dead_code)]
#[derive(ComponentType, Lift)]
#[component(enum)]
#[repr(u8)]
enum Level {
    #[component(name = "trace")]
    Trace,
    #[component(name = "debug")]
    Debug,
    #[component(name = "info")]
    Info,
    #[component(name = "warn")]
    Warn,
    #[component(name = "error")]
    Error,
}

#[derive(ComponentType, Lower)]
#[component(record)]
struct Entry {
    value: Vec<u8>,
    version: u32,
}

#[derive(ComponentType, Lift)]
#[component(record)]
struct WRequest {
    cluster: String,
    method: String,
    path: String,
    authority: String,
    headers: Vec<WHeader>,
    body: Vec<u8>,
    #[component(name = "timeout-ms")]
    timeout_ms: u32,
}

/// `message.map` (only ever lifted from the guest).
#[allow(dead_code)]
#[derive(ComponentType, Lift, Clone, Copy)]
#[component(enum)]
#[repr(u8)]
enum MapKind {
    #[component(name = "request-headers")]
    RequestHeaders,
    #[component(name = "request-trailers")]
    RequestTrailers,
    #[component(name = "response-headers")]
    ResponseHeaders,
    #[component(name = "response-trailers")]
    ResponseTrailers,
}

/// Passes the values of `name` in a map of the running hook to `each`, in
/// order, until it returns false.
fn map_get(d: &StreamData, map: MapKind, name: &str, each: &mut dyn FnMut(&[u8]) -> bool) {
    let values = |h: &::http::HeaderMap, each: &mut dyn FnMut(&[u8]) -> bool| {
        for v in h.get_all(name) {
            if !each(v.as_bytes()) {
                return;
            }
        }
    };
    match map {
        MapKind::RequestHeaders => match d.req.as_ref() {
            Some(h) if name.starts_with(':') => {
                if let Some(v) = request_pseudo(h, name.as_bytes()) {
                    each(v);
                }
            }
            Some(h) => values(&h.headers, each),
            None => {}
        },
        MapKind::ResponseHeaders => match d.resp.as_ref() {
            Some(h) if name.eq_ignore_ascii_case(":status") => {
                each(h.status.as_str().as_bytes());
            }
            Some(_) if name.starts_with(':') => {}
            Some(h) => values(&h.headers, each),
            None => {}
        },
        MapKind::RequestTrailers => {
            if let Some(t) = d.req_trailers.as_ref() {
                values(t, each)
            }
        }
        MapKind::ResponseTrailers => {
            if let Some(t) = d.resp_trailers.as_ref() {
                values(t, each)
            }
        }
    }
}

/// Every header of a map, pseudo-headers first.
fn map_entries(d: &StreamData, map: MapKind) -> Vec<WHeader> {
    let pairs = |h: &::http::HeaderMap, out: &mut Vec<WHeader>| {
        out.extend(h.iter().map(|(k, v)| WHeader {
            name: k.as_str().to_string(),
            value: v.as_bytes().to_vec(),
        }))
    };
    let mut out = Vec::new();
    match map {
        MapKind::RequestHeaders => {
            if let Some(h) = d.req.as_ref() {
                for p in [":method", ":path", ":authority", ":scheme"] {
                    if let Some(value) = request_pseudo(h, p.as_bytes()) {
                        out.push(WHeader {
                            name: p.to_string(),
                            value: value.to_vec(),
                        });
                    }
                }
                pairs(&h.headers, &mut out);
            }
        }
        MapKind::ResponseHeaders => {
            if let Some(h) = d.resp.as_ref() {
                out.push(WHeader {
                    name: ":status".into(),
                    value: h.status.as_str().as_bytes().to_vec(),
                });
                pairs(&h.headers, &mut out);
            }
        }
        MapKind::RequestTrailers => {
            if let Some(t) = d.req_trailers.as_ref() {
                pairs(t, &mut out);
            }
        }
        MapKind::ResponseTrailers => {
            if let Some(t) = d.resp_trailers.as_ref() {
                pairs(t, &mut out);
            }
        }
    }
    out
}

/// Changes a map of the running hook; false if the name or value is invalid
/// (a map the hook cannot reach ignores the change).
fn map_edit(st: &mut CState, map: MapKind, name: &[u8], value: &[u8], op: Op) -> bool {
    let names = &mut st.header_scratch;
    let d = &mut st.stream;
    let key = &*edit_key(name);
    match map {
        MapKind::RequestHeaders if d.req.is_none() => true,
        MapKind::RequestHeaders => {
            // As Envoy does when a Wasm filter edits request headers.
            d.clear_route_cache();
            match d.req.as_mut() {
                Some(h) if key.starts_with(b":") => set_request_pseudo(h, key, value, op),
                Some(h) => edit(&mut h.headers, names, key, value, op),
                None => true,
            }
        }
        MapKind::ResponseHeaders => match d.resp.as_mut() {
            Some(h) if key == b":status" => {
                match std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<u16>().ok())
                    .and_then(|v| ::http::StatusCode::from_u16(v).ok())
                {
                    Some(s) if !matches!(op, Op::Remove) => {
                        h.status = s;
                        true
                    }
                    _ => false,
                }
            }
            Some(_) if key.starts_with(b":") => false,
            Some(h) => edit(&mut h.headers, names, key, value, op),
            None => true,
        },
        MapKind::RequestTrailers => match d.req_trailers.as_mut() {
            Some(t) => edit(t, names, key, value, op),
            None => true,
        },
        MapKind::ResponseTrailers => match d.resp_trailers.as_mut() {
            Some(t) => edit(t, names, key, value, op),
            None => true,
        },
    }
}

/// A header edit with name and value read from guest memory into the store's
/// scratch buffers, so a steady stream of edits allocates nothing here.
fn edit_from_guest(
    mut c: StoreContextMut<'_, CState>,
    map: MapKind,
    name: &WasmList<u8>,
    value: Option<&WasmList<u8>>,
    op: Op,
) -> wasmtime::Result<bool> {
    let (mut key, mut val) = {
        let st = c.data_mut();
        (
            std::mem::take(&mut st.scratch.0),
            std::mem::take(&mut st.scratch.1),
        )
    };
    key.clear();
    val.clear();
    key.extend_from_slice(name.as_le_slice(&c));
    if let Some(v) = value {
        val.extend_from_slice(v.as_le_slice(&c));
    }
    let ok = map_edit(c.data_mut(), map, &key, &val, op);
    c.data_mut().scratch = (key, val);
    Ok(ok)
}

/// Host-side types of the metric resources.
struct CounterRes;
struct GaugeRes;
struct HistogramRes;

fn log(st: &CState, level: Level, msg: &str) {
    let plugin = &st.plugin.name;
    match level {
        Level::Trace => tracing::trace!(plugin = %plugin, "{msg}"),
        Level::Debug => tracing::debug!(plugin = %plugin, "{msg}"),
        Level::Info => tracing::info!(plugin = %plugin, "{msg}"),
        Level::Warn => tracing::warn!(plugin = %plugin, "{msg}"),
        Level::Error => tracing::error!(plugin = %plugin, "{msg}"),
    }
}

fn enabled(level: Level) -> bool {
    match level {
        Level::Trace => tracing::enabled!(tracing::Level::TRACE),
        Level::Debug => tracing::enabled!(tracing::Level::DEBUG),
        Level::Info => tracing::enabled!(tracing::Level::INFO),
        Level::Warn => tracing::enabled!(tracing::Level::WARN),
        Level::Error => tracing::enabled!(tracing::Level::ERROR),
    }
}

fn define_metric(st: &mut CState, kind: u32, name: &str) -> wasmtime::Result<u32> {
    let m =
        shared::metric(kind, name).ok_or_else(|| wasmtime::Error::msg("unknown metric kind"))?;
    st.metrics.push(m);
    Ok(st.metrics.len() as u32 - 1)
}

fn metric(st: &CState, rep: u32) -> wasmtime::Result<&Metric> {
    st.metrics
        .get(rep as usize)
        .ok_or_else(|| wasmtime::Error::msg("unknown metric handle"))
}

/// A new outbound call, checked and queued for the filter to start.
fn send(st: &mut CState, req: WRequest) -> Result<u32, WCallError> {
    if !st.calls_allowed {
        return Err(WCallError::NotAllowed);
    }
    if !st.cluster_names.contains(&req.cluster) {
        return Err(WCallError::UnknownCluster(req.cluster));
    }
    if ::http::Method::from_bytes(req.method.as_bytes()).is_err() {
        return Err(WCallError::InvalidRequest(format!(
            "bad method {:?}",
            req.method
        )));
    }
    if !req.path.starts_with('/') {
        return Err(WCallError::InvalidRequest(format!(
            "path {:?} does not start with /",
            req.path
        )));
    }
    let mut headers = vec![
        (Bytes::from_static(b":method"), Bytes::from(req.method)),
        (Bytes::from_static(b":path"), Bytes::from(req.path)),
    ];
    if !req.authority.is_empty() {
        headers.push((
            Bytes::from_static(b":authority"),
            Bytes::from(req.authority),
        ));
    }
    for h in req.headers {
        if h.name.starts_with(':') {
            return Err(WCallError::InvalidRequest(format!(
                "pseudo-header {} in headers",
                h.name
            )));
        }
        headers.push((Bytes::from(h.name), Bytes::from(h.value)));
    }
    let token = st.next_call;
    st.next_call = st.next_call.wrapping_add(1).max(1);
    st.calls.push(OutCall {
        token,
        stream: None,
        context: 0,
        cluster: req.cluster,
        headers,
        body: Bytes::from(req.body),
        timeout: Duration::from_millis(u64::from(req.timeout_ms.max(1))),
        kind: CallKind::Http,
    });
    Ok(token)
}

/// Defines the host interface `iface` under the name the component imports.
pub(super) fn define(linker: &mut Linker<CState>, name: &str, iface: &str) -> wasmtime::Result<()> {
    let mut i = linker.instance(name)?;
    match iface {
        "types" => {}
        "message" => {
            // Names are bytes; lookups need them as `str`, edits check them
            // as HTTP tokens (stricter than UTF-8).
            i.func_wrap("get", |c, (map, name): (MapKind, WasmList<u8>)| {
                let name = std::str::from_utf8(name.as_le_slice(&c)).unwrap_or("");
                let mut first = None;
                map_get(&c.data().stream, map, name, &mut |v| {
                    first = Some(v.to_vec());
                    false
                });
                Ok((first,))
            })?;
            i.func_wrap("get-all", |c, (map, name): (MapKind, WasmList<u8>)| {
                let name = std::str::from_utf8(name.as_le_slice(&c)).unwrap_or("");
                let mut all = Vec::new();
                map_get(&c.data().stream, map, name, &mut |v| {
                    all.push(v.to_vec());
                    true
                });
                Ok((all,))
            })?;
            i.func_wrap("entries", |c, (map,): (MapKind,)| {
                Ok((map_entries(&c.data().stream, map),))
            })?;
            i.func_wrap(
                "set",
                |c, (map, name, value): (MapKind, WasmList<u8>, WasmList<u8>)| {
                    edit_from_guest(c, map, &name, Some(&value), Op::Replace).map(|ok| (ok,))
                },
            )?;
            i.func_wrap(
                "append",
                |c, (map, name, value): (MapKind, WasmList<u8>, WasmList<u8>)| {
                    edit_from_guest(c, map, &name, Some(&value), Op::Add).map(|ok| (ok,))
                },
            )?;
            i.func_wrap("remove", |c, (map, name): (MapKind, WasmList<u8>)| {
                edit_from_guest(c, map, &name, None, Op::Remove).map(|_| ())
            })?;
            i.func_wrap("body", |c, ()| {
                let body = c.data().stream.body.as_ref();
                Ok((body.map(|(_, b)| b.to_vec()).unwrap_or_default(),))
            })?;
            i.func_wrap("respond", |mut c, (reply,): (WLocalReply,)| {
                c.data_mut().reply = Some(reply);
                Ok(())
            })?;
            i.func_wrap("set-body", |mut c, (data,): (Vec<u8>,)| {
                if let Some((_, b)) = c.data_mut().stream.body.as_mut() {
                    *b = Bytes::from(data);
                }
                Ok(())
            })?;
        }
        "log" => {
            i.func_wrap("write", |c, (level, msg): (Level, String)| {
                log(c.data(), level, &msg);
                Ok(())
            })?;
            i.func_wrap("enabled", |_, (level,): (Level,)| Ok((enabled(level),)))?;
        }
        "metrics" => {
            i.resource("counter", ResourceType::host::<CounterRes>(), |_, _| Ok(()))?;
            i.resource("gauge", ResourceType::host::<GaugeRes>(), |_, _| Ok(()))?;
            i.resource("histogram", ResourceType::host::<HistogramRes>(), |_, _| {
                Ok(())
            })?;
            i.func_wrap("[constructor]counter", |mut c, (name,): (String,)| {
                let rep = define_metric(c.data_mut(), 0, &name)?;
                Ok((Resource::<CounterRes>::new_own(rep),))
            })?;
            i.func_wrap(
                "[method]counter.increment",
                |c, (r, d): (Resource<CounterRes>, u64)| {
                    if let Metric::Counter(m) = metric(c.data(), r.rep())? {
                        m.add(d);
                    }
                    Ok(())
                },
            )?;
            i.func_wrap(
                "[method]counter.value",
                |c, (r,): (Resource<CounterRes>,)| match metric(c.data(), r.rep())? {
                    Metric::Counter(m) => Ok((m.value(),)),
                    _ => Ok((0,)),
                },
            )?;
            i.func_wrap("[constructor]gauge", |mut c, (name,): (String,)| {
                let rep = define_metric(c.data_mut(), 1, &name)?;
                Ok((Resource::<GaugeRes>::new_own(rep),))
            })?;
            i.func_wrap(
                "[method]gauge.set",
                |c, (r, v): (Resource<GaugeRes>, i64)| {
                    if let Metric::Gauge(m) = metric(c.data(), r.rep())? {
                        m.set(v);
                    }
                    Ok(())
                },
            )?;
            i.func_wrap(
                "[method]gauge.add",
                |c, (r, v): (Resource<GaugeRes>, i64)| {
                    if let Metric::Gauge(m) = metric(c.data(), r.rep())? {
                        m.add(v);
                    }
                    Ok(())
                },
            )?;
            i.func_wrap(
                "[method]gauge.value",
                |c, (r,): (Resource<GaugeRes>,)| match metric(c.data(), r.rep())? {
                    Metric::Gauge(m) => Ok((m.value(),)),
                    _ => Ok((0,)),
                },
            )?;
            i.func_wrap("[constructor]histogram", |mut c, (name,): (String,)| {
                let rep = define_metric(c.data_mut(), 2, &name)?;
                Ok((Resource::<HistogramRes>::new_own(rep),))
            })?;
            i.func_wrap(
                "[method]histogram.record-value",
                |c, (r, v): (Resource<HistogramRes>, u64)| {
                    if let Metric::Histogram(m) = metric(c.data(), r.rep())? {
                        m.record(v as f64);
                    }
                    Ok(())
                },
            )?;
        }
        "shared-data" => {
            i.func_wrap("get", |c, (key,): (String,)| {
                let e =
                    shared::get(&c.data().plugin.vm_id, key.as_bytes()).map(|(value, version)| {
                        Entry {
                            value: value.to_vec(),
                            version,
                        }
                    });
                Ok((e,))
            })?;
            i.func_wrap("set", |c, (key, value): (String, Vec<u8>)| {
                let _ = shared::set(&c.data().plugin.vm_id, key.as_bytes(), value.into(), 0);
                Ok(())
            })?;
            i.func_wrap(
                "compare-and-swap",
                |c, (key, expected, value): (String, Option<u32>, Vec<u8>)| {
                    let vm_id = &c.data().plugin.vm_id;
                    let ok = match expected {
                        None => shared::create(vm_id, key.as_bytes(), value.into()),
                        Some(0) => false,
                        Some(v) => shared::set(vm_id, key.as_bytes(), value.into(), v).is_ok(),
                    };
                    Ok((ok,))
                },
            )?;
        }
        "properties" => {
            i.func_wrap("get", |c, (path,): (Vec<String>,)| {
                let st = c.data();
                let joined = path.join("\0");
                Ok((super::super::properties::get(
                    &st.plugin,
                    &st.stream,
                    joined.as_bytes(),
                ),))
            })?;
        }
        "http-client" => {
            i.func_wrap("send", |mut c, (req,): (WRequest,)| {
                Ok((send(c.data_mut(), req),))
            })?;
        }
        _ => return Err(wasmtime::Error::msg(format!("no host interface {iface}"))),
    }
    Ok(())
}
