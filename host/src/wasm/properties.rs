//! `proxy_get_property`: paths are segments joined by NUL; strings are raw bytes,
//! integers 8-byte little-endian, as in Envoy.

use std::net::SocketAddr;

use super::snapshot::Snapshot;
use super::vm::StreamData;
use crate::config::WasmPlugin;

fn int(v: i64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn text(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

pub fn get(plugin: &WasmPlugin, d: &StreamData, path: &[u8]) -> Option<Vec<u8>> {
    if let Some(v) = d.properties.get(path) {
        return Some(v.to_vec());
    }
    let path = std::str::from_utf8(path).ok()?;
    let segs: Vec<&str> = path.split('\0').filter(|s| !s.is_empty()).collect();
    let addrs: Option<(SocketAddr, SocketAddr, u64)> = d
        .info
        .as_ref()
        .map(|i| {
            (
                i.downstream_remote_address,
                i.downstream_local_address,
                i.connection_id,
            )
        })
        .or_else(|| d.conn.map(|c| (c.remote, c.local, c.id)));
    // The live head during its callback, else the snapshot taken after it.
    let req = d.req.as_ref().map(Snapshot::request);
    let req = req.as_ref().or(d.req_seen.taken());
    let resp = d.resp.as_ref().map(Snapshot::response);
    let resp = resp.as_ref().or(d.resp_seen.taken());
    let header = |s: Option<&Snapshot>, name: &str| -> Option<Vec<u8>> {
        if name.starts_with(':') {
            return None;
        }
        s?.get(name.as_bytes()).map(<[u8]>::to_vec)
    };
    Some(match segs.as_slice() {
        ["plugin_name"] => text(&plugin.name),
        ["plugin_root_id"] => text(&plugin.root_id),
        ["plugin_vm_id"] => text(&plugin.vm_id),
        ["source", "address"] => text(&addrs?.0.to_string()),
        ["source", "port"] => int(addrs?.0.port() as i64),
        ["destination", "address"] => text(&addrs?.1.to_string()),
        ["destination", "port"] => int(addrs?.1.port() as i64),
        ["connection", "id"] => int(addrs?.2 as i64),
        ["connection_id"] => int(addrs?.2 as i64),
        ["request", "path"] => req?.get(b":path")?.to_vec(),
        ["request", "url_path"] => {
            let p = req?.get(b":path")?;
            p.split(|b| *b == b'?').next().unwrap_or(p).to_vec()
        }
        ["request", "host"] => req?.get(b":authority")?.to_vec(),
        ["request", "scheme"] => req?.get(b":scheme")?.to_vec(),
        ["request", "method"] => req?.get(b":method")?.to_vec(),
        ["request", "headers"] => {
            let r = req?;
            let plain = || r.pairs().filter(|(k, _)| !k.starts_with(b":"));
            super::snapshot::encode(plain)
        }
        ["request", "headers", name] => header(req, name)?,
        ["request", "id"] => header(req, "x-request-id")?,
        ["request", "useragent"] => header(req, "user-agent")?,
        ["request", "protocol"] => text(match req?.version {
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_3 => "HTTP/3",
            _ => "HTTP/1.1",
        }),
        ["request", "time"] => {
            let t = d.info.as_ref()?.start_time;
            let n = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos();
            int(n as i64)
        }
        ["response", "code"] => {
            // The head the filter saw, else (a filter that answered the
            // request itself, in `on_log`) the status the client was sent.
            let seen = resp
                .and_then(|r| r.get(b":status"))
                .and_then(|s| std::str::from_utf8(s).ok()?.parse::<i64>().ok());
            int(seen.or_else(|| Some(d.info.as_ref()?.response_code? as i64))?)
        }
        ["response", "code_details"] => text(d.info.as_ref()?.response_code_details?),
        ["response", "headers", name] => header(resp, name)?,
        ["upstream", "address"] => text(&d.info.as_ref()?.upstream_host?.to_string()),
        ["upstream", "port"] => int(d.info.as_ref()?.upstream_host?.port() as i64),
        ["xds", "cluster_name"] => text(d.info.as_ref()?.upstream_cluster.as_deref()?),
        ["xds", "route_name"] => text(d.info.as_ref()?.route_name.as_deref()?),
        _ => return None,
    })
}
