//! `prefix_routes`: which cluster a key goes to. Longest matching prefix wins;
//! `case_insensitive` compares ASCII letters without case; a route with
//! `remove_prefix` strips the matched prefix from the key; with no match the
//! `catch_all_route` (if any) takes the key unchanged.

use bytes::Bytes;

use crate::config::Mirror;

/// One `routes[]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The key prefix (may be empty: it then matches every key).
    pub prefix: Bytes,
    /// Strip the prefix from the key before sending it.
    pub remove_prefix: bool,
    /// The cluster the keys go to.
    pub cluster: String,
    /// `request_mirror_policy`.
    pub mirrors: Vec<Mirror>,
}

impl Route {
    /// A route for every key (`catch_all_route`).
    pub fn catch_all(cluster: String, mirrors: Vec<Mirror>) -> Route {
        Route {
            prefix: Bytes::new(),
            remove_prefix: false,
            cluster,
            mirrors,
        }
    }
}

/// The routes of one filter, ready for lookups.
#[derive(Clone, Debug, Default)]
pub struct PrefixRoutes {
    /// Sorted by prefix length, longest first (ties keep config order).
    routes: Vec<Route>,
    case_insensitive: bool,
    catch_all: Option<Route>,
}

/// Where a key goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Match<'a> {
    /// The cluster.
    pub cluster: &'a str,
    /// The key to send (without the prefix when `remove_prefix` is set).
    pub key: &'a [u8],
    /// The route that matched (the catch-all route when no prefix did).
    pub route: &'a Route,
}

/// A configuration error: two routes with the same prefix (Envoy refuses them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DuplicatePrefix(pub Bytes);

impl std::fmt::Display for DuplicatePrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "prefix `{}` appears more than once in prefix_routes",
            self.0.escape_ascii()
        )
    }
}

impl std::error::Error for DuplicatePrefix {}

impl PrefixRoutes {
    /// Builds the table. Prefixes that are equal (without case when
    /// `case_insensitive`) are refused.
    pub fn new(
        routes: Vec<Route>,
        case_insensitive: bool,
        catch_all: Option<Route>,
    ) -> Result<Self, DuplicatePrefix> {
        for (i, a) in routes.iter().enumerate() {
            if routes[..i]
                .iter()
                .any(|b| eq(&a.prefix, &b.prefix, case_insensitive))
            {
                return Err(DuplicatePrefix(a.prefix.clone()));
            }
        }
        let mut routes = routes;
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Ok(PrefixRoutes {
            routes,
            case_insensitive,
            catch_all,
        })
    }

    /// The route for `key`, or `None` when nothing matches and there is no
    /// catch-all route (Envoy answers `no upstream host`).
    pub fn route<'a>(&'a self, key: &'a [u8]) -> Option<Match<'a>> {
        for r in &self.routes {
            let n = r.prefix.len();
            if key.len() >= n && eq(&key[..n], &r.prefix, self.case_insensitive) {
                return Some(Match {
                    cluster: &r.cluster,
                    key: if r.remove_prefix { &key[n..] } else { key },
                    route: r,
                });
            }
        }
        self.catch_all.as_ref().map(|r| Match {
            cluster: &r.cluster,
            key,
            route: r,
        })
    }

    /// Every route, the catch-all last.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter().chain(&self.catch_all)
    }
}

fn eq(a: &[u8], b: &[u8], case_insensitive: bool) -> bool {
    if case_insensitive {
        a.eq_ignore_ascii_case(b)
    } else {
        a == b
    }
}
