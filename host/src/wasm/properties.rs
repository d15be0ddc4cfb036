//! `proxy_get_property`: paths are segments joined by NUL; strings are raw bytes,
//! integers 8-byte little-endian, as in Envoy.

use std::net::SocketAddr;

use super::vm::HostState;

fn int(v: i64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn text(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

pub fn get(st: &HostState, path: &[u8]) -> Option<Vec<u8>> {
    if let Some(v) = st.stream.properties.get(path) {
        return Some(v.to_vec());
    }
    let path = std::str::from_utf8(path).ok()?;
    let segs: Vec<&str> = path.split('\0').filter(|s| !s.is_empty()).collect();
    let d = &st.stream;
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
    let req = d.req.as_ref().or(d.req_seen.as_ref());
    let resp = d.resp.as_ref().or(d.resp_seen.as_ref());
    Some(match segs.as_slice() {
        ["plugin_name"] => text(&st.plugin.name),
        ["plugin_root_id"] => text(&st.plugin.root_id),
        ["plugin_vm_id"] => text(&st.plugin.vm_id),
        ["source", "address"] => text(&addrs?.0.to_string()),
        ["source", "port"] => int(addrs?.0.port() as i64),
        ["destination", "address"] => text(&addrs?.1.to_string()),
        ["destination", "port"] => int(addrs?.1.port() as i64),
        ["connection", "id"] => int(addrs?.2 as i64),
        ["connection_id"] => int(addrs?.2 as i64),
        ["request", "path"] => text(req?.uri.path_and_query().map_or("/", |p| p.as_str())),
        ["request", "url_path"] => text(req?.uri.path()),
        ["request", "host"] => {
            let r = req?;
            match r.uri.authority() {
                Some(a) => text(a.as_str()),
                None => r.headers.get(http::header::HOST)?.as_bytes().to_vec(),
            }
        }
        ["request", "scheme"] => text(req?.uri.scheme_str().unwrap_or("http")),
        ["request", "method"] => text(req?.method.as_str()),
        ["request", "headers"] => {
            let r = req?;
            let pairs: Vec<(&[u8], &[u8])> = r
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes()))
                .collect();
            super::abi::serialize_pairs(&pairs)
        }
        ["request", "headers", name] => req?.headers.get(*name)?.as_bytes().to_vec(),
        ["request", "id"] => req?.headers.get("x-request-id")?.as_bytes().to_vec(),
        ["request", "useragent"] => req?
            .headers
            .get(http::header::USER_AGENT)?
            .as_bytes()
            .to_vec(),
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
        ["response", "code"] => int(resp?.status.as_u16() as i64),
        ["response", "headers", name] => resp?.headers.get(*name)?.as_bytes().to_vec(),
        ["upstream", "address"] => text(&d.info.as_ref()?.upstream_host?.to_string()),
        ["upstream", "port"] => int(d.info.as_ref()?.upstream_host?.port() as i64),
        ["xds", "cluster_name"] => text(d.info.as_ref()?.upstream_cluster.as_deref()?),
        ["xds", "route_name"] => text(d.info.as_ref()?.route_name.as_deref()?),
        _ => return None,
    })
}
