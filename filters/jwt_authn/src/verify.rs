//! Checking a request against a requirement: the requirement tree (any, all,
//! allow missing, ...) evaluated as Envoy does, one provider's tokens at a
//! time, with remote key sets fetched and cached per worker.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use legate_filter_api::upstream::HttpClient;
use legate_filter_api::{MetadataValue, RequestHead};
use serde_json::Value;

use crate::Shared;
use crate::config::{JwksSource, Provider, RemoteJwks, Requirement};
use crate::extract::{self, Extractor, Found};
use crate::jwks::Jwks;
use crate::jwt::{Jwt, audiences_allowed};
use crate::status::Status;

type BoxFut<'c> = Pin<Box<dyn Future<Output = Status> + 'c>>;

/// One request being checked.
pub(crate) struct Check<'a> {
    pub shared: &'a Arc<Shared>,
    pub head: RefCell<&'a mut RequestHead>,
    pub client: Option<Rc<dyn HttpClient>>,
    /// Token headers and payloads for dynamic metadata, by configured name.
    pub extracted: RefCell<BTreeMap<String, MetadataValue>>,
    /// Seconds since the epoch, for `exp` and `nbf`.
    pub now: u64,
    /// This worker's key sets and verified tokens for this filter config.
    pub cache: Rc<WorkerCache>,
}

impl<'a> Check<'a> {
    /// The status of `req` for this request.
    pub fn eval<'c>(&'c self, req: &'c Requirement) -> BoxFut<'c> {
        let sh = self.shared;
        match req {
            Requirement::Provider {
                provider,
                audiences,
            } => Box::pin(self.authenticate(
                Some(*provider),
                audiences.as_deref(),
                false,
                false,
                &sh.extractors[*provider],
            )),
            Requirement::AllowMissing => {
                Box::pin(self.authenticate(None, None, false, true, &sh.all_extractor))
            }
            Requirement::AllowMissingOrFailed => {
                Box::pin(self.authenticate(None, None, true, true, &sh.all_extractor))
            }
            Requirement::Nothing => Box::pin(std::future::ready(Status::Ok)),
            Requirement::All(children) => Box::pin(Group::new(self, children, GroupKind::All)),
            Requirement::Any(children) => {
                let or_failed = children
                    .iter()
                    .any(|c| matches!(c, Requirement::AllowMissingOrFailed));
                let missing = children
                    .iter()
                    .any(|c| matches!(c, Requirement::AllowMissing));
                // Envoy verifies the regular requirements and applies the
                // allow-* ones to the result; with only allow-* ones, one runs.
                let regular: Vec<&Requirement> = children
                    .iter()
                    .filter(|c| {
                        !matches!(
                            c,
                            Requirement::AllowMissing | Requirement::AllowMissingOrFailed
                        )
                    })
                    .collect();
                let regular = if regular.is_empty() {
                    if or_failed {
                        vec![&ALLOW_MISSING_OR_FAILED]
                    } else if missing {
                        vec![&ALLOW_MISSING]
                    } else {
                        regular
                    }
                } else {
                    regular
                };
                Box::pin(Group::new_refs(
                    self,
                    regular,
                    GroupKind::Any { or_failed, missing },
                ))
            }
        }
    }

    /// One provider's check (or the allow-* checks over all providers): every
    /// token found must pass, unless failures or absence are allowed.
    async fn authenticate(
        &self,
        provider: Option<usize>,
        audiences: Option<&[String]>,
        allow_failed: bool,
        allow_missing: bool,
        extractor: &Extractor,
    ) -> Status {
        let mut tokens = {
            let mut head = self.head.borrow_mut();
            extractor.sanitize(&mut head);
            extractor.extract(&head)
        };
        loop {
            let status = match tokens.pop() {
                None => Status::JwtMissed,
                Some(found) => self.verify_token(provider, audiences, &found).await,
            };
            if (status != Status::Ok && !allow_failed && !allow_missing) || tokens.is_empty() {
                return if allow_failed || (allow_missing && status == Status::JwtMissed) {
                    Status::Ok
                } else {
                    status
                };
            }
        }
    }

    async fn verify_token(
        &self,
        provider: Option<usize>,
        audiences: Option<&[String]>,
        found: &Found<'_>,
    ) -> Status {
        let sh = self.shared;
        if provider.is_some() {
            sh.stats.jwt_cache_miss.inc();
        }
        // A token this worker verified before, against the same keys, skips
        // parsing and the signature: both would come out the same.
        let remembered = provider.and_then(|i| self.remembered(i, &found.token));
        let known = remembered.is_some();
        let jwt = match remembered {
            Some(j) => j,
            None => match Jwt::parse(&found.token) {
                Ok(j) => Rc::new(j),
                Err(s) => return s,
            },
        };
        if !found.issuers.allows(&jwt.iss) {
            return Status::JwtUnknownIssuer;
        }
        let Some(index) = provider.or_else(|| sh.by_issuer(&jwt.iss)) else {
            return Status::JwtUnknownIssuer;
        };
        let p = &sh.config.providers[index];
        let skew = if p.clock_skew_seconds > 0 {
            p.clock_skew_seconds
        } else {
            60
        };
        let s = jwt.check_time(self.now, skew);
        if s != Status::Ok {
            return s;
        }
        if !audiences_allowed(audiences.unwrap_or(&p.audiences), &jwt.audiences) {
            return Status::JwtAudienceNotAllowed;
        }
        if known {
            self.accept(p, &jwt, found);
            return Status::Ok;
        }
        let (s, keys) = match &p.jwks {
            JwksSource::Local(Ok(jwks)) => (jwks.verify(&jwt), None),
            JwksSource::Local(Err(_)) | JwksSource::None => (Status::JwksNoValidKeys, None),
            JwksSource::Remote(r) => self.verify_remote(index, r, &jwt).await,
        };
        if s == Status::Ok {
            self.accept(p, &jwt, found);
            if provider.is_some() {
                self.cache.remember(index, &found.token, jwt, keys);
            }
        }
        s
    }

    /// The token, if this worker verified it for provider `index` against the
    /// key set still in use.
    fn remembered(&self, index: usize, token: &str) -> Option<Rc<Jwt>> {
        let cache = &self.cache;
        let verified = cache.verified[index].borrow();
        let (jwt, keys) = verified.get(token)?;
        if let Some(keys) = keys {
            // A remote key set: only the fresh copy it was checked against.
            let remote = cache.remote[index].borrow();
            let current = remote.as_ref().filter(|c| c.expires > Instant::now())?;
            if !Rc::ptr_eq(&current.jwks, keys) {
                return None;
            }
        }
        Some(jwt.clone())
    }

    /// Checks against the worker's copy of a remote key set, fetching it when
    /// absent or stale, and once more when the token names a key it lacks.
    /// Also gives the key set that passed the token.
    async fn verify_remote(
        &self,
        index: usize,
        r: &RemoteJwks,
        jwt: &Jwt,
    ) -> (Status, Option<Rc<Jwks>>) {
        let sh = self.shared;
        let cache = &self.cache;
        let cached = cache.remote[index]
            .borrow()
            .as_ref()
            .filter(|c| c.expires > Instant::now())
            .map(|c| (c.jwks.clone(), c.fetched));
        let Some((jwks, fetched)) = cached else {
            return match self.fetch(index, r).await {
                Some(jwks) => (jwks.verify(jwt), Some(jwks)),
                None => (Status::JwksFetchFail, None),
            };
        };
        let s = jwks.verify(jwt);
        let unknown_kid = s == Status::JwksKidAlgMismatch
            && !jwt.kid.is_empty()
            && !jwks.has_kid(&jwt.kid)
            && fetched.elapsed() >= sh.kid_refetch_interval;
        if !unknown_kid {
            return (s, Some(jwks));
        }
        // The issuer may have rotated its keys: fetch again (rate-limited by
        // `kid_refetch_interval`), keeping the old set if that fails.
        match self.fetch(index, r).await {
            Some(jwks) => (jwks.verify(jwt), Some(jwks)),
            None => (s, None),
        }
    }

    async fn fetch(&self, index: usize, r: &RemoteJwks) -> Option<Rc<Jwks>> {
        let sh = self.shared;
        let jwks = match &self.client {
            Some(client) => fetch_jwks(client.as_ref(), r).await,
            None => None,
        };
        let Some(jwks) = jwks else {
            sh.stats.jwks_fetch_failed.inc();
            return None;
        };
        sh.stats.jwks_fetch_success.inc();
        let jwks = Rc::new(jwks);
        let now = Instant::now();
        *self.cache.remote[index].borrow_mut() = Some(Cached {
            jwks: jwks.clone(),
            fetched: now,
            expires: now + r.cache_duration,
        });
        Some(jwks)
    }

    /// A token passed: forward what the provider asks for, drop the token
    /// unless `forward`, and keep header and payload for metadata.
    fn accept(&self, p: &Provider, jwt: &Jwt, found: &Found<'_>) {
        let mut head = self.head.borrow_mut();
        if let Some(h) = &p.forward_payload_header {
            let mut v = jwt.payload_b64.clone();
            if p.pad_forward_payload_header {
                while !v.len().is_multiple_of(4) {
                    v.push('=');
                }
            }
            if let Ok(v) = http::HeaderValue::from_str(&v) {
                head.headers.append(h.clone(), v);
            }
        }
        for (header, claim) in &p.claim_to_headers {
            let text = match jwt.claim(claim) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => number_text(n.as_f64().unwrap_or(0.0)),
                Some(Value::Bool(b)) => b.to_string(),
                _ => continue,
            };
            if text.is_empty() {
                continue;
            }
            if let Ok(v) = http::HeaderValue::from_str(&text) {
                head.headers.append(header.clone(), v);
            }
        }
        if !p.forward {
            extract::remove(&mut head, &found.place);
        }
        let mut extracted = self.extracted.borrow_mut();
        if let Some(name) = &p.header_in_metadata {
            extracted.insert(name.clone(), metadata(&Value::Object(jwt.header.clone())));
        }
        if let Some(name) = &p.payload_in_metadata {
            extracted.insert(name.clone(), metadata(&Value::Object(jwt.payload.clone())));
        }
    }
}

/// A claim number as Envoy writes it into a header: an integer when it is one,
/// else with six decimals.
fn number_text(f: f64) -> String {
    if f >= 0.0 && f < u64::MAX as f64 && f.fract() == 0.0 {
        (f as u64).to_string()
    } else {
        format!("{f:.6}")
    }
}

/// A JSON value as dynamic metadata.
pub(crate) fn metadata(v: &Value) -> MetadataValue {
    match v {
        Value::Null => MetadataValue::Null,
        Value::Bool(b) => MetadataValue::Bool(*b),
        Value::Number(n) => MetadataValue::Number(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => MetadataValue::String(s.clone()),
        Value::Array(l) => MetadataValue::List(l.iter().map(metadata).collect()),
        Value::Object(m) => {
            MetadataValue::Struct(m.iter().map(|(k, v)| (k.clone(), metadata(v))).collect())
        }
    }
}

/// GETs a key set: a 200 with a readable document, or nothing.
async fn fetch_jwks(client: &dyn HttpClient, r: &RemoteJwks) -> Option<Jwks> {
    let req = http::Request::get(r.path.as_str())
        .header(http::header::HOST, r.authority.as_str())
        .body(Bytes::new())
        .ok()?;
    let resp = client.send(&r.cluster, req, r.timeout).await.ok()?;
    if resp.status() != http::StatusCode::OK {
        return None;
    }
    Jwks::parse(resp.body()).ok()
}

static ALLOW_MISSING: Requirement = Requirement::AllowMissing;
static ALLOW_MISSING_OR_FAILED: Requirement = Requirement::AllowMissingOrFailed;

#[derive(Clone, Copy)]
enum GroupKind {
    All,
    Any { or_failed: bool, missing: bool },
}

/// `requires_all` / `requires_any`: children start in order, each right after
/// the previous one started, and the group is decided as soon as it can be
/// (the first failure for all, the first success for any); children still
/// waiting then are dropped.
struct Group<'c, 'a> {
    check: &'c Check<'a>,
    children: Vec<&'c Requirement>,
    kind: GroupKind,
    started: usize,
    pending: Vec<Option<BoxFut<'c>>>,
    done: Vec<Option<Status>>,
}

impl<'c, 'a> Group<'c, 'a> {
    fn new(check: &'c Check<'a>, children: &'c [Requirement], kind: GroupKind) -> Self {
        Self::new_refs(check, children.iter().collect(), kind)
    }

    fn new_refs(check: &'c Check<'a>, children: Vec<&'c Requirement>, kind: GroupKind) -> Self {
        let n = children.len();
        Group {
            check,
            children,
            kind,
            started: 0,
            pending: (0..n).map(|_| None).collect(),
            done: vec![None; n],
        }
    }

    /// The group's status once `status` came in, if it is decided.
    fn decide(&self, status: Status) -> Option<Status> {
        let all_done = self.done.iter().all(Option::is_some);
        match self.kind {
            GroupKind::All if status != Status::Ok => Some(status),
            GroupKind::All => all_done.then_some(Status::Ok),
            GroupKind::Any { .. } if status == Status::Ok => Some(Status::Ok),
            GroupKind::Any { or_failed, missing } => {
                if !all_done {
                    return None;
                }
                // Prefer a real error over "missing" and "unknown issuer", and
                // "unknown issuer" over "missing".
                let mut fin = Status::JwtMissed;
                for s in self.done.iter().flatten() {
                    if (*s != Status::JwtMissed && *s != Status::JwtUnknownIssuer)
                        || fin == Status::JwtMissed
                    {
                        fin = *s;
                    }
                }
                if or_failed || (missing && fin == Status::JwtMissed) {
                    fin = Status::Ok;
                }
                Some(fin)
            }
        }
    }
}

impl Future for Group<'_, '_> {
    type Output = Status;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Status> {
        let this = self.get_mut();
        if this.children.is_empty() {
            // An empty list decides nothing: all passes, any is "missing".
            return Poll::Ready(match this.kind {
                GroupKind::All => Status::Ok,
                GroupKind::Any { .. } => {
                    this.decide(Status::JwtMissed).unwrap_or(Status::JwtMissed)
                }
            });
        }
        for i in 0..this.started {
            let Some(f) = this.pending[i].as_mut() else {
                continue;
            };
            if let Poll::Ready(s) = f.as_mut().poll(cx) {
                this.pending[i] = None;
                this.done[i] = Some(s);
                if let Some(d) = this.decide(s) {
                    return Poll::Ready(d);
                }
            }
        }
        while this.started < this.children.len() {
            let i = this.started;
            this.started += 1;
            let mut f = this.check.eval(this.children[i]);
            match f.as_mut().poll(cx) {
                Poll::Ready(s) => {
                    this.done[i] = Some(s);
                    if let Some(d) = this.decide(s) {
                        return Poll::Ready(d);
                    }
                }
                Poll::Pending => this.pending[i] = Some(f),
            }
        }
        Poll::Pending
    }
}

/// A worker's copy of a remote key set.
struct Cached {
    jwks: Rc<Jwks>,
    fetched: Instant,
    expires: Instant,
}

/// Tokens that passed their signature check, with the remote key set that
/// passed them (`None` for local keys, which never change).
/// Keyed with foldhash: a token is a few hundred bytes, and SipHash over it
/// cost more than the rest of a remembered token's check.
type Verified = HashMap<String, (Rc<Jwt>, Option<Rc<Jwks>>), foldhash::fast::RandomState>;

/// How many verified tokens a worker keeps per provider, and the longest token
/// it keeps (Envoy's `jwt_cache_config` defaults).
const VERIFIED_MAX: usize = 100;
const VERIFIED_TOKEN_MAX: usize = 4096;

/// What one worker keeps for one filter config, by provider: remote key sets,
/// and the tokens verified lately.
pub(crate) struct WorkerCache {
    remote: Vec<RefCell<Option<Cached>>>,
    verified: Vec<RefCell<Verified>>,
}

impl WorkerCache {
    fn remember(&self, index: usize, token: &str, jwt: Rc<Jwt>, keys: Option<Rc<Jwks>>) {
        if token.len() > VERIFIED_TOKEN_MAX {
            return;
        }
        let mut v = self.verified[index].borrow_mut();
        if v.len() >= VERIFIED_MAX
            && !v.contains_key(token)
            && let Some(old) = v.keys().next().cloned()
        {
            v.remove(&old);
        }
        v.insert(token.to_string(), (jwt, keys));
    }
}

thread_local! {
    /// Per worker thread: the caches of the filter configs in use, found by
    /// config; entries of configs gone are dropped on the next lookup.
    static WORKER_CACHES: RefCell<Vec<(Weak<Shared>, Rc<WorkerCache>)>> = const { RefCell::new(Vec::new()) };
}

pub(crate) fn worker_cache(shared: &Arc<Shared>) -> Rc<WorkerCache> {
    WORKER_CACHES.with(|c| {
        let mut c = c.borrow_mut();
        c.retain(|(w, _)| w.strong_count() > 0);
        if let Some((_, wc)) = c
            .iter()
            .find(|(w, _)| std::ptr::eq(w.as_ptr(), Arc::as_ptr(shared)))
        {
            return wc.clone();
        }
        let n = shared.config.providers.len();
        let wc = Rc::new(WorkerCache {
            remote: (0..n).map(|_| RefCell::new(None)).collect(),
            verified: (0..n).map(|_| RefCell::new(Verified::default())).collect(),
        });
        c.push((Arc::downgrade(shared), wc.clone()));
        wc
    })
}
