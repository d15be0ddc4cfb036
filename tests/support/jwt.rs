//! Tokens for the JWT tests: keys from `filters/jwt_authn/testdata`, their
//! public JWKS, and signed tokens, made in the test.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// A signing key with its `kid`.
pub struct Key {
    alg: Algorithm,
    key: EncodingKey,
    kid: String,
}

fn pem(f: &str) -> Vec<u8> {
    let p = format!(
        "{}/../filters/jwt_authn/testdata/{f}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

impl Key {
    /// RS256 (RSA 2048).
    pub fn rs256(kid: &str) -> Key {
        Key::new(
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(&pem("rsa.pem")).unwrap(),
            kid,
        )
    }

    /// ES256 (P-256).
    pub fn es256(kid: &str) -> Key {
        Key::new(
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&pem("ec256.pem")).unwrap(),
            kid,
        )
    }

    /// EdDSA (Ed25519).
    pub fn ed25519(kid: &str) -> Key {
        Key::new(
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(&pem("ed25519.pem")).unwrap(),
            kid,
        )
    }

    /// HS256 with a fixed secret.
    pub fn hs256(kid: &str) -> Key {
        Key::new(
            Algorithm::HS256,
            EncodingKey::from_secret(b"a shared secret of 32 bytes ...."),
            kid,
        )
    }

    fn new(alg: Algorithm, key: EncodingKey, kid: &str) -> Key {
        Key {
            alg,
            key,
            kid: kid.to_string(),
        }
    }

    /// The public JWK.
    pub fn jwk(&self) -> Value {
        let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&self.key, self.alg).unwrap();
        let mut v = serde_json::to_value(jwk).unwrap();
        v["kid"] = json!(self.kid);
        v
    }

    /// A token with these claims.
    pub fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &self.key).unwrap()
    }
}

/// A JWKS document of these keys.
pub fn jwks(keys: &[&Key]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}).to_string()
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The payload segment of a token.
pub fn payload(token: &str) -> &str {
    token.split('.').nth(1).unwrap()
}

/// An `envoy.filters.http.jwt_authn` entry for `http_filters` (JSON, which
/// YAML reads), with `config` as its `JwtAuthentication`.
pub fn filter(config: &Value) -> String {
    let mut c = config.clone();
    c["@type"] = json!(TYPE);
    format!(
        "          - {}\n",
        json!({"name": "envoy.filters.http.jwt_authn", "typed_config": c})
    )
}

pub const TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";
pub const PER_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig";
