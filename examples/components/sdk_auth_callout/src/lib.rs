//! sdk_auth_callout: the same job as the proxy-wasm `auth_callout` example,
//! written with legate-sdk. The outbound call is awaited in straight-line code.
//!
//! On request headers it sends `GET <path>` to the configured cluster,
//! forwarding the request's `authorization` header, and waits for the answer:
//!
//! * `200`: the request goes on, with `x-auth-user` copied from the auth
//!   response (a client-sent `x-auth-user` is always removed first);
//! * any other status: `403` with `x-auth-denied: 1`;
//! * no answer (unknown cluster, timeout, connection failure): `503`.
//!
//! Plugin configuration (JSON, every field optional):
//! `{"cluster": "auth", "path": "/check", "timeout_ms": 1000}`

use std::rc::Rc;
use std::time::Duration;

use legate_sdk::http::{self, Request};
use legate_sdk::{Action, Headers, HttpFilter, HttpPlugin, LocalReply};

pub struct Config {
    cluster: String,
    path: String,
    timeout: Duration,
}

impl Config {
    fn parse(bytes: &[u8]) -> Result<Config, String> {
        let mut c = Config {
            cluster: "auth".into(),
            path: "/check".into(),
            timeout: Duration::from_millis(1000),
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(c);
        }
        let json: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let obj = json.as_object().ok_or("configuration must be a JSON object")?;
        if let Some(v) = obj.get("cluster") {
            c.cluster = v.as_str().ok_or("\"cluster\" must be a string")?.into();
        }
        if let Some(v) = obj.get("path") {
            c.path = v.as_str().ok_or("\"path\" must be a string")?.into();
        }
        if let Some(v) = obj.get("timeout_ms") {
            let ms = v.as_u64().ok_or("\"timeout_ms\" must be a non-negative integer")?;
            c.timeout = Duration::from_millis(ms);
        }
        Ok(c)
    }
}

pub struct AuthPlugin {
    config: Rc<Config>,
}

impl HttpPlugin for AuthPlugin {
    type Filter = AuthCallout;

    fn configure(configuration: &[u8]) -> Result<Self, String> {
        Ok(AuthPlugin {
            config: Rc::new(Config::parse(configuration)?),
        })
    }

    fn new_filter(&self) -> AuthCallout {
        AuthCallout {
            config: self.config.clone(),
        }
    }
}

pub struct AuthCallout {
    config: Rc<Config>,
}

impl HttpFilter for AuthCallout {
    async fn on_request_headers(&mut self, headers: &mut Headers, _eos: bool) -> Action {
        headers.remove("x-auth-user");
        let mut check = Request::get(&self.config.cluster, &self.config.path)
            .timeout(self.config.timeout);
        if let Some(auth) = headers.get("authorization") {
            check = check.header("authorization", auth);
        }
        match http::send(check).await {
            Ok(r) if r.status == 200 => {
                if let Some(user) = r.headers.get("x-auth-user") {
                    headers.set("x-auth-user", user);
                }
                Action::Continue
            }
            Ok(_) => Action::Respond(
                LocalReply::new(403)
                    .with_header("x-auth-denied", "1")
                    .with_body("denied by sdk_auth_callout\n"),
            ),
            Err(e) => {
                legate_sdk::log::warn(&format!("auth call failed: {e}"));
                Action::Respond(LocalReply::new(503).with_body("auth service unavailable\n"))
            }
        }
    }
}

legate_sdk::export_http_filter!(plugin = AuthPlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use legate_sdk::http::{CallError, Response};
    use legate_sdk::testing::Harness;

    #[test]
    fn allows_with_the_user_from_the_auth_service() {
        let h = Harness::<AuthPlugin>::new(br#"{"cluster": "authz", "path": "/v"}"#).unwrap();
        h.on_call(|req| {
            assert_eq!((req.cluster.as_str(), req.path.as_str()), ("authz", "/v"));
            let good = req.headers.iter().any(|(n, v)| n == "authorization" && v == b"Bearer ok");
            let mut r = Response::new(if good { 200 } else { 401 }, "");
            r.headers.set("x-auth-user", "alice");
            Ok(r)
        });
        let out = h
            .stream()
            .request_headers(&[("authorization", "Bearer ok"), ("x-auth-user", "mallory")], true);
        assert_eq!(out.action, Action::Continue);
        assert_eq!(out.headers.get_str("x-auth-user").as_deref(), Some("alice"));
        let out = h.stream().request_headers(&[("authorization", "Bearer no")], true);
        assert!(matches!(out.action, Action::Respond(ref r) if r.status == 403));
    }

    #[test]
    fn a_failed_call_is_a_503() {
        let h = Harness::<AuthPlugin>::new(b"").unwrap();
        h.on_call(|_| Err(CallError::Timeout));
        let out = h.stream().request_headers(&[], true);
        assert!(matches!(out.action, Action::Respond(ref r) if r.status == 503));
    }
}
