//! A token taken apart, with the checks (and statuses) Envoy makes before any
//! signature is looked at. Pure functions over the token text.

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::{Map, Value};

use crate::status::Status;

/// base64url with or without padding, as Envoy's decoder takes it.
pub(crate) const B64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// The algorithms Envoy accepts in a token header.
const IMPLEMENTED: [&str; 13] = [
    "ES256", "ES384", "ES512", "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256",
    "PS384", "PS512", "EdDSA",
];

/// A parsed token.
#[derive(Debug, Clone)]
pub struct Jwt {
    /// The header, as JSON.
    pub header: Map<String, Value>,
    /// The payload (claims), as JSON.
    pub payload: Map<String, Value>,
    /// The payload as it was in the token (base64url).
    pub payload_b64: String,
    /// `header.payload`: what the signature signs.
    pub signed: String,
    /// The decoded signature.
    pub signature: Vec<u8>,
    /// `alg`.
    pub alg: String,
    /// `kid`, empty when absent.
    pub kid: String,
    /// `iss`, empty when absent.
    pub iss: String,
    /// `aud`, one or many.
    pub audiences: Vec<String>,
    /// `nbf`, 0 when absent.
    pub nbf: u64,
    /// `exp`, 0 when absent.
    pub exp: u64,
}

/// A string field, empty when absent: `Err(())` when present with another type.
fn string(m: &Map<String, Value>, key: &str) -> Result<String, ()> {
    match m.get(key) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(()),
    }
}

/// A numeric claim as Envoy reads it: a JSON number, truncated to u64.
fn uint(m: &Map<String, Value>, key: &str, not_int: Status, range: Status) -> Result<u64, Status> {
    match m.get(key) {
        None => Ok(0),
        Some(Value::Number(n)) => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            if f.is_nan() || f < 0.0 || f >= u64::MAX as f64 {
                Err(range)
            } else {
                Ok(f as u64)
            }
        }
        Some(_) => Err(not_int),
    }
}

fn json_object(bytes: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice::<Value>(bytes).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

impl Jwt {
    /// Parses a token, or says (as Envoy does) what is wrong with it.
    pub fn parse(token: &str) -> Result<Jwt, Status> {
        let parts: Vec<&str> = token.split('.').filter(|p| !p.is_empty()).collect();
        let [h64, p64, s64] = parts[..] else {
            return Err(Status::JwtBadFormat);
        };
        let header_bytes = B64URL
            .decode(h64)
            .map_err(|_| Status::JwtHeaderParseErrorBadBase64)?;
        let header = json_object(&header_bytes).ok_or(Status::JwtHeaderParseErrorBadJson)?;
        let alg = match header.get("alg") {
            Some(Value::String(a)) => a.clone(),
            _ => return Err(Status::JwtHeaderBadAlg),
        };
        if !IMPLEMENTED.contains(&alg.as_str()) {
            return Err(Status::JwtHeaderNotImplementedAlg);
        }
        let kid = string(&header, "kid").map_err(|_| Status::JwtHeaderBadKid)?;
        let payload_bytes = B64URL
            .decode(p64)
            .map_err(|_| Status::JwtPayloadParseErrorBadBase64)?;
        let payload = json_object(&payload_bytes).ok_or(Status::JwtPayloadParseErrorBadJson)?;
        let iss = string(&payload, "iss").map_err(|_| Status::JwtPayloadParseErrorIssNotString)?;
        string(&payload, "sub").map_err(|_| Status::JwtPayloadParseErrorSubNotString)?;
        uint(
            &payload,
            "iat",
            Status::JwtPayloadParseErrorIatNotInteger,
            Status::JwtPayloadParseErrorIatOutOfRange,
        )?;
        let nbf = uint(
            &payload,
            "nbf",
            Status::JwtPayloadParseErrorNbfNotInteger,
            Status::JwtPayloadParseErrorNbfOutOfRange,
        )?;
        let exp = uint(
            &payload,
            "exp",
            Status::JwtPayloadParseErrorExpNotInteger,
            Status::JwtPayloadParseErrorExpOutOfRange,
        )?;
        string(&payload, "jti").map_err(|_| Status::JwtPayloadParseErrorJtiNotString)?;
        let audiences = match payload.get("aud") {
            None => Vec::new(),
            Some(Value::String(a)) => vec![a.clone()],
            Some(Value::Array(list)) => list
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or(Status::JwtPayloadParseErrorAudNotString)?,
            Some(_) => return Err(Status::JwtPayloadParseErrorAudNotString),
        };
        let signature = B64URL
            .decode(s64)
            .map_err(|_| Status::JwtSignatureParseErrorBadBase64)?;
        Ok(Jwt {
            header,
            payload,
            payload_b64: p64.to_string(),
            signed: format!("{h64}.{p64}"),
            signature,
            alg,
            kid,
            iss,
            audiences,
            nbf,
            exp,
        })
    }

    /// `nbf` and `exp` against `now`, each allowed `skew` seconds.
    pub fn check_time(&self, now: u64, skew: u64) -> Status {
        if now.saturating_add(skew) < self.nbf {
            return Status::JwtNotYetValid;
        }
        if self.exp != 0 && now > self.exp.saturating_add(skew) {
            return Status::JwtExpired;
        }
        Status::Ok
    }

    /// A claim by dotted path (`a.b.c` walks nested objects).
    pub fn claim(&self, path: &str) -> Option<&Value> {
        let mut parts = path.split('.');
        let mut v = self.payload.get(parts.next()?)?;
        for p in parts {
            v = v.as_object()?.get(p)?;
        }
        Some(v)
    }
}

/// An audience without `http://` / `https://` and a trailing `/`, as Envoy
/// compares them.
pub fn sanitize_audience(aud: &str) -> &str {
    let rest = aud
        .strip_prefix("http://")
        .or_else(|| aud.strip_prefix("https://"))
        .unwrap_or(aud);
    rest.strip_suffix('/').unwrap_or(rest)
}

/// Whether one of the token's audiences is allowed (an empty list allows all).
pub fn audiences_allowed(allowed: &[String], token: &[String]) -> bool {
    allowed.is_empty()
        || token.iter().any(|t| {
            let t = sanitize_audience(t);
            allowed.iter().any(|a| sanitize_audience(a) == t)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
    }

    fn tok(h: &str, p: &str) -> String {
        format!("{}.{}.c2ln", enc(h), enc(p))
    }

    #[test]
    fn statuses_in_envoys_order() {
        let ok_h = r#"{"alg":"RS256","kid":"k"}"#;
        let cases = [
            ("a.b".to_string(), Status::JwtBadFormat),
            ("a..b.c.d".to_string(), Status::JwtBadFormat),
            ("!!.b.c".to_string(), Status::JwtHeaderParseErrorBadBase64),
            (tok("[1]", "{}"), Status::JwtHeaderParseErrorBadJson),
            (tok("{}", "{}"), Status::JwtHeaderBadAlg),
            (tok(r#"{"alg":1}"#, "{}"), Status::JwtHeaderBadAlg),
            (
                tok(r#"{"alg":"none"}"#, "{}"),
                Status::JwtHeaderNotImplementedAlg,
            ),
            (
                tok(r#"{"alg":"RS256","kid":3}"#, "{}"),
                Status::JwtHeaderBadKid,
            ),
            (
                format!("{}.%%.c2ln", enc(ok_h)),
                Status::JwtPayloadParseErrorBadBase64,
            ),
            (tok(ok_h, "nope"), Status::JwtPayloadParseErrorBadJson),
            (
                tok(ok_h, r#"{"iss":1}"#),
                Status::JwtPayloadParseErrorIssNotString,
            ),
            (
                tok(ok_h, r#"{"sub":[]}"#),
                Status::JwtPayloadParseErrorSubNotString,
            ),
            (
                tok(ok_h, r#"{"iat":"1"}"#),
                Status::JwtPayloadParseErrorIatNotInteger,
            ),
            (
                tok(ok_h, r#"{"iat":-1}"#),
                Status::JwtPayloadParseErrorIatOutOfRange,
            ),
            (
                tok(ok_h, r#"{"nbf":true}"#),
                Status::JwtPayloadParseErrorNbfNotInteger,
            ),
            (
                tok(ok_h, r#"{"exp":1e30}"#),
                Status::JwtPayloadParseErrorExpOutOfRange,
            ),
            (
                tok(ok_h, r#"{"jti":{}}"#),
                Status::JwtPayloadParseErrorJtiNotString,
            ),
            (
                tok(ok_h, r#"{"aud":["a",2]}"#),
                Status::JwtPayloadParseErrorAudNotString,
            ),
            (
                format!("{}.{}.%", enc(ok_h), enc("{}")),
                Status::JwtSignatureParseErrorBadBase64,
            ),
        ];
        for (t, want) in cases {
            assert_eq!(Jwt::parse(&t).unwrap_err(), want, "{t}");
        }
    }

    #[test]
    fn reads_claims() {
        let t = tok(
            r#"{"alg":"ES256","kid":"k1"}"#,
            r#"{"iss":"i","aud":["a","b"],"exp":20.7,"nbf":10,"x":{"y":{"z":1}}}"#,
        );
        let j = Jwt::parse(&t).unwrap();
        assert_eq!(
            (j.alg.as_str(), j.kid.as_str(), j.iss.as_str()),
            ("ES256", "k1", "i")
        );
        assert_eq!(j.audiences, ["a", "b"]);
        assert_eq!((j.nbf, j.exp), (10, 20));
        assert_eq!(j.claim("x.y.z"), Some(&Value::from(1)));
        assert_eq!(j.claim("x.q"), None);
        assert_eq!(j.check_time(0, 9), Status::JwtNotYetValid);
        assert_eq!(j.check_time(0, 10), Status::Ok);
        assert_eq!(j.check_time(31, 10), Status::JwtExpired);
        assert_eq!(j.check_time(30, 10), Status::Ok);
    }

    #[test]
    fn audiences() {
        let allowed = vec!["https://api.example/".to_string()];
        assert!(audiences_allowed(&allowed, &["api.example".into()]));
        assert!(audiences_allowed(&allowed, &["http://api.example".into()]));
        assert!(!audiences_allowed(&allowed, &["other".into()]));
        assert!(!audiences_allowed(&allowed, &[]));
        assert!(audiences_allowed(&[], &[]));
        assert_eq!(sanitize_audience("https://"), "");
        assert_eq!(sanitize_audience("/"), "");
    }

    #[test]
    fn never_panics_on_odd_input() {
        for t in [
            "",
            ".",
            "..",
            "...",
            "a.b.c",
            "\u{0}.\u{0}.\u{0}",
            "é.é.é",
            "=.=.=",
        ] {
            let _ = Jwt::parse(t);
        }
    }
}
