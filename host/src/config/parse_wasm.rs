//! `envoy.extensions.wasm.v3.PluginConfig` as used by the HTTP and network Wasm
//! filters and by `envoy.bootstrap.wasm`, plus Legate's limits.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;

use super::model::{FailurePolicy, WasmLimits, WasmPlugin, WasmService};
use super::typed_config;
use super::walk::{Field, Obj};

pub(crate) use crate::wasm::Role;

const STRING_VALUE: &str = "type.googleapis.com/google.protobuf.StringValue";
const BYTES_VALUE: &str = "type.googleapis.com/google.protobuf.BytesValue";
const STRUCT: &str = "type.googleapis.com/google.protobuf.Struct";

/// `{config: PluginConfig}` of `envoy.filters.http.wasm` / `envoy.filters.network.wasm`.
pub(crate) fn filter(mut o: Obj<'_>, role: Role) -> Option<Arc<WasmPlugin>> {
    let config = o.req("config").and_then(|c| plugin(&c, role));
    o.finish();
    config.map(Arc::new)
}

/// `envoy.bootstrap.wasm`'s `WasmService`.
pub(crate) fn service(mut o: Obj<'_>) -> Option<WasmService> {
    let plugin = o.req("config").and_then(|c| plugin(&c, Role::Service));
    let singleton = o.get("singleton").and_then(|g| g.bool()).unwrap_or(false);
    if !singleton {
        o.error(
            "envoy.bootstrap.wasm needs \"singleton: true\" in legate (per-worker services are not supported)",
        );
    }
    o.finish();
    Some(WasmService {
        plugin: Arc::new(plugin?),
    })
}

fn plugin(f: &Field<'_>, role: Role) -> Option<WasmPlugin> {
    let mut o = f.obj()?.unsupported(&["capability_restriction_config"]);
    let name = o.get("name").and_then(|g| g.str()).unwrap_or_default();
    let root_id = o.get("root_id").and_then(|g| g.str()).unwrap_or_default();
    let configuration = o.get("configuration").and_then(|g| any_bytes(&g));
    let fail_open = o.get("fail_open").and_then(|g| g.bool());
    let policy = o.get("failure_policy").and_then(|g| {
        g.enumeration(
            &["UNSPECIFIED", "FAIL_CLOSED", "FAIL_OPEN", "FAIL_RELOAD"],
            &[],
        )
    });
    let backoff = o.get("reload_config").and_then(|g| reload_config(&g));
    let limits = o
        .get("legate_limits")
        .and_then(|g| limits(&g))
        .unwrap_or_default();
    let vm = o.req("vm_config").and_then(|g| vm_config(&g, role));
    o.finish();
    let failure_policy = match (policy, fail_open) {
        (Some("FAIL_OPEN"), _) => FailurePolicy::FailOpen,
        (Some("FAIL_RELOAD"), _) => FailurePolicy::FailReload,
        (Some("FAIL_CLOSED"), _) => FailurePolicy::FailClosed,
        (_, Some(true)) => FailurePolicy::FailOpen,
        _ => FailurePolicy::FailClosed,
    };
    let vm = vm?;
    Some(WasmPlugin {
        name,
        root_id,
        vm_id: vm.vm_id,
        runtime: vm.runtime,
        code: vm.code,
        code_path: vm.code_path,
        vm_configuration: vm.configuration,
        configuration: configuration.unwrap_or_default(),
        environment: vm.environment,
        failure_policy,
        reload_backoff: backoff.unwrap_or((Duration::from_secs(1), Duration::from_secs(10))),
        limits,
    })
}

struct Vm {
    vm_id: String,
    runtime: String,
    code: Arc<crate::wasm::Code>,
    code_path: Option<PathBuf>,
    configuration: Bytes,
    environment: Vec<(String, String)>,
}

fn vm_config(f: &Field<'_>, role: Role) -> Option<Vm> {
    let mut o = f.obj()?;
    let vm_id = o.get("vm_id").and_then(|g| g.str()).unwrap_or_default();
    let runtime = o.get("runtime").and_then(|g| g.str()).unwrap_or_default();
    if let Some(r) = o.get("runtime").filter(|_| !runtime.is_empty())
        && !runtime.starts_with("envoy.wasm.runtime.")
    {
        r.error(format!(
            "unknown Wasm runtime \"{runtime}\" (expected an envoy.wasm.runtime.* name; legate runs every one on wasmtime)"
        ));
    }
    let code = o.req("code").and_then(|g| code(&g, role));
    let configuration = o.get("configuration").and_then(|g| any_bytes(&g));
    let _ = o.get("allow_precompiled").and_then(|g| g.bool());
    let _ = o.get("nack_on_code_cache_miss").and_then(|g| g.bool());
    let environment = o
        .get("environment_variables")
        .map(|g| environment(&g))
        .unwrap_or_default();
    o.finish();
    let (code, code_path) = code?;
    Some(Vm {
        vm_id,
        runtime,
        code,
        code_path,
        configuration: configuration.unwrap_or_default(),
        environment,
    })
}

/// `code: {local: {filename | inline_bytes | inline_string}}`, compiled now so a
/// bad module fails the config at the field that names it.
fn code(f: &Field<'_>, role: Role) -> Option<(Arc<crate::wasm::Code>, Option<PathBuf>)> {
    let mut o = f.obj()?.unsupported(&["remote"]);
    let local = o.req("local");
    o.finish();
    let local = local?;
    let mut l = local
        .obj()?
        .unsupported(&["environment_variable", "watched_directory"]);
    let src = l.one_of(&["filename", "inline_bytes", "inline_string"]);
    l.finish();
    let Some((kind, g)) = src else {
        local.error("missing one of \"filename\", \"inline_bytes\", \"inline_string\"");
        return None;
    };
    let (bytes, path) = match kind {
        "filename" => {
            let p = PathBuf::from(g.str()?);
            match std::fs::read(&p) {
                Ok(b) => (b, Some(p)),
                Err(e) => {
                    g.error(format!("cannot read Wasm module \"{}\": {e}", p.display()));
                    return None;
                }
            }
        }
        "inline_bytes" => match base64::engine::general_purpose::STANDARD.decode(g.str()?) {
            Ok(b) => (b, None),
            Err(e) => {
                g.error(format!("inline_bytes is not valid base64: {e}"));
                return None;
            }
        },
        _ => (g.str()?.into_bytes(), None),
    };
    match crate::wasm::Code::compile(&bytes).and_then(|c| c.fits(role).map(|()| c)) {
        Ok(c) => Some((c, path)),
        Err(e) => {
            g.error(e);
            None
        }
    }
}

fn environment(f: &Field<'_>) -> Vec<(String, String)> {
    let Some(mut o) = f.obj() else {
        return Vec::new();
    };
    let mut env = Vec::new();
    if let Some(keys) = o.get("host_env_keys") {
        for k in keys.strings() {
            if let Ok(v) = std::env::var(&k) {
                env.push((k, v));
            }
        }
    }
    if let Some(kv) = o.get("key_values") {
        for (k, v) in kv.map_entries() {
            if let Some(v) = v.str() {
                env.push((k, v));
            }
        }
    }
    o.finish();
    env
}

/// A `google.protobuf.Any` configuration: StringValue and BytesValue pass their
/// bytes raw, Struct becomes JSON, as Envoy hands them to the plugin.
fn any_bytes(f: &Field<'_>) -> Option<Bytes> {
    let tc = typed_config(f)?;
    let mut o = tc.obj;
    let out = match tc.type_url.as_str() {
        STRING_VALUE => o
            .get("value")
            .and_then(|g| g.str())
            .map(Bytes::from)
            .or(Some(Bytes::new())),
        BYTES_VALUE => match o.get("value").and_then(|g| g.str()) {
            None => Some(Bytes::new()),
            Some(s) => match base64::engine::general_purpose::STANDARD.decode(&s) {
                Ok(b) => Some(Bytes::from(b)),
                Err(e) => {
                    f.error(format!("BytesValue value is not valid base64: {e}"));
                    None
                }
            },
        },
        STRUCT => {
            let json = o.get("value").map(|g| g.node.to_json());
            let json = json.unwrap_or(serde_json::Value::Object(Default::default()));
            Some(Bytes::from(json.to_string()))
        }
        other => {
            f.error(format!(
                "unsupported configuration type \"{other}\" (expected {STRING_VALUE}, {BYTES_VALUE} or {STRUCT})"
            ));
            return None;
        }
    };
    o.finish();
    out
}

fn reload_config(f: &Field<'_>) -> Option<(Duration, Duration)> {
    let mut o = f.obj()?;
    let b = o.get("backoff");
    o.finish();
    let mut b = b?.obj()?;
    let base = b
        .req("base_interval")
        .and_then(|g| g.duration())
        .unwrap_or(Duration::from_secs(1));
    let max = b
        .get("max_interval")
        .and_then(|g| g.duration())
        .unwrap_or(base * 10);
    b.finish();
    Some((base, max.max(base)))
}

/// Legate's own limits (`legate_limits`), refused by Envoy: configs that use them
/// are Legate-only.
fn limits(f: &Field<'_>) -> Option<WasmLimits> {
    let mut o = f.obj()?;
    let mut l = WasmLimits::default();
    if let Some(g) = o.get("max_memory_bytes") {
        l.max_memory_bytes = g.u64()? as usize;
    }
    if let Some(g) = o.get("max_callback_duration") {
        l.max_callback_duration = g.duration()?;
    }
    if let Some(g) = o.get("max_buffered_body_bytes") {
        l.max_buffered_body_bytes = g.u64()? as usize;
    }
    o.finish();
    Some(l)
}

/// The type URLs of the Wasm filters and service.
pub(crate) const HTTP_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
pub(crate) const NETWORK_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm";
pub(crate) const SERVICE_TYPE: &str = "type.googleapis.com/envoy.extensions.wasm.v3.WasmService";
