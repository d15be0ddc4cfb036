//! Reading the YAML tree into the config model while collecting every error.
//!
//! Each message is read through an [`Obj`]: asking for a field marks it known, and
//! [`Obj::finish`] reports every key nobody asked for, with a "did you mean". Readers
//! never stop at the first mistake: they record it and return `None`, so one
//! `--mode validate` run lists all of them.

use std::cell::RefCell;
use std::fmt;
use std::time::Duration;

use super::yaml::{Node, Pos, Value};

/// One config mistake, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// YAML path, e.g. `static_resources.clusters[1].lb_policy`.
    pub path: String,
    pub pos: Pos,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.pos.line, self.pos.col)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Collects errors while the tree is read.
#[derive(Default)]
pub struct Diag {
    errors: RefCell<Vec<ConfigError>>,
}

impl Diag {
    pub fn error(&self, path: &str, pos: Pos, message: impl Into<String>) {
        self.errors.borrow_mut().push(ConfigError {
            path: path.to_string(),
            pos,
            message: message.into(),
        });
    }

    pub fn into_errors(self) -> Vec<ConfigError> {
        let mut v = self.errors.into_inner();
        v.sort_by_key(|e| (e.pos.line, e.pos.col));
        v
    }

    pub fn has_errors(&self) -> bool {
        !self.errors.borrow().is_empty()
    }
}

/// The closest candidate to `word`, if it is close enough to be a likely typo.
pub fn did_you_mean<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let lower = word.to_ascii_lowercase();
    let mut best: Option<(&str, usize)> = None;
    for c in candidates {
        let d = strsim::damerau_levenshtein(&lower, &c.to_ascii_lowercase());
        let limit = (c.len().max(word.len()) / 3).max(2);
        if d <= limit && best.is_none_or(|(_, bd)| d < bd) {
            best = Some((c, d));
        }
    }
    best.map(|(c, _)| c)
}

fn suggestion(word: &str, candidates: &[&str]) -> String {
    match did_you_mean(word, candidates.iter().copied()) {
        Some(c) => format!("; did you mean \"{c}\"?"),
        None => String::new(),
    }
}

/// A node being read, with its path.
#[derive(Clone)]
pub struct Field<'a> {
    pub d: &'a Diag,
    pub node: &'a Node,
    path: String,
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl<'a> Field<'a> {
    pub fn new(d: &'a Diag, node: &'a Node, path: String) -> Field<'a> {
        Field { d, node, path }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn pos(&self) -> Pos {
        self.node.pos
    }

    pub fn error(&self, message: impl Into<String>) {
        self.d.error(&self.path, self.node.pos, message);
    }

    fn found(&self) -> String {
        match &self.node.value {
            Value::Scalar { text, .. } => format!("\"{text}\""),
            _ => format!("a {}", self.node.kind()),
        }
    }

    fn expected(&self, what: &str) {
        self.error(format!("expected {what}, found {}", self.found()));
    }

    pub fn is_map(&self) -> bool {
        matches!(self.node.value, Value::Map(_))
    }

    pub fn is_null(&self) -> bool {
        matches!(self.node.value, Value::Null)
    }

    /// A string scalar.
    pub fn str(&self) -> Option<String> {
        match &self.node.value {
            Value::Scalar { text, .. } => Some(text.clone()),
            _ => {
                self.expected("a string");
                None
            }
        }
    }

    /// A string scalar that must not be empty (the error's path names the field).
    pub fn non_empty_str(&self) -> Option<String> {
        let s = self.str()?;
        if s.is_empty() {
            self.error("must not be empty");
            return None;
        }
        Some(s)
    }

    /// An integer (proto3 JSON also accepts it quoted).
    pub fn int<T: TryFrom<i128>>(&self, what: &str) -> Option<T> {
        let text = match &self.node.value {
            Value::Scalar { text, .. } => text,
            _ => {
                self.expected(what);
                return None;
            }
        };
        match text.parse::<i128>().ok().and_then(|v| T::try_from(v).ok()) {
            Some(v) => Some(v),
            None => {
                self.expected(what);
                None
            }
        }
    }

    pub fn u32(&self) -> Option<u32> {
        self.int("an unsigned 32-bit integer")
    }

    pub fn u64(&self) -> Option<u64> {
        self.int("an unsigned 64-bit integer")
    }

    pub fn bool(&self) -> Option<bool> {
        match self.node.as_str() {
            Some("true") => Some(true),
            Some("false") => Some(false),
            _ => {
                self.expected("true or false");
                None
            }
        }
    }

    /// A `google.protobuf.Duration`: `"1.5s"`, or `{seconds, nanos}`.
    pub fn duration(&self) -> Option<Duration> {
        if let Value::Map(_) = self.node.value {
            let mut o = self.obj()?;
            let secs = o.get("seconds").and_then(|f| f.u64()).unwrap_or(0);
            let nanos = o.get("nanos").and_then(|f| f.u32()).unwrap_or(0);
            o.finish();
            return Some(Duration::new(secs, nanos));
        }
        let Some(text) = self.node.as_str() else {
            self.expected("a duration such as \"1.5s\"");
            return None;
        };
        let parsed = text
            .strip_suffix('s')
            .and_then(|n| n.parse::<f64>().ok())
            .filter(|n| n.is_finite() && *n >= 0.0 && *n < 315_576_000_000.0);
        match parsed {
            Some(secs) => Some(Duration::from_secs_f64(secs)),
            None => {
                self.error(format!(
                    "expected a duration such as \"1.5s\", found \"{text}\"{}",
                    if text.parse::<f64>().is_ok() {
                        " (durations need an \"s\" suffix)"
                    } else {
                        ""
                    }
                ));
                None
            }
        }
    }

    /// An enum given by name. `known_unsupported` are valid Envoy values that Legate
    /// refuses; naming them makes the error say so instead of "unknown".
    pub fn enumeration(
        &self,
        supported: &[&'static str],
        known_unsupported: &[&str],
    ) -> Option<&'static str> {
        let text = match &self.node.value {
            Value::Scalar { text, .. } => text,
            _ => {
                self.expected("an enum name");
                return None;
            }
        };
        if let Some(v) = supported.iter().find(|s| **s == text) {
            return Some(v);
        }
        if known_unsupported.contains(&text.as_str()) {
            self.error(format!(
                "value \"{text}\" is not supported by legate (supported: {})",
                supported.join(", ")
            ));
        } else {
            let mut all: Vec<&str> = supported.to_vec();
            all.extend_from_slice(known_unsupported);
            self.error(format!(
                "unknown value \"{text}\"{} (expected one of: {})",
                suggestion(text, &all),
                supported.join(", ")
            ));
        }
        None
    }

    /// The node as a mapping message.
    pub fn obj(&self) -> Option<Obj<'a>> {
        let entries: &'a [(Node, Node)] = match &self.node.value {
            Value::Map(entries) => entries,
            Value::Null => &[],
            _ => {
                self.expected("a mapping");
                return None;
            }
        };
        Some(Obj {
            f: self.clone(),
            entries,
            used: vec![false; entries.len()],
            known: Vec::new(),
            unsupported: &[],
        })
    }

    /// The node as a list; each item gets its own path.
    pub fn seq(&self) -> Vec<Field<'a>> {
        match &self.node.value {
            Value::Seq(items) => items
                .iter()
                .enumerate()
                .map(|(i, n)| Field::new(self.d, n, format!("{}[{i}]", self.path)))
                .collect(),
            Value::Null => Vec::new(),
            _ => {
                self.expected("a list");
                Vec::new()
            }
        }
    }

    /// A list of strings.
    pub fn strings(&self) -> Vec<String> {
        self.seq().iter().filter_map(|f| f.str()).collect()
    }

    /// The node as a free-form map (`typed_extension_protocol_options`, ...).
    pub fn map_entries(&self) -> Vec<(String, Field<'a>)> {
        match &self.node.value {
            Value::Map(entries) => entries
                .iter()
                .filter_map(|(k, v)| {
                    let key = k.as_str()?.to_string();
                    let path = format!("{}[\"{key}\"]", self.path);
                    Some((key, Field::new(self.d, v, path)))
                })
                .collect(),
            Value::Null => Vec::new(),
            _ => {
                self.expected("a mapping");
                Vec::new()
            }
        }
    }
}

/// A mapping being read as a message.
pub struct Obj<'a> {
    f: Field<'a>,
    entries: &'a [(Node, Node)],
    used: Vec<bool>,
    known: Vec<&'static str>,
    unsupported: &'static [&'static str],
}

impl<'a> Obj<'a> {
    /// Envoy fields of this message that Legate does not support: using one is an
    /// error that says so, rather than "unknown field".
    pub fn unsupported(mut self, fields: &'static [&'static str]) -> Self {
        self.unsupported = fields;
        self
    }

    pub fn path(&self) -> &str {
        &self.f.path
    }

    pub fn pos(&self) -> Pos {
        self.f.node.pos
    }

    pub fn diag(&self) -> &'a Diag {
        self.f.d
    }

    pub fn error(&self, message: impl Into<String>) {
        self.f.error(message)
    }

    /// Whether the key is present (without marking it read).
    pub fn has(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, _)| k.as_str() == Some(key))
    }

    /// Reads an optional field. A `null` value counts as absent.
    pub fn get(&mut self, key: &'static str) -> Option<Field<'a>> {
        self.known.push(key);
        let i = self
            .entries
            .iter()
            .position(|(k, _)| k.as_str() == Some(key))?;
        self.used[i] = true;
        let node = &self.entries[i].1;
        if matches!(node.value, Value::Null) {
            return None;
        }
        Some(Field::new(self.f.d, node, join(&self.f.path, key)))
    }

    /// Reads a required field; reports it missing.
    pub fn req(&mut self, key: &'static str) -> Option<Field<'a>> {
        let g = self.get(key);
        if g.is_none() {
            self.f.d.error(
                &self.f.path,
                self.f.node.pos,
                format!("missing required field \"{key}\""),
            );
        }
        g
    }

    /// At most one of `keys` may be set; returns which one.
    pub fn one_of(&mut self, keys: &[&'static str]) -> Option<(&'static str, Field<'a>)> {
        let mut found: Option<(&'static str, Field<'a>)> = None;
        for k in keys {
            if let Some(g) = self.get(k) {
                if let Some((first, _)) = &found {
                    g.error(format!("only one of \"{first}\" and \"{k}\" may be set"));
                } else {
                    found = Some((k, g));
                }
            }
        }
        found
    }

    /// Reports every key that no reader asked for.
    pub fn finish(self) {
        for (i, (k, _)) in self.entries.iter().enumerate() {
            if self.used[i] {
                continue;
            }
            let Some(key) = k.as_str() else {
                self.f.d.error(&self.f.path, k.pos, "keys must be strings");
                continue;
            };
            let path = join(&self.f.path, key);
            if self.unsupported.contains(&key) {
                self.f.d.error(
                    &path,
                    k.pos,
                    format!("field \"{key}\" is not supported by legate"),
                );
            } else {
                let mut candidates: Vec<&str> = self.known.clone();
                candidates.extend_from_slice(self.unsupported);
                self.f.d.error(
                    &path,
                    k.pos,
                    format!("unknown field \"{key}\"{}", suggestion(key, &candidates)),
                );
            }
        }
    }
}

/// An `envoy.config.core.v3.DataSource`: `inline_string`, `inline_bytes`
/// (base64) or `filename`, read now.
pub fn data_source(f: &Field<'_>) -> Option<Vec<u8>> {
    use base64::Engine;
    let mut o = f
        .obj()?
        .unsupported(&["environment_variable", "watched_directory"]);
    let text = match o.one_of(&["inline_string", "inline_bytes", "filename"]) {
        Some(("inline_string", g)) => g.str().map(String::into_bytes),
        Some(("inline_bytes", g)) => g.str().and_then(|s| {
            let engine = base64::engine::GeneralPurpose::new(
                &base64::alphabet::STANDARD,
                base64::engine::GeneralPurposeConfig::new()
                    .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
            );
            let compact: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            match engine.decode(compact) {
                Ok(b) => Some(b),
                Err(_) => {
                    g.error("inline_bytes must be base64");
                    None
                }
            }
        }),
        Some((_, g)) => g.str().and_then(|path| match std::fs::read(&path) {
            Ok(b) => Some(b),
            Err(e) => {
                g.error(format!("cannot read \"{path}\": {e}"));
                None
            }
        }),
        None => {
            o.error("one of \"inline_string\", \"inline_bytes\" or \"filename\" is required");
            None
        }
    };
    o.finish();
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::yaml;

    #[test]
    fn suggests_close_names() {
        assert_eq!(
            did_you_mean("lb_polcy", ["lb_policy", "name"]),
            Some("lb_policy")
        );
        assert_eq!(
            did_you_mean("ROUND_ROBBIN", ["ROUND_ROBIN"]),
            Some("ROUND_ROBIN")
        );
        assert_eq!(did_you_mean("zzzz", ["lb_policy"]), None);
    }

    #[test]
    fn reports_all_unknown_fields() {
        let n = yaml::parse("a: 1\nbb: 2\ncc: 3\n").unwrap();
        let d = Diag::default();
        let mut o = Field::new(&d, &n, String::new()).obj().unwrap();
        assert_eq!(o.get("a").unwrap().u32(), Some(1));
        let _ = o.get("b");
        o.finish();
        let errs = d.into_errors();
        assert_eq!(errs.len(), 2);
        assert_eq!(
            errs[0].to_string(),
            "2:1: bb: unknown field \"bb\"; did you mean \"b\"?"
        );
    }

    #[test]
    fn durations() {
        let n = yaml::parse("a: 0.25s\nb: 5\nc: {seconds: 2}\n").unwrap();
        let d = Diag::default();
        let mut o = Field::new(&d, &n, String::new()).obj().unwrap();
        assert_eq!(
            o.get("a").unwrap().duration(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(o.get("b").unwrap().duration(), None);
        assert_eq!(o.get("c").unwrap().duration(), Some(Duration::from_secs(2)));
        o.finish();
        assert!(d.into_errors()[0].message.contains("need an \"s\" suffix"));
    }
}
