//! sdk_api_key: API-key authentication from the plugin configuration.
//!
//! A request must carry a known key in `x-api-key`. Known keys go on with
//! `x-api-user: <user>` (the key itself is removed before the upstream sees
//! it); a missing or unknown key gets `401` and a JSON body. Counters
//! `sdk_api_key.allowed` and `sdk_api_key.denied` show in `/stats`.
//!
//! Plugin configuration (JSON): `{"keys": {"<key>": "<user>", ...}}`

use std::collections::HashMap;
use std::rc::Rc;

use legate_sdk::metrics::Counter;
use legate_sdk::{Action, Headers, HttpFilter, HttpPlugin, LocalReply};

pub struct ApiKeys {
    keys: Rc<HashMap<String, String>>,
    allowed: Rc<Counter>,
    denied: Rc<Counter>,
}

impl HttpPlugin for ApiKeys {
    type Filter = ApiKey;

    fn configure(configuration: &[u8]) -> Result<Self, String> {
        let json: serde_json::Value =
            serde_json::from_slice(configuration).map_err(|e| format!("configuration: {e}"))?;
        let keys = json
            .get("keys")
            .and_then(|k| k.as_object())
            .ok_or("configuration needs \"keys\": {\"<key>\": \"<user>\"}")?
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.as_str().ok_or("users must be strings")?.to_string())))
            .collect::<Result<HashMap<_, _>, String>>()?;
        Ok(ApiKeys {
            keys: Rc::new(keys),
            allowed: Rc::new(Counter::new("sdk_api_key.allowed")),
            denied: Rc::new(Counter::new("sdk_api_key.denied")),
        })
    }

    fn new_filter(&self) -> ApiKey {
        ApiKey {
            keys: self.keys.clone(),
            allowed: self.allowed.clone(),
            denied: self.denied.clone(),
        }
    }
}

pub struct ApiKey {
    keys: Rc<HashMap<String, String>>,
    allowed: Rc<Counter>,
    denied: Rc<Counter>,
}

impl HttpFilter for ApiKey {
    async fn on_request_headers(&mut self, headers: &mut Headers, _eos: bool) -> Action {
        let user = headers.get_str("x-api-key").and_then(|k| self.keys.get(&k).cloned());
        headers.remove("x-api-key");
        match user {
            Some(user) => {
                self.allowed.increment(1);
                headers.set("x-api-user", user);
                Action::Continue
            }
            None => {
                self.denied.increment(1);
                Action::Respond(
                    LocalReply::new(401)
                        .with_header("content-type", "application/json")
                        .with_header("www-authenticate", "ApiKey")
                        .with_body("{\"error\":\"missing or unknown API key\"}\n")
                        .with_grpc_status(16),
                )
            }
        }
    }
}

legate_sdk::export_http_filter!(plugin = ApiKeys);

#[cfg(test)]
mod tests {
    use super::*;
    use legate_sdk::testing::{self, Harness};

    #[test]
    fn known_keys_pass_and_unknown_ones_get_401() {
        let h = Harness::<ApiKeys>::new(br#"{"keys": {"k1": "alice"}}"#).unwrap();
        let out = h.stream().request_headers(&[("x-api-key", "k1")], true);
        assert_eq!(out.action, Action::Continue);
        assert_eq!(out.headers.get_str("x-api-user").as_deref(), Some("alice"));
        assert!(out.headers.get("x-api-key").is_none());
        let out = h.stream().request_headers(&[("x-api-key", "nope")], true);
        assert!(matches!(out.action, Action::Respond(ref r) if r.status == 401));
        assert_eq!(testing::counter("sdk_api_key.allowed"), Some(1));
        assert_eq!(testing::counter("sdk_api_key.denied"), Some(1));
    }

    #[test]
    fn a_config_without_keys_is_refused() {
        assert!(Harness::<ApiKeys>::new(b"{}").is_err());
    }
}
