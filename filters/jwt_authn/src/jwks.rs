//! JSON Web Key Sets: read with Envoy's rules (and statuses), and the signature
//! check that picks keys by `kid` and `alg` as Envoy does. The cryptography
//! itself is the `jsonwebtoken` crate's.

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

use crate::jwt::{B64URL, Jwt};
use crate::status::Status;

/// What a key verifies with.
enum Material {
    /// RSA (`n`, `e`).
    Rsa(DecodingKey),
    /// EC on P-256, P-384 or P-521 (the last one cannot verify: no ES512 backend).
    Ec(DecodingKey, &'static str),
    /// HMAC secret.
    Oct(DecodingKey),
    /// Ed25519.
    Okp(DecodingKey),
}

/// One usable key.
pub struct Key {
    kid: String,
    alg: String,
    material: Material,
}

/// A key set: the keys that could be read.
pub struct Jwks {
    keys: Vec<Key>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| (&k.kid, &k.alg)))
            .finish()
    }
}

enum Field<'a> {
    Missing,
    Wrong,
    Str(&'a str),
}

fn field<'a>(m: &'a Map<String, Value>, k: &str) -> Field<'a> {
    match m.get(k) {
        None => Field::Missing,
        Some(Value::String(s)) => Field::Str(s),
        Some(_) => Field::Wrong,
    }
}

fn required<'a>(
    m: &'a Map<String, Value>,
    k: &str,
    missing: Status,
    bad: Status,
) -> Result<&'a str, Status> {
    match field(m, k) {
        Field::Missing => Err(missing),
        Field::Wrong => Err(bad),
        Field::Str(s) => Ok(s),
    }
}

fn rsa(m: &Map<String, Value>, alg: &str) -> Result<Material, Status> {
    if !alg.is_empty() && !alg.starts_with("RS") && !alg.starts_with("PS") {
        return Err(Status::JwksRsaKeyBadAlg);
    }
    let n = required(m, "n", Status::JwksRsaKeyMissingN, Status::JwksRsaKeyBadN)?;
    let e = required(m, "e", Status::JwksRsaKeyMissingE, Status::JwksRsaKeyBadE)?;
    let (Ok(nb), Ok(eb)) = (B64URL.decode(n), B64URL.decode(e)) else {
        return Err(Status::JwksRsaParseError);
    };
    // Only the standard exponents, as Envoy; and a modulus worth the name.
    let e_val = eb
        .iter()
        .fold(0u64, |a, b| a.saturating_mul(256).saturating_add(*b as u64));
    let n_bits = nb.iter().skip_while(|b| **b == 0).count() * 8;
    if (e_val != 3 && e_val != 65537) || n_bits < 512 {
        return Err(Status::JwksRsaParseError);
    }
    let nn = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&nb);
    let ee = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&eb);
    DecodingKey::from_rsa_components(&nn, &ee)
        .map(Material::Rsa)
        .map_err(|_| Status::JwksRsaParseError)
}

fn ec(m: &Map<String, Value>, alg: &str) -> Result<Material, Status> {
    if !alg.is_empty() && !alg.starts_with("ES") {
        return Err(Status::JwksEcKeyBadAlg);
    }
    let crv = match field(m, "crv") {
        Field::Missing => "",
        Field::Wrong => return Err(Status::JwksEcKeyBadCrv),
        Field::Str(s) => s,
    };
    if !alg.is_empty()
        && !crv.is_empty()
        && !matches!(
            (alg, crv),
            ("ES256", "P-256") | ("ES384", "P-384") | ("ES512", "P-521")
        )
    {
        return Err(Status::JwksEcKeyAlgNotCompatibleWithCrv);
    }
    let curve = if alg == "ES256" || crv == "P-256" || (alg.is_empty() && crv.is_empty()) {
        "P-256"
    } else if alg == "ES384" || crv == "P-384" {
        "P-384"
    } else if alg == "ES512" || crv == "P-521" {
        "P-521"
    } else {
        return Err(Status::JwksEcKeyAlgOrCrvUnsupported);
    };
    let x = required(m, "x", Status::JwksEcKeyMissingX, Status::JwksEcKeyBadX)?;
    let y = required(m, "y", Status::JwksEcKeyMissingY, Status::JwksEcKeyBadY)?;
    let (Ok(xb), Ok(yb)) = (B64URL.decode(x), B64URL.decode(y)) else {
        return Err(Status::JwksEcXorYBadBase64);
    };
    let enc = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    DecodingKey::from_ec_components(&enc(&xb), &enc(&yb))
        .map(|k| Material::Ec(k, curve))
        .map_err(|_| Status::JwksEcXorYBadBase64)
}

fn oct(m: &Map<String, Value>, alg: &str) -> Result<Material, Status> {
    if !alg.is_empty() && !matches!(alg, "HS256" | "HS384" | "HS512") {
        return Err(Status::JwksHmacKeyBadAlg);
    }
    let k = required(m, "k", Status::JwksHmacKeyMissingK, Status::JwksHmacKeyBadK)?;
    match B64URL.decode(k) {
        Ok(secret) if !secret.is_empty() => Ok(Material::Oct(DecodingKey::from_secret(&secret))),
        _ => Err(Status::JwksOctBadBase64),
    }
}

fn okp(m: &Map<String, Value>, alg: &str) -> Result<Material, Status> {
    if !alg.is_empty() && alg != "EdDSA" {
        return Err(Status::JwksOkpKeyBadAlg);
    }
    let crv = required(
        m,
        "crv",
        Status::JwksOkpKeyMissingCrv,
        Status::JwksOkpKeyBadCrv,
    )?;
    if crv != "Ed25519" {
        return Err(Status::JwksOkpKeyCrvUnsupported);
    }
    let x = required(m, "x", Status::JwksOkpKeyMissingX, Status::JwksOkpKeyBadX)?;
    let xb = B64URL.decode(x).map_err(|_| Status::JwksOkpXBadBase64)?;
    if xb.len() != 32 {
        return Err(Status::JwksOkpXWrongLength);
    }
    let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&xb);
    DecodingKey::from_ed_components(&enc)
        .map(Material::Okp)
        .map_err(|_| Status::JwksOkpXBadBase64)
}

fn key(m: &Map<String, Value>) -> Result<Key, Status> {
    let kty = required(m, "kty", Status::JwksMissingKty, Status::JwksBadKty)?;
    let text = |k: &str| match field(m, k) {
        Field::Str(s) => s.to_string(),
        _ => String::new(),
    };
    let (kid, alg) = (text("kid"), text("alg"));
    let material = match kty {
        "EC" => ec(m, &alg)?,
        "RSA" => rsa(m, &alg)?,
        "oct" => oct(m, &alg)?,
        "OKP" => okp(m, &alg)?,
        _ => return Err(Status::JwksNotImplementedKty),
    };
    Ok(Key { kid, alg, material })
}

impl Jwks {
    /// Reads a JWKS document. Keys that cannot be read are skipped; with none
    /// left, the status of the first bad key (or "no valid keys") is the error.
    pub fn parse(text: &[u8]) -> Result<Jwks, Status> {
        let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(text) else {
            return Err(Status::JwksParseError);
        };
        let list = match doc.get("keys") {
            None => return Err(Status::JwksNoKeys),
            Some(Value::Array(l)) => l,
            Some(_) => return Err(Status::JwksBadKeys),
        };
        let mut keys = Vec::new();
        let mut first_error = None;
        for item in list {
            let Value::Object(m) = item else { continue };
            match key(m) {
                Ok(k) => keys.push(k),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if keys.is_empty() {
            return Err(first_error.unwrap_or(Status::JwksNoValidKeys));
        }
        Ok(Jwks { keys })
    }

    /// Whether some key carries this `kid`.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid == kid)
    }

    /// Checks the token's signature: keys whose `kid` and `alg` do not clash
    /// with the token's are tried in order.
    pub fn verify(&self, jwt: &Jwt) -> Status {
        let mut matched = false;
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&jwt.signature);
        let check = |key: &DecodingKey, alg: Algorithm| {
            jsonwebtoken::crypto::verify(&sig, jwt.signed.as_bytes(), key, alg).unwrap_or(false)
        };
        for k in &self.keys {
            if !jwt.kid.is_empty() && !k.kid.is_empty() && k.kid != jwt.kid {
                continue;
            }
            if !k.alg.is_empty() && k.alg != jwt.alg {
                continue;
            }
            matched = true;
            let ok = match &k.material {
                Material::Ec(key, curve) => match (jwt.alg.as_str(), *curve) {
                    // No P-521 backend: such a key never verifies.
                    ("ES512", _) | (_, "P-521") => false,
                    ("ES384", _) => check(key, Algorithm::ES384),
                    _ => check(key, Algorithm::ES256),
                },
                Material::Rsa(key) => match jwt.alg.as_str() {
                    "RS256" => check(key, Algorithm::RS256),
                    "RS384" => check(key, Algorithm::RS384),
                    "RS512" => check(key, Algorithm::RS512),
                    "PS256" => check(key, Algorithm::PS256),
                    "PS384" => check(key, Algorithm::PS384),
                    "PS512" => check(key, Algorithm::PS512),
                    _ => false,
                },
                Material::Oct(key) => match jwt.alg.as_str() {
                    "HS384" => check(key, Algorithm::HS384),
                    "HS512" => check(key, Algorithm::HS512),
                    _ => check(key, Algorithm::HS256),
                },
                Material::Okp(key) => {
                    if jwt.signature.len() != 64 {
                        return Status::JwtEd25519SignatureWrongLength;
                    }
                    check(key, Algorithm::EdDSA)
                }
            };
            if ok {
                return Status::Ok;
            }
        }
        if matched {
            Status::JwtVerificationFail
        } else {
            Status::JwksKidAlgMismatch
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(doc: &str) -> Status {
        Jwks::parse(doc.as_bytes()).unwrap_err()
    }

    #[test]
    fn document_errors() {
        assert_eq!(err("nope"), Status::JwksParseError);
        assert_eq!(err("[]"), Status::JwksParseError);
        assert_eq!(err("{}"), Status::JwksNoKeys);
        assert_eq!(err(r#"{"keys":1}"#), Status::JwksBadKeys);
        assert_eq!(err(r#"{"keys":[]}"#), Status::JwksNoValidKeys);
        assert_eq!(err(r#"{"keys":[1,"x"]}"#), Status::JwksNoValidKeys);
    }

    #[test]
    fn first_bad_key_names_the_error() {
        let cases = [
            (r#"{}"#, Status::JwksMissingKty),
            (r#"{"kty":1}"#, Status::JwksBadKty),
            (r#"{"kty":"XYZ"}"#, Status::JwksNotImplementedKty),
            (r#"{"kty":"RSA","alg":"ES256"}"#, Status::JwksRsaKeyBadAlg),
            (r#"{"kty":"RSA"}"#, Status::JwksRsaKeyMissingN),
            (r#"{"kty":"RSA","n":1}"#, Status::JwksRsaKeyBadN),
            (r#"{"kty":"RSA","n":"AQAB"}"#, Status::JwksRsaKeyMissingE),
            (
                r#"{"kty":"RSA","n":"AQAB","e":"AQAB"}"#,
                Status::JwksRsaParseError,
            ),
            (r#"{"kty":"EC","alg":"RS256"}"#, Status::JwksEcKeyBadAlg),
            (r#"{"kty":"EC","crv":2}"#, Status::JwksEcKeyBadCrv),
            (
                r#"{"kty":"EC","alg":"ES256","crv":"P-384"}"#,
                Status::JwksEcKeyAlgNotCompatibleWithCrv,
            ),
            (
                r#"{"kty":"EC","crv":"P-999"}"#,
                Status::JwksEcKeyAlgOrCrvUnsupported,
            ),
            (r#"{"kty":"EC"}"#, Status::JwksEcKeyMissingX),
            (
                r#"{"kty":"EC","x":"AA","y":"!"}"#,
                Status::JwksEcXorYBadBase64,
            ),
            (r#"{"kty":"oct","alg":"RS256"}"#, Status::JwksHmacKeyBadAlg),
            (r#"{"kty":"oct"}"#, Status::JwksHmacKeyMissingK),
            (r#"{"kty":"oct","k":""}"#, Status::JwksOctBadBase64),
            (r#"{"kty":"OKP","alg":"ES256"}"#, Status::JwksOkpKeyBadAlg),
            (r#"{"kty":"OKP"}"#, Status::JwksOkpKeyMissingCrv),
            (
                r#"{"kty":"OKP","crv":"X25519"}"#,
                Status::JwksOkpKeyCrvUnsupported,
            ),
            (
                r#"{"kty":"OKP","crv":"Ed25519","x":"AAAA"}"#,
                Status::JwksOkpXWrongLength,
            ),
        ];
        for (k, want) in cases {
            let doc = format!(r#"{{"keys":[{k},{{"kty":"nope"}}]}}"#);
            assert_eq!(err(&doc), want, "{k}");
        }
        // A good key next to a bad one: the good one is kept.
        let doc = r#"{"keys":[{"kty":"nope"},{"kty":"oct","k":"c2VjcmV0","kid":"a"}]}"#;
        let jwks = Jwks::parse(doc.as_bytes()).unwrap();
        assert!(jwks.has_kid("a"));
    }
}
